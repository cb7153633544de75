"""The sweep: Tune + Optuna + scheduler over a space, failures recorded per trial, the
leaderboard and report, resume after the driver is killed, and one real end-to-end sweep
of the pipeline on the demo set.

The sweep-machinery tests replace fit_pipeline (trial_fn=) with `fake_fit`, which reports
per-epoch metrics through the same Tune callbacks the real TorchTrainer gets, with a score
that is a known function of the sampled settings, so the tests can check that each trial
ran the config it was given."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from raytag.config import ConfigError
from raytag.errors import RaytagError

import sweep_util
from sweep_util import fake_space, lr_score

REPO = Path(__file__).resolve().parents[1]

# how the sweeps here search sweep_util.fake_space's train.lr and model.width, unless a test says otherwise
FAKE_SEARCH = dict(scheduler="asha", grace_period=2, reduction_factor=2, startup_trials=3)
FIRST_TRIALS = [{"train.lr": 1.0e-3}, {"train.lr": 2.0e-3}]


def send_fake_fit_to_workers() -> None:
    """Ray's workers cannot import tests/: fake_fit, and sweep_util's lr_score it scores
    with, go to them by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloudpickle.register_pickle_by_value(sweep_util)


def fake_fit(cfg, data, storage, name, callbacks=(), feature_cache=None, progress=True):
    """Stands in for fit_pipeline: width 48 is refused, lr > 5e-3 "diverges" (NaN)."""
    with open(Path(data) / "calls.log", "a") as log:
        log.write(name + "\n")
    with open(Path(data) / "pids.log", "a") as log:  # which process ran the trial
        log.write(f"{os.getpid()}\n")
    if cfg.model.width == 48:
        raise ConfigError("model.width: 48 is refused by this fake runner")
    steps = cfg.pipeline.finetune.epochs
    final = lr_score(cfg.train.lr) if cfg.train.lr <= 5e-3 else math.nan  # best at lr = 1e-3
    # on a 2018-layout folder the trials also report MAP@3, ordered unlike lwlrap (by width)
    map3 = (0.2 + cfg.model.width / 100) if (Path(data) / "train.csv").exists() else None
    for step in range(1, steps + 1):
        score = final * step / steps
        metrics = {"step": step, "stage": "finetune", "fold": 0, "round": 0, "epoch": step,
                   "train_loss": 1.0 / step, "val_lwlrap": score, "cv_lwlrap": score,
                   # the scheduler's yardstick (raytag.training.rungs): one fold, no warm-up
                   "rung_epoch": step, "rung_score": score if map3 is None else map3 * step / steps,
                   "pipeline_done": int(step == steps)}
        if map3 is not None:
            metrics.update(val_map3=map3 * step / steps, cv_map3=map3 * step / steps)
        for cb in callbacks:  # what Ray Train does with each worker report
            cb.after_report(None, [metrics], None)
        time.sleep(float(os.environ.get("FAKE_STEP_S", "0")))
    out = Path(storage) / name / "outputs"
    out.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(run_dir=str(out.parent), outputs_dir=str(out), stages=None,
                           metrics={"cv_lwlrap": final, "fold_lwlrap": [final], "test_lwlrap": 0.5,
                                    "epochs_run": steps, "seconds": 1.0,
                                    **({"cv_map3": map3} if map3 is not None else {})})


def write_space(tmp_path: Path, samples: int) -> Path:
    path = tmp_path / "fake.yaml"
    path.write_text(fake_space(samples=samples, **FAKE_SEARCH))
    return path


def expected_status(row) -> str:
    if row["model.width"] == 48:
        return "failed"
    if row["train.lr"] > 5e-3:
        return "failed"
    return row["status"] if row["status"] in ("ok", "stopped early") else "?"


