"""A resume with another number of workers can cross build_optimizer's 4-step threshold for
OneCycleLR (fewer optimizer steps in a step: a constant learning rate, no schedule). The
worker resumes its optimizer through epoch.resume_optimizer: a checkpoint saved without a
schedule, resumed into one, used to raise KeyError 'initial_lr' at the first
scheduler.step(); one saved with a schedule, resumed without one, kept the cycle's learning
rate of the checkpoint for the rest of the step."""
from __future__ import annotations

import pytest
import torch

from raytag.config import Config
from raytag.training.epoch import build_optimizer, resume_optimizer
from raytag.training.steps import Step

EPOCHS = 2
LR = 0.01


def _build(steps_per_epoch: int, optimizer: str = "adamw"):
    cfg = Config.from_dict({"train": {"scheduler": "onecycle", "lr": LR, "optimizer": optimizer}})
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt, sched = build_optimizer(cfg, model, Step("finetune", 0, epochs=EPOCHS), steps_per_epoch)
    return model, opt, sched


def _train(model, opt, sched, n: int) -> list[float]:
    lrs = []
    for _ in range(n):
        opt.zero_grad()
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
        if sched is not None:
            sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def _momentum(group) -> float:
    return group["betas"][0] if "betas" in group else group["momentum"]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_checkpoint_without_a_schedule_resumes_into_a_one_cycle(optimizer):
    """Trained on 3 workers (1 step per epoch: 2 in all, no schedule), resumed on 1 after the
    first epoch (2 steps per epoch: 4 in all, OneCycleLR)."""
    model, opt, sched = _build(1, optimizer)
    assert sched is None
    _train(model, opt, sched, 1)
    saved = opt.state_dict()

    model2, opt2, sched2 = _build(2, optimizer)
    assert sched2 is not None
    model2.load_state_dict(model.state_dict())
    resume_optimizer(opt2, sched2, saved, None, done=1 / EPOCHS)
    assert sched2.last_epoch == 2  # the same share of the step
    rest = _train(model2, opt2, sched2, 2)  # KeyError 'initial_lr' at the first step() before

    # from there on, the schedule a run on 1 worker had all along (its learning rate and momentum)
    ref_model, ref_opt, ref_sched = _build(2, optimizer)
    reference = _train(ref_model, ref_opt, ref_sched, 4)[-2:]
    assert rest == pytest.approx(reference, rel=1e-6, abs=1e-12)
    assert _momentum(opt2.param_groups[0]) == pytest.approx(_momentum(ref_opt.param_groups[0]))
    assert opt2.state_dict()["state"].keys() == saved["state"].keys()  # the moments go on


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_checkpoint_with_a_schedule_resumes_into_a_constant_rate(optimizer):
    """The other way: trained on 1 worker (OneCycleLR), resumed on 3 (too few steps for one):
    the constant learning rate and momentum a run on 3 workers had, not the cycle's."""
    model, opt, sched = _build(2, optimizer)
    _train(model, opt, sched, 2)
    saved, saved_sched = opt.state_dict(), sched.state_dict()
    assert saved["param_groups"][0]["lr"] != pytest.approx(LR)

    _, opt2, sched2 = _build(1, optimizer)
    assert sched2 is None
    resume_optimizer(opt2, sched2, saved, saved_sched, done=1 / EPOCHS)
    _, fresh, _ = _build(1, optimizer)
    assert opt2.param_groups[0]["lr"] == LR
    assert _momentum(opt2.param_groups[0]) == _momentum(fresh.param_groups[0])
    assert opt2.state_dict()["state"].keys() == saved["state"].keys()


def test_the_same_schedule_resumes_as_before():
    """Both sides with a schedule of one length: the checkpoint's state, loaded as it was."""
    model, opt, sched = _build(2)
    _train(model, opt, sched, 2)
    saved, saved_sched = opt.state_dict(), sched.state_dict()
    rest_ref = _train(model, opt, sched, 2)

    model2, opt2, sched2 = _build(2)
    resume_optimizer(opt2, sched2, saved, saved_sched, done=1 / EPOCHS)
    assert opt2.state_dict()["param_groups"] == saved["param_groups"]
    assert sched2.state_dict() == saved_sched
    assert _train(model2, opt2, sched2, 2) == pytest.approx(rest_ref, rel=1e-6, abs=1e-12)
