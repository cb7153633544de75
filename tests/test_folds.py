"""Multi-label stratified folds: coverage, balance, determinism, clear errors."""
import numpy as np
import pytest

from raytag.errors import RaytagError
from raytag.training.folds import make_folds


def _labels(n=400, c=8, seed=0):
    rng = np.random.default_rng(seed)
    p = np.linspace(0.05, 0.4, c)  # rare and common classes
    return (rng.random((n, c)) < p).astype(np.float32)


def test_every_clip_in_exactly_one_fold():
    y = _labels()
    folds = make_folds(y, 5, seed=0)
    assert folds.shape == (len(y),) and folds.dtype.kind == "i"
    assert set(np.unique(folds)) == set(range(5))
    counts = np.bincount(folds)
    assert counts.max() - counts.min() <= 0.1 * len(y) / 5 + 2


def test_folds_balanced_per_class():
    y = _labels()
    folds = make_folds(y, 5, seed=0)
    for c in range(y.shape[1]):
        per_fold = np.array([y[folds == k, c].sum() for k in range(5)])
        # stratified: each fold holds about a fifth of this class's positives
        assert np.abs(per_fold - y[:, c].sum() / 5).max() <= 2, (c, per_fold)


def test_better_balanced_than_random_assignment():
    y = _labels(seed=1)
    rng = np.random.default_rng(0)
    spread = lambda f: sum(np.ptp([y[f == k, c].sum() for k in range(5)]) for c in range(y.shape[1]))
    assert spread(make_folds(y, 5, 0)) < spread(rng.integers(0, 5, len(y)))


def test_deterministic_with_seed():
    y = _labels()
    np.testing.assert_array_equal(make_folds(y, 4, seed=3), make_folds(y, 4, seed=3))
    assert not np.array_equal(make_folds(y, 4, seed=3), make_folds(y, 4, seed=4))


def test_single_class_and_unlabelled_rows():
    y = np.zeros((20, 1))
    y[::3] = 1
    folds = make_folds(y, 2, seed=0)
    assert set(folds) == {0, 1}
    assert abs(y[folds == 0].sum() - y[folds == 1].sum()) <= 1


def test_fewer_clips_than_folds_is_a_clear_error():
    with pytest.raises(RaytagError, match="3 labelled clips cannot be split into 5 folds"):
        make_folds(np.eye(3), 5, seed=0)
