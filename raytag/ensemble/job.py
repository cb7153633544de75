"""The ensemble job: `raytag ensemble EXPERIMENT [--top K] [--min-cv X]`.

1. Candidates: finished trials of the sweep's leaderboard, best first by the metric the
   leaderboard ranks by (its `rank_by`: cv_map3 on FSDKaggle2018, cv_lwlrap on
   FSDKaggle2019); the top K and/or those over a CV bar in that metric.
2. Each trial's out-of-fold predictions are aligned by clip_id (inner join: trials may use
   different fold assignments, an OOF prediction is per clip), with the curated truth.
3. Combiners (mean, geometric, rank, fitted weighted mean) are scored on the OOF
   predictions only, in that metric, with lwlrap beside it; what is fitted is scored
   nested: the rank mean ranks each fold's clips against CDFs of the other folds' clips,
   and the weighted mean's weights are fitted without the scored fold (raytag.ensemble.weights;
   the weights are fitted on lwlrap, which on one-label clips is the reciprocal rank that
   MAP@3 truncates at 3, a finer signal for the fit). Test labels, when the dataset has
   them, are scored and reported, never used to choose.
4. The best combiner is saved as an artifact; a comparison table (CSV) and a bar chart
   (PNG) of every single model and every ensemble go next to it, in `<experiment>/ensemble/`.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from raytag import storage
from raytag.config import safe_name
from raytag.data.layouts import load_dataset
from raytag.data.truth import read_truth, truth_matrix
from raytag.ensemble.artifact import MemberSpec, fold_files, save_artifact, trial_settings
from raytag.ensemble.combiners import COMBINERS, combine, rank_reference
from raytag.ensemble.weights import DEFAULT_STEPS, fit_weights, nested_fit
from raytag.errors import RaytagError
from raytag.metrics import SCORERS, lwlrap
from raytag.search.leaderboard import board_metric
from raytag.search.report import SWEEP_RECORD, read_sweep_record
from raytag.training.outputs import (
    MEMBERS_DIR, METRICS, MODEL_CARD, OOF_PREDICTIONS, OOF_TRUTH, OUTPUTS_DIR, TEST_TRUTH, read_predictions,
    read_test_predictions,
)

# leaderboard statuses of trials that ran their whole pipeline (raytag.search.leaderboard
# writes "ok"; Tune's own word is "TERMINATED"); "stopped early", "failed", "unfinished" are not
FINISHED = {"ok", "terminated", "done", "finished", "completed"}
SCORE_COLUMNS = {"cv_lwlrap": "lwlrap", "cv_map3": "map3"}  # ranking metric -> raytag.metrics.SCORERS
ENSEMBLE_OOF = "oof.parquet"  # in <experiment>/ensemble/: the chosen combiner's held-out OOF predictions
MIN_COVERAGE = 0.9  # a trial whose OOF covers less of the best trial's clips is left out
SINGLE_FOLD_GROUPS, SINGLE_FOLD_SEED = 5, 0  # one outer fold: fitted combiners are scored over these groups


@dataclass
class Candidate:
    trial_id: str
    name: str  # folder-safe name used in the artifact
    outputs_dir: str
    leaderboard_cv: float  # the trial's score in `rank_by`
    rank_by: str = "cv_lwlrap"  # the leaderboard's ranking metric (cv_lwlrap or cv_map3)


@dataclass
class TrialPredictions:
    classes: list[str]
    oof: pd.DataFrame  # index clip_id, class columns (runs averaged; final stage)
    oof_fold: pd.Series  # index clip_id -> fold id
    test: Optional[pd.DataFrame]  # index clip_id, class columns (folds and runs averaged)


@dataclass
class EnsembleResult:
    table: pd.DataFrame  # one row per single model and per combiner
    chosen: str  # combiner saved in the artifact
    metric: str  # the table column the choice was made by (cv_lwlrap or cv_map3)
    artifact_path: str
    members: list[str] = field(default_factory=list)  # every trial combined (the table's singles)
    artifact_members: list[str] = field(default_factory=list)  # those saved: a weighted mean's weight-0 ones are not
    weights: Optional[list[float]] = None  # the weighted combiner's final weights
    nested_fold_weights: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)  # candidates left out, with the reason
    table_path: str = ""
    chart_path: str = ""


class EnsembleOptionError(RaytagError):
    """A candidate option (--top, --min-cv) that selects no sensible set of trials."""


# ----------------------------------------------------------------------------- candidates
def check_selection(top: Optional[int], min_cv: Optional[float]) -> None:
    """Refuse --top < 0 (a negative slice would silently drop the worst trials) and a
    --min-cv outside the range of the CV scores (lwlrap and MAP@3 lie in [0, 1])."""
    if top is not None and top < 0:
        raise EnsembleOptionError(f"--top {top}: give the number of best trials to combine, or 0 for no limit")
    if min_cv is not None and not 0 <= min_cv <= 1:
        raise EnsembleOptionError(f"--min-cv {min_cv}: a CV bar must lie between 0 and 1 "
                                  "(the leaderboard's lwlrap or MAP@3)")


def select_candidates(experiment_dir: str, top: Optional[int] = 5, min_cv: Optional[float] = None,
                      also: Sequence[str] = ()) -> tuple[list[Candidate], list[dict]]:
    """Finished trials with saved predictions, best first in the leaderboard's ranking
    metric (`rank_by`); the top K and those over the bar `min_cv` in that metric.

    `also`: more experiment folders whose trials compete as candidates (a sweep of other
    model families, say); their leaderboards must rank by the same metric. Their trials are
    named `<experiment>/<trial>` so that the table says where each member came from."""
    check_selection(top, min_cv)
    check_also(experiment_dir, also)
    rows, skipped, metric = _finished_trials(experiment_dir)
    for other in also:
        more, more_skipped, other_metric = _finished_trials(other, prefix=f"{storage.basename(other)}/")
        if other_metric != metric:
            raise RaytagError(f"{other}: its leaderboard ranks by {other_metric}, {experiment_dir}'s by {metric}; "
                              "an ensemble is chosen by one metric, so combine experiments on one dataset layout")
        rows += more
        skipped += more_skipped
    rows, repeated = _one_per_outputs(rows)
    skipped += repeated
    rows.sort(key=lambda c: -c.leaderboard_cv)
    seen: dict[str, int] = {}
    for c in rows:  # two trial ids may sanitise to one folder name
        n = seen[c.name] = seen.get(c.name, 0) + 1
        if n > 1:
            c.name = f"{c.name}_{n}"
    if min_cv is not None:
        kept = [c for c in rows if c.leaderboard_cv > min_cv]
        skipped += [{"trial_id": c.trial_id, "reason": f"{metric} {c.leaderboard_cv:.4f} <= {min_cv}"}
                    for c in rows if c not in kept]
        rows = kept
    if top:
        skipped += [{"trial_id": c.trial_id, "reason": f"not in the top {top}"} for c in rows[top:]]
        rows = rows[:top]
    if not rows:
        bar = f" over CV {min_cv}" if min_cv is not None else ""
        where = ", ".join([experiment_dir, *also])
        raise RaytagError(f"{where}: no finished trial with saved predictions{bar}; nothing to ensemble")
    return rows, skipped


def check_also(experiment_dir: str, also: Sequence[str]) -> None:
    """Refuse a --with that is the experiment itself or is given twice: its trials would join
    twice, and the artifact would run the same networks twice for the same scores."""
    seen = {storage.absolute(experiment_dir): True}  # True: the experiment itself
    for other in also:
        key = storage.absolute(other)
        if key in seen:
            why = ("that is EXPERIMENT itself, whose trials are candidates already" if seen[key]
                   else "given twice; an experiment's trials join once")
            raise EnsembleOptionError(f"--with {storage.basename(other)}: {why}; drop it (--with adds another "
                                      "experiment's trials)")
        seen[key] = False


def _one_per_outputs(rows: list[Candidate]) -> tuple[list[Candidate], list[dict]]:
    """The candidates with one per outputs folder, and the others as skipped: two rows can name
    one trial's outputs (a copied sweep's leaderboard keeps the absolute outputs_dir of the
    original), and that model would join the ensemble twice."""
    first: dict[str, Candidate] = {}
    kept, skipped = [], []
    for c in rows:
        key = storage.absolute(c.outputs_dir)
        if key in first:
            skipped.append({"trial_id": c.trial_id, "reason": f"the same outputs as {first[key].trial_id} ({key})"})
            continue
        first[key] = c
        kept.append(c)
    return kept, skipped


def _finished_trials(experiment_dir: str, prefix: str = "") -> tuple[list[Candidate], list[dict], str]:
    """The experiment's leaderboard trials that finished with saved predictions, the ones left
    out (with the reason), and the metric the leaderboard ranks by. A `raytag train` run's
    folder (no leaderboard) gives its members, or its one model, instead (_train_run_models)."""
    path = storage.join(experiment_dir, "leaderboard.csv")
    if not storage.exists(path) and storage.exists(storage.join(experiment_dir, OUTPUTS_DIR, METRICS)):
        return _train_run_models(experiment_dir, prefix)
    if not storage.exists(path):
        raise RaytagError(f"{path}: no leaderboard; run `raytag tune` (or `raytag train`) for this experiment first")
    board = _read_leaderboard(path, experiment_dir)
    metric = board_metric(board)
    if metric not in SCORE_COLUMNS:
        raise RaytagError(f"{path}: rank_by {metric!r} is not one of {', '.join(SCORE_COLUMNS)}")
    for col in ("trial_id", metric, "outputs_dir"):
        if col not in board.columns:
            raise RaytagError(f"{path}: column '{col}' is missing")
    skipped, rows = [], []
    for rec in board.to_dict(orient="records"):
        trial_id = f"{prefix}{rec['trial_id']}"
        status = str(rec.get("status", "ok")).strip().lower()
        if status not in FINISHED:
            skipped.append({"trial_id": trial_id, "reason": f"status {status}"})
            continue
        if pd.isna(rec[metric]) or pd.isna(rec["outputs_dir"]):
            skipped.append({"trial_id": trial_id, "reason": "no CV score or outputs"})
            continue
        outputs = _resolve_outputs(experiment_dir, str(rec["outputs_dir"]))
        if outputs is None:
            skipped.append({"trial_id": trial_id, "reason": f"{rec['outputs_dir']}: no oof.parquet"})
            continue
        rows.append(Candidate(trial_id, safe_name(trial_id), outputs, float(rec[metric]), metric))
    return rows, skipped, metric


def _read_leaderboard(path: str, experiment_dir: str) -> pd.DataFrame:
    """The leaderboard CSV; an empty or unreadable one (a disk that filled while tune wrote
    it) is a RaytagError saying how to rebuild it from the trials."""
    try:
        return storage.read_csv(path)
    except ValueError as err:  # pandas' EmptyDataError and ParserError, UnicodeDecodeError
        name, where = storage.basename(experiment_dir), storage.parent(experiment_dir)
        raise RaytagError(f"{path}: empty or unreadable leaderboard ({err}); run `raytag report {name} "
                          f"--storage {where}` to rebuild it from the trials") from err


def _train_run_models(run_dir: str, prefix: str) -> tuple[list[Candidate], list[dict], str]:
    """A `raytag train` run as candidates: each member's outputs (raytag.ensemble.members:
    `members/<member>/outputs`), not the run's combined ones, so that the ensemble fits its own
    combination of every model; a run without members gives its one model. Ranked by the CV
    metric of the run's layout (cv_map3 on FSDKaggle2018, as a sweep's leaderboard)."""
    metrics = json.loads(storage.read_text(storage.join(run_dir, OUTPUTS_DIR, METRICS)))
    metric = "cv_map3" if metrics.get("cv_map3") is not None else "cv_lwlrap"
    members_dir = storage.join(run_dir, MEMBERS_DIR)
    if storage.exists(members_dir):
        found = [(f"{prefix}{name}", storage.join(members_dir, name, OUTPUTS_DIR))
                 for name in storage.list_dir(members_dir)]
    else:
        found = [(prefix.rstrip("/") or storage.basename(run_dir), storage.join(run_dir, OUTPUTS_DIR))]
    rows, skipped = [], []
    for trial_id, outputs in found:
        if not storage.exists(storage.join(outputs, OOF_PREDICTIONS)) or not storage.exists(storage.join(outputs, METRICS)):
            skipped.append({"trial_id": trial_id, "reason": f"{outputs}: unfinished (no oof.parquet or metrics.json)"})
            continue
        score = json.loads(storage.read_text(storage.join(outputs, METRICS))).get(metric)
        rows.append(Candidate(trial_id, safe_name(trial_id), outputs, float(score), metric))
    return rows, skipped, metric


def _resolve_outputs(experiment_dir: str, outputs_dir: str) -> Optional[str]:
    """The trial's outputs folder: as written, or relative to the experiment folder."""
    tries = [outputs_dir]
    if not storage.is_uri(outputs_dir) and not outputs_dir.startswith("/"):
        tries.append(storage.join(experiment_dir, outputs_dir))
    for path in tries:
        if storage.exists(storage.join(path, OOF_PREDICTIONS)):
            return path
    return None


