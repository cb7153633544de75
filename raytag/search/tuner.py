"""Ray Tune + Optuna sweep over a search space: one pipeline run (fit_pipeline) per trial.

Ray 2.60 runs Ray Train V2, where `Tuner(TorchTrainer)` is refused; the working pattern is a
function trainable per trial that builds the pipeline's TorchTrainer itself with
`TuneReportCallback`, which forwards every worker `ray.train.report` (one per epoch) to
Tune, so the scheduler (ASHA by default) can stop weak trials early.

What is compared: the scheduler counts the first fold's fine-tune and stage-2 epochs
(`rung_epoch`) and compares that fold's held-out score (`rung_score`, in the search metric:
rung_metric_for), so trials meet at a rung at equal progress whatever their warm-up
(raytag.training.rungs). Optuna is told a finished trial's out-of-fold score
(`search.metric`: cv_map3 on FSDKaggle2018, cv_lwlrap on FSDKaggle2019 by default) and a
stopped trial as PRUNED, never as a finished partial score.

    <storage>/<name>/                   the experiment (Ray's storage_path/name)
        space.yaml, sweep.json          the space and settings it was started with (for --resume)
        trial_<id>/                     Tune's own trial folders (result.json, error.txt)
        trials/<id>/                    each trial's fit_pipeline run (outputs/, checkpoints)
        leaderboard.csv, search.png, importance.csv
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from raytag import storage as files  # local folder or URI through pyarrow.fs
from raytag.cluster import check_data, check_data_folder, check_storage, cluster_nodes
from raytag.config import ConfigError
from raytag.data.layouts import detect_layout
from raytag.errors import RaytagError, StorageError, StorageFault
from raytag.features.store import SHARD_TASK_CPUS  # a trial's feature build holds these per task
from raytag.metrics import layout_metric
from raytag.search.leaderboard import (TRIAL_FAILURE, TRIAL_RESULT, build_leaderboard, error_reason,
                                       reason_from_text)
from raytag.search.report import SWEEP_RECORD, read_sweep_record, save_report
from raytag.search.space import (HYPERBAND_REFUSED, Resources, SearchSpace, SpaceError, flatten_settings, describe,
                                 load_space, parse_space, with_fixed_settings, with_search_overrides)
from raytag.search.tune_state import StateBackup, repair_state, set_aside_damaged_snapshot
from raytag.session import ensure_ray
from raytag.training.rungs import RUNG_EPOCH, RUNG_SCORE
from raytag.training.runner import fit_pipeline


class TrialFailed(RaytagError):
    """A trial finished but its result cannot be used (NaN score)."""


@dataclass
class SweepResult:
    experiment_dir: str
    leaderboard: pd.DataFrame
    plot_path: Optional[str]
    space: SearchSpace

    @property
    def best(self) -> Optional[dict]:
        """The best finished trial: a stopped or unfinished trial's score is partial, not its OOF score."""
        ok = self.leaderboard[self.leaderboard["status"] == "ok"]
        ok = ok[ok[self.space.search.metric].notna()]
        return None if ok.empty else ok.iloc[0].to_dict()


@dataclass
class TrialSetup:
    """Everything a trial needs besides its sampled config (shipped with the trainable)."""

    space: SearchSpace
    data: str
    trials_dir: str  # <experiment>/trials
    feature_cache: Optional[str]  # None: the runner's node-local cache
    trial_fn: Optional[Callable] = None  # None: raytag.training.runner.fit_pipeline
    # fit_pipeline's noisy_teacher (train.noisy_teacher's targets; raytag.ensemble.noisy_teacher
    # sits above this package, so `raytag tune` passes it); None: a teacher is refused
    noisy_teacher: Optional[Callable] = None
    # the folder `raytag tune` ran in: a trial runs in a folder of its own (Ray Tune's chdir), so
    # relative paths in its config are taken from here (Config.with_absolute_paths)
    workdir: str = "."
    # the held-out score the trials' rung_score is to be in (rung_metric_for): the search
    # metric's, where it is not the layout's own; None: the layout's, fit_pipeline's default
    rung_metric: Optional[str] = None


# ----------------------------------------------------------------------------- one trial
def run_trial(config: dict, setup: TrialSetup) -> None:
    """The Tune function trainable: one full pipeline run on its own Ray Train worker group.

    Any exception (a config the Config rejects, a worker crash beyond train.max_failures,
    a NaN score) fails this trial only; Tune records the reason and the sweep goes on, and
    the trial records it too (TRIAL_FAILURE), so that neither Tune's restart (RestartKilledTrials)
    nor `--resume` runs it again. A failure that is the storage's fault (`storage.storage_fault`:
    it cannot be written, or an OSError says the disk is full) is raised as StorageFault and
    not recorded: the sweep stops (StorageWatch) and `--resume` continues the trial from its
    last checkpoint. A trial whose process dies (killed, out of memory) records nothing either:
    Tune starts it again (RestartKilledTrials) and its pipeline continues from its checkpoints.
    """
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    done_path = files.join(setup.trials_dir, trial_id, TRIAL_RESULT)
    if files.exists(done_path):
        # The driver was killed after this pipeline finished but before Tune saved the
        # trial as done: report the stored result instead of training again.
        # (a result stored before the scheduler's keys existed gets them: every report has them)
        # (and trial_complete, which PipelineSearch and the leaderboard read as "finished")
        tune.report({RUNG_EPOCH: 0, RUNG_SCORE: 0.0, "pipeline_done": 1,
                     **json.loads(files.read_text(done_path)), "trial_complete": 1})
        return

    failure_path = files.join(setup.trials_dir, trial_id, TRIAL_FAILURE)
    if files.exists(failure_path):
        # Tune's restart after any failure (RestartKilledTrials makes it the last) and `--resume`
        # (resume_errored, for the trials the storage stopped) start it again: it fails without training
        raise TrialFailed(f"{json.loads(files.read_text(failure_path))['reason']} "
                          "(the trial failed earlier; not run again)")

    last_report: dict = {}
    try:
        result = _run_pipeline(config, setup, trial_id, last_report)
    except Exception as err:
        fault = files.storage_fault(err, setup.trials_dir)
        if fault is None:
            try:  # the trial's own failure: recorded, so that --resume leaves it failed
                reason = reason_from_text("".join(traceback.format_exception(err)))
                files.write_text(failure_path, json.dumps({"reason": reason}))
            except OSError as write_err:
                fault = f"cannot write to {failure_path}: {write_err}"
        if fault is not None:  # the storage's fault, not the trial's: --resume continues it
            raise StorageFault(fault) from err
        raise
    metrics = dict(result.metrics)
    final = {
        "cv_lwlrap": float(metrics["cv_lwlrap"]),
        **({"cv_map3": float(metrics["cv_map3"])} if metrics.get("cv_map3") is not None else {}),
        "test_lwlrap": _float_or_none(metrics.get("test_lwlrap")),
        "epochs_run": int(metrics.get("epochs_run") or 0),
        "pipeline_seconds": float(metrics.get("seconds") or 0.0),
        "outputs_dir": str(result.outputs_dir),
        # the scheduler's keys as the workers last reported them (every result carries them)
        RUNG_EPOCH: int(last_report.get(RUNG_EPOCH, 0)),
        RUNG_SCORE: float(last_report.get(RUNG_SCORE, 0.0)),
        "pipeline_done": 1,
        "trial_complete": 1,  # Optuna: a finished trial (PipelineSearch); only set here
    }
    files.write_text(done_path, json.dumps(final))
    tune.report(final)


