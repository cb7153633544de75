"""Training batches: every rank the same number of steps, each clip once per epoch, and no
last batch of a single clip (BatchNorm cannot train on one value per channel, which is what
networks that pool down to 1x1 see at short crops)."""
from __future__ import annotations

import numpy as np
import pytest

from raytag.config import ModelConfig
from raytag.models import build_model
from raytag.training.dataset import CropBatches, LabelledSet


class Store:
    """Clips of 10 frames x 4 bins whose every value is the clip's number."""

    def n_frames(self, clip_id):
        return 10

    def crop(self, clip_id, start, n):
        return np.full((1, 4, n), float(clip_id[1:]), np.float32)

    def get(self, clip_id):
        return self.crop(clip_id, 0, 10)


def batches(n_clips: int, batch: int, world: int = 1, rank: int = 0):
    data = LabelledSet([f"c{i}" for i in range(n_clips)], np.zeros((n_clips, 2)), np.zeros(n_clips, bool))
    source = CropBatches(Store(), data, crop_frames=5, batch_size=batch)
    got = list(source.epoch(seed=0, rank=rank, world_size=world))
    assert len(got) == source.steps_per_epoch(world)
    return got


@pytest.mark.parametrize("n_clips,batch,sizes", [(33, 32, [32, 2]), (32, 32, [32]), (34, 32, [32, 2]), (5, 4, [4, 2])])
def test_no_last_batch_of_one_clip_and_every_clip_still_comes(n_clips, batch, sizes):
    got = batches(n_clips, batch)
    assert [len(x) for x, _, _ in got] == sizes
    seen = {int(v) for x, _, _ in got for v in x[:, 0, 0, 0].tolist()}
    assert seen == set(range(n_clips))


def test_ranks_still_take_the_same_number_of_steps():
    assert [len(batches(9, 4, world=2, rank=r)) for r in (0, 1)] == [2, 2]  # 5 clips per rank: 4 + 2


def test_a_net_that_pools_to_one_value_per_channel_trains_on_the_last_batch():
    net = build_model(ModelConfig(name="cnn_1d", width=8), 2, 1, 4).train()  # 5 frames pool to 1
    for x, y, _ in batches(33, 32):
        net(x).sum().backward()  # a batch of one raised "Expected more than 1 value per channel"