def load_members(candidates: Sequence[Candidate], top: Optional[int]
                 ) -> tuple[list[Candidate], list[TrialPredictions], list[dict], list[dict]]:
    """(members, their predictions, their model.json settings, the candidates left out with
    the reason): candidates are walked best first until `top` are members (0 or None: no
    limit). One that cannot be a member (unreadable predictions or model.json, fold models
    missing, classes in another order, too few of the best one's clips) is left out, and the
    next candidate takes its place, so --top K gives K members where K can be had."""
    members, trials, settings, skipped = [], [], [], []
    for cand in candidates:
        if top and len(members) == top:
            skipped.append({"trial_id": cand.trial_id, "reason": f"not in the top {top}"})
            continue
        try:
            pred = load_trial(cand.outputs_dir)
            card = trial_settings(cand.outputs_dir)  # the artifact reads model.json: check it now, not after scoring
            fold_files(cand.outputs_dir)  # a member must be savable: its fold models are all there
        except RaytagError as err:
            skipped.append({"trial_id": cand.trial_id, "reason": str(err)})
            continue
        reason = _not_a_member(pred, card, trials[0] if trials else None)
        if reason:
            skipped.append({"trial_id": cand.trial_id, "reason": reason})
            continue
        members.append(cand)
        trials.append(pred)
        settings.append(card)
    return members, trials, settings, skipped


