"""Scores of the Freesound Audio Tagging tasks: lwlrap (2019) and MAP@3 (2018).

lwlrap (label-weighted label-ranking average precision). For clip i with positive
labels P_i and scores s_i, and each positive label j in P_i:

    rank(i, j) = |{k : s_ik >= s_ij}|                 (all labels, j itself included)
    hits(i, j) = |{k in P_i : s_ik >= s_ij}|          (positive labels only)
    prec(i, j) = hits(i, j) / rank(i, j)

    lwlrap = sum_i sum_{j in P_i} prec(i, j) / sum_i |P_i|

Every positive label of every clip counts once, so clips with more labels weigh more.
Clips with no positive label contribute nothing and are dropped.

Per class c, with n_c = |{i : c in P_i}| and N = sum_c n_c:

    per_class[c] = sum_{i : c in P_i} prec(i, c) / n_c,   weight[c] = n_c / N
    lwlrap = sum_c per_class[c] * weight[c]

Ties: pessimistic, as in sklearn's label_ranking_average_precision_score: a label tied
with label j counts as ranked above j (the ">=" in rank and hits). A model that gives
every class the same score therefore gets no credit from ties. With this convention
lwlrap equals sklearn's LRAP with sample_weight = number of positives per clip.

MAP@3 (2018, one true label per clip): 1/r if the true label is at rank r <= 3, else 0,
averaged over clips. The rank uses the same pessimistic tie rule. This is deliberate, and
it differs from a 2018 submission file, where a list has no ties: its writer
(raytag.data.submission.top3_labels) breaks a tie toward the earlier class, so the file can
score higher than these scores do (a true class tied with another: 1/2 here, 1 in a file
that lists it first): the metric gives a model no credit for a tie it did not resolve,
where the list's order is luck of the class order.

Ranks are "max" ranks along the class axis (as scipy.stats.rankdata(method="max")), which
is exactly the pessimistic count above, computed with numpy over all clips at once
(`max_rank`; scipy.stats took 0.5-0.8 s to import on every Train worker's start-up).
"""
from __future__ import annotations

import numpy as np


def _check(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth)
    scores = np.asarray(scores, dtype=np.float64)
    if truth.ndim != 2 or scores.ndim != 2:
        raise ValueError(f"truth and scores must be 2-d (clips, classes); got {truth.shape} and {scores.shape}")
    if truth.shape != scores.shape:
        raise ValueError(f"truth {truth.shape} and scores {scores.shape} differ in shape")
    if not np.all(np.isfinite(scores)):
        bad = np.argwhere(~np.isfinite(scores))[0]
        raise ValueError(f"scores must be finite; clip {bad[0]}, class {bad[1]} is {scores[tuple(bad)]}")
    return truth > 0, scores


