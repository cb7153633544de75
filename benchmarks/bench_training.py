"""Training quality and memory: model families through raytag's Ray Train engine against a
logistic-regression floor, side by side in one run.

Benchmark: make_fat_bench.py on ESC-50 (FAT2019 layout, 50 classes: ~510 curated, ~1015
noisy (~60% wrong labels), 512 test clips). Features: the default front end (log-mel,
16 kHz, 64 mels, n_fft 1024, hop 320), built once into a cached store before timing.

Each model runs through `raytag.training.runner.fit_pipeline` with one short fixed budget:
the plain curated + noisy baseline (stage 1 only, `pipeline.finetune.noisy: all`, noisy
clips at face value: same loss, weight 1), warm-up / filter / pseudo-labels / label
spreading off, `cv.n_folds: 5` with `cv.folds: [0, 1]`, `--epochs` epochs per fold, 2 s
crops, default mixup, SpecAugment, AdamW + one-cycle at lr 1e-3, 2 Ray Train workers x
0.5 CPU, one torch thread each. Nothing is tuned here: every setting is fixed in advance,
so the test lwlrap (test_labels.csv) is a report, never a choice.

Floor (as /work/shared/data/README.md describes it): one-vs-rest LogisticRegression on
per-clip log-mel mean/std/max over time (64 mels; here read from the same feature store),
standardised; trained on all curated clips, and on curated + noisy clips; test lwlrap.
Its CV lwlrap on the same folds (0, 1) is reported too, so CV and test sit side by side.

Memory: a thread polls /proc every 0.25 s for the processes this driver started (its Ray
session's raylet and workers) and keeps, for each Ray Train worker (title
`ray::RayTrainWorker...`), the largest VmRSS and RssAnon seen and its VmHWM (peak RSS over
the process's life). The feature store is built in a separate process first, so no Train
worker reuses a process that extracted features. The driver's peak is its ru_maxrss.

    .venv/bin/python benchmarks/bench_training.py            # ~15-20 min on 2 shared cores
    .venv/bin/python benchmarks/bench_training.py --quick    # 10 classes, tiny models, ~3 min

The engine is imported from the tree the script lives in. On a tree others are editing,
run it from a snapshot of HEAD so every Ray worker imports one version of the code:
    git archive HEAD | tar -x -C /tmp/snap && PYTHONPATH=/tmp/snap \
        .venv/bin/python /tmp/snap/benchmarks/bench_training.py --out results/benchmarks/training.json

Writes results/benchmarks/training.json (--quick: /tmp/raytag_bench/training_quick.json)
and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from proc_mem import descendants, status_kb  # noqa: E402

SHARED = REPO.parent / "shared"
MAKE_BENCH = SHARED / "bench" / "make_fat_bench.py"
ESC50 = SHARED / "data" / "esc50"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

# name:width -> the four families compared (default sizes chosen to fit the 2-core budget)
DEFAULT_MODELS = ["cnn2d:16", "resnet18:32", "crnn:16", "cnn_1d_dense_dropout:64"]
QUICK_MODELS = ["cnn2d:8", "resnet18:8", "cnn_1d_dense_dropout:32"]


# ----------------------------------------------------------------------------- shared helpers
def ensure_bench(data: Path, classes: int | None) -> Path:
    """Build the FAT2019-layout benchmark into `data` unless it is already there."""
    if (data / "train_curated.csv").is_file() and (data / "test_labels.csv").is_file():
        return data
    if not (MAKE_BENCH.is_file() and ESC50.is_dir()):
        sys.exit(f"benchmark data missing: {data} does not exist and {ESC50} is not available")
    cmd = [sys.executable, str(MAKE_BENCH), "--source", str(ESC50), "--out", str(data)]
    if classes:
        cmd += ["--classes", str(classes)]
    subprocess.run(cmd, check=True)
    return data


def prebuild_features(cfg_dict: dict, data: Path, cache: Path) -> float:
    """Build (or reuse) the feature store in a child process with its own Ray session, so
    that no worker process of this driver's session ever ran feature extraction."""
    code = (
        "import json, sys; sys.path.insert(0, %r)\n"
        "from raytag.config import Config\n"
        "from raytag.training.runner import ensure_ray, prepare_data\n"
        "import ray; ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256*1024**2,"
        " log_to_driver=False, configure_logging=False)\n"
        "cfg = Config.from_dict(json.loads(sys.argv[1]))\n"
        "ds, store, plan = prepare_data(cfg, sys.argv[2], sys.argv[3], progress=False)\n"
        "print('store', store.path, len(store.clip_ids), 'clips')\n"
    ) % str(REPO)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, json.dumps(cfg_dict), str(data), str(cache)], check=True)
    return time.perf_counter() - start


def init_ray(num_cpus: int = 2):
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=256 * 1024**2,
                 log_to_driver=False, configure_logging=False)
    return ray


