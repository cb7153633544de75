"""Faults a sweep must survive (issue 12), on real audio through the command line.

Chaos: a seeded schedule SIGKILLs Train worker processes three times and the sweep driver
(with its Ray) once while `raytag tune` runs 2 trials; `raytag tune --resume` then finishes
the sweep. No trial may run twice (each starts from epoch 0 once; a kill costs at most the
epoch it interrupted) and every trial's CV lwlrap must equal the same sweep's without
faults (training is seeded).

Storage: the storage fills up (a small tmpfs, where this process may mount one) or its
trials folder turns into a file (elsewhere) mid-sweep: `raytag tune` stops with one clear
error that names the path, and once the storage is fixed `--resume` completes the sweep.

The workers' trace hook (RAYTAG_TRACE, raytag.training.worker) says which process runs
which epoch; each trial's checkpoint_manager_snapshot.json says which checkpoint Ray Train
would resume from, so a kill always lands after a checkpoint the restart can load."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from raytag.session import CONTROLLER_POLL

import sweep_util
from sweep_util import LR, WIDTH, disk_filling_fit, fake_space, self_killing_fit


# each trial: a tiny pipeline on 2 workers: warm-up 1 epoch, 2 folds x 2 fine-tune epochs
EPOCHS_PER_TRIAL = 5
SPACE = """
name: chaos
base:
  features.n_mels: 32
  model.name: cnn2d
  model.width: 8
  model.depth: 2
  train.crop_seconds: 1.0
  train.batch_size: 16
  train.max_failures: 3
  cv.n_folds: 2
  pipeline.noisy_selection.max_per_class: 4
  pipeline.warmup.epochs: 1
  pipeline.finetune.epochs: 2
  pipeline.filter.enabled: false
  pipeline.pseudo.enabled: false
  inference.segment_seconds: 1.0
  inference.overlap: 0.0
space:
  train.lr: {loguniform: [5.0e-4, 3.0e-3]}
