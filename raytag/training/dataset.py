"""Training batches of random fixed-length crops, read straight from the sharded
feature store (a worker never holds the whole store in memory).

Sharding is by hand rather than with torch's DistributedSampler + DataLoader: every
rank draws the same seeded permutation for an epoch and takes every world-th clip, so
a resumed or restarted run sees exactly the batches it would have seen."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch


@dataclass
class LabelledSet:
    """The clips one training step learns from."""

    clip_ids: list[str]
    targets: np.ndarray  # (n, n_classes) float32, soft targets allowed
    is_noisy: np.ndarray  # (n,) bool: noisy or pseudo-labelled clips (own loss and weight)

    def __post_init__(self):
        self.targets = np.asarray(self.targets, dtype=np.float32)
        self.is_noisy = np.asarray(self.is_noisy, dtype=bool)
        if not (len(self.clip_ids) == len(self.targets) == len(self.is_noisy)):
            raise ValueError("clip_ids, targets and is_noisy must have the same length")

    def __len__(self) -> int:
        return len(self.clip_ids)

    def concat(self, other: "LabelledSet") -> "LabelledSet":
        return LabelledSet(
            self.clip_ids + other.clip_ids,
            np.concatenate([self.targets, other.targets]),
            np.concatenate([self.is_noisy, other.is_noisy]),
        )


class CropBatches:
    """Yields (x[B, C, F, crop], y[B, n_classes], is_noisy[B]) for one rank and one epoch."""

    def __init__(self, store, data: LabelledSet, crop_frames: int, batch_size: int):
        if len(data) == 0:
            raise ValueError("a training step has no clips: check the stage's data settings")
        self.store = store
        self.data = data
        self.crop_frames = crop_frames
        self.batch_size = batch_size

    def steps_per_epoch(self, world_size: int) -> int:
        per_rank = -(-len(self.data) // world_size)
        return max(1, -(-per_rank // self.batch_size))

    def epoch(self, seed: int, rank: int, world_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        order = np.random.default_rng(seed).permutation(len(self.data))
        per_rank = -(-len(order) // world_size)
        # pad by wrapping so every rank runs the same number of steps (DDP needs that)
        order = np.resize(order, per_rank * world_size)[rank::world_size]
        if self.batch_size > 1 and len(order) % self.batch_size == 1:
            # a last batch of one clip breaks BatchNorm in training wherever a network pools
            # down to one value per channel (short crops, few bins): it takes one more clip
            order = np.append(order, order[0])
        crops = np.random.default_rng([seed, rank])
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            cut = [self._random_crop(self.data.clip_ids[i], crops) for i in idx]
            yield (
                torch.from_numpy(np.stack([x for x, _ in cut])),
                torch.from_numpy(self.crop_targets(idx, [s for _, s in cut])),
                torch.from_numpy(self.data.is_noisy[idx]),
            )

    def crop_targets(self, idx: np.ndarray, starts: list) -> np.ndarray:
        """(B, n_classes) targets of a batch's crops (`starts`: each crop's first frame, None
        for a clip looped to length): here each clip's own, wherever the crop."""
        return self.data.targets[idx]

    def _random_crop(self, clip_id: str, rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
        """(crop, its start frame); a short clip is looped from a random phase (see tile_to),
        its start None."""
        n = self.store.n_frames(clip_id)
        if n >= self.crop_frames:
            start = int(rng.integers(0, n - self.crop_frames + 1))
            return np.asarray(self.store.crop(clip_id, start, self.crop_frames), dtype=np.float32), start
        clip = np.asarray(self.store.get(clip_id), dtype=np.float32)
        return loop_from(clip, int(rng.integers(0, n)), self.crop_frames), None


def loop_from(feats: np.ndarray, phase: int, length: int) -> np.ndarray:
    """A clip shorter than `length` frames, looped to `length` starting at frame `phase`."""
    return tile_to(np.roll(feats, -phase, axis=-1), length)


def tile_to(feats: np.ndarray, length: int) -> np.ndarray:
    """Repeat a clip shorter than `length` frames along time until it fills `length`.

    Zero-padding is wrong for log-mel: 0 dB is the loudest value a frame can have, so
    padded frames would look like a wall of sound after normalisation (and "silence"
    differs per clip and per channel, deltas included). Looping the clip, as several
    FAT2019 kernels did, keeps every frame a real frame of the clip."""
    n = feats.shape[-1]
    if n >= length:
        return feats[..., :length]
    reps = -(-length // max(n, 1))
    return np.concatenate([feats] * reps, axis=-1)[..., :length]
