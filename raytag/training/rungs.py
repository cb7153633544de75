"""The yardstick of early stopping: how far a run's first fold has trained, and its score.

A run trains a shared warm-up, then each fold (fine-tune, filter, stage-2 rounds). Its
`cv_*` score changes meaning on the way (the warm-up's held-out score, then one fold's,
then the out-of-fold score of the folds done), and trials differ in warm-up length, so a
count of reports compares trials at different points of the pipeline. The scheduler
(raytag.search.tuner) therefore counts only the training epochs of the first fold's
fine-tune and stage-2 steps (`rung_epoch`) and compares that fold's held-out score at that
point (`rung_score`: in a sweep the search metric's score, so that the scheduler cuts by what
the searcher and the leaderboard choose by; else the layout's metric). Both are 0 during the
warm-up and frozen once the first fold is done, so every report carries them.
"""
from __future__ import annotations

from typing import Optional, Sequence

from raytag.config import ConfigError
from raytag.metrics import layout_metric
from raytag.training.steps import Step

RUNG_EPOCH = "rung_epoch"
RUNG_SCORE = "rung_score"


def resolve_rung_metric(layout: str, chosen: Optional[str] = None) -> str:
    """The held-out score `rung_score` is in: `chosen` ("lwlrap" or "map3": a sweep's search
    metric), else the layout's own metric. ConfigError for a score the layout does not make."""
    if chosen is None:
        return layout_metric(layout)
    scored = dict.fromkeys(["lwlrap", layout_metric(layout)])  # what the workers' evaluation makes
    if chosen not in scored:
        raise ConfigError(f"rung metric {chosen!r}: the {layout} layout's held-out scores are "
                          f"{', '.join(scored)}")
    return chosen


def rung_fold(steps: Sequence[Step]) -> Optional[int]:
    """The first fold the run trains (fold 0 unless cv.folds picks others)."""
    return next((s.fold for s in steps if s.trains and s.fold is not None), None)


def is_rung_step(steps: Sequence[Step], step: Step) -> bool:
    """A training step of the first fold: its epochs advance `rung_epoch`."""
    return step.trains and step.fold is not None and step.fold == rung_fold(steps)


def rung_epochs_done(steps: Sequence[Step], step_index: int, epoch: int) -> int:
    """Training epochs of the first fold done when the run is at `epoch` of step `step_index`
    (the worker's progress: step index and epochs done within it)."""
    done = 0
    for i, s in enumerate(steps):
        if i > step_index:
            break
        if is_rung_step(steps, s):
            done += s.epochs if i < step_index else min(epoch, s.epochs)
    return done


def rung_epochs_total(steps: Sequence[Step]) -> int:
    """Every training epoch of the first fold: where `rung_epoch` stops."""
    return rung_epochs_done(steps, len(steps), 0)


def rung_metrics(steps: Sequence[Step], step_index: int, epoch: int, step: Step,
                 score: Optional[float], last_score: float) -> dict:
    """`rung_epoch` and `rung_score` of a report about `step`, made when the run's progress
    is (`step_index`, `epoch`). `score` is this report's held-out score in the rung metric
    (resolve_rung_metric; None for a filter step); `last_score` the previous report's `rung_score`."""
    fresh = is_rung_step(steps, step) and score is not None
    return {RUNG_EPOCH: rung_epochs_done(steps, step_index, epoch),
            RUNG_SCORE: float(score) if fresh else float(last_score)}
