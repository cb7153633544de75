"""The scheduler compares like with like: rung_epoch counts only the first fold's fine-tune
and stage-2 epochs, so ASHA meets trials with different warm-ups at equal fine-tune
progress; a trial it stops reaches Optuna as PRUNED. No Ray cluster: the reports are made
by the workers' own rung_metrics along build_steps, as train_loop_per_worker walks them,
and fed to the scheduler and the searcher the sweep builds."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from raytag.config import Config
from raytag.errors import RaytagError
from raytag.search.space import SpaceError, parse_space
from raytag.search.tuner import build_scheduler, build_searcher, resolve_metric
from raytag.training.rungs import RUNG_EPOCH, RUNG_SCORE, rung_epochs_total, rung_metrics
from raytag.training.steps import build_steps

SPACE = """
name: rungs
base:
  cv.n_folds: 2
  pipeline.finetune.epochs: 6
  pipeline.pseudo.rounds: 1
  pipeline.pseudo.epochs: 2
space:
  pipeline.warmup.epochs: {randint: [1, 9]}
search: {samples: 3, metric: cv_lwlrap, scheduler: asha, grace_period: 3, reduction_factor: 2}
"""


def pipeline_reports(cfg: Config, score_at):
    """Every report of one run, in order, as the workers make them: the step loop of
    train_loop_per_worker (progress moves past a finished step before its report), with
    `score_at(step, epoch_in_step)` as the held-out score of a training epoch."""
    steps = build_steps(cfg, list(range(cfg.cv.n_folds)))
    progress = {"step": 0, "epoch": 0}
    last = 0.0
    out = []
    while progress["step"] < len(steps):
        step = steps[progress["step"]]
        if step.trains:
            progress["epoch"] += 1
            score = score_at(step, progress["epoch"])
            if progress["epoch"] >= step.epochs:
                progress["step"] += 1
                progress["epoch"] = 0
        else:  # a filter step reports once, with no new score
            progress["step"] += 1
            score = None
        row = {"stage": step.stage_name, "fold": -1 if step.fold is None else step.fold,
               **rung_metrics(steps, progress["step"], progress["epoch"], step, score, last)}
        last = row[RUNG_SCORE]
        out.append(row)
    return out


def config(warmup: int) -> Config:
    return Config.from_dict({"cv": {"n_folds": 2}, "pipeline": {
        "warmup": {"epochs": warmup}, "finetune": {"epochs": 6},
        "pseudo": {"enabled": True, "rounds": 1, "epochs": 2}}})


def fine_tune_curve(base: float):
    """Held-out score by progress of the first fold; the warm-up scores something else."""
    def score_at(step, epoch):
        if step.kind == "warmup":
            return 0.9  # a warm-up score must never reach the scheduler
        done = epoch + (6 if step.kind == "stage2" else 0)
        return base + 0.01 * done if step.fold == 0 else 0.99
    return score_at


def test_rung_epoch_counts_first_fold_fine_tune_and_stage2_epochs_only():
    rows = pipeline_reports(config(warmup=4), fine_tune_curve(0.5))
    stages = [(r["stage"], r["fold"]) for r in rows]
    assert stages[:4] == [("warmup", -1)] * 4
    assert [r[RUNG_EPOCH] for r in rows[:4]] == [0, 0, 0, 0]
    assert [r[RUNG_SCORE] for r in rows[:4]] == [0.0] * 4  # 0 in the warm-up, not its score
    fold0 = rows[4:4 + 6 + 1 + 2]  # fine-tune 6, filter, stage-2 2
    assert [r[RUNG_EPOCH] for r in fold0] == [1, 2, 3, 4, 5, 6, 6, 7, 8]
    assert [r[RUNG_SCORE] for r in fold0] == pytest.approx(
        [0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 0.56, 0.57, 0.58])  # the filter carries the last score
    later = rows[4 + 9:]
    assert later and all(r["fold"] == 1 for r in later)
    # frozen after the first fold: fold 1's epochs and scores never move the yardstick
    assert {r[RUNG_EPOCH] for r in later} == {8} and {r[RUNG_SCORE] for r in later} == {0.58}
    assert rung_epochs_total(build_steps(config(4), [0, 1])) == 8


def test_first_fold_is_the_first_one_trained():
    cfg = config(2).with_overrides({"cv.folds": [1]})
    steps = build_steps(cfg, [1])
    assert rung_epochs_total(steps) == 8
    # 2 warm-up epochs done, 3 into fold 1's fine-tune
    assert rung_metrics(steps, 1, 3, steps[1], 0.4, 0.0) == {RUNG_EPOCH: 3, RUNG_SCORE: 0.4}


class FakeTrial(SimpleNamespace):
    pass


def test_asha_compares_trials_with_different_warmups_at_equal_fine_tune_progress():
    """Trial A has a 1-epoch warm-up, B and C 8 epochs. Counted in reports, ASHA's first rung
    (3) would catch B and C inside their warm-up; counted in first-fold epochs, every trial
    meets the rung at its 3rd fine-tune epoch and is judged by that epoch's fold-0 score."""
    from ray.tune.schedulers import TrialScheduler

    space = parse_space(SPACE)
    scheduler = build_scheduler(space)
    curves = {"A": (1, 0.50), "B": (8, 0.60), "C": (8, 0.30)}
    decisions = {}
    for name, (warmup, base) in curves.items():  # one after the other, as with one trial at a time
        trial = FakeTrial(trial_id=name)
        scheduler.on_trial_add(None, trial)
        decisions[name] = []
        for row in pipeline_reports(config(warmup), fine_tune_curve(base)):
            action = scheduler.on_trial_result(None, trial, row)
            decisions[name].append((row["stage"], row[RUNG_EPOCH], action))
            if action == TrialScheduler.STOP:
                break
    for name in "ABC":  # no cut in the warm-up, however long
        assert all(a == TrialScheduler.CONTINUE for stage, _, a in decisions[name] if stage == "warmup")
    assert decisions["A"][-1][2] == TrialScheduler.CONTINUE  # ran its whole pipeline
    assert decisions["B"][-1][2] == TrialScheduler.CONTINUE  # long warm-up, better fine-tune: kept
    # C is stopped exactly at the first rung: fine-tune epoch 3 of fold 0, after its 8 warm-up reports
    stage, rung_epoch, action = decisions["C"][-1]
    assert (stage, rung_epoch, action) == ("finetune", 3, TrialScheduler.STOP)
    assert len(decisions["C"]) == 8 + 3
    # what the first rung recorded: each trial's fold-0 score at fine-tune epoch 3
    first_rung = {m: rec for b in scheduler._brackets for m, rec in b._rungs}[3]
    assert first_rung == pytest.approx({"A": 0.53, "B": 0.63, "C": 0.33})


