"""`raytag score`: reading Kaggle submission CSVs and scoring them against a truth file
(submissions are written by raytag.data.submission; truth files are read by
raytag.data.truth, the one reader of every truth file).

Two forms, told apart by their columns:

- 2019 (FAT2019): truth `fname,labels` (labels comma-separated); submission `fname` plus
  one score column per class. Scored with lwlrap (and per-class lwlrap).
- 2018 (FSDKaggle2018): truth `fname,label` (one label; rows with usage "Ignored" are
  not scored, as on Kaggle); submission `fname,label` with up to 3 space-separated
  labels, best first. Scored with MAP@3.

Every problem with a file raises `ScoringError` naming the file and what to fix;
nothing is dropped silently (clips the truth does not know are reported, not scored).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from raytag.data.truth import LAYOUT_2018, LAYOUT_2019, Truth, read_keyed_csv, read_truth
from raytag.data.truth import few as _few
from raytag.errors import ScoringError
from raytag.metrics import lwlrap, per_class_lwlrap

_NAN_TEXT = {"", "nan", "na", "n/a", "null", "none", "-nan"}


@dataclass
class Submission:
    layout: str
    fnames: list[str]
    classes: Optional[list[str]] = None  # 2019: score columns in file order
    scores: Optional[np.ndarray] = None  # 2019: (n, C) float64
    top3: Optional[list[tuple[str, ...]]] = None  # 2018: up to 3 labels per clip, best first


# ----------------------------------------------------------------------------- reading
def read_submission(path) -> Submission:
    """Read a 2019 (fname + class score columns) or 2018 (fname,label top-3) submission."""
    path = Path(path)
    df = read_keyed_csv(path, "submission", ScoringError)
    others = [c for c in df.columns if c != "fname"]
    if others == ["label"]:
        return _read_2018(path, df)
    if "label" in others and not _any_number(df["label"]):
        # label text beside other columns: a 2018 submission with extras, not 2019 scores
        extra = [c for c in others if c != "label"]
        raise ScoringError(f"{path}: a 2018 submission has exactly the columns fname,label; found extra: "
                           f"{_few(extra)}. Drop those columns")
    if not others:
        raise ScoringError(f"{path}: the submission has only an fname column; expected one score column per class")
    dup = pd.Index(others)[pd.Index(others).duplicated()].unique()
    if len(dup):
        raise ScoringError(f"{path}: class columns appear more than once: {_few(dup)}")
    scores = np.empty((len(df), len(others)), dtype=np.float64)
    for j, col in enumerate(others):
        text = df[col].str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            rows = np.flatnonzero(bad)
            missing = text.iloc[rows].str.lower().isin(_NAN_TEXT).to_numpy()
            shown = _few([f"{df['fname'].iloc[i]}={text.iloc[i]!r}" for i in rows])
            if missing.all():
                kind = "empty or NaN scores"
            elif not missing.any() and np.isinf(values[rows]).all():
                kind = "infinite scores"
            else:
                kind = "non-numeric scores"
            raise ScoringError(f"{path}: column {col!r} has {len(rows)} {kind}: {shown}; every score must be a finite number")
        scores[:, j] = values
    return Submission(LAYOUT_2019, df["fname"].tolist(), classes=others, scores=scores)


def _read_2018(path: Path, df: pd.DataFrame) -> Submission:
    """fname,label: up to 3 distinct space-separated labels per clip, best first."""
    top3 = []
    for fname, text in zip(df["fname"], df["label"]):
        labels = tuple(text.split())
        if len(labels) > 3:
            raise ScoringError(f"{path}: clip {fname} lists {len(labels)} labels; MAP@3 takes at most 3")
        if len(set(labels)) != len(labels):
            raise ScoringError(f"{path}: clip {fname} lists a label twice: {text}")
        top3.append(labels)
    return Submission(LAYOUT_2018, df["fname"].tolist(), top3=top3)


def _any_number(column: pd.Series) -> bool:
    """Whether any value of a text column reads as a number (a score column's would)."""
    return bool(pd.to_numeric(column.str.strip(), errors="coerce").notna().any())


# ----------------------------------------------------------------------------- scoring
def _align(truth: Truth, sub: Submission, truth_path, sub_path) -> tuple[np.ndarray, list[str]]:
    """Row index into the submission for each truth clip; fnames the truth does not know."""
    pos = {f: i for i, f in enumerate(sub.fnames)}
    missing = [f for f in truth.fnames if f not in pos]
    if missing:
        raise ScoringError(
            f"{sub_path}: {len(missing)} of the {len(truth.fnames)} clips in {truth_path} have no row "
            f"in the submission: {_few(missing)}"
        )
    known = set(truth.fnames)
    extra = [f for f in sub.fnames if f not in known]
    return np.array([pos[f] for f in truth.fnames], dtype=np.int64), extra


def score_2019(truth: Truth, sub: Submission, truth_path="truth", sub_path="submission") -> dict:
    """lwlrap of a 2019 submission; dict with lwlrap, per-class table and counts."""
    classes = sub.classes
    if truth.classes is not None:
        known = set(truth.classes)
        unknown = [c for c in classes if c not in known]
        if unknown:
            raise ScoringError(
                f"{sub_path}: class columns not in {Path(truth_path).parent / 'sample_submission.csv'}: "
                f"{_few(unknown)} (check the spelling of the header)"
            )
        # a class left out is a competitor the ranking never sees: lwlrap would come out higher
        absent = [c for c in truth.classes if c not in set(classes)]
        if absent:
            raise ScoringError(
                f"{sub_path}: no score column for {_few(absent)} of "
                f"{Path(truth_path).parent / 'sample_submission.csv'}; a submission scores every class"
            )
    col = {c: j for j, c in enumerate(classes)}
    unknown_labels = sorted({lab for labs in truth.labels for lab in labs if lab not in col})
    if unknown_labels:
        raise ScoringError(
            f"{sub_path}: the truth uses labels that have no score column in the submission: "
            f"{_few(unknown_labels)} (check the spelling of the header)"
        )
    if truth.classes is None:  # no class list beside the truth: a column no clip is labelled with is unknown
        known = {lab for labs in truth.labels for lab in labs}
        unknown = [c for c in classes if c not in known]
        if unknown:
            raise ScoringError(
                f"{sub_path}: class columns that no clip of {truth_path} is labelled with: {_few(unknown)}. "
                f"Check the spelling of the header, or put the dataset's sample_submission.csv beside "
                f"{truth_path} so its columns name the classes"
            )
    rows, extra = _align(truth, sub, truth_path, sub_path)
    y = np.zeros((len(truth.fnames), len(classes)), dtype=np.float64)
    for i, labs in enumerate(truth.labels):
        y[i, [col[lab] for lab in labs]] = 1
    scored = y.sum(axis=1) > 0
    if not scored.any():
        raise ScoringError(f"{truth_path}: no clip in the truth has a label; nothing to score")
    scores = sub.scores[rows]
    per_class, weights = per_class_lwlrap(y[scored], scores[scored])
    return {
        "metric": "lwlrap",
        "lwlrap": lwlrap(y[scored], scores[scored]),
        "classes": list(classes),
        "per_class": per_class,
        "weights": weights,
        "positives": y[scored].sum(axis=0).astype(int),
        "n_clips": int(scored.sum()),
        "unlabelled": [f for f, s in zip(truth.fnames, scored) if not s],
        "extra": extra,
    }


def map_at_3_from_lists(true_labels: Sequence[str], predicted: Sequence[Sequence[str]]) -> float:
    """MAP@3 from ranked label lists: 1/(position+1) when the true label is among the first 3.

    Written out rather than via metrics.map_at_3 because a list has no scores for the
    classes it leaves out (they are simply not predicted, not tied).
    """
    total = 0.0
    for truth, pred in zip(true_labels, predicted):
        pred = list(pred)[:3]
        if truth in pred:
            total += 1.0 / (pred.index(truth) + 1)
    return total / len(true_labels)


def score_2018(truth: Truth, sub: Submission, truth_path="truth", sub_path="submission",
               ignored: Sequence[str] = ()) -> dict:
    """MAP@3 of a 2018 submission. `ignored`: the truth's fnames with usage "Ignored"; the
    submission's rows for them are listed apart from those the truth does not know."""
    classes = truth.classes or sorted({labs[0] for labs in truth.labels})
    known = set(classes)
    if not truth.fnames:
        raise ScoringError(f"{truth_path}: no clip to score (every row is left out, e.g. usage 'Ignored')")
    rows, extra = _align(truth, sub, truth_path, sub_path)
    unscored = set(ignored)
    predicted = [sub.top3[r] for r in rows]
    unknown = sorted({lab for labs in predicted for lab in labs if lab not in known})
    if unknown:
        raise ScoringError(
            f"{sub_path}: labels that no clip of {truth_path} has: {_few(unknown)} "
            f"(known labels: {_few(classes, 8)}); check their spelling"
        )
    return {
        "metric": "map@3",
        "map@3": map_at_3_from_lists([labs[0] for labs in truth.labels], predicted),
        "n_clips": len(truth.fnames),
        "extra": [f for f in extra if f not in unscored],
        "ignored": [f for f in extra if f in unscored],  # in the truth, but not scored (as on Kaggle)
    }


def ignored_fnames(truth_path) -> list[str]:
    """The fnames of a 2018 truth file's rows with usage "Ignored" (read_truth leaves them out)."""
    df = read_keyed_csv(truth_path, "truth", ScoringError, keys=("fname", "clip_id"))
    if "usage" not in df.columns:
        return []
    names = df["fname"] if "fname" in df.columns else df["clip_id"].str.split("/").str[-1]
    return names[df["usage"].str.strip().str.lower() == "ignored"].tolist()


def score_files(truth_path, submission_path) -> dict:
    truth = read_truth(truth_path)
    sub = read_submission(submission_path)
    if truth.layout != sub.layout:
        form = {LAYOUT_2019: "2019 (score columns)", LAYOUT_2018: "2018 (fname,label top-3)"}
        raise ScoringError(
            f"the truth {truth_path} is in the {form[truth.layout]} form but the submission "
            f"{submission_path} is in the {form[sub.layout]} form"
        )
    if truth.layout == LAYOUT_2019:
        return score_2019(truth, sub, truth_path, submission_path)
    return score_2018(truth, sub, truth_path, submission_path, ignored_fnames(truth_path))
