"""Multi-label stratified K folds over the labelled (curated) clips.

iterative-stratification (Sechidis et al. 2011) keeps every class's share of positives
close to 1/K in each fold, which a plain KFold does not do for rare classes.
"""
from __future__ import annotations

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from raytag.errors import DatasetError


class FoldError(DatasetError):
    """The clips cannot be split into the requested number of folds."""


def make_folds(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold id (0..n_folds-1) for each row of the multi-hot matrix y (n, C).

    The same y, n_folds and seed give the same folds. Every row lands in exactly one
    fold. Soft targets are read as positive at >= 0.5; rows with no label are spread
    over the folds like any other.
    """
    y = np.asarray(y)
    if y.ndim != 2:
        raise ValueError(f"y must be a (clips, classes) matrix, got shape {y.shape}")
    n = y.shape[0]
    if n_folds < 2:
        raise FoldError(f"cv.n_folds must be at least 2, got {n_folds}")
    if n < n_folds:
        raise FoldError(
            f"{n} labelled clips cannot be split into {n_folds} folds; "
            f"lower cv.n_folds to at most {max(n, 2)} or add curated clips"
        )
    labels = y >= 0.5
    if labels.shape[1] < 2:
        # iterstrat accepts only multi-label indicator matrices: add the complement column
        labels = np.concatenate([labels, ~labels], axis=1)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(n, -1, dtype=np.int64)
    for k, (_, test_idx) in enumerate(splitter.split(np.zeros((n, 1)), labels)):
        folds[test_idx] = k
    assert (folds >= 0).all(), "iterstrat left a row without a fold"
    return folds
