"""The steps of a run other than training epochs: where a fold's training starts
(warm-up or fresh weights), the noisy-label filter, and a stage-2 round's pseudo labels."""
from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from raytag.models import build_model
from raytag.pipeline.filters import accept_by_rule, combine_filters
from raytag.pipeline.pseudo import quantile_bounds, select_pseudo
from raytag.pipeline.schedule import lower_bound
from raytag.pipeline.spreading import embed_pca, spread_labels
from raytag.training.run_state import _Context, _unwrap
from raytag.training.steps import Step


def _start_step(ctx: _Context, model, step: Step, steps: list[Step]):
    """Set the weights a step starts from, and choose a stage-2 round's pseudo labels."""
    start_fold(ctx, model, step, steps)
    if step.kind == "stage2" and ctx.cfg.pipeline.pseudo.enabled:
        _choose_pseudo(ctx, model, step)


def start_fold(ctx: _Context, model, step: Step, steps: list[Step]):
    """At a fold's first step of any kind (a filter too, when stage 1 is off), the fold's
    starting weights: the warm-up's, else a fresh seeded network. Else the next fold would
    go on from the last fold's model, which trained on this fold's held-out clips."""
    net = _unwrap(model)
    first_of_fold = step.fold is not None and all(
        s.fold != step.fold for s in steps[: steps.index(step)]
    )
    if first_of_fold:
        warm = ctx.state.out / "weights" / "warmup.safetensors"
        if warm.exists():
            net.load_state_dict(load_file(warm))
        else:  # curated-only runs: a fresh, seeded start for every fold
            torch.manual_seed(ctx.cfg.seed * 1000 + step.fold)
            fresh = build_model(ctx.cfg.model, ctx.plan.n_classes, ctx.plan.channels, ctx.plan.bins)
            net.load_state_dict(fresh.state_dict())


def stage2_adds_nothing(ctx: _Context, step: Step, steps: list[Step]) -> bool:
    """True for a stage-2 round that would train on stage 1's curated clips alone: no noisy
    clip accepted, none soft-labelled, and no pseudo labels (pseudo-labelling off, or this
    round's chosen and none taken; before they are chosen, False)."""
    if step.kind != "stage2":
        return False
    if not any(s.fold == step.fold and s.trains for s in steps[: steps.index(step)]):
        return False  # stage 2 is this fold's only training
    if ctx.cfg.pipeline.pseudo.enabled:
        chosen = ctx.state.load_json(f"pseudo/fold{step.fold}_r{step.round}.json")
        if chosen is None or chosen["n_pseudo"]:
            return False
    decision = ctx.state.load_json(f"filter/fold{step.fold}.json")
    soft = ctx.state.load_preds(f"soft/fold{step.fold}")
    return not (decision and decision["accepted"]) and not (soft and len(soft[0]))


def finish_fold_early(ctx: _Context, model, step: Step, steps: list[Step]):
    """Make the fold's last trained model (stage 1, or the last round that trained) its final
    one: weights and predictions."""
    if ctx.rank != 0:
        return
    earlier = [s for s in steps[: steps.index(step)] if s.fold == step.fold and s.trains]
    for last in reversed(earlier):  # the last that trained: a skipped round left no predictions
        tag = f"{last.stage_name}__fold{step.fold}"
        oof = ctx.state.load_preds(f"oof/{tag}")
        if oof is not None:
            break
    ctx.state.save_weights(f"fold{step.fold}", model)
    ctx.state.save_preds(f"final/oof_fold{step.fold}", *oof)
    ctx.state.save_preds(f"final/test_fold{step.fold}", *ctx.state.load_preds(f"test/{tag}"))
    noisy = ctx.state.load_preds(f"noisy/{tag}")  # cv.noisy_folds: the held-out noisy clips
    if noisy is not None:
        ctx.state.save_preds(f"final/noisy_fold{step.fold}", *noisy)