@pytest.mark.ray
def test_sweep_records_every_trial_and_its_reason(ray_session, tmp_path):
    from raytag.console.sweep import report_command
    from raytag.search.tuner import run_sweep

    send_fake_fit_to_workers()
    data = tmp_path / "data"
    data.mkdir()
    # seed 0's first 6 trials: one finished, two stopped by ASHA, two refused (width 48), one
    # diverged (lr > 5e-3): every status and both failure reasons
    space = write_space(tmp_path, samples=6)
    result = run_sweep(space, data, storage=str(tmp_path / "res"), name="s1", trial_fn=fake_fit,
                       progress=False)
    board = result.leaderboard
    assert len(board) == 6 and board["trial_id"].is_unique
    assert set(board["status"]) <= {"ok", "stopped early", "failed"}
    for _, row in board.iterrows():
        assert row["status"] == expected_status(row), row.to_dict()
        if row["model.width"] == 48:
            assert "ConfigError: model.width: 48 is refused" in row["reason"]
        elif row["train.lr"] > 5e-3:
            assert "cv_lwlrap is nan" in row["reason"]
        elif row["status"] == "ok":  # ran its whole pipeline with the config it was given
            assert row["cv_lwlrap"] == pytest.approx(lr_score(row["train.lr"]))
            assert row["epochs_run"] == 6 and row["test_lwlrap"] == 0.5
            assert Path(row["outputs_dir"]).is_dir()
        else:  # stopped by ASHA at a rung: fewer epochs, score so far
            assert row["epochs_run"] < 6
            assert row["cv_lwlrap"] < lr_score(row["train.lr"])
    statuses = board["status"].value_counts()
    assert statuses.get("ok", 0) >= 1 and statuses.get("stopped early", 0) >= 1
    assert statuses.get("failed", 0) >= 1  # failures do not end the sweep
    reasons = board["reason"].fillna("")
    assert reasons.str.contains("refused").any() and reasons.str.contains("cv_lwlrap is nan").any()
    # finished trials first, best first; then those stopped early (partial scores); failed last
    assert (board["rank_by"] == "cv_lwlrap").all() and board["cv_map3"].isna().all()
    assert board["status"].tolist() == sorted(board["status"], key=["ok", "stopped early", "failed"].index)
    for status in ("ok", "stopped early"):
        scored = board[board["status"] == status]["cv_lwlrap"].tolist()
        assert scored == sorted(scored, reverse=True)
    assert result.best["cv_lwlrap"] == board[board["status"] == "ok"]["cv_lwlrap"].max()
    # Optuna was told finished trials as COMPLETE with their score, stopped ones as PRUNED
    study = _study(result.experiment_dir)
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted({"ok": "COMPLETE", "stopped early": "PRUNED", "failed": "FAIL"}[x]
                            for x in board["status"])
    assert sorted(t.value for t in study.trials if t.state.name == "COMPLETE") == pytest.approx(
        sorted(board[board["status"] == "ok"]["cv_lwlrap"]))

    exp = Path(result.experiment_dir)
    assert exp == tmp_path / "res" / "s1"
    for name in ("leaderboard.csv", "search.png", "space.yaml", "sweep.json"):
        assert (exp / name).is_file(), name
    assert json.loads((exp / "sweep.json").read_text())["data"] == str(data.resolve())
    saved = pd.read_csv(exp / "leaderboard.csv")
    assert saved["trial_id"].tolist() == board["trial_id"].tolist()
    # The workers' last-report flag is `pipeline_done`, never Tune's `done` (done=True would
    # end the trial at its last epoch, before the trial's final report); every epoch arrived, in order.
    for trial_id in board[board["status"] == "ok"]["trial_id"]:
        lines = [json.loads(x) for x in (exp / f"trial_{trial_id}" / "result.json").read_text().splitlines()]
        epochs = [x for x in lines if "step" in x]
        assert [x["step"] for x in epochs] == [1, 2, 3, 4, 5, 6]
        assert [x["pipeline_done"] for x in epochs] == [0, 0, 0, 0, 0, 1]
        assert not any(x.get("done") for x in epochs)
        assert lines[-1]["trial_complete"] == 1

    # ASHA may stop a trial while it trains, so every trial had a process of its own
    # (raytag.search.tuner.reuses_trial_processes)
    pids = (data / "pids.log").read_text().split()
    assert len(pids) == 6 and len(set(pids)) == 6, pids

    again = report_command("s1", storage=str(tmp_path / "res"))
    assert again["trial_id"].tolist() == board["trial_id"].tolist()

    with pytest.raises(RaytagError, match="already exists.*--resume"):
        run_sweep(space, data, storage=str(tmp_path / "res"), name="s1", trial_fn=fake_fit, progress=False)