def _run_pipeline(config: dict, setup: TrialSetup, trial_id: str, last_report: dict):
    """One trial's pipeline run, its reports forwarded to Tune; TrialFailed when its score is unusable."""
    data_root = None if files.is_uri(setup.data) else Path(setup.data)
    cfg = setup.space.trial_config(config).with_absolute_paths(Path(setup.workdir), data_root)
    # a storage fault that cut Ray Train's checkpoint list short: train this trial again from its start
    set_aside_damaged_snapshot(files.join(setup.trials_dir, trial_id))
    fit = setup.trial_fn
    if fit is None:
        fit = fit_pipeline
    # given only where set, as a trial_fn written for fit_pipeline's older signature takes neither
    options = {**({"noisy_teacher": setup.noisy_teacher} if setup.noisy_teacher else {}),
               **({"rung_metric": setup.rung_metric} if setup.rung_metric else {})}
    result = _fit_forwarding_reports(
        lambda callbacks: fit(cfg, setup.data, storage=setup.trials_dir, name=trial_id,
                              callbacks=callbacks, feature_cache=setup.feature_cache, progress=False, **options),
        last_report,
    )
    metrics = dict(result.metrics)
    for key in dict.fromkeys(["cv_lwlrap", setup.space.search.metric]):
        value = metrics.get(key)
        if value is None or not math.isfinite(float(value)):
            raise TrialFailed(f"{key} is {value} (the loss diverged or no fold finished)")
    return result