search: {samples: SAMPLES, scheduler: fifo, max_concurrent_trials: 1, seed: 0}
resources: {num_workers: 2, cpus_per_worker: 0.5, trial_cpus: 0.25}
"""
CHAOS_SEED = 12
# 2 trials: seed 12 strikes trial 0 once (a worker) and trial 1 three times (a worker, the
# driver, then a worker of the trial the resumed sweep rebuilt). With 3 trials this seed
# struck only trials 1 and 2: trial 0 was a fault-free run in both sweeps
CHAOS_TRIALS = 2


def chaos_space(samples: int) -> str:
    return SPACE.replace("SAMPLES", str(samples))


def _raytag() -> list[str]:
    exe = Path(sys.executable).with_name("raytag")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from raytag.cli import app; app()"]


class Sweep:
    """`raytag tune` of one space in its own process group (its own local Ray)."""

    def __init__(self, tmp: Path, data: Path, storage: Path, name: str, samples: int, trace: Path | None = None,
                 controller_poll: str | None = "2"):
        self.tmp, self.data, self.storage, self.name = tmp, data, storage, name
        self.space = tmp / f"{name}.yaml"
        self.space.write_text(chaos_space(samples))
        self.trace = trace
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
        # RAYTAG_CACHE (tests/conftest.py) comes with the environment: features built once for every sweep
        # Chaos keeps Ray Train's default 2 s poll (conftest sets 0.25 s): a worker then waits in
        # each report until the controller takes it, and strikes land as they always did. Polled
        # every 0.25 s the tiny trials train in about 2 s, and a strike can land after a trial's
        # last report and cost no restart (seen once: 3 restarts for 4 faults). None: the test
        # session's poll
        if controller_poll is not None:
            self.env[CONTROLLER_POLL] = controller_poll
        if trace is not None:
            self.env["RAYTAG_TRACE"] = str(trace)
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    @property
    def exp_dir(self) -> Path:
        return self.storage / self.name

    def start(self, resume: bool = False) -> subprocess.Popen:
        self.runs += 1
        args = _raytag() + ["tune", "--space", str(self.space), "--data", str(self.data),
                            "--storage", str(self.storage), "--name", self.name] + (["--resume"] if resume else [])
        self.log = self.tmp / f"{self.name}-{self.runs}.log"
        self.proc = subprocess.Popen(args, env=self.env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self.proc

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.end_group()

    def kill(self) -> None:
        """The head node dies: the driver and every Ray process it started, at once."""
        self.end_group()
        self.proc.wait(timeout=30)

    def end_group(self) -> None:
        try:  # Ray processes the driver started outlive it unless its group is ended
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def output(self) -> str:
        return self.log.read_text()

    def board(self) -> pd.DataFrame:
        return pd.read_csv(self.exp_dir / "leaderboard.csv")


def _events(trace: Path) -> list[dict]:
    if not trace.exists():
        return []
    out = []
    for line in trace.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written, or cut by a kill
            pass
    return out


def _registered_step(run_dir: Path) -> int:
    """Global step of the latest checkpoint Ray Train registered for a run (what a restart loads)."""
    try:
        latest = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text()).get(
            "latest_checkpoint_result") or {}
    except (OSError, ValueError):
        return -1
    return int(latest.get("metrics", {}).get("step", -1))


@dataclass
class Fault:
    trial: int  # the sweep's n-th trial
    step: int  # struck once at least this many epochs are checkpointed and registered
    target: str  # "worker" (the Train worker of `rank`) or "driver"
    rank: int = 0
    registered: int = -1  # when struck: the checkpoint a restart can load
    epoch: int = -1  # the last epoch the struck worker started
    since: float = 0.0  # when it started that epoch
    time: float = 0.0  # when struck


def chaos_schedule(seed: int, trials: int, worker_kills: int, driver_kills: int) -> list[Fault]:
    """Distinct (trial, epoch) points in the order they come, never before the first
    checkpoint (a restart must have one to load) nor after the last epoch."""
    rng = random.Random(seed)
    points = rng.sample([(t, s) for t in range(trials) for s in range(1, EPOCHS_PER_TRIAL)],
                        worker_kills + driver_kills)
    drivers = set(rng.sample(range(len(points)), driver_kills))
    faults = [Fault(t, s, "driver" if i in drivers else "worker", rank=rng.randrange(2))
              for i, (t, s) in enumerate(points)]
    return sorted(faults, key=lambda f: (f.trial, f.step))


class ChaosMonkey(threading.Thread):
    """Strikes the faults of the schedule in order: each once its trial has registered a
    checkpoint of at least `step` epochs, while that trial's workers still train.

    Trials are numbered in the order their folders appear under trials/ (one runs at a
    time); a fault whose trial finished before it could strike is `missed`."""

    def __init__(self, sweep: Sweep, faults: list[Fault]):
        super().__init__(daemon=True)
        self.sweep, self.faults = sweep, faults
        self.trials: list[str] = []  # trial folder names, in the order they appeared
        self.struck: list[Fault] = []
        self.last_strike = 0.0  # a worker is struck only if it started after the last strike
        self.missed: list[Fault] = []
        self.stop = threading.Event()
        self.driver_killed = threading.Event()

    def run(self):
        while not self.stop.is_set() and len(self.struck) + len(self.missed) < len(self.faults):
            fault = self.faults[len(self.struck) + len(self.missed)]
            self._note_trials()
            if len(self.trials) > fault.trial:
                run_dir = self.sweep.exp_dir / "trials" / self.trials[fault.trial]
                if (run_dir / "trial_result.json").exists():
                    self.missed.append(fault)
                    continue
                self._strike_if_ready(fault, run_dir)
            time.sleep(0.02)

    def _note_trials(self):
        folder = self.sweep.exp_dir / "trials"
        if folder.is_dir():
            self.trials += sorted(p.name for p in folder.iterdir()  # not the storage probe's files
                                  if p.is_dir() and not p.name.startswith(".") and p.name not in self.trials)

    def _strike_if_ready(self, fault: Fault, run_dir: Path):
        if self.sweep.proc is None or self.sweep.proc.poll() is not None:
            return
        registered = _registered_step(run_dir)
        if not fault.step <= registered < EPOCHS_PER_TRIAL:
            return
        starts = [e for e in _events(self.sweep.trace) if e["event"] == "epoch_start" and e["rank"] == fault.rank]
        if not starts or starts[-1]["global_step"] < registered:  # not this trial's worker (yet)
            return
        if starts[-1]["time"] <= self.last_strike:  # its group is still restarting from the last fault
            return
        fault.registered, fault.epoch, fault.since = registered, starts[-1]["global_step"], starts[-1]["time"]
        if fault.target == "driver":
            self.sweep.kill()
            self.driver_killed.set()
        else:
            try:
                os.kill(starts[-1]["pid"], signal.SIGKILL)
            except ProcessLookupError:  # it ended between the trace line and now: try again
                return
        self.last_strike = fault.time = time.time()
        self.struck.append(fault)


def epoch_reached(events: list[dict], fault: Fault) -> int:
    """The last epoch any of the struck trial's workers started before the restart that followed.

    The workers of a group do not move in lock step, nor die at once. The controller takes each
    worker's report in turn, so the other worker can start the next epoch before the struck
    one logs it (or before the strike), while the struck worker's report was never taken and
    that epoch's checkpoint never registered. And when one worker is killed the others can
    start another epoch before Ray tears the group down. Both epochs run again after the
    restart, so count from the struck worker's last start up to the next resume (or the next
    trial's first epoch)."""
    reached = fault.epoch
    for e in events:
        if e["time"] < fault.since:
            continue
        if e["time"] > fault.time and (e["event"] == "resume"
                                       or (e["event"] == "epoch_start" and e["global_step"] == 0)):
            break
        if e["event"] == "epoch_start":
            reached = max(reached, e["global_step"])
    return reached


