"""`raytag train` with `members`: one full run per model family on the same folds, then
their predictions combined clip by clip into the run's outputs and an artifact.

Why inside `raytag train` and not only as a sweep plus `raytag ensemble`: two model families
that err differently are worth more than any one family's settings. On the dev benchmark
(grouped folds) resnet18 and cnn2d, geometric mean, gained about +0.045 on CV and on test
over either alone, while two variants of one family gained +0.03 CV and +0.004 test
(results/benchmarks/members.json); resnet18 and vgg_small gained more
(results/benchmarks/members_vgg_small.json), and a third member on another front end (vgg_small
on PCEN) more again (results/benchmarks/members_pcen.json). Nothing is fitted on the out-of-fold predictions here:
the combiner is a fixed mean, so the combined CV is as honest as a member's.

Layout of <storage>/<name>/:
    members/<member>/          each member's own run (checkpoints, outputs/): resumes alone
    outputs/                   the combined predictions, in the trial-output format
                               (raytag.training.outputs) and the members' tables
    artifact/                  every member's fold models and the combiner, for `raytag predict`
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from raytag import storage as files
from raytag.cluster import materialize_data
from raytag.data.audio import min_samples
from raytag.data.layouts import load_dataset
from raytag.config import Config, safe_name
from raytag.data.submission import write_submission_2018, write_submission_2019
from raytag.data.truth import read_truth, truth_matrix
from raytag.ensemble.artifact import MemberSpec, save_artifact
from raytag.ensemble.noisy_teacher import noisy_teacher_targets
from raytag.ensemble.combiners import combine
from raytag.errors import RaytagError
from raytag.metrics import layout_scores, lwlrap
from raytag.models.registry import check_run_models
from raytag.training.outputs import (
    CONFIG, HISTORY, MEMBERS_DIR, OOF_PREDICTIONS, OOF_TRUTH, OUTPUTS_DIR, SKIPPED, STAGES, SUBMISSION, TEST_PREDICTIONS,
    TEST_TRUTH, fold_metrics, read_model_card, read_predictions, read_test_predictions, write_metrics, write_parquet,
)
from raytag.training.plan import model_folds
from raytag.training.progress import EpochEvent, MembersEta, step_units
from raytag.training.runner import PipelineResult, fit_pipeline
from raytag.training.steps import build_steps

ARTIFACT_DIR = "artifact"
ALL_FOLDS = -1  # the `fold` of a combined test row: every member's fold models, averaged

log = logging.getLogger(__name__)


@dataclass
class MemberRun:
    name: str
    config: Config
    result: PipelineResult


def fit_members(cfg: Config, data, storage: str, name: str, feature_cache: Optional[str] = None,
                progress: bool = True, on_epoch: Optional[Callable[[EpochEvent], None]] = None,
                on_member: Optional[Callable[[int, str, Config], None]] = None):
    """Train every member (`cfg.member_configs()`) in turn, then combine them. `on_member(i,
    name, config)` is called before member i starts. Returns a PipelineResult whose metrics
    hold the combined scores and, under "members", each member's. The events `on_epoch` gets
    carry the whole run's ETA (MembersEta), not only the training member's."""
    started = time.time()
    storage = files.absolute(storage)
    run_dir = files.join(storage, name)
    members = cfg.member_configs()
    check_run_models(cfg)  # every member's model, before the first member trains
    _check_members_keep_the_same_clips(members, data, progress)
    eta = MembersEta([step_units(build_steps(c, model_folds(c))) for _, c in members])
    runs = []
    for i, (member, member_cfg) in enumerate(members):
        if on_member is not None:
            on_member(i, member, member_cfg)
        result = fit_pipeline(member_cfg, data, files.join(run_dir, MEMBERS_DIR), member,
                              feature_cache=feature_cache, progress=progress,
                              on_epoch=eta.on_epoch(i, on_epoch) if on_epoch else None,
                              noisy_teacher=noisy_teacher_targets)
        runs.append(MemberRun(member, member_cfg, result))
    outputs_dir = files.join(run_dir, OUTPUTS_DIR)
    with tempfile.TemporaryDirectory() as staging:
        metrics, stages, layout, classes = write_member_outputs(cfg, runs, Path(staging))
        specs = [MemberSpec(r.name, r.result.outputs_dir, r.result.metrics["cv_lwlrap"]) for r in runs]
        method = f"{cfg.combine} mean of the members' out-of-fold predictions (nothing fitted)"
        scores = artifact_scores(metrics, method)
        metrics["artifact"] = save_artifact(files.join(run_dir, ARTIFACT_DIR), specs, cfg.combine, None,
                                            classes, layout, scores)
        metrics["seconds"] = round(time.time() - started, 1)
        write_metrics(Path(staging), metrics)
        files.copy_tree(staging, outputs_dir)
    return PipelineResult(run_dir=run_dir, outputs_dir=outputs_dir, metrics=metrics, stages=stages)


def save_run_artifact(cfg: Config, result: PipelineResult) -> str:
    """The artifact of a one-family `raytag train` run: its fold models as one member, so
    that `raytag predict` takes a run's folder as it takes a members run's or a sweep's."""
    card = read_model_card(result.outputs_dir)
    spec = MemberSpec(safe_name(cfg.model.name), result.outputs_dir, result.metrics["cv_lwlrap"])
    scores = artifact_scores(result.metrics, "the run's out-of-fold predictions")
    return save_artifact(files.join(result.run_dir, ARTIFACT_DIR), [spec], "mean", None, card["classes"],
                         card["layout"], scores)


