"""Segment-averaged prediction (seed 000): a clip of any length is cut into fixed-length
segments, each segment is scored, and the clip's score is the mean (or max) of its
segments' sigmoid probabilities. Optional test-time augmentation adds passes with the
segments shifted by a fraction of their hop."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from raytag.training.dataset import loop_from, tile_to


def segment_starts(n_frames: int, segment_frames: int, overlap: float = 0.5) -> list[int]:
    """Start frames of segments covering a clip; the last segment ends at the clip's end.

    A clip shorter than one segment gets one segment at 0 (looped to length by
    `cut_segment`)."""
    if n_frames <= segment_frames:
        return [0]
    hop = segment_hop(segment_frames, overlap)
    starts = list(range(0, n_frames - segment_frames + 1, hop))
    last = n_frames - segment_frames
    if starts[-1] != last:
        starts.append(last)
    return starts


def segment_hop(segment_frames: int, overlap: float) -> int:
    """Frames from one segment's start to the next's (at least 1)."""
    return max(1, int(round(segment_frames * (1.0 - overlap))))


def cut_segment(feats: np.ndarray, start: int, length: int) -> np.ndarray:
    """feats[..., start:start+length]; a clip shorter than a segment is looped to fill it
    (as in training: see raytag.training.dataset.tile_to)."""
    seg = feats[..., start:start + length]
    if seg.shape[-1] < length:
        seg = tile_to(feats[..., start:] if start < feats.shape[-1] else feats, length)
    return seg


def _tta_offsets(tta: int, segment_frames: int, overlap: float) -> list[int]:
    """Pass 0 is unshifted; pass k shifts the segment grid by k/(tta+1) of the hop, so the
    passes fall evenly between pass 0's segments (a shift of a whole hop would repeat them)."""
    hop = segment_hop(segment_frames, overlap)
    return [0] + [int(hop * k / (tta + 1)) for k in range(1, tta + 1)]


def _segments(clip: np.ndarray, segment_frames: int, overlap: float, tta: int) -> np.ndarray:
    """The clip's segments for each TTA pass, each segment once. Every segment is one training
    could have made (dataset.CropBatches): a clip shorter than a segment is looped whole (a
    pass starts the loop elsewhere in it, as training's random phase does); a clip of at
    least one segment gets windows inside it, never a loop seam."""
    n = clip.shape[-1]
    if n < segment_frames:
        phases = dict.fromkeys(offset % max(n, 1) for offset in _tta_offsets(tta, segment_frames, overlap))
        return np.stack([loop_from(clip, phase, segment_frames) for phase in phases])  # n phases at most
    return np.stack([cut_segment(clip, start, segment_frames)
                     for start in tta_segment_starts(n, segment_frames, overlap, tta)])


def tta_segment_starts(n_frames: int, segment_frames: int, overlap: float, tta: int) -> list[int]:
    """Start frames of every pass's segments over a clip of at least one segment, in pass
    order, each once: a shifted pass's last segment is clamped to the clip's end, where pass
    0 already has one, and counting it again would weigh the clip's end more in the mean."""
    last = n_frames - segment_frames
    starts = (min(offset + start, last) for offset in _tta_offsets(tta, segment_frames, overlap)
              for start in segment_starts(max(n_frames - offset, 1), segment_frames, overlap))
    return list(dict.fromkeys(starts))


