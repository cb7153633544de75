"""Benchmark of `raytag serve`: throughput and p50/p99 latency of POST /tag at 1, 8 and 32
concurrent clients, and in the same run the throughput of `raytag predict`'s code path
(the artifact's predict_files, in-process, and the CLI end to end) on the same clips.

    python benchmarks/bench_serve.py [--artifact DIR] [--requests 64] [--replicas 1]

Without --artifact it builds one: two members x two fold models of the default config's
model (cnn2d width 32, 64-bin log-mel at 16 kHz) with random weights (speed does not
depend on training), through the tests' trial-output writer and `build_ensemble`. The
clips are the demo dataset's test clips (real wav files, 1-6 s). Every client loop is
bounded (a fixed number of requests each) and everything stays on 127.0.0.1.

Writes results/benchmarks/serve.json and serve.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "results" / "benchmarks" / "serve.json"
OUT_MD = REPO / "results" / "benchmarks" / "serve.md"
CONCURRENCY = (1, 8, 32)


def build_artifact(work: Path) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    import pandas as pd

    from raytag import storage
    from raytag.config import Config
    from raytag.ensemble.job import build_ensemble
    from test_ensemble import make_trial_outputs, make_truth  # the tests' trial-output writer

    cfg = Config().to_dict()
    exp = storage.join(str(work), "exp")
    y_oof, y_test = make_truth(60, 1), make_truth(20, 2)
    rows = []
    for i, signal in enumerate((0.9, 0.7)):
        out, cv = make_trial_outputs(exp, f"trial_{i}", y_oof, y_test, signal, seed=10 + i, n_folds=2,
                                     features=cfg["features"], model=cfg["model"])
        rows.append({"trial_id": f"trial_{i}", "status": "ok", "cv_lwlrap": cv, "outputs_dir": out})
    storage.write_csv(pd.DataFrame(rows), storage.join(exp, "leaderboard.csv"))
    return build_ensemble(exp, top=2).artifact_path


def demo_clips(work: Path, n: int) -> list[Path]:
    from raytag.data.demo import make_demo_dataset

    root = make_demo_dataset(work / "demo", seed=0, scale=0.25)
    clips = sorted((root / "test").glob("*.wav"))[:n]
    if not clips:
        raise SystemExit(f"no test clips in {root}")
    return clips


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_predict(artifact: str, clips: list[Path]) -> dict:
    from raytag.ensemble.artifact import load_artifact

    import torch

    art = load_artifact(artifact)
    art.predict_files(clips)  # warm-up on every clip: the replica is timed warm too
    timed = {}
    default_threads = torch.get_num_threads()
    for threads in (default_threads, 1):  # 1 = what a replica holding 1 CPU gets (Ray sets OMP_NUM_THREADS)
        torch.set_num_threads(threads)
        start = time.perf_counter()
        probs, failures = art.predict_files(clips, batch_size=32)
        timed[threads] = time.perf_counter() - start
        assert failures.empty and len(probs) == len(clips)
    torch.set_num_threads(default_threads)
    seconds = timed[1]
    with tempfile.TemporaryDirectory() as tmp:
        cli = [str(REPO / ".venv" / "bin" / "raytag") if (REPO / ".venv" / "bin" / "raytag").exists() else "raytag",
               "predict", artifact, *map(str, clips), "--out", str(Path(tmp) / "s.csv")]
        start = time.perf_counter()
        subprocess.run(cli, check=True, capture_output=True)
        cli_seconds = time.perf_counter() - start
    return {"clips": len(clips), "seconds": seconds, "clips_per_s": len(clips) / seconds,
            "default_threads": default_threads, "clips_per_s_default_threads": len(clips) / timed[default_threads],
            "cli_seconds": cli_seconds, "cli_clips_per_s": len(clips) / cli_seconds, "load": load_average()}


def bench_serve(url: str, clips: list[Path], requests_per_level: int) -> list[dict]:
    import requests

    bodies = [(c.name, c.read_bytes()) for c in clips]
    rows = []
    for conc in CONCURRENCY:
        per_client = max(1, requests_per_level // conc)
        total = per_client * conc
        before = requests.get(f"{url}/healthz", timeout=30).json()

        def client(k: int) -> list[float]:
            lat = []
            with requests.Session() as session:
                for i in range(per_client):  # bounded loop
                    name, body = bodies[(k * per_client + i) % len(bodies)]
                    t0 = time.perf_counter()
                    r = session.post(f"{url}/tag", data=body, params={"fname": name}, timeout=300)
                    lat.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        raise RuntimeError(f"{name}: HTTP {r.status_code}: {r.text}")
            return lat

        start = time.perf_counter()
        with ThreadPoolExecutor(conc) as pool:
            lats = [x for part in pool.map(client, range(conc)) for x in part]
        wall = time.perf_counter() - start
        after = requests.get(f"{url}/healthz", timeout=30).json()
        batches = after["batches"] - before["batches"]
        rows.append({
            "clients": conc, "requests": total, "seconds": wall, "requests_per_s": total / wall,
            "p50_ms": 1000 * float(np.percentile(lats, 50)), "p99_ms": 1000 * float(np.percentile(lats, 99)),
            "mean_batch": (after["requests"] - before["requests"]) / max(batches, 1),
            "largest_batch_so_far": after["largest_batch"], "load": load_average(),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def timed_serve(opts, clips: list[Path], requests_per_level: int) -> tuple[float, list[dict]]:
    """Deploy the app, time its start-up, run the concurrency levels on it, and remove it
    (start returns the Deployment that stop takes: stop removes that app and nothing else)."""
    import requests

    from raytag.serve.app import start, stop

    t0 = time.perf_counter()
    deployment = start(opts)
    startup = time.perf_counter() - t0
    try:
        for c in clips[:2]:  # warm-up
            requests.post(f"{deployment.url}/tag", data=c.read_bytes(), timeout=300).raise_for_status()
        return startup, bench_serve(deployment.url, clips, requests_per_level)
    finally:
        stop(deployment)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", help="artifact folder (default: build a default-config one)")
    ap.add_argument("--clips", type=int, default=32, help="distinct demo test clips used")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--replica-cpus", type=float, default=1.0)
    args = ap.parse_args()

    import ray

    from raytag.serve.app import ServeOptions
    from raytag.session import free_port, local_init_kwargs

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        artifact = args.artifact or build_artifact(work)
        clips = demo_clips(work, args.clips)
        durations = [__import__("soundfile").info(str(c)).duration for c in clips]
        predict = bench_predict(artifact, clips)
        print(json.dumps({"predict": predict}), flush=True)

        ray.init(**local_init_kwargs(address="local", num_cpus=2))
        opts = ServeOptions(artifact=artifact, port=free_port(), replicas=args.replicas,
                            max_batch_size=args.max_batch_size, replica_cpus=args.replica_cpus)
        try:
            startup, levels = timed_serve(opts, clips, args.requests)
        finally:
            ray.shutdown()

    best = max(levels, key=lambda r: r["requests_per_s"])
    report = {
        "artifact": args.artifact or "built: 2 members x 2 folds, cnn2d width 32, logmel 64 @ 16 kHz, random weights",
        "clips": len(clips), "clip_seconds_mean": statistics.mean(durations),
        "replicas": args.replicas, "replica_cpus": args.replica_cpus, "max_batch_size": args.max_batch_size,
        "cpus": os.cpu_count(), "serve_startup_s": startup, "predict": predict, "serve": levels,
        "ratio_best_serve_to_predict": best["requests_per_s"] / predict["clips_per_s"],
        "ratio_best_serve_to_predict_cli": best["requests_per_s"] / predict["cli_clips_per_s"],
    }
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(report, indent=2) + "\n")
    OUT_MD.write_text(markdown(report))
    print(OUT_MD.read_text())


def markdown(r: dict) -> str:
    p = r["predict"]
    lines = [
        "# `raytag serve` throughput and latency (issue 13)", "",
        f"Command: `python benchmarks/bench_serve.py` on this {r['cpus']}-core machine, shared with other",
        f"engineers' jobs (1/5/15-minute load average per row). Artifact: {r['artifact']}.",
        f"{r['clips']} demo test clips (mean {r['clip_seconds_mean']:.1f} s), sent as raw request bodies over",
        f"loopback; {r['replicas']} replica(s) x {r['replica_cpus']} CPU, `--max-batch-size {r['max_batch_size']}`.",
        f"Serve start-up (deploy + load): {r['serve_startup_s']:.1f} s.", "",
        "| clients | requests | req/s | p50 ms | p99 ms | mean batch | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in r["serve"]:
        lines.append(f"| {s['clients']} | {s['requests']} | {s['requests_per_s']:.1f} | {s['p50_ms']:.0f} | "
                     f"{s['p99_ms']:.0f} | {s['mean_batch']:.1f} | {s['load']} |")
    lines += [
        "", "Same clips through `raytag predict`'s code path:", "",
        "| what | clips/s | load |", "|---|---|---|",
        f"| `Artifact.predict_files`, in-process, warm, 1 torch thread (as a 1-CPU replica) | {p['clips_per_s']:.1f} | {p['load']} |",
        f"| same, {p['default_threads']} torch threads (the CLI's default) | {p['clips_per_s_default_threads']:.1f} | |",
        f"| `raytag predict` CLI, end to end (start-up and loading included) | {p['cli_clips_per_s']:.1f} | |",
        "", f"Best serve throughput / in-process predict (1 thread): **{r['ratio_best_serve_to_predict']:.2f}**; "
        f"/ CLI: **{r['ratio_best_serve_to_predict_cli']:.2f}**.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