def _study(exp_dir):
    """The Optuna study of a sweep, from the searcher state Tune saves beside it."""
    import pickle

    sys.path.insert(0, str(REPO / "tests"))  # the pickled searcher class may name this module
    state = sorted(Path(exp_dir).glob("searcher-state-*.pkl"))[-1]
    return pickle.loads(state.read_bytes())["_ot_study"]


@pytest.mark.ray
def test_on_2018_data_the_sweep_ranks_by_map3(ray_session, tmp_path):
    """metric auto on an FSDKaggle2018 folder: Optuna, the leaderboard and `best` use cv_map3
    (here ordered unlike lwlrap), with lwlrap beside it."""
    from raytag.search.space import parse_space

    from raytag.search.tuner import run_sweep

    send_fake_fit_to_workers()
    data = tmp_path / "data2018"
    data.mkdir()
    (data / "train.csv").write_text("fname,label,manually_verified\n")  # the layout's marker file
    space = tmp_path / "fake.yaml"
    searched = {"train.lr": {"loguniform": [1.0e-4, 5.0e-3]}, "model.width": {"choice": [8, 16, 32]}}
    space.write_text(fake_space(samples=3, **{**FAKE_SEARCH, "scheduler": "fifo", "seed": 3}, params=searched))
    # `raytag tune --set`: fixed for every trial (the space's base says 6 epochs), and stored with the space
    result = run_sweep(space, data, storage=str(tmp_path / "res"), name="s18", trial_fn=fake_fit, progress=False,
                       settings={"pipeline.finetune.epochs": 3})
    board = result.leaderboard
    assert (board["epochs_run"] == 3).all()
    stored = parse_space((Path(result.experiment_dir) / "space.yaml").read_text())  # what --resume reads
    assert stored.base["pipeline.finetune.epochs"] == 3
    assert result.space.search.metric == "cv_map3"
    assert (board["status"] == "ok").all() and (board["rank_by"] == "cv_map3").all()
    assert board["cv_map3"].tolist() == sorted(board["cv_map3"], reverse=True)
    assert board["cv_map3"].tolist() == pytest.approx([0.2 + w / 100 for w in board["model.width"]])
    assert board["cv_lwlrap"].notna().all()  # shown beside it
    assert result.best["cv_map3"] == board["cv_map3"].max()
    study = _study(result.experiment_dir)
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(board["cv_map3"]))
    saved = pd.read_csv(Path(result.experiment_dir) / "leaderboard.csv")
    assert (saved["rank_by"] == "cv_map3").all()
    assert json.loads((Path(result.experiment_dir) / "sweep.json").read_text())["search"]["metric"] == "cv_map3"
    # FIFO stops no trial while it trains: each trial ran in the process the one before it ended in
    pids = (data / "pids.log").read_text().split()
    assert len(pids) == 3 and len(set(pids)) == 1, pids


def test_leaderboard_ranks_finished_trials_first_by_its_metric():
    from raytag.search.leaderboard import board_metric, rank_metric, sort_leaderboard

    board = pd.DataFrame([
        {"trial_id": "a", "order": 1, "status": "stopped early", "reason": "", "cv_lwlrap": 0.9, "cv_map3": 0.9},
        {"trial_id": "b", "order": 2, "status": "ok", "reason": "", "cv_lwlrap": 0.8, "cv_map3": 0.5},
        {"trial_id": "c", "order": 3, "status": "failed", "reason": "x", "cv_lwlrap": math.nan, "cv_map3": math.nan},
        {"trial_id": "d", "order": 4, "status": "ok", "reason": "", "cv_lwlrap": 0.7, "cv_map3": 0.6},
    ]).assign(test_lwlrap=math.nan, epochs_run=1, seconds=1.0, outputs_dir="")
    assert rank_metric(board, "auto") == "cv_map3"  # the trials reported MAP@3: a 2018 sweep
    assert rank_metric(board.assign(cv_map3=math.nan), "auto") == "cv_lwlrap"
    assert rank_metric(board, "cv_lwlrap") == "cv_lwlrap"  # an explicit metric stands
    by_map3 = sort_leaderboard(board, metric="cv_map3")
    assert by_map3["trial_id"].tolist() == ["d", "b", "a", "c"]  # a's partial score ranks after finished ones
    assert board_metric(by_map3) == "cv_map3" and by_map3["rank"].tolist() == [1, 2, 3, 4]
    assert sort_leaderboard(board, metric="cv_lwlrap")["trial_id"].tolist() == ["b", "d", "a", "c"]


