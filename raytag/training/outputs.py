"""The trial outputs (docs/ARCHITECTURE.md, "Trial outputs"): their names, the writer
that turns a finished run's checkpoint into them, and the readers of the predictions.
Search, ensemble and demo read a trial folder only through the names defined here.

The workers only save raw arrays (clip ids + probabilities per stage and fold); here,
on the driver, they become the Parquet files the ensemble job reads, the stage table,
the Kaggle submission, the filter report and the t-SNE plot. Truth files are read
here for reporting only, after training has finished."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raytag import storage
from raytag.config import recorded_model_settings
from raytag.data.truth import truth_frame
from raytag.data.submission import write_submission_2018, write_submission_2019
from raytag.metrics import layout_scores, lwlrap
from raytag.errors import RaytagError
from raytag.pipeline.report import filter_precision_recall, tsne_plot

# the files of <run>/outputs/ (every reader and writer uses these names)
OUTPUTS_DIR = "outputs"
MEMBERS_DIR = "members"  # a members run's folder of member runs (raytag.ensemble.members)
OOF_PREDICTIONS = "oof.parquet"  # final model of each fold on its held-out curated clips
TEST_PREDICTIONS = "test.parquet"  # final model of each fold on the test clips
NOISY_OOF = "noisy_oof.parquet"  # cv.noisy_folds: final model of each fold on its held-out noisy clips
STAGE_OOF = "stage_oof.parquet"
STAGE_TEST = "stage_test.parquet"
OOF_TRUTH = "oof_truth.csv"
TEST_TRUTH = "test_truth.csv"
SUBMISSION = "submission.csv"
STAGES = "stages.csv"
HISTORY = "history.csv"
SKIPPED = "skipped.csv"
MODEL_CARD = "model.json"
CONFIG = "config.yaml"
METRICS = "metrics.json"
WEIGHTS = "weights"
META_COLUMNS = ("clip_id", "fold", "run", "stage")
# what model.json must hold: inference (the artifact) reads these and nothing else, so the
# frame counts live here only, not also in config.yaml
MODEL_CARD_FIELDS = ("features", "model", "inference", "classes", "layout", "norm_mean", "norm_std",
                     "crop_frames", "segment_frames")


class TrialOutputError(RaytagError):
    """A trial's outputs folder lacks a file or a field that its readers need."""


def _load(path: Path):
    data = np.load(path, allow_pickle=False)
    return [str(i) for i in data["ids"]], data["probs"]


def _frame(ids, probs, fold, stage, run, classes) -> pd.DataFrame:
    df = pd.DataFrame(probs, columns=classes) if len(ids) else pd.DataFrame(columns=classes, dtype=np.float32)
    df.insert(0, "stage", stage)
    df.insert(0, "run", run)
    df.insert(0, "fold", fold)
    df.insert(0, "clip_id", ids)
    return df


