"""Batch-level training augmentations on features [B, C, F, T] (torch).

Every random draw comes from the `generator` passed in (a CPU torch.Generator), so a
seeded generator gives the same augmented batch on every run and every device; the
draws are made on the CPU and moved to the batch's device.

- mixup: one lambda ~ Beta(alpha, alpha) per batch mixes each clip with a random other
  clip of the batch; multi-hot targets and per-clip source weights are mixed with the
  same lambda (a 0.7/0.3 mix of "dog" and "rain" targets dog 0.7 and rain 0.3).
- spec_augment: time and frequency masks (Park et al. 2019). Masked values are set to
  the example's own mean over (C, F, T), so a mask looks like "average energy" rather
  than a hole of silence; after per-bin normalisation that mean is close to 0, the
  usual fill value.
- random_gain_shift: a random gain in [-gain_db, +gain_db] dB per clip, added to log
  features (multiplied into raw waves), and a circular time shift of at most
  time_shift * T frames.
- random_crop_start: the start frame of a random fixed-length training crop.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from scipy.special import betaincinv

from raytag.config import FeatureConfig, SpecAugmentConfig, WaveAugmentConfig
from raytag.features.frontends import frontend_shape


def _rand(generator: torch.Generator, *shape) -> torch.Tensor:
    return torch.rand(*shape, generator=generator)


def sample_mixup_lambda(alpha: float, generator: torch.Generator) -> float:
    """lambda ~ Beta(alpha, alpha), drawn through the generator.

    torch.distributions.Beta cannot take a generator, so the draw is the inverse CDF
    of a seeded uniform (scipy's betaincinv): exact, and reproducible by seed.
    alpha <= 0 means no mixing (lambda = 1).
    """
    u = float(_rand(generator, 1))
    if alpha <= 0:
        return 1.0
    return float(betaincinv(alpha, alpha, u))


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    w: Optional[torch.Tensor],
    alpha: float,
    prob: float,
    generator: torch.Generator,
):
    """Mix the batch with a shuffled copy of itself with probability `prob`.

    Returns (x, y, w, lam): x' = lam x + (1-lam) x[perm], the same for y (soft targets)
    and w (per-clip source weights, or the noisy share; None passes through). lam is
    1.0 when the batch was left alone. Inputs are not modified.
    """
    mix = float(_rand(generator, 1)) < prob
    lam = sample_mixup_lambda(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator)
    if not mix or lam >= 1.0 or x.shape[0] < 2:
        return x, y, w, 1.0
    perm = perm.to(x.device)
    x = lam * x + (1.0 - lam) * x[perm]
    y = lam * y + (1.0 - lam) * y[perm.to(y.device)]
    if w is not None:
        w = w.to(torch.float32)
        w = lam * w + (1.0 - lam) * w[perm.to(w.device)]
    return x, y, w, lam


def _band_mask(size: int, n_masks: int, max_width: int, batch: int, generator) -> torch.Tensor:
    """[batch, size] bool: n_masks bands per row, widths uniform in [0, max_width]."""
    if n_masks <= 0 or max_width <= 0 or size <= 0:
        return torch.zeros(batch, size, dtype=torch.bool)
    max_width = min(max_width, size)
    widths = torch.floor(_rand(generator, batch, n_masks) * (max_width + 1)).long()
    starts = torch.floor(_rand(generator, batch, n_masks) * (size - widths + 1).float()).long()
    pos = torch.arange(size).view(1, 1, size)
    inside = (pos >= starts.unsqueeze(-1)) & (pos < (starts + widths).unsqueeze(-1))
    return inside.any(dim=1)


def spec_augment(x: torch.Tensor, cfg: SpecAugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Time and frequency masks on x[B, C, F, T], filled with each example's mean.

    A mask covers all channels of its frames or bins. Returns a new tensor; x is unchanged.
    """
    if not cfg.enabled:
        return x
    b, _, n_bins, n_frames = x.shape
    time_mask = _band_mask(n_frames, cfg.time_masks, cfg.time_width, b, generator).to(x.device)
    freq_mask = _band_mask(n_bins, cfg.freq_masks, cfg.freq_width, b, generator).to(x.device)
    mask = time_mask[:, None, None, :] | freq_mask[:, None, :, None]  # [B, 1, F, T]
    fill = x.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(mask, fill, x)


def gain_pattern(feature_cfg: FeatureConfig, std: Optional[np.ndarray] = None) -> torch.Tensor:
    """[C, F] change of each feature value per +1 dB of gain, for `random_gain_shift`.

    logmel/colormel: +1 on the dB channels, 0 on delta channels (a constant offset has no
    derivative). mfcc (ortho DCT-II of dB mels): only c0 moves, by sqrt(n_mels). With
    `std` (the store's per-bin std, [C, F]) the pattern is for features already divided
    by it. raw: all ones (the gain there is multiplicative; the pattern is unused). pcen
    refuses a random gain (config validation): its gain control removes it. logmel_pcen: +1 on
    the log-mel channel (0) only, as PCEN's channel hardly moves with a clip's gain.
    """
    channels, bins = frontend_shape(feature_cfg)
    pattern = torch.zeros(channels, bins)
    if feature_cfg.kind == "raw":
        return torch.ones(channels, bins)
    base_channels = channels // (1 + feature_cfg.deltas)
    if feature_cfg.kind == "mfcc":
        pattern[:base_channels, 0] = math.sqrt(feature_cfg.n_mels)
    elif feature_cfg.kind == "logmel_pcen":
        pattern[0] = 1.0
    else:
        pattern[:base_channels] = 1.0
    if std is not None:
        pattern = pattern / torch.as_tensor(np.asarray(std), dtype=torch.float32).clamp_min(1e-6)
    return pattern


def random_gain_shift(
    x: torch.Tensor,
    cfg: WaveAugmentConfig,
    generator: torch.Generator,
    is_log: bool = True,
    pattern: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Random per-clip gain and circular time shift of x[B, C, F, T].

    Gain g ~ U[-gain_db, gain_db]: log features get x + g * pattern (pattern [C, F] from
    `gain_pattern`; None means every value is in dB); raw waves get x * 10**(g/20).
    Shift s ~ U{-m..m}, m = floor(time_shift * T), rolls each clip along time.
    """
    b, n_frames = x.shape[0], x.shape[-1]
    gain = (_rand(generator, b) * 2.0 - 1.0) * cfg.gain_db
    max_shift = int(math.floor(cfg.time_shift * n_frames))
    shifts = torch.floor(_rand(generator, b) * (2 * max_shift + 1)).long() - max_shift
    gain = gain.to(device=x.device, dtype=x.dtype).view(b, 1, 1, 1)
    if cfg.gain_db > 0:
        if is_log:
            p = torch.ones(1, 1) if pattern is None else pattern
            x = x + gain * p.to(device=x.device, dtype=x.dtype).view(1, *p.shape[-2:], 1)
        else:
            x = x * torch.pow(10.0, gain / 20.0)
    if max_shift > 0:
        # per-clip roll as one gather: out[t] = x[(t - s) mod T]
        idx = (torch.arange(n_frames).view(1, -1) - shifts.view(-1, 1)) % n_frames
        idx = idx.to(x.device).view(b, 1, 1, n_frames).expand_as(x)
        x = torch.gather(x, -1, idx)
    return x


def random_crop_start(n_frames: int, crop: int, generator: torch.Generator) -> int:
    """Start frame of a random crop of `crop` frames from a clip of `n_frames`.

    Uniform over every start that keeps the crop inside the clip; 0 when the clip is
    not longer than the crop (the store zero-pads the rest).
    """
    if crop <= 0:
        raise ValueError(f"crop must be positive, got {crop}")
    room = n_frames - crop
    if room <= 0:
        return 0
    return int(torch.randint(0, room + 1, (1,), generator=generator))
