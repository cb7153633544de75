"""Pieces every family shares: the Tagger base (forward/embed contract) and poolings.

Every model maps x[B, C, F, T] -> logits[B, n_classes]. A family implements
`pooled(x) -> [B, P]` (backbone plus global pooling, so any T works) and sets
`self.neck` (pooled -> embedding [B, D], often Identity) and `self.classifier`
(embedding -> logits, usually Dropout + Linear). `embed(x)` is the penultimate layer,
the input of the last Linear, used for label spreading and t-SNE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Tagger(nn.Module):
    """Base of every raytag model; checks the input shape once, in one place."""

    def __init__(self, in_channels: int, n_bins: int, n_classes: int, fixed_bins: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.n_bins = n_bins
        self.n_classes = n_classes
        # 1-D models fold bins into conv channels, so they need exactly n_bins.
        self.fixed_bins = fixed_bins
        self.embed_dim = 0  # set by the family
        self.neck: nn.Module = nn.Identity()
        self.classifier: nn.Module = nn.Identity()

    def pooled(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, embed_dim]."""
        self._check_input(x)
        return self.neck(self.pooled(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects input [batch, channels, bins, frames], got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} was built for {self.in_channels} input channel(s), got {x.shape[1]}"
            )
        if self.fixed_bins and x.shape[2] != self.n_bins:
            raise ValueError(
                f"{type(self).__name__} was built for {self.n_bins} bins, got {x.shape[2]}"
            )


def linear_classifier(dim: int, n_classes: int, dropout: float) -> nn.Sequential:
    """Dropout then the output layer."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_classes))


def freq_mean_time_meanmax(x: torch.Tensor) -> torch.Tensor:
    """[B, C, F, T] -> [B, C]: mean over frequency, then mean + max over time.

    The FAT2019 baseline CNN pooling: max catches short events, mean long textures.
    """
    return time_meanmax(x.mean(dim=2))


def time_meanmax(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> [B, C]: mean + max over time."""
    return x.mean(dim=-1) + x.amax(dim=-1)


def pool2d(x: torch.Tensor, kernel: tuple[int, int], mode: str = "avg") -> torch.Tensor:
    """2-D pooling that leaves an axis alone once it is shorter than the kernel.

    Lets every model take very short crops (a few frames) or few bins without a
    'output size is too small' error; floor division as in ordinary pooling.
    """
    kf = kernel[0] if x.shape[-2] >= kernel[0] else 1
    kt = kernel[1] if x.shape[-1] >= kernel[1] else 1
    if kf == 1 and kt == 1:
        return x
    if mode == "max":
        return F.max_pool2d(x, (kf, kt))
    return F.avg_pool2d(x, (kf, kt))


def pool1d(x: torch.Tensor, kernel: int, mode: str = "max") -> torch.Tensor:
    """1-D pooling over time that is skipped once the sequence is shorter than the kernel."""
    if x.shape[-1] < kernel or kernel == 1:
        return x
    if mode == "avg":
        return F.avg_pool1d(x, kernel)
    return F.max_pool1d(x, kernel)


def block_widths(width: int, depth: int, cap: int | None = None) -> list[int]:
    """width * 2**i per block, optionally capped (VGG stops doubling at 8x)."""
    out = [width * 2**i for i in range(depth)]
    return [min(w, cap) for w in out] if cap else out