def driver_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# Ray Train (v2) processes of one fit: the workers, the controller and its helper actors
TRAIN_TITLES = ("RayTrainWorker", "TrainController", "PlacementGroupCleaner", "SynchronizationActor",
                "DatasetManager", "PreemptionWatcher", "AutoscalingCoordinator")


class ProcPoller(threading.Thread):
    """Peak memory of this driver's Ray processes, read from /proc (nothing added to the engine).

    Every `interval` s: find the descendants of `root` (the driver: its local Ray session's
    raylet and workers are its children), and for those whose title contains one of
    `titles`, keep the max VmRSS / RssAnon seen and the last VmHWM (kernel peak RSS)."""

    def __init__(self, root: int, titles=TRAIN_TITLES, interval: float = 0.25,
                 exclude: set[int] | None = None):
        super().__init__(daemon=True)
        self.root, self.titles, self.interval = root, titles, interval
        self.exclude = set(exclude or ())
        self.peaks: dict[int, dict] = {}
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a process vanishing mid-read is normal
                pass

    def stop(self) -> dict[int, dict]:
        self._halt.set()
        self.join(timeout=5)
        self.sample()
        return self.peaks

    def sample(self):
        for pid in descendants(self.root) - self.exclude:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                if not any(t in title for t in self.titles):
                    continue
                status = status_kb(pid)
            except OSError:
                continue
            row = self.peaks.setdefault(pid, {"pid": pid, "title": title, "rss_mb": 0.0, "anon_mb": 0.0, "hwm_mb": 0.0})
            row["title"] = title
            row["rss_mb"] = max(row["rss_mb"], status.get("VmRSS", 0) / 1024)
            row["anon_mb"] = max(row["anon_mb"], status.get("RssAnon", 0) / 1024)
            row["hwm_mb"] = max(row["hwm_mb"], status.get("VmHWM", 0) / 1024)


def read_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def epoch_times(events: list[dict]) -> dict:
    """From the rank-0 epoch_start lines: start-up (fit call -> first epoch) and epoch lengths.

    An epoch's length is the gap to the next epoch start (training, the per-epoch
    held-out evaluation, report and checkpoint); the last epoch of a run has no next start."""
    starts = sorted(e["time"] for e in events if e.get("event") == "epoch_start" and e.get("rank") == 0)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    return {"first_epoch_start": starts[0] if starts else None, "last_epoch_start": starts[-1] if starts else None,
            "epoch_gaps_s": [round(g, 2) for g in gaps]}


def median(xs):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


SEEN_PIDS: set[int] = set()


# ----------------------------------------------------------------------------- configs
def parse_model(spec: str) -> dict:
    name, _, width = spec.partition(":")
    out = {"name": name}
    if width:
        out["width"] = int(width)
    return out


def run_config(model: dict, epochs: int, n_folds: int, folds: list[int], crop: float, workers: int) -> dict:
    """The fixed budget: curated + all noisy clips at face value, stage 1 only."""
    return {
        "name": f"bench-{model['name']}",
        "features": {"kind": "logmel", "sample_rate": 16000, "n_mels": 64, "hop_length": 320, "n_fft": 1024},
        "model": model,
        "train": {
            "crop_seconds": crop, "batch_size": 32, "lr": 1e-3, "scheduler": "onecycle",
            "num_workers": workers, "cpus_per_worker": 1.0 / workers, "torch_threads": 1,
            "loss": {"name": "bce", "noisy_loss": "same", "noisy_weight": 1.0},
        },
        "cv": {"n_folds": n_folds, "folds": folds, "seed": 0},
        "inference": {"overlap": 0.5, "tta": 0},
        "pipeline": {
            "warmup": {"enabled": False},
            "finetune": {"enabled": True, "epochs": epochs, "noisy": "all"},
            "filter": {"enabled": False},
            "label_spreading": {"enabled": False},
            "pseudo": {"enabled": False},
        },
    }


