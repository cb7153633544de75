"""train.runner: one CPU worker on one machine trains in the caller's process (auto), with the
results, checkpoints, resume and restarts of a Ray Train worker group."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from raytag.config import Config, ConfigError
from raytag.training.in_process import PREFIX, local_checkpoints
from raytag.training.profiling import read_phases
from raytag.training.runner import fit_pipeline, runs_in_process

from test_training import TINY, _trace_events, _traced_fit, assert_rerun_resumes

pytestmark = pytest.mark.ray

ONE = {**TINY, "train": {**TINY["train"], "num_workers": 1}}
COLUMNS = ["step", "stage", "fold", "epoch", "train_loss", "val_lwlrap", "cv_lwlrap", "rung_score"]


def _same_run(a, b):
    """The same reports, fold weights and scores."""
    history = [pd.read_csv(Path(r.outputs_dir) / "history.csv")[COLUMNS] for r in (a, b)]
    pd.testing.assert_frame_equal(history[0], history[1], check_exact=False, rtol=0, atol=1e-6)
    weights = [load_file(Path(r.outputs_dir) / "weights" / "fold0.safetensors") for r in (a, b)]
    for name, tensor in weights[0].items():
        np.testing.assert_allclose(weights[1][name].numpy(), tensor.numpy(), rtol=0, atol=1e-6, err_msg=name)
    oof = [pd.read_parquet(Path(r.outputs_dir) / "oof.parquet") for r in (a, b)]
    pd.testing.assert_frame_equal(oof[0], oof[1], check_exact=False, rtol=0, atol=1e-6)
    assert a.metrics["cv_lwlrap"] == pytest.approx(b.metrics["cv_lwlrap"], abs=1e-6)


@pytest.fixture(scope="module")
def in_process_run(ray_session, demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("in_process")
    trace = out / "trace.jsonl"
    return _traced_fit(Config.from_dict(ONE), demo_data, out, "one", trace), out, trace


def test_auto_trains_one_cpu_worker_here_with_the_worker_groups_results(in_process_run, demo_data):
    """auto: every epoch runs in this process, and the run matches the same config on a Ray
    Train worker group (another process) report for report and weight for weight."""
    result, out, trace = in_process_run
    assert result.metrics["runner"] == "in_process"
    events = _trace_events(trace)
    assert [e for e in events if e["event"] == "epoch_start"]
    assert {e["pid"] for e in events} == {os.getpid()}
    kept = local_checkpoints(result.run_dir)
    assert 1 <= len(kept) <= 2 and all(p.name.startswith(PREFIX) for p in kept)
    assert not list(Path(result.run_dir).glob(f".{PREFIX}*.tmp"))

    cfg = Config.from_dict({**ONE, "train": {**ONE["train"], "runner": "ray_train"}})
    group_trace = out / "trace-group.jsonl"
    group = _traced_fit(cfg, demo_data, out, "one-group", group_trace)
    assert group.metrics["runner"] == "ray_train"
    assert os.getpid() not in {e["pid"] for e in _trace_events(group_trace)}
    _same_run(result, group)


def test_a_rerun_resumes_from_the_in_process_checkpoint(in_process_run, demo_data):
    result, out, _ = in_process_run
    assert_rerun_resumes(result, Config.from_dict(ONE), demo_data, out, "one", out / "trace-again.jsonl")


def test_a_failed_attempt_restarts_here_from_its_last_checkpoint(in_process_run, demo_data, monkeypatch):
    """train.max_failures in-process: the failure at the start of epoch 2 is retried from the
    checkpoint after the warm-up, with a warning that names it, and ends as the uninterrupted run."""
    result, out, _ = in_process_run
    marker, trace = out / "failed-once", out / "trace-twin.jsonl"
    monkeypatch.setenv("RAYTAG_FAIL_ONCE", f"2:{marker}")
    cfg = Config.from_dict({**ONE, "train": {**ONE["train"], "checkpoint_every": 2}})
    with pytest.warns(RuntimeWarning, match="attempt 1 failed .*RAYTAG_FAIL_ONCE"):
        twin = _traced_fit(cfg, demo_data, out, "one-twin", trace)
    assert marker.exists(), "the injected failure never happened"
    resumes = [e for e in _trace_events(trace) if e["event"] == "resume"]
    assert resumes and all(e["global_step"] == 1 for e in resumes), resumes
    _same_run(result, twin)


def test_no_failures_allowed_raises_the_failure(ray_session, demo_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTAG_FAIL_ONCE", f"1:{tmp_path / 'failed'}")
    cfg = Config.from_dict({**ONE, "train": {**ONE["train"], "max_failures": 0},
                            "pipeline": {**ONE["pipeline"], "pseudo": {"enabled": False}}})
    with pytest.raises(RuntimeError, match="RAYTAG_FAIL_ONCE"):
        fit_pipeline(cfg, demo_data, str(tmp_path / "results"), "fails", feature_cache=str(tmp_path / "cache"),
                     progress=False)


def test_the_runner_follows_the_request_and_the_runs_checkpoints(ray_session, tmp_path, monkeypatch, caplog):
    def cfg(**train):
        return Config.from_dict({"train": {"num_workers": 1, **train}})

    fresh = tmp_path / "fresh"
    assert runs_in_process(cfg(), str(fresh))
    with monkeypatch.context() as patch:  # a joined cluster (RAY_ADDRESS) may grow: a worker group
        patch.setattr("raytag.training.runner.in_local_session", lambda: False)
        assert not runs_in_process(cfg(), str(fresh))
    assert not runs_in_process(cfg(num_workers=2), str(fresh))
    assert not runs_in_process(cfg(runner="ray_train"), str(fresh))
    assert not runs_in_process(cfg(), "s3://bucket/run")  # remote storage: Ray Train persists it
    with pytest.raises(ConfigError, match="num_workers: 1"):
        runs_in_process(cfg(num_workers=2, runner="in_process"), str(fresh))

    began_here = tmp_path / "here"
    (began_here / f"{PREFIX}000001").mkdir(parents=True)
    assert not [r for r in caplog.records if "resumes there" in r.getMessage()]  # a fresh run: no note
    for more in ({"num_workers": 2}, {"use_gpu": True}):  # resumes where it began, and says so
        caplog.clear()
        assert runs_in_process(cfg(**more), str(began_here))
        notes = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("began in-process on one CPU worker and resumes there" in n and "another --name" in n
                   for n in notes), notes
    with pytest.raises(ConfigError, match="began in-process"):
        runs_in_process(cfg(runner="ray_train"), str(began_here))

    began_in_group = tmp_path / "group"
    began_in_group.mkdir()
    (began_in_group / "checkpoint_manager_snapshot.json").write_text("{}")
    assert not runs_in_process(cfg(), str(began_in_group))
    with pytest.raises(ConfigError, match="began on a Ray Train worker group"):
        runs_in_process(cfg(runner="in_process"), str(began_in_group))


def test_a_local_session_is_known_as_one_in_the_driver_and_its_workers(ray_session):
    from raytag.session import in_local_session

    assert in_local_session()
    assert ray_session.get(ray_session.remote(num_cpus=0)(in_local_session).remote())


@pytest.mark.slow
def test_a_killed_raytag_train_resumes_from_its_last_checkpoint_when_rerun(demo_data, tmp_path):
    """What an in-process run cannot do is outlive its process: `raytag train` killed (SIGKILL,
    its whole process group) after its second checkpoint, then the same command again, goes on
    from the last checkpoint it persisted and finishes."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump({**ONE, "name": "killed", "pipeline": {
        "warmup": {"epochs": 1}, "finetune": {"epochs": 30}, "filter": {"enabled": False},
        "pseudo": {"enabled": False}}}))
    command = [sys.executable, "-m", "raytag.cli", "train", "--config", str(config), "--data", str(demo_data),
               "--storage", str(tmp_path / "results"), "--quiet"]
    first, again = tmp_path / "first.jsonl", tmp_path / "again.jsonl"
    proc = subprocess.Popen(command, env={**os.environ, "RAYTAG_TRACE": str(first)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    saved: list = []
    while len(saved) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        saved = [e["global_step"] for e in _trace_events(first) if e["event"] == "checkpoint"]
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = max(e["global_step"] for e in _trace_events(first) if e["event"] == "checkpoint")
    assert killed_at < 31 and local_checkpoints(tmp_path / "results" / "killed")

    done = subprocess.run(command, env={**os.environ, "RAYTAG_TRACE": str(again)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    events = _trace_events(again)
    resumes = [e for e in events if e["event"] == "resume"]
    assert [e["global_step"] for e in resumes] == [killed_at]
    trained = [e["global_step"] for e in events if e["event"] == "epoch_start"]
    assert trained and min(trained) == killed_at and max(trained) == 30  # only what was left
    outputs = tmp_path / "results" / "killed" / "outputs"
    assert json.loads((outputs / "metrics.json").read_text())["runner"] == "in_process"
    history = pd.read_csv(outputs / "history.csv")
    assert len(history) == 31  # every epoch reported once: the ones before the kill kept


def test_a_profiled_epoch_splits_its_time_by_phase_and_keeps_its_trace(ray_session, demo_data, tmp_path):
    """train.profile_epoch: the run's N-th epoch under torch.profiler, into the outputs."""
    cfg = Config.from_dict({**ONE, "train": {**ONE["train"], "profile_epoch": 2}})
    result = _traced_fit(cfg, demo_data, tmp_path, "profiled", tmp_path / "trace.jsonl")
    profile = Path(result.outputs_dir) / "profile"
    assert sorted(p.name for p in profile.iterdir()) == ["epoch2.trace.json.gz", "epoch2.txt"]
    report = (profile / "epoch2.txt").read_text()
    assert report.startswith("torch.profiler, training epoch 2 of the run")
    calls = {name: row["calls"] for name, row in read_phases(report).items()}
    steps = calls["raytag.forward"]
    assert steps >= 1
    # one of each per step; the batch phase once more, where it finds the epoch's end
    assert calls == {"raytag.batch": steps + 1, "raytag.forward": steps, "raytag.wait": steps,
                     "raytag.backward": steps, "raytag.optimizer": steps}
    assert "operators by host time" in report
    with gzip.open(profile / "epoch2.trace.json.gz", "rt") as f:
        assert any(e.get("name") == "raytag.forward" for e in json.load(f)["traceEvents"])


def test_a_diverged_loss_is_raised_as_a_user_error_without_restarts(ray_session, demo_data, tmp_path, monkeypatch):
    """A NaN loss recurs on every restart (the same seeded epochs): the in-process run raises
    TrainingDiverged, a RaytagError the CLI prints as one line, after one attempt, not
    train.max_failures more."""
    import torch

    from raytag.errors import RaytagError

    attempts = []

    def nan_loss(name):  # built once per attempt (worker.run_loop)
        attempts.append(name)
        return lambda logits, *args, **kwargs: logits.sum() * torch.tensor(float("nan"))

    monkeypatch.setattr("raytag.training.worker.build_loss", nan_loss)
    cfg = Config.from_dict({**ONE, "train": {**ONE["train"], "max_failures": 2}})
    with pytest.raises(RaytagError, match="loss became nan") as caught:
        fit_pipeline(cfg, demo_data, str(tmp_path / "results"), "diverges", feature_cache=str(tmp_path / "cache"),
                     progress=False)
    assert isinstance(caught.value, FloatingPointError)  # older `except FloatingPointError` still holds
    assert len(attempts) == 1


def test_the_user_error_behind_a_worker_group_failure_is_raised(ray_session):
    """Ray Train raises a WorkerGroupError around a worker's exception (after its own
    restarts): fit_pipeline raises the RaytagError inside it, other failures unchanged."""
    from ray.train.v2.api.exceptions import WorkerGroupError

    from raytag.errors import CheckpointError
    from raytag.training.runner import surfacing_user_errors

    inner = CheckpointError("checkpoint_000003: model.safetensors was altered")
    with pytest.raises(CheckpointError) as caught, surfacing_user_errors():
        raise WorkerGroupError("rank 0: CheckpointError", {0: inner})
    assert caught.value is inner
    with pytest.raises(WorkerGroupError), surfacing_user_errors():
        raise WorkerGroupError("rank 0: RuntimeError", {0: RuntimeError("a worker's own bug")})


def test_a_failed_attempt_leaves_no_work_folder_behind(ray_session, demo_data, tmp_path, monkeypatch):
    """The loop's work folder (raytag-rank0-*: weights and predictions of the attempt) goes
    however the attempt ends, not only when it succeeds."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where mkdtemp puts it
    monkeypatch.setenv("RAYTAG_FAIL_ONCE", f"0:{tmp_path / 'failed'}")
    cfg = Config.from_dict({**ONE, "train": {**ONE["train"], "max_failures": 0}})
    with pytest.raises(RuntimeError, match="RAYTAG_FAIL_ONCE"):
        fit_pipeline(cfg, demo_data, str(tmp_path / "results"), "fails", feature_cache=str(tmp_path / "cache"),
                     progress=False)
    assert (tmp_path / "failed").exists(), "the injected failure never happened"
    assert not list(scratch.glob("raytag-rank*"))


def test_a_store_error_a_restart_cures_is_retried_and_a_recurring_one_is_not(tmp_path, monkeypatch):
    """A feature-store shard replaced by a rebuild (FeatureStoreError, a RaytagError) is cured
    by a restart, which opens the store again: the run goes on. A dataset that differs
    (DatasetError) would recur on every restart: it is raised after one attempt."""
    from raytag.errors import DatasetError
    from raytag.features.store import FeatureStoreError
    from raytag.training import in_process

    attempts = []

    def shard_gone_once(loop_config, worker):
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise FeatureStoreError("fold0.npy: shard gone: ... open the store again (FeatureStore.open)")

    monkeypatch.setattr(in_process, "run_loop", shard_gone_once)
    with pytest.warns(RuntimeWarning, match="attempt 1 failed .*shard gone"):
        result = in_process.fit_in_process({}, tmp_path / "run", (), max_failures=2)
    assert len(attempts) == 2 and result.error is None

    def dataset_differs(loop_config, worker):
        attempts.append(len(attempts))
        raise DatasetError("the store lacks clips of the plan")

    attempts.clear()
    monkeypatch.setattr(in_process, "run_loop", dataset_differs)
    with pytest.raises(DatasetError):
        in_process.fit_in_process({}, tmp_path / "run", (), max_failures=2)
    assert len(attempts) == 1
