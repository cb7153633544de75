"""A one-worker CPU run in the caller's process, without a Ray Train worker group.

Why: on one machine a run with one CPU worker gains nothing from Ray Train's worker group
(no DDP, no other node), and starting one costs about 12 s of CPU per run: the controller
process and its helper actors, then the worker process, each importing Ray Train, torch
and raytag (results/benchmarks/speed.md). In a sweep that is paid by every trial, and on
2 cores it was a third of the demo's wall time. Ray Train's own local mode
(`ScalingConfig(num_workers=0)`) runs the function in-process too, but keeps neither
checkpoints nor callbacks, and its `ray.train.report` refuses to run inside a Tune trial;
so the loop (`worker.run_loop`) takes this object where a Train worker takes
`worker.RayTrainWorker`, and what the controller did is done here:

- every checkpoint is persisted at once under the run folder (`checkpoint_local_NNNNNN`,
  written under a temporary name and renamed, the last `KEEP` kept), so a rerun with the
  same name resumes from the latest one, as it would from Ray Train's;
- each report goes to the run's Ray Train callbacks (`after_report`), as the controller
  calls them: the sweep's forwarding to Tune and the driver's epoch lines work unchanged;
- a failed attempt restarts from the last checkpoint, up to `train.max_failures` times
  (Ray Train's FailureConfig); not an error that recurs (`RECURRING`: a diverged loss, a bad
  checkpoint, a dataset that differs, a bad setting): a restart replays the same seeded
  epochs and fails the same way. Other user errors are retried, as a restart can cure them
  (a feature-store shard replaced by a rebuild, a transient read error).

What it cannot do is outlive its process: a run killed with its process resumes only when
it is rerun (a sweep's trial: Tune starts it again, raytag.search.tuner.RestartKilledTrials,
or `raytag tune --resume`).
"""
from __future__ import annotations

import shutil
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from raytag.config import ConfigError
from raytag.errors import CheckpointError, DatasetError, TrainingDiverged
from raytag.training.worker import run_loop

PREFIX = "checkpoint_local_"
KEEP = 2  # as the worker group's CheckpointConfig(num_to_keep=2)
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list of a run's checkpoints

# Errors a restart cannot cure: it replays the same seeded epochs on the same checkpoint,
# dataset and settings. Any other failure (a FeatureStoreError included: a store rebuilt
# under the run, a transient read error) is retried, as Ray Train's FailureConfig does.
RECURRING = (TrainingDiverged, CheckpointError, DatasetError, ConfigError)


@dataclass
class InProcessResult:
    """What `fit_pipeline` reads of a ray.train.Result."""

    checkpoint: object  # ray.train.Checkpoint of the last persisted checkpoint, or None
    error: Optional[BaseException] = None


def local_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's in-process checkpoints, oldest first (complete ones: written, then renamed)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.name.startswith(PREFIX) and p.is_dir())


def has_worker_group_checkpoints(run_dir: str | Path) -> bool:
    """True when Ray Train has checkpoints of this run (a run started on a worker group)."""
    return (Path(run_dir) / TRAIN_SNAPSHOT).is_file()


class InProcessWorker:
    """The loop's view of Ray Train (worker.RayTrainWorker) for one worker in this process."""

    def __init__(self, run_dir: str | Path, callbacks: Sequence = ()):
        self.run_dir = Path(run_dir)
        self.callbacks = list(callbacks)

    def world(self) -> tuple[int, int]:
        return 0, 1

    def device(self):
        return torch.device("cpu")

    def prepare_model(self, model):
        return model  # one process: nothing to wrap

    def checkpoint(self):
        import ray.train

        found = local_checkpoints(self.run_dir)
        return ray.train.Checkpoint.from_directory(str(found[-1])) if found else None

    def report(self, row: dict, checkpoint_dir: Path | None = None) -> None:
        import ray.train

        persisted = None
        if checkpoint_dir is not None:  # copied before the caller's temporary folder goes
            persisted = ray.train.Checkpoint.from_directory(str(self._persist(Path(checkpoint_dir))))
        for callback in self.callbacks:
            callback.after_report(run_context=None, metrics=[dict(row)], checkpoint=persisted)

    def _persist(self, src: Path) -> Path:
        found = local_checkpoints(self.run_dir)
        number = int(found[-1].name[len(PREFIX):]) + 1 if found else 0
        dest = self.run_dir / f"{PREFIX}{number:06d}"
        tmp = self.run_dir / f".{dest.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, tmp)
        tmp.rename(dest)  # a checkpoint is listed only once it is whole
        for old in (found + [dest])[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        return dest


def fit_in_process(loop_config: dict, run_dir: str | Path, callbacks: Sequence, max_failures: int,
                   say=None) -> InProcessResult:
    """Run the loop here, restarting from the last checkpoint after a failure, at most
    `max_failures` times; returns the last checkpoint, or raises the last failure. A
    `RECURRING` error is raised at once: it would recur on every restart."""
    say = say or (lambda message: warnings.warn(message, RuntimeWarning, stacklevel=3))
    worker = InProcessWorker(run_dir, callbacks)
    threads = torch.get_num_threads()  # the loop sets train.torch_threads: give the caller its own back
    try:
        for attempt in range(max_failures + 1):
            try:
                run_loop(loop_config, worker)
                break
            except Exception as err:  # noqa: BLE001 - as Ray Train's FailureConfig: retried, then raised
                if attempt == max_failures or isinstance(err, RECURRING):
                    raise
                where = "".join(traceback.format_exception_only(type(err), err)).strip()
                say(f"run {Path(run_dir).name}: attempt {attempt + 1} failed ({where}); restarting from its "
                    f"last checkpoint ({attempt + 1} of train.max_failures {max_failures})")
    finally:
        torch.set_num_threads(threads)
    return InProcessResult(checkpoint=worker.checkpoint())
