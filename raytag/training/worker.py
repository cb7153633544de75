"""`train_loop_per_worker`: every stage of one pipeline run on one Ray Train worker group.

Starting a worker group costs ~20 s here, so one group runs all steps (steps.py) in
order. Every epoch ends with `ray.train.report`; every `train.checkpoint_every` epochs, at
the end of every step and after every filter step, rank 0 adds a checkpoint: progress
(step, epoch), model, optimizer, scheduler and RNG states (safetensors + JSON, never a
pickle: checkpoint.py), and the list of the run files it relies on. The run files
themselves (predictions, fold weights, filter decisions) are written once to
`<run_dir>/run_files/` when first checkpointed (run_state.py), not into every checkpoint.
A restarted group (FailureConfig) or a rerun with the same name and storage loads the
latest checkpoint and continues at the next epoch of the same step.

This module is the loop; the run state and the context each step sees are in
run_state.py, the filter, pseudo-label and fold-start steps in stage_steps.py, and the
epoch with its evaluation in epoch.py.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from raytag.cluster import materialize_data
from raytag.data.layouts import load_dataset
from raytag.errors import DatasetError, StorageError
from raytag.features.locking import exclusive_lock
from raytag.features.store import FeatureStore, build_feature_store, default_feature_cache
from raytag.metrics import layout_metric
from raytag.models import build_model
from raytag.training.averaging import WeightAverage
from raytag.training.checkpoint import capture_rng, restore_rng
from raytag.training.dataset import CropBatches
from raytag.training.epoch import (
    build_optimizer, cv_so_far, dropout_seed, evaluate, resume_optimizer, train_epoch,
)
from raytag.training.losses import build_loss, small_loss_keep
from raytag.training.profiling import profiled, wants_profile
from raytag.training.rungs import RUNG_SCORE, resolve_rung_metric, rung_metrics
from raytag.training.run_state import RunState, _Context, _unwrap
from raytag.training.stage_steps import _run_filter, _start_step, finish_fold_early, stage2_adds_nothing, start_fold
from raytag.training.steps import Step, build_steps, last_training_step_of_fold

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- what the loop asks of Ray Train
class RayTrainWorker:
    """The loop's view of its Ray Train worker: rank, device, DDP, the checkpoint to resume
    from, and reports. `raytag.training.in_process.InProcessWorker` is the same for a run
    without a worker group (one CPU worker in the caller's process)."""

    def world(self) -> tuple[int, int]:
        import ray.train

        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size()

    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # DDP when the group has more than one worker

    def checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, row: dict, checkpoint_dir: Path | None = None) -> None:
        import ray.train

        ray.train.report(row, checkpoint=None if checkpoint_dir is None
                         else ray.train.Checkpoint.from_directory(checkpoint_dir))


# ----------------------------------------------------------------------------- checkpoints and tracing
def _fail_once(spec: str | None, global_step: int, rank: int):
    """Test hook: RAYTAG_FAIL_ONCE=<global step>:<marker file> makes rank 0 fail once at the
    start of that epoch (the marker records that it did), so FailureConfig restarts the group."""
    if not spec:
        return
    at, marker = spec.split(":", 1)
    if int(at) == global_step and rank == 0 and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        raise RuntimeError(f"RAYTAG_FAIL_ONCE: injected failure at the start of epoch {global_step}")


def _trace(event: dict):
    """Test hook: RAYTAG_TRACE=<file> appends one JSON line per event (pid, rank, step...)."""
    path = os.environ.get("RAYTAG_TRACE")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "time": time.time(), **event}) + "\n")


# How long a worker building its node's store waits for another builder of that store (a
# trial's driver on this node, with trials_on_head false) before building beside it: that
# builder's Ray tasks may be waiting for the CPUs this worker's placement group holds.
NODE_STORE_LOCK_WAIT_S = 60.0


def open_node_store(plan):
    """The feature store on this node: the driver's, or (a worker on another node of a
    cluster, where that path does not exist) one built here from the data reference.
    Workers of one node take a file lock so that only one of them builds it."""
    if (Path(plan.store_path) / "meta.json").exists():
        return FeatureStore.open(plan.store_path)
    cache = Path(plan.feature_cache or default_feature_cache())
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create the feature cache {cache} on this node ({err.strerror or err}): give "
                           "--feature-cache a folder that every node can create and write") from None
    with exclusive_lock(cache / ".build.lock", waiting=f"{cache}: another worker of this node is building "
                                                        "its feature store; waiting for it"):
        dataset = load_dataset(materialize_data(plan.data_ref), sample_rate=plan.config.features.sample_rate,
                               features=plan.config.features)
        # in this process: Ray tasks for the shards would each need a free CPU on this node,
        # and where the workers' placement groups hold every CPU (one GPU trial per small
        # node) none would ever start, the other trial's worker waiting on the lock meanwhile
        store = build_feature_store(dataset, plan.config.features, str(cache), progress=False, workers=1,
                                    lock_wait_s=NODE_STORE_LOCK_WAIT_S)
    missing = set(plan.curated_ids + plan.noisy_ids + plan.test_ids) - set(store.clip_ids)
    if missing:
        raise DatasetError(f"this node's feature store lacks {len(missing)} clips of the plan "
                           f"(e.g. {sorted(missing)[:3]}): the data at {plan.data_ref} differs between nodes; "
                           "give every node the same dataset (or a data URI each node copies)")
    return store



