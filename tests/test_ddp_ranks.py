"""What differs, and what must not, between the ranks of a DDP worker group.

- dropout: every rank draws its own masks (the global torch generator is seeded per epoch
  from cfg.seed, the global step and the rank), and a resumed rank draws what it would have
  drawn without the interruption. Run in this process with a stand-in worker that says it is
  rank r of 2; without a process group the loop's collectives are no-ops.
- the loss: its weighted mean is normalised over the global batch, so DDP's mean of the
  ranks' gradients is the gradient of the whole batch on one process (noisy_weight and the
  batch's split into ranks do not change the step). Two processes of a gloo group.
- the filter decision (and the soft targets) of rank 0 is every rank's, even where label
  spreading, run on each rank's own CPU, would differ. Two processes of a gloo group.
- small-loss selection (train.loss.noisy_keep) keeps, over the ranks, the noisy clips one
  process keeps of the whole batch, whatever each rank's share of them. Two processes of a gloo group.
"""
from __future__ import annotations

import pickle
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raytag.config import Config, LossConfig
from raytag.training import worker as worker_module
from raytag.training.epoch import dropout_seed, epoch_generator

SMALL = {
    "name": "ranks",
    "features": {"n_mels": 32, "hop_length": 320},
    "model": {"name": "cnn2d", "width": 8, "depth": 2, "params": {"hidden": 16}},
    "train": {"crop_seconds": 1.0, "batch_size": 32, "lr": 3e-3, "num_workers": 2},
    "cv": {"n_folds": 3, "folds": [0]},
    "inference": {"overlap": 0.0},
    "pipeline": {"warmup": {"epochs": 1}, "finetune": {"epochs": 2},
                 "filter": {"enabled": False}, "pseudo": {"enabled": False}},
}


# ----------------------------------------------------------------------------- a stand-in worker
class _Checkpoint:
    def __init__(self, path: Path):
        self.path = path

    @contextmanager
    def as_directory(self):
        yield str(self.path)


class _Rank:
    """worker.RayTrainWorker's interface for rank `rank` of `world`, without Ray: checkpoints
    it is given to resume from, and keeps the ones it reports."""

    def __init__(self, rank: int, world: int, saved: Path, resume_from: Path | None = None):
        self.rank, self.size, self.saved, self.resume_from = rank, world, saved, resume_from
        self.saved.mkdir(parents=True, exist_ok=True)

    def world(self):
        return self.rank, self.size

    def device(self):
        return torch.device("cpu")

    def prepare_model(self, model):
        return model

    def checkpoint(self):
        return None if self.resume_from is None else _Checkpoint(self.resume_from)

    def report(self, row, checkpoint_dir=None):
        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, self.saved / f"after_step{row['step']}")


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def plan(demo_data, tmp_path_factory):
    from raytag.training.runner import prepare_data

    cache = tmp_path_factory.mktemp("ranks_cache")
    return prepare_data(Config.from_dict(SMALL), demo_data, str(cache), progress=False)[2]


def _epoch_draws(plan, run: Path, rank: int, epochs: int, monkeypatch, resume_from: Path | None = None):
    """{global step: (torch RNG state, a dropout mask)} as each of the first `epochs` training
    epochs of rank `rank` of 2 begins (the epochs themselves train nothing)."""
    seen: dict = {}

    def train_epoch(ctx, model, *args, **kwargs):
        if len(seen) == epochs:
            raise _Stop
        state = torch.get_rng_state().clone()
        seen[ctx.state.progress["global_step"]] = (state, F.dropout(torch.ones(512), 0.5, training=True))
        return 0.0

    def evaluate(ctx, *args, **kwargs):  # no predictions: without a process group a rank sees its share only
        return {"val_lwlrap": 0.5, "cv_lwlrap": 0.5}

    monkeypatch.setattr(worker_module, "train_epoch", train_epoch)
    monkeypatch.setattr(worker_module, "evaluate", evaluate)
    worker = _Rank(rank, 2, run / f"saved_rank{rank}", resume_from)
    with pytest.raises(_Stop):
        worker_module.run_loop({"plan": plan, "run_files": str(run / "run_files")}, worker)
    return seen, worker.saved


def test_the_model_draws_dropout_masks(plan):
    from raytag.models import build_model

    model = build_model(plan.config.model, plan.n_classes, plan.channels, plan.bins)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def test_each_rank_draws_its_own_dropout_masks(plan, tmp_path, monkeypatch):
    """Rank 0's and rank 1's first epochs: the same masks before (every rank seeded alike)."""
    ranks = [_epoch_draws(plan, tmp_path / f"rank{r}", r, 2, monkeypatch)[0] for r in (0, 1)]
    assert sorted(ranks[0]) == sorted(ranks[1]) == [0, 1]
    for step in (0, 1):
        assert not torch.equal(ranks[0][step][0], ranks[1][step][0]), step
        assert not torch.equal(ranks[0][step][1], ranks[1][step][1]), step
    assert not torch.equal(ranks[0][0][1], ranks[0][1][1])  # and another mask every epoch


