"""`cnn_1d`, `cnn_1d_dropout`, `cnn_1d_dense_dropout`: seed 001's 1-D CNNs over log-mel frames.

The (channels x bins) of each frame are the conv channels and time is the conv axis,
so the filters slide along time only. Blocks of Conv1d-BN-ReLU and 2x max pooling,
widths width * 2**i, then mean + max over time. The three variants are the seed's
three steps against overfitting:
  cnn_1d                pooled -> output layer (no dropout; `dropout` is not used)
  cnn_1d_dropout        pooled -> dropout -> output layer
  cnn_1d_dense_dropout  pooled -> dense + ReLU (the embedding) -> dropout -> output layer

params: kernel_size (int, 3) conv kernel along time; dense_units (int, 256) the
dense layer of cnn_1d_dense_dropout (unused by the other two).
These models need exactly the `n_bins` they were built for.
"""
from __future__ import annotations

import torch
from torch import nn

from raytag.config import ModelConfig
from raytag.models.common import Tagger, block_widths, linear_classifier, pool1d, time_meanmax
from raytag.models.registry import ModelConfigError, family_params, register

VARIANTS = ("cnn_1d", "cnn_1d_dropout", "cnn_1d_dense_dropout")


class Conv1dBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm1d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool1d(self.body(x), 2, "max")


class CNN1d(Tagger):
    def __init__(self, variant: str, cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int):
        super().__init__(in_channels, n_bins, n_classes, fixed_bins=True)
        # dense_units only where there is a dense layer: elsewhere it would be a setting that does nothing
        neck = {"dense_units": 256} if variant == "cnn_1d_dense_dropout" else {}
        p = family_params(cfg, {"kernel_size": 3, **neck})
        if p["kernel_size"] % 2 == 0:
            raise ModelConfigError(f"model.params.kernel_size: must be odd, got {p['kernel_size']}")
        widths = block_widths(cfg.width, cfg.depth)
        blocks, c_in = [], in_channels * n_bins
        for w in widths:
            blocks.append(Conv1dBlock(c_in, w, p["kernel_size"]))
            c_in = w
        self.backbone = nn.Sequential(*blocks)
        if variant == "cnn_1d":
            self.classifier = nn.Linear(c_in, n_classes)
            self.embed_dim = c_in
        elif variant == "cnn_1d_dropout":
            self.classifier = linear_classifier(c_in, n_classes, cfg.dropout)
            self.embed_dim = c_in
        else:
            self.neck = nn.Sequential(nn.Linear(c_in, p["dense_units"]), nn.ReLU(inplace=True))
            self.embed_dim = p["dense_units"]
            self.classifier = linear_classifier(self.embed_dim, n_classes, cfg.dropout)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        return time_meanmax(self.backbone(x.reshape(b, c * f, t)))


def _register(name: str) -> None:
    @register(name)
    def build(cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int) -> Tagger:
        return CNN1d(name, cfg, n_classes, in_channels, n_bins)


for _name in VARIANTS:
    _register(_name)