# ----------------------------------------------------------------------------- the loop
def train_loop_per_worker(loop_config: dict):
    """The function a Ray Train worker runs."""
    run_loop(loop_config, RayTrainWorker())


def run_loop(loop_config: dict, worker) -> None:
    """Every step of the plan on `worker` (RayTrainWorker, or in_process.InProcessWorker)."""
    rank, _ = worker.world()
    # the attempt's run state (weights, predictions) until they are checkpointed: removed however
    # the attempt ends, since a restart or rerun resumes from the persisted checkpoint, not from here
    work = Path(tempfile.mkdtemp(prefix=f"raytag-rank{rank}-"))
    try:
        _run_steps(loop_config, worker, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_steps(loop_config: dict, worker, work: Path) -> None:
    plan = loop_config["plan"]
    if loop_config.get("trace"):
        os.environ["RAYTAG_TRACE"] = loop_config["trace"]
    cfg = plan.config
    torch.set_num_threads(max(1, cfg.train.torch_threads))
    rank, world = worker.world()
    _trace({"event": "worker_start", "rank": rank})
    device = worker.device()
    store = open_node_store(plan)
    steps = build_steps(cfg, plan.model_folds)
    final_step_of_fold = last_training_step_of_fold(steps)

    ckpt = worker.checkpoint()
    train_state = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state, train_state = RunState.restore(Path(d), work, loop_config["run_files"])
        _trace({"event": "resume", "rank": rank, **{k: state.progress[k] for k in ("step", "epoch", "global_step")}})
    else:
        state = RunState(work, loop_config["run_files"])

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, plan.n_classes, plan.channels, plan.bins)
    loss_fn = build_loss(cfg.train.loss)
    ctx = _Context(plan, cfg, store, rank, world, device, state, n_steps=len(steps))
    state.progress["precision"] = ctx.precision  # what train.precision resolved to on this hardware
    _trace({"event": "precision", "rank": rank, "precision": ctx.precision})

    # The model object lives for the whole run; DDP wraps it once.
    model = worker.prepare_model(model)
    if train_state is not None:
        _unwrap(model).load_state_dict(train_state["model"])
        restore_rng(train_state["rng"])
    _trace({"event": "model_ready", "rank": rank})

    optimizer = scheduler = average = None
    step_built = None  # index of the step the optimizer belongs to
    while state.progress["step"] < len(steps):
        i = state.progress["step"]
        step = steps[i]
        if step.kind == "filter":
            start_fold(ctx, model, step, steps)  # stage 1 off: the filter is the fold's first step
            _run_filter(ctx, model, step)
            state.progress["step"] += 1
            state.progress["epoch"] = 0
            _report(worker, ctx, model, optimizer, scheduler, steps, step, {"train_loss": float("nan")},
                    checkpoint=True)
            continue

        epoch = state.progress["epoch"]
        if epoch == 0 and step_built != i:
            _start_step(ctx, model, step, steps)  # fresh fold weights, pseudo set...
            if stage2_adds_nothing(ctx, step, steps):
                # no noisy clip accepted, none soft-labelled and no pseudo-labels: the round would only
                # train on stage 1's curated clips again, so it is skipped; the fold's last one ends
                # the fold with the model it has (stage 1's, or the last round's that trained)
                log.warning("fold %s %s: nothing beyond the curated clips to train on (no noisy clip "
                            "accepted or soft-labelled, no pseudo labels); skipped", step.fold, step.stage_name)
                if i == final_step_of_fold[step.fold]:
                    finish_fold_early(ctx, model, step, steps)
                state.progress["step"] += 1
                _report(worker, ctx, model, optimizer, scheduler, steps, step, {"train_loss": float("nan")},
                        checkpoint=True)
                continue
        data = ctx.training_set(step)
        # train.batch_size is the global batch: each worker takes its share
        batches = CropBatches(store, data, cfg.crop_frames(), -(-cfg.train.batch_size // world))
        if step_built != i:
            optimizer, scheduler = build_optimizer(cfg, model, step, batches.steps_per_epoch(world))
            average = WeightAverage(cfg.train.average_last, step.epochs)
            if train_state is not None and train_state.get("step") == i and train_state.get("optimizer"):
                # the step's share trained: another worker count may build a schedule the
                # checkpoint lacks, or none where it had one (resume_optimizer)
                resume_optimizer(optimizer, scheduler, train_state["optimizer"], train_state.get("scheduler"),
                                 done=epoch / step.epochs)
                average.restore(train_state.get("average"))
            train_state = None
            step_built = i

        _trace({"event": "epoch_start", "rank": rank, "step": i, "epoch": epoch,
                "global_step": state.progress["global_step"], "stage": step.stage_name})
        _fail_once(loop_config.get("fail_once"), state.progress["global_step"], rank)
        seed = int(cfg.seed * 1_000_003 + state.progress["global_step"])
        # dropout: each rank its own masks, the same on a resume (epoch.dropout_seed)
        torch.manual_seed(dropout_seed(cfg.seed, state.progress["global_step"], rank))
        profiling = (profiled(state.out / "profile", cfg.train.profile_epoch, device)
                     if wants_profile(cfg.train.profile_epoch, state.progress["global_step"], rank) else nullcontext())
        with profiling:
            loss = train_epoch(ctx, model, optimizer, scheduler, loss_fn, batches, seed, step,
                                keep=small_loss_keep(cfg.train.loss, epoch))
        _trace({"event": "train_done", "rank": rank})

        state.progress["epoch"] += 1
        state.progress["global_step"] += 1
        finished_step = state.progress["epoch"] >= step.epochs
        if average.wants(state.progress["epoch"]):
            average.add(_unwrap(model))
        if finished_step:  # the step's model is the mean of its last epochs' weights
            average.load_into(_unwrap(model))
        metrics = {"train_loss": loss, "step_epoch": epoch + 1}
        metrics.update(evaluate(ctx, model, step, final=finished_step,
                                 is_fold_final=final_step_of_fold.get(step.fold) == i))
        _trace({"event": "eval_done", "rank": rank})
        # a step's end always checkpoints: its predictions and weights are made then
        due = finished_step or state.progress["epoch"] % cfg.train.checkpoint_every == 0
        if finished_step:
            state.progress["step"] += 1
            state.progress["epoch"] = 0
        _report(worker, ctx, model, optimizer, scheduler, steps, step, metrics, checkpoint=due, average=average)
        _trace({"event": "report_done", "rank": rank})


def _report(worker, ctx: _Context, model, optimizer, scheduler, steps: list[Step], step: Step, metrics: dict,
            checkpoint: bool, average: WeightAverage | None = None):
    """Report one epoch (or filter step) to Ray Train, with a checkpoint from rank 0.

    Every report carries the same keys, so schedulers never see a missing or NaN metric:
    `val_*` and `cv_*` (lwlrap; map3 too on the 2018 layout), the scheduler's yardstick
    `rung_epoch` / `rung_score` (raytag.training.rungs; the score in the plan's rung metric),
    and where the run is for the driver's epoch lines (raytag.training.progress):
    `step_index`, `step_epoch` (1-based epoch of the step just trained; 0 on a row that
    trained nothing), `step_epochs` and `wall_seconds` (since the previous report: the
    epoch's training, evaluation and checkpoint, or the filter step)."""
    progress = ctx.state.progress
    now = time.monotonic()
    wall, ctx.report_mark = now - ctx.report_mark, now
    history = progress["history"]  # rank 0 only; other ranks' reports are not forwarded to Tune
    done = progress["step"] >= ctx.n_steps
    metric = layout_metric(ctx.plan.layout)
    if "cv_lwlrap" not in metrics:  # a filter step: carry the last validation scores
        for key in dict.fromkeys(["val_lwlrap", f"val_{metric}"]):
            metrics[key] = next((r[key] for r in reversed(history)
                                 if np.isfinite(r.get(key, float("nan")))), 0.0)
        last_val = {k[len("val_"):]: v for k, v in metrics.items() if k.startswith("val_")}
        metrics.update({f"cv_{k}": v for k, v in (cv_so_far(ctx) or last_val).items()})
        score = None
    else:
        score = metrics[f"val_{resolve_rung_metric(ctx.plan.layout, ctx.plan.rung_metric)}"]
    last_rung = history[-1].get(RUNG_SCORE, 0.0) if history else 0.0
    metrics.update(rung_metrics(steps, progress["step"], progress["epoch"], step, score, last_rung))
    row = {"step": progress["global_step"], "stage": step.stage_name,
           "fold": -1 if step.fold is None else step.fold, "round": step.round,
           # not "done": Tune reserves that key and would end the trial before its outputs are collected
           "epoch": progress["epoch"], "pipeline_done": int(done),
           "step_index": steps.index(step), "step_epochs": step.epochs, "step_epoch": 0,
           "wall_seconds": round(wall, 3), **metrics}
    if ctx.rank == 0:
        progress["history"].append(row)
    if not checkpoint or ctx.rank != 0:
        worker.report(row)
        return
    with tempfile.TemporaryDirectory() as tmp:
        mid_step = bool(progress["epoch"])  # at a step's end the next step builds a new optimizer
        train_state = {
            "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None and mid_step else None,
            "scheduler": scheduler.state_dict() if scheduler is not None and mid_step else None,
            "step": progress["step"] if mid_step else None,  # mid-step: optimizer resumes
            # inside a step's averaging window: the running sum of its last epochs' weights
            "average": average.state() if average is not None and mid_step else None,
            "rng": capture_rng(),
        }
        started = time.perf_counter()
        written = ctx.state.write_checkpoint(train_state, Path(tmp))
        worker.report(row, Path(tmp))
        _trace({"event": "checkpoint", "rank": ctx.rank, "global_step": progress["global_step"],
                "seconds": time.perf_counter() - started, **{f"bytes_{k}": v for k, v in written.items()}})

