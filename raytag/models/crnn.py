"""`crnn`: seed 000's CNN+LSTM. The cnn2d conv blocks, mean over frequency, then a
bidirectional LSTM over the remaining frames, mean + max pooled over time.

params:
  lstm_hidden (int, 128)      hidden size per direction; embedding is 2 * lstm_hidden
  lstm_layers (int, 1)        stacked LSTM layers
  time_pool_blocks (int, 99)  conv blocks that also halve time (fewer keeps more
                              frames for the LSTM at more compute); >= depth pools in all
  skip (int, 1)               1: the conv features' own mean + max over time join the
                              LSTM's in the embedding, so the head sees the conv path
                              directly and the LSTM adds to it; 0: the LSTM's alone (the
                              seed's net and raytag's before session 25). On 5 folds of the
                              dev benchmark (crnn w32, the default recipe) skip lifted CV
                              0.352 -> 0.608 and test 0.444 -> 0.644: without it the head
                              waits for the LSTM and the net barely learns in 30 epochs
                              (results/benchmarks/quality.md, twenty-fifth session)
"""
from __future__ import annotations

import torch
from torch import nn

from raytag.config import ModelConfig
from raytag.models.cnn2d import conv_stack
from raytag.models.common import Tagger, block_widths, linear_classifier, time_meanmax
from raytag.models.registry import family_params, register


class CRNN(Tagger):
    def __init__(self, cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int):
        super().__init__(in_channels, n_bins, n_classes)
        p = family_params(
            cfg, {"lstm_hidden": 128, "lstm_layers": 1, "time_pool_blocks": 99, "skip": 1},
            may_be_zero=("time_pool_blocks", "skip"), switches=("skip",),
        )
        widths = block_widths(cfg.width, cfg.depth)
        self.backbone = conv_stack(in_channels, widths, p["time_pool_blocks"])
        self.lstm = nn.LSTM(
            widths[-1],
            p["lstm_hidden"],
            num_layers=p["lstm_layers"],
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout if p["lstm_layers"] > 1 else 0.0,
        )
        self.skip = bool(p["skip"])
        self.embed_dim = 2 * p["lstm_hidden"] + (widths[-1] if self.skip else 0)
        self.classifier = linear_classifier(self.embed_dim, n_classes, cfg.dropout)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.backbone(x).mean(dim=2)  # [B, C, T']
        out, _ = self.lstm(conv.transpose(1, 2))  # [B, T', 2H]
        pooled = time_meanmax(out.transpose(1, 2))
        return torch.cat([time_meanmax(conv), pooled], dim=1) if self.skip else pooled


@register("crnn")
def build_crnn(cfg: ModelConfig, n_classes: int, in_channels: int, n_bins: int) -> Tagger:
    return CRNN(cfg, n_classes, in_channels, n_bins)