def write_parquet(df: pd.DataFrame, path: Path, classes):
    """Written whole or not at all: to a temporary name beside `path`, then renamed over it,
    so a kill mid-write never leaves a damaged file that every later read fails on. The
    temporary name is this writer's own: two writers of one path (two `raytag distill` runs
    sharing a teacher cache) must not write into, or rename away, each other's file."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"raytag.classes"] = json.dumps(list(classes)).encode()
    storage.write_local_atomically(path, lambda fh: pq.write_table(table.replace_schema_metadata(meta), fh))


def _split_tag(tag: str):
    """'finetune__fold2' -> ('finetune', 2); 'warmup' -> ('warmup', -1)."""
    if "__fold" in tag:
        stage, fold = tag.split("__fold")
        return stage, int(fold)
    return tag, -1


def write_outputs(ckpt_out: Path, staging: Path, plan, dataset, store,
                  history: list[dict]) -> tuple[dict, pd.DataFrame]:
    """The trial outputs in `staging`, from a finished run's files (`ckpt_out`: its
    predictions, weights, filter decisions) and its reports (`history`)."""
    cfg = plan.config
    classes = plan.classes
    run = cfg.name
    curated_row = {cid: i for i, cid in enumerate(plan.curated_ids)}
    test_truth = _truth_matrix(dataset, "test", classes)
    noisy_truth = dataset.truth_for("noisy") if dataset.noisy_truth is not None else None

    # -- per-stage predictions ---------------------------------------------------------
    stage_oof, stage_test = [], []
    for path in sorted((ckpt_out / "preds" / "oof").glob("*.npz")):
        stage, fold = _split_tag(path.stem)
        stage_oof.append(_frame(*_load(path), fold, stage, run, classes))
    for path in sorted((ckpt_out / "preds" / "test").glob("*.npz")):
        stage, fold = _split_tag(path.stem)
        stage_test.append(_frame(*_load(path), fold, stage, run, classes))
    stage_oof_df = pd.concat(stage_oof, ignore_index=True)
    stage_test_df = pd.concat(stage_test, ignore_index=True) if stage_test else _frame([], [], 0, "", run, classes)
    write_parquet(stage_oof_df, staging / STAGE_OOF, classes)
    write_parquet(stage_test_df, staging / STAGE_TEST, classes)

    # -- final predictions of each fold (what ensembles use) --------------------------------
    oof, test, noisy_oof, fold_scores = [], [], [], {}
    for fold in plan.model_folds:
        stage = _final_stage(stage_test_df if fold == plan.refit_fold else stage_oof_df, fold)
        if fold != plan.refit_fold:  # the refit model has no out-of-fold clips
            ids, probs = _load(ckpt_out / "preds" / "final" / f"oof_fold{fold}.npz")
            oof.append(_frame(ids, probs, fold, stage, run, classes))
            fold_scores[fold] = layout_scores(plan.layout, plan.curated_y[[curated_row[c] for c in ids]], probs)
            noisy_path = ckpt_out / "preds" / "final" / f"noisy_fold{fold}.npz"
            if noisy_path.exists():  # cv.noisy_folds: the fold's noisy clips, which its model did not train on
                noisy_oof.append(_frame(*_load(noisy_path), fold, stage, run, classes))
        tids, tprobs = _load(ckpt_out / "preds" / "final" / f"test_fold{fold}.npz")
        test.append(_frame(tids, tprobs, fold, stage, run, classes))
    oof_df = pd.concat(oof, ignore_index=True)
    test_df = pd.concat(test, ignore_index=True)
    write_parquet(oof_df, staging / OOF_PREDICTIONS, classes)
    # the curated labels of the OOF clips, so a trial folder can be scored on its own
    pd.DataFrame({"clip_id": plan.curated_ids,
                  "labels": [",".join(c for c, v in zip(classes, row) if v > 0.5) for row in plan.curated_y]}
                 ).to_csv(staging / OOF_TRUTH, index=False)
    write_parquet(test_df, staging / TEST_PREDICTIONS, classes)
    if noisy_oof:
        write_parquet(pd.concat(noisy_oof, ignore_index=True), staging / NOISY_OOF, classes)
    # lwlrap, and MAP@3 (the task's own score) on the 2018 layout
    cv_scores = layout_scores(plan.layout, plan.curated_y[[curated_row[c] for c in oof_df["clip_id"]]],
                              oof_df[classes].to_numpy())
    cv = float(cv_scores["lwlrap"])

    # -- test: mean over folds -> submission (+ score when truth exists) -------------------
    test_lw = None
    if len(test_df):
        mean_test = test_df.groupby("clip_id", sort=False)[classes].mean()
        fnames = [c.split("/", 1)[1] for c in mean_test.index]
        writer = write_submission_2019 if plan.layout == "fat2019" else write_submission_2018
        writer(fnames, classes, mean_test.to_numpy(), staging / SUBMISSION)
        if test_truth is not None:
            test_lw = _score_against(mean_test, test_truth)

    # -- stage table ----------------------------------------------------------------
    stages = _stage_table(stage_oof_df, stage_test_df, plan, classes, curated_row, test_truth,
                          ckpt_out, noisy_truth)
    stages.to_csv(staging / STAGES, index=False)

    # -- weights, model card, config, filter decisions, plots ------------------------------
    shutil.copytree(ckpt_out / WEIGHTS, staging / WEIGHTS, dirs_exist_ok=True)
    (staging / WEIGHTS / "warmup.safetensors").unlink(missing_ok=True)
    for sub in ("filter", "pseudo", "profile"):  # profile: train.profile_epoch
        if (ckpt_out / sub).exists():
            shutil.copytree(ckpt_out / sub, staging / sub, dirs_exist_ok=True)
    (staging / MODEL_CARD).write_text(json.dumps(model_card(plan), indent=2))
    (staging / CONFIG).write_text(cfg.to_yaml())
    if test_truth is not None:
        dataset.truth_for("test")[["clip_id", "fname", "labels"]].assign(
            labels=lambda d: d["labels"].map(",".join)).to_csv(staging / TEST_TRUTH, index=False)
    _tsne(ckpt_out, staging, plan, dataset)
    skipped = pd.concat([dataset.skipped, getattr(store, "failed", pd.DataFrame(columns=["file", "reason"]))])
    skipped.to_csv(staging / SKIPPED, index=False)

    history = pd.DataFrame(history)
    history.to_csv(staging / HISTORY, index=False)
    metrics = {
        "cv_lwlrap": cv,
        **{f"cv_{k}": float(v) for k, v in cv_scores.items() if k != "lwlrap"},
        **fold_metrics(fold_scores),
        "test_lwlrap": test_lw,
        # epochs that trained: filter steps and skipped stage-2 rounds report no training loss
        "epochs_run": int(history["train_loss"].notna().sum()) if len(history) else 0,
        "n_skipped": int(len(skipped)),
        "noisy_oof_clips": int(sum(len(f) for f in noisy_oof)),
    }
    return metrics, stages


def fold_metrics(fold_scores: dict) -> dict:
    """{fold: layout_scores of its held-out clips} -> {"fold_lwlrap": {"0": ...}, ...}, and
    "fold_map3" on the 2018 layout (fold ids as strings: the keys of metrics.json)."""
    names = next(iter(fold_scores.values()), {"lwlrap": None}).keys()
    return {f"fold_{n}": {str(fold): float(s[n]) for fold, s in fold_scores.items()} for n in names}


def model_card(plan) -> dict:
    """Everything needed to rebuild a fold model and its inputs without pickled code."""
    cfg = plan.config
    return {
        "features": cfg.to_dict()["features"],
        "model": recorded_model_settings(cfg.to_dict()["model"]),  # a later default change cannot alter it
        "inference": cfg.to_dict()["inference"],
        "classes": list(plan.classes),
        "layout": plan.layout,
        "channels": plan.channels,
        "bins": plan.bins,
        "crop_frames": cfg.crop_frames(),
        "segment_frames": cfg.segment_frames(),
        "norm_mean": np.asarray(plan.norm_mean).tolist(),
        "norm_std": np.asarray(plan.norm_std).tolist(),
        "folds": list(plan.folds),
        "refit_fold": plan.refit_fold,  # weights/fold{n}.safetensors: the model on every curated clip
    }


def _final_stage(stage_preds: pd.DataFrame, fold: int) -> str:
    """The fold's last stage with predictions, in pipeline order (files sort stage2_r10 before _r9)."""
    rows = stage_preds[stage_preds["fold"] == fold]
    return str(max(rows["stage"], key=_stage_order)) if len(rows) else ""