def test_stopped_trials_reach_optuna_as_pruned():
    from optuna.trial import TrialState

    space = parse_space(SPACE)
    searcher = build_searcher(space)
    for trial_id in ("done", "stopped", "broken"):
        searcher.suggest(trial_id)
    reports = pipeline_reports(config(2), fine_tune_curve(0.5))
    for row in reports:
        searcher.on_trial_result("done", {**row, "cv_lwlrap": 0.7})
    for row in reports[:2 + 3]:  # stopped by the scheduler at fine-tune epoch 3
        searcher.on_trial_result("stopped", {**row, "cv_lwlrap": 0.95})
    searcher.on_trial_complete("done", {**reports[-1], "cv_lwlrap": 0.81, "pipeline_done": 1, "trial_complete": 1})
    # the last result of a stopped trial has the metric (a partial score) but no pipeline_done
    searcher.on_trial_complete("stopped", {**reports[4], "cv_lwlrap": 0.95, "pipeline_done": 0})
    searcher.on_trial_complete("broken", None, error=True)
    trials = {t.number: t for t in searcher._ot_study.trials}
    done, stopped, broken = trials[0], trials[1], trials[2]
    assert done.state == TrialState.COMPLETE and done.value == pytest.approx(0.81)
    assert stopped.state == TrialState.PRUNED
    # its intermediate values are the yardstick: fold-0 score by fold-0 epoch, one per epoch
    assert stopped.intermediate_values == pytest.approx({1: 0.51, 2: 0.52, 3: 0.53})
    assert stopped.value == pytest.approx(0.53)  # Optuna's value of a pruned trial: its last step
    assert broken.state == TrialState.FAIL


def test_trial_stopped_on_its_last_epoch_report_reaches_optuna_as_pruned():
    """The workers set pipeline_done on their last epoch report; ASHA can stop the trial
    on that very report, before run_trial's final one (trial_complete) with the OOF score."""
    from optuna.trial import TrialState

    searcher = build_searcher(parse_space(SPACE))
    searcher.suggest("last-epoch")
    reports = pipeline_reports(config(2), fine_tune_curve(0.5))
    for row in reports:
        searcher.on_trial_result("last-epoch", {**row, "cv_lwlrap": 0.95})
    searcher.on_trial_complete("last-epoch", {**reports[-1], "cv_lwlrap": 0.95, "pipeline_done": 1})
    (trial,) = searcher._ot_study.trials
    assert trial.state == TrialState.PRUNED


def test_search_metric_follows_the_layout():
    assert resolve_metric("auto", "fsd2018", "d") == "cv_map3"
    assert resolve_metric("auto", "fat2019", "d") == "cv_lwlrap"
    assert resolve_metric("auto", None, "d") == "cv_lwlrap"  # the trials report what is wrong
    assert resolve_metric("cv_lwlrap", "fsd2018", "d") == "cv_lwlrap"  # an explicit choice stands
    with pytest.raises(RaytagError, match="not in the FSDKaggle2018 layout"):
        resolve_metric("cv_map3", "fat2019", "/data/fat")
    with pytest.raises(RaytagError, match="not resolved"):
        build_searcher(parse_space(SPACE.replace("metric: cv_lwlrap", "metric: auto")))


def test_space_checks_the_first_rung_is_reachable():
    with pytest.raises(SpaceError, match="grace_period: 20 first-fold epochs.*more than 8"):
        parse_space(SPACE.replace("grace_period: 3", "grace_period: 20"))
    with pytest.raises(SpaceError, match="val_lwlrap is no longer a search metric"):
        parse_space(SPACE.replace("metric: cv_lwlrap", "metric: val_lwlrap"))
    fifo = parse_space(SPACE.replace("scheduler: asha, grace_period: 3", "scheduler: fifo, grace_period: 20"))
    assert fifo.search.grace_period == 20  # FIFO has no rungs
    assert parse_space(SPACE).max_rung_epochs() == 8  # warm-up searched up to 9: not counted