def _fit_forwarding_reports(run_fit: Callable[[list], Any], last: Optional[dict] = None):
    """Run the pipeline in a thread while this (Tune's training) thread forwards its
    per-epoch reports to Tune, one at a time, in order.

    Why not TuneReportCallback as it is: it hands each report to Tune's *main* thread
    through the session's inter-actor queue, and Ray 2.60 deadlocks when the trial function
    itself reports or returns while one such report is still queued (both threads wait on
    Tune's one-slot result queue; seen here with a fast trial under load, py-spy showed
    both in Queue.put). Giving the callback a queue of our own that this thread drains
    keeps every tune.report on one thread. The queue holds one item, so the workers still
    wait for Tune to accept each epoch (ASHA decides on time, as with the stock queue).
    `last`, when given, is updated with each forwarded report (the trial's final report
    repeats its scheduler keys).
    """
    import threading

    from ray import tune
    from ray.util.queue import Empty, Queue

    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    box: dict = {}

    def target():
        try:
            box["result"] = run_fit([_report_callback(queue)])
        except BaseException as err:  # noqa: BLE001 - re-raised on Tune's thread below
            box["error"] = err

    thread = threading.Thread(target=target, name="raytag-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive() or not queue.empty():
            try:
                report = queue.get(timeout=0.5)
            except Empty:
                continue
            if last is not None:
                last.update(report)
            tune.report(report)
        thread.join()
    finally:
        queue.shutdown()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _report_callback(queue):
    """TuneReportCallback that puts each worker report on `queue` (drained by the trial
    thread, see _fit_forwarding_reports).

    The workers call their last-report flag `pipeline_done`, not `done`: Tune reserves
    `done`, and a result with done=True would end the trial (and the pipeline's final
    collection of outputs) right after the last epoch. The final state is reported by
    `run_trial` itself."""
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    class _PipelineReportCallback(TuneReportCallback):
        def __init__(self):
            # the parent's __init__ would only make the session's queue, unused here
            if not _in_tune_session():
                raise RuntimeError("the sweep's report callback must be made inside a Tune trial")
            self._training_actor_item_queue = queue

    return _PipelineReportCallback()


def _float_or_none(x) -> Optional[float]:
    return None if x is None else float(x)


def trial_dirname(trial) -> str:
    # Tune's default folder name spells out the config (long with dotted keys).
    return f"trial_{trial.trial_id}"


# ----------------------------------------------------------------------------- sweep set-up
def build_scheduler(space: SearchSpace, name: Optional[str] = None):
    """ASHA (default) or FIFO. ASHA counts first-fold epochs (`rung_epoch`) and compares the
    first fold's held-out score (`rung_score`), so every rung compares trials at the same
    point of the pipeline (raytag.training.rungs). HyperBand is refused (HYPERBAND_REFUSED);
    a sweep stored with it resumes with the scheduler Tune saved, not one built here."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = space.search
    name = (name or s.scheduler).lower()
    # Horizon: the most first-fold epochs a trial of the space runs. rung_epoch stops there
    # (it is frozen after the first fold), so stop_last_trials=False: reaching the horizon
    # must not end a trial whose other folds are still to train.
    max_t = s.max_t or max(space.max_rung_epochs(), s.grace_period + 1)
    if name == "asha":
        return ASHAScheduler(
            time_attr=RUNG_EPOCH, metric=RUNG_SCORE, mode=s.mode, max_t=max_t,
            grace_period=s.grace_period, reduction_factor=s.reduction_factor, stop_last_trials=False,
        )
    if name == "fifo":
        return FIFOScheduler()
    if name == "hyperband":
        raise SpaceError(f"--scheduler hyperband: {HYPERBAND_REFUSED}")
    raise SpaceError(f"--scheduler {name!r}: use asha or fifo")


def reuses_trial_processes(space: SearchSpace) -> bool:
    """Whether a trial runs in the process its predecessor ended in (Tune's reuse_actors).

    A new process per trial (Ray worker start, imports) cost about 6 s of every trial here:
    6 trials of a 2-second fake pipeline took 53 s with reuse against 84 s without
    (results/benchmarks/speed.md). Only where no trial is stopped while it trains: Tune
    caches a stopped trial's process for the next trial without stopping it, and that
    trial's pipeline thread would go on holding its Ray Train worker group. So: the FIFO
    scheduler, and no epoch budget."""
    return space.search.scheduler.lower() == "fifo" and not space.search.epoch_budget


def trial_restarts(space: SearchSpace) -> int:
    """How many times Tune starts again a trial whose process died (Tune's FailureConfig:
    failures in all, over the sweep's life, --resume included): train.max_failures of the
    space's base, the bound its Train workers' restarts have within one run. The two do not
    overlap: a worker that dies is restarted by Ray Train inside the trial, and a trial that
    fails once those restarts are spent has raised, which Tune does not restart
    (RestartKilledTrials); only the trial's own process dying is counted here."""
    return space.base_config().train.max_failures


def build_searcher(space: SearchSpace, trials_dir: Optional[str] = None):
    """Optuna TPE (seeded) over the space's define-by-run function (handles conditionals);
    `space.search.metric` must be resolved (not "auto", see resolve_metric). `trials_dir`
    (the sweep's trials folder) lets it tell a trial that failed for a reason of its own
    (which Optuna is told as FAIL) from one the storage stopped (left open for --resume)."""
    import optuna

    s = space.search
    if s.metric not in ("cv_lwlrap", "cv_map3"):
        raise RaytagError(f"search metric {s.metric!r} is not resolved; call resolve_metric first")
    startup = s.startup_trials if s.startup_trials is not None else max(2, min(10, s.samples // 3))
    sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup)
    searcher = _pipeline_searcher_class()(space=space.define_by_run, metric=s.metric, mode=s.mode, sampler=sampler,
                                          points_to_evaluate=space.first_points() or None)
    searcher.trials_dir = trials_dir  # in __dict__: saved and restored with the searcher's state
    return searcher


def limit_concurrency(searcher, max_concurrent: int):
    """Tune's ConcurrencyLimiter around the searcher, except that it also passes on the end
    of a trial it has forgotten. The limiter drops a trial once it ends in error and does
    not save what it holds, so when `--resume` finished a trial the storage had stopped,
    Optuna never heard of it and showed it RUNNING for good (TPE never used its score).
    Restoring its saved state keeps the limit it has (see set_resumed_concurrency)."""
    from ray.tune.search import ConcurrencyLimiter

    class ResumableLimiter(ConcurrencyLimiter):
        def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
            if trial_id not in self.live_trials and self.searcher.is_open(trial_id):
                return self.searcher.on_trial_complete(trial_id, result=result, error=error)
            return super().on_trial_complete(trial_id, result=result, error=error)

        def set_state(self, state: dict):
            # Tune's fit() restores the saved __dict__ after Tuner.restore, max_concurrent too;
            # keep the limit set for this cluster (set_resumed_concurrency) over the saved one
            limit_now = self.max_concurrent
            super().set_state(state)
            self.max_concurrent = limit_now

    return ResumableLimiter(searcher, max_concurrent=max_concurrent)


def _pipeline_searcher_class():
    from ray.tune.search.optuna import OptunaSearch
    from optuna.trial import TrialState

    class PipelineSearch(OptunaSearch):
        """OptunaSearch that tells Optuna what a pipeline trial really did.

        Ray's OptunaSearch marks a trial COMPLETE whenever its last result has the metric,
        so a trial the scheduler stopped would enter TPE as finished with a partial score.
        Here only a trial whose run_trial finished (`trial_complete`) is COMPLETE: the
        workers' `pipeline_done` is set on their last epoch report, which the scheduler can
        still stop the trial on, before the pipeline's out-of-fold score exists. One
        stopped early is PRUNED, and its intermediate values are the scheduler's own
        yardstick (`rung_score` at `rung_epoch`), so TPE ranks pruned trials like ASHA did.
        """

        def on_trial_result(self, trial_id: str, result: dict):
            if trial_id in self._completed_trials or RUNG_EPOCH not in result:
                return
            step = int(result[RUNG_EPOCH])
            # one value per first-fold epoch: rung_epoch stands still in the warm-up and after
            # fold 0 (kept in __dict__, which the parent's save/restore pickles)
            reported = self.__dict__.setdefault("_rung_steps", {})
            if step > reported.get(trial_id, 0):
                self._ot_trials[trial_id].report(float(result[RUNG_SCORE]), step)
                reported[trial_id] = step

        def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
            if error and trial_id not in self._completed_trials and not self._failed_by_itself(trial_id):
                return  # stopped by the storage, not failed: --resume continues it, then Optuna hears
            if error or trial_id in self._completed_trials or (result or {}).get("trial_complete"):
                return super().on_trial_complete(trial_id, result, error)
            if result:
                # the result the scheduler stopped it on, with the rung's score it was judged
                # by: Tune passes that result here only, never to on_trial_result
                self._report_stop_result(trial_id, result)
            try:  # a stopped trial: Optuna takes its last intermediate value
                self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            except Exception as exc:  # noqa: BLE001 - as the parent: a bad tell must not end the sweep
                logging.getLogger(__name__).warning("Optuna refused the pruned trial %s: %s", trial_id, exc)
            self._completed_trials.add(trial_id)

        def _report_stop_result(self, trial_id: str, result: dict) -> None:
            """on_trial_result, where a result it cannot read (no rung_score, a non-number) only
            costs that value: the trial must still be told PRUNED, or Optuna keeps it RUNNING."""
            try:
                self.on_trial_result(trial_id, result)
            except Exception as exc:  # noqa: BLE001 - one bad value must not keep the trial open
                logging.getLogger(__name__).warning("the stopped trial %s's last rung score was not reported "
                                                    "to Optuna: %s", trial_id, exc)

        def is_open(self, trial_id: str) -> bool:
            """Suggested and not yet told to Optuna (running, or stopped by the storage)."""
            return trial_id in self._ot_trials and trial_id not in self._completed_trials

        def _failed_by_itself(self, trial_id: str) -> bool:
            trials_dir = self.__dict__.get("trials_dir")  # None: a searcher saved before it existed
            if trials_dir is None:
                return True
            try:
                return files.exists(files.join(trials_dir, trial_id, TRIAL_FAILURE))
            except OSError:  # the storage cannot be read: it stopped the trial
                return False

    return PipelineSearch


def resolve_metric(metric: str, layout: Optional[str], data: str) -> str:
    """The search metric for a dataset: "auto" is the layout's own score; MAP@3 needs the
    2018 layout (one label per clip). An unknown layout is left to the trials, whose
    dataset reader says what is missing."""
    if metric == "auto":
        return "cv_map3" if layout == "fsd2018" else "cv_lwlrap"
    if metric == "cv_map3" and layout != "fsd2018":
        raise RaytagError(f"search.metric cv_map3: --data {data} is not in the FSDKaggle2018 layout "
                          "(MAP@3 scores one label per clip); use auto or cv_lwlrap")
    return metric


def rung_metric_for(search_metric: str, layout: Optional[str]) -> Optional[str]:
    """The held-out score the trials' rung_score must be in for ASHA to cut by what TPE and
    the leaderboard choose by: the resolved search metric's ("cv_lwlrap" -> "lwlrap"). None
    where that is the layout's own metric (what the workers score rungs by anyway), or the
    layout is unknown (the trials' dataset reader says what is missing)."""
    score = search_metric.removeprefix("cv_")
    if layout is None or score == layout_metric(layout):
        return None
    return score


def concurrency(space: SearchSpace, requested: int) -> tuple[int, str]:
    """Trials that fit at once on this cluster. Each trial's worker group has its own
    placement group outside the trial's resources, so Tune cannot see that more trials
    would starve their trainers (which then time out starting). On a one-node cluster
    (a laptop) the limit is computed; on a multi-node, possibly autoscaling, cluster
    the space's max_concurrent_trials is trusted for the workers, and capped by the head
    node's CPUs where the trial functions run there (head_concurrency)."""
    cfg = space.base_config().train
    need_cpu = space.resources.trial_cpus + cfg.num_workers * cfg.cpus_per_worker
    need_gpu = cfg.num_workers * cfg.gpus_per_worker if cfg.use_gpu else 0.0
    nodes = cluster_nodes()
    if len(nodes) != 1:
        return head_concurrency(space.resources, requested, nodes)
    (node,) = nodes
    fit = math.floor(node["cpus"] / need_cpu + 1e-9)
    if need_gpu:
        fit = min(fit, math.floor(node["gpus"] / need_gpu + 1e-9))
    if fit < 1:
        raise RaytagError(
            f"one trial needs {need_cpu:g} CPUs"
            + (f" and {need_gpu:g} GPUs" if need_gpu else "")
            + f" but this Ray node has {node['cpus']:g} CPUs and {node['gpus']:g} GPUs; "
            "lower resources.num_workers / cpus_per_worker / gpus_per_worker in the space"
        )
    if fit < requested:
        return fit, f"max_concurrent_trials {requested} -> {fit} (a trial needs {need_cpu:g} CPUs here)"
    return requested, ""


def head_concurrency(resources: Resources, requested: int, nodes: list[dict]) -> tuple[int, str]:
    """Trials that fit at once on a multi-node cluster whose trial functions run on the head
    (`trials_on_head`): each holds `trial_cpus` of the head's CPUs. The head does not grow
    when the cluster autoscales, and Tune only logs a trial it cannot place (as if the cluster
    were still scaling up), so a head without room for one would leave the sweep waiting for
    ever. The worker groups' own needs are left to the cluster (other nodes, autoscaling).
    A trial builds the features it does not find on the head too, with Ray tasks of one CPU
    each there (features.store, called in a Ray worker): trial functions filling the head
    (actors keep their CPUs while they wait) would leave them waiting for ever, so one CPU
    is left free for those tasks where the head has it. `nodes`: cluster.cluster_nodes()."""
    if not resources.trials_on_head:
        return requested, ""
    head = next((n for n in nodes if n["is_head"]), None)
    if head is None:  # Ray no longer marks its head so: trust max_concurrent_trials, as before
        return requested, ""
    head_cpu = head["cpus"]
    fit = math.floor(head_cpu / resources.trial_cpus + 1e-9)
    if fit < 1:
        raise RaytagError(
            f"each trial's function runs on the head node (resources.trials_on_head) and holds "
            f"resources.trial_cpus {resources.trial_cpus:g} CPUs there, but the head node has {head_cpu:g} "
            "CPUs, so no trial could ever start; give the head node CPUs (ray start --head --num-cpus=N, "
            "or the head's num-cpus in KubeRay), lower resources.trial_cpus, or set "
            "resources.trials_on_head: false"
        )
    spare = SHARD_TASK_CPUS if head_cpu - SHARD_TASK_CPUS >= resources.trial_cpus - 1e-9 else 0
    fit = math.floor((head_cpu - spare) / resources.trial_cpus + 1e-9)
    note = "" if spare else _no_cpu_for_feature_builds(resources, head_cpu)
    if fit < requested:
        held = f"each trial's function holds {resources.trial_cpus:g} of the head node's {head_cpu:g} CPUs"
        room = f"; {spare:g} is left for the Ray tasks of the trials' feature builds" if spare else ""
        return fit, "; ".join(filter(None, [f"max_concurrent_trials {requested} -> {fit} ({held}{room})", note]))
    return requested, note


def _no_cpu_for_feature_builds(resources: Resources, head_cpu: float) -> str:
    return (f"the head node's {head_cpu:g} CPUs leave no whole CPU beside a trial function for the Ray tasks "
            "that build a trial's features there, so a trial whose features are not built yet would wait for "
            "ever: build them on the head first (raytag prepare with the same data, --feature-cache and "
            "space; a space that searches features.* builds its other front ends in its trials), or give the "
            f"head {resources.trial_cpus + SHARD_TASK_CPUS:g} CPUs or more")



# ----------------------------------------------------------------------------- the sweep
def run_sweep(
    space_path: str | Path,
    data: str | Path,
    storage: str = "results",
    name: Optional[str] = None,
    samples: Optional[int] = None,
    resume: bool = False,
    scheduler: Optional[str] = None,
    *,
    settings: Optional[dict] = None,
    max_concurrent_trials: Optional[int] = None,
    feature_cache: Optional[str] = None,
    trial_fn: Optional[Callable] = None,
    progress: bool = True,
    noisy_teacher: Optional[Callable] = None,
    start_if_nothing_to_resume: bool = False,
) -> "SweepResult":
    """Run (or with resume=True continue) a sweep; returns its leaderboard and folder.

    `settings` (dotted keys: `raytag tune --set`) are fixed for every trial of a new sweep.
    `trial_fn` replaces fit_pipeline (same signature) for tests of the sweep machinery.
    `noisy_teacher` goes to each trial's fit_pipeline (train.noisy_teacher).
    `resume` with no sweep of that name to resume is refused (a mistyped --name must not start
    a new full sweep), unless `start_if_nothing_to_resume` (the demo: its first run starts it).
    """
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    space = fixed = file_error = None
    try:
        space = load_space(space_path)
        # --set is checked before anything is written; a resumed sweep keeps what it started with
        fixed = with_fixed_settings(space, settings) if settings else space
    except (ConfigError, OSError) as err:
        if not resume:
            raise
        # a resume runs the space the sweep stored (its space.yaml), so a file that moved, no
        # longer loads, or now searches a key that --set fixed only costs the notes it gives
        file_error = err
    overrides = {
        "--samples": ("samples", None if samples is None else int(samples)),
        "--scheduler": ("scheduler", None if scheduler is None else scheduler.lower()),
        "max_concurrent_trials": ("max_concurrent_trials",
                                  None if max_concurrent_trials is None else int(max_concurrent_trials)),
    }
    if not resume:  # checked as the file's own settings, before anything is written
        fixed = with_search_overrides(fixed, overrides)
    if not name and space is not None and not resume:  # --name is checked by the command line
        # a new sweep's folder: a space's `name: ../x` would make it outside --storage
        files.check_name(space.name, f"{space_path}: name")
    # the name the space file gives; without the file (a resume), the name load_space would give it
    name = name or (space.name if space is not None else Path(str(space_path)).stem)
    local = check_data_folder(data)  # None: a URI, copied onto each node by raytag.cluster.materialize_data
    data = str(local) if local is not None else str(data).rstrip("/")
    storage = files.absolute(storage)
    exp_dir = files.join(storage, name)
    if resume and not tune.Tuner.can_restore(exp_dir):
        if file_error is not None:
            raise _no_sweep_without_space(file_error, name, exp_dir)
        if not start_if_nothing_to_resume:  # before Ray starts or anything is written
            raise _nothing_to_resume(name, storage, exp_dir, tune.Tuner.can_restore)

    # One driver per sweep: a second `raytag tune` of the same name and storage is refused
    # before it writes anything (two drivers would overwrite each other's experiment state).
    with files.folder_lock(exp_dir, f"sweep '{name}' ({exp_dir})",
                           clear_hint=f" and run `raytag tune ... --name {name} --resume`"):
        ensure_ray()  # raytag.session: workers get RAY_API_SERVER_ADDRESS, so stopped trials are cleaned up
        quiet_sync_failures()
        check_storage(storage)  # a multi-node cluster needs storage and data every node can read
        check_data(data)
        say = _printer(progress)
        files.check_writable(exp_dir)  # a full or read-only storage stops here, naming it
        restorable = tune.Tuner.can_restore(exp_dir)
        if restorable and not resume:
            raise RaytagError(
                f"a sweep named '{name}' already exists in {exp_dir}; add --resume to continue it "
                "or give --name for a new one"
            )
        resumed_record = None  # a resumed sweep's sweep.json, read once for its space and its rung metric
        if resume and restorable:
            resumed_record = started_record(exp_dir)
            space = resumed_space(exp_dir, space, space_path=space_path, name=name, data=data,
                                  samples=samples, scheduler=scheduler, settings=settings, say=say,
                                  file_error=file_error, started=resumed_record)
        else:
            if file_error is not None:  # a new sweep needs its space file
                raise _no_sweep_without_space(file_error, name, exp_dir)
            if resume:  # a resume ignores the overrides (resumed_space notes them); a new sweep checks them
                say(f"nothing to resume in {exp_dir}; starting a new sweep")
                fixed = with_search_overrides(fixed, overrides)
            space = fixed  # with the command line's --samples/--scheduler/--max-concurrent

        # "auto" -> the layout's own score; a resumed sweep keeps the metric it started with
        layout = detect_layout(data)
        space.search = dataclasses.replace(space.search, metric=resolve_metric(space.search.metric, layout, str(data)))
        rung_metric = rung_metric_for(space.search.metric, layout)
        if resumed_record is not None:  # its recorded rungs and Optuna's values are in the one it started with
            rung_metric = resumed_rung_metric(resumed_record, rung_metric, layout, say)
        if noisy_teacher is None and space.base_config().train.noisy_teacher.artifact:
            raise RaytagError("train.noisy_teacher: this caller of run_sweep gives no way to load a teacher "
                              "(noisy_teacher=); run the sweep with `raytag tune`")
        n_parallel, why = concurrency(space, space.search.max_concurrent_trials)
        if why:
            say(f"note: {why}")
        setup = TrialSetup(space=space, data=data, trials_dir=files.join(exp_dir, "trials"),
                           feature_cache=feature_cache, trial_fn=trial_fn, noisy_teacher=noisy_teacher,
                           workdir=os.getcwd(), rung_metric=rung_metric)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, setup=setup), space.resources.trial_resources()
        )
        # Save the experiment state often: a killed driver then loses at most a second of it.
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
        if resume and restorable:
            say(f"resuming sweep '{name}' from {exp_dir}")
            # errored trials too: one the storage stopped continues from its last checkpoint
            # (its pipeline resumes Ray Train's); one that failed by itself fails again at once (run_trial)
            tuner = tune.Tuner.restore(
                exp_dir, trainable=trainable, resume_unfinished=True,
                resume_errored=True, restart_errored=False,
            )
            if not set_resumed_concurrency(tuner, n_parallel):
                say(f"note: the resumed sweep runs as many trials at once as when it started "
                    f"({space.search.max_concurrent_trials})")
            # Tune does not restore the scheduler's rungs: replay the trials' recorded results into them
            for note in restore_scheduler_state(tuner, exp_dir):
                say(f"note: {note}")
        else:
            files.write_text(files.join(exp_dir, "space.yaml"), space.text)
            started = {"search": {k: getattr(space.search, k)
                                  for k in ("samples", "scheduler", "max_concurrent_trials", "metric")},
                       "settings": settings or {},  # --set: a resume compares the space file with it
                       "rung_metric": rung_metric,  # null: the layout's own; a resume keeps it
                       "data": data, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            files.write_text(files.join(exp_dir, SWEEP_RECORD), json.dumps(started, indent=1))
            s = space.search
            say(f"sweep '{name}': {s.samples} trials, {s.scheduler} scheduler, up to {n_parallel} at once, "
                f"metric {s.metric} ({s.mode}; the scheduler compares {RUNG_SCORE} at first-fold epochs, "
                f"grace {s.grace_period}); results in {exp_dir}\n{describe(space)}")
            sweep_progress = SweepProgress(space.search.metric, progress)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    # the limiter is ours (limit_concurrency), so Tune is not given max_concurrent_trials
                    search_alg=limit_concurrency(build_searcher(space, setup.trials_dir), n_parallel),
                    scheduler=build_scheduler(space),
                    num_samples=s.samples,
                    trial_dirname_creator=trial_dirname,
                    reuse_actors=reuses_trial_processes(space),
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=storage,
                    # result.json per trial even where TUNE_DISABLE_AUTO_CALLBACK_LOGGERS is set:
                    # the leaderboard and `raytag report` read it back
                    callbacks=[sweep_progress, JsonLoggerCallback(), CSVLoggerCallback(),
                               StorageWatch(exp_dir, setup.trials_dir, name), RestartKilledTrials(sweep_progress)],
                    stop=EpochBudget(s.epoch_budget) if s.epoch_budget else None,
                    # a trial whose process died starts again (its pipeline resumes its checkpoints);
                    # one that raised does not (RestartKilledTrials); Train workers: train.max_failures
                    failure_config=tune.FailureConfig(max_failures=trial_restarts(space)),
                    verbose=0,
                ),
            )
        # failed trials are recorded, not raised; a storage fault stops the sweep (StorageWatch,
        # which a resumed sweep gets back with the callbacks Tune saved), also one that a
        # trial met first and Tune ended the sweep on before the watch's next probe
        results = tuner.fit()
        stop_on_storage_fault([exp_dir, setup.trials_dir], name, [r.error for r in results])

        board = build_leaderboard(exp_dir, space)
        plot = save_report(exp_dir, board, space)
        return SweepResult(experiment_dir=exp_dir, leaderboard=board, plot_path=plot, space=space)


def _settings_in_force(space, settings: dict) -> bool:
    """Whether every `--set` value is what the stored space's trials get (its base, or its
    resources section, where `--set` of a resource key goes), a section key by key as
    `with_fixed_settings` applies it."""
    try:
        effective = space.base_config().to_dict()
        flat = flatten_settings(settings, space.source, "--set")
    except (ConfigError, SpaceError):
        return False
    for path, want in flat.items():
        node = effective
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        if node != want:
            return False
    return True


def resumed_space(exp_dir: str, space: Optional[SearchSpace], *, space_path, name: str, data: str,
                  samples: Optional[int], scheduler: Optional[str], settings: Optional[dict],
                  say: Callable[[str], None], file_error: Optional[Exception] = None,
                  started: Optional[dict] = None) -> SearchSpace:
    """The space a sweep started with (its space.yaml and sweep.json's search settings), for
    --resume; notes what of this command it ignores and what changed since the start.
    `space` is the space file as it is now (None, with `file_error`, where it cannot be
    loaded, or with --set no longer applies): it is used only for those notes. `started`:
    the sweep.json (started_record), when the caller has read it."""
    repaired = repair_state(exp_dir)  # a state file cut short by a storage fault
    if repaired:
        say(f"note: {', '.join(repaired)} was cut short when the storage failed; "
            "resuming from its last complete copy")
    stored = files.read_text(files.join(exp_dir, "space.yaml"))
    started = started if started is not None else started_record(exp_dir)
    if file_error is not None:
        say(f"note: the space file cannot be used now ({file_error}); resuming with the space the sweep "
            f"stored when it started ({files.join(exp_dir, 'space.yaml')})")
    elif space is not None and space_changed(stored, space, started.get("settings") or {}):
        say(f"note: {space_path} changed since the sweep started; resuming with the stored space")
    space = parse_space(stored, source=files.join(exp_dir, "space.yaml"), default_name=name)
    space.search = dataclasses.replace(space.search, **started["search"])
    if samples not in (None, space.search.samples) or scheduler not in (None, space.search.scheduler):
        say("note: --samples/--scheduler are fixed when a sweep starts; resuming with "
            f"samples={space.search.samples}, scheduler={space.search.scheduler}")
    if settings and not _settings_in_force(space, settings):
        say("note: --set is fixed when a sweep starts; resuming with the stored space's settings")
    if started.get("data") not in (None, data):
        # a moved copy of the same data resumes; other clips or labels are refused by each
        # trial that has checkpoints (raytag.training.run_settings), new trials use --data
        say(f"note: the sweep started on --data {started['data']}, resumed on {data}; a trial with "
            "checkpoints continues only if its clips and labels are the same")
    return space


def started_record(exp_dir: str) -> dict:
    """The sweep.json a sweep wrote when it started, for --resume; a damaged or missing one is a
    RaytagError naming it (its search settings cannot be guessed, so the sweep cannot go on as it began)."""
    action = ("--resume needs the record the sweep wrote when it started: restore the file from a copy, "
              "or start a new sweep under another --name")
    record = read_sweep_record(exp_dir, action)
    if not isinstance(record.get("search"), dict):  # {}: no file, or one without the search settings
        raise RaytagError(f"{files.join(exp_dir, SWEEP_RECORD)}: missing, or without the sweep's search "
                          f"settings; {action}")
    return record


def resumed_rung_metric(started: dict, chosen_now: Optional[str], layout: Optional[str],
                        say: Callable[[str], None]) -> Optional[str]:
    """The score a resumed sweep's trials put in rung_score: the one its sweep.json
    (`started`: started_record) records (None: the layout's own), not the one
    rung_metric_for picks today, since ASHA's replayed rungs and Optuna's intermediate
    values already hold scores in it; a sweep started before it was recorded scored rungs in
    the layout's metric, and keeps that."""
    recorded = started.get("rung_metric")
    if recorded != chosen_now:
        say(f"note: this sweep's trials score their rungs (rung_score) in {_rung_score_name(recorded, layout)} "
            f"as when it started, not in {_rung_score_name(chosen_now, layout)} as a new sweep would: the "
            "rungs and Optuna values it recorded are in that score")
    return recorded


def _rung_score_name(rung_metric: Optional[str], layout: Optional[str]) -> str:
    if rung_metric is not None:
        return rung_metric
    return layout_metric(layout) if layout is not None else "the layout's own metric"


def _no_sweep_without_space(file_error: Exception, name: str, exp_dir: str) -> Exception:
    """--resume where the space file cannot be used and there is no sweep to resume: the file's
    own error, and where the resume looked (a sweep of another name needs its --name)."""
    return SpaceError(f"{file_error}\n--resume: there is no sweep named '{name}' in {exp_dir} to resume "
                      "(its stored space would have been used); give the sweep's --name, or a space file "
                      "that loads to start a new sweep")


def _nothing_to_resume(name: str, storage: str, exp_dir: str, can_restore: Callable[[str], bool]) -> RaytagError:
    """--resume of a name with no sweep to resume: the sweeps that --storage does hold."""
    sweeps = [entry for entry in files.list_dir(storage) if can_restore(files.join(storage, entry))]
    there = f"the sweeps there: {', '.join(sweeps)}" if sweeps else "it holds no sweep"
    if files.exists(exp_dir):
        there += f"; {exp_dir} has no saved sweep state"
    return RaytagError(f"--resume: there is no sweep named '{name}' in {storage} to resume ({there}); check "
                       f"--name and --storage, or drop --resume to start a new sweep named '{name}'")


def space_changed(stored: str, space: SearchSpace, started_settings: dict) -> bool:
    """Whether the space file differs from the one a sweep started with: the stored text is
    the file's, or with `--set` (sweep.json's `settings`) the file with them fixed."""
    if stored == space.text:
        return False
    if not started_settings:
        return True
    try:
        return stored != with_fixed_settings(space, started_settings).text
    except ValueError:  # a SpaceError: the file now searches a key that --set fixed
        return True


def set_resumed_concurrency(tuner, n_parallel: int) -> bool:
    """Give a restored sweep's limiter (limit_concurrency; Tune unpickles it with the limit
    the sweep started with) the limit computed now, for this cluster; the limiter keeps it
    when fit() restores its saved state (ResumableLimiter.set_state). False where Tune's
    restored tuner does not expose it (its layout is Ray's own)."""
    tune_config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    limiter = getattr(tune_config, "search_alg", None)
    if not hasattr(limiter, "set_max_concurrency"):
        return False
    limiter.set_max_concurrency(int(n_parallel))
    return True


def restore_scheduler_state(tuner, exp_dir: str) -> list[str]:
    """Give a restored sweep's ASHA scheduler its rungs back from the results its trials
    recorded (each trial's result.json); returns notes for the user.

    Tune does not save the scheduler: Tuner.restore unpickles it from tuner.pkl, written once
    when the sweep was built (empty rungs), the TuneController leaves `_scheduler_alg` out of
    the state it saves, and restored trials are only `on_trial_add`ed. Without this, a trial
    that had passed a rung before the driver died is judged at that rung again, against the
    other restored trials alone (the second of two resumed trials could be stopped, with its
    folds untrained), and finished trials no longer set any cutoff. (The epoch budget needs
    nothing: the TuneController saves its stopper, EpochBudget with its count, in that state.)

    Replaying a trial's results in order through the bracket's own `on_result` records, at
    each rung, the score at the first result that reached it, as the live run did (a rung's
    record depends only on each trial's own results, not on the order of trials); the
    decisions it returns are ignored. The trials are those of the experiment state Tune
    resumes from (ExperimentAnalysis reads the same newest state file)."""
    from ray.tune import ExperimentAnalysis
    from ray.tune.schedulers import AsyncHyperBandScheduler, HyperBandScheduler

    scheduler = getattr(getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None), "scheduler", None)
    if isinstance(scheduler, HyperBandScheduler):
        return ["a HyperBand sweep's brackets start again from zero (HyperBand is no longer offered; "
                "new sweeps use asha)"]
    if scheduler is None:  # Ray's restored tuner is laid out otherwise than raytag knows
        return ["the scheduler's rungs start again from zero (Ray's restored tuner does not expose them)"]
    if not isinstance(scheduler, AsyncHyperBandScheduler):
        return []  # FIFO: nothing to restore
    try:
        trials = ExperimentAnalysis(exp_dir).trials
    except Exception as err:  # noqa: BLE001 - the resume goes on, as it did before this replay
        return [f"the scheduler's rungs start again from zero (the trials' results cannot be read: {err})"]
    return _replay_rungs(scheduler, {trial.trial_id: _recorded_results(exp_dir, trial) for trial in trials})


