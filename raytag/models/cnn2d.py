"""`cnn2d`: the plain 2-D CNN of the strong FAT2019 baseline (seed 000's "CNN").

Blocks of (3x3 conv, BN, ReLU) x 2 then 2x2 average pooling, widths width * 2**i
(width 32, depth 4: 32-64-128-256). Then mean over frequency, mean + max over time,
an optional small dense layer (the embedding) and the output layer.

params: hidden (int, 128) size of the dense embedding layer; 0 leaves it out, so the
pooled conv features are the embedding and a dropout + linear layer classifies them
(the one-file reference CNN's head, which learns faster on a few hundred clips).
"""
from __future__ import annotations

import torch
from torch import nn

from raytag.config import ModelConfig
from raytag.models.common import Tagger, block_widths, freq_mean_time_meanmax, linear_classifier, pool2d
from raytag.models.registry import family_params, register


class ConvBlock(nn.Module):
    """(conv3x3-BN-ReLU) x 2, then pooling by `pool` (freq, time); (1, 1) keeps the size."""

    def __init__(self, c_in: int, c_out: int, pool: tuple[int, int] = (2, 2)):
        super().__init__()
        self.pool = pool
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool2d(self.body(x), self.pool, "avg")


def conv_stack(in_channels: int, widths: list[int], time_pool_blocks: int | None = None) -> nn.Sequential:
    """ConvBlocks; the first `time_pool_blocks` halve time too (all of them if None)."""
    blocks, c_in = [], in_channels
    for i, w in enumerate(widths):
        pool_time = time_pool_blocks is None or i < time_pool_blocks
        blocks.append(ConvBlock(c_in, w, (2, 2 if pool_time else 1)))
        c_in = w
    return nn.Sequential(*blocks)


class CNN2d(Tagger):
    def __init__(self, cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int):
        super().__init__(in_channels, n_bins, n_classes)
        p = family_params(cfg, {"hidden": 128}, may_be_zero=("hidden",))
        widths = block_widths(cfg.width, cfg.depth)
        self.backbone = conv_stack(in_channels, widths)
        if p["hidden"]:
            self.neck = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(widths[-1], p["hidden"]), nn.PReLU())
            self.embed_dim = p["hidden"]
            self.classifier = linear_classifier(self.embed_dim, n_classes, cfg.dropout / 2)
        else:
            self.embed_dim = widths[-1]
            self.classifier = linear_classifier(self.embed_dim, n_classes, cfg.dropout)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return freq_mean_time_meanmax(self.backbone(x))


@register("cnn2d")
def build_cnn2d(cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int) -> Tagger:
    return CNN2d(cfg, n_classes, in_channels, n_bins)
