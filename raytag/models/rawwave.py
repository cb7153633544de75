"""`rawwave_cnn`: a 1-D CNN on the raw waveform (input [B, 1, 1, N], features.kind raw).

After the M5 net of Dai et al. 2017 ("Very deep CNNs for raw waveforms"): a strided
first conv with a long kernel (80 samples, stride 4: a learned filterbank), BN, ReLU,
4x max pooling; then `depth` blocks of (3-tap conv, BN, ReLU) x 2 + 4x max pooling,
widths width * 2**i; mean + max over time; dropout; output layer.
Clips shorter than the first kernel are zero-padded (padding, not data).

params: stem_kernel (int, 80), stem_stride (int, 4), pool (int, 4) pooling per block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raytag.config import ModelConfig
from raytag.models.common import Tagger, block_widths, linear_classifier, pool1d, time_meanmax
from raytag.models.registry import ModelConfigError, family_params, register


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    pad = kernel // 2 if stride == 1 else 0
    return [nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False), nn.BatchNorm1d(c_out), nn.ReLU(inplace=True)]


class RawBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, pool: int):
        super().__init__()
        self.pool = pool
        self.body = nn.Sequential(*_conv_bn_relu(c_in, c_out, 3), *_conv_bn_relu(c_out, c_out, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool1d(self.body(x), self.pool, "max")


class RawWaveCNN(Tagger):
    def __init__(self, cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int):
        if n_bins != 1:
            raise ModelConfigError(
                f"rawwave_cnn takes raw waveforms shaped [B, channels, 1, samples] "
                f"(features.kind: raw), but the features have {n_bins} bins"
            )
        super().__init__(in_channels, n_bins, n_classes, fixed_bins=True)
        p = family_params(cfg, {"stem_kernel": 80, "stem_stride": 4, "pool": 4})
        self.stem_kernel = p["stem_kernel"]
        self.pool = p["pool"]
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, cfg.width, p["stem_kernel"], p["stem_stride"]))
        widths = block_widths(cfg.width, cfg.depth)
        blocks, c_in = [], cfg.width
        for w in widths:
            blocks.append(RawBlock(c_in, w, p["pool"]))
            c_in = w
        self.blocks = nn.Sequential(*blocks)
        self.embed_dim = c_in
        self.classifier = linear_classifier(c_in, n_classes, cfg.dropout)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        wave = x[:, :, 0, :]  # [B, C, N]
        if wave.shape[-1] < self.stem_kernel:
            wave = F.pad(wave, (0, self.stem_kernel - wave.shape[-1]))
        h = pool1d(self.stem(wave), self.pool, "max")
        return time_meanmax(self.blocks(h))


@register("rawwave_cnn")
def build_rawwave_cnn(cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int) -> Tagger:
    return RawWaveCNN(cfg, n_classes, in_channels, n_bins)