def _replay_rungs(scheduler, histories: dict[str, list[dict]]) -> list[str]:
    """Record each trial's results in the ASHA scheduler's rungs (restore_scheduler_state)."""
    from types import SimpleNamespace

    brackets = getattr(scheduler, "_brackets", None)
    time_attr, metric, op = (getattr(scheduler, k, None) for k in ("_time_attr", "_metric", "_metric_op"))
    if (not isinstance(brackets, list) or len(brackets) != 1 or None in (time_attr, metric, op)
            or not all(isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], dict)
                       for r in getattr(brackets[0], "_rungs", [None]))):
        return ["the scheduler's rungs start again from zero (Ray's ASHA scheduler is laid out "
                "otherwise than raytag knows)"]
    bracket = brackets[0]
    if any(recorded for _, recorded in bracket._rungs):
        return []  # the scheduler came back with its rungs: nothing to replay
    for trial_id, rows in histories.items():
        trial = SimpleNamespace(trial_id=trial_id)  # on_result reads only the id
        for row in rows:
            if row.get(time_attr) is not None and row.get(metric) is not None:
                bracket.on_result(trial, row[time_attr], op * float(row[metric]))
    held = {tid for _, recorded in bracket._rungs for tid in recorded}
    return [f"the scheduler's rungs hold the results of {len(held)} trials again"] if held else []