def _truth_matrix(dataset, split, classes):
    if split == "test" and dataset.test_truth is None:
        return None
    truth = dataset.truth_for(split)
    if truth is None or not len(truth):
        return None
    return truth_frame(truth, classes)


def _score_against(scores: pd.DataFrame, truth: pd.DataFrame) -> float:
    common = scores.index.intersection(truth.index)
    return float(lwlrap(truth.loc[common].to_numpy(), scores.loc[common].to_numpy()))


def _stage_table(stage_oof, stage_test, plan, classes, curated_row, test_truth, ckpt_out, noisy_truth):
    rows = []
    order = sorted(dict.fromkeys(stage_oof["stage"]), key=_stage_order)
    for stage in order:
        part = stage_oof[stage_oof["stage"] == stage]
        y = plan.curated_y[[curated_row[c] for c in part["clip_id"]]]
        cv = layout_scores(plan.layout, y, part[classes].to_numpy())  # MAP@3 beside lwlrap on 2018
        row = {"stage": stage, "folds": int(part["fold"].nunique()), **{f"cv_{k}": float(v) for k, v in cv.items()}}
        tpart = stage_test[stage_test["stage"] == stage]
        row["test_lwlrap"] = (_score_against(tpart.groupby("clip_id")[classes].mean(), test_truth)
                              if test_truth is not None and len(tpart) else float("nan"))
        rows.append(row)
    table = pd.DataFrame(rows)
    # counts of the filter and pseudo-label rounds, averaged over folds
    decisions = [json.loads(p.read_text()) for p in sorted((ckpt_out / "filter").glob("fold*.json"))] \
        if (ckpt_out / "filter").exists() else []
    if decisions:
        n_lab = np.mean([d["n_labelled"] for d in decisions])
        n_acc = np.mean([d["n_accepted"] for d in decisions])
        n_unl = np.mean([len(d["unlabelled"]) for d in decisions])
        table["n_labelled"] = np.nan
        table["n_accepted"] = np.nan
        table["n_unlabelled"] = np.nan
        mask = table["stage"].str.startswith("stage2")
        table.loc[mask, ["n_labelled", "n_accepted", "n_unlabelled"]] = [n_lab, n_acc, n_unl]
        if noisy_truth is not None:
            given = dict(zip(plan.noisy_ids, _given_labels(plan)))
            truth = dict(zip(noisy_truth["clip_id"], noisy_truth["labels"]))
            reports = [filter_precision_recall(d["accepted"], _judged(d, given), truth) for d in decisions]
            table.loc[mask, "filter_precision"] = np.mean([r["precision"] for r in reports])
            table.loc[mask, "filter_recall"] = np.mean([r["recall"] for r in reports])
    pseudo = sorted((ckpt_out / "pseudo").glob("fold*_r*.json")) if (ckpt_out / "pseudo").exists() else []
    by_round: dict[str, list] = {}
    for path in pseudo:
        by_round.setdefault("stage2_r" + path.stem.split("_r")[1], []).append(json.loads(path.read_text()))
    for stage, infos in by_round.items():  # averaged over folds, like the filter counts
        mask = table["stage"] == stage
        table.loc[mask, "pseudo_lower"] = infos[0]["lower"]
        table.loc[mask, "n_pseudo"] = np.mean([i["n_pseudo"] for i in infos])
    return table