def resume_after(resumes: list[dict], fault: Fault) -> dict | None:
    """The restart that followed a fault: the first resume after it."""
    return next((r for r in resumes if r["time"] > fault.time), None)


def test_epochs_rerun_count_the_starts_a_dying_group_makes_after_the_strike():
    fault = Fault(trial=0, step=2, target="worker", rank=1, registered=2, epoch=2, since=9.0, time=10.0)
    events = [{"event": "epoch_start", "global_step": 1, "time": 8.0},
              {"event": "epoch_start", "global_step": 2, "time": 9.0},
              {"event": "epoch_start", "global_step": 3, "time": 10.5},  # rank 0, before it noticed
              {"event": "resume", "global_step": 2, "time": 12.0},
              {"event": "epoch_start", "global_step": 4, "time": 20.0}]  # after the restart
    assert epoch_reached(events, fault) == 3


def test_epochs_rerun_count_a_start_of_the_other_worker_just_before_the_strike():
    # the controller took rank 0's report of epoch 2 and let it start epoch 3; rank 1, still
    # waiting for its report to be taken (so checkpoint 3 was never registered), is struck
    fault = Fault(trial=0, step=2, target="worker", rank=1, registered=2, epoch=2, since=9.0, time=10.0)
    events = [{"event": "epoch_start", "global_step": 2, "rank": 0, "time": 9.0},
              {"event": "epoch_start", "global_step": 2, "rank": 1, "time": 9.0},
              {"event": "epoch_start", "global_step": 3, "rank": 0, "time": 9.98},
              {"event": "resume", "global_step": 2, "rank": 0, "time": 12.0}]
    assert epoch_reached(events, fault) == 3  # epochs 2 and 3 run again
    assert resume_after(events, fault)["global_step"] == 2


@pytest.fixture(scope="module")
def clean_board(ray_session, bench_data, tmp_path_factory):
    """The chaos sweep without faults: the reference for every trial's CV lwlrap. Run by the
    library on the tests' shared Ray (what `raytag tune` calls), which spares the reference a
    command start-up and a Ray of its own; the features go to the cache the chaos sweep reads
    (RAYTAG_CACHE, tests/conftest.py)."""
    from raytag.search.tuner import run_sweep

    tmp = tmp_path_factory.mktemp("clean")
    space = tmp / "clean.yaml"
    space.write_text(chaos_space(CHAOS_TRIALS))
    result = run_sweep(space, bench_data, storage=str(tmp / "res"), name="clean", progress=False)
    return pd.read_csv(Path(result.experiment_dir) / "leaderboard.csv")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.real_audio