# ----------------------------------------------------------------------------- the runs
def fit_one(cfg_dict: dict, data: Path, cache: Path, storage: Path, tag: str) -> dict:
    """One fit_pipeline run, its metrics, epoch timings and the peak RSS of its workers."""
    from raytag.config import Config
    from raytag.models import build_model
    from raytag.training.runner import fit_pipeline

    cfg = Config.from_dict(cfg_dict)
    trace = storage / f"{tag}.trace.jsonl"
    trace.unlink(missing_ok=True)
    name = f"{tag}-{int(time.time())}"  # a fresh run every time (the engine resumes same names)
    poller = ProcPoller(os.getpid(), exclude=SEEN_PIDS)
    poller.start()
    os.environ["RAYTAG_TRACE"] = str(trace)
    start = time.time()
    try:
        result = fit_pipeline(cfg, data, str(storage), name, feature_cache=str(cache), progress=False)
    finally:
        os.environ.pop("RAYTAG_TRACE", None)
        peaks = poller.stop()
        SEEN_PIDS.update(peaks)  # a process of an earlier fit still alive is not this fit's
    wall = time.time() - start
    events = read_trace(trace)
    timing = epoch_times(events)
    workers = sorted((p for p in peaks.values() if "RayTrainWorker" in p["title"]), key=lambda p: p["pid"])
    controller = [p for p in peaks.values() if "TrainController" in p["title"]]
    helpers = [p for p in peaks.values() if "RayTrainWorker" not in p["title"]]
    m = result.metrics
    n_params = sum(p.numel() for p in build_model(cfg.model, 50, 1, cfg.features.n_mels).parameters())
    return {
        "tag": tag,
        "model": cfg.model.name,
        "width": cfg.model.width,
        "depth": cfg.model.depth,
        "params_50_classes": n_params,
        "cv_lwlrap": m["cv_lwlrap"],
        "fold_lwlrap": m["fold_lwlrap"],
        "test_lwlrap": m["test_lwlrap"],
        "epochs_run": m["epochs_run"],
        # >0: a worker group failed and Ray Train restarted it (FailureConfig); see the Ray logs
        "worker_group_restarts": len({e["pid"] for e in events if e.get("rank") == 0}) - 1,
        "wall_s": round(wall, 1),
        "startup_s": round(timing["first_epoch_start"] - start, 1) if timing["first_epoch_start"] else None,
        "median_epoch_s": round(median(timing["epoch_gaps_s"]), 2),
        "epoch_gaps_s": timing["epoch_gaps_s"],
        "worker_peak_rss_mb": [round(w["hwm_mb"], 1) for w in workers],
        "worker_max_polled_rss_mb": [round(w["rss_mb"], 1) for w in workers],
        "worker_max_polled_anon_mb": [round(w["anon_mb"], 1) for w in workers],
        "controller_peak_rss_mb": [round(c["hwm_mb"], 1) for c in controller],
        # every Train process of this fit: title -> (peak RSS, max anonymous RSS) in MB; RSS
        # counts shared library pages in each process, anonymous memory is each one's own
        "train_processes_mb": {f"{p['title'].replace('ray::', '')}[{p['pid']}]": [round(p["hwm_mb"]), round(p["anon_mb"])]
                               for p in sorted(peaks.values(), key=lambda p: p["pid"])},
        "train_processes_total_anon_mb": round(sum(p["anon_mb"] for p in peaks.values())),
        "helper_actors_total_rss_mb": round(sum(p["hwm_mb"] for p in helpers)),
        "driver_peak_rss_mb_so_far": round(driver_peak_mb(), 1),
        "outputs_dir": result.outputs_dir,
    }


