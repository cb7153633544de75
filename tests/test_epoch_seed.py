"""The augmentation generator of a training epoch: a large cfg.seed must not overflow torch's
seed, and today's seeds must give the very same random numbers (benchmark figures reproduce)."""
from __future__ import annotations

import torch

from raytag.training.epoch import epoch_generator


def _epoch_seed(cfg_seed: int, global_step: int) -> int:
    return int(cfg_seed * 1_000_003 + global_step)  # as the worker derives it


def test_a_large_config_seed_builds_the_epoch_generator():
    gen = epoch_generator(_epoch_seed(2**32 - 1, 7), rank=1)
    assert torch.rand(3, generator=gen).shape == (3,)


def test_small_seeds_draw_the_same_numbers_as_before():
    for cfg_seed, step, rank in [(0, 0, 0), (42, 13, 1), (2_000_000_000, 3, 0), (-5, 2, 0)]:
        seed = _epoch_seed(cfg_seed, step)
        before = torch.Generator().manual_seed(seed * 7919 + rank)
        assert torch.equal(torch.rand(5, generator=epoch_generator(seed, rank)), torch.rand(5, generator=before))
