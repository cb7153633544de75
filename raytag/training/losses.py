"""Training losses for noisy multi-label targets.

One callable covers a batch that mixes curated and noisy clips:

- BCE with logits on (possibly soft, e.g. mixup) targets, averaged over classes per clip;
- label smoothing: y' = y * (1 - s) + s / 2 (towards 0.5 in every class);
- lsoft (argus-freesound, FAT2019 1st place): the target of a noisy clip becomes
  y'' = beta * y' + (1 - beta) * sigmoid(logits).detach(), then BCE. The model's own
  guess softens labels it strongly disagrees with; detach() keeps the guess a target,
  not a path for gradients. Used for noisy clips when cfg.noisy_loss == "lsoft", for
  every clip when cfg.name == "lsoft";
- per-source weights: each clip's loss is weighted by cfg.curated_weight or
  cfg.noisy_weight and the batch loss is the weighted mean sum(w_i l_i) / sum(w_i).
  Under DDP the mean is over the global batch (train.batch_size), not each rank's share:
  a rank divides its sum(w_i l_i) by the weight summed over the ranks (an all-reduce) over
  the world size, so DDP's mean of the ranks' gradients is the one-process gradient of the
  whole batch, however its curated and noisy clips fall to the ranks.

- small-loss selection (co-teaching's rule, Han et al. 2018, with one network): of the
  noisy clips of a batch only the share `keep` with the smallest loss counts; the others
  (most likely wrong labels: a network fits clean labels first) get weight 0. `keep`
  falls from 1 to cfg.noisy_keep over the first cfg.noisy_keep_ramp epochs of a stage
  (`small_loss_keep`), since early on every loss is high. Under DDP the share is taken of
  the global batch's noisy clips: the ranks all-gather their noisy clips' losses and each
  drops its own among the global batch's largest, so as many are kept over the ranks as one
  process keeps of the whole batch, however the batch was split.

`is_noisy` may be a bool tensor or a float tensor in [0, 1] (the share of a mixup
mixture that came from a noisy clip). A clip with share q is scored with
(1 - q) * curated_loss + q * noisy_loss and weighed with
(1 - q) * curated_weight + q * noisy_weight, which is what mixing the source weights
with the same lambda gives. Explicit per-clip `weights` (e.g. from `augment.mixup`)
replace the source weights when given.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raytag.config import ConfigError, LossConfig


class NoisyLabelLoss:
    """loss(logits[B, C], targets[B, C], is_noisy[B], weights=None) -> scalar tensor."""

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg

    def smooth(self, targets: torch.Tensor) -> torch.Tensor:
        s = self.cfg.label_smoothing
        return targets * (1.0 - s) + s / 2.0 if s > 0 else targets

    def lsoft_targets(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        beta = self.cfg.lsoft_beta
        return beta * targets + (1.0 - beta) * torch.sigmoid(logits).detach()

    def per_clip(self, logits: torch.Tensor, targets: torch.Tensor, use_lsoft: bool) -> torch.Tensor:
        if use_lsoft:
            targets = self.lsoft_targets(logits, targets)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)

    def source_weights(self, is_noisy: torch.Tensor) -> torch.Tensor:
        q = is_noisy.to(torch.float32)
        return (1.0 - q) * self.cfg.curated_weight + q * self.cfg.noisy_weight

    def __call__(self, logits, targets, is_noisy, weights=None, keep: float = 1.0) -> torch.Tensor:
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
        targets = self.smooth(targets.to(logits.dtype))
        q = is_noisy.to(device=logits.device, dtype=logits.dtype).reshape(-1)
        if q.shape[0] != logits.shape[0]:
            raise ValueError(f"is_noisy has {q.shape[0]} entries for a batch of {logits.shape[0]}")
        curated_lsoft = self.cfg.name == "lsoft"
        noisy_lsoft = curated_lsoft or self.cfg.noisy_loss == "lsoft"
        loss_curated = self.per_clip(logits, targets, curated_lsoft)
        if noisy_lsoft == curated_lsoft:
            per_clip = loss_curated
        else:
            loss_noisy = self.per_clip(logits, targets, noisy_lsoft)
            per_clip = (1.0 - q) * loss_curated + q * loss_noisy
        w = self.source_weights(q) if weights is None else weights.to(device=logits.device, dtype=logits.dtype)
        if keep < 1.0:
            w = w * small_loss_mask(per_clip.detach(), q > 0.5, keep).to(w.dtype)
        total = _mean_rank_weight(w.sum())  # the global batch's weight, per rank
        if total <= 0:
            # every clip weighs 0 (e.g. noisy_weight 0 on an all-noisy batch): no signal,
            # but keep the graph so backward() still works
            return (per_clip * 0.0).sum()
        return (w * per_clip).sum() / total


def _distributed() -> bool:
    """Whether this process is one rank of a DDP process group of more than one."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _mean_rank_weight(total: torch.Tensor) -> torch.Tensor:
    """`total`, the weight of this process's clips; under DDP (a process group of more than
    one rank) the weight of the global batch over the number of ranks instead. DDP averages
    the ranks' gradients, so each rank's sum(w_i l_i) over this makes their mean the gradient
    of sum(w_i l_i) / sum(w_i) over the whole batch. Every rank calls the loss once per
    batch, and runs as many batches, so the all-reduce is matched on every rank."""
    if not _distributed():
        return total
    summed = total.detach().clone()
    torch.distributed.all_reduce(summed)  # a sum: no gradient flows through the normaliser
    return summed / torch.distributed.get_world_size()


