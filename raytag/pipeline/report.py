"""How good was the noisy-label filter? Precision/recall against known truth, and t-SNE.

Scoring needs the true labels of the noisy clips, which a real noisy set lacks; the
benchmark set (make_fat_bench.py) has them in train_noisy_truth.csv, for reports only,
never for training or for choosing settings.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from raytag.pipeline.spreading import embed_pca


def _label_set(clip_id, labels) -> frozenset[str]:
    if isinstance(labels, str):  # a CSV cell "Bark,Meow"; class names never hold commas
        return frozenset(part.strip() for part in labels.split(",") if part.strip())
    try:
        return frozenset(str(x) for x in labels)
    except TypeError:
        raise ValueError(f"clip {clip_id}: labels must be a tuple of class names, got {labels!r}") from None


def _ratio(num: int, den: int) -> float:
    return float(num / den) if den else float("nan")


def filter_precision_recall(
    accepted_ids: Iterable[str],
    given_labels: Mapping[str, Sequence[str]],
    true_labels: Mapping[str, Sequence[str]],
) -> dict:
    """Score a filter's choice of noisy clips against their true labels.

    A noisy clip's given labels are *correct* when they equal its true labels as a set
    (order ignored; a missing or an extra label makes the clip wrong), because an
    accepted clip is trained on all its given labels. Then
        precision = correct accepted / accepted   (how clean is what we kept)
        recall    = correct accepted / correct    (how much of the clean data we kept)
    `base_precision` is the precision of accepting every clip (the noise rate's
    complement), the number a filter must beat. The per-label variant counts
    (clip, given label) pairs, a pair being correct when the label is among the true ones:
    kinder to multi-label clips with one wrong label out of several.

    Only clips of `given_labels` (the noisy pool) that have an entry in `true_labels` are
    scored; `n_without_truth` counts the others. Ratios with a zero denominator are NaN.
    Raises ValueError if an accepted id is not in the pool.
    """
    given = {cid: _label_set(cid, labs) for cid, labs in given_labels.items()}
    accepted = set(map(str, accepted_ids))
    outside = accepted - given.keys()
    if outside:
        raise ValueError(f"accepted clip {sorted(outside)[0]!r} is not in the noisy pool ({len(outside)} such clips)")
    truth = {cid: _label_set(cid, true_labels[cid]) for cid in given if cid in true_labels}

    n_correct = n_acc = n_acc_correct = 0
    pairs = pairs_correct = acc_pairs = acc_pairs_correct = 0
    for cid, labs in given.items():
        if cid not in truth:
            continue
        ok = labs == truth[cid]
        good_pairs = len(labs & truth[cid])
        n_correct += ok
        pairs += len(labs)
        pairs_correct += good_pairs
        if cid in accepted:
            n_acc += 1
            n_acc_correct += ok
            acc_pairs += len(labs)
            acc_pairs_correct += good_pairs
    return {
        "precision": _ratio(n_acc_correct, n_acc),
        "recall": _ratio(n_acc_correct, n_correct),
        "base_precision": _ratio(n_correct, len(truth)),
        "n_pool": len(given),
        "n_scored": len(truth),
        "n_without_truth": len(given) - len(truth),
        "n_accepted": len(accepted),
        "n_accepted_scored": n_acc,
        "n_correct_given": n_correct,
        "n_correct_accepted": n_acc_correct,
        "label_precision": _ratio(acc_pairs_correct, acc_pairs),
        "label_recall": _ratio(acc_pairs_correct, pairs_correct),
        "label_base_precision": _ratio(pairs_correct, pairs),
    }


def _tsne_2d(emb: np.ndarray, seed: int) -> np.ndarray:
    """2-d t-SNE coordinates; PCA to 50 dims first (t-SNE's cost grows with width)."""
    from sklearn.manifold import TSNE

    n = emb.shape[0]
    if n < 5:  # t-SNE needs perplexity < n; a handful of points is shown on PCA axes
        if n < 2:
            return np.zeros((n, 2))
        out = np.zeros((n, 2))
        xy = embed_pca(emb, 2, seed)
        out[:, : xy.shape[1]] = xy
        return out
    x = embed_pca(emb, 50, seed) if emb.shape[1] > 50 else emb
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))  # sklearn needs perplexity < n
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed, max_iter=500)
    return tsne.fit_transform(np.asarray(x, dtype=np.float32))


def _colours(n_classes: int) -> np.ndarray:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n_classes <= 10 else "tab20" if n_classes <= 20 else "turbo"]
    if n_classes <= 20:
        return np.array([cmap(i) for i in range(n_classes)])
    return cmap(np.linspace(0.0, 1.0, n_classes))


def tsne_plot(
    emb_before,
    labels_before,
    emb_after,
    labels_after,
    classes: Sequence[str],
    path,
    title: str = "noisy clips before and after the filter",
    seed: int = 0,
    max_points: int = 2000,
) -> Path:
    """Write a PNG with two t-SNE panels (seed 002's figure): clips before and after the filter.

    emb_*: (n, D) embeddings; labels_*: (n,) class index per clip (e.g. its first given
    label before, its kept or spread label after), -1 drawn grey as "unlabelled". Each
    panel is embedded on its own; at most `max_points` clips per panel (a seeded random
    sample) keep it quick. Returns the path written.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg by default

    panels = []
    rng = np.random.default_rng(seed)
    for name, emb, lab in (("before", emb_before, labels_before), ("after", emb_after, labels_after)):
        emb = np.asarray(emb, dtype=np.float64)
        lab = np.asarray(lab).astype(np.int64)
        if emb.ndim != 2 or lab.shape != (emb.shape[0],):
            raise ValueError(f"{name}: need embeddings (n, D) and labels (n,); got {emb.shape} and {lab.shape}")
        if not np.all(np.isfinite(emb)):
            raise ValueError(f"{name}: embeddings must be finite")
        if lab.size and (lab.min() < -1 or lab.max() >= len(classes)):
            raise ValueError(f"{name}: labels must be class indices in [0, {len(classes)}) or -1")
        if emb.shape[0] > max_points:
            keep = np.sort(rng.choice(emb.shape[0], max_points, replace=False))
            emb, lab = emb[keep], lab[keep]
        panels.append((name, _tsne_2d(emb, seed), lab))

    colours = _colours(len(classes))
    fig = Figure(figsize=(13, 6), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, (name, xy, lab) in zip(axes, panels):
        grey = lab < 0
        if grey.any():
            ax.scatter(xy[grey, 0], xy[grey, 1], s=6, c="lightgrey", label="unlabelled")
        for c in np.unique(lab[~grey]):
            m = lab == c
            ax.scatter(xy[m, 0], xy[m, 1], s=8, color=colours[c], label=classes[c])
        ax.set_title(f"{name} ({len(lab)} clips)")
        ax.set_xticks([])
        ax.set_yticks([])
    if len(classes) <= 20:
        handles, names = axes[1].get_legend_handles_labels()
        extra = [(h, n) for h, n in zip(*axes[0].get_legend_handles_labels()) if n not in names]
        handles += [h for h, _ in extra]
        names += [n for _, n in extra]
        fig.legend(handles, names, loc="center right", fontsize=8, markerscale=2)
        fig.subplots_adjust(right=0.82)
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