def clip_segments(clips, segment_frames: int, overlap: float = 0.5,
                  tta: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every segment of every clip, stacked: (segments (S, C, F, segment_frames) float32,
    owners (S,) clip index of each segment). The segments `predict_segments` scores, cut
    once so that several models (the folds of an ensemble member) can score the same ones."""
    segs, owners = [], []
    for idx, clip in enumerate(clips):
        cut = _segments(np.asarray(clip, dtype=np.float32), segment_frames, overlap, tta)
        segs.append(cut)
        owners.append(np.full(len(cut), idx))
    if not segs:
        return np.zeros((0,), dtype=np.float32), np.zeros((0,), dtype=int)
    return np.concatenate(segs), np.concatenate(owners)


def reduce_segments(probs: np.ndarray, owners: np.ndarray, n_clips: int, reduce: str = "mean") -> np.ndarray:
    """Per-segment scores (S, K) -> per-clip scores (n_clips, K) by mean or max over each
    clip's segments (as `predict_segments`)."""
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    out = []
    for idx in range(n_clips):
        segs = probs[owners == idx]
        out.append(segs.mean(axis=0) if reduce == "mean" else segs.max(axis=0))
    return np.stack(out).astype(np.float32)


def predict_segments(
    model: torch.nn.Module,
    clips: Iterable[np.ndarray],
    segment_frames: int,
    overlap: float = 0.5,
    reduce: str = "mean",
    tta: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
) -> np.ndarray:
    """Sigmoid probabilities (n_clips, n_classes) of clips given as (C, F, T) arrays."""
    return _run_segments(lambda x: torch.sigmoid(model(x)), model, clips, segment_frames, overlap,
                         reduce, tta, batch_size, device, mean, std)


def embed_segments(model, clips, segment_frames, overlap=0.5, batch_size=64, device="cpu",
                   mean=None, std=None) -> np.ndarray:
    """Penultimate-layer embeddings (n_clips, D), averaged over each clip's segments."""
    return _run_segments(model.embed, model, clips, segment_frames, overlap, "mean", 0,
                         batch_size, device, mean, std)


def predict_and_embed_segments(model, clips, segment_frames, overlap=0.5, batch_size=64, device="cpu",
                               mean=None, std=None) -> np.ndarray:
    """[probabilities | embeddings] (n_clips, K + D) of the same segments from one forward pass,
    each the mean over a clip's segments: `predict_segments` (reduce "mean", no TTA) and
    `embed_segments` at the cost of one of them. Every tagger's forward is classifier(embed(x))
    (raytag.models.common.Tagger), so the pass computes the embedding anyway."""
    def both(x):
        emb = model.embed(x)
        return torch.cat([torch.sigmoid(model.classifier(emb)), emb], dim=1)

    return _run_segments(both, model, clips, segment_frames, overlap, "mean", 0, batch_size, device, mean, std)


@torch.no_grad()
def _run_segments(head, model, clips, segment_frames, overlap, reduce, tta, batch_size, device,
                  mean, std) -> np.ndarray:
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    was_training = model.training
    model.eval()
    norm = normaliser(mean, std)
    out: list[np.ndarray] = []
    pending: list[np.ndarray] = []  # segments waiting for a forward pass
    owners: list[int] = []  # clip index of each pending segment
    per_clip: dict[int, list[np.ndarray]] = {}

    def flush():
        batch = torch.from_numpy(np.stack(pending)).float().to(device)
        probs = head(norm(batch)).float().cpu().numpy()
        for owner, p in zip(owners, probs):
            per_clip.setdefault(owner, []).append(p)
        pending.clear()
        owners.clear()

    n_clips = 0
    for idx, clip in enumerate(clips):
        n_clips += 1
        for seg in _segments(np.asarray(clip, dtype=np.float32), segment_frames, overlap, tta):
            pending.append(seg)
            owners.append(idx)
            if len(pending) >= batch_size:
                flush()
    if pending:
        flush()
    for idx in range(n_clips):
        segs = np.stack(per_clip[idx])
        out.append(segs.mean(axis=0) if reduce == "mean" else segs.max(axis=0))
    model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(out).astype(np.float32)


def normaliser(mean, std):
    """x -> (x - mean) / std over (C, F) (the identity when either is None), as in training."""
    if mean is None or std is None:
        return lambda x: x
    m = torch.as_tensor(np.asarray(mean, dtype=np.float32))[..., None]  # (C, F, 1)
    s = torch.as_tensor(np.maximum(np.asarray(std, dtype=np.float32), 1e-5))[..., None]

    def apply(x: torch.Tensor) -> torch.Tensor:
        return (x - m.to(x.device)) / s.to(x.device)

    return apply


def iter_store_clips(store, clip_ids) -> Iterator[np.ndarray]:
    """Clips of a feature store, one (C, F, T) array at a time (never the whole store)."""
    for clip_id in clip_ids:
        yield store.get(clip_id)
