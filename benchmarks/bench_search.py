"""Search benchmark: ASHA against FIFO at one fixed compute budget, side by side in one run.

Benchmark data: make_fat_bench.py on ESC-50 with --classes 10 (FAT2019 layout; curated,
noisy with corrupted labels, test with test_labels.csv), to keep the run within minutes
on this 2-core machine. Test lwlrap is reported only; nothing is chosen by it.

Both sweeps search the same space (search_spaces/demo.yaml, the old quick.yaml: model family, width,
learning rate, mixup alpha, filter threshold, CRNN hidden size) with the same seeded
Optuna TPE sampler, one trial at a time, and stop when their trials have run
`--budget` epochs in all (EpochBudget: every per-epoch report counts, whichever trial it
came from). FIFO runs every trial to the end; ASHA (grace period and reduction factor
from the space) stops the weaker ones at its rungs and spends the epochs on new trials.
The feature store is built once before either sweep, so neither pays for it.

    .venv/bin/python benchmarks/bench_search.py                 # ~15-25 min on 2 shared cores
    .venv/bin/python benchmarks/bench_search.py --budget 30     # shorter

Writes results/benchmarks/search.json and prints a table and both leaderboards' top rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
MAKE_BENCH = SHARED / "bench" / "make_fat_bench.py"
ESC50 = SHARED / "data" / "esc50"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

TOP_COLUMNS = ["rank", "trial_id", "status", "cv_lwlrap", "test_lwlrap", "epochs_run", "seconds",
               "model.name", "model.width", "train.lr", "train.mixup.alpha", "pipeline.filter.threshold"]


def make_data(out: Path, classes: int) -> Path:
    if (out / "train_curated.csv").is_file():
        return out
    subprocess.run([sys.executable, str(MAKE_BENCH), "--source", str(ESC50), "--out", str(out),
                    "--classes", str(classes)], check=True, capture_output=True)
    return out


def bench_space(budget: int, samples: int, path: Path) -> Path:
    """demo.yaml with the sweep's budget set (and enough samples never to run out first)."""
    import yaml

    data = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    data["name"] = "bench_search"
    data["search"].update(epoch_budget=budget, samples=samples)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def prebuild_features(space_path: Path, data: Path, cache: Path) -> float:
    from raytag.data.layouts import load_dataset
    from raytag.features.store import build_feature_store
    from raytag.search.space import load_space

    cfg = load_space(space_path).base_config()
    t0 = time.perf_counter()
    build_feature_store(load_dataset(data, sample_rate=cfg.features.sample_rate), cfg.features,
                        str(cache), progress=False)
    return time.perf_counter() - t0


def summarise(name: str, result, wall: float) -> dict:
    board = result.leaderboard
    scored = board[board["status"] != "failed"]
    best = result.best or {}
    return {
        "scheduler": name,
        "wall_seconds": round(wall, 1),
        "trials": int(len(board)),
        "finished": int((board["status"] == "ok").sum()),
        "stopped_early": int((board["status"] == "stopped early").sum()),
        "failed": int((board["status"] == "failed").sum()),
        "epochs_used": int(scored["epochs_run"].sum()),
        "best_cv_lwlrap": None if not best else round(float(best["cv_lwlrap"]), 4),
        "best_test_lwlrap": None if not best or best.get("test_lwlrap") != best.get("test_lwlrap")
        else round(float(best["test_lwlrap"]), 4),
        "best_trial": best.get("trial_id"),
        "best_status": best.get("status"),
        "top_rows": json.loads(board[[c for c in TOP_COLUMNS if c in board]].head(5).to_json(orient="records")),
        "experiment_dir": result.experiment_dir,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=64, help="epochs per sweep, all trials together")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/raytag_bench"))
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "search.json")
    args = ap.parse_args()

    import shutil

    from raytag.search.report import print_leaderboard
    from raytag.search.tuner import run_sweep
    from raytag.session import ensure_ray

    data = make_data(args.work / f"escfat{args.classes}", args.classes)
    storage = args.work / "search_runs"
    shutil.rmtree(storage, ignore_errors=True)  # a fresh sweep each run (no resume)
    space = bench_space(args.budget, samples=200, path=args.work / "bench_search.yaml")
    cache = args.work / "features"
    ensure_ray()
    feature_s = prebuild_features(space, data, cache)
    print(f"features ready in {feature_s:.0f} s; budget {args.budget} epochs per sweep", flush=True)

    rows = []
    for scheduler in ("asha", "fifo"):
        t0 = time.perf_counter()
        result = run_sweep(space, data, storage=str(storage), name=scheduler, scheduler=scheduler,
                           feature_cache=str(cache), progress=True)
        rows.append(summarise(scheduler, result, time.perf_counter() - t0))
        print_leaderboard(result.leaderboard, top=5)

    asha, fifo = rows
    print(f"\n{'':14s}{'ASHA':>10s}{'FIFO':>10s}")
    for key in ("best_cv_lwlrap", "best_test_lwlrap", "epochs_used", "wall_seconds", "trials",
                "finished", "stopped_early", "failed"):
        print(f"{key:14s}{str(asha[key]):>10s}{str(fifo[key]):>10s}")

    import ray

    out = {
        "benchmark": f"make_fat_bench.py --classes {args.classes} on ESC-50 (FAT2019 layout)",
        "space": "search_spaces/demo.yaml (epoch_budget set, samples 200)",
        "budget_epochs_per_sweep": args.budget,
        "feature_store_seconds": round(feature_s, 1),
        "machine": {"cpus": os.cpu_count(), "ray_cpus": ray.cluster_resources().get("CPU"),
                    "python": platform.python_version(), "note": "2 cores shared with other jobs; times are noisy"},
        "order": "ASHA sweep first, then FIFO, in one process",
        "results": rows,
        "ratios": {
            "trials_asha_over_fifo": round(asha["trials"] / max(1, fifo["trials"]), 2),
            "best_cv_asha_minus_fifo": None if None in (asha["best_cv_lwlrap"], fifo["best_cv_lwlrap"])
            else round(asha["best_cv_lwlrap"] - fifo["best_cv_lwlrap"], 4),
            "wall_asha_over_fifo": round(asha["wall_seconds"] / max(1e-9, fifo["wall_seconds"]), 2),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