def artifact_scores(metrics: dict, cv_method: str) -> dict:
    """The `scores` of a `raytag train` artifact. Its "metric" is the layout's own, as a
    sweep's leaderboard and the ensemble job rank by: cv_map3 where the run has it (the
    2018 layout), else cv_lwlrap; lwlrap is kept beside MAP@3."""
    metric = "cv_map3" if metrics.get("cv_map3") is not None else "cv_lwlrap"
    return {"metric": metric, "cv_lwlrap": metrics["cv_lwlrap"], **_map3_of(metrics),
            "test_lwlrap": metrics.get("test_lwlrap"), "cv_method": cv_method}


def _map3_of(metrics: dict) -> dict:
    """{"cv_map3": ...} where a run's metrics have it (the 2018 layout), else {}: 2019 records stay as they were."""
    return {"cv_map3": metrics["cv_map3"]} if metrics.get("cv_map3") is not None else {}


def write_member_outputs(cfg: Config, runs: list[MemberRun], staging: Path):
    """The combined outputs in `staging`. Returns (metrics, stage table, layout, classes)."""
    oofs, tests, classes = [], [], None
    for run in runs:
        oof, member_classes = read_predictions(files.join(run.result.outputs_dir, OOF_PREDICTIONS))
        if classes is not None and member_classes != classes:
            raise RaytagError(f"member {run.name}: its classes differ from member {runs[0].name}'s")
        classes = member_classes
        oofs.append(oof.set_index("clip_id"))
        tests.append(read_test_predictions(run.result.outputs_dir, classes))  # None: no test clips
    _check_same_folds(runs, oofs)
    layout = read_model_card(runs[0].result.outputs_dir)["layout"]
    first = runs[0].result.outputs_dir

    # -- out-of-fold: each clip's members combined (they held it out in the same fold) ------
    ids = oofs[0].index
    oof_probs = combine(cfg.combine, np.stack([o.loc[ids, classes].to_numpy() for o in oofs]))
    oof_df = pd.DataFrame(oof_probs.astype(np.float32), columns=classes)
    oof_df.insert(0, "stage", cfg.combine)
    oof_df.insert(0, "run", cfg.name)
    oof_df.insert(0, "fold", oofs[0].loc[ids, "fold"].to_numpy())
    oof_df.insert(0, "clip_id", ids.to_numpy())
    write_parquet(oof_df, staging / OOF_PREDICTIONS, classes)
    files.copy_file(files.join(first, OOF_TRUTH), str(staging / OOF_TRUTH))
    y_oof = truth_matrix(read_truth(str(staging / OOF_TRUTH)).table(), ids, classes)
    cv_scores = layout_scores(layout, y_oof, oof_probs)
    folds = oof_df["fold"].to_numpy()
    fold_scores = {f: layout_scores(layout, y_oof[folds == f], oof_probs[folds == f]) for f in sorted(set(folds))}

    # -- test: each member's fold mean (as the artifact predicts), then combined --------------
    test_score = None
    tids, left_out = shared_test_clips(runs, tests)
    if len(tids):
        test_probs = combine(cfg.combine, np.stack([t.loc[tids, classes].to_numpy() for t in tests]))
        test_df = pd.DataFrame(test_probs.astype(np.float32), columns=classes)
        for col, value in (("stage", cfg.combine), ("run", cfg.name), ("fold", ALL_FOLDS), ("clip_id", tids.to_numpy())):
            test_df.insert(0, col, value)
        write_parquet(test_df, staging / TEST_PREDICTIONS, classes)
        writer = write_submission_2019 if layout == "fat2019" else write_submission_2018
        writer([c.split("/", 1)[1] for c in tids], classes, test_probs, staging / SUBMISSION)
        if files.exists(files.join(first, TEST_TRUTH)):
            files.copy_file(files.join(first, TEST_TRUTH), str(staging / TEST_TRUTH))
            truth = read_truth(str(staging / TEST_TRUTH)).table()
            test_score = float(lwlrap(truth_matrix(truth, tids, classes), test_probs))

    # -- the members' tables, side by side --------------------------------------------------
    member_metrics, stage_rows, histories = {}, [], []
    for run in runs:
        m = run.result.metrics
        member_metrics[run.name] = {"model": run.config.model.name, "cv_lwlrap": m["cv_lwlrap"], **_map3_of(m),
                                    "test_lwlrap": m.get("test_lwlrap"), "seconds": m.get("seconds"),
                                    "precision": m.get("precision"),
                                    "outputs": run.result.outputs_dir}
        final = run.result.stages.iloc[-1]
        stage_rows.append({"stage": f"{run.name} ({run.config.model.name}, {final['stage']})",
                           "folds": final["folds"], "cv_lwlrap": m["cv_lwlrap"], **_map3_of(m),
                           "test_lwlrap": np.nan if m.get("test_lwlrap") is None else m["test_lwlrap"]})
        histories.append(files.read_csv(files.join(run.result.outputs_dir, HISTORY)).assign(member=run.name))
    stage_rows.append({"stage": f"{cfg.combine} mean of the {len(runs)} members", "folds": len(fold_scores),
                       **{f"cv_{k}": float(v) for k, v in cv_scores.items()},
                       "test_lwlrap": np.nan if test_score is None else test_score})
    stages = pd.DataFrame(stage_rows)
    stages.to_csv(staging / STAGES, index=False)
    pd.concat(histories, ignore_index=True).to_csv(staging / HISTORY, index=False)
    files.copy_file(files.join(first, SKIPPED), str(staging / SKIPPED))
    if left_out:
        _list_left_out_test_clips(staging / SKIPPED, left_out)
    (staging / CONFIG).write_text(cfg.to_yaml())
    metrics = {
        "cv_lwlrap": float(cv_scores["lwlrap"]),
        **{f"cv_{k}": float(v) for k, v in cv_scores.items() if k != "lwlrap"},
        **fold_metrics(fold_scores),
        "test_lwlrap": test_score,
        "combine": cfg.combine,
        "members": member_metrics,
        "epochs_run": int(sum(r.result.metrics.get("epochs_run", 0) for r in runs)),
        "n_skipped": int(runs[0].result.metrics.get("n_skipped", 0)) + len(left_out),  # skipped.csv's rows
        "test_clips_left_out": len(left_out),
    }
    return metrics, stages, layout, classes


