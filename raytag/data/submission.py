"""Kaggle submission files of the two layouts, written from a score matrix.

FSDKaggle2019: `fname` + one score column per class (lwlrap); FSDKaggle2018: `fname,label`
with the top 3 classes separated by spaces, best first (MAP@3). Scores must be finite: a
NaN would be written into the file and silently score as the worst rank.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, TextIO, Union

import numpy as np
import pandas as pd


def _check_table(fnames: Sequence[str], classes: Sequence[str], scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(fnames), len(classes)):
        raise ValueError(f"scores {scores.shape} do not match {len(fnames)} fnames x {len(classes)} classes")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (a NaN would be written into the submission)")
    return scores


def _write_csv(df: pd.DataFrame, target: Union[str, Path, TextIO], **kwargs) -> Optional[Path]:
    """Write `df` to a file (its folder made; returns the path) or to an open text stream
    such as sys.stdout (returns None)."""
    if hasattr(target, "write"):
        df.to_csv(target, index=False, **kwargs)
        return None
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, **kwargs)
    return path


def write_submission_2019(fnames: Sequence[str], classes: Sequence[str], scores, path) -> Optional[Path]:
    """fname + one score column per class, in `classes` order, to a file or a text stream
    (`_write_csv`). Returns the path written."""
    scores = _check_table(fnames, classes, scores)
    df = pd.DataFrame(scores, columns=list(classes))
    df.insert(0, "fname", list(fnames))
    # 9 significant digits tell every float32 apart (7 rounded 0.99999994 and 0.99999988 into
    # a tie), so the file ranks as the model did
    return _write_csv(df, path, float_format="%.9g")


def top3_labels(classes: Sequence[str], scores) -> list[tuple[str, ...]]:
    """Best three classes per row; ties go to the earlier class (stable sort). A list has
    no ties, so this differs from raytag.metrics.map_at_3, which counts a tied class as
    ranked above the true one: on tied scores the file can score higher than the scores
    did in memory (the metric's rule is deliberate; see raytag.metrics)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    return [tuple(classes[j] for j in row) for row in order]


def write_submission_2018(fnames: Sequence[str], classes: Sequence[str], scores, path) -> Optional[Path]:
    """fname,label with the top-3 classes space-separated, best first, to a file or a text
    stream (`_write_csv`)."""
    scores = _check_table(fnames, classes, scores)
    labels = [" ".join(t) for t in top3_labels(classes, scores)]
    return _write_csv(pd.DataFrame({"fname": list(fnames), "label": labels}), path)