def logreg_floor(cfg_dict: dict, data: Path, cache: Path) -> dict:
    """README floor: OvR logistic regression on log-mel mean/std/max over time (64 mels)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from raytag.config import Config
    from raytag.data.labels import labels_to_matrix
    from raytag.metrics import lwlrap
    from raytag.training.runner import prepare_data

    start = time.perf_counter()
    cfg = Config.from_dict(cfg_dict)
    dataset, store, plan = prepare_data(cfg, data, str(cache), progress=False)

    def stats(ids):
        rows = []
        for cid in ids:
            f = store.get(cid).reshape(-1, store.n_frames(cid))  # (C*F, T)
            rows.append(np.concatenate([f.mean(1), f.std(1), f.max(1)]))
        return np.asarray(rows, dtype=np.float64)

    truth = dataset.truth_for("test")
    test_ids = list(truth["clip_id"])
    y_test = labels_to_matrix(list(truth["labels"]), plan.classes)
    x_cur, y_cur = stats(plan.curated_ids), plan.curated_y
    x_noisy, y_noisy = stats(plan.noisy_ids), plan.noisy_y
    x_test = stats(test_ids)

    def fit_predict(x, y, x_eval):
        # Every class has positives in the curated part of any training set here
        # (10 per class); OvR fits one binary model per class.
        clf = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=2000)))
        clf.fit(x, y.astype(int))
        return clf.predict_proba(x_eval)

    out = {}
    for variant, with_noisy in (("curated", False), ("curated+noisy", True)):
        x_train = np.concatenate([x_cur, x_noisy]) if with_noisy else x_cur
        y_train = np.concatenate([y_cur, y_noisy]) if with_noisy else y_cur
        test_lw = float(lwlrap(y_test, fit_predict(x_train, y_train, x_test)))
        # CV on the folds the models train (same fold ids as fit_pipeline's plan)
        oof_idx, oof_probs, fold_scores = [], [], {}
        for fold in plan.folds:
            held = plan.curated_fold == fold
            xs = [x_cur[~held]] + ([x_noisy] if with_noisy else [])
            ys = [y_cur[~held]] + ([y_noisy] if with_noisy else [])
            probs = fit_predict(np.concatenate(xs), np.concatenate(ys), x_cur[held])
            fold_scores[str(fold)] = float(lwlrap(y_cur[held], probs))
            oof_idx.append(np.flatnonzero(held))
            oof_probs.append(probs)
        idx = np.concatenate(oof_idx)
        out[variant] = {"cv_lwlrap": float(lwlrap(y_cur[idx], np.concatenate(oof_probs))),
                        "fold_lwlrap": fold_scores, "test_lwlrap": test_lw}
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["n_features"] = int(x_cur.shape[1])
    return out


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 classes, tiny models, 2 epochs, fold 0")
    parser.add_argument("--data", type=Path, default=None, help="benchmark folder (built if missing)")
    parser.add_argument("--models", nargs="*", default=None, help="name:width, e.g. cnn2d:16")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--folds", type=int, nargs="*", default=None)
    parser.add_argument("--crop", type=float, default=2.0, help="training crop, seconds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/raytag_bench"), help="cache + run folders")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    quick = args.quick
    data = args.data or Path("/tmp/escfat10" if quick else "/tmp/escfat")
    models = args.models or (QUICK_MODELS if quick else DEFAULT_MODELS)
    epochs = args.epochs or (2 if quick else 10)
    folds = args.folds if args.folds is not None else ([0] if quick else [0, 1])
    out_path = args.out or (args.work / "training_quick.json" if quick else REPO / "results" / "benchmarks" / "training.json")
    cache, storage = args.work / "features", args.work / "runs"
    storage.mkdir(parents=True, exist_ok=True)

    bench_start = time.perf_counter()
    ensure_bench(data, 10 if quick else None)
    configs = {spec: run_config(parse_model(spec), epochs, args.n_folds, folds, args.crop, args.workers)
               for spec in models}
    feat_s = prebuild_features(next(iter(configs.values())), data, cache)
    print(f"features ready in {feat_s:.1f} s (cached after the first build)", flush=True)

    init_ray()
    rows = []
    for spec, cfg_dict in configs.items():
        print(f"-- {spec}: {epochs} epochs x folds {folds} of {args.n_folds}", flush=True)
        row = fit_one(cfg_dict, data, cache, storage, tag=spec.replace(":", "-w"))
        print(f"   cv {row['cv_lwlrap']:.4f}  test {row['test_lwlrap']:.4f}  wall {row['wall_s']:.0f} s  "
              f"worker peak RSS {row['worker_peak_rss_mb']} MB", flush=True)
        rows.append(row)
    floor = logreg_floor(next(iter(configs.values())), data, cache)
    total = time.perf_counter() - bench_start

    print()
    print(f"{'model':<26}{'params':>10}{'CV lwlrap':>11}{'test':>8}{'wall s':>8}{'start s':>8}"
          f"{'s/epoch':>8}  worker peak RSS MB")
    for r in rows:
        print(f"{r['model'] + ' w' + str(r['width']):<26}{r['params_50_classes']:>10,}{r['cv_lwlrap']:>11.4f}"
              f"{r['test_lwlrap']:>8.4f}{r['wall_s']:>8.0f}{r['startup_s']:>8.0f}{r['median_epoch_s']:>8.1f}  "
              f"{', '.join(f'{v:.0f}' for v in r['worker_peak_rss_mb'])}")
    for variant in ("curated", "curated+noisy"):
        f = floor[variant]
        print(f"{'logreg floor (' + variant + ')':<26}{'':>10}{f['cv_lwlrap']:>11.4f}{f['test_lwlrap']:>8.4f}")
    print(f"driver peak RSS {driver_peak_mb():.0f} MB; total {total / 60:.1f} min")

    result = {
        "benchmark": "training",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": str(data),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_at_end": os.getloadavg()},
        "budget": {"epochs_per_fold": epochs, "n_folds": args.n_folds, "folds": folds, "crop_seconds": args.crop,
                   "workers": args.workers, "cpus_per_worker": 1.0 / args.workers, "torch_threads": 1,
                   "stage": "finetune only, curated + all noisy at face value (noisy_loss same, weight 1)"},
        "config_example": next(iter(configs.values())),
        "models": rows,
        "logreg_floor": floor,
        "reference_figures": {"readme_logreg_curated_test": 0.434, "readme_logreg_curated_noisy_test": 0.451,
                              "readme_cnn_30ep_curated_test": 0.582, "readme_cnn_30ep_curated_noisy_test": 0.652},
        "driver_peak_rss_mb": round(driver_peak_mb(), 1),
        "feature_build_s": round(feat_s, 1),
        "total_s": round(total, 1),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
