"""`raytag tune --resume` keeps the ASHA scheduler's rungs and the epoch budget's count.

Tune does not restore the scheduler (it comes back from tuner.pkl, written when the sweep was
built), so a resumed sweep judged its trials at rungs they had already passed, against the
other restored trials alone. restore_scheduler_state replays each trial's recorded results
(result.json) into the rungs. The epoch budget (a Tune stopper) needs nothing: the
TuneController saves its stopper in its own state and puts it back on resume; its test guards that.

The sweeps here stop the way a storage fault stops one (a trial's write finds the disk full
after its second epoch, past the grace rung), which leaves the trials to `--resume`."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest

from raytag.search.space import parse_space

import sweep_util
from sweep_util import LR, disk_filling_fit, fake_space

RUNG_SPACE = fake_space(name="rungs", epochs=3, params={"train.lr": LR}, samples=2, scheduler="asha",
                        grace_period=2, reduction_factor=2, max_t=3, metric="cv_lwlrap",
                        first_trials=[{"train.lr": 3.0e-4}, {"train.lr": 1.0e-3}])
BUDGET_SPACE = fake_space(name="budget", params={"train.lr": {"loguniform": [1.0e-4, 1.0e-3]}}, samples=3,
                          scheduler="fifo", epoch_budget=7, metric="cv_lwlrap")
# The trials' fake: a rerun of the lower-scoring trial (lr 3e-4) waits LATE_S first, so that
# after the resume the higher one (1e-3) reaches the rung first (the order in which an empty
# rung stops the lower one)
LATE_S = 6.0
faulting_fit = partial(disk_filling_fit, late_rerun_s=LATE_S)


def _stopped_by_the_storage(run_sweep, space: Path, data: Path, **sweep):
    from raytag.errors import StorageError

    (data / "disk_full").write_text("")
    with pytest.raises(StorageError, match="No space left"):
        run_sweep(space, data, **sweep)
    (data / "disk_full").unlink()  # the storage is fixed


def _reports(exp_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(exp_dir.glob("trial_*/result.json")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


@pytest.mark.ray
def test_trials_that_passed_a_rung_before_the_resume_are_not_judged_there_again(ray_session, tmp_path):
    """Two trials pass the grace rung (the lower one first, so neither is stopped), then the
    storage stops the sweep. After --resume both finish; before, the rung was empty again, the
    higher trial's report filled it and the lower one was stopped early at a rung it had passed."""
    from ray import cloudpickle

    from raytag.search.tuner import run_sweep

    cloudpickle.register_pickle_by_value(sweep_util)  # workers cannot import tests/
    data = tmp_path / "data"
    data.mkdir()
    space = tmp_path / "rungs.yaml"
    space.write_text(RUNG_SPACE)
    sweep = dict(storage=str(tmp_path / "res"), name="rungs", trial_fn=faulting_fit, progress=False)
    _stopped_by_the_storage(run_sweep, space, data, **sweep)
    first = _reports(tmp_path / "res" / "rungs")
    assert sorted(r["rung_epoch"] for r in first if "step" in r) == [1, 1, 2, 2]  # both passed rung 2

    board = run_sweep(space, data, resume=True, **sweep).leaderboard
    assert len(board) == 2
    assert (board["status"] == "ok").all(), board[["trial_id", "status", "reason", "cv_lwlrap"]]


@pytest.mark.ray
def test_a_resumed_sweep_does_not_spend_its_epoch_budget_again(ray_session, tmp_path):
    """Three trials train 2 epochs each (6 of a 7-epoch budget) before the storage stops the
    sweep. After --resume the budget ends the sweep at its first epoch or so; had it started
    from zero, every trial would have trained its 4 remaining epochs (18 in all). (A guard:
    Tune keeps EpochBudget's count itself, in the TuneController state it saves.)"""
    from ray import cloudpickle

    from raytag.search.tuner import run_sweep

    cloudpickle.register_pickle_by_value(sweep_util)
    data = tmp_path / "data"
    data.mkdir()
    space = tmp_path / "budget.yaml"
    space.write_text(BUDGET_SPACE)
    sweep = dict(storage=str(tmp_path / "res"), name="budget", trial_fn=faulting_fit, progress=False)
    _stopped_by_the_storage(run_sweep, space, data, **sweep)
    assert sum("step" in r for r in _reports(tmp_path / "res" / "budget")) == 6

    run_sweep(space, data, resume=True, **sweep)
    spent = sum("step" in r for r in _reports(tmp_path / "res" / "budget"))
    # the budget is checked after each report, so trials running at once may each add one
    assert 7 <= spent <= 7 + 2, spent


def test_replay_fills_the_rungs_from_the_recorded_results(tmp_path, monkeypatch):
    """restore_scheduler_state on what Tuner.restore leaves (an empty ASHA)."""
    import ray.tune
    from ray.tune.schedulers import TrialScheduler

    from raytag.search.tuner import build_scheduler, restore_scheduler_state

    scheduler = build_scheduler(parse_space(RUNG_SPACE))
    exp = tmp_path / "exp"
    results = {"low": [0.74, 0.74], "high": [1.0, 1.0], "done": [0.9, 0.9, 0.9]}
    for trial_id, scores in results.items():
        (exp / f"trial_{trial_id}").mkdir(parents=True)
        lines = [json.dumps({"step": e, "stage": "finetune", "rung_epoch": e, "rung_score": s})
                 for e, s in enumerate(scores, 1)]
        (exp / f"trial_{trial_id}" / "result.json").write_text("\n".join(lines) + '\n{"cut sho')
    trials = [SimpleNamespace(trial_id=t, path=str(exp / f"trial_{t}")) for t in results]
    monkeypatch.setattr(ray.tune, "ExperimentAnalysis", lambda path: SimpleNamespace(trials=trials))
    tuner = SimpleNamespace(_local_tuner=SimpleNamespace(_tune_config=SimpleNamespace(scheduler=scheduler)))
    notes = restore_scheduler_state(tuner, str(exp))
    assert notes == ["the scheduler's rungs hold the results of 3 trials again"]
    rungs = scheduler._brackets[0]._rungs
    assert [dict(recorded) for _, recorded in rungs] == [{"low": 0.74, "high": 1.0, "done": 0.9}]
    for trial_id in ("high", "low"):  # what Tune does with the restored trials, high first
        trial = SimpleNamespace(trial_id=trial_id)
        scheduler.on_trial_add(None, trial)
        result = {"rung_epoch": 3, "rung_score": results[trial_id][-1]}
        assert scheduler.on_trial_result(None, trial, result) == TrialScheduler.CONTINUE
    # a new trial meets the restored cutoff at the grace rung (the median of 0.74, 0.9, 1.0)
    new = SimpleNamespace(trial_id="new")
    scheduler.on_trial_add(None, new)
    assert scheduler.on_trial_result(None, new, {"rung_epoch": 2, "rung_score": 0.8}) == TrialScheduler.STOP
    assert restore_scheduler_state(tuner, str(exp)) == []  # rungs already held: nothing replayed twice
    assert "new" in rungs[0][1] and len(rungs[0][1]) == 4
