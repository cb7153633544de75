"""One training epoch of a step, and the evaluation after it: the optimizer and
schedule of a step, the epoch over random crops (augmentation, mixup, loss), and the
held-out scores (lwlrap; MAP@3 too on the 2018 layout), with a finished step's
predictions and fold weights saved."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from raytag.errors import TrainingDiverged
from raytag.metrics import layout_metric, layout_scores
from raytag.training.augment import gain_pattern, mixup, random_gain_shift, spec_augment
from raytag.training.dataset import CropBatches
from raytag.training.precision import training_autocast
from raytag.training.profiling import phase
from raytag.training.run_state import _Context
from raytag.training.steps import Step


def build_optimizer(cfg, model, step: Step, steps_per_epoch: int):
    lr = cfg.train.lr if step.lr is None else step.lr  # a stage lr of 0 is refused by the config, not replaced
    params = model.parameters()
    if cfg.train.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.train.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.train.weight_decay, nesterov=True)
    total = max(1, step.epochs * steps_per_epoch)
    if cfg.train.scheduler == "onecycle" and total >= 4:
        # the warm-up phase needs at least 2 optimizer steps (OneCycleLR divides by its length)
        pct = min(0.5, max(cfg.train.onecycle_pct, 2.0 / total))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=pct)
    elif cfg.train.scheduler == "onecycle":
        sched = None  # too few steps for a cycle: constant learning rate
    elif cfg.train.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        sched = None
    return opt, sched


def _schedule_length(x: dict) -> int:
    """The number of optimizer steps of a schedule (its state_dict, or vars() of one)."""
    return int(x["total_steps"] if "total_steps" in x else x["T_max"])


def load_schedule(scheduler, saved: dict) -> None:
    """Continue a checkpoint's learning-rate schedule. A resume with another number of
    workers (train.num_workers may change between attempts) has another number of steps per
    epoch, so the saved schedule's length differs from the new one's: it then goes on at the
    same fraction of its length (checkpoints fall on epoch boundaries, so that is the same
    epoch), where loading the old state would overrun OneCycleLR's total or stop annealing short."""
    new_length = _schedule_length(vars(scheduler))
    if _schedule_length(saved) == new_length:
        scheduler.load_state_dict(saved)
        return
    scheduler.last_epoch = round(int(saved["last_epoch"]) * new_length / _schedule_length(saved))
    scheduler._step_count = scheduler.last_epoch + 1  # as step() keeps it (torch warns on 0)
    # the optimizer's learning rate, loaded from the same checkpoint, is already this fraction's


_MOMENTUM_KEYS = ("betas", "momentum")  # what OneCycleLR's cycle_momentum moves


def resume_optimizer(optimizer, scheduler, saved: dict, saved_schedule: dict | None, done: float) -> None:
    """Continue a checkpoint's optimizer, and its schedule, in the middle of a step; `done` is
    the share of the step's epochs trained. A resume with another number of workers has
    another number of optimizer steps, so it can cross build_optimizer's 4-step threshold for
    OneCycleLR either way:

    - saved without a schedule (too few steps then), built with one now: the checkpoint's
      param groups lack the keys OneCycleLR keeps in them (initial_lr, max_lr, min_lr, the
      momentum bounds), and its first step() raised KeyError 'initial_lr'. The fresh groups'
      keys are put back, and the schedule starts at `done` of its length, with its learning
      rate (and momentum) there, as a run with these workers had all along;
    - saved with a schedule, built without one now: the constant learning rate (and
      momentum) of the fresh optimizer, not the cycle's value where the checkpoint fell.

    Otherwise as before: the optimizer's state, and the schedule through load_schedule."""
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    if scheduler is None:
        if saved_schedule:
            for group, new in zip(optimizer.param_groups, fresh):
                for key in ("lr", *_MOMENTUM_KEYS):
                    if key in new:
                        group[key] = new[key]
        return
    for group, new in zip(optimizer.param_groups, fresh):
        for key, value in new.items():
            group.setdefault(key, value)
    if saved_schedule:
        load_schedule(scheduler, saved_schedule)
        return
    # no schedule saved: step it once from just before `done` of its length, so that its
    # learning rate (and OneCycleLR's momentum) are set for there (OneCycleLR's get_lr is in
    # closed form); _step_count as step() keeps it, so it sees no first call before optimizer.step()
    at = round(done * _schedule_length(vars(scheduler)))
    if at > 0:
        scheduler.last_epoch = at - 1
        scheduler._step_count = at
        scheduler.step()


def epoch_generator(seed: int, rank: int) -> torch.Generator:
    """The rank's generator for an epoch's augmentation. torch takes seeds in [-2**63, 2**64)
    and reduces them modulo 2**64 itself, so reducing here changes no seed it accepted (runs
    and benchmark figures reproduce) and keeps a large cfg.seed (>= ~2.3e9, times the
    worker's 1_000_003 and 7919) from overflowing."""
    return torch.Generator().manual_seed((seed * 7919 + rank) % 2**64)