def test_sweep_survives_killed_workers_and_driver(bench_data, clean_board, tmp_path):
    faults = chaos_schedule(CHAOS_SEED, trials=CHAOS_TRIALS, worker_kills=3, driver_kills=1)
    trace = tmp_path / "trace.jsonl"
    sweep = Sweep(tmp_path, bench_data, tmp_path / "res", "chaos", samples=CHAOS_TRIALS, trace=trace)
    monkey = ChaosMonkey(sweep, faults)
    monkey.start()
    try:
        sweep.start()
        while not monkey.driver_killed.wait(0.5):
            if sweep.proc.poll() is not None and not monkey.driver_killed.wait(5):
                pytest.fail(f"the sweep ended before its driver was killed: struck {monkey.struck}, "
                            f"missed {monkey.missed}\n{sweep.output()[-4000:]}")
        assert not (sweep.exp_dir / "leaderboard.csv").exists()  # the sweep really was cut short
        sweep.start(resume=True)
        assert sweep.wait(timeout=600) == 0, sweep.output()[-4000:]
    finally:
        monkey.stop.set()
        monkey.join(timeout=5)
        sweep.end_group()
    # every fault struck, and the sweep survived them all
    assert monkey.struck == faults and not monkey.missed, (monkey.struck, monkey.missed)

    board = sweep.board()
    assert len(board) == CHAOS_TRIALS and board["trial_id"].is_unique
    assert (board["status"] == "ok").all(), board[["trial_id", "status", "reason"]]
    assert sorted(monkey.trials) == sorted(board["trial_id"])  # no trial started again under a new id

    # No trial ran twice: each started at epoch 0 once, each fault cost one restart from a
    # registered checkpoint, and re-ran only the epochs after it.
    events = _events(trace)
    starts = [e for e in events if e["event"] == "epoch_start" and e["rank"] == 0]
    resumes = [e for e in events if e["event"] == "resume" and e["rank"] == 0]
    assert [e["global_step"] for e in starts].count(0) == CHAOS_TRIALS
    # a restart per fault at most: a fault that lands while the trial is already restarting
    # (a killed driver's trial is rebuilt from its last checkpoint) costs no restart of its own
    assert 0 < len(resumes) <= len(faults), resumes
    # each restart loads at least the checkpoint registered when its fault struck, never older
    after = [resume_after(resumes, f) for f in faults]
    assert all(r is not None and r["global_step"] >= f.registered for f, r in zip(faults, after)), (faults, resumes)
    reached = [epoch_reached(events, f) for f in faults]
    rerun = sum(r - f.registered + 1 for f, r in zip(faults, reached))
    # on failure, say where the extra epochs came from: each fault, and every start and resume in order
    story = ([(f.target, f.rank, f.registered, f.epoch, r, round(f.time, 2)) for f, r in zip(faults, reached)],
             [(e["event"], e["rank"], e["global_step"], round(e["time"], 2)) for e in events
              if e["event"] in ("epoch_start", "resume")])
    assert CHAOS_TRIALS * EPOCHS_PER_TRIAL <= len(starts) <= CHAOS_TRIALS * EPOCHS_PER_TRIAL + rerun, story

    # the same trials (Optuna is seeded) with the same CV lwlrap as the sweep without faults
    by_lr = lambda b: b.assign(lr=b["train.lr"].round(12)).set_index("lr").sort_index()  # noqa: E731
    clean, chaos = by_lr(clean_board), by_lr(board)
    assert list(chaos.index) == list(clean.index)
    for lr in clean.index:
        assert chaos.loc[lr, "cv_lwlrap"] == pytest.approx(clean.loc[lr, "cv_lwlrap"], abs=1e-5), lr


class StorageFault:
    """Makes a sweep's storage unwritable mid-sweep, and fixes it again.

    Where this process may mount a tmpfs (root on Linux) the storage is a small tmpfs that
    `fill()` fills to the last byte (a full disk); elsewhere the experiment's trials folder
    is moved aside and a file put in its place (a plain chmod would not stop root)."""

    def __init__(self, storage: Path):
        self.storage = storage
        storage.mkdir(parents=True)
        self.mounted = _try_mount_tmpfs(storage, size="64m")
        self.kind = "disk full" if self.mounted else "file in place of a folder"
        self._moved: tuple[Path, Path] | None = None

    def break_(self, exp_dir: Path) -> Path:
        """Returns the path whose writes now fail."""
        if self.mounted:
            with open(self.storage / "filler", "wb") as out:
                block = b"\0" * (1 << 20)
                try:
                    while True:
                        out.write(block)
                        out.flush()
                except OSError:  # ENOSPC: full, to the last page
                    pass
            return self.storage
        trials = exp_dir / "trials"
        aside = exp_dir / "trials.aside"
        trials.rename(aside)
        trials.write_text("not a folder")
        self._moved = (trials, aside)
        return trials

    def fix(self):
        if self.mounted:
            (self.storage / "filler").unlink()
        elif self._moved:
            trials, aside = self._moved
            trials.unlink()
            aside.rename(trials)

    def close(self):
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.storage)], check=False)


def _try_mount_tmpfs(path: Path, size: str) -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.real_audio
def test_storage_that_fails_mid_sweep_stops_with_a_clear_error_then_resumes(bench_data, tmp_path):
    fault = StorageFault(tmp_path / "storage")
    trace = tmp_path / "trace.jsonl"
    # one trial, at the test session's poll: what is checked is the stop and its message, and that
    # the resumed sweep continues the interrupted trial instead of starting it again
    sweep = Sweep(tmp_path, bench_data, fault.storage, "brittle", samples=1, trace=trace, controller_poll=None)
    try:
        sweep.start()
        deadline = time.time() + 300
        while True:  # the first trial has a checkpoint and trains on
            assert time.time() < deadline and sweep.proc.poll() is None, sweep.output()[-4000:]
            runs = sorted((sweep.exp_dir / "trials").glob("*/checkpoint_manager_snapshot.json"))
            if runs and 1 <= _registered_step(runs[0].parent) < EPOCHS_PER_TRIAL:
                break
            time.sleep(0.02)
        broken = fault.break_(sweep.exp_dir)
        code = sweep.wait(timeout=300)
        out = sweep.output()
        # one clear message naming the path (the console's RaytagError line), no traceback
        assert code == 2, (fault.kind, out[-4000:])
        assert "Traceback" not in out, out[-4000:]
        error = out[out.index("error:"):]
        assert str(broken) in error and "--resume" in error, error
        assert not (sweep.exp_dir / "leaderboard.csv").exists()

        fault.fix()
        sweep.start(resume=True)
        assert sweep.wait(timeout=600) == 0, sweep.output()[-4000:]
        assert "--set is fixed" not in sweep.output()  # no --set was given: nothing to say about it
        board = sweep.board()
    finally:
        sweep.end_group()
        fault.close()
    assert len(board) == 1 and (board["status"] == "ok").all(), board[["trial_id", "status", "reason"]]
    events = _events(trace)
    starts = [e for e in events if e["event"] == "epoch_start" and e["rank"] == 0]
    assert [e["global_step"] for e in starts].count(0) == 1  # the interrupted trial continued, not restarted
    assert any(e["event"] == "resume" for e in events)


