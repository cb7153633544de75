"""`resnet18`, `resnet34`: ResNet with basic blocks (He et al. 2016), as seed 003 used on
1- or 3-channel mel spectrograms.

Written here because torchvision is not installed; layer for layer the same as
torchvision's resnet18/34 (same parameter count at width 64), but the head pools
mean over frequency and mean + max over time so any crop length works.
`width` is the stem width (64 is the standard net; 32 the CPU default);
stage widths are width * (1, 2, 4, 8). `depth` (1-4) keeps the first `depth` stages.

params: stem_pool (int, 1) 1: the stem's 3x3 max pooling (stride 2) as in torchvision, so the
stem downsamples 4x; 0: left out (2x), for small spectrograms (64 mels x 128 frames end in a
2 x 4 map with it), at about 2-3x the compute. zero_init_residual (int, 0) 1: each block's last
BN scale starts at 0, so every residual block starts as the identity (torchvision's option). On
the dev benchmark (the default's resnet18 member, folds 0-1) it scored OOF 0.670 against 0.686,
so 0 stays the default (quality.md, twenty-fifth session). Measured on the dev benchmark (the default's
resnet18 w32 member, folds 0-1): 0 scored OOF 0.645 against 1's 0.686 (-0.040 [-0.079, +0.003])
in 2.2x the time, so 1 stays the default (results/benchmarks/quality.md, twenty-fifth session).
"""
from __future__ import annotations

import torch
from torch import nn

from raytag.config import ModelConfig
from raytag.models.common import Tagger, freq_mean_time_meanmax, linear_classifier
from raytag.models.registry import ModelConfigError, family_params, register

LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(Tagger):
    def __init__(self, layers: tuple[int, ...], cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int):
        super().__init__(in_channels, n_bins, n_classes)
        switches = ("stem_pool", "zero_init_residual")
        p = family_params(cfg, {"stem_pool": 1, "zero_init_residual": 0}, may_be_zero=switches, switches=switches)
        if cfg.depth > len(layers):
            raise ModelConfigError(
                f"model.depth: {cfg.name} has {len(layers)} stages, got depth={cfg.depth} (use 1-{len(layers)})"
            )
        w = cfg.width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1) if p["stem_pool"] else nn.Identity(),
        )
        stages, c_in = [], w
        for i, n_blocks in enumerate(layers[: cfg.depth]):
            c_out = w * 2**i
            blocks = [BasicBlock(c_in, c_out, 1 if i == 0 else 2)]
            blocks += [BasicBlock(c_out, c_out, 1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.embed_dim = c_in
        self.classifier = linear_classifier(c_in, n_classes, cfg.dropout)
        self._init_weights(zero_init_residual=bool(p["zero_init_residual"]))

    def _init_weights(self, zero_init_residual: bool = False) -> None:
        # torchvision's initialisation, so a width-64 net trains like the reference.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017; torchvision's option)
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return freq_mean_time_meanmax(self.stages(self.stem(x)))


def _register(name: str) -> None:
    @register(name)
    def build(cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int) -> Tagger:
        return ResNet(LAYERS[name], cfg, n_classes, in_channels, n_bins)


for _name in LAYERS:
    _register(_name)
