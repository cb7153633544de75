"""benchmarks/bench_inference.py loaded only the model card's CV folds, so a cv.refit run's test
mean (which includes the model on every curated clip) was reported "NOT REPRODUCED"."""
from __future__ import annotations

from bench_util import load_benchmark


def _bench():
    return load_benchmark("bench_inference")


def test_a_refit_runs_model_on_every_clip_is_loaded_beside_its_fold_models():
    assert _bench().saved_model_folds({"folds": [0, 1, 2], "refit_fold": 5}) == [0, 1, 2, 5]


def test_a_run_without_refit_loads_its_fold_models_only():
    assert _bench().saved_model_folds({"folds": [0, 1], "refit_fold": None}) == [0, 1]
    assert _bench().saved_model_folds({"folds": [3]}) == [3]