# ----------------------------------------------------------------------------- the storage probe (quick)
def test_check_writable_names_the_folder_it_cannot_write(tmp_path):
    from raytag.errors import StorageError
    from raytag.storage import check_writable

    check_writable(tmp_path / "exp")  # creates the folder, leaves nothing in it
    assert list((tmp_path / "exp").iterdir()) == []
    (tmp_path / "exp" / "trials").write_text("a file where the trials folder should be")
    with pytest.raises(StorageError, match=f"cannot write to {tmp_path / 'exp' / 'trials'}: "):
        check_writable(tmp_path / "exp" / "trials")


def test_ray_s_failed_sync_is_logged_as_one_line_without_its_traceback():
    import logging
    import traceback

    from raytag.search.tuner import quiet_sync_failures

    class Keep(logging.Handler):  # Ray's loggers do not propagate to the root (pytest's caplog)
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    quiet_sync_failures()
    quiet_sync_failures()  # once per process, however often a sweep starts
    log = logging.getLogger("ray.train._internal.syncer")
    assert len(log.filters) == 1
    keep = Keep()
    log.addHandler(keep)
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            log.warning(f"Last sync command failed with the following error:\n{traceback.format_exc()}")
        log.warning("something else: %s", "kept as it was")
    finally:
        log.removeHandler(keep)
    assert keep.messages == [
        "saving the sweep's state to its storage failed: OSError: [Errno 28] No space left on device",
        "something else: kept as it was",
    ]


def test_storage_watch_stops_the_sweep_with_how_to_resume(tmp_path):
    from raytag.errors import StorageError
    from raytag.search.tuner import StorageWatch

    exp = tmp_path / "exp"
    watch = StorageWatch(str(exp), str(exp / "trials"), "brittle", every_s=3600)
    watch.setup()
    watch.on_step_end(iteration=1, trials=[])  # writable: nothing happens
    (exp / "trials").rmdir() if (exp / "trials").is_dir() else None
    (exp / "trials").write_text("not a folder")
    watch.on_step_end(iteration=2, trials=[])  # within every_s: not probed again
    watch.on_trial_error(iteration=2, trials=[], trial=None)  # a trial failed: probed at this step's end
    with pytest.raises(StorageError, match=r"(?s)cannot write to .*trials.*--name brittle.*--resume"):
        watch.on_step_end(iteration=2, trials=[])
    watch.setup()  # a resumed sweep: probes at once
    with pytest.raises(StorageError, match=r"(?s)cannot write to .*trials.*--name brittle.*--resume"):
        watch.on_step_end(iteration=3, trials=[])


def test_a_lock_that_cannot_be_written_is_a_storage_error(tmp_path):
    from raytag.errors import StorageError
    from raytag.storage import folder_lock

    (tmp_path / "exp").write_text("a file where the sweep's folder should be")
    with pytest.raises(StorageError, match=f"sweep 'x': cannot write its lock {tmp_path / 'exp'}"):
        with folder_lock(tmp_path / "exp", "sweep 'x'"):
            pass