def _not_a_member(pred: TrialPredictions, card: dict, best: Optional[TrialPredictions]) -> str:
    """Why a readable trial cannot join the members so far ('' when it can)."""
    if list(card["classes"]) != list(pred.classes):  # the network outputs the card's order
        return "model.json's class list (or order) differs from its predictions'"
    if best is None:
        return ""
    if list(pred.classes) != list(best.classes):  # a member's head outputs in its own order
        return "different class list (or order)"
    coverage = len(best.oof.index.intersection(pred.oof.index)) / len(best.oof.index)
    if coverage < MIN_COVERAGE:
        return f"OOF covers {coverage:.0%} of the best trial's clips"
    return ""


# ----------------------------------------------------------------------------- reading a trial
def load_trial(outputs_dir: str) -> TrialPredictions:
    oof_df, classes = read_predictions(storage.join(outputs_dir, OOF_PREDICTIONS))
    oof = oof_df.groupby("clip_id", sort=True)[classes].mean()  # averages repeated runs
    if "fold" in oof_df.columns:
        fold = oof_df.groupby("clip_id", sort=True)["fold"].first()
    else:
        fold = pd.Series(0, index=oof.index)
    # None without test clips (an empty test.parquet): the ensemble then reports no test score
    test = read_test_predictions(outputs_dir, classes)
    return TrialPredictions(classes=classes, oof=oof, oof_fold=fold, test=test)


