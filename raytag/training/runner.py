"""One trial = one pipeline run = one `TorchTrainer` worker group (driver side), or, for
one CPU worker on one machine, the same loop in this process (`train.runner`,
raytag.training.in_process).

`fit_pipeline` loads and checks the dataset, builds (or reuses) the feature store,
fixes the plan (folds, noisy subset), runs every stage on one worker group, and turns
the final checkpoint (and the run files it lists) into the trial outputs that search and
ensemble read (docs/ARCHITECTURE.md, "Trial outputs")."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd

from raytag import storage as files  # local folder or URI through pyarrow.fs
from raytag.cluster import materialize_data  # a dataset URI is copied to this node once
from raytag.config import Config, ConfigError
from raytag.data.layouts import load_dataset
from raytag.errors import RaytagError, StorageError
from raytag.features.store import build_feature_store, default_feature_cache
from raytag.models.registry import check_run_models
from raytag.session import ensure_ray, in_local_session
from raytag.training.checkpoint import check_legacy_checkpoints
from raytag.training.in_process import fit_in_process, has_worker_group_checkpoints, local_checkpoints
from raytag.training.outputs import OUTPUTS_DIR, write_metrics, write_outputs
from raytag.training.plan import build_plan, model_folds
from raytag.training.progress import EpochEvent, epoch_events
from raytag.training.run_settings import check_run_settings
from raytag.training.run_state import RUN_FILES, RunState
from raytag.training.rungs import resolve_rung_metric
from raytag.training.steps import build_steps
from raytag.training.worker import train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    run_dir: str
    outputs_dir: str
    metrics: dict
    stages: pd.DataFrame


def prepare_data(cfg: Config, data, feature_cache: Optional[str], progress: bool):
    """Dataset + feature store + plan, in that order (each reused from cache where it can)."""
    cache = feature_cache or default_feature_cache()
    dataset = load_dataset(materialize_data(data, progress=progress), sample_rate=cfg.features.sample_rate,
                           features=cfg.features)
    store = build_feature_store(dataset, cfg.features, cache, progress=progress)
    plan = build_plan(cfg, dataset, store, data_ref=str(data), feature_cache=cache)
    plan.features_id = store.identity(plan.curated_ids + plan.noisy_ids + plan.test_ids)  # run_settings' plan.features
    return dataset, store, plan


def _trainer_class(torch_trainer):
    """TorchTrainer without Ray Data's callback: raytag reads its own feature store, and
    that callback starts a DatasetManager actor (one more process, importing Ray Data)
    per fit and sends Ray Data's context to every worker, on the start-up path of every
    trial. The hook is checked by tests/test_runner_startup.py for this pinned Ray."""
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    class Trainer(torch_trainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return Trainer


def fit_pipeline(
    cfg: Config,
    data,
    storage: str,
    name: str,
    callbacks: Sequence = (),
    feature_cache: Optional[str] = None,
    progress: bool = True,
    on_epoch: Optional[Callable[[EpochEvent], None]] = None,
    noisy_teacher: Optional[Callable] = None,
    rung_metric: Optional[str] = None,
) -> PipelineResult:
    """`on_epoch`, when given, is called on the driver after every training epoch with
    its `EpochEvent` (stage, fold, loss, held-out lwlrap, seconds, time left), from a
    thread of its own while the worker group trains (raytag.training.progress).
    `noisy_teacher(cfg, plan, dataset, cache_root, progress=)` -> (targets by fold, teacher
    identity) makes train.noisy_teacher's targets (raytag.ensemble.noisy_teacher's
    noisy_teacher_targets, which lives above this package; the commands pass it).
    `rung_metric` ("lwlrap" or "map3") is the held-out score the reports' `rung_score` is in
    (a sweep's search metric, raytag.training.rungs); None: the layout's own."""
    if cfg.members:
        raise ConfigError("members: a pipeline run trains one model family; `raytag train` trains each member "
                          "(raytag.ensemble.members), and a sweep searches model.name, whose trials "
                          "`raytag ensemble` combines")
    started = time.time()
    storage = files.absolute(storage)
    run_dir = files.join(storage, name)
    check_legacy_checkpoints(run_dir)  # before any worker could load one
    run_files = files.join(run_dir, RUN_FILES)
    steps = build_steps(cfg, model_folds(cfg))  # a pipeline that cannot run is refused here, not in a worker
    check_run_models(cfg)  # likewise a model setting
    with run_folder(run_dir, name):  # one process writes a run folder at a time
        # the store first: before Ray runs in this process, its build may fork worker processes
        dataset, store, plan = prepare_data(cfg, data, feature_cache, progress)
        plan.rung_metric = resolve_rung_metric(plan.layout, rung_metric)  # refused here, not in a worker
        if cfg.train.noisy_teacher.artifact:
            if noisy_teacher is None:
                raise ConfigError("train.noisy_teacher: this caller of fit_pipeline gives no way to load a teacher "
                                  "(noisy_teacher=); run it with `raytag train` or `raytag tune`")
            plan.noisy_targets, plan.noisy_teacher_id = noisy_teacher(cfg, plan, dataset, plan.feature_cache,
                                                                      progress=progress)
        cfg = check_run_settings(run_dir, cfg, plan)  # a rerun of the name resumes only the same run, on the same clips
        ensure_ray()

        watch = (epoch_events(on_epoch, steps, cfg.cv.n_folds) if on_epoch
                 else nullcontext([]))
        in_process = runs_in_process(cfg, run_dir)
        with watch as epoch_callbacks, surfacing_user_errors():
            if in_process:
                result = fit_in_process(_loop_config(plan, run_files), run_dir, [*callbacks, *epoch_callbacks],
                                        cfg.train.max_failures)
            else:
                result = _fit_worker_group(cfg, plan, storage, name, run_files, [*callbacks, *epoch_callbacks])
        if result.checkpoint is None:
            raise RaytagError(f"run {name} ended without a checkpoint: {result.error}")
        with result.checkpoint.as_directory() as ckpt, tempfile.TemporaryDirectory() as work, \
                tempfile.TemporaryDirectory() as staging:
            state, _ = RunState.restore(Path(ckpt), Path(work), run_files)  # the run files it lists
            metrics, stages = write_outputs(state.out, Path(staging), plan, dataset, store,
                                            history=state.progress["history"])
            metrics["seconds"] = round(time.time() - started, 1)
            metrics["precision"] = state.progress.get("precision", "fp32")  # train.precision as resolved
            metrics["runner"] = "in_process" if in_process else "ray_train"
            write_metrics(Path(staging), metrics)
            outputs_dir = files.join(run_dir, OUTPUTS_DIR)
            files.copy_tree(staging, outputs_dir)  # a local folder or a URI (pyarrow.fs)
    return PipelineResult(run_dir=run_dir, outputs_dir=outputs_dir, metrics=metrics, stages=stages)


@contextmanager
def run_folder(run_dir: str, name: str, *, what: Optional[str] = None, clear_hint: Optional[str] = None):
    """The run folder's lock (run_folder_lock, whose LockHeld wording `what` and `clear_hint`
    replace for a job that is not a train run) for the block; and a run folder this call
    made, left with nothing in it by a run that failed (a dataset or a noisy teacher that did not
    load), is removed, lock and all, before the lock would be released: it would only clutter
    the storage and read as a run to `raytag list` or a later resume. A folder that was there
    before, or that holds anything (checkpoints, run settings), is kept. The error passes unchanged."""
    made_here = not _run_folder_exists(run_dir, _job(run_dir, name, what))
    with run_folder_lock(run_dir, name, what=what, clear_hint=clear_hint):
        try:
            yield
        except BaseException:
            if made_here:
                _remove_if_unused(run_dir)
            raise


def _job(run_dir: str, name: str, what: Optional[str]) -> str:
    """How errors about this run folder name the job: `what`, else a train run's wording."""
    return what or f"run '{name}' ({run_dir})"


