"""benchmarks/bench_inference.py on a run folder made here without training: untrained fold
models (a different seed per fold) predict their held-out demo clips and the test clips as
the worker's evaluation does, and the trial-output writer (`write_outputs`) turns that into
outputs/ with its metrics.json. The script must rebuild the folds, load the fold models,
reproduce those metrics with the run's own setting and score the other settings."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from raytag.config import Config
from raytag.data.layouts import load_dataset
from raytag.errors import RaytagError
from raytag.features.store import build_feature_store
from raytag.models import build_model
from raytag.training.inference import iter_store_clips, predict_segments
from raytag.training.outputs import OUTPUTS_DIR, write_metrics, write_outputs
from raytag.training.plan import build_plan

from bench_util import load_benchmark


def _bench():
    return load_benchmark("bench_inference")


CFG = Config.from_dict({
    "name": "fake",
    "features": {"n_mels": 32},
    "model": {"name": "cnn2d", "width": 4, "depth": 2},
    "train": {"crop_seconds": 1.0},
    "cv": {"n_folds": 3, "seed": 0},
})


def _save(path: Path, ids, probs):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.asarray(ids), probs=np.asarray(probs, np.float32))


@pytest.fixture(scope="module")
def fake_run(demo_data, tmp_path_factory):
    """A run folder as `raytag train` leaves it (outputs/ from the real writer), with
    untrained fold models; and the feature cache it used."""
    root = tmp_path_factory.mktemp("fakerun")
    cache = root / "cache"
    dataset = load_dataset(demo_data, sample_rate=CFG.features.sample_rate, features=CFG.features)
    store = build_feature_store(dataset, CFG.features, cache, progress=False)
    plan = build_plan(CFG, dataset, store)
    files = root / "files"
    inf = CFG.inference
    kwargs = dict(segment_frames=CFG.segment_frames(), overlap=inf.overlap, reduce=inf.reduce, tta=inf.tta,
                  mean=plan.norm_mean, std=plan.norm_std)
    for fold in plan.folds:
        torch.manual_seed(fold)
        model = build_model(CFG.model, plan.n_classes, plan.channels, plan.bins).eval()
        held = [c for c, f in zip(plan.curated_ids, plan.curated_fold) if f == fold]
        oof = predict_segments(model, iter_store_clips(store, held), **kwargs)
        test = predict_segments(model, iter_store_clips(store, plan.test_ids), **kwargs)
        for kind, ids, probs in (("oof", held, oof), ("test", plan.test_ids, test)):
            _save(files / "preds" / kind / f"finetune__fold{fold}.npz", ids, probs)
            _save(files / "preds" / "final" / f"{kind}_fold{fold}.npz", ids, probs)
        (files / "weights").mkdir(parents=True, exist_ok=True)
        # contiguous: build_model keeps conv weights channels-last, and safetensors stores plain tensors
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(files / "weights" / f"fold{fold}.safetensors"))
    run = root / "run"
    outputs = run / OUTPUTS_DIR
    outputs.mkdir(parents=True)
    metrics, _ = write_outputs(files, outputs, plan, dataset, store, history=[])
    write_metrics(outputs, metrics)
    return run, demo_data, cache


def test_own_setting_reproduces_the_run_and_others_are_paired(fake_run, tmp_path):
    run, data, cache = fake_run
    bench = _bench()
    out = tmp_path / "inference"
    sections = bench.main(["--run", str(run), "--data", str(data), "--feature-cache", str(cache),
                           "--settings", "own", "overlap0.75", "reduce=max,tta=1", "--out", str(out)])
    section = sections[0]
    metrics = json.loads((run / OUTPUTS_DIR / "metrics.json").read_text())
    rep = section["reproduction"]
    assert rep["ok"], rep
    assert rep["cv_here"] == pytest.approx(metrics["cv_lwlrap"], abs=1e-6)
    assert rep["test_here"] == pytest.approx(metrics["test_lwlrap"], abs=1e-6)
    assert rep["oof_max_abs_diff"] < 1e-6 and rep["test_max_abs_diff"] < 1e-6
    rows = {r["setting"]: r for r in section["rows"]}
    assert list(rows) == ["own", "overlap0.75", "reduce=max,tta=1"]
    assert "cv_pair" not in rows["own"]
    assert rows["reduce=max,tta=1"]["reduce"] == "max" and rows["reduce=max,tta=1"]["tta"] == 1
    for name in ("overlap0.75", "reduce=max,tta=1"):
        pair = rows[name]["cv_pair"]
        assert pair["diff"] == pytest.approx(rows[name]["cv_lwlrap"] - rows["own"]["cv_lwlrap"], abs=1e-4)
        assert pair["n_clips"] == section["n_oof"] and rows[name]["test_pair"]["n_clips"] == section["n_test"]
    # appended, not overwritten
    bench.main(["--run", str(run), "--data", str(data), "--feature-cache", str(cache),
                "--settings", "own", "--out", str(out)])
    assert len(json.loads(out.with_suffix(".json").read_text())) == 2
    assert out.with_suffix(".md").read_text().count(f"## {run}") == 2


def test_swapped_fold_models_are_reported_not_reproduced(fake_run, tmp_path):
    """Each fold's model must score its own held-out clips: swapped weights change the OOF
    predictions, and the script says the run is not reproduced."""
    run, data, cache = fake_run
    bench = _bench()
    rd = bench.load_run(run, data, str(cache))
    rd.models[0], rd.models[1] = rd.models[1], rd.models[0]
    own = bench.score_setting(rd, {}, batch_size=64)
    rep = bench.reproduction(rd, own)
    assert rep["oof_max_abs_diff"] > 1e-3 and not rep["probabilities_match"] and not rep["ok"]
    assert "DOES NOT REPRODUCE" in bench.explain(rep, rd)


def test_folds_from_another_seed_are_refused(fake_run, tmp_path):
    run, data, cache = fake_run
    bench = _bench()
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg_path = copy / OUTPUTS_DIR / "config.yaml"
    cfg = Config.from_yaml(cfg_path).with_overrides({"cv.seed": 7})
    cfg_path.write_text(cfg.to_yaml())
    with pytest.raises(RaytagError, match="another fold"):
        bench.load_run(copy, data, str(cache))


def test_bad_settings_are_refused():
    bench = _bench()
    assert bench.parse_setting("seg3.84") == ("seg3.84", {"segment_seconds": 3.84})
    assert bench.parse_setting("overlap=0.6,reduce=max") == ("overlap=0.6,reduce=max",
                                                             {"overlap": 0.6, "reduce": "max"})
    for bad in ("nonsense", "hop=3", "tta=-1", "segment_seconds=0"):
        with pytest.raises(SystemExit):
            bench.parse_setting(bad)
