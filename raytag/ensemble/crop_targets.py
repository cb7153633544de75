"""Crop-level teacher targets for `raytag distill --target-grain segment`.

The student trains on random crops (2.56 s of a 5 s clip by default), and with clip-level
targets every crop of a clip is taught the clip's labels and the teacher's clip-level
prediction, even a crop that holds only the silence after a short event, or only the first
of two chained sounds. Here the teacher is asked along the clip instead: each member scores
the student's own features on a grid of segments of the student's crop length, one every
quarter crop (`HOP_FRACTION`), fold models averaged and members combined per segment as the
artifact combines them; a crop's teacher target is the linear interpolation of that grid at
the crop's start. Curated clips (and noisy ones where the members trained with
cv.noisy_folds) take only the fold model that held them out, as the clip-level targets take
the out-of-fold predictions. The given labels keep their share (`label_weight`) whatever
the crop: they are all the clip says.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from raytag import storage
from raytag.ensemble.tagging import fold_segment_probs
from raytag.errors import RaytagError
from raytag.training.dataset import CropBatches, LabelledSet
from raytag.training.inference import clip_segments, normaliser, segment_starts

HOP_FRACTION = 0.25  # the teacher's grid: one segment every quarter crop (overlap 0.75)
CHUNK_CLIPS = 32  # clips cut into segments and scored together

Segments = dict[str, tuple[np.ndarray, np.ndarray]]  # clip_id -> (starts (S,), probs (S, K))


def held_out_folds(source: str, noisy: bool) -> dict[str, int]:
    """clip_id -> the fold whose model did not train on it, from a member's outputs: its
    curated out-of-fold predictions, and with `noisy` its noisy ones (cv.noisy_folds)."""
    folds: dict[str, int] = {}
    for name in ("oof.parquet", "noisy_oof.parquet") if noisy else ("oof.parquet",):
        path = storage.join(source, name)
        if storage.exists(path):
            table = storage.read_parquet(path)
            if "fold" in table.columns:
                folds.update(zip(table["clip_id"], table["fold"].astype(int)))
    return folds


@torch.inference_mode()
def teacher_segments(members: Sequence, combine: Callable[[list[np.ndarray]], np.ndarray], store, feature_cfg,
                     clip_ids: Sequence[str], segment_frames: int, held_out: Sequence[dict[str, int]],
                     batch_size: int = 64) -> Segments:
    """The teacher's probabilities along each clip: (segment starts, probs (S, K)).

    `members` are the artifact's (each with its fold models), `held_out[i]` member i's
    clip -> held-out fold. Every member must use the student's front end (`feature_cfg`):
    the grid is cut from the student's feature store."""
    key = feature_cfg.cache_key()
    for m in members:
        if m.feature_config.cache_key() != key:
            raise RaytagError(f"--target-grain segment: member {m.name} uses another front end than the student "
                              "(features differ); use --target-grain clip, or a student on that member's features")
    overlap = 1.0 - HOP_FRACTION
    out: Segments = {}
    for first in range(0, len(clip_ids), CHUNK_CLIPS):
        chunk = list(clip_ids[first:first + CHUNK_CLIPS])
        feats = [np.asarray(store.get(c), dtype=np.float32) for c in chunk]
        segs, owners = clip_segments(feats, segment_frames, overlap)
        per_member = []
        for m, folds in zip(members, held_out):
            s = m.settings
            norm = normaliser(s.get("norm_mean"), s.get("norm_std"))
            by_fold = fold_segment_probs(m.models, norm(torch.from_numpy(segs)), batch_size)  # (folds, segments, K)
            index = {fold: i for i, fold in enumerate(m.fold_ids)}
            probs = np.empty(by_fold.shape[1:], dtype=np.float64)
            for i, clip in enumerate(chunk):
                rows = owners == i
                fold = folds.get(clip)
                # out of fold where the member held the clip out; else every fold model, as the artifact
                probs[rows] = by_fold[index[fold], rows] if fold in index else by_fold[:, rows].mean(axis=0)
            per_member.append(probs)
        combined = combine(per_member)
        for i, clip in enumerate(chunk):
            starts = segment_starts(store.n_frames(clip), segment_frames, overlap)
            probs = np.asarray(combined[owners == i], dtype=np.float32)
            if len(starts) != len(probs):  # clip_segments and segment_starts cut the same grid
                raise AssertionError(f"{clip}: {len(starts)} starts for {len(probs)} segments")
            out[clip] = (np.asarray(starts, dtype=np.float64), probs)
    return out


def teacher_at(starts: np.ndarray, probs: np.ndarray, start) -> np.ndarray:
    """The teacher's (K,) prediction for a crop at frame `start`: linear between the two grid
    segments around it; the clip's mean for a clip looped to length (`start` None)."""
    if start is None or len(starts) == 1:
        return probs.mean(axis=0)
    j = int(np.clip(np.searchsorted(starts, start, side="right") - 1, 0, len(starts) - 2))
    w = float(np.clip((start - starts[j]) / (starts[j + 1] - starts[j]), 0.0, 1.0))
    return (1.0 - w) * probs[j] + w * probs[j + 1]


class SegmentTargetCrops(CropBatches):
    """Random crops as `CropBatches` draws them (the same crops for a seed), each taught
    `label_weight` x its clip's given labels + the rest x the teacher at the crop's start."""

    def __init__(self, store, data: LabelledSet, crop_frames: int, batch_size: int, segments: Segments,
                 labels: np.ndarray, label_weight: float):
        super().__init__(store, data, crop_frames, batch_size)
        missing = [c for c in data.clip_ids if c not in segments]
        if missing:
            raise RaytagError(f"{len(missing)} training clip(s) have no teacher segments (e.g. {missing[0]})")
        self.segments = segments
        self.labels = np.asarray(labels, dtype=np.float32)
        self.label_weight = label_weight

    def crop_targets(self, idx: np.ndarray, starts: list) -> np.ndarray:
        teacher = np.stack([teacher_at(*self.segments[self.data.clip_ids[i]], start)
                            for i, start in zip(idx, starts)])
        return (self.label_weight * self.labels[idx] + (1.0 - self.label_weight) * teacher).astype(np.float32)