def shared_test_clips(runs: list[MemberRun], tests: list[Optional[pd.DataFrame]]
                      ) -> tuple[pd.Index, dict[str, list[str]]]:
    """(the test clips every member predicted, sorted; {left-out clip: the members without
    it}). Members on other front ends keep other test clips (a clip shorter than one
    member's frame but not another's), and a member's store may fail on one: the combined
    test predictions, like build_ensemble's, cover the clips all members share. None are
    shared when a member has no test predictions (a dataset without test clips)."""
    if any(test is None for test in tests):
        return pd.Index([], dtype=object), {}
    shared = tests[0].index
    for test in tests[1:]:
        shared = shared.intersection(test.index)
    every = tests[0].index
    for test in tests[1:]:
        every = every.union(test.index)
    left_out = {clip: [run.name for run, test in zip(runs, tests) if clip not in test.index]
                for clip in every.difference(shared)}
    if left_out:
        example = next(iter(left_out))
        log.warning("%d test clip(s) left out of the members' combined test predictions: some member has "
                    "no prediction of them (e.g. %s, missing from member(s) %s, whose skipped.csv says why); listed "
                    "in the run's skipped.csv",
                    len(left_out), example, ", ".join(left_out[example]))
    return shared.sort_values(), left_out


def _list_left_out_test_clips(skipped_csv: Path, left_out: dict[str, list[str]]) -> None:
    """Add the test clips the combination left out to the run's skipped.csv (file, reason)."""
    rows = pd.DataFrame({"file": list(left_out),
                         "reason": [f"test clip left out of the combined test predictions: member(s) "
                                    f"{', '.join(members)} have no prediction of it (see their skipped.csv)"
                                    for members in left_out.values()]})
    skipped = pd.read_csv(skipped_csv, dtype=str, keep_default_na=False)
    pd.concat([skipped, rows], ignore_index=True).to_csv(skipped_csv, index=False)