def _stage_order(stage: str):
    """Pipeline order: warmup, finetune, stage2_r0, stage2_r1, ..."""
    if stage.startswith("stage2_r"):
        return (2, int(stage.split("_r")[1]))
    return ({"warmup": 0, "finetune": 1}.get(stage, 3), 0)


def _judged(decision: dict, given: dict) -> dict:
    """The noisy clips one fold's filter judged (accepted or not), with their given labels: with
    cv.noisy_folds a fold's held-out noisy clips are not judged, and scoring the filter's recall
    over them too would understate it by about 1/K."""
    return {c: given[c] for c in [*decision["accepted"], *decision["unlabelled"]]}


def _given_labels(plan):
    return [tuple(c for c, v in zip(plan.classes, row) if v > 0.5) for row in plan.noisy_y]


def _tsne(ckpt_out: Path, staging: Path, plan, dataset):
    """Seed 002's picture: clip embeddings coloured by class, before and after the filter."""
    files = sorted((ckpt_out / "embeddings").glob("fold*.npz")) if (ckpt_out / "embeddings").exists() else []
    if not files:
        return
    data = np.load(files[0])
    lab_idx = {c: i for i, c in enumerate(plan.curated_ids)}
    noisy_idx = {c: i for i, c in enumerate(plan.noisy_ids)}
    # colour = first given label (curated clips: true; noisy clips: as given, maybe wrong)
    lab_labels = [_first_label(plan.curated_y[lab_idx[str(c)]]) for c in data["labelled_ids"]]
    noisy_labels = np.asarray([_first_label(plan.noisy_y[noisy_idx[str(c)]]) for c in data["noisy_ids"]])
    accepted = data["accepted"].astype(bool)
    before = np.concatenate([data["labelled"], data["noisy"]])
    after = np.concatenate([data["labelled"], data["noisy"][accepted]])
    tsne_plot(before, np.concatenate([lab_labels, noisy_labels]),
              after, np.concatenate([lab_labels, noisy_labels[accepted]]),
              plan.classes, staging / "tsne_filter.png", seed=plan.config.seed,
              title=f"{plan.config.name}: curated + noisy clips (given labels) before / after the filter")