def load_oof_truth(outputs_dir: str, experiment_dir: Optional[str] = None) -> pd.DataFrame:
    """The curated labels of the OOF clips: `oof_truth.csv` in the trial outputs when the
    runner wrote one, else the dataset the sweep ran on (`data` in the experiment's
    sweep.json, or in the trial's model.json), read with raytag.data.layouts."""
    path = storage.join(outputs_dir, OOF_TRUTH)
    if storage.exists(path):
        return read_truth(path).table()
    data = None
    sweep = storage.join(experiment_dir, SWEEP_RECORD) if experiment_dir else None
    if sweep:
        data = read_sweep_record(experiment_dir, "the ensemble reads the dataset from it: restore it, or remove it "
                                 "to use the one each trial's model.json records").get("data")
    if not data:
        data = json.loads(storage.read_text(storage.join(outputs_dir, MODEL_CARD))).get("data")
    if data:
        truth = load_dataset(data).truth_for("curated")
        return truth[["clip_id", "fname", "labels"]].reset_index(drop=True)
    raise RaytagError(
        f"{outputs_dir}: no oof_truth.csv, and no dataset path in {sweep or 'sweep.json'} or model.json; "
        "the ensemble needs the curated labels of the out-of-fold clips"
    )


# ----------------------------------------------------------------------------- the job
def build_ensemble(experiment_dir: str, top: Optional[int] = 5, min_cv: Optional[float] = None,
                   steps: int = DEFAULT_STEPS, console=None, also: Sequence[str] = ()) -> EnsembleResult:
    """Score every combiner on the OOF predictions in the leaderboard's ranking metric
    (lwlrap beside it), save the best as an artifact, write the table + chart. `also`: more
    experiments whose trials are candidates too; the outputs go under `experiment_dir`."""
    experiment_dir, also = str(experiment_dir), [str(a) for a in also]
    say = console.print if console is not None else (lambda *a, **k: None)
    check_selection(top, min_cv)
    # the top K is taken as members load: a candidate left out makes room for the next
    candidates, skipped = select_candidates(experiment_dir, None, min_cv, also)
    metric = candidates[0].rank_by
    # the table's score columns: lwlrap always, the ranking metric beside it
    names = list(dict.fromkeys(["lwlrap", SCORE_COLUMNS[metric]]))
    members, trials, settings, left_out = load_members(candidates, top)
    skipped += left_out
    if not trials:
        raise RaytagError(f"{experiment_dir}: no candidate trial could be read: {skipped}")
    say(f"{len(members)} member trial(s), ranked by {metric}: {', '.join(c.trial_id for c in members)}")
    classes = trials[0].classes

    # align OOF predictions by clip_id (inner join over members)
    common = trials[0].oof.index
    for t in trials[1:]:
        common = common.intersection(t.oof.index)
    common = common.sort_values()
    oof = np.stack([t.oof.loc[common, classes].to_numpy(np.float64) for t in trials])
    y_oof = truth_matrix(load_oof_truth(members[0].outputs_dir, experiment_dir), common, classes)
    has_label = y_oof.sum(axis=1) > 0  # clips without a label carry no lwlrap weight
    oof, y_oof, common = oof[:, has_label], y_oof[has_label], common[has_label]
    outer_folds = trials[0].oof_fold.loc[common].to_numpy()
    references = [rank_reference(t.oof[classes].to_numpy(np.float64)) for t in trials]

    # test predictions and truth: reported only
    test, y_test = None, None
    truth_path = storage.join(members[0].outputs_dir, TEST_TRUTH)
    if all(t.test is not None for t in trials) and storage.exists(truth_path):
        test_ids = trials[0].test.index
        for t in trials[1:]:
            test_ids = test_ids.intersection(t.test.index)
        test_ids = test_ids.sort_values()
        y_test = truth_matrix(read_truth(truth_path).table(), test_ids, classes)
        keep = y_test.sum(axis=1) > 0
        test = np.stack([t.test.loc[test_ids, classes].to_numpy(np.float64) for t in trials])[:, keep]
        y_test = y_test[keep]

    def cv_scores(probs) -> dict:
        return {f"cv_{n}": float(SCORERS[n](y_oof, probs)) for n in names}

    def test_scores(probs_fn) -> dict:
        return {f"test_{n}": float(SCORERS[n](y_test, probs_fn(test))) if test is not None else np.nan
                for n in names}

    rows = []
    for m, cand in enumerate(members):
        rows.append({
            "name": cand.trial_id, "kind": "single", "members": 1,
            **cv_scores(oof[m]), "cv_method": "oof",
            **test_scores(lambda p, m=m: p[m]), "weights": "",
        })
    # what each combiner's CV is scored on: the OOF clips, with whatever the combiner fits
    # fitted without the clip's own outer fold (one outer fold: without its seeded group)
    held_out: dict[str, np.ndarray] = {}
    for name in ("mean", "geometric"):
        held_out[name] = combine(name, oof, references=references)
        rows.append({
            "name": name, "kind": "ensemble", "members": len(members),
            **cv_scores(held_out[name]), "cv_method": "oof",
            **test_scores(lambda p, n=name: combine(n, p, references=references)),
            "weights": "",
        })
    # The rank mean is fitted too: its per-class CDFs come from the OOF clips. Scored on the
    # clips they were fitted on, it ranks each clip within the very set it is scored on and
    # looks better than it is (in the dev benchmark's quick sweep: 0.631 CV in-sample, 0.596
    # nested, against the mean's 0.577, for the same test score), so its CV ranks each fold
    # against the other folds' CDFs.
    fit_folds, nested_method = scoring_folds(outer_folds)
    nested_folds = len(np.unique(fit_folds)) >= 2
    rank_in_sample = combine("rank", oof, references=references)
    held_out["rank"] = nested_rank(oof, fit_folds) if nested_folds else rank_in_sample
    rows.append({
        "name": "rank", "kind": "ensemble", "members": len(members),
        **cv_scores(held_out["rank"]),
        "cv_method": nested_method if nested_folds else "in-sample (1 clip)",
        **{f"{k}_in_sample": v for k, v in cv_scores(rank_in_sample).items()},
        **test_scores(lambda p: combine("rank", p, references=references)),
        "weights": "",
    })
    if nested_folds:
        nested = nested_fit(oof, y_oof, fit_folds, steps)
        final, method, fold_weights = nested.final, nested_method, nested.fold_weights
        held_out["weighted"] = nested.heldout_preds  # each clip by weights fitted without its fold
    else:  # one clip only: nothing can be held out from the fit; the table says so
        final = fit_weights(oof, y_oof, steps)
        method, fold_weights = "in-sample (1 clip)", {}
        held_out["weighted"] = combine("weighted", oof, final.weights)
    weights = final.weights
    in_sample = cv_scores(combine("weighted", oof, weights))
    rows.append({
        "name": "weighted", "kind": "ensemble", "members": len(members),
        **cv_scores(held_out["weighted"]), "cv_method": method,
        **{f"{k}_in_sample": v for k, v in in_sample.items()},
        **test_scores(lambda p: combine("weighted", p, weights)),
        "weights": " ".join(f"{w:.3f}" for w in weights),
    })
    table = pd.DataFrame(rows)
    ens = table[table["kind"] == "ensemble"]
    # highest CV in the ranking metric wins; ties go to the simpler combiner (COMBINERS order)
    order = {n: i for i, n in enumerate(COMBINERS)}
    chosen = min(ens.itertuples(), key=lambda r: (-round(getattr(r, metric), 10), order[r.name])).name
    table["chosen"] = table["name"].eq(chosen) & table["kind"].eq("ensemble")

    out_dir = storage.join(experiment_dir, "ensemble")
    layout = settings[0]["layout"]
    specs = [MemberSpec(c.name, c.outputs_dir, float(lwlrap(y_oof, oof[i])), references[i])
             for i, c in enumerate(members)]
    saved = weighted_members(range(len(members)), weights) if chosen == "weighted" else list(range(len(members)))
    chosen_row = table[table["chosen"]].iloc[0]
    scores = {"metric": metric, "cv_method": chosen_row.cv_method, "oof_clips": int(len(common))}
    for n in names:
        scores[f"cv_{n}"] = float(chosen_row[f"cv_{n}"])
        scores[f"test_{n}"] = None if pd.isna(chosen_row[f"test_{n}"]) else float(chosen_row[f"test_{n}"])
    # one job's files at a time: a second `raytag ensemble` of this experiment writing at the
    # same time would leave its table and summary beside this one's artifact
    with storage.folder_lock(out_dir, f"the ensemble folder {out_dir}"):
        artifact_path = save_artifact(
            storage.join(out_dir, "artifact"), [specs[i] for i in saved], chosen,
            [float(weights[i]) for i in saved] if chosen == "weighted" else None, classes, layout, scores,
            parent_locked=True,
        )
        table_path = storage.join(out_dir, "comparison.csv")
        storage.write_csv(table, table_path)
        # the predictions the chosen combiner's CV score was computed from, for paired comparisons
        oof_frame = pd.DataFrame(held_out[chosen], columns=classes)
        oof_frame.insert(0, "clip_id", common.to_numpy())
        oof_frame.insert(1, "fold", outer_folds)
        storage.write_parquet(oof_frame, storage.join(out_dir, ENSEMBLE_OOF), {"raytag.classes": json.dumps(classes)})
        chart_path = storage.join(out_dir, "comparison.png")
        storage.write_bytes(chart_path, comparison_chart(table, metric))
        result = EnsembleResult(
            table=table, chosen=chosen, metric=metric, artifact_path=artifact_path,
            members=[c.trial_id for c in members], weights=weights.tolist(),
            artifact_members=[members[i].trial_id for i in saved],
            nested_fold_weights=fold_weights, skipped=skipped, table_path=table_path, chart_path=chart_path,
        )
        summary = {
            "chosen": chosen, "chosen_by": metric, "members": result.members, "weights": result.weights,
            "artifact_members": result.artifact_members,
            "with": also,  # the other experiments whose trials were candidates
            "nested_fold_weights": {str(k): v for k, v in fold_weights.items()},
            "oof_clips": int(len(common)), "test_clips": 0 if y_test is None else int(len(y_test)),
            "skipped": skipped, "artifact": artifact_path, "scores": scores,
        }
        storage.write_text(storage.join(out_dir, "ensemble_summary.json"), json.dumps(summary, indent=2) + "\n")
    return result