def test_a_resumed_rank_draws_what_it_would_have_drawn(plan, tmp_path, monkeypatch):
    """Rank 0 writes the checkpoints (its RNG states in them); a group resumed from the one
    after the warm-up draws, on every rank, the masks of the run that was not interrupted."""
    uninterrupted = {}
    saved = None
    for r in (0, 1):
        uninterrupted[r], kept = _epoch_draws(plan, tmp_path / f"first{r}", r, 2, monkeypatch)
        saved = saved or kept
    checkpoint = saved / "after_step1"
    assert checkpoint.is_dir()
    for r in (0, 1):
        if (tmp_path / "first0" / "run_files").is_dir():  # the run files rank 0 persisted (if any)
            shutil.copytree(tmp_path / "first0" / "run_files", tmp_path / f"again{r}" / "run_files")
        resumed, _ = _epoch_draws(plan, tmp_path / f"again{r}", r, 1, monkeypatch, resume_from=checkpoint)
        assert list(resumed) == [1]
        assert torch.equal(resumed[1][0], uninterrupted[r][1][0]), r
        assert torch.equal(resumed[1][1], uninterrupted[r][1][1]), r


def test_the_dropout_seed_is_stable_and_apart_from_the_augmentation_seed():
    """A stable hash (not Python's salted hash()): the same seed in every process and run."""
    assert dropout_seed(0, 0, 0) == 0x574C11ECBF4BDF23
    assert dropout_seed(42, 3, 1) == dropout_seed(42.0, 3, 1)
    seeds = {dropout_seed(s, g, r) for s in (0, 1, 2**40) for g in (0, 1, 7) for r in (0, 1, 2)}
    assert len(seeds) == 27 and all(0 <= s < 2**64 for s in seeds)
    for seed, step, rank in [(0, 0, 0), (42, 3, 1)]:
        torch.manual_seed(dropout_seed(seed, step, rank))
        augment = epoch_generator(int(seed * 1_000_003 + step), rank)
        assert not torch.equal(torch.rand(8), torch.rand(8, generator=augment))


# ----------------------------------------------------------------------------- a real process group
def _member(rank: int, fn, world: int, tmp: str, args: tuple):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/group", rank=rank, world_size=world)
    try:
        out = fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(tmp, f"out{rank}.pkl").write_bytes(pickle.dumps(out))


def _in_group(fn, tmp: Path, *args, world: int = 2) -> list:
    """fn(rank, world, *args) on each rank of a `world`-process gloo group; their results."""
    import torch.multiprocessing as mp

    tmp.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_member, args=(fn, world, str(tmp), args), nprocs=world, start_method="spawn")
    return [pickle.loads((tmp / f"out{r}.pkl").read_bytes()) for r in range(world)]


