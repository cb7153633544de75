"""`train_loop_per_worker`: every stage of one pipeline run on one Ray Train worker group.

Starting a worker group costs ~20 s here, so one group runs all steps (steps.py) in
order. Every epoch ends with `ray.train.report` and, from rank 0, a checkpoint holding
the whole run state: progress (step, epoch), model, optimizer, scheduler, RNG states,
and every output so far (predictions, fold weights, filter decisions). A restarted
group (FailureConfig) or a rerun with the same name and storage loads the latest
checkpoint and continues at the next epoch of the same step.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raytag.training.dataset import CropBatches, LabelledSet
from raytag.training.losses import small_loss_keep
from raytag.training.steps import Step, build_steps, last_training_step_of_fold

STATE_FILE = "state.json"
TRAIN_STATE_FILE = "train_state.pt"
OUTPUTS = "outputs"  # sub-folder of a checkpoint that becomes the trial's outputs


# ----------------------------------------------------------------------------- distributed helpers
def _world() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _gather(obj, world_size: int) -> list:
    if world_size == 1 or not torch.distributed.is_initialized():
        return [obj]
    out = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


# ----------------------------------------------------------------------------- the run state
class RunState:
    """Progress and outputs of the run, kept in a local folder that every checkpoint copies."""

    def __init__(self, work: Path):
        self.work = work
        self.out = work / OUTPUTS
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = {"step": 0, "epoch": 0, "global_step": 0, "stage_rows": [], "history": []}

    @classmethod
    def restore(cls, ckpt_dir: Path, work: Path) -> "RunState":
        state = cls(work)
        shutil.copytree(ckpt_dir / OUTPUTS, state.out, dirs_exist_ok=True)
        state.progress = json.loads((ckpt_dir / STATE_FILE).read_text())
        return state

    # predictions are saved as npz: ids + probs
    def save_preds(self, name: str, ids: list[str], probs: np.ndarray):
        path = self.out / "preds" / f"{name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, ids=np.asarray(ids), probs=probs.astype(np.float32))

    def load_preds(self, name: str):
        path = self.out / "preds" / f"{name}.npz"
        if not path.exists():
            return None
        data = np.load(path)
        return list(data["ids"]), data["probs"]

    def save_json(self, rel: str, obj):
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    def load_json(self, rel: str):
        path = self.out / rel
        return json.loads(path.read_text()) if path.exists() else None

    def write_checkpoint(self, train_state: dict, into: Path):
        shutil.copytree(self.out, into / OUTPUTS, dirs_exist_ok=True)
        torch.save(train_state, into / TRAIN_STATE_FILE)
        (into / STATE_FILE).write_text(json.dumps(self.progress))


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _trace(event: dict):
    """Test hook: RAYTAG_TRACE=<file> appends one JSON line per event (pid, rank, step...)."""
    path = os.environ.get("RAYTAG_TRACE")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "time": time.time(), **event}) + "\n")


def open_node_store(plan):
    """The feature store on this node: the driver's, or (a worker on another node of a
    cluster, where that path does not exist) one built here from the data reference.
    Workers of one node take a file lock so that only one of them builds it."""
    import fcntl

    from raytag.features.store import FeatureStore, build_feature_store

    if (Path(plan.store_path) / "meta.json").exists():
        return FeatureStore.open(plan.store_path)
    from raytag.data.layouts import load_dataset
    from raytag.cluster import materialize_data
    from raytag.training.runner import default_feature_cache

    cache = Path(plan.feature_cache or default_feature_cache())
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        dataset = load_dataset(materialize_data(plan.data_ref), sample_rate=plan.config.features.sample_rate)
        store = build_feature_store(dataset, plan.config.features, str(cache), progress=False)
    missing = set(plan.curated_ids + plan.noisy_ids + plan.test_ids) - set(store.clip_ids)
    if missing:
        raise RuntimeError(f"this node's feature store lacks {len(missing)} clips of the plan "
                           f"(e.g. {sorted(missing)[:3]}): the data at {plan.data_ref} differs between nodes")
    return store


# ----------------------------------------------------------------------------- the loop
def train_loop_per_worker(loop_config: dict):
    import ray.train
    import ray.train.torch

    from raytag.models import build_model
    from raytag.training.losses import build_loss

    plan = loop_config["plan"]
    if loop_config.get("trace"):
        os.environ["RAYTAG_TRACE"] = loop_config["trace"]
    cfg = plan.config
    torch.set_num_threads(max(1, cfg.train.torch_threads))
    rank, world = _world()
    device = ray.train.torch.get_device()
    store = open_node_store(plan)
    steps = build_steps(cfg, plan.folds)
    final_step_of_fold = last_training_step_of_fold(steps)

    work = Path(tempfile.mkdtemp(prefix=f"raytag-rank{rank}-"))
    ckpt = ray.train.get_checkpoint()
    train_state = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = RunState.restore(Path(d), work)
            train_state = torch.load(Path(d) / TRAIN_STATE_FILE, weights_only=False)
        _trace({"event": "resume", "rank": rank, **{k: state.progress[k] for k in ("step", "epoch", "global_step")}})
    else:
        state = RunState(work)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, plan.n_classes, plan.channels, plan.bins)
    loss_fn = build_loss(cfg.train.loss)
    ctx = _Context(plan, cfg, store, rank, world, device, state, n_steps=len(steps))

    # The model object lives for the whole run; DDP wraps it once.
    model = ray.train.torch.prepare_model(model)
    if train_state is not None:
        _unwrap(model).load_state_dict(train_state["model"])
        _set_rng_state(train_state["rng"])

    optimizer = scheduler = None
    step_built = None  # index of the step the optimizer belongs to
    while state.progress["step"] < len(steps):
        i = state.progress["step"]
        step = steps[i]
        if step.kind == "filter":
            _run_filter(ctx, model, step)
            state.progress["step"] += 1
            state.progress["epoch"] = 0
            _report(ctx, model, optimizer, scheduler, step, {"train_loss": float("nan")}, checkpoint=True)
            continue

        epoch = state.progress["epoch"]
        if epoch == 0 and step_built != i and _stage2_adds_nothing(ctx, step, steps):
            # no noisy clip accepted, none soft-labelled and no pseudo-labels: stage 2 would only
            # train on stage 1's curated clips again, so the fold ends with its stage-1 model
            _finish_fold_early(ctx, model, step, steps)
            state.progress["step"] += 1
            _report(ctx, model, optimizer, scheduler, step, {"train_loss": float("nan")}, checkpoint=True)
            continue
        if epoch == 0 and step_built != i:
            _start_step(ctx, model, step, steps)  # fresh fold weights, pseudo set...
        data = ctx.training_set(step)
        # train.batch_size is the global batch: each worker takes its share
        batches = CropBatches(store, data, cfg.crop_frames(), -(-cfg.train.batch_size // world))
        if step_built != i:
            optimizer, scheduler = _optimizer(cfg, model, step, batches.steps_per_epoch(world))
            if train_state is not None and train_state.get("step") == i and train_state.get("optimizer"):
                optimizer.load_state_dict(train_state["optimizer"])
                if scheduler is not None and train_state.get("scheduler"):
                    scheduler.load_state_dict(train_state["scheduler"])
            train_state = None
            step_built = i

        _trace({"event": "epoch_start", "rank": rank, "step": i, "epoch": epoch,
                "global_step": state.progress["global_step"], "stage": step.stage_name})
        seed = int(cfg.seed * 1_000_003 + state.progress["global_step"])
        loss = _train_epoch(ctx, model, optimizer, scheduler, loss_fn, batches, seed, step,
                            keep=small_loss_keep(cfg.train.loss, epoch))

        state.progress["epoch"] += 1
        state.progress["global_step"] += 1
        finished_step = state.progress["epoch"] >= step.epochs
        metrics = {"train_loss": loss}
        metrics.update(_evaluate(ctx, model, step, final=finished_step,
                                 is_fold_final=final_step_of_fold.get(step.fold) == i))
        if finished_step:
            state.progress["step"] += 1
            state.progress["epoch"] = 0
        _report(ctx, model, optimizer, scheduler, step, metrics, checkpoint=True)

    shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- context
class _Context:
    """Everything a step needs, and the data sets derived from the plan and run state."""

    def __init__(self, plan, cfg, store, rank, world, device, state: RunState, n_steps: int):
        self.plan, self.cfg, self.store, self.n_steps = plan, cfg, store, n_steps
        self.rank, self.world, self.device, self.state = rank, world, device, state
        self.curated_index = {cid: i for i, cid in enumerate(plan.curated_ids)}
        self.noisy_index = {cid: i for i, cid in enumerate(plan.noisy_ids)}

    # -- data sets ------------------------------------------------------------------
    def curated(self, fold: int | None, held_out: bool) -> LabelledSet:
        folds = self.plan.curated_fold
        if fold is None:
            mask = np.ones(len(folds), bool) if held_out else np.zeros(len(folds), bool)
        else:
            mask = folds == fold if held_out else folds != fold
        ids = [cid for cid, m in zip(self.plan.curated_ids, mask) if m]
        return LabelledSet(ids, self.plan.curated_y[mask], np.zeros(len(ids), bool))

    def noisy(self, ids: list[str], targets: np.ndarray | None = None) -> LabelledSet:
        if targets is None:
            rows = [self.noisy_index[c] for c in ids]
            targets = self.plan.noisy_y[rows] if rows else np.zeros((0, self.plan.n_classes), np.float32)
        return LabelledSet(list(ids), targets, np.ones(len(ids), bool))

    def training_set(self, step: Step) -> LabelledSet:
        p = self.cfg.pipeline
        if step.kind == "warmup":
            return self.noisy(self.plan.noisy_subset if p.warmup.use == "subset" else self.plan.noisy_ids)
        base = self.curated(step.fold, held_out=False)
        if step.kind == "finetune":
            extra = {"none": [], "subset": self.plan.noisy_subset, "all": self.plan.noisy_ids}[p.finetune.noisy]
            return base.concat(self.noisy(extra)) if extra else base
        # stage 2: curated + accepted noisy (given labels) + this round's pseudo-labelled clips
        decision = self.state.load_json(f"filter/fold{step.fold}.json")
        accepted = decision["accepted"] if decision else []
        data = base.concat(self.noisy(accepted)) if accepted else base
        pseudo = self.state.load_preds(f"pseudo/fold{step.fold}_r{step.round}")
        taken = set()
        if pseudo is not None and len(pseudo[0]):
            data = data.concat(self.noisy(pseudo[0], pseudo[1]))
            taken = set(pseudo[0])
        soft = self.state.load_preds(f"soft/fold{step.fold}")
        if soft is not None:  # rejected clips with soft targets, unless pseudo-labelled this round
            keep = [i for i, c in enumerate(soft[0]) if c not in taken]
            if keep:
                data = data.concat(self.noisy([soft[0][i] for i in keep], soft[1][keep]))
        return data

    # -- distributed prediction -------------------------------------------------------
    def predict(self, model, ids: list[str], embed: bool = False) -> np.ndarray:
        from raytag.training.inference import embed_segments, iter_store_clips, predict_segments

        mine = ids[self.rank::self.world]
        inf = self.cfg.inference
        net = _unwrap(model)
        kwargs = dict(segment_frames=self.cfg.segment_frames(), overlap=inf.overlap,
                      device=self.device, mean=self.plan.norm_mean, std=self.plan.norm_std)
        if embed:
            out = embed_segments(net, iter_store_clips(self.store, mine), **kwargs)
        else:
            out = predict_segments(net, iter_store_clips(self.store, mine), reduce=inf.reduce,
                                   tta=inf.tta, **kwargs)
        parts = _gather(out if len(mine) else None, self.world)
        width = next((p.shape[1] for p in parts if p is not None), 0)
        result = np.zeros((len(ids), width), np.float32)
        for r, part in enumerate(parts):
            if part is not None:
                result[r::self.world] = part
        return result


# ----------------------------------------------------------------------------- steps
def _start_step(ctx: _Context, model, step: Step, steps: list[Step]):
    """Set the weights a step starts from, and choose a stage-2 round's pseudo labels."""
    net = _unwrap(model)
    first_of_fold = step.fold is not None and all(
        s.fold != step.fold for s in steps[: steps.index(step)]
    )
    if first_of_fold:
        warm = ctx.state.out / "weights" / "warmup.safetensors"
        if warm.exists():
            from safetensors.torch import load_file

            net.load_state_dict(load_file(warm))
        else:  # curated-only runs: a fresh, seeded start for every fold
            from raytag.models import build_model

            torch.manual_seed(ctx.cfg.seed * 1000 + step.fold)
            fresh = build_model(ctx.cfg.model, ctx.plan.n_classes, ctx.plan.channels, ctx.plan.bins)
            net.load_state_dict(fresh.state_dict())
    if step.kind == "stage2" and ctx.cfg.pipeline.pseudo.enabled:
        _choose_pseudo(ctx, model, step)