def test_a_state_file_cut_short_is_put_back_from_its_last_complete_copy(tmp_path):
    import pickle

    from raytag.errors import StorageError
    from raytag.search.tune_state import BACKUP_DIR, StateBackup, repair_state

    state = {"experiment_state-1.json": json.dumps({"trials": ["a", "b"]}).encode(),
             "searcher-state-1.pkl": pickle.dumps({"study": [1, 2, 3]})}
    for name, data in state.items():
        (tmp_path / name).write_bytes(data)
    backup = StateBackup(str(tmp_path))
    backup.update()
    assert {p.name: p.read_bytes() for p in (tmp_path / BACKUP_DIR).iterdir()} == state
    assert repair_state(str(tmp_path)) == []  # nothing damaged: nothing done

    (tmp_path / "searcher-state-1.pkl").write_bytes(state["searcher-state-1.pkl"][:-5])  # the disk filled up
    backup.update()  # an incomplete set is never copied over the good one
    assert (tmp_path / BACKUP_DIR / "searcher-state-1.pkl").read_bytes() == state["searcher-state-1.pkl"]
    assert repair_state(str(tmp_path)) == ["searcher-state-1.pkl"]
    assert {name: (tmp_path / name).read_bytes() for name in state} == state

    (tmp_path / "experiment_state-2.json").write_bytes(b'{"trials": ["a", "b')  # no copy of this one
    with pytest.raises(StorageError, match="experiment_state-2.json is cut short .* cannot be resumed"):
        repair_state(str(tmp_path))


def test_a_damaged_train_checkpoint_list_is_set_aside(tmp_path):
    from raytag.search.tune_state import TRAIN_SNAPSHOT, set_aside_damaged_snapshot

    assert not set_aside_damaged_snapshot(str(tmp_path))  # none yet: a trial's first start
    (tmp_path / TRAIN_SNAPSHOT).write_text('{"checkpoint_results": []}')
    assert not set_aside_damaged_snapshot(str(tmp_path))  # complete: kept
    (tmp_path / TRAIN_SNAPSHOT).write_text('{"checkpoint_results": [{"checkpoint_dir_na')
    assert set_aside_damaged_snapshot(str(tmp_path))
    assert not (tmp_path / TRAIN_SNAPSHOT).exists()
    assert (tmp_path / (TRAIN_SNAPSHOT + ".damaged")).read_text().endswith("checkpoint_dir_na")


# ----------------------------------------------------------------------------- a trial meets the fault first (quick)
FAKE_SAMPLES = 3  # seed 0 draws width 16, 48, 48: a trial the storage stops and two that refuse
FAKE_SPACE = fake_space(epochs=4, samples=FAKE_SAMPLES, scheduler="fifo")


@pytest.mark.ray
def test_a_trial_that_meets_the_full_disk_first_is_continued_by_resume(ray_session, tmp_path):
    """The race StorageWatch's probe can lose: a trial's own write finds the disk full and
    Tune records the trial errored before the probe runs (here the storage works again by
    then). The sweep still stops with the StorageError and how to resume; `--resume`
    continues those trials from their checkpoint, and a trial that failed for a reason of
    its own stays failed (same reason, not run again)."""
    from ray import cloudpickle

    from raytag.errors import StorageError
    from raytag.search.leaderboard import TRIAL_FAILURE
    from raytag.search.tuner import run_sweep

    cloudpickle.register_pickle_by_value(sweep_util)  # workers cannot import tests/
    data = tmp_path / "data"
    data.mkdir()
    (data / "disk_full").write_text("")
    space = tmp_path / "fake.yaml"
    space.write_text(FAKE_SPACE)
    storage = tmp_path / "res"
    sweep = dict(storage=str(storage), name="full", trial_fn=disk_filling_fit, progress=False)
    with pytest.raises(StorageError, match=r"(?s)a trial could not write to the storage: .*No space left.*"
                                           r"--name full.*--resume"):
        run_sweep(space, data, **sweep)
    assert not (storage / "full" / "leaderboard.csv").exists()
    first = [line.split() for line in (data / "starts.log").read_text().splitlines()]
    trials = storage / "full" / "trials"
    refused = {name for name, _ in first if (trials / name / TRIAL_FAILURE).exists()}
    stopped = {name for name, _ in first} - refused
    assert refused and stopped  # both kinds of failure happened
    assert all((trials / name / "epochs").read_text() == "2" for name in stopped)

    (data / "disk_full").unlink()  # the storage is fixed
    board = run_sweep(space, data, resume=True, **sweep).leaderboard
    starts = [line.split() for line in (data / "starts.log").read_text().splitlines()][len(first):]
    assert sorted(name for name, _ in starts) == sorted(stopped)  # the refused ones did not run again
    assert all(epoch == "2" for _, epoch in starts)  # each continued from its checkpoint
    by_id = board.set_index("trial_id")
    assert (by_id.loc[sorted(stopped), "status"] == "ok").all(), board[["trial_id", "status", "reason"]]
    assert (by_id.loc[sorted(refused), "status"] == "failed").all()
    assert by_id.loc[sorted(refused), "reason"].str.startswith("ConfigError: model.width: 48 is refused").all()
    # Optuna heard the refused trials as failed, and the ones the storage stopped as finished,
    # with their scores, once --resume finished them (none is left RUNNING)
    import pickle

    sys.path.insert(0, str(Path(__file__).parent))  # the pickled searcher class may name this module
    study = pickle.loads(sorted((storage / "full").glob("searcher-state-*.pkl"))[-1].read_bytes())["_ot_study"]
    assert len(study.trials) == FAKE_SAMPLES
    assert sorted(t.state.name for t in study.trials) == sorted(["FAIL"] * len(refused) + ["COMPLETE"] * len(stopped))
    assert sorted(t.value for t in study.trials if t.state.name == "COMPLETE") == pytest.approx(
        sorted(by_id.loc[sorted(stopped), "cv_lwlrap"]))


