"""Where each fold's training starts when its first step is not stage 1: with
pipeline.finetune off, a fold begins with the noisy-label filter, which must judge the noisy
clips with the warm-up model, not with the last fold's model (that one trained on this
fold's held-out curated clips: a CV leak). No Ray: the step function on a small network."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from raytag.config import Config, ConfigError
from raytag.models import build_model
from raytag.training.stage_steps import start_fold
from raytag.training.steps import build_steps

FILTER_ONLY = {"model": {"name": "cnn2d", "width": 4, "depth": 1},
               "pipeline": {"finetune": {"enabled": False}, "filter": {"enabled": True},
                            "pseudo": {"enabled": False}}}


def test_each_folds_filter_starts_from_the_warmup_weights(tmp_path: Path):
    cfg = Config.from_dict({**FILTER_ONLY, "pipeline": {**FILTER_ONLY["pipeline"], "warmup": {"enabled": True}}})
    steps = build_steps(cfg, [0, 1])
    assert [s.kind for s in steps] == ["warmup", "filter", "stage2", "filter", "stage2"]
    plan = SimpleNamespace(n_classes=3, channels=1, bins=16)
    model = build_model(cfg.model, plan.n_classes, plan.channels, plan.bins)
    (tmp_path / "weights").mkdir()
    warm = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in warm.items()}, str(tmp_path / "weights" / "warmup.safetensors"))
    ctx = SimpleNamespace(cfg=cfg, plan=plan, state=SimpleNamespace(out=tmp_path))
    for fold_filter in (steps[1], steps[3]):
        with torch.no_grad():  # as the previous fold's stage 2 left it
            for p in model.parameters():
                p.add_(1.0)
        start_fold(ctx, model, fold_filter, steps)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, warm[name], msg=name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start_fold(ctx, model, steps[4], steps)  # not the fold's first step: the filter's model goes on
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=name)


def test_a_filter_with_nothing_trained_before_it_is_refused():
    with pytest.raises(ConfigError, match="nothing trains before them"):
        build_steps(Config.from_dict({**FILTER_ONLY, "pipeline": {**FILTER_ONLY["pipeline"],
                                                                  "warmup": {"enabled": False}}}), [0, 1])


def test_a_folds_final_stage_is_its_last_in_pipeline_order_not_in_file_order():
    import pandas as pd

    from raytag.training.outputs import _final_stage

    names = ["finetune"] + [f"stage2_r{r}" for r in range(11)]
    preds = pd.DataFrame({"fold": 0, "stage": sorted(names)})  # as the files sort: ..., stage2_r10, ..., stage2_r9
    assert preds["stage"].iloc[-1] == "stage2_r9"
    assert _final_stage(preds, 0) == "stage2_r10"


def test_filter_recall_counts_only_the_clips_each_folds_filter_judged():
    """With cv.noisy_folds a fold's filter never sees its held-out noisy clips; a correct clip
    among those is not one it failed to keep."""
    from raytag.pipeline.report import filter_precision_recall
    from raytag.training.outputs import _judged

    given = {"n1": ("a",), "n2": ("b",), "n3": ("a",), "n4": ("b",)}  # all four correctly labelled
    decision = {"accepted": ["n1", "n2"], "unlabelled": []}  # n3, n4: this fold's held-out clips
    truth = {c: list(labels) for c, labels in given.items()}
    assert filter_precision_recall(decision["accepted"], given, truth)["recall"] == 0.5  # the old figure
    assert filter_precision_recall(decision["accepted"], _judged(decision, given), truth)["recall"] == 1.0


def test_pseudo_labels_with_nothing_trained_before_them_are_refused():
    """Warm-up, fine-tune and filter off, pseudo on: round 0 would label the noisy clips with a
    fresh network (every probability ~0.5, so every clip with every class)."""
    cfg = Config.from_dict({"model": FILTER_ONLY["model"],
                            "pipeline": {"warmup": {"enabled": False}, "finetune": {"enabled": False},
                                         "filter": {"enabled": False}, "pseudo": {"enabled": True}}})
    with pytest.raises(ConfigError, match="pipeline.pseudo .*pipeline.finetune"):
        build_steps(cfg, [0, 1])
    warmed = Config.from_dict({**cfg.to_dict(), "pipeline": {**cfg.to_dict()["pipeline"],
                                                             "warmup": {"enabled": True, "epochs": 1}}})
    assert [s.kind for s in build_steps(warmed, [0])] == ["warmup", "stage2", "stage2"]
