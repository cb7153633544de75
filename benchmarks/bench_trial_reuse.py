"""Trial turnover with and without Tune's reuse_actors, side by side in one run (issue 11).

A FIFO sweep now runs each trial in the process the trial before it ended in
(`raytag.search.tuner.reuses_trial_processes`); before, every trial got a new Ray worker
process (start, imports). This runs the same FIFO sweep twice on one local Ray, with reuse
forced off and then on (`--order on-off` for the other order), and prints the sweep's wall
and its seconds per trial:

- `--kind tiny` (default): a real tiny pipeline per trial (the test suite's TINY space:
  1 warm-up epoch, 2 folds x 1 fine-tune epoch, cnn2d or crnn on 32 mels) on raytag's own
  demo set (scale 0.25), features built once before either sweep;
- `--kind fake`: a pipeline that only reports 6 epochs (0.3 s apart), so what is left is
  Tune's own cost per trial.

    .venv/bin/python benchmarks/bench_trial_reuse.py                 # ~4 min on 2 cores
    .venv/bin/python benchmarks/bench_trial_reuse.py --kind fake --trials 6

Writes results/benchmarks/trial_reuse_<kind>.json (with the load average before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

SPACE = """
name: reuse
base:
  features.n_mels: 32
  train.crop_seconds: 1.0
  train.batch_size: 32
  train.num_workers: 1
  cv.n_folds: 2
  pipeline.noisy_selection.max_per_class: 4
  pipeline.warmup.epochs: 1
  pipeline.finetune.epochs: 1
  pipeline.filter.enabled: false
  pipeline.pseudo.enabled: false
  inference.segment_seconds: 1.0
space:
  model.name: {choice: [cnn2d, crnn]}
  train.lr: {loguniform: [5.0e-4, 3.0e-3]}
search: {samples: TRIALS, scheduler: fifo, max_concurrent_trials: 1, seed: 0}
resources: {num_workers: 1, cpus_per_worker: 1.0, trial_cpus: 0.25}
"""


def reporting_fit(cfg, data, storage, name, callbacks=(), feature_cache=None, progress=True):
    """Stands in for fit_pipeline: 6 epoch reports 0.3 s apart, nothing trained."""
    for step in range(1, 7):
        metrics = {"step": step, "stage": "finetune", "fold": 0, "round": 0, "epoch": step,
                   "train_loss": 1.0 / step, "val_lwlrap": 0.5, "cv_lwlrap": 0.5,
                   "rung_epoch": step, "rung_score": 0.5, "pipeline_done": int(step == 6)}
        for cb in callbacks:
            cb.after_report(None, [metrics], None)
        time.sleep(0.3)
    out = Path(storage) / name / "outputs"
    out.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(run_dir=str(out.parent), outputs_dir=str(out), stages=None,
                           metrics={"cv_lwlrap": 0.5, "fold_lwlrap": [0.5], "test_lwlrap": 0.5,
                                    "epochs_run": 6, "seconds": 1.8})


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["tiny", "fake"], default="tiny")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--order", choices=["off-on", "on-off"], default="off-on")
    ap.add_argument("--out", default=None, help="JSON path (default results/benchmarks/trial_reuse_<kind>.json)")
    args = ap.parse_args()

    import ray
    from ray import cloudpickle

    import raytag.search.tuner as tuner
    from raytag.data.demo import make_demo_dataset
    from raytag.features.store import build_feature_store
    from raytag.data.layouts import load_dataset
    from raytag.search.space import parse_space
    from raytag.session import ensure_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the trials' processes cannot import benchmarks/
    work = Path(tempfile.mkdtemp(prefix="raytag-reuse-"))
    os.environ["RAYTAG_CACHE"] = str(work / "features")  # before Ray starts: its workers read it
    data = make_demo_dataset(work / "demo", seed=0, scale=0.25)
    space_path = work / "reuse.yaml"
    space_path.write_text(SPACE.replace("TRIALS", str(args.trials)))
    if args.kind == "tiny":  # features once, before either sweep
        feats = parse_space(space_path.read_text()).base_config().features
        build_feature_store(load_dataset(str(data), sample_rate=feats.sample_rate, features=feats), feats,
                            os.environ["RAYTAG_CACHE"], progress=False)
    ensure_ray()
    real_rule = tuner.reuses_trial_processes
    rows = []
    before = load()
    for reuse in ([False, True] if args.order == "off-on" else [True, False]):
        tuner.reuses_trial_processes = lambda space, reuse=reuse: reuse and real_rule(space)
        started = time.perf_counter()
        result = tuner.run_sweep(space_path, data, storage=str(work / "res"), name=f"reuse-{reuse}",
                                 trial_fn=reporting_fit if args.kind == "fake" else None, progress=False)
        wall = time.perf_counter() - started
        board = result.leaderboard
        row = {"reuse_actors": reuse, "trials": len(board), "ok": int((board["status"] == "ok").sum()),
               "sweep_wall_s": round(wall, 1), "s_per_trial": round(wall / len(board), 1), "load_after": load()}
        rows.append(row)
        print(row, flush=True)
    tuner.reuses_trial_processes = real_rule
    ray.shutdown()

    off, on = (next(r for r in rows if r["reuse_actors"] is flag) for flag in (False, True))
    summary = {"kind": args.kind, "trials": args.trials, "order": args.order, "load_before": before,
               "rows": rows, "on_over_off": round(on["sweep_wall_s"] / off["sweep_wall_s"], 3)}
    print(f"\n{'reuse_actors':>12} {'sweep wall':>11} {'s/trial':>8}")
    for r in rows:
        print(f"{str(r['reuse_actors']):>12} {r['sweep_wall_s']:>10.1f}s {r['s_per_trial']:>7.1f}s")
    print(f"on / off: {summary['on_over_off']:.2f}x   load before {before}, after {rows[-1]['load_after']}")
    out = Path(args.out or REPO / "results" / "benchmarks" / f"trial_reuse_{args.kind}.json")
    out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
