"""Fit ensemble weights that maximise out-of-fold lwlrap, and score them honestly.

Method: greedy forward selection with replacement (Caruana et al., "Ensemble selection
from libraries of models", ICML 2004). Start from the best single member; at each step
add (again, if it helps) the member whose addition gives the highest lwlrap of the
running average; keep the best ensemble seen. The weights are the selection counts over
their sum, so they are non-negative and sum to 1. Why this rather than a gradient
method: lwlrap is a ranking metric (piecewise constant in the weights), and selection
with replacement fits it directly with few, coarse weights (multiples of 1/steps), which
overfits less than free continuous weights.

Guard against overfitting: nested cross-validation over the outer folds. For each fold k
the weights are fitted on the out-of-fold clips of the other folds and applied to the
clips of fold k; the lwlrap of those held-out predictions, pooled over all clips, is the
weighted combiner's CV score (`nested_lwlrap`), the number compared with the other
combiners. The weights saved in the artifact are then refitted on all clips.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raytag.metrics import lwlrap

DEFAULT_STEPS = 20


@dataclass
class WeightFit:
    weights: np.ndarray  # (members,), >= 0, sum 1
    train_lwlrap: float  # lwlrap of the weighted mean on the clips it was fitted on
    steps: list[int]  # member index added at each step, in order (best prefix kept)


@dataclass
class NestedFit:
    final: WeightFit  # fitted on all clips: the weights to use
    nested_lwlrap: float  # lwlrap of held-out-fold predictions (weights never saw those clips)
    fold_weights: dict[int, list[float]]  # outer fold -> weights fitted without it
    heldout_preds: np.ndarray  # (clips, classes): each clip predicted by weights fitted without its fold


def fit_weights(preds, truth, steps: int = DEFAULT_STEPS) -> WeightFit:
    """Greedy forward selection with replacement on `preds` (members, clips, classes)."""
    preds = np.asarray(preds, dtype=np.float64)
    truth = np.asarray(truth)
    n_members = preds.shape[0]
    if n_members == 0:
        raise ValueError("no members to weigh")
    counts = np.zeros(n_members, dtype=np.int64)
    running = np.zeros(preds.shape[1:])
    chosen: list[int] = []
    best_score, best_len = -np.inf, 0
    for step in range(max(1, steps)):
        k = step + 1
        # score each candidate's addition to the running sum
        scores = [lwlrap(truth, (running + preds[m]) / k) for m in range(n_members)]
        pick = int(np.argmax(scores))  # first best on ties: stable, prefers earlier members
        running += preds[pick]
        counts[pick] += 1
        chosen.append(pick)
        if scores[pick] > best_score + 1e-12:
            best_score, best_len = scores[pick], k
    kept = chosen[:best_len]
    weights = np.bincount(kept, minlength=n_members).astype(np.float64)
    return WeightFit(weights=weights / weights.sum(), train_lwlrap=float(best_score), steps=kept)


def nested_fit(preds, truth, folds, steps: int = DEFAULT_STEPS) -> NestedFit:
    """Fit weights on all folds but k, predict fold k, for each k; then refit on all clips.

    `folds` gives an outer fold id per clip (the best member's CV folds). With a single
    fold there is nothing to hold out, and ValueError says so.
    """
    preds = np.asarray(preds, dtype=np.float64)
    truth = np.asarray(truth)
    folds = np.asarray(folds)
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError("nested weight fitting needs at least 2 outer folds")
    heldout = np.zeros(preds.shape[1:])
    fold_weights: dict[int, list[float]] = {}
    for k in fold_ids:
        inner = folds != k
        fit = fit_weights(preds[:, inner], truth[inner], steps)
        fold_weights[int(k)] = fit.weights.tolist()
        heldout[~inner] = np.tensordot(fit.weights, preds[:, ~inner], axes=1)
    final = fit_weights(preds, truth, steps)
    return NestedFit(
        final=final,
        nested_lwlrap=float(lwlrap(truth, heldout)),
        fold_weights=fold_weights,
        heldout_preds=heldout,
    )