def _stage2_adds_nothing(ctx: _Context, step: Step, steps: list[Step]) -> bool:
    """True for a stage-2 round that would train on stage 1's curated clips alone."""
    if step.kind != "stage2" or ctx.cfg.pipeline.pseudo.enabled:
        return False
    if not any(s.fold == step.fold and s.trains for s in steps[: steps.index(step)]):
        return False  # stage 2 is this fold's only training
    decision = ctx.state.load_json(f"filter/fold{step.fold}.json")
    soft = ctx.state.load_preds(f"soft/fold{step.fold}")
    return not (decision and decision["accepted"]) and not (soft and len(soft[0]))


def _finish_fold_early(ctx: _Context, model, step: Step, steps: list[Step]):
    """Make the fold's last trained model (stage 1) its final one: weights and predictions."""
    if ctx.rank != 0:
        return
    last = max(i for i, s in enumerate(steps[: steps.index(step)]) if s.fold == step.fold and s.trains)
    tag = f"{steps[last].stage_name}__fold{step.fold}"
    from safetensors.torch import save_file

    (ctx.state.out / "weights").mkdir(exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    save_file(state, ctx.state.out / "weights" / f"fold{step.fold}.safetensors")
    ctx.state.save_preds(f"final/oof_fold{step.fold}", *ctx.state.load_preds(f"oof/{tag}"))
    ctx.state.save_preds(f"final/test_fold{step.fold}", *ctx.state.load_preds(f"test/{tag}"))


def _choose_pseudo(ctx: _Context, model, step: Step):
    """Seed 002's scheduled threshold: unlabelled clips whose top probability lies in
    [lower(round), upper) join this round with the model's predictions as targets."""
    from raytag.pipeline.pseudo import quantile_bounds, select_pseudo
    from raytag.pipeline.schedule import lower_bound

    pcfg = ctx.cfg.pipeline.pseudo
    decision = ctx.state.load_json(f"filter/fold{step.fold}.json")
    unlabelled = decision["unlabelled"] if decision else list(ctx.plan.noisy_ids)
    lower = lower_bound(step.round, pcfg.rounds, pcfg.lower)
    ids, targets = [], np.zeros((0, ctx.plan.n_classes), np.float32)
    upper = pcfg.upper
    if unlabelled:
        probs = ctx.predict(model, unlabelled)
        if pcfg.bounds == "quantile":
            lower, upper = quantile_bounds(probs, lower, upper)
        rows, pseudo_targets = select_pseudo(probs, lower, upper)
        ids = [c for c, keep in zip(unlabelled, rows) if keep]
        targets = np.asarray(pseudo_targets, np.float32)[rows]
    ctx.state.save_preds(f"pseudo/fold{step.fold}_r{step.round}", ids, targets)
    ctx.state.save_json(f"pseudo/fold{step.fold}_r{step.round}.json",
                        {"lower": lower, "upper": upper, "bounds": pcfg.bounds, "n_pseudo": len(ids),
                         "n_unlabelled": len(unlabelled)})


def _run_filter(ctx: _Context, model, step: Step):
    """Score every noisy clip with this fold's stage-1 model; accepted clips keep their
    given labels (never the model's guesses) and join the labelled set."""
    from raytag.pipeline.filters import accept_by_rule, combine_filters
    from raytag.pipeline.spreading import spread_labels

    p = ctx.cfg.pipeline
    ids = ctx.plan.noisy_ids
    given = ctx.plan.noisy_y
    info: dict = {"fold": step.fold}
    accept = np.zeros(len(ids), bool)
    prob_accept = probs = None
    if len(ids) and p.filter.enabled:
        probs = ctx.predict(model, ids)
        prob_accept = accept_by_rule(given, probs, p.filter.rule, p.filter.threshold)
        accept = prob_accept
        info["n_prob_accepted"] = int(prob_accept.sum())
    labelled = ctx.curated(step.fold, held_out=False)
    need_emb = p.label_spreading.enabled or step.fold == ctx.plan.folds[0]
    if len(ids) and need_emb:
        emb_l, emb_n = _embeddings(ctx, model, labelled.clip_ids, ids)
        if p.label_spreading.enabled:
            spread_accept, _ = spread_labels(emb_l, labelled.targets, emb_n, given,
                                             p.label_spreading, ctx.plan.classes, seed=ctx.cfg.seed)
            info["n_spread_accepted"] = int(np.asarray(spread_accept).sum())
            accept = (combine_filters(prob_accept, spread_accept, p.label_spreading.combine)
                      if prob_accept is not None else np.asarray(spread_accept, bool))
        if step.fold == ctx.plan.folds[0] and ctx.rank == 0:
            # embeddings for the t-SNE plot before / after the filter (first fold only)
            emb_dir = ctx.state.out / "embeddings"
            emb_dir.mkdir(exist_ok=True)
            np.savez(emb_dir / f"fold{step.fold}.npz", labelled_ids=np.asarray(labelled.clip_ids),
                     labelled=emb_l, noisy_ids=np.asarray(ids), noisy=emb_n, accepted=accept)
    accepted = [c for c, a in zip(ids, accept) if a]
    if p.filter.rejected == "soft" and len(ids):
        # Reed et al. 2015's soft bootstrapping, with the filter model's guess fixed at filter time:
        # a rejected clip stays in stage 2 with target beta * given + (1 - beta) * prediction
        if probs is None:
            probs = ctx.predict(model, ids)
        beta = p.filter.soft_beta
        rejected = ~np.asarray(accept, bool)
        ctx.state.save_preds(f"soft/fold{step.fold}", [c for c, r in zip(ids, rejected) if r],
                             (beta * given[rejected] + (1 - beta) * probs[rejected]).astype(np.float32))
    info.update(accepted=accepted, unlabelled=[c for c, a in zip(ids, accept) if not a],
                n_accepted=len(accepted), n_noisy=len(ids),
                n_labelled=len(labelled) + len(accepted))
    ctx.state.save_json(f"filter/fold{step.fold}.json", info)


def _embeddings(ctx: _Context, model, labelled_ids, noisy_ids):
    from raytag.pipeline.spreading import embed_pca

    ls = ctx.cfg.pipeline.label_spreading
    if ls.embedding == "model":
        return ctx.predict(model, labelled_ids, embed=True), ctx.predict(model, noisy_ids, embed=True)
    # "pca": PCA of per-clip log-mel statistics (mean and std over time of every bin)
    stats = np.stack([_clip_stats(ctx.store.get(c)) for c in list(labelled_ids) + list(noisy_ids)])
    emb = embed_pca(stats, ls.pca_components, ctx.cfg.seed)
    return emb[: len(labelled_ids)], emb[len(labelled_ids):]


def _clip_stats(feats: np.ndarray) -> np.ndarray:
    flat = feats.reshape(-1, feats.shape[-1])
    return np.concatenate([flat.mean(axis=1), flat.std(axis=1)])


def _optimizer(cfg, model, step: Step, steps_per_epoch: int):
    lr = step.lr or cfg.train.lr
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


def _train_epoch(ctx: _Context, model, optimizer, scheduler, loss_fn, batches: CropBatches, seed, step,
                 keep: float = 1.0) -> float:
    from raytag.training.augment import gain_pattern, mixup, random_gain_shift, spec_augment

    cfg = ctx.cfg
    gen = torch.Generator().manual_seed(seed * 7919 + ctx.rank)
    mean = torch.tensor(ctx.plan.norm_mean, dtype=torch.float32)[..., None]
    std = torch.tensor(np.maximum(ctx.plan.norm_std, 1e-5), dtype=torch.float32)[..., None]
    is_log = cfg.features.kind != "raw"
    pattern = gain_pattern(cfg.features)  # how each stored value moves per dB of gain
    model.train()
    total, count = 0.0, 0
    for x, y, noisy in batches.epoch(seed, ctx.rank, ctx.world):
        x = random_gain_shift(x, cfg.train.augment, gen, is_log=is_log, pattern=pattern)
        x = (x - mean) / std
        if cfg.train.specaugment.enabled and is_log:
            x = spec_augment(x, cfg.train.specaugment, gen)
        # the noisy share is mixed like the targets, so a mixed clip's loss and weight blend too
        x, y, noisy, _ = mixup(x, y, noisy.float(), cfg.train.mixup.alpha, cfg.train.mixup.prob, gen)
        x, y, noisy = x.to(ctx.device), y.to(ctx.device), noisy.to(ctx.device)
        loss = loss_fn(model(x), y, noisy, keep=keep)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} in stage {step.stage_name} (fold {step.fold}): "
                f"lower train.lr (now {step.lr or cfg.train.lr}) or check the features"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * len(x)
        count += len(x)
    return total / max(count, 1)