# ----------------------------------------------------------------------------- the loss's normalisation
def _batch(n_noisy_by_rank, soft=False, seed=0):
    """x, y, is_noisy of a 32-clip batch: rank r's 16 rows hold n_noisy_by_rank[r] noisy clips."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 6, generator=gen)
    y = (torch.rand(32, 5, generator=gen) < 0.3).float()
    noisy = torch.zeros(32)
    for r, n in enumerate(n_noisy_by_rank):
        noisy[16 * r: 16 * r + n] = 1.0
    if soft:  # mixup: the noisy share of each mixed clip
        noisy = torch.rand(32, generator=gen)
    return x, y, noisy if soft else noisy.bool()


LOSS_CASES = {
    # the audit's stage-2 batch: [14 curated + 2 noisy] and [6 curated + 10 noisy]
    "noisy_weight 0.5": ({"noisy_weight": 0.5}, (2, 10), False),
    # an all-noisy rank at noisy_weight 0: its loss is 0, which must not halve the other's step
    "noisy_weight 0, a noisy rank": ({"noisy_weight": 0.0}, (0, 16), False),
    "noisy_weight 0, all noisy": ({"noisy_weight": 0.0}, (16, 16), False),
    "mixup shares, bce": ({"noisy_weight": 0.3, "noisy_loss": "same", "curated_weight": 2.0}, (0, 0), True),
}


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(6, 5)


def _ddp_gradients(rank: int, world: int, cases: dict) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    from raytag.training.losses import build_loss

    grads = {}
    for name, (loss_cfg, split, soft) in cases.items():
        model = _model()
        ddp = DistributedDataParallel(model)
        x, y, noisy = _batch(split, soft)
        mine = slice(16 * rank, 16 * (rank + 1))
        build_loss(LossConfig(**loss_cfg))(ddp(x[mine]), y[mine], noisy[mine]).backward()
        grads[name] = [p.grad.clone() for p in model.parameters()]
    return grads


def test_ddp_steps_with_the_gradient_of_the_whole_batch(tmp_path):
    from raytag.training.losses import build_loss

    ranks = _in_group(_ddp_gradients, tmp_path, LOSS_CASES)
    for name, (loss_cfg, split, soft) in LOSS_CASES.items():
        model = _model()
        x, y, noisy = _batch(split, soft)
        build_loss(LossConfig(**loss_cfg))(model(x), y, noisy).backward()
        for rank, grads in enumerate(ranks):
            for got, want in zip(grads[name], (p.grad for p in model.parameters())):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=f"{name}, rank {rank}")


def test_a_single_process_loss_is_the_weighted_mean_as_before():
    """No process group: sum(w * l) / sum(w) of the batch, unchanged."""
    from raytag.training.losses import build_loss

    model = _model()
    x, y, noisy = _batch((2, 10))
    loss_fn = build_loss(LossConfig(noisy_weight=0.5, noisy_loss="same"))
    per_clip = F.binary_cross_entropy_with_logits(model(x), y, reduction="none").mean(dim=1)
    w = torch.where(noisy, 0.5, 1.0)
    torch.testing.assert_close(loss_fn(model(x), y, noisy), (w * per_clip).sum() / w.sum())


# ----------------------------------------------------------------------------- the filter decision
class _FilterContext:
    """What stage_steps._run_filter asks of its context (run_state._Context): 12 noisy and 8
    curated clips of 3 classes, with the same predictions on every rank (as the gathered ones are)."""

    def __init__(self, cfg, rank: int, world: int, out: Path):
        from types import SimpleNamespace

        from raytag.training.run_state import RunState

        self.cfg, self.rank, self.world = cfg, rank, world
        self.state = RunState(out, str(out / "run_files"))
        self.plan = SimpleNamespace(folds=[0, 1], classes=["a", "b", "c"], n_classes=3)
        rng = np.random.default_rng(0)
        self.noisy_clips = [f"n{i}" for i in range(12)]
        self.given = (rng.random((12, 3)) < 0.5).astype(np.float32)
        self.curated_clips = [f"c{i}" for i in range(8)]
        self.curated_y = (rng.random((8, 3)) < 0.5).astype(np.float32)
        self.probs = {c: rng.random(3).astype(np.float32) for c in self.noisy_clips + self.curated_clips}
        self.emb = {c: rng.random(4).astype(np.float32) for c in self.noisy_clips + self.curated_clips}

    def noisy_ids(self, fold, held_out=False):
        return [] if held_out else list(self.noisy_clips)

    def noisy(self, ids, targets=None, fold=None):
        from raytag.training.dataset import LabelledSet

        rows = [self.noisy_clips.index(c) for c in ids]
        return LabelledSet(list(ids), self.given[rows] if targets is None else targets, np.ones(len(ids), bool))

    def curated(self, fold, held_out):
        from raytag.training.dataset import LabelledSet

        return LabelledSet(list(self.curated_clips), self.curated_y, np.zeros(8, bool))

    def predict(self, model, ids, embed=False):
        return np.stack([(self.emb if embed else self.probs)[c] for c in ids])

    def predict_and_embed(self, model, ids):
        return self.predict(model, ids), self.predict(model, ids, embed=True)


FILTER = {"pipeline": {"filter": {"enabled": True, "rule": "min_prob", "threshold": 0.3, "rejected": "soft"},
                       "label_spreading": {"enabled": True, "embedding": "model", "combine": "or"}}}


def _rank_spreading(rank: int):
    def spread_labels(emb_l, y_l, emb_n, given, cfg, classes, seed=0):
        # as near-ties could resolve on CPUs of two kinds: each rank accepts other clips
        return np.arange(len(emb_n)) % 3 == rank, None

    return spread_labels


def _decide(rank: int, world: int, out: str) -> tuple:
    from raytag.training import stage_steps
    from raytag.training.steps import Step

    ctx = _FilterContext(Config.from_dict(FILTER), rank, world, Path(out) / f"rank{rank}_of{world}")
    stage_steps._run_filter(ctx, torch.nn.Identity(), Step("filter", 0))
    decision = ctx.state.load_json("filter/fold0.json")
    soft_ids, soft_targets = ctx.state.load_preds("soft/fold0")
    return decision, soft_ids, soft_targets


def _filter_on_rank(rank: int, world: int, out: str) -> tuple:
    from raytag.training import stage_steps

    stage_steps.spread_labels = _rank_spreading(rank)  # a process of its own: nothing to undo
    return _decide(rank, world, out)


def test_every_rank_keeps_rank_0s_filter_decision(tmp_path, monkeypatch):
    ranks = _in_group(_filter_on_rank, tmp_path, str(tmp_path))
    (decision0, soft_ids0, soft0), (decision1, soft_ids1, soft1) = ranks
    assert decision0["n_spread_accepted"] == 4 and decision0["accepted"]
    assert decision1 == decision0
    assert soft_ids1 == soft_ids0 and len(soft_ids0) == 12 - decision0["n_accepted"]
    np.testing.assert_array_equal(soft1, soft0)

    # one process (no group) decides as rank 0 of the group does
    monkeypatch.setattr("raytag.training.stage_steps.spread_labels", _rank_spreading(0))
    decision, soft_ids, soft = _decide(0, 1, str(tmp_path))
    assert decision == decision0 and soft_ids == soft_ids0
    np.testing.assert_array_equal(soft, soft0)


# ----------------------------------------------------------------------------- small-loss selection
def _losses(n_noisy_by_rank):
    """Per-clip losses and is_noisy of a 24-clip batch, rank r's 12 rows holding n_noisy_by_rank[r]
    noisy clips; rank 1's clips fit worse, so a choice over the global batch drops its first."""
    losses = torch.rand(24, generator=torch.Generator().manual_seed(0))
    losses[12:] += 1.0
    noisy = torch.zeros(24, dtype=torch.bool)
    for r, n in enumerate(n_noisy_by_rank):
        noisy[12 * r: 12 * r + n] = True
    return losses, noisy