def test_bad_arguments_fail_before_any_trial(tmp_path):
    from raytag.search.tuner import run_sweep

    with pytest.raises(RaytagError, match="--data .*missing: folder not found"):
        run_sweep(write_space(tmp_path, 2), tmp_path / "missing", storage=str(tmp_path / "r"))
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match="--set train.lr: .* searches this key"):  # --set of a searched key
        run_sweep(write_space(tmp_path, 2), tmp_path / "data", storage=str(tmp_path / "r"), settings={"train.lr": 1e-3})
    assert not (tmp_path / "r").exists()
    with pytest.raises(RaytagError, match="no sweep named"):
        from raytag.console.sweep import report_command

        report_command("nope", storage=str(tmp_path / "r"))


@pytest.mark.parametrize("args, message", [
    ({"samples": -1}, r"--samples -1: .*search.samples: must be at least 1"),  # Tune: -1 = no limit
    ({"samples": 0}, r"--samples 0: .*search.samples: must be at least 1"),
    ({"samples": 1}, r"--samples 1: .*2 first trials but search.samples is 1"),
    ({"scheduler": "asha"}, r"--scheduler asha: .*grace_period: 20 first-fold epochs"),  # over a FIFO file
])
def test_command_line_search_settings_are_checked_before_anything_starts(tmp_path, monkeypatch, args, message):
    import raytag.search.tuner as tuner

    def no_ray():
        raise AssertionError("the sweep started Ray with settings it should have refused")

    monkeypatch.setattr(tuner, "ensure_ray", no_ray)
    space = tmp_path / "fifo.yaml"
    space.write_text(fake_space(samples=4, scheduler="fifo", grace_period=20, reduction_factor=2, startup_trials=3,
                                first_trials=FIRST_TRIALS))
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match=message):  # a SpaceError, which the CLI prints
        tuner.run_sweep(space, tmp_path / "data", storage=str(tmp_path / "r"), **args)
    assert not (tmp_path / "r").exists()


class _StopAfterTheNotes(Exception):
    """Raised where a resume would start Tune: the test only needs what came before."""


