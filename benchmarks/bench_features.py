"""Feature extraction throughput and memory: raytag's Ray-built store vs a plain librosa loop.

Same clips, same settings (16 kHz, 64 mels, n_fft 1024, hop 320, fmin 20, top_db 80):
  ray_store      build_feature_store (Ray tasks on all cores, chunks of 64 clips), into a
                 fresh cache folder: decode + torch front end + float16 shards + index;
                 then once more into another empty folder with the workers already
                 started (warm_workers_*), to separate Ray's worker start-up
  librosa_loop   one process: librosa.load(sr=16000), librosa.feature.melspectrogram,
                 librosa.power_to_db, per clip (features kept as float16 in memory)
  frontend_loop  one process: raytag's load_audio + torch front end (1 thread), per clip;
                 separates the per-clip cost of the front end from Ray's parallelism
Both loops process one clip untimed first (lazy imports); the Ray build's time includes
starting its worker processes (ray.init itself is timed apart), as a user pays it.
Each variant runs in its own subprocess, one after another in this one run, so the
driver's peak RSS (resource.getrusage ru_maxrss) belongs to that variant alone. Ray tasks
report the peak RSS of their worker process. The audio files are read once beforehand so
every variant starts with a warm page cache. The store's features are checked against
the librosa loop's (max |difference| in dB) so the speed compares equal work.

    .venv/bin/python benchmarks/bench_features.py [--data /tmp/escfat] [--limit N]

Builds the benchmark with make_fat_bench.py into --data if it is missing. Writes
results/benchmarks/features.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
CHECK_CLIPS = 20  # clips compared between the store and librosa


def feature_cfg():
    from raytag.config import FeatureConfig

    return FeatureConfig(kind="logmel", sample_rate=16000, n_mels=64, n_fft=1024, hop_length=320, fmin=20.0, top_db=80.0)


def load_clips(data: Path, limit: int | None):
    from raytag.data.layouts import load_dataset

    dataset = load_dataset(data, sample_rate=16000)
    if limit:
        dataset.clips = dataset.clips.sort_values("clip_id").head(limit).reset_index(drop=True)
    return dataset


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ----------------------------------------------------------------------------- variants (subprocesses)
def run_ray_store(data: Path, limit, cache: Path) -> dict:
    import ray

    from raytag.features.store import build_feature_store

    dataset = load_clips(data, limit)
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = build_feature_store(dataset, feature_cfg(), cache, progress=False, chunk_size=64)
    seconds = time.perf_counter() - t0
    shards = sum(p.stat().st_size for p in store.path.glob("shard-*.npy"))
    # the same build again into an empty folder, on the worker processes now started:
    # what the build costs once Ray's workers have paid their start-up (import torch, ...)
    t0 = time.perf_counter()
    build_feature_store(dataset, feature_cfg(), cache / "warm", progress=False, chunk_size=64)
    warm_s = time.perf_counter() - t0
    return {
        "warm_workers_seconds": warm_s, "warm_workers_clips_per_s": len(store) / warm_s,
        "seconds": seconds, "ray_init_seconds": init_s, "clips": len(store), "failed": len(store.failed),
        "audio_seconds": float(dataset.clips.set_index("clip_id")["duration"].reindex(store.clip_ids).sum()),
        "driver_peak_rss_mb": peak_rss_mb(), "task_peak_rss_mb": store.build_info["task_peak_rss_mb"],
        "workers": os.cpu_count(), "store_path": str(store.path), "store_bytes": shards,
    }


def run_librosa_loop(data: Path, limit) -> dict:
    import librosa
    import numpy as np

    cfg = feature_cfg()
    dataset = load_clips(data, limit)

    def one(path):
        y, _ = librosa.load(path, sr=cfg.sample_rate)
        mel = librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                             n_mels=cfg.n_mels, fmin=cfg.fmin)
        return len(y), librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=cfg.top_db).astype(np.float16)

    one(dataset.clips["path"].iloc[0])  # warm-up, untimed: librosa's lazy imports take seconds
    feats, audio_s = {}, 0.0
    t0 = time.perf_counter()
    for clip_id, path in zip(dataset.clips["clip_id"], dataset.clips["path"]):
        n, feats[clip_id] = one(path)
        audio_s += n / cfg.sample_rate
    seconds = time.perf_counter() - t0
    check = sorted(feats)[:: max(1, len(feats) // CHECK_CLIPS)][:CHECK_CLIPS]
    return {
        "seconds": seconds, "clips": len(feats), "audio_seconds": audio_s, "driver_peak_rss_mb": peak_rss_mb(),
        "check": {c: feats[c].astype(float).tolist() for c in check},
    }


def run_frontend_loop(data: Path, limit) -> dict:
    import numpy as np
    import torch

    from raytag.data.audio import load_audio
    from raytag.features.frontends import build_frontend

    torch.set_num_threads(1)
    cfg = feature_cfg()
    front = build_frontend(cfg).eval()
    dataset = load_clips(data, limit)
    with torch.inference_mode():  # warm-up, untimed, like the librosa loop's
        front(torch.from_numpy(load_audio(dataset.clips["path"].iloc[0], cfg.sample_rate))[None])
    audio_s, n = 0.0, 0
    t0 = time.perf_counter()
    for path in dataset.clips["path"]:
        wave = load_audio(path, cfg.sample_rate)
        with torch.inference_mode():
            front(torch.from_numpy(wave)[None])[0].numpy().astype(np.float16)
        audio_s += len(wave) / cfg.sample_rate
        n += 1
    return {"seconds": time.perf_counter() - t0, "clips": n, "audio_seconds": audio_s, "driver_peak_rss_mb": peak_rss_mb()}


# ----------------------------------------------------------------------------- orchestration
def in_subprocess(variant: str, args, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--data", str(args.data)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    out = subprocess.run(cmd + extra, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_page_cache(data: Path) -> int:
    total = 0
    for path in sorted(data.rglob("*.wav")):
        total += len(path.read_bytes())
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/escfat"))
    parser.add_argument("--limit", type=int, default=None, help="use only the first N clips (by clip_id)")
    parser.add_argument("--variant", choices=["ray_store", "librosa_loop", "frontend_loop"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "features.json")
    args = parser.parse_args()

    if args.variant:  # child: run one variant, print its JSON as the last line
        if args.variant == "ray_store":
            result = run_ray_store(args.data, args.limit, args.cache)
        elif args.variant == "librosa_loop":
            result = run_librosa_loop(args.data, args.limit)
        else:
            result = run_frontend_loop(args.data, args.limit)
        print(json.dumps(result))
        return

    if not (args.data / "train_curated.csv").is_file():
        subprocess.run([sys.executable, str(SHARED / "bench" / "make_fat_bench.py"), "--source",
                        str(SHARED / "data" / "esc50"), "--out", str(args.data)], check=True)
    warm_bytes = warm_page_cache(args.data)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_features_") as cache:
        ray_store = in_subprocess("ray_store", args, ["--cache", cache])
        librosa_loop = in_subprocess("librosa_loop", args, [])
        frontend_loop = in_subprocess("frontend_loop", args, [])
        agreement = compare(ray_store["store_path"], librosa_loop.pop("check"))
    results = {"ray_store": ray_store, "librosa_loop": librosa_loop, "frontend_loop": frontend_loop}
    for r in results.values():
        r["clips_per_s"] = r["clips"] / r["seconds"]
        r["audio_s_per_s"] = r["audio_seconds"] / r["seconds"]
    ray_store.pop("store_path")
    report = {
        "benchmark": "feature extraction: raytag store (Ray) vs librosa loop",
        "data": str(args.data), "settings": vars_of(feature_cfg()), "warm_bytes": warm_bytes,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_before": load_before,
                    "load_avg_after": os.getloadavg()},
        "results": results,
        "ratios": {
            "ray_store_vs_librosa_loop_speed": ray_store["clips_per_s"] / librosa_loop["clips_per_s"],
            "ray_store_warm_workers_vs_librosa_loop_speed":
                ray_store["warm_workers_clips_per_s"] / librosa_loop["clips_per_s"],
            "frontend_loop_vs_librosa_loop_speed": frontend_loop["clips_per_s"] / librosa_loop["clips_per_s"],
        },
        "agreement_db": agreement,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"written {args.out}")


def vars_of(cfg) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def compare(store_path: str, check: dict) -> dict:
    """Max |store - librosa| in dB over the checked clips (float16 storage on both sides)."""
    import numpy as np

    from raytag.features.store import FeatureStore

    store = FeatureStore.open(store_path)
    worst, frames = 0.0, 0
    for clip_id, ref in check.items():
        ref = np.asarray(ref)
        got = store.get(clip_id)[0]
        if got.shape != ref.shape:
            raise SystemExit(f"{clip_id}: store shape {got.shape} != librosa {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
        frames += ref.shape[1]
    return {"clips": len(check), "frames": frames, "max_abs_db": worst}


def print_table(report: dict):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"feature extraction, {report['machine']['cpus']} CPUs (shared machine)")
    for col in ("variant", "clips", "audio h", "seconds", "clips/s", "audio s/s", "driver peak RSS MB", "task peak RSS MB"):
        table.add_column(col, justify="right")
    for name, r in report["results"].items():
        table.add_row(name, str(r["clips"]), f"{r['audio_seconds'] / 3600:.2f}", f"{r['seconds']:.1f}",
                      f"{r['clips_per_s']:.1f}", f"{r['audio_s_per_s']:.0f}", f"{r['driver_peak_rss_mb']:.0f}",
                      f"{r['task_peak_rss_mb']:.0f}" if r.get("task_peak_rss_mb") else "-")
    console = Console()
    console.print(table)
    ratios = report["ratios"]
    console.print(f"ray_store / librosa_loop speed: {ratios['ray_store_vs_librosa_loop_speed']:.2f}x; "
                  f"frontend_loop / librosa_loop: {ratios['frontend_loop_vs_librosa_loop_speed']:.2f}x; "
                  f"ray init {report['results']['ray_store']['ray_init_seconds']:.1f} s (not in the build time); "
                  f"ray_store with started workers {report['results']['ray_store']['warm_workers_clips_per_s']:.1f} clips/s; "
                  f"store vs librosa max |diff| {report['agreement_db']['max_abs_db']:.3f} dB "
                  f"over {report['agreement_db']['clips']} clips")


if __name__ == "__main__":
    main()