KEEP_CASES = {
    "an even split": ((6, 6), 0.5),
    "uneven counts": ((3, 9), 0.5),
    "a rank without noisy clips": ((0, 7), 0.6),
    "no noisy clip": ((0, 0), 0.5),
    "keep all": ((4, 5), 1.0),
}


def _kept_on_rank(rank: int, world: int) -> dict:
    """Each case's mask of this rank's clips, and the gradient of a loss that keeps half the
    noisy clips of the `_batch` of the loss cases above."""
    from torch.nn.parallel import DistributedDataParallel

    from raytag.training.losses import build_loss, small_loss_mask

    mine = slice(12 * rank, 12 * (rank + 1))
    masks = {}
    for name, (split, keep) in KEEP_CASES.items():
        losses, noisy = _losses(split)
        masks[name] = small_loss_mask(losses[mine], noisy[mine], keep)
    model = _model()
    ddp = DistributedDataParallel(model)  # held: its reducer averages the gradients in backward()
    x, y, noisy = _batch((2, 10))
    half = slice(16 * rank, 16 * (rank + 1))
    loss = build_loss(LossConfig(noisy_weight=0.5, noisy_loss="same"))
    loss(ddp(x[half]), y[half], noisy[half], keep=0.5).backward()
    return {"masks": masks, "grads": [p.grad.clone() for p in model.parameters()]}


def test_small_loss_selection_keeps_of_the_global_batch(tmp_path):
    """The ranks together keep the noisy clips one process keeps of the whole batch (not each
    rank its own share of its clips), and so step with its gradient."""
    from raytag.training.losses import build_loss, small_loss_mask

    ranks = _in_group(_kept_on_rank, tmp_path)
    for name, (split, keep) in KEEP_CASES.items():
        losses, noisy = _losses(split)
        union = torch.cat([ranks[r]["masks"][name] for r in (0, 1)])
        assert union.tolist() == small_loss_mask(losses, noisy, keep).tolist(), name
    assert ranks[0]["masks"]["an even split"][:6].all() and not ranks[1]["masks"]["an even split"][:6].any()

    model = _model()
    x, y, noisy = _batch((2, 10))
    build_loss(LossConfig(noisy_weight=0.5, noisy_loss="same"))(model(x), y, noisy, keep=0.5).backward()
    for rank in (0, 1):
        for got, want in zip(ranks[rank]["grads"], (p.grad for p in model.parameters())):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=f"rank {rank}")


def test_one_process_keeps_the_smallest_losses_as_before():
    """No process group: ceil(keep * n) of the batch's noisy clips, curated clips always."""
    from raytag.training.losses import small_loss_mask

    losses, noisy = _losses((3, 9))
    mask = small_loss_mask(losses, noisy, 0.5)
    worst = torch.argsort(torch.where(noisy, losses, -1.0), descending=True)[:6]
    assert mask.sum() == 24 - 6 and not mask[worst].any() and mask[~noisy].all()
