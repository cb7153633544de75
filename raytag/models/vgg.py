"""`vgg_small`, `vgg_large`: seed 002's VGG-like nets on spectrograms.

Blocks of 2 (small, VGG16-like) or 3 (large, VGG19-like) 3x3 convs with LeakyReLU,
then 2x2 max pooling; widths width * 2**i, stopping at width * 8 as VGG does. The
seed flattened a fixed-size image; here global pooling (mean over frequency, mean +
max over time) takes any crop length. Then the seed's SELU dense layer (1024 units for
small, 4096 for large), whose output is the embedding, and the output layer.

params:
  dense_units (int, 1024 / 4096)  size of the SELU dense layer (scale down for CPU)
  batch_norm (bool, True)         BatchNorm after each conv (the seed's Keras nets had
                                  none; with it the nets train at higher learning rates)
  negative_slope (float, 0.1)     LeakyReLU slope
"""
from __future__ import annotations

import torch
from torch import nn

from raytag.config import ModelConfig
from raytag.models.common import Tagger, block_widths, freq_mean_time_meanmax, pool2d
from raytag.models.registry import family_params, register

VARIANTS = {"vgg_small": (2, 1024), "vgg_large": (3, 4096)}


class VGGBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, n_convs: int, batch_norm: bool, slope: float):
        super().__init__()
        layers = []
        for i in range(n_convs):
            layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(slope, inplace=True))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool2d(self.body(x), (2, 2), "max")


class VGG(Tagger):
    def __init__(self, n_convs: int, dense_units: int, cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int):
        super().__init__(in_channels, n_bins, n_classes)
        p = family_params(cfg, {"dense_units": dense_units, "batch_norm": True, "negative_slope": 0.1})
        widths = block_widths(cfg.width, cfg.depth, cap=cfg.width * 8)
        blocks, c_in = [], in_channels
        for w in widths:
            blocks.append(VGGBlock(c_in, w, n_convs, p["batch_norm"], p["negative_slope"]))
            c_in = w
        self.backbone = nn.Sequential(*blocks)
        dense = nn.Linear(c_in, p["dense_units"])
        # LeCun normal init keeps SELU activations self-normalising.
        nn.init.normal_(dense.weight, std=(1.0 / c_in) ** 0.5)
        nn.init.zeros_(dense.bias)
        self.neck = nn.Sequential(dense, nn.SELU())
        self.embed_dim = p["dense_units"]
        # AlphaDropout keeps SELU's mean and variance, as plain dropout would not.
        self.classifier = nn.Sequential(nn.AlphaDropout(cfg.dropout), nn.Linear(self.embed_dim, n_classes))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return freq_mean_time_meanmax(self.backbone(x))


def _register(name: str) -> None:
    n_convs, dense_units = VARIANTS[name]

    @register(name)
    def build(cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int) -> Tagger:
        return VGG(n_convs, dense_units, cfg, n_classes, in_channels, n_bins)


for _name in VARIANTS:
    _register(_name)
