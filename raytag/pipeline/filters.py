"""Which noisy clips to trust after the curated fine-tune (stage 1 -> filter).

The stage-1 model scores every noisy clip; a clip whose *given* labels the model agrees
with is accepted and joins the labelled set, keeping its given labels (the filter decides
trust, it never relabels: relabelling is label spreading's and pseudo-labelling's job).
Everything else becomes unlabelled data for the pseudo-label rounds.

Rules:
  "min_prob":    every given label has probability >= threshold (strict: a clip with a
                 wrong extra label is rejected even if its main label is right).
  "clip_lwlrap": the clip's own lwlrap (label-ranking average precision of its given labels
                 under the model's scores) >= threshold, as the FAT2019 2nd place
                 (Bouteillon) did. Rank-based, so it does not care how calibrated the
                 probabilities are; ties are pessimistic, as in raytag.metrics and sklearn.
A clip with no given label is never accepted (there is nothing to agree with).
"""
from __future__ import annotations

import numpy as np

from raytag.metrics import max_rank  # numpy ranks: scipy.stats costs every Train worker 0.5 s to import

RULES = ("min_prob", "clip_lwlrap")
COMBINE = ("or", "and", "only")


def _check_pair(y_given, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_given)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or p.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"y_given and probs must both be (clips, classes); got {y.shape} and {p.shape}")
    if not np.all(np.isfinite(p)):
        bad = np.argwhere(~np.isfinite(p))[0]
        raise ValueError(f"probs must be finite; clip {bad[0]}, class {bad[1]} is {p[tuple(bad)]}")
    return y > 0, p


def clip_lwlrap(y_given, probs) -> np.ndarray:
    """Per-clip label-ranking average precision, shape (n,); NaN for clips with no label.

    For clip i and each given label j: rank = #labels scored >= s_ij, hits = #given labels
    scored >= s_ij; the clip's value is the mean of hits / rank over its given labels.
    This is the per-sample term of sklearn's label_ranking_average_precision_score (and of
    raytag.metrics.lwlrap); neither exposes it per clip, hence these few lines.
    One difference from sklearn: a clip whose every class is given scores by the same
    formula (1.0) rather than by a special case, which is the same value.
    """
    y, p = _check_pair(y_given, probs)
    n_pos = y.sum(axis=1)
    if y.shape[0] == 0:
        return np.zeros(0)
    rank = max_rank(-p)
    hits = max_rank(np.where(y, -p, np.inf))
    total = np.where(y, hits / rank, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, total / np.maximum(n_pos, 1), np.nan)


def accept_by_rule(y_given, probs, rule: str, threshold: float) -> np.ndarray:
    """bool (n,): which noisy clips the model agrees with; accepted clips keep their given labels.

    y_given: (n, C) 0/1 given (noisy) labels; probs: (n, C) the model's probabilities.
    """
    y, p = _check_pair(y_given, probs)
    has_label = y.any(axis=1)
    if rule == "min_prob":
        ok = np.where(y, p >= threshold, True).all(axis=1)
    elif rule == "clip_lwlrap":
        score = clip_lwlrap(y, p)
        ok = np.nan_to_num(score, nan=-np.inf) >= threshold
    else:
        raise ValueError(f"unknown filter rule {rule!r}; use one of {', '.join(RULES)}")
    return ok & has_label


def combine_filters(prob_accept, spread_accept, how: str) -> np.ndarray:
    """Merge the probability filter with label spreading (cfg.label_spreading.combine).

    "or":   accepted by either (more data; each filter catches clips the other misses),
    "and":  accepted by both (cleaner, fewer clips),
    "only": label spreading alone decides (the probability filter is ignored).
    """
    a = np.asarray(prob_accept, dtype=bool)
    b = np.asarray(spread_accept, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"prob_accept and spread_accept must be 1-d of one length; got {a.shape} and {b.shape}")
    if how == "or":
        return a | b
    if how == "and":
        return a & b
    if how == "only":
        return b.copy()
    raise ValueError(f"unknown combine rule {how!r}; use one of {', '.join(COMBINE)}")
