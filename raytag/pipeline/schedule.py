"""Scheduled lower threshold of the pseudo-label rounds (seed 002, "scheduled threshold").

Early rounds take many clips with a low lower bound (learn a lot while the model is
weak); later rounds raise it so that only confident predictions are trusted (less bias
from the model's own mistakes). Seed 002 rose linearly from 0.35 to 0.65.
"""
from __future__ import annotations

import math

from raytag.config import ThresholdSchedule


def lower_bound(round_idx: int, n_rounds: int, cfg: ThresholdSchedule) -> float:
    """The lower probability bound of pseudo-label round `round_idx` (0-based) of `n_rounds`.

    Round 0 gives `cfg.start` and round `n_rounds - 1` gives `cfg.end`; with a single round
    the start is used. Shapes, with f = round_idx / (n_rounds - 1) in [0, 1]:
      linear:   start + (end - start) * f
      constant: start (every round)
      cosine:   start + (end - start) * (1 - cos(pi * f)) / 2  (slow, fast, slow: a half cosine)
    """
    if n_rounds < 1:
        raise ValueError(f"n_rounds must be at least 1, got {n_rounds}")
    if not 0 <= round_idx < n_rounds:
        raise ValueError(f"round_idx must be in [0, {n_rounds}), got {round_idx}")
    frac = round_idx / (n_rounds - 1) if n_rounds > 1 else 0.0
    span = cfg.end - cfg.start
    if cfg.shape == "linear":
        return float(cfg.start + span * frac)
    if cfg.shape == "constant":
        return float(cfg.start)
    if cfg.shape == "cosine":
        return float(cfg.start + span * (1.0 - math.cos(math.pi * frac)) / 2.0)
    raise ValueError(f"unknown threshold schedule shape {cfg.shape!r}; use linear, constant or cosine")