def _evaluate(ctx: _Context, model, step: Step, final: bool, is_fold_final: bool) -> dict:
    """val lwlrap every epoch; at the end of a step, save its held-out and test predictions."""
    from raytag.metrics import lwlrap

    held = ctx.curated(step.fold, held_out=True)
    probs = ctx.predict(model, held.clip_ids)
    val = float(lwlrap(held.targets, probs)) if len(held) else float("nan")
    if final:
        tag = step.stage_name if step.fold is None else f"{step.stage_name}__fold{step.fold}"
        if ctx.rank == 0:
            ctx.state.save_preds(f"oof/{tag}", held.clip_ids, probs)
        test = ctx.predict(model, ctx.plan.test_ids) if ctx.plan.test_ids else np.zeros((0, ctx.plan.n_classes))
        if ctx.rank == 0:
            ctx.state.save_preds(f"test/{tag}", ctx.plan.test_ids, test)
            ctx.state.progress["stage_rows"].append(
                {"stage": step.stage_name, "fold": -1 if step.fold is None else step.fold,
                 "val_lwlrap": val, "n_train": len(ctx.training_set(step))})
            if is_fold_final:
                from safetensors.torch import save_file

                (ctx.state.out / "weights").mkdir(exist_ok=True)
                state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
                save_file(state, ctx.state.out / "weights" / f"fold{step.fold}.safetensors")
                ctx.state.save_preds(f"final/oof_fold{step.fold}", held.clip_ids, probs)
                ctx.state.save_preds(f"final/test_fold{step.fold}", ctx.plan.test_ids, test)
        if step.kind == "warmup":  # every rank: each fold starts from these weights
            from safetensors.torch import save_file

            (ctx.state.out / "weights").mkdir(exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
            save_file(state, ctx.state.out / "weights" / "warmup.safetensors")
    return {"val_lwlrap": val, "cv_lwlrap": _cv_so_far(ctx, fallback=val)}


def _cv_so_far(ctx: _Context, fallback: float) -> float:
    from raytag.metrics import lwlrap

    ids, probs = [], []
    for fold in ctx.plan.folds:
        got = ctx.state.load_preds(f"final/oof_fold{fold}")
        if got is not None:
            ids += got[0]
            probs.append(got[1])
    if not ids:
        return fallback
    rows = [ctx.curated_index[c] for c in ids]
    return float(lwlrap(ctx.plan.curated_y[rows], np.concatenate(probs)))


def _report(ctx: _Context, model, optimizer, scheduler, step: Step, metrics: dict, checkpoint: bool):
    import ray.train

    progress = ctx.state.progress
    done = progress["step"] >= ctx.n_steps
    if "cv_lwlrap" not in metrics:  # a filter step: carry the last validation score (never NaN for schedulers)
        last_val = next((r["val_lwlrap"] for r in reversed(progress["history"])
                         if np.isfinite(r.get("val_lwlrap", float("nan")))), 0.0)
        metrics["val_lwlrap"] = last_val
        metrics["cv_lwlrap"] = _cv_so_far(ctx, fallback=last_val)
    row = {"step": progress["global_step"], "stage": step.stage_name,
           "fold": -1 if step.fold is None else step.fold, "round": step.round,
           # not "done": Tune reserves that key and would end the trial before its outputs are collected
           "epoch": progress["epoch"], "pipeline_done": int(done), **metrics}
    if ctx.rank == 0:
        progress["history"].append(row)
    if not checkpoint or ctx.rank != 0:
        ray.train.report(row)
        return
    with tempfile.TemporaryDirectory() as tmp:
        train_state = {
            "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "step": progress["step"] if progress["epoch"] else None,  # mid-step: optimizer resumes
            "rng": _rng_state(),
        }
        ctx.state.write_checkpoint(train_state, Path(tmp))
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(tmp))
