"""The noisy-label switches inside a real (tiny) pipeline run on Ray Train: stage 2 is skipped
when it would add nothing, and rejected clips with soft targets, quantile pseudo-label bounds and
small-loss selection reach stage 2's training set."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from raytag.config import Config
from raytag.training.runner import fit_pipeline

pytestmark = pytest.mark.ray

BASE = {
    "features": {"n_mels": 32, "hop_length": 320},
    "model": {"name": "cnn2d", "width": 8, "depth": 2, "params": {"hidden": 0}},
    "train": {"crop_seconds": 1.0, "batch_size": 32, "lr": 3e-3, "num_workers": 1, "cpus_per_worker": 1},
    "cv": {"n_folds": 3, "folds": [0]},
    "inference": {"overlap": 0.0},
}


def _fit(cfg: dict, demo_data, out, name):
    result = fit_pipeline(Config.from_dict({**BASE, **cfg}), demo_data, str(out / "results"), name,
                          feature_cache=str(out / "cache"), progress=False)
    return result, pd.read_csv(f"{result.outputs_dir}/history.csv")


def test_stage2_is_skipped_when_nothing_was_accepted_and_pseudo_is_off(ray_session, demo_data, tmp_path):
    # min_prob >= 1.0: no noisy clip can pass, and nothing else would join stage 2
    cfg = {"pipeline": {"warmup": {"enabled": False}, "finetune": {"epochs": 2},
                        "filter": {"enabled": True, "rule": "min_prob", "threshold": 1.0},
                        "pseudo": {"enabled": False, "epochs": 3}}}
    result, history = _fit(cfg, demo_data, tmp_path, "skip")
    trained = history[history["train_loss"].notna()]
    assert set(trained["stage"]) == {"finetune"} and len(trained) == 2
    oof = pd.read_parquet(f"{result.outputs_dir}/oof.parquet")
    assert set(oof["stage"]) == {"finetune"} and len(oof) > 0  # the fold ends with its stage-1 model
    assert (tmp_path / "results" / "skip" / "outputs" / "weights" / "fold0.safetensors").is_file()
    assert result.metrics["cv_lwlrap"] > 0


def test_pseudo_rounds_that_take_nothing_are_skipped_too(ray_session, demo_data, tmp_path):
    # nothing accepted, and no clip reaches a top probability of 0.999 after 2 epochs: each round's
    # pseudo labels are chosen (and recorded), then the round is skipped rather than training on
    # the curated clips alone with a new one-cycle schedule
    cfg = {"pipeline": {"warmup": {"enabled": False}, "finetune": {"epochs": 2},
                        "filter": {"enabled": True, "rule": "min_prob", "threshold": 1.0},
                        "pseudo": {"enabled": True, "rounds": 2, "epochs": 2,
                                   "lower": {"start": 0.999, "end": 0.999}, "upper": 1.0}}}
    result, history = _fit(cfg, demo_data, tmp_path, "nothing")
    trained = history[history["train_loss"].notna()]
    assert set(trained["stage"]) == {"finetune"} and len(trained) == 2
    pseudo = [json.loads((Path(result.outputs_dir) / "pseudo" / f"fold0_r{r}.json").read_text()) for r in (0, 1)]
    assert [p["n_pseudo"] for p in pseudo] == [0, 0] and pseudo[0]["n_unlabelled"] > 0
    oof = pd.read_parquet(f"{result.outputs_dir}/oof.parquet")
    assert set(oof["stage"]) == {"finetune"} and len(oof) > 0  # the fold ends with its stage-1 model
    assert result.metrics["cv_lwlrap"] > 0
    assert result.metrics["epochs_run"] == 2  # the filter and the skipped rounds trained nothing


def test_soft_rejected_quantile_pseudo_and_small_loss_reach_stage2(ray_session, demo_data, tmp_path):
    cfg = {"train": {**BASE["train"], "loss": {"noisy_keep": 0.7, "noisy_keep_ramp": 1}},
           "pipeline": {"warmup": {"enabled": False}, "finetune": {"epochs": 1},
                        "filter": {"enabled": True, "rule": "min_prob", "threshold": 1.0,
                                   "rejected": "soft", "soft_beta": 0.5},
                        "pseudo": {"enabled": True, "rounds": 2, "epochs": 1, "bounds": "quantile",
                                   "lower": {"start": 0.5, "end": 0.8}, "upper": 1.0}}}
    result, history = _fit(cfg, demo_data, tmp_path, "soft")
    stages = set(history.loc[history["train_loss"].notna(), "stage"])
    assert {"stage2_r0", "stage2_r1"} <= stages
    run = tmp_path / "results" / "soft"
    ckpt = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())[-1]
    state = json.loads((ckpt / "state.json").read_text())
    rows = {r["stage"]: r["n_train"] for r in state["stage_rows"]}
    pseudo = [json.loads((Path(result.outputs_dir) / "pseudo" / f"fold0_r{r}.json").read_text()) for r in (0, 1)]
    n_unlabelled = pseudo[0]["n_unlabelled"]
    # quantile bounds take about half the rejected clips, then about a fifth
    assert 0.4 < pseudo[0]["n_pseudo"] / n_unlabelled < 0.6 and 0.1 < pseudo[1]["n_pseudo"] / n_unlabelled < 0.3
    # every rejected clip is in stage 2 once: as a pseudo-labelled clip or with its soft target
    assert rows["stage2_r0"] == rows["finetune"] + n_unlabelled == rows["stage2_r1"]