# ----------------------------------------------------------------------------- a trial's process is killed (quick)
def _failed_trial(tmp_path, error, num_failures=1, max_failures=2):
    """A stand-in for a Tune Trial after a failure: its pickled error on disk, Tune's counts."""
    from types import SimpleNamespace

    from ray import cloudpickle

    path = tmp_path / f"error_{num_failures}_{type(error).__name__}.pkl"
    path.write_bytes(cloudpickle.dumps(error))
    return SimpleNamespace(pickled_error_file=str(path), num_failures=num_failures, max_failures=max_failures)


def test_only_a_dead_trial_process_keeps_its_restarts(tmp_path):
    """The killed-trial test below passes even without RestartKilledTrials (a self-failed trial's
    extra starts write nothing it checks): check the classification and the cap on their own."""
    from ray.exceptions import ActorDiedError, RayTaskError

    from raytag.search.tuner import RestartKilledTrials, trial_process_died

    died = _failed_trial(tmp_path, ActorDiedError())  # SIGKILL, the out-of-memory killer
    # run_trial raised; its cause may itself be another actor's death (a Train worker's)
    raised_over_death = _failed_trial(tmp_path, RayTaskError("run_trial", "tb", ActorDiedError()).as_instanceof_cause())
    raised = _failed_trial(tmp_path, RayTaskError("run_trial", "tb", RuntimeError("its own failure")))
    unreadable = _failed_trial(tmp_path, ActorDiedError(), num_failures=2)
    Path(unreadable.pickled_error_file).write_bytes(b"not a pickle")
    assert [trial_process_died(t) for t in (died, raised_over_death, raised, unreadable)] == [True, False, False, False]

    callback = RestartKilledTrials()
    for trial in (died, raised_over_death, raised, unreadable):
        callback.on_trial_recover(iteration=1, trials=[trial], trial=trial)
    assert died.max_failures == 2  # a death keeps its restarts (train.max_failures)
    # any other failure: the restart Tune queued is its last
    assert (raised_over_death.max_failures, raised.max_failures, unreadable.max_failures) == (1, 1, 2)


@pytest.mark.ray
def test_a_trial_whose_process_is_killed_is_started_again_from_its_checkpoint(ray_session, tmp_path):
    """A trial that trains in its own process (train.runner) dies with it (the out-of-memory
    killer): Tune starts it again and it continues from its last checkpoint
    (checkpoint_local_NNNNNN in its trial folder), ending ok; the other trials run once each,
    and one that failed by itself is not trained again."""
    from ray import cloudpickle

    from raytag.search.tuner import run_sweep

    cloudpickle.register_pickle_by_value(sweep_util)  # workers cannot import tests/
    data = tmp_path / "data"
    data.mkdir()
    (data / "kill_once").write_text("")
    space = tmp_path / "killed.yaml"
    first_trials = [{"train.lr": 1.0e-3, "model.width": 16}, {"train.lr": 3.0e-4, "model.width": 48},
                    {"train.lr": 2.0e-3, "model.width": 16}]
    space.write_text(fake_space(samples=3, scheduler="fifo", epochs=4, params={"train.lr": LR, "model.width": WIDTH},
                                first_trials=first_trials))
    board = run_sweep(space, data, storage=str(tmp_path / "res"), name="killed", trial_fn=self_killing_fit,
                      progress=False).leaderboard

    assert not (data / "kill_once").exists()  # the kill happened
    starts = [line.split() for line in (data / "starts.log").read_text().splitlines()]
    by_lr = board.assign(lr=board["train.lr"].round(12)).set_index("lr")
    killed, refused, other = (by_lr.loc[round(p["train.lr"], 12), "trial_id"] for p in first_trials)
    # the killed trial: started again in another process, from its epoch-2 checkpoint (2 of 4 epochs retrained)
    runs = [(int(epoch), pid) for name, epoch, pid in starts if name == killed]
    assert [epoch for epoch, _ in runs] == [0, 2] and runs[0][1] != runs[1][1], starts
    assert by_lr.loc[1.0e-3, "status"] == "ok", board[["trial_id", "status", "reason"]]
    assert by_lr.loc[1.0e-3, "cv_lwlrap"] == pytest.approx(1.0)
    reported = [json.loads(line) for line in (tmp_path / "res" / "killed" / f"trial_{killed}" / "result.json")
                .read_text().splitlines()]
    assert [r["step"] for r in reported if "step" in r][-2:] == [3, 4]  # the restart reported epochs 3 and 4 only
    # the others: each trained once; the refused one is failed with its own reason, not trained again
    assert [name for name, _, _ in starts if name in (refused, other)] == [refused, other], starts
    assert by_lr.loc[2.0e-3, "status"] == "ok" and by_lr.loc[2.0e-3, "cv_lwlrap"] == pytest.approx(0.8494850)
    assert by_lr.loc[3.0e-4, "status"] == "failed"
    assert by_lr.loc[3.0e-4, "reason"].startswith("ConfigError: model.width: 48 is refused")


