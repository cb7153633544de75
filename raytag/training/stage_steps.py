"""The steps of a run other than training epochs: where a fold's training starts
(warm-up or fresh weights), the noisy-label filter, and a stage-2 round's pseudo labels."""
from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from raytag.models import build_model
from raytag.pipeline.filters import accept_by_rule, combine_filters
from raytag.pipeline.pseudo import select_pseudo
from raytag.pipeline.schedule import lower_bound
from raytag.pipeline.spreading import embed_pca, spread_labels
from raytag.training.run_state import _Context, _unwrap
from raytag.training.steps import Step


def _start_step(ctx: _Context, model, step: Step, steps: list[Step]):
    """Set the weights a step starts from, and choose a stage-2 round's pseudo labels."""
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
    if step.kind == "stage2" and ctx.cfg.pipeline.pseudo.enabled:
        _choose_pseudo(ctx, model, step)


def _choose_pseudo(ctx: _Context, model, step: Step):
    """Seed 002's scheduled threshold: unlabelled clips whose top probability lies in
    [lower(round), upper) join this round with the model's predictions as targets."""
    pcfg = ctx.cfg.pipeline.pseudo
    decision = ctx.state.load_json(f"filter/fold{step.fold}.json")
    unlabelled = decision["unlabelled"] if decision else list(ctx.plan.noisy_ids)
    lower = lower_bound(step.round, pcfg.rounds, pcfg.lower)
    ids, targets = [], np.zeros((0, ctx.plan.n_classes), np.float32)
    if unlabelled:
        probs = ctx.predict(model, unlabelled)
        rows, pseudo_targets = select_pseudo(probs, lower, pcfg.upper)
        ids = [c for c, keep in zip(unlabelled, rows) if keep]
        targets = np.asarray(pseudo_targets, np.float32)[rows]
    ctx.state.save_preds(f"pseudo/fold{step.fold}_r{step.round}", ids, targets)
    ctx.state.save_json(f"pseudo/fold{step.fold}_r{step.round}.json",
                        {"lower": lower, "upper": pcfg.upper, "n_pseudo": len(ids),
                         "n_unlabelled": len(unlabelled)})


def _run_filter(ctx: _Context, model, step: Step):
    """Score every noisy clip with this fold's stage-1 model; accepted clips keep their
    given labels (never the model's guesses) and join the labelled set."""
    p = ctx.cfg.pipeline
    ids = ctx.plan.noisy_ids
    given = ctx.plan.noisy_y
    info: dict = {"fold": step.fold}
    accept = np.zeros(len(ids), bool)
    prob_accept = None
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
    info.update(accepted=accepted, unlabelled=[c for c, a in zip(ids, accept) if not a],
                n_accepted=len(accepted), n_noisy=len(ids),
                n_labelled=len(labelled) + len(accepted))
    ctx.state.save_json(f"filter/fold{step.fold}.json", info)


def _embeddings(ctx: _Context, model, labelled_ids, noisy_ids):
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

