"""Training throughput: raytag's Ray Train loop against the same training in a plain PyTorch
loop, interleaved in one run, and the overhead ratio of Ray Train on this machine.

Work (the same in every variant): cnn2d at its default width (32, depth 4), 2 s crops
(100 frames of the default log-mel: 16 kHz, 64 mels, hop 320), batch 32, the curated
clips of folds != 0 (`cv.n_folds: 5`, one stage: fine-tune on curated only, warm-up,
filter, pseudo-labels off), `--epochs` epochs, default mixup, SpecAugment, gain/shift,
BCE, AdamW + one-cycle. Every epoch ends with the held-out fold's segment-averaged
predictions (as the engine's per-epoch val_lwlrap), and the last epoch also predicts the
test clips.

Variants:
  ray_2w    fit_pipeline, 2 Ray Train workers x 0.5 CPU (DDP over gloo), 1 torch thread each
  ray_1w    fit_pipeline, 1 worker x 1 CPU, 1 torch thread (a worker group: train.runner ray_train)
  plain_1t  this process, no Ray: CropBatches over the same FeatureStore and the engine's own
            epoch function (raytag.training.worker.train_epoch: same crops, augmentations,
            loss and optimizer/scheduler, same seeds), then predict_segments on the held-out
            clips; torch threads 1. It trains exactly what ray_1w trains (its val lwlrap
            matches ray_1w's: the check that the work is equal).
  plain_2t  the same with 2 torch threads (the plain way to use both cores)

Timings: wall = the whole fit (fit_pipeline: dataset check, plan, worker-group start,
epochs, outputs; plain: prepare_data, epochs, test predictions). Per epoch, Ray: the gaps
between rank 0's epoch starts (RAYTAG_TRACE hook: training + evaluation + report +
checkpoint), plain: train + evaluation of one epoch. Median over epochs. The machine is
shared with other agents, so the variants run interleaved (--rounds rounds of
ray_2w, plain_1t, ray_1w, plain_2t) and ratios are taken within a round.

    .venv/bin/python benchmarks/bench_throughput.py            # 2 rounds x 4 epochs
    .venv/bin/python benchmarks/bench_throughput.py --quick    # 10 classes, 1 round x 2 epochs

On a tree others are editing, run it from a snapshot of HEAD (see bench_training.py).
Writes results/benchmarks/throughput.json (--quick: /tmp/raytag_bench/throughput_quick.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_training import ensure_bench, epoch_times, init_ray, median, prebuild_features, read_trace  # noqa: E402


def worker_group_runner() -> dict:
    """`train.runner: ray_train` where this raytag has the setting: its `auto` would train a
    1-worker CPU run in-process, and this benchmark measures Ray Train's worker group."""
    import dataclasses

    from raytag.config import TrainConfig

    return {"runner": "ray_train"} if "runner" in {f.name for f in dataclasses.fields(TrainConfig)} else {}


def make_config(epochs: int, workers: int, crop: float) -> dict:
    return {
        "name": "throughput",
        "features": {"kind": "logmel", "sample_rate": 16000, "n_mels": 64, "hop_length": 320, "n_fft": 1024},
        "model": {"name": "cnn2d"},  # default width 32, depth 4
        "train": {"crop_seconds": crop, "batch_size": 32, "lr": 1e-3, "num_workers": workers,
                  "cpus_per_worker": 1.0 / workers, "torch_threads": 1, **worker_group_runner()},
        "cv": {"n_folds": 5, "folds": [0], "seed": 0},
        "pipeline": {
            "warmup": {"enabled": False},
            "finetune": {"enabled": True, "epochs": epochs, "noisy": "none"},
            "filter": {"enabled": False},
            "label_spreading": {"enabled": False},
            "pseudo": {"enabled": False},
        },
    }


def run_ray(cfg_dict: dict, data: Path, cache: Path, storage: Path, tag: str) -> dict:
    import pandas as pd

    from raytag.config import Config
    from raytag.training.runner import fit_pipeline

    trace = storage / f"{tag}.trace.jsonl"
    trace.unlink(missing_ok=True)
    os.environ["RAYTAG_TRACE"] = str(trace)
    start = time.time()
    try:
        result = fit_pipeline(Config.from_dict(cfg_dict), data, str(storage), f"{tag}-{int(start)}",
                              feature_cache=str(cache), progress=False)
    finally:
        os.environ.pop("RAYTAG_TRACE", None)
    end = time.time()
    t = epoch_times(read_trace(trace))
    history = pd.read_csv(Path(result.outputs_dir) / "history.csv")
    return {
        "wall_s": round(end - start, 2),
        "startup_s": round(t["first_epoch_start"] - start, 2),
        "after_last_epoch_start_s": round(end - t["last_epoch_start"], 2),
        "epoch_s": t["epoch_gaps_s"],
        "median_epoch_s": round(median(t["epoch_gaps_s"]), 3),
        "val_lwlrap_by_epoch": [round(v, 5) for v in history["val_lwlrap"]],
    }