def _recorded_results(exp_dir: str, trial) -> list[dict]:
    """A trial's results in the order Tune recorded them (its result.json, one JSON object a
    line); a line cut short by a killed driver, or a missing file, gives what could be read."""
    folder = Path(str(trial.path)).name if getattr(trial, "path", None) else trial_dirname(trial)
    path = files.join(exp_dir, folder, "result.json")
    try:
        text = files.read_text(path) if files.exists(path) else ""
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _printer(enabled: bool):
    from rich.console import Console

    console = Console(stderr=True)
    return (lambda msg: console.print(msg, highlight=False)) if enabled else (lambda msg: None)


# ----------------------------------------------------------------------------- budget
try:
    from ray.tune import Stopper as _TuneStopper
except ImportError:  # pragma: no cover - ray is a dependency
    _TuneStopper = object


class EpochBudget(_TuneStopper):
    """Ends the sweep once its trials have run `epochs` training epochs in all (each
    worker report with a `step`, filter steps aside), so schedulers compare at equal compute."""

    def __init__(self, epochs: int):
        self.epochs, self.used = int(epochs), 0

    def __call__(self, trial_id, result) -> bool:
        if "step" in result and result.get("stage") != "filter":
            self.used += 1
        return False

    def stop_all(self) -> bool:
        return self.used >= self.epochs


