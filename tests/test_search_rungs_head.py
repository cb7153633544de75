"""Fixes from the search-path audit (notes26/audit/search.md, items 7, 8 and 9): a trial
the scheduler stops reaches Optuna with the rung score it was stopped on, the scheduler's
rung_score is in the sweep's search metric, and a head node too small for a trial's
driver is refused instead of leaving the sweep waiting for ever. No Ray cluster, no training."""
from __future__ import annotations

import pytest

from raytag.search.space import parse_space
from raytag.search.tuner import build_searcher
from raytag.training.rungs import RUNG_EPOCH, RUNG_SCORE

SPACE = """
name: audit
base:
  cv.n_folds: 2
  pipeline.finetune.epochs: 12
space:
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
search: {samples: 3, metric: cv_lwlrap, scheduler: asha, grace_period: 1, reduction_factor: 2}
"""


# -- item 7: the result ASHA stops a trial on reaches Optuna -----------------------------------
def _stopped_trial(reports: list[dict], stop_on: dict):
    """The study's trial of one searcher trial fed `reports` as Tune does (on_trial_result),
    then completed with `stop_on`: the result the scheduler stopped it on, which Tune passes to
    on_trial_complete only."""
    searcher = build_searcher(parse_space(SPACE))
    searcher.suggest("stopped")
    for row in reports:
        searcher.on_trial_result("stopped", row)
    searcher.on_trial_complete("stopped", stop_on)
    (trial,) = searcher._ot_study.trials
    return trial


def test_a_stopped_trial_has_the_score_of_the_rung_it_was_stopped_at():
    from optuna.trial import TrialState

    before = [{RUNG_EPOCH: e, RUNG_SCORE: 0.5 + e / 100, "cv_lwlrap": 0.9} for e in range(1, 10)]
    trial = _stopped_trial(before, {RUNG_EPOCH: 10, RUNG_SCORE: 0.7, "cv_lwlrap": 0.9, "pipeline_done": 0})
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values[10] == pytest.approx(0.7)
    assert trial.value == pytest.approx(0.7)  # what TPE ranks a pruned trial by: its last step


def test_a_trial_stopped_at_the_first_rung_is_not_left_without_a_value():
    """grace_period 1: the first result with a rung score is the one ASHA stops it on."""
    warmup = [{RUNG_EPOCH: 0, RUNG_SCORE: 0.0, "cv_lwlrap": 0.4}] * 3
    trial = _stopped_trial(warmup, {RUNG_EPOCH: 1, RUNG_SCORE: 0.62, "cv_lwlrap": 0.4, "pipeline_done": 0})
    assert trial.intermediate_values == pytest.approx({1: 0.62})


def test_a_stop_result_already_reported_is_not_reported_twice():
    rows = [{RUNG_EPOCH: e, RUNG_SCORE: 0.5 + e / 100} for e in range(1, 4)]
    trial = _stopped_trial(rows, rows[-1])
    assert trial.intermediate_values == pytest.approx({1: 0.51, 2: 0.52, 3: 0.53})