def max_rank(x: np.ndarray) -> np.ndarray:
    """Per row of a 2-d array, each entry's count of entries <= it (1-based "max" rank; ties
    share the highest rank of their group), as scipy.stats.rankdata(x, method="max", axis=1)."""
    x = np.asarray(x)
    n, c = x.shape
    if c == 0:
        return np.zeros((n, 0), dtype=np.int64)
    order = np.argsort(x, axis=1, kind="stable")
    ordered = np.take_along_axis(x, order, axis=1)
    position = np.broadcast_to(np.arange(1, c + 1), (n, c))
    # the last position of each group of equal values, carried back over the group
    last = np.ones((n, c), dtype=bool)
    last[:, :-1] = ordered[:, 1:] != ordered[:, :-1]
    group_end = np.where(last, position, c)
    group_end = np.minimum.accumulate(group_end[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((n, c), dtype=np.int64)
    np.put_along_axis(ranks, order, group_end, axis=1)
    return ranks


def _precisions(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """prec(i, j) at positive entries, 0 elsewhere; shape (n, C)."""
    # rank among all labels: how many scores are >= this one (ties pessimistic)
    rank = max_rank(-scores)
    # hits: the same count among positive labels only (negatives pushed to +inf after negation)
    neg_pos_only = np.where(truth, -scores, np.inf)
    hits = max_rank(neg_pos_only)
    return np.where(truth, hits / rank, 0.0)


def per_class_lwlrap(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    """(per_class, weights), both shape (C,), with sum(per_class * weights) == lwlrap.

    A class with no positive clip gets per_class 0 and weight 0 (it cannot be scored).
    """
    truth, scores = _check(truth, scores)
    n_classes = truth.shape[1]
    prec = _precisions(truth, scores)
    n_pos = truth.sum(axis=0).astype(np.float64)
    total = n_pos.sum()
    if total == 0:
        raise ValueError("lwlrap is undefined: no clip has a positive label")
    per_class = np.divide(prec.sum(axis=0), n_pos, out=np.zeros(n_classes), where=n_pos > 0)
    return per_class, n_pos / total


def lwlrap(truth, scores) -> float:
    """Label-weighted label-ranking average precision; see the module docstring."""
    truth, scores = _check(truth, scores)
    total = truth.sum()
    if total == 0:
        raise ValueError("lwlrap is undefined: no clip has a positive label")
    return float(_precisions(truth, scores).sum() / total)


def map_at_3(true_idx, scores) -> float:
    """Mean average precision at 3 with one true class index per clip (2018 metric). Ties
    count pessimistically; a written 2018 submission breaks them toward the earlier class
    instead, so on tied scores it can score higher (module doc)."""
    true_idx = np.asarray(true_idx)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or true_idx.shape != (scores.shape[0],):
        raise ValueError(f"expected true_idx (n,) and scores (n, C); got {true_idx.shape} and {scores.shape}")
    if len(true_idx) == 0:
        raise ValueError("MAP@3 is undefined for zero clips")
    if not np.issubdtype(true_idx.dtype, np.integer) or true_idx.min() < 0 or true_idx.max() >= scores.shape[1]:
        raise ValueError(f"true_idx must be class indices in [0, {scores.shape[1]})")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    true_score = scores[np.arange(len(true_idx)), true_idx]
    rank = (scores >= true_score[:, None]).sum(axis=1)  # pessimistic ties, as lwlrap
    return float(np.where(rank <= 3, 1.0 / rank, 0.0).mean())


def paired_bootstrap_lwlrap(truth, scores_a, scores_b, n_boot: int = 1000, seed: int = 0) -> dict:
    """lwlrap(b) - lwlrap(a) on the same clips, with a 90% interval from resampling clips.

    Paired: each resample draws clips (with replacement) and scores both models on the same
    draw, so the interval reflects how much b beats a, not the noise of each score alone.

    Only clips with at least one label are drawn (`n_labelled` of `n_clips`): lwlrap ignores
    the others, so they change no resample's score, and on a tiny set a draw of only them
    would leave lwlrap undefined."""
    truth = np.asarray(truth)
    scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    if not (truth.shape == scores_a.shape == scores_b.shape):
        raise ValueError(f"shapes differ: truth {truth.shape}, a {scores_a.shape}, b {scores_b.shape}")
    diff = float(lwlrap(truth, scores_b) - lwlrap(truth, scores_a))  # raises when no clip has a label
    labelled = np.flatnonzero((truth > 0).any(axis=1))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        idx = labelled[rng.integers(0, len(labelled), len(labelled))]
        boots[i] = lwlrap(truth[idx], scores_b[idx]) - lwlrap(truth[idx], scores_a[idx])
    lo, hi = np.percentile(boots, [5, 95])
    return {"diff": round(diff, 4), "ci90": [round(float(lo), 4), round(float(hi), 4)],
            "p_better": round(float(np.mean(boots > 0)), 3), "n_clips": len(truth),
            "n_labelled": len(labelled)}


def map_at_3_multi_hot(truth, scores) -> float:
    """MAP@3 of a multi-hot truth matrix with exactly one label per clip (the 2018 task)."""
    truth = np.asarray(truth) > 0
    n_labels = truth.sum(axis=1) if truth.ndim == 2 else None
    if n_labels is None or len(n_labels) == 0:
        raise ValueError(f"expected a non-empty (clips, classes) truth matrix, got shape {truth.shape}")
    bad = np.flatnonzero(n_labels != 1)
    if len(bad):
        raise ValueError(f"MAP@3 needs exactly one true label per clip; clip {bad[0]} has {n_labels[bad[0]]} "
                         "(MAP@3 is the FSDKaggle2018 score; use lwlrap for multi-label data)")
    return map_at_3(truth.argmax(axis=1), scores)


# The score each Kaggle task was judged by; the search, the leaderboard and the ensemble
# choose by it (lwlrap is reported on every layout).
LAYOUT_METRIC = {"fat2019": "lwlrap", "fsd2018": "map3"}
SCORERS = {"lwlrap": lwlrap, "map3": map_at_3_multi_hot}


def layout_metric(layout: str) -> str:
    """"lwlrap" (FSDKaggle2019) or "map3" (FSDKaggle2018)."""
    if layout not in LAYOUT_METRIC:
        raise ValueError(f"unknown dataset layout {layout!r}; known: {', '.join(LAYOUT_METRIC)}")
    return LAYOUT_METRIC[layout]


def layout_scores(layout: str, truth, scores) -> dict[str, float]:
    """{"lwlrap": ...} and, on the 2018 layout, "map3" too."""
    names = ["lwlrap"] + ([layout_metric(layout)] if layout_metric(layout) != "lwlrap" else [])
    return {name: SCORERS[name](truth, scores) for name in names}