def _run_folder_exists(run_dir: str, job: str) -> bool:
    """Whether run_dir is there already. The first access to the run's storage: one that cannot
    be read (a URI's credentials or endpoint, a parent folder without permission) is a
    StorageError naming the job (`job`: _job), as its lock would give, not pyarrow's raw OSError."""
    try:
        return files.exists(run_dir)
    except OSError as err:
        raise StorageError(
            f"{job}: cannot read its storage: {err}. Check that the storage path "
            "can be read and written by this user, or for a URI its credentials and endpoint"
        ) from err


def _remove_if_unused(run_dir: str) -> None:
    """Remove run_dir if it holds no file but this run's lock; only warn where that fails,
    so the run's own error is the one raised."""
    try:
        if files.is_dir(run_dir) and set(files.list_files(run_dir)) <= {files.LOCK_NAME}:
            files.remove_tree(run_dir)
    except (OSError, RaytagError) as err:
        log.warning("could not remove the unused run folder %s: %s", run_dir, err)


def run_folder_lock(run_dir: str, name: str, *, what: Optional[str] = None, clear_hint: Optional[str] = None):
    """The run folder's lock (storage.folder_lock), held while a run trains and writes its
    outputs: a second `raytag train` of the same name and storage (another terminal, a
    script rerun) is refused (LockHeld) rather than training into the same folder, where both
    would number, persist and resume from each other's checkpoints and run files. A lock left
    by a killed run is taken over on this host. Each folder has its own lock file, so a
    members run (each member its own folder under members/) nests nothing.

    Not in a Tune trial: its sweep already holds the lock of the experiment folder the trial
    folders are in, and Tune runs each trial once at a time; a trial's own lock would outlive
    a lost node, and the trial, resumed on another host, would fail on it for good.

    `what` names the job in a LockHeld ("run '<name>' (<folder>)"), `clear_hint` says what to
    run once a dead holder's lock is deleted (" and rerun to resume the run")."""
    if _in_tune_trial():
        return nullcontext()
    return files.folder_lock(run_dir, _job(run_dir, name, what),
                             clear_hint=" and rerun to resume the run" if clear_hint is None else clear_hint)


