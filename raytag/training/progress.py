"""Per-epoch progress of one run, seen by the driver while `TorchTrainer.fit()` runs.

Ray Train 2.60 calls a `UserCallback` on its controller actor (not on the driver) after
each `ray.train.report` of the workers. `EpochForwarder` puts rank 0's row on a Ray queue
(an actor holding no CPU); a thread of the driver drains it and turns each training
epoch's row into an `EpochEvent`, with an estimate of the time the run has left, for the
caller's `on_epoch`. `fit_pipeline(on_epoch=...)` wires this up; without `on_epoch`
(Tune trials, benchmarks) none of it runs.
"""
from __future__ import annotations

import threading
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

from raytag.training.steps import Step

try:
    from ray.train.v2.api.callback import UserCallback as _UserCallback
except ImportError:  # pragma: no cover - ray[train] 2.60 is a dependency
    _UserCallback = object


@dataclass(frozen=True)
class EpochEvent:
    """One finished training epoch of a run."""

    stage: str  # warmup, finetune, stage2_r0, ...
    fold: Optional[int]  # None for the warm-up, which every fold shares
    n_folds: int  # folds of the split (cv.n_folds), whatever subset this run trains
    epoch: int  # 1-based, within the stage
    epochs: int  # epochs of the stage
    train_loss: float
    val_lwlrap: float  # the fold's held-out curated clips (all curated clips in the warm-up)
    seconds: float  # the worker's time since its previous report: training, evaluation, checkpoint
    eta_seconds: float  # estimate of the time the run has left (EtaClock)
    val_map3: Optional[float] = None  # the same clips in MAP@3: the 2018 layout only


class EtaClock:
    """Time left = what the run has left of each step kind x that kind's mean so far.

    A row's `wall_seconds` is the worker's time since its previous report, so the means
    cover training, evaluation and checkpoints, and filter steps count as one unit each.
    Warm-up, fine-tune and stage-2 epochs train on different sets, so their times differ;
    a kind not seen yet borrows the mean of everything seen. A stage 2 that a fold skips
    (nothing accepted) counts until it is skipped: an estimate, not a promise."""

    def __init__(self, steps: list[Step]):
        self.steps = steps
        self._seconds: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)

    def update(self, row: dict) -> float:
        """Take one report row (training.worker._report); the seconds the run has left after it."""
        index = int(row["step_index"])
        step = self.steps[index]
        trained = int(row.get("step_epoch", 0))
        if trained > 0 or step.kind == "filter":  # a skipped stage 2 took no time worth counting
            self._seconds[step.kind] += float(row["wall_seconds"])
            self._count[step.kind] += 1
        left: dict[str, int] = defaultdict(int)
        if trained > 0:
            left[step.kind] += max(0, step.epochs - trained)
        for later in self.steps[index + 1:]:
            left[later.kind] += _units(later)
        seen = sum(self._count.values())
        if not seen:
            return 0.0
        overall = sum(self._seconds.values()) / seen
        return sum(n * (self._seconds[k] / self._count[k] if self._count[k] else overall)
                   for k, n in left.items())


def _units(step: Step) -> int:
    """A step's length in EtaClock's units: its epochs, or 1 for a step that does not train (filter)."""
    return step.epochs if step.trains else 1


def step_units(steps: list[Step]) -> int:
    """A run's length in EtaClock's units: each training epoch, and each filter step, is one."""
    return sum(_units(s) for s in steps)


class MembersEta:
    """The time a members run (`raytag train` with `members`) has left: the training
    member's own estimate (its EtaClock) plus, for every member after it, its units
    (step_units) x the mean seconds of the epochs seen so far in this run.

    Families differ in speed (on the dev benchmark a cnn2d width 16 epoch took about 1.5x a
    resnet18 width 32 one), so the later members' share is a rough guess until they start;
    members that a resumed run finds finished add nothing."""

    def __init__(self, units: list[int]):
        self.units = units
        self._seconds = 0.0
        self._epochs = 0

    def event(self, member: int, event: EpochEvent) -> EpochEvent:
        """`event` of member `member` (0-based), its ETA extended to the whole run."""
        self._seconds += event.seconds
        self._epochs += 1
        later = sum(self.units[member + 1:])
        return replace(event, eta_seconds=event.eta_seconds + later * self._seconds / self._epochs)

    def on_epoch(self, member: int, on_epoch: Callable[[EpochEvent], None]) -> Callable[[EpochEvent], None]:
        """The `on_epoch` to give member `member`'s fit: `on_epoch` with run-wide ETAs."""
        return lambda event: on_epoch(self.event(member, event))


def epoch_event(row: dict, steps: list[Step], n_folds: int, eta_seconds: float) -> Optional[EpochEvent]:
    """The event of a worker report row (training.worker._report); None for a row that
    trained nothing (a filter step, a skipped stage 2)."""
    step_epoch = int(row.get("step_epoch", 0))
    if step_epoch <= 0:
        return None
    return EpochEvent(
        stage=str(row["stage"]), fold=steps[int(row["step_index"])].fold, n_folds=n_folds,
        epoch=step_epoch, epochs=int(row["step_epochs"]), train_loss=float(row["train_loss"]),
        val_lwlrap=float(row["val_lwlrap"]), seconds=float(row["wall_seconds"]), eta_seconds=eta_seconds,
        val_map3=float(row["val_map3"]) if "val_map3" in row else None,
    )


class EpochForwarder(_UserCallback):
    """Runs on the Ray Train controller: puts rank 0's row of every report on `queue`."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        if metrics:
            self.queue.put(dict(metrics[0]))


@contextmanager
def epoch_events(on_epoch: Callable[[EpochEvent], None], steps: list[Step], n_folds: int) -> Iterator[list]:
    """Yields the Ray Train callbacks to add to the run; while the block runs (the fit),
    a driver thread calls `on_epoch` with each epoch's event, in order. Rows still queued
    when the block ends (the fit's last epochs) are delivered before it returns."""
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})  # unbounded: workers never wait for the printing
    clock = EtaClock(steps)
    stop = threading.Event()

    failed: list[BaseException] = []

    def deliver(row: dict):
        if failed:
            return
        try:
            event = epoch_event(row, steps, n_folds, clock.update(row))
            if event is not None:
                on_epoch(event)
        except Exception as err:  # noqa: BLE001 - progress lines must never end the training
            failed.append(err)
            warnings.warn(f"epoch progress stopped: {err!r}", RuntimeWarning, stacklevel=1)

    def drain():
        while not stop.is_set():
            try:
                row = queue.get(timeout=0.5)
            except Empty:
                continue
            deliver(row)

    thread = threading.Thread(target=drain, name="raytag-epochs", daemon=True)
    thread.start()
    fitted = False
    try:
        yield [EpochForwarder(queue)]
        fitted = True
    finally:
        stop.set()
        thread.join()
        try:
            while not queue.empty():
                deliver(queue.get_nowait())
            queue.shutdown()
        except Exception:  # noqa: BLE001 - Ray gone with a failed fit: the fit's own error is the one to see
            if fitted:
                raise