def _first_label(row: np.ndarray) -> int:
    """A clip's colour: its first given label, or -1 (grey, "unlabelled") when it has none."""
    return int(np.argmax(row)) if row.max() > 0.5 else -1


# ----------------------------------------------------------------------------- readers
def _classes_of(table, path: str) -> list[str]:
    meta = table.schema.metadata or {}
    raw = meta.get(b"raytag.classes")
    if raw is not None:
        try:
            classes = json.loads(raw.decode())
        except ValueError:
            classes = raw.decode().split(",")
        return [str(c) for c in classes]
    return [c for c in table.column_names if c not in META_COLUMNS]


def read_predictions(path: str, allow_empty: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """A predictions parquet -> (its rows, classes in order). The runner writes only the
    final model of each fold there (per-stage predictions go to stage_oof.parquet). An empty
    one is refused unless `allow_empty` (test.parquet of a dataset without test clips)."""
    table = storage.read_parquet_table(path)
    classes = _classes_of(table, path)
    df = table.to_pandas()
    if df.empty and allow_empty:
        return df, classes
    missing = [c for c in ["clip_id", *classes] if c not in df.columns]
    if missing:
        raise RaytagError(f"{path}: column '{missing[0]}' is missing")
    if df.empty:
        raise RaytagError(f"{path}: holds no predictions")
    return df, classes


def read_test_predictions(outputs_dir: str, classes: list[str]) -> pd.DataFrame | None:
    """A trial's test predictions with its fold models averaged: one row per clip_id, one
    column per class; None when it has none. Test clips are optional: a dataset without
    them leaves an empty test.parquet, which means "no test predictions", not a damaged file."""
    path = storage.join(outputs_dir, TEST_PREDICTIONS)
    if not storage.exists(path):
        return None
    df, test_classes = read_predictions(path, allow_empty=True)
    if df.empty:
        return None
    if test_classes != list(classes):
        raise RaytagError(f"{path}: class order differs from oof.parquet's; train the trial again so "
                          "that both come from one run")
    return df.groupby("clip_id", sort=True)[list(classes)].mean()


def read_noisy_oof(outputs_dir: str) -> pd.DataFrame | None:
    """A run's out-of-fold predictions on its noisy clips (cv.noisy_folds), one row per
    clip_id and one column per class; None when it has none (trained without noisy folds)."""
    path = storage.join(outputs_dir, NOISY_OOF)
    if not storage.exists(path):
        return None
    df, classes = read_predictions(path)
    return df.groupby("clip_id", sort=True)[classes].mean()


def read_model_card(outputs_dir: str) -> dict:
    """A trial's model.json, with every field of MODEL_CARD_FIELDS present (else an error
    naming the file: a card without them was not written by `model_card`)."""
    path = storage.join(outputs_dir, MODEL_CARD)
    if not storage.exists(path):
        raise TrialOutputError(f"{path}: missing; is {outputs_dir} a finished trial's outputs?")
    try:
        card = json.loads(storage.read_text(path))
    except ValueError as err:
        raise TrialOutputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(card, dict):
        raise TrialOutputError(f"{path}: not a JSON object")
    missing = [key for key in MODEL_CARD_FIELDS if card.get(key) is None]
    if missing:
        raise TrialOutputError(
            f"{path}: {', '.join(missing)} missing; inference reads them from model.json only "
            "(training writes them): train the trial again with this version of raytag"
        )
    return card


def write_metrics(outputs: Path, metrics: dict) -> None:
    (outputs / METRICS).write_text(json.dumps(metrics, indent=2))


def read_stages(outputs_dir: str) -> pd.DataFrame:
    """The stage table of a trial's outputs (stages.csv)."""
    return storage.read_csv(storage.join(outputs_dir, STAGES))