def weighted_members(indices, weights) -> list[int]:
    """The members a weighted mean uses: a weight of 0 adds nothing to the mean, so saving
    (and, at every prediction, running) its fold models would only cost time and space."""
    return [i for i in indices if weights[i] > 0]


def scoring_folds(outer_folds: np.ndarray) -> tuple[np.ndarray, str]:
    """(a fold id per OOF clip, the table's name for scoring over them) for what a combiner
    fits: the trials' outer folds; with a single outer fold (cv.folds=[0]), fixed seeded
    groups of the clips instead, so the rank and weighted combiners are still scored on
    clips their fit did not see, and do not compete in-sample against the plain means."""
    if len(np.unique(outer_folds)) >= 2:
        return outer_folds, "nested oof"
    groups = min(SINGLE_FOLD_GROUPS, len(outer_folds))
    fold_ids = np.random.default_rng(SINGLE_FOLD_SEED).permutation(len(outer_folds)) % groups
    return fold_ids, f"nested oof ({groups} seeded groups: 1 outer fold)"


def nested_rank(oof: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Rank-mean predictions of the OOF clips (members, clips, classes) in which each outer
    fold's clips are ranked against CDFs fitted on the other folds' clips only."""
    out = np.zeros(oof.shape[1:])
    for k in np.unique(folds):
        inner = folds != k
        refs = [rank_reference(member[inner]) for member in oof]
        out[~inner] = combine("rank", oof[:, ~inner], references=refs)
    return out


# ----------------------------------------------------------------------------- outputs
def comparison_chart(table: pd.DataFrame, metric: str = "cv_lwlrap") -> bytes:
    """PNG bytes: horizontal bars of CV (and test, where known) `metric` per row of the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = metric[len("cv_"):]
    label = {"lwlrap": "lwlrap", "map3": "MAP@3"}.get(name, name)
    test_col = f"test_{name}"
    labels = [f"ensemble: {r.name}" + (" (nested CV)" if r.cv_method.startswith("nested") else "")
              if r.kind == "ensemble" else str(r.name) for r in table.itertuples()]
    y = np.arange(len(table))
    has_test = test_col in table and table[test_col].notna().any()
    height = 0.38 if has_test else 0.7
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(table) + 1.8))
    cv_colors = ["tab:orange" if c else "tab:blue" for c in table["chosen"]]
    ax.barh(y - (height / 2 if has_test else 0), table[metric], height, color=cv_colors, label=f"CV {label} (OOF)")
    if has_test:
        ax.barh(y + height / 2, table[test_col].fillna(0), height, color="tab:gray",
                label=f"test {label} (reported only)")
    for yi, v in zip(y, table[metric]):
        ax.text(v, yi - (height / 2 if has_test else 0), f" {v:.4f}", va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    shown = [metric] + ([test_col] if has_test else [])
    lo = float(np.nanmin(table[shown].to_numpy(dtype=float)))
    ax.set_xlim(max(0.0, lo - 0.05), 1.0)
    ax.set_xlabel(f"{label} (orange: chosen ensemble)")
    ax.set_title(f"Single models and ensembles, chosen by OOF {label}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