def dropout_seed(cfg_seed: int, global_step: int, rank: int) -> int:
    """The seed of torch's global generators (CPU and CUDA: dropout draws from them) for a
    rank's training epoch: a stable 64-bit hash (SHA-256, not Python's salted hash()) of
    ("dropout", cfg.seed, the run's global step, the rank). Every DDP rank draws its own
    masks, as it draws its own augmentation, from a stream kept apart from that of its
    augmentation generator (epoch_generator); and an epoch draws the same masks whether the
    run got there in one go or resumed from a checkpoint (which holds rank 0's RNG states only)."""
    digest = hashlib.sha256(f"dropout:{int(cfg_seed)}:{int(global_step)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def train_epoch(ctx: _Context, model, optimizer, scheduler, loss_fn, batches: CropBatches, seed, step,
                 keep: float = 1.0) -> float:
    cfg = ctx.cfg
    gen = epoch_generator(seed, ctx.rank)
    mean = torch.tensor(ctx.plan.norm_mean, dtype=torch.float32)[..., None]
    std = torch.tensor(np.maximum(ctx.plan.norm_std, 1e-5), dtype=torch.float32)[..., None]
    is_log = cfg.features.kind != "raw"
    pattern = gain_pattern(cfg.features)  # how each stored value moves per dB of gain
    model.train()
    total, count = 0.0, 0
    crops = batches.epoch(seed, ctx.rank, ctx.world)
    while True:  # the phases are named for train.profile_epoch (raytag.training.profiling)
        with phase("raytag.batch"):
            batch = next(crops, None)
            if batch is None:
                break
            x, y, noisy = batch
            x = random_gain_shift(x, cfg.train.augment, gen, is_log=is_log, pattern=pattern)
            x = (x - mean) / std
            if cfg.train.specaugment.enabled and is_log:
                x = spec_augment(x, cfg.train.specaugment, gen)
            # the noisy share is mixed like the targets, so a mixed clip's loss and weight blend too
            x, y, noisy, _ = mixup(x, y, noisy.float(), cfg.train.mixup.alpha, cfg.train.mixup.prob, gen)
            x, y, noisy = x.to(ctx.device), y.to(ctx.device), noisy.to(ctx.device)
        with phase("raytag.forward"):
            with training_autocast(ctx.precision, ctx.device):  # train.precision; the loss stays float32
                logits = model(x)
            loss = loss_fn(logits.float(), y, noisy, keep=keep)
        with phase("raytag.wait"):  # on a GPU: the host waits here for the device's queued work
            finite = bool(torch.isfinite(loss))
        if not finite:
            raise TrainingDiverged(
                f"loss became {loss.item()} in stage {step.stage_name} (fold {step.fold}): "
                f"lower train.lr (now {step.lr or cfg.train.lr}) or check the features"
            )
        with phase("raytag.backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with phase("raytag.optimizer"):
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        total += float(loss.detach()) * len(x)
        count += len(x)
    return total / max(count, 1)


def evaluate(ctx: _Context, model, step: Step, final: bool, is_fold_final: bool) -> dict:
    """Held-out scores every epoch (`val_*`, and `cv_*` of the folds done so far, see
    cv_so_far); at the end of a step, save its held-out and test predictions."""
    held = ctx.curated(step.fold, held_out=True)
    probs = ctx.predict(model, held.clip_ids)
    scores = _scores(ctx, held.targets, probs) if len(held) else dict.fromkeys(_score_names(ctx), float("nan"))
    val = scores["lwlrap"]
    if final:
        tag = step.stage_name if step.fold is None else f"{step.stage_name}__fold{step.fold}"
        if ctx.rank == 0:
            ctx.state.save_preds(f"oof/{tag}", held.clip_ids, probs)
        test = ctx.predict(model, ctx.plan.test_ids) if ctx.plan.test_ids else np.zeros((0, ctx.plan.n_classes))
        noisy_held = ctx.noisy_ids(step.fold, held_out=True)  # cv.noisy_folds; else none
        noisy = ctx.predict(model, noisy_held) if noisy_held else None
        if ctx.rank == 0:
            ctx.state.save_preds(f"test/{tag}", ctx.plan.test_ids, test)
            if noisy is not None:
                ctx.state.save_preds(f"noisy/{tag}", noisy_held, noisy)
            ctx.state.progress["stage_rows"].append(
                {"stage": step.stage_name, "fold": -1 if step.fold is None else step.fold,
                 "val_lwlrap": val, "n_train": len(ctx.training_set(step))})
            if is_fold_final:
                ctx.state.save_weights(f"fold{step.fold}", model)
                ctx.state.save_preds(f"final/oof_fold{step.fold}", held.clip_ids, probs)
                ctx.state.save_preds(f"final/test_fold{step.fold}", ctx.plan.test_ids, test)
                if noisy is not None:
                    ctx.state.save_preds(f"final/noisy_fold{step.fold}", noisy_held, noisy)
        if step.kind == "warmup":  # every rank: each fold starts from these weights
            ctx.state.save_weights("warmup", model)
    cv = cv_so_far(ctx) or scores
    if not len(held):  # the refit model (cv.refit) holds nothing out: its reports carry the CV of the folds
        scores = cv
    return {**{f"val_{k}": v for k, v in scores.items()}, **{f"cv_{k}": v for k, v in cv.items()}}


def _score_names(ctx: _Context) -> list[str]:
    """"lwlrap", and "map3" on the 2018 layout: the keys of _scores."""
    return list(dict.fromkeys(["lwlrap", layout_metric(ctx.plan.layout)]))


def _scores(ctx: _Context, truth, probs) -> dict:
    return {k: float(v) for k, v in layout_scores(ctx.plan.layout, truth, probs).items()}


def cv_so_far(ctx: _Context) -> dict | None:
    """Scores of the out-of-fold predictions of the folds finished so far; None before
    the first fold ends (the caller then reports the current fold's held-out scores)."""
    ids, probs = [], []
    for fold in ctx.plan.folds:
        got = ctx.state.load_preds(f"final/oof_fold{fold}")
        if got is not None:
            ids += got[0]
            probs.append(got[1])
    if not ids:
        return None
    rows = [ctx.curated_index[c] for c in ids]
    return _scores(ctx, ctx.plan.curated_y[rows], np.concatenate(probs))