# ----------------------------------------------------------------------------- progress
try:
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - ray is a dependency
    _TuneCallback = object


class SweepProgress(_TuneCallback):
    """One line per trial event, and the newest epoch of a running trial every 15 s (a restart
    of a trial whose process died: from RestartKilledTrials, which reads the trial's error)."""

    def __init__(self, metric: str = "cv_lwlrap", enabled: bool = True, every_s: float = 15.0):
        self.metric, self.enabled, self.every_s = metric, enabled, every_s
        self._last = 0.0
        self._done = 0

    def _say(self, msg: str):
        if self.enabled:
            from rich.console import Console

            Console(stderr=True).print(f"[{time.strftime('%H:%M:%S')}] {msg}", highlight=False)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"trial {trial.trial_id} started ({len(trials)} so far): {_short(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        where = " ".join(f"{k} {result[k]}" for k in ("stage", "fold", "epoch") if k in result)
        self._say(f"trial {trial.trial_id}: {where} {self.metric} {_fmt(result.get(self.metric))}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._done += 1
        r = trial.last_result or {}
        how = "finished" if r.get("trial_complete") else "stopped early by the scheduler"
        self._say(f"trial {trial.trial_id} {how}: {self.metric} {_fmt(r.get(self.metric))} "
                  f"[{self._done} done]")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._done += 1
        self._say(f"trial {trial.trial_id} FAILED: {error_reason(trial)} [{self._done} done]")

    def process_died(self, trial) -> None:
        """A trial's process died and Tune starts it again (another failure's restart is only a
        check: RestartKilledTrials)."""
        self._say(f"trial {trial.trial_id}: its process died; starting it again from its last checkpoint "
                  f"(restart {trial.num_failures} of {trial.max_failures})")


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _short(config: dict) -> str:
    parts = []
    for k, v in config.items():
        v = f"{v:.3g}" if isinstance(v, float) else v
        parts.append(f"{k.rsplit('.', 1)[-1]}={v}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- killed trials
def trial_process_died(trial) -> bool:
    """Whether a trial's last failure was its process dying (killed, out of memory, its node
    lost): Ray's RayActorError for the trial's own actor. What run_trial raised (the trial's own
    failure, a StorageFault) comes as a RayTaskError, also where its cause is another actor's
    error (a Train worker's). An error that cannot be read is taken as not a death."""
    from ray import cloudpickle
    from ray.exceptions import RayActorError, RayTaskError

    path = trial.pickled_error_file  # written on this machine (the driver's copy) before any callback runs
    if not path:
        return False
    try:
        with open(path, "rb") as f:
            error = cloudpickle.load(f)
    except Exception:  # noqa: BLE001 - unreadable or unpicklable here: not known to be a death
        return False
    return isinstance(error, RayActorError) and not isinstance(error, RayTaskError)


class RestartKilledTrials(_TuneCallback):
    """Tune restarts only the trials whose process died.

    Tune's FailureConfig(max_failures) starts a failed trial again while it has failed at most
    that often, whatever failed; a trial whose process died (a SIGKILL, the out-of-memory
    killer; a trial that trains in-process dies with its training) continues from its
    checkpoints when run again (the same trial folder). Tune 2.60 decides before any callback
    hears of the failure and counts every failure alike, so after any other failure (run_trial
    raised: the trial's own failure, recorded in TRIAL_FAILURE, or a StorageFault) this makes the
    restart Tune has queued the trial's last. That start costs no training: run_trial finds
    TRIAL_FAILURE and raises at once; a trial the storage stopped goes on from its checkpoint
    only where StorageWatch's probe (at the end of this step, before the restart) finds the
    storage writable again, else the sweep stops with the trial left for --resume.

    It reads the trial's error once per failure (`trial_process_died`) and tells `progress` of
    a dead process's restart."""

    # None: no progress lines; also the callback of a sweep Tune pickled before it had this attribute
    progress: Optional[SweepProgress] = None

    def __init__(self, progress: Optional[SweepProgress] = None):
        self.progress = progress

    def on_trial_recover(self, iteration, trials, trial, **info):
        if not trial_process_died(trial):
            trial.max_failures = trial.num_failures  # its next failure is its last
        elif self.progress is not None:
            self.progress.process_died(trial)


# ----------------------------------------------------------------------------- storage faults
def storage_stop(reason, name: str) -> StorageError:
    """The error a sweep stops with when its storage fails: the path, and how to go on."""
    return StorageError(
        f"{reason}\nThe sweep stopped. Free space or restore write access there, then run "
        f"the same `raytag tune ... --name {name}` with --resume: finished trials are "
        "kept and the others continue from their last checkpoint."
    )


def stop_on_storage_fault(folders: list[str], name: str, errors: list) -> None:
    """After Tune's run: a StorageError (storage_stop) when a folder of the sweep cannot be
    written, or when a trial errored with a StorageFault (run_trial's: the storage failed
    under it) even though the storage works again; nothing when every error is a trial's own."""
    for folder in folders:
        try:
            files.check_writable(folder)
        except StorageError as err:
            raise storage_stop(err, name) from None
    for error in errors:
        fault = next((e for e in files.exception_chain(error) if isinstance(e, StorageFault)), None)
        if fault is not None:
            raise storage_stop(f"a trial could not write to the storage: {fault}", name) from None


class SyncFailureOneLine(logging.Filter):
    """Ray's syncer logs a failed upload of the experiment state with its whole traceback
    ("Last sync command failed with the following error: Traceback ..."). When the storage
    fails, StorageWatch stops the sweep with one clear error, so keep only the exception's
    own line here: the user sees what failed, not Ray's stack."""

    PREFIX = "Last sync command failed"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            lines = [line.strip() for line in message.splitlines() if line.strip()]
            record.msg, record.args = f"saving the sweep's state to its storage failed: {lines[-1]}", ()
        return True


def quiet_sync_failures() -> None:
    """Install SyncFailureOneLine on Ray's syncer logger, once per process."""
    log = logging.getLogger("ray.train._internal.syncer")
    if not any(isinstance(f, SyncFailureOneLine) for f in log.filters):
        log.addFilter(SyncFailureOneLine())


class StorageWatch(_TuneCallback):
    """Stops the sweep, with a StorageError naming the path, once its storage cannot be
    written (a full disk, lost permission, a file where a folder was); while it can, keeps
    a complete copy of Tune's state (raytag.search.tune_state) for --resume.

    Without it every later trial would fail in turn and Tune would only log that the
    experiment state no longer saves. Stopping at once keeps the last saved state (the
    running trial still running, its last Train checkpoint intact), so `--resume` continues
    from there once the storage is fixed. Every `every_s` seconds a small file is written
    and removed in the experiment and trials folders."""

    def __init__(self, exp_dir: str, trials_dir: str, name: str, every_s: float = 2.0):
        self.folders, self.name, self.every_s = [exp_dir, trials_dir], name, every_s
        self.backup = StateBackup(exp_dir)
        self._last: Optional[float] = None  # None: probe at the next step

    def setup(self, **info):
        self._last = None  # a resumed sweep unpickles the watch with another process's clock

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return
        self._last = now
        try:
            for folder in self.folders:
                files.check_writable(folder)
            self.backup.update()
        except (StorageError, OSError) as err:
            reason = err if isinstance(err, StorageError) else f"cannot write to {self.folders[0]}: {err}"
            raise storage_stop(reason, self.name) from None

    def on_trial_error(self, iteration, trials, trial, **info):
        # a trial may meet a full disk before the next probe: probe at the end of this step,
        # before Tune starts another trial on the same storage (it does so in the next step)
        self._last = None

    def on_trial_recover(self, iteration, trials, trial, **info):
        # the same before Tune starts the failed trial again (RestartKilledTrials)
        self._last = None
