"""Stage 0's rough noisy subset: seed 000's "best50s" rule.

Seed 000 warmed its model up on `trn_noisy_best50s`, a small, class-balanced slice of
the noisy set, rather than on all of it: the noisy set is large, unbalanced and full of
wrong labels, and a warm-up only needs a fair, cheap start. The rule here:

  1. single-label clips only (when cfg.single_label_only): a clip with one noisy label is
     less likely to be a mix of sounds, and its label is easier to trust;
  2. duration within [cfg.min_seconds, cfg.max_seconds] (both ends included; a clip with
     an unknown duration is left out): very short clips hold little sound, very long ones
     are often field recordings with much besides the labelled sound;
  3. within each class, prefer clips whose duration is closest to the median duration of
     that class's candidates (its typical length): the atypical ends are where mislabelled
     and badly cut clips gather; ties are broken by a random order drawn from `seed`, so
     the choice is deterministic for a given seed;
  4. at most cfg.max_per_class clips per class (a class with fewer candidates gives all).

When multi-label clips are allowed, a clip counts against the cap of every class it
carries, and it is only taken while all of those classes have room; classes take turns
(class order) choosing their next preferred clip, so that no class starves another.
With cfg.enabled false no selection is made: every noisy clip id is returned.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from raytag.config import NoisySelectionConfig

REQUIRED = ("clip_id", "labels", "duration")


def _label_tuples(noisy: pd.DataFrame, known: set[str]) -> list[tuple[str, ...]]:
    out = []
    for clip_id, labels in zip(noisy["clip_id"], noisy["labels"]):
        if isinstance(labels, str):
            raise ValueError(f"clip {clip_id}: labels must be a tuple of class names, got the string {labels!r}")
        labels = tuple(dict.fromkeys(labels))  # keep order, drop repeats
        unknown = [lab for lab in labels if lab not in known]
        if unknown:
            raise ValueError(f"clip {clip_id}: label {unknown[0]!r} is not one of the dataset's classes")
        out.append(labels)
    return out


def select_noisy_subset(
    noisy: pd.DataFrame, classes: Sequence[str], cfg: NoisySelectionConfig, seed: int = 0
) -> list[str]:
    """clip_ids of the warm-up subset, in the order of `noisy`; see the module docstring.

    `noisy` needs columns clip_id, labels (tuple of class names), duration (seconds).
    """
    missing = [col for col in REQUIRED if col not in noisy.columns]
    if missing:
        raise ValueError(f"noisy clip table lacks column(s) {', '.join(missing)}; needs {', '.join(REQUIRED)}")
    if not cfg.enabled:
        return [str(c) for c in noisy["clip_id"]]
    if cfg.min_seconds > cfg.max_seconds:
        raise ValueError(f"noisy_selection.min_seconds {cfg.min_seconds} is above max_seconds {cfg.max_seconds}")

    labels = _label_tuples(noisy, set(classes))
    duration = pd.to_numeric(noisy["duration"], errors="coerce").to_numpy(dtype=np.float64)
    n_labels = np.array([len(lab) for lab in labels])
    ok = (n_labels >= 1) & (duration >= cfg.min_seconds) & (duration <= cfg.max_seconds)  # NaN fails
    if cfg.single_label_only:
        ok &= n_labels == 1
    cand = np.flatnonzero(ok)
    if cand.size == 0 or cfg.max_per_class <= 0:
        return []

    # one random tie-break key per candidate; same seed, same choice
    tiebreak = np.random.default_rng(seed).permutation(cand.size)
    class_index = {name: i for i, name in enumerate(classes)}
    members: list[list[int]] = [[] for _ in classes]  # positions into cand, per class
    for pos, row in enumerate(cand):
        for lab in labels[row]:
            members[class_index[lab]].append(pos)

    # per class: candidates sorted by distance to the class's median duration, then tie-break
    queues = []
    for mem in members:
        mem = np.asarray(mem, dtype=np.int64)
        if mem.size == 0:
            queues.append(mem)
            continue
        d = duration[cand[mem]]
        dist = np.abs(d - np.median(d))
        queues.append(mem[np.lexsort((tiebreak[mem], dist))])

    counts = np.zeros(len(classes), dtype=np.int64)
    taken = np.zeros(cand.size, dtype=bool)
    heads = [0] * len(classes)
    row_classes = [[class_index[lab] for lab in labels[row]] for row in cand]
    progress = True
    while progress:  # classes take turns picking their next preferred clip
        progress = False
        for c, queue in enumerate(queues):
            if counts[c] >= cfg.max_per_class:
                continue
            while heads[c] < queue.size:
                pos = queue[heads[c]]
                heads[c] += 1
                # a clip blocked by a full class stays blocked (counts only grow): skip it for good
                if taken[pos] or any(counts[k] >= cfg.max_per_class for k in row_classes[pos]):
                    continue
                taken[pos] = True
                counts[row_classes[pos]] += 1
                progress = True
                break
    chosen = np.sort(cand[taken])
    return [str(c) for c in noisy["clip_id"].to_numpy()[chosen]]