def run_plain(cfg_dict: dict, data: Path, cache: Path, threads: int) -> dict:
    """The engine's epoch on the same data, in this process, without Ray."""
    import numpy as np
    import torch

    from raytag.config import Config
    from raytag.metrics import lwlrap
    from raytag.models import build_model
    from raytag.training.dataset import CropBatches, LabelledSet
    from raytag.training.epoch import build_optimizer, train_epoch
    from raytag.training.inference import iter_store_clips, predict_segments
    from raytag.training.losses import build_loss
    from raytag.training.precision import resolve_precision
    from raytag.training.runner import prepare_data
    from raytag.training.steps import build_steps

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.time()
    try:
        cfg = Config.from_dict(cfg_dict)
        _, store, plan = prepare_data(cfg, data, str(cache), progress=False)
        cfg = plan.config
        (step,) = build_steps(cfg, plan.folds)
        fold = step.fold
        held = plan.curated_fold == fold
        ids = np.asarray(plan.curated_ids)
        train = LabelledSet(list(ids[~held]), plan.curated_y[~held], np.zeros((~held).sum(), bool))
        held_ids, held_y = list(ids[held]), plan.curated_y[held]
        torch.manual_seed(cfg.seed * 1000 + fold)  # the worker's fresh start of a curated-only fold
        model = build_model(cfg.model, plan.n_classes, plan.channels, plan.bins)
        loss_fn = build_loss(cfg.train.loss)
        batches = CropBatches(store, train, cfg.crop_frames(), cfg.train.batch_size)
        optimizer, scheduler = build_optimizer(cfg, model, step, batches.steps_per_epoch(1))
        ctx = SimpleNamespace(cfg=cfg, plan=plan, rank=0, world=1, device=torch.device("cpu"),
                              precision=resolve_precision(cfg.train.precision, torch.device("cpu")))
        pred = dict(segment_frames=cfg.segment_frames(), overlap=cfg.inference.overlap, reduce=cfg.inference.reduce,
                    tta=cfg.inference.tta, device="cpu", mean=plan.norm_mean, std=plan.norm_std)
        startup = time.time() - start
        train_s, eval_s, vals = [], [], []
        for epoch in range(step.epochs):
            t0 = time.time()
            train_epoch(ctx, model, optimizer, scheduler, loss_fn, batches, int(cfg.seed * 1_000_003 + epoch), step)
            t1 = time.time()
            probs = predict_segments(model, iter_store_clips(store, held_ids), **pred)
            vals.append(round(float(lwlrap(held_y, probs)), 5))
            t2 = time.time()
            train_s.append(t1 - t0)
            eval_s.append(t2 - t1)
        t0 = time.time()
        predict_segments(model, iter_store_clips(store, plan.test_ids), **pred)
        test_s = time.time() - t0
    finally:
        torch.set_num_threads(old_threads)
    epoch_s = [a + b for a, b in zip(train_s, eval_s)]
    return {
        "wall_s": round(time.time() - start, 2),
        "startup_s": round(startup, 2),
        "epoch_s": [round(e, 2) for e in epoch_s],
        "train_s": [round(e, 2) for e in train_s],
        "eval_s": [round(e, 2) for e in eval_s],
        "test_predict_s": round(test_s, 2),
        # the same epochs as Ray's gaps: epochs 0..E-2 (Ray's last epoch has no next start)
        "median_epoch_s": round(median(epoch_s[:-1] or epoch_s), 3),
        "median_train_s": round(median(train_s), 3),
        "val_lwlrap_by_epoch": vals,
        "n_train_clips": len(train),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 classes, 1 round of 2 epochs")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--crop", type=float, default=2.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/raytag_bench"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    quick = args.quick
    data = ensure_bench(args.data or Path("/tmp/escfat10" if quick else "/tmp/escfat"), 10 if quick else None)
    epochs = args.epochs or (2 if quick else 4)
    rounds = args.rounds or (1 if quick else 2)
    out_path = args.out or (args.work / "throughput_quick.json" if quick else REPO / "results" / "benchmarks" / "throughput.json")
    cache, storage = args.work / "features", args.work / "runs"
    storage.mkdir(parents=True, exist_ok=True)

    bench_start = time.perf_counter()
    cfg2, cfg1 = make_config(epochs, 2, args.crop), make_config(epochs, 1, args.crop)
    prebuild_features(cfg1, data, cache)
    init_ray()
    order = [("ray_2w", lambda: run_ray(cfg2, data, cache, storage, "tp-ray2w")),
             ("plain_1t", lambda: run_plain(cfg1, data, cache, 1)),
             ("ray_1w", lambda: run_ray(cfg1, data, cache, storage, "tp-ray1w")),
             ("plain_2t", lambda: run_plain(cfg1, data, cache, 2))]
    runs = []
    for r in range(rounds):
        for name, fn in order:
            print(f"-- round {r}: {name}", flush=True)
            row = {"round": r, "variant": name, "load_avg_1m": os.getloadavg()[0], **fn()}
            print(f"   wall {row['wall_s']:.1f} s, start-up {row['startup_s']:.1f} s, "
                  f"median epoch {row['median_epoch_s']:.2f} s, val lwlrap {row['val_lwlrap_by_epoch']}", flush=True)
            runs.append(row)

    n_clips = next(r["n_train_clips"] for r in runs if "n_train_clips" in r)
    for row in runs:
        row["clips_per_s_epoch"] = round(n_clips / row["median_epoch_s"], 2)
        if "median_train_s" in row:
            row["clips_per_s_train_only"] = round(n_clips / row["median_train_s"], 2)

    def ratios(num: str, den: str) -> dict:
        per_round = []
        for r in range(rounds):
            a = next(x for x in runs if x["round"] == r and x["variant"] == num)
            b = next(x for x in runs if x["round"] == r and x["variant"] == den)
            per_round.append({"wall": round(a["wall_s"] / b["wall_s"], 3),
                              "epoch": round(a["median_epoch_s"] / b["median_epoch_s"], 3)})
        return {"per_round": per_round,
                "median_wall_ratio": round(median([p["wall"] for p in per_round]), 3),
                "median_epoch_ratio": round(median([p["epoch"] for p in per_round]), 3)}

    comparisons = {
        "ray_1w / plain_1t": ratios("ray_1w", "plain_1t"),
        "ray_2w / plain_1t": ratios("ray_2w", "plain_1t"),
        "ray_2w / plain_2t": ratios("ray_2w", "plain_2t"),
        "ray_2w / ray_1w": ratios("ray_2w", "ray_1w"),
    }
    same_work = {f"round {r}": {v: next(x["val_lwlrap_by_epoch"] for x in runs if x["round"] == r and x["variant"] == v)
                                for v in ("ray_1w", "plain_1t")} for r in range(rounds)}

    print()
    print(f"{'variant':<10}{'round':>6}{'wall s':>9}{'start s':>9}{'epoch s':>9}{'clips/s':>9}{'train-only':>11}{'load':>6}")
    for row in runs:
        train_only = f"{row['clips_per_s_train_only']:.1f}" if "clips_per_s_train_only" in row else "-"
        print(f"{row['variant']:<10}{row['round']:>6}{row['wall_s']:>9.1f}{row['startup_s']:>9.1f}"
              f"{row['median_epoch_s']:>9.2f}{row['clips_per_s_epoch']:>9.1f}{train_only:>11}{row['load_avg_1m']:>6.1f}")
    print()
    print(f"{'ratio (time)':<22}{'wall (start-up incl.)':>22}{'per epoch (excl.)':>20}")
    for key, c in comparisons.items():
        print(f"{key:<22}{c['median_wall_ratio']:>22.2f}{c['median_epoch_ratio']:>20.2f}")
    total = time.perf_counter() - bench_start
    print(f"{n_clips} training clips per epoch; total {total / 60:.1f} min")

    result = {
        "benchmark": "throughput",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": str(data),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "work": {"model": "cnn2d width 32 depth 4", "crop_seconds": args.crop, "batch_size": 32, "epochs": epochs,
                 "train_clips_per_epoch": n_clips, "stage": "finetune on curated folds != 0 of 5"},
        "runs": runs,
        "ratios": comparisons,
        "same_work_check_val_lwlrap": same_work,
        "total_s": round(total, 1),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