def small_loss_mask(per_clip: torch.Tensor, noisy: torch.Tensor, keep: float) -> torch.Tensor:
    """bool [B]: every curated clip, and the noisy clips with the smallest loss, ceil(keep * n)
    of the batch's n (under DDP of the global batch's, see _dropped_noisy)."""
    mask = torch.ones_like(noisy, dtype=torch.bool)
    idx = torch.nonzero(noisy).flatten()
    mask[idx[_dropped_noisy(per_clip[idx], keep)]] = False
    return mask


def _dropped_noisy(losses: torch.Tensor, keep: float) -> torch.Tensor:
    """Positions in `losses` (this process's noisy clips) of the ones not kept: the largest
    n - ceil(keep * n) losses of the batch's n. Under DDP the batch is the global one: every
    rank ranks the same gathered losses (a stable sort, rank by rank as one process would see
    the batch, so ties fall alike on every rank) and drops its own among them. Every rank
    calls the loss once per batch with the same `keep`, so the gathers match."""
    if not _distributed():
        n_keep = int(math.ceil(keep * len(losses)))
        return torch.argsort(losses, descending=True)[: len(losses) - n_keep]
    everyone, first = _gather_ranks(losses.float())
    n_keep = int(math.ceil(keep * len(everyone)))
    worst = torch.argsort(everyone, descending=True, stable=True)[: len(everyone) - n_keep] - first
    return worst[(worst >= 0) & (worst < len(losses))]


def _gather_ranks(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The 1-d `values` of every rank, concatenated in rank order, and where this rank's begin.
    Ranks may hold different counts: the counts are gathered first and each rank's values
    padded to the largest (all_gather takes tensors of one shape)."""
    dist = torch.distributed
    count = torch.tensor([len(values)], device=values.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    first = sum(counts[: dist.get_rank()])
    if max(counts) == 0:  # no noisy clip on any rank (every rank sees the same counts)
        return values, first
    padded = torch.zeros(max(counts), dtype=values.dtype, device=values.device)
    padded[: len(values)] = values
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)]), first


def small_loss_keep(cfg: LossConfig, epoch: int) -> float:
    """The share of noisy clips kept at `epoch` (0-based) of a stage: 1 -> cfg.noisy_keep."""
    if cfg.noisy_keep >= 1.0:
        return 1.0
    ramp = min(1.0, epoch / cfg.noisy_keep_ramp) if cfg.noisy_keep_ramp > 0 else 1.0
    return 1.0 - (1.0 - cfg.noisy_keep) * ramp


def build_loss(cfg: LossConfig) -> NoisyLabelLoss:
    """The training loss described by cfg; see the module docstring."""
    if cfg.curated_weight < 0 or cfg.noisy_weight < 0:
        raise ConfigError(
            f"train.loss: curated_weight ({cfg.curated_weight}) and noisy_weight ({cfg.noisy_weight}) must be >= 0"
        )
    return NoisyLabelLoss(cfg)