def _choose_pseudo(ctx: _Context, model, step: Step):
    """Seed 002's scheduled threshold: unlabelled clips whose top probability lies in
    [lower(round), upper) join this round with the model's predictions as targets."""
    pcfg = ctx.cfg.pipeline.pseudo
    decision = ctx.state.load_json(f"filter/fold{step.fold}.json")
    unlabelled = decision["unlabelled"] if decision else ctx.noisy_ids(step.fold)
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
    given labels (never the model's guesses) and join the labelled set.

    The predictions are gathered, so every rank has the same; the decision is rank 0's
    alone (label spreading and the PCA embedding run on a CPU, where ranks on CPUs of two
    kinds could resolve a near-tie apart and then train on different sets), sent with its
    soft targets to the other ranks, which save it as rank 0 does (and a resume restores)."""
    p = ctx.cfg.pipeline
    ids = ctx.noisy_ids(step.fold)  # cv.noisy_folds: the fold's held-out noisy clips are neither scored nor taken
    given = ctx.noisy(ids).targets  # their given labels, row for row
    info: dict = {"fold": step.fold}
    accept = np.zeros(len(ids), bool)
    prob_accept = probs = noisy_emb = None
    labelled = ctx.curated(step.fold, held_out=False)
    need_emb = p.label_spreading.enabled or step.fold == ctx.plan.folds[0]
    if len(ids) and p.filter.enabled:
        if need_emb and p.label_spreading.embedding == "model":  # one pass over the noisy clips for both
            probs, noisy_emb = ctx.predict_and_embed(model, ids)
        else:
            probs = ctx.predict(model, ids)
        prob_accept = accept_by_rule(given, probs, p.filter.rule, p.filter.threshold)
        accept = prob_accept
        info["n_prob_accepted"] = int(prob_accept.sum())
    # the model's embeddings are gathered (every rank predicts); PCA's are rank 0's only
    if len(ids) and need_emb and (ctx.rank == 0 or p.label_spreading.embedding == "model"):
        emb_l, emb_n = _embeddings(ctx, model, labelled.clip_ids, ids, noisy_emb)
        if p.label_spreading.enabled and ctx.rank == 0:
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
    soft = None
    if p.filter.rejected == "soft" and len(ids):
        # Reed et al. 2015's soft bootstrapping, with the filter model's guess fixed at filter time:
        # a rejected clip stays in stage 2 with target beta * given + (1 - beta) * prediction
        if probs is None:
            probs = ctx.predict(model, ids)  # every rank: the prediction is shared work
        beta = p.filter.soft_beta
        rejected = ~np.asarray(accept, bool)
        soft = ([c for c, r in zip(ids, rejected) if r],
                (beta * given[rejected] + (1 - beta) * probs[rejected]).astype(np.float32))
    accepted = [c for c, a in zip(ids, accept) if a]
    info.update(accepted=accepted, unlabelled=[c for c, a in zip(ids, accept) if not a],
                n_accepted=len(accepted), n_noisy=len(ids),
                n_labelled=len(labelled) + len(accepted))
    info, soft = _from_rank0((info, soft), ctx.world)
    if soft is not None:
        ctx.state.save_preds(f"soft/fold{step.fold}", *soft)
    ctx.state.save_json(f"filter/fold{step.fold}.json", info)


def _from_rank0(obj, world_size: int):
    """Rank 0's `obj` on every rank (torch.distributed.broadcast_object_list), as
    run_state._share_rank0_buffers does for BatchNorm buffers; `obj` itself without a
    process group of more than one rank."""
    if world_size > 1 and torch.distributed.is_initialized():
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def _embeddings(ctx: _Context, model, labelled_ids, noisy_ids, noisy_emb=None):
    """`noisy_emb`: the noisy clips' model embeddings when the filter's pass already made them."""
    ls = ctx.cfg.pipeline.label_spreading
    if ls.embedding == "model":
        if noisy_emb is None:
            noisy_emb = ctx.predict(model, noisy_ids, embed=True)
        return ctx.predict(model, labelled_ids, embed=True), noisy_emb
    # "pca": PCA of per-clip log-mel statistics (mean and std over time of every bin)
    stats = np.stack([_clip_stats(ctx.store.get(c)) for c in list(labelled_ids) + list(noisy_ids)])
    emb = embed_pca(stats, ls.pca_components, ctx.cfg.seed)
    return emb[: len(labelled_ids)], emb[len(labelled_ids):]


def _clip_stats(feats: np.ndarray) -> np.ndarray:
    flat = feats.reshape(-1, feats.shape[-1])
    return np.concatenate([flat.mean(axis=1), flat.std(axis=1)])