def _in_tune_trial() -> bool:
    if "ray.tune" not in sys.modules:  # not imported: no trial in this process (and no import for `raytag train`)
        return False
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    return bool(_in_tune_session())


@contextmanager
def surfacing_user_errors():
    """Re-raise the RaytagError behind a failed fit (a worker's diverged loss, bad checkpoint...),
    which Ray Train wraps in its WorkerGroupError: the CLI then prints its one line, not Ray's
    traceback. Other failures pass unchanged."""
    try:
        yield
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or user_error is err:
            raise
        raise user_error  # err stays in its chain (__context__), for storage_fault and tracebacks


def find_user_error(err: BaseException) -> Optional[RaytagError]:
    """The first RaytagError in err's chain, as raised (not Ray's RayTaskError copy of it,
    whose message is the remote traceback)."""
    from ray.exceptions import RayError

    return next((e for e in files.exception_chain(err)
                 if isinstance(e, RaytagError) and not isinstance(e, RayError)), None)


def runs_in_process(cfg: Config, run_dir: str) -> bool:
    """Whether the run trains in this process (raytag.training.in_process) rather than on a
    Ray Train worker group (`train.runner`). `auto`: in-process for one CPU worker on a
    local one-node Ray session (not a joined cluster) with a local run folder, unless the
    run was started on a worker group (its checkpoints are Ray Train's: it resumes where it
    began)."""
    import ray

    t = cfg.train
    local = not files.is_uri(run_dir)
    began_in_group = local and has_worker_group_checkpoints(run_dir)
    began_here = local and bool(local_checkpoints(run_dir))
    if t.runner == "ray_train":
        if began_here:
            raise ConfigError(f"train.runner: ray_train, but run {run_dir} began in-process and its checkpoints "
                              "are there; rerun it with train.runner: auto (or in_process) to resume it, or "
                              "give the run another name")
        return False
    fits = t.num_workers == 1 and not t.use_gpu and local
    if t.runner == "in_process":
        if not fits:
            raise ConfigError("train.runner: in_process runs one CPU worker on a local run folder; set "
                              f"train.num_workers: 1 and use_gpu: false (now {t.num_workers} and {t.use_gpu}), "
                              "a local storage folder, or train.runner: auto")
        if began_in_group:
            raise ConfigError(f"train.runner: in_process, but run {run_dir} began on a Ray Train worker group and "
                              "its checkpoints are Ray Train's; rerun it with train.runner: auto (or ray_train) "
                              "to resume it, or give the run another name")
        return True
    if began_here or began_in_group:
        if began_here and not fits:
            _warn_resumes_in_process(run_dir, t)
        return began_here
    # a local session only: a joined cluster may be one head node now, and grow
    return fits and in_local_session() and len([n for n in ray.nodes() if n.get("Alive")]) == 1


def _warn_resumes_in_process(run_dir: str, t) -> None:
    """A run that began in-process resumes there (its checkpoints are not Ray Train's), so
    settings asking for a worker group now would be silently ignored: say so."""
    log.warning("run %s began in-process on one CPU worker and resumes there as it began: train.num_workers "
                "%s and use_gpu %s apply to a new run only; give it another --name to train with them",
                run_dir, t.num_workers, t.use_gpu)


def _loop_config(plan, run_files: str) -> dict:
    # RAYTAG_TRACE and RAYTAG_FAIL_ONCE (test hooks) travel in the config: workers do not see
    # driver env changes
    return {"plan": plan, "run_files": run_files, "trace": os.environ.get("RAYTAG_TRACE"),
            "fail_once": os.environ.get("RAYTAG_FAIL_ONCE")}


def _fit_worker_group(cfg: Config, plan, storage: str, name: str, run_files: str, callbacks: list):
    """One TorchTrainer over every step of the plan; its ray.train.Result."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    trainer = _trainer_class(TorchTrainer)(
        train_loop_per_worker,
        train_loop_config=_loop_config(plan, run_files),
        torch_config=TorchConfig(backend=None if t.ddp_backend == "auto" else t.ddp_backend),
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    return trainer.fit()
