"""benchmarks/bench_inference.py loaded only the model card's CV folds, so a cv.refit run's test
mean (which includes the model on every curated clip) was reported "NOT REPRODUCED"."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench():
    if "bench_inference" not in sys.modules:  # registered first: its dataclass looks itself up there
        spec = importlib.util.spec_from_file_location("bench_inference", REPO / "benchmarks" / "bench_inference.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_inference"]


def test_a_refit_runs_model_on_every_clip_is_loaded_beside_its_fold_models():
    assert _bench().saved_model_folds({"folds": [0, 1, 2], "refit_fold": 5}) == [0, 1, 2, 5]


def test_a_run_without_refit_loads_its_fold_models_only():
    assert _bench().saved_model_folds({"folds": [0, 1], "refit_fold": None}) == [0, 1]
    assert _bench().saved_model_folds({"folds": [3]}) == [3]