def test_storage_fault_tells_the_storage_s_failures_from_the_code_s(tmp_path):
    import errno

    from raytag.storage import storage_fault

    storage = tmp_path / "res"
    assert storage_fault(ValueError("a bug"), storage) is None
    assert storage_fault(OSError(errno.EACCES, "Permission denied", "/data/clip.wav"), storage) is None  # not storage
    assert storage_fault(OSError(errno.ENOENT, "No such file", str(storage / "x")), storage) is None
    full = OSError(errno.ENOSPC, "No space left on device", str(storage / "t1" / "checkpoint"))
    assert "No space left on device" in storage_fault(full, storage)
    denied = OSError(errno.EACCES, "Permission denied", str(storage / "t1"))
    assert storage_fault(denied, storage).startswith(f"cannot write to {storage / 't1'}")
    try:  # found down the chain: what the runner raised while handling the write's error
        try:
            raise full
        except OSError as err:
            raise RuntimeError("training failed") from err
    except RuntimeError as wrapped:
        assert storage_fault(wrapped, storage) is not None

    class WorkerGroupError(Exception):  # Ray Train's: the workers' errors by rank
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors")
            self.worker_failures = failures

    assert storage_fault(WorkerGroupError({0: ValueError("x"), 1: full}), storage) is not None
    remote = RuntimeError(f"OSError: [Errno 13] Permission denied: '{storage}/t1/state.json'")  # text only
    assert storage_fault(remote, storage) is not None
    assert storage_fault(RuntimeError("OSError: [Errno 13] Permission denied: '/data/a.wav'"), storage) is None

    (tmp_path / "file").write_text("a file where the storage folder should be")
    assert storage_fault(ValueError("a bug"), tmp_path / "file").startswith(f"cannot write to {tmp_path / 'file'}")


def test_optuna_hears_a_trial_the_storage_stopped_only_once_it_finishes(tmp_path):
    """A trial that failed by itself (TRIAL_FAILURE recorded) is told FAIL; one the storage
    stopped is left open, and told COMPLETE with its score when --resume finishes it, also
    through the concurrency limiter, which forgot it when it ended in error."""
    from optuna.trial import TrialState

    from raytag.search.leaderboard import TRIAL_FAILURE
    from raytag.search.space import parse_space
    from raytag.search.tuner import build_searcher, limit_concurrency

    space = parse_space(FAKE_SPACE)
    space.search.metric = "cv_lwlrap"
    searcher = build_searcher(space, str(tmp_path))
    limited = limit_concurrency(searcher, 1)
    assert limited.suggest("refused") is not None
    assert limited.suggest("stopped") is None  # one trial at a time
    (tmp_path / "refused").mkdir()
    (tmp_path / "refused" / TRIAL_FAILURE).write_text('{"reason": "ConfigError: x"}')
    limited.on_trial_complete("refused", None, error=True)
    assert limited.suggest("stopped") is not None
    limited.on_trial_complete("stopped", None, error=True)
    refused, stopped = sorted(searcher._ot_study.trials, key=lambda t: t.number)
    assert refused.state == TrialState.FAIL and stopped.state == TrialState.RUNNING
    assert "stopped" not in limited.live_trials  # what Tune's limiter does: the next trial may start
    limited.on_trial_complete("stopped", {"cv_lwlrap": 0.7, "rung_epoch": 4, "rung_score": 0.7, "pipeline_done": 1,
                                          "trial_complete": 1})  # run_trial's final report
    stopped = sorted(searcher._ot_study.trials, key=lambda t: t.number)[1]
    assert stopped.state == TrialState.COMPLETE and stopped.value == pytest.approx(0.7)