def _check_members_keep_the_same_clips(members: list[tuple[str, Config]], data, progress: bool = False) -> None:
    """A member's front end (features.sample_rate, n_fft) sets the shortest usable clip (one
    frame). Members whose rules differ may keep other curated clips, so other folds, which
    _check_same_folds would find only after every member trained: compared here from the
    file headers, read once per distinct rule (none when all members share one)."""
    by_rule: dict[tuple, list[tuple[str, Config]]] = {}
    for member, member_cfg in members:
        features = member_cfg.features
        by_rule.setdefault((features.sample_rate, min_samples(features)), []).append((member, member_cfg))
    if len(by_rule) < 2:
        return
    root = materialize_data(data, progress=progress)  # the first copy of a data URI, when it is one
    kept = []
    for group in by_rule.values():
        member, member_cfg = group[0]
        dataset = load_dataset(root, sample_rate=member_cfg.features.sample_rate, features=member_cfg.features)
        kept.append((member, member_cfg, set(dataset.split("curated")["clip_id"])))
    first, _, first_ids = kept[0]
    for member, member_cfg, ids in kept[1:]:
        if ids != first_ids:
            _refuse_other_clips(member, member_cfg, first, first_ids - ids or ids - first_ids,
                                lost=bool(first_ids - ids))


def _refuse_other_clips(member: str, member_cfg: Config, first: str, differing: set, lost: bool) -> None:
    features = member_cfg.features
    frame = min_samples(features) / features.sample_rate
    verb = "drops" if lost else "keeps"
    raise RaytagError(
        f"member {member}: its features.n_fft {features.n_fft} at features.sample_rate {features.sample_rate} "
        f"(shortest usable clip {frame:.3f} s) {verb} {len(differing)} curated clip(s) that member {first} does "
        f"not (e.g. {sorted(differing)[0]}), so their folds would differ and their predictions could not be "
        "combined; give the members front ends whose frame (n_fft / sample_rate) every clip covers, or remove "
        "the clips shorter than the longest member's frame from the dataset")


def _check_same_folds(runs: list[MemberRun], oofs: list[pd.DataFrame]) -> None:
    """Members combine clip by clip only if each held every clip out in the same fold."""
    ref = oofs[0]["fold"]
    for run, oof in zip(runs[1:], oofs[1:]):
        if set(oof.index) != set(ref.index) or not (oof.loc[ref.index, "fold"] == ref).all():
            raise RaytagError(f"member {run.name} held out other clips than member {runs[0].name}: members must "
                              "share the run's seed and cv settings (its checkpoints may be from an older config: "
                              "remove its folder under members/ to train it again)")