def test_a_resume_notes_command_line_search_settings_instead_of_checking_them(tmp_path, monkeypatch):
    """--resume keeps the samples and scheduler the sweep started with, so a --samples the
    new-sweep checks would refuse (fewer than first_trials) is noted, not an error."""
    import raytag.search.tuner as tuner

    notes = []
    monkeypatch.setattr(tuner, "_printer", lambda enabled: notes.append)
    for name in ("ensure_ray", "check_storage", "check_data"):
        monkeypatch.setattr(tuner, name, lambda *a, **k: None)

    def stop(*args, **kwargs):
        raise _StopAfterTheNotes

    monkeypatch.setattr(tuner, "concurrency", stop)
    text = fake_space(samples=4, **FAKE_SEARCH, first_trials=FIRST_TRIALS)
    space = tmp_path / "fake.yaml"
    space.write_text(text)
    (tmp_path / "data").mkdir()
    exp = tmp_path / "r" / "fake"  # a sweep that started: what Tuner.can_restore and the resume read
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"")
    (exp / "space.yaml").write_text(text)
    (exp / "sweep.json").write_text(json.dumps({
        "search": {"samples": 4, "scheduler": "asha", "max_concurrent_trials": 1, "metric": "cv_lwlrap"},
        "settings": {}, "data": str(tmp_path / "data")}))
    with pytest.raises(_StopAfterTheNotes):
        tuner.run_sweep(space, tmp_path / "data", storage=str(tmp_path / "r"), resume=True, samples=1)
    assert any("--samples/--scheduler are fixed when a sweep starts" in note and "samples=4" in note
               for note in notes), notes


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import test_tune
test_tune.send_fake_fit_to_workers()
from raytag.search.tuner import run_sweep
run_sweep({space!r}, {data!r}, storage={storage!r}, name="kill", resume={resume}, trial_fn=test_tune.fake_fit)
"""


def _driver(tmp_path, resume: bool) -> subprocess.Popen:
    code = DRIVER.format(tests=str(REPO / "tests"), space=str(tmp_path / "fake.yaml"),
                         data=str(tmp_path / "data"), storage=str(tmp_path / "res"), resume=resume)
    env = {**os.environ, "RAY_ADDRESS": "local", "FAKE_STEP_S": "0.7"}  # its own Ray, not the tests'
    log = open(tmp_path / f"driver-{'resume' if resume else 'first'}.log", "w")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


KILL_TRIALS = 3  # one finishes before the kill, the rest after the resume


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path):
    """SIGKILL the driver once a trial has finished; --resume runs only what is left."""
    (tmp_path / "data").mkdir()
    write_space(tmp_path, samples=KILL_TRIALS)
    trials = tmp_path / "res" / "kill" / "trials"
    proc = _driver(tmp_path, resume=False)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(trials.glob("*/trial_result.json")):
            assert proc.poll() is None, (tmp_path / "driver-first.log").read_text()[-3000:]
            time.sleep(0.5)
        finished_before = {p.parent.name for p in trials.glob("*/trial_result.json")}
        assert finished_before, "no trial finished within 2 minutes"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        time.sleep(1)
        try:  # the Ray processes that driver started (its own session) outlive it: end them
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not (tmp_path / "res" / "kill" / "leaderboard.csv").exists()  # it really was cut short
    calls_before = (tmp_path / "data" / "calls.log").read_text().split()

    proc = _driver(tmp_path, resume=True)
    try:
        assert proc.wait(timeout=240) == 0, (tmp_path / "driver-resume.log").read_text()[-3000:]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    board = pd.read_csv(tmp_path / "res" / "kill" / "leaderboard.csv")
    calls = (tmp_path / "data" / "calls.log").read_text().split()
    assert len(board) == KILL_TRIALS and board["trial_id"].is_unique
    assert set(board["status"]) <= {"ok", "stopped early", "failed"}, board
    assert set(calls) <= set(board["trial_id"])  # no extra trials
    for trial_id in finished_before:  # finished trials were not run again
        assert calls.count(trial_id) == 1
        assert board.set_index("trial_id").loc[trial_id, "status"] == "ok"
    assert len(calls) > len(calls_before)  # and the rest did run after the resume

    # Optuna's study was kept: it knows every trial of the sweep, with the scores of the finished ones
    study = _study(tmp_path / "res" / "kill")
    assert len(study.trials) == KILL_TRIALS
    ok = board[board["status"] == "ok"]
    assert sorted(round(t.value, 6) for t in study.trials if t.state.name == "COMPLETE") == sorted(
        round(v, 6) for v in ok["cv_lwlrap"])
    assert len(ok) >= 1


TINY = """
name: tiny
base:
  features.n_mels: 32
  train.crop_seconds: 1.0
  train.batch_size: 32
  train.num_workers: 1
  cv.n_folds: 2
  pipeline.noisy_selection.max_per_class: 4
  pipeline.warmup.epochs: 1
  pipeline.finetune.epochs: 1
  pipeline.filter.enabled: false
  pipeline.pseudo.enabled: false
  inference.segment_seconds: 1.0
space:
  model.name: {choice: [cnn2d, crnn]}
  train.lr: {loguniform: [5.0e-4, 3.0e-3]}
conditional:
  - when: {model.name: crnn}
    space:
      model.params.lstm_hidden: {choice: [16, 32]}
