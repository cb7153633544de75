"""A resume with another number of workers (train.num_workers is free to change between
attempts) has another number of steps per epoch: the learning-rate schedule goes on at the
same fraction of its length, instead of overrunning OneCycleLR or stopping its anneal short."""
from __future__ import annotations

import pytest
import torch

from raytag.config import Config
from raytag.training.epoch import build_optimizer, load_schedule
from raytag.training.steps import Step

EPOCHS = 4


def schedule(kind: str, steps_per_epoch: int):
    cfg = Config.from_dict({"train": {"scheduler": kind, "lr": 0.01}})
    model = torch.nn.Linear(2, 2)
    return build_optimizer(cfg, model, Step("finetune", 0, epochs=EPOCHS), steps_per_epoch)


def run(opt, sched, n: int) -> list[float]:
    lrs = []
    for _ in range(n):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("kind", ["onecycle", "cosine"])
@pytest.mark.parametrize("before,after", [(19, 20), (20, 19), (20, 20)])
def test_a_resume_with_other_steps_per_epoch_finishes_the_schedule(kind, before, after):
    opt, sched = schedule(kind, before)
    run(opt, sched, 2 * before)  # 2 of 4 epochs, then a checkpoint
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()

    opt2, sched2 = schedule(kind, after)
    opt2.load_state_dict(saved_opt)
    load_schedule(sched2, saved_sched)
    assert sched2.last_epoch == 2 * after  # the same epoch of the step
    rest = run(opt2, sched2, 2 * after)  # OneCycleLR raised past its total_steps before
    # from there on, the schedule a run with the new steps per epoch had all along
    reference = run(*schedule(kind, after), EPOCHS * after)[-2 * after:]
    assert rest == pytest.approx(reference, rel=1e-6, abs=1e-12)
