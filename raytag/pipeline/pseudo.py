"""Pseudo-label selection for one round of stage 2 (seed 002's semi-supervised rounds).

A clip is taken when the model's top probability lies in [lower, upper):
  - the lower bound asks that the model be confident enough to trust its guess
    (scheduled over rounds, see raytag.pipeline.schedule);
  - the upper bound leaves out clips the model is already sure of: training on them
    again teaches little and drives over-fitting to the model's own outputs.
"""
from __future__ import annotations

import numpy as np


def select_pseudo(probs, lower: float, upper: float) -> tuple[np.ndarray, np.ndarray]:
    """Choose unlabelled clips and their pseudo targets.

    Args:
        probs: (n, C) sigmoid probabilities of the current model on the unlabelled clips.
        lower: a clip is taken when its top probability is >= lower ...
        upper: ... and < upper. `upper >= 1` sets no upper cut (a probability of 1.0 is taken).

    Returns:
        rows: bool (n,), the clips taken.
        targets: float32 (n, C) multi-hot targets: for a taken clip, every class whose
            probability is >= lower (multi-label clips keep all their confident classes;
            its top class is always among them, since it is >= lower); all-zero rows
            for clips not taken. Targets are hard 0/1, not soft probabilities, as in seed 002.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-d (clips, classes), got shape {probs.shape}")
    if not np.all(np.isfinite(probs)):
        bad = np.argwhere(~np.isfinite(probs))[0]
        raise ValueError(f"probs must be finite; clip {bad[0]}, class {bad[1]} is {probs[tuple(bad)]}")
    if not (0.0 <= lower < upper):
        raise ValueError(f"need 0 <= lower < upper, got lower={lower}, upper={upper}")
    n, n_classes = probs.shape
    targets = np.zeros((n, n_classes), dtype=np.float32)
    if n == 0 or n_classes == 0:
        return np.zeros(n, dtype=bool), targets
    top = probs.max(axis=1)
    rows = top >= lower
    if upper < 1.0:
        rows &= top < upper
    targets[rows] = (probs[rows] >= lower).astype(np.float32)
    return rows, targets


def quantile_bounds(probs, lower_q: float, upper_q: float) -> tuple[float, float]:
    """Probability bounds at quantiles of the clips' top probabilities.

    A model's confidence depends on its training (an under-trained model's top
    probabilities can all sit near 0.1), so fixed probability bounds may take every clip
    or none. Read as quantiles, a schedule of 0.35 -> 0.65 takes the most confident 65%
    of the clips in the first round and 35% in the last, whatever the calibration; an
    upper quantile of 0.98 leaves out the 2% the model is surest of. Returns
    (lower, upper) probabilities for `select_pseudo`; upper is 1.0 (no cut) at upper_q >= 1.

    Design choice, kept on purpose: the lower probability is also `select_pseudo`'s per-class
    cut for the targets. On an under-confident model it is low (say 0.24), so a taken clip
    gets every class at or above it: more positive labels per clip than the data holds
    (1.6 a clip where clips carry ~1). The quantiles bound how many clips are taken, not how
    many labels each gets; use bounds: probability for a fixed per-class cut.
    """
    if not 0.0 <= lower_q < upper_q:
        raise ValueError(f"need 0 <= lower_q < upper_q, got {lower_q}, {upper_q}")
    top = np.asarray(probs, dtype=np.float64).max(axis=1)
    if top.size == 0:
        return 1.0, 1.0
    lower = float(np.quantile(top, lower_q))
    upper = 1.0 if upper_q >= 1.0 else float(np.quantile(top, upper_q))
    if upper <= lower:  # many ties at the top: keep a non-empty interval
        upper = float(np.nextafter(lower, np.inf))
    return lower, upper
