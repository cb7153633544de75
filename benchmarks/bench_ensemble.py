"""Benchmark of the ensemble step: every combiner against the best single model (CV and
test lwlrap), predict throughput of the saved artifact on this CPU, and its size.

    # use a finished sweep (leaderboard.csv under <storage>/<experiment>):
    python benchmarks/bench_ensemble.py --experiment results/quick
    # or train a few real trials first (fit_pipeline on the ESC-50 FAT-layout benchmark):
    python benchmarks/bench_ensemble.py --train-trials 5 --classes 10

Writes results/benchmarks/ensemble.json. Test labels are only reported (never used to
choose): the ensemble job picks the combiner on out-of-fold lwlrap.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAYTAG_SHARED", REPO.parent / "shared"))
OUT = REPO / "results" / "benchmarks" / "ensemble.json"

# Five different pipelines (the quick search space's families and sizes), so the
# ensemble has diverse members; small epochs so that 5 trials fit in minutes on 2 cores.
TRIAL_CONFIGS = [
    {"model.name": "cnn2d", "model.width": 16, "train.lr": 2e-3, "train.mixup.alpha": 0.4},
    {"model.name": "crnn", "model.width": 16, "train.lr": 1.5e-3, "train.mixup.alpha": 0.2,
     "model.params.lstm_hidden": 32},
    {"model.name": "cnn2d", "model.width": 32, "train.lr": 1e-3, "train.mixup.alpha": 0.0},
    {"model.name": "vgg_small", "model.width": 16, "train.lr": 2e-3, "train.mixup.alpha": 0.4},
    {"model.name": "cnn2d", "model.width": 16, "train.lr": 3e-3, "train.mixup.alpha": 0.8,
     "features.n_mels": 64},
]
BASE = {
    "features.n_mels": 40, "features.hop_length": 320, "train.crop_seconds": 2.0,
    "train.batch_size": 32, "train.num_workers": 1, "train.cpus_per_worker": 1.0,
    "cv.n_folds": 3, "pipeline.noisy_selection.max_per_class": 20,
    "pipeline.warmup.epochs": 2, "pipeline.finetune.epochs": 6,
    "pipeline.pseudo.rounds": 1, "pipeline.pseudo.epochs": 2, "inference.segment_seconds": 2.0,
}


def make_bench_data(classes: int, out: Path) -> Path:
    if (out / "train_curated.csv").is_file():
        return out
    subprocess.run([sys.executable, str(SHARED / "bench" / "make_fat_bench.py"), "--source",
                    str(SHARED / "data" / "esc50"), "--out", str(out), "--classes", str(classes)], check=True)
    return out


def train_trials(n: int, data: Path, storage: Path, name: str) -> Path:
    """Run n real pipelines (fit_pipeline) and write the sweep files the ensemble reads."""
    from raytag.config import Config
    from raytag.training.runner import fit_pipeline

    exp = storage / name
    rows = []
    for i, params in enumerate(TRIAL_CONFIGS[:n]):
        trial_id = f"t{i}_{params['model.name']}{params['model.width']}"
        cfg = Config().with_overrides({**BASE, **params, "name": trial_id, "seed": i})
        started = time.time()
        print(f"[bench] trial {trial_id} ...", flush=True)
        result = fit_pipeline(cfg, data, str(exp / "trials"), trial_id,
                              feature_cache=str(storage / "features"), progress=False)
        m = result.metrics
        print(f"[bench] {trial_id}: cv {m['cv_lwlrap']:.4f} test {m.get('test_lwlrap')} "
              f"({time.time() - started:.0f} s)", flush=True)
        rows.append({"trial_id": trial_id, "status": "ok", "cv_lwlrap": m["cv_lwlrap"],
                     "test_lwlrap": m.get("test_lwlrap"), "seconds": round(time.time() - started, 1),
                     **params, "outputs_dir": result.outputs_dir})
    board = pd.DataFrame(rows).sort_values("cv_lwlrap", ascending=False)
    board.insert(0, "rank", range(1, len(board) + 1))
    board.to_csv(exp / "leaderboard.csv", index=False)
    (exp / "sweep.json").write_text(json.dumps({"data": str(data)}))
    return exp


def predict_throughput(artifact, files: list[str], threads: int, batch_size: int) -> dict:
    import soundfile as sf
    import torch

    torch.set_num_threads(threads)
    seconds_audio = sum(sf.info(f).duration for f in files)
    artifact.predict_files(files[:4], batch_size=batch_size)  # warm-up (allocations, caches)
    started = time.perf_counter()
    probs, failures = artifact.predict_files(files, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    return {
        "clips": len(files), "failed": int(len(failures)), "audio_seconds": round(seconds_audio, 1),
        "wall_seconds": round(elapsed, 2), "clips_per_s": round(len(probs) / elapsed, 2),
        "audio_seconds_per_s": round(seconds_audio / elapsed, 1), "torch_threads": threads,
        "batch_size": batch_size,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", help="a finished sweep's folder (<storage>/<experiment>)")
    ap.add_argument("--train-trials", type=int, default=0, help="train this many real trials first (<= 5)")
    ap.add_argument("--classes", type=int, default=10, help="ESC-50 classes in the benchmark data")
    ap.add_argument("--work", default="/tmp/raytag_bench_ensemble", help="scratch folder")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-clips", type=int, default=200, help="test clips timed in the throughput run")
    args = ap.parse_args()

    from raytag.ensemble import build_ensemble, load_artifact
    from raytag.ensemble.artifact import artifact_size

    work = Path(args.work)
    source = "existing sweep"
    if args.experiment:
        exp = Path(args.experiment)
    elif args.train_trials:
        data = make_bench_data(args.classes, work / f"escfat{args.classes}")
        exp = train_trials(args.train_trials, data, work / "storage", "bench")
        source = f"{args.train_trials} fit_pipeline trials on ESC-50 FAT-layout bench ({args.classes} classes)"
    else:
        ap.error("give --experiment DIR or --train-trials N")

    started = time.perf_counter()
    result = build_ensemble(str(exp), top=args.top)
    ensemble_seconds = time.perf_counter() - started
    table = result.table
    singles = table[table.kind == "single"]
    best_single = singles.loc[singles.cv_lwlrap.idxmax()]
    print(table.drop(columns=["chosen"]).to_string(index=False))

    art = load_artifact(result.artifact_path)
    sweep = json.loads((exp / "sweep.json").read_text()) if (exp / "sweep.json").exists() else {}
    test_dir = Path(sweep.get("data", "")) / "test"
    files = sorted(str(p) for p in test_dir.glob("*") if p.suffix in (".wav", ".flac", ".ogg"))[: args.max_clips]
    throughput = predict_throughput(art, files, args.threads, args.batch_size) if files else None
    size = artifact_size(result.artifact_path)

    rows = []
    for r in table.itertuples():
        rows.append({"name": r.name, "kind": r.kind, "cv_lwlrap": round(float(r.cv_lwlrap), 4),
                     "cv_method": r.cv_method,
                     "test_lwlrap": None if pd.isna(r.test_lwlrap) else round(float(r.test_lwlrap), 4),
                     "weights": r.weights or None, "chosen": bool(r.chosen)})
    report = {
        "source": source,
        "experiment": str(exp),
        "members": result.members,
        "chosen": result.chosen,
        "best_single": {"name": best_single["name"], "cv_lwlrap": round(float(best_single.cv_lwlrap), 4),
                        "test_lwlrap": None if pd.isna(best_single.test_lwlrap) else round(float(best_single.test_lwlrap), 4)},
        "vs_best_single_cv": {r["name"]: round(r["cv_lwlrap"] - float(best_single.cv_lwlrap), 4)
                              for r in rows if r["kind"] == "ensemble"},
        "vs_best_single_test": ({r["name"]: round(r["test_lwlrap"] - float(best_single.test_lwlrap), 4)
                                 for r in rows if r["kind"] == "ensemble" and r["test_lwlrap"] is not None}
                                if not pd.isna(best_single.test_lwlrap) else None),
        "table": rows,
        "ensemble_job_seconds": round(ensemble_seconds, 1),
        "predict": throughput,
        "artifact_bytes": size,
        "artifact_mib": round(size / 2**20, 2),
        "n_fold_models": sum(len(m.models) for m in art.members),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("chosen", "best_single", "vs_best_single_cv",
                                             "vs_best_single_test", "predict", "artifact_mib")}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