search: {samples: 2, scheduler: fifo, max_concurrent_trials: 1, seed: 0}
resources: {num_workers: 1, cpus_per_worker: 1.0, trial_cpus: 0.25}
"""


@pytest.mark.slow
@pytest.mark.ray
def test_real_sweep_of_the_pipeline_on_demo_data(ray_session, demo_data, tmp_path):
    """Two trials of a tiny pipeline through fit_pipeline: per-epoch reports reach Tune,
    the outputs the ensemble reads are where the leaderboard says."""
    from raytag.search.tuner import run_sweep

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY)
    result = run_sweep(space, demo_data, storage=str(tmp_path / "res"), progress=False,
                       feature_cache=str(tmp_path / "features"))
    board = result.leaderboard
    assert len(board) == 2
    assert (board["status"] == "ok").all(), board[["trial_id", "status", "reason"]]
    for _, row in board.iterrows():
        assert 0.0 < row["cv_lwlrap"] <= 1.0
        assert 0.0 < row["test_lwlrap"] <= 1.0  # the demo set has test labels
        assert row["epochs_run"] == 1 + 2 * 1  # warm-up once (shared), fine-tune on 2 folds
        outputs = Path(row["outputs_dir"])
        assert outputs.parent.parent == Path(result.experiment_dir) / "trials"
        assert (outputs / "oof.parquet").is_file() and (outputs / "metrics.json").is_file()
        # every epoch was reported to Tune, with the pipeline's metric
        lines = [json.loads(x) for x in
                 (Path(result.experiment_dir) / f"trial_{row['trial_id']}" / "result.json").read_text().splitlines()]
        epochs = [x for x in lines if "step" in x]
        assert [x["step"] for x in epochs] == [1, 2, 3]
        assert [x["stage"] for x in epochs] == ["warmup", "finetune", "finetune"]
        assert all("cv_lwlrap" in x for x in lines)
        # the scheduler's yardstick: 0 in the warm-up, fold 0's fine-tune epoch, then frozen
        assert [x["rung_epoch"] for x in epochs] == [0, 1, 1]
        assert epochs[0]["rung_score"] == 0.0
        assert epochs[1]["rung_score"] == epochs[1]["val_lwlrap"] == epochs[2]["rung_score"]
        assert lines[-1]["rung_epoch"] == 1 and lines[-1]["pipeline_done"] == 1
    assert (Path(result.experiment_dir) / "search.png").is_file()


def test_resume_notes_a_changed_space_only_when_it_changed(tmp_path):
    """A sweep started with --set stores the file with them fixed: resuming it (with or
    without the same --set) is not a change of the space file."""
    from raytag.search.space import load_space, with_fixed_settings
    from raytag.search.tuner import space_changed

    space = load_space(write_space(tmp_path, 4))
    settings = {"cv.n_folds": 3}
    stored = with_fixed_settings(space, settings).text
    assert not space_changed(stored, space, settings)
    assert not space_changed(space.text, space, {})
    edited = load_space(write_space(tmp_path, 5))
    assert space_changed(stored, edited, settings)
    assert space_changed(space.text, edited, {})


def test_a_resumed_sweep_gets_the_concurrency_computed_now(tmp_path):
    """Tune restores the limiter's saved state (its whole __dict__, max_concurrent too)
    inside fit(), after set_resumed_concurrency: the limit set now must outlive that."""
    from ray.tune.search import SearchGenerator

    from raytag.search.space import parse_space
    from raytag.search.tuner import build_searcher, limit_concurrency, set_resumed_concurrency

    space = parse_space(fake_space(samples=4, **FAKE_SEARCH, metric="cv_lwlrap"))
    SearchGenerator(limit_concurrency(build_searcher(space), 4)).save_to_dir(str(tmp_path), "started")
    # what Tuner.restore leaves: the limiter unpickled with the limit the sweep started with
    limiter = limit_concurrency(build_searcher(space), 4)
    restored = SimpleNamespace(_local_tuner=SimpleNamespace(_tune_config=SimpleNamespace(search_alg=limiter)))
    assert set_resumed_concurrency(restored, 2)
    SearchGenerator(limiter).restore_from_dir(str(tmp_path))  # what Tune's fit() does next
    assert limiter.max_concurrent == 2
    assert not set_resumed_concurrency(SimpleNamespace(), 2)  # Ray's layout changed: said, not applied
