"""Ways to combine the class probabilities of several models into one score per class.

Every combiner takes `preds` of shape (members, clips, classes) and returns (clips, classes).

- mean:      arithmetic mean of the probabilities.
- geometric: exp of the mean log-probability (FAT2019 1st place averaged its fold models
             this way); probabilities are clipped to [EPS, 1] so a 0 cannot veto a class.
- rank:      mean of per-class percentile ranks. Each member's score for class c is mapped
             through that member's empirical CDF for class c on a reference set (its
             out-of-fold predictions), so members with different calibration weigh the same.
             The CDF is kept as `RANK_POINTS` quantiles per class, stored in the artifact,
             so a single new clip is ranked exactly as the evaluated out-of-fold clips were.
- weighted:  weighted arithmetic mean; weights are fitted by raytag.ensemble.weights.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

COMBINERS = ("mean", "geometric", "rank", "weighted")
EPS = 1e-6
RANK_POINTS = 201  # quantiles kept per class: resolution of 0.5 percentile


def _check(preds) -> np.ndarray:
    preds = np.asarray(preds, dtype=np.float64)
    if preds.ndim != 3:
        raise ValueError(f"preds must be (members, clips, classes), got shape {preds.shape}")
    if preds.shape[0] == 0:
        raise ValueError("no members to combine")
    return preds


def _norm_weights(weights, n_members: int) -> np.ndarray:
    if weights is None:
        return np.full(n_members, 1.0 / n_members)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_members,):
        raise ValueError(f"{n_members} members but {w.size} weights")
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {w.tolist()}")
    return w / w.sum()


def arithmetic_mean(preds, weights=None) -> np.ndarray:
    preds = _check(preds)
    w = _norm_weights(weights, preds.shape[0])
    return np.tensordot(w, preds, axes=1)


def geometric_mean(preds, weights=None) -> np.ndarray:
    preds = _check(preds)
    w = _norm_weights(weights, preds.shape[0])
    return np.exp(np.tensordot(w, np.log(np.clip(preds, EPS, 1.0)), axes=1))


def rank_reference(member_preds, n_points: int = RANK_POINTS) -> np.ndarray:
    """Quantiles (n_points, classes) of one member's scores per class: its empirical CDF."""
    member_preds = np.asarray(member_preds, dtype=np.float64)
    if member_preds.ndim != 2 or member_preds.shape[0] == 0:
        raise ValueError(f"reference predictions must be (clips > 0, classes), got {member_preds.shape}")
    return np.quantile(member_preds, np.linspace(0.0, 1.0, n_points), axis=0)


def percentile_ranks(member_preds, reference) -> np.ndarray:
    """Each score's position in [0, 1] within the member's reference distribution of its class."""
    member_preds = np.asarray(member_preds, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim != 2 or reference.shape[1] != member_preds.shape[1]:
        raise ValueError(f"reference {reference.shape} does not match predictions {member_preds.shape}")
    levels = np.linspace(0.0, 1.0, reference.shape[0])
    out = np.empty_like(member_preds)
    for c in range(member_preds.shape[1]):
        # A class whose reference scores are all equal has flat quantiles; interp then
        # returns the top level above them and 0 below, which is the CDF's own answer.
        out[:, c] = np.interp(member_preds[:, c], reference[:, c], levels)
    return out


def rank_mean(preds, references: Optional[list] = None, weights=None) -> np.ndarray:
    """Mean percentile rank; `references[m]` is member m's rank_reference (default: the
    members' own `preds`, i.e. ranks within the clips being combined)."""
    preds = _check(preds)
    w = _norm_weights(weights, preds.shape[0])
    if references is None:
        references = [rank_reference(p) for p in preds]
    if len(references) != preds.shape[0]:
        raise ValueError(f"{preds.shape[0]} members but {len(references)} rank references")
    ranks = np.stack([percentile_ranks(p, r) for p, r in zip(preds, references)])
    return np.tensordot(w, ranks, axes=1)


def combine(name: str, preds, weights=None, references=None) -> np.ndarray:
    """Apply the combiner `name` (one of COMBINERS)."""
    if name == "mean":
        return arithmetic_mean(preds)
    if name == "geometric":
        return geometric_mean(preds)
    if name == "rank":
        return rank_mean(preds, references)
    if name == "weighted":
        if weights is None:
            raise ValueError("the weighted combiner needs fitted weights")
        return arithmetic_mean(preds, weights)
    raise ValueError(f"unknown combiner {name!r}; valid: {', '.join(COMBINERS)}")
