"""Speed of raytag's hot paths, two versions of the code side by side in one run (issue 11).

`--before` and `--after` are two source trees (e.g. a `git archive` of the old commit and
this checkout). Every measurement runs in a fresh child process with PYTHONPATH set to
one tree (so the child, its forked processes and its Ray workers import that tree's
raytag), before and after one right after the other, one at a time:

  features   a fresh process builds the feature store of --data into an empty cache:
             "cold" = the build call, with whatever it starts (Ray for the old tree, the
             worker processes); "warm" = the same build again into another empty folder in
             that process (Ray's workers, or nothing, already started). Against the
             single-process librosa loop and raytag's own front end loop of
             bench_features.py on the same clips (imports and one clip untimed).
  epoch      bench_throughput.py's work (cnn2d width 32, 2 s crops, batch 32, curated
             folds != 0 of 5, --epochs epochs): `fit_pipeline` on worker groups with 1 worker x 1 CPU and
             with 2 workers x 0.5 CPU, against the engine's own epoch function run in the
             child process with 1 and 2 torch threads. Per epoch: the median gap between
             rank 0's epoch starts (training + evaluation + report + checkpoint), start-up
             excluded; the in-process epoch = training + the same evaluation.
  startup    (a Ray Train worker group: train.runner ray_train where the tree has it)
             from the fit_pipeline call to rank 0's first epoch start, the first fit of
             a Ray session and a later one (Ray already up, as for every trial after the
             first of a sweep), with the same tiny work.
  runners    in the --after tree only: the startup section's fits with train.runner
             ray_train and auto (in-process for this 1-worker CPU run) alternated in one
             child, 3 of each after one untimed warm-up fit of each: start-up and wall time.
  demo       `raytag demo --out <empty folder>`: wall time of the whole command.

Limits: epoch and demo take one sample of each variant and tree, the trees one after the
other (not alternated in rounds as bench_throughput.py does), so a change in the machine's
load between them shows up as a difference; read them with the recorded load averages, and
use bench_throughput.py for an epoch-time comparison that needs intervals.

Memory against dataset size (1x and 4x clips) is benchmarks/bench_scale.py.

    git archive <old commit> | tar -x -C /tmp/before
    .venv/bin/python benchmarks/bench_speed.py --before /tmp/before --after . \
        --data /work/bench/escfat --out results/benchmarks/speed.json

Writes the JSON and prints the tables; results/benchmarks/speed.md is written from it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = ["features", "epoch", "startup", "runners", "demo"]


# ============================================================================ child side
def child_tree(tree: str):
    """Import raytag from `tree`, benchmark helpers from this folder."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, tree)
    import raytag

    if Path(raytag.__file__).resolve().parents[1] != Path(tree).resolve():
        raise SystemExit(f"raytag imported from {raytag.__file__}, not from {tree}")


def peak_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


def feature_cfg():
    from bench_features import feature_cfg as cfg

    return cfg()


def child_features(args) -> dict:
    from raytag.data.layouts import load_dataset
    from raytag.features.store import build_feature_store

    dataset = load_dataset(args.data, sample_rate=16000)
    cache = Path(args.cache)
    t0 = time.perf_counter()
    store = build_feature_store(dataset, feature_cfg(), cache / "cold", progress=False)
    cold = time.perf_counter() - t0
    info = dict(store.build_info)
    out = {"clips": len(store), "cold_s": cold, "cold_info": info, "driver_peak_rss_mb": peak_mb(),
           "children_peak_rss_mb": peak_mb(resource.RUSAGE_CHILDREN)}
    if not args.cold_only:
        t0 = time.perf_counter()
        build_feature_store(dataset, feature_cfg(), cache / "warm", progress=False)
        out["warm_s"] = time.perf_counter() - t0
    # the largest process of the build: this one, a forked worker or a Ray task's worker
    out["build_peak_rss_mb"] = max(out["driver_peak_rss_mb"], out["children_peak_rss_mb"],
                                   info.get("task_peak_rss_mb") or 0.0)
    return out


def child_loop(args) -> dict:
    import bench_features

    fn = bench_features.run_librosa_loop if args.child == "librosa" else bench_features.run_frontend_loop
    out = fn(Path(args.data), None)
    out.pop("check", None)
    return out


def child_epoch(args) -> dict:
    import bench_throughput as bt

    from raytag.session import ensure_ray  # Ray as a user's fit starts it

    data, cache, storage = Path(args.data), Path(args.cache), Path(args.work) / "runs"
    storage.mkdir(parents=True, exist_ok=True)
    cfg1, cfg2 = bt.make_config(args.epochs, 1, 2.0), bt.make_config(args.epochs, 2, 2.0)
    ensure_ray()  # before every variant, so all four run beside the same idle Ray processes
    runs = {"plain_1t": bt.run_plain(cfg1, data, cache, 1)}
    runs["ray_1w"] = bt.run_ray(cfg1, data, cache, storage, "speed-1w")
    runs["plain_2t"] = bt.run_plain(cfg1, data, cache, 2)
    runs["ray_2w"] = bt.run_ray(cfg2, data, cache, storage, "speed-2w")
    for row in runs.values():
        row.pop("val_lwlrap_by_epoch", None)
    return runs


def tiny_fit_setup(args) -> tuple[Path, Path, Path, dict]:
    """The startup and runners sections' tiny 1-worker fit: data, feature cache (built here:
    the store is not start-up), storage and config."""
    import bench_throughput as bt

    from raytag.config import Config
    from raytag.training.runner import prepare_data

    data, cache, storage = Path(args.data), Path(args.cache), Path(args.work) / "runs"
    storage.mkdir(parents=True, exist_ok=True)
    cfg = bt.make_config(1, 1, 2.0)
    cfg["model"] = {"name": "cnn2d", "width": 8, "depth": 2}
    prepare_data(Config.from_dict(cfg), data, str(cache), progress=False)
    return data, cache, storage, cfg


def child_startup(args) -> dict:
    from bench_training import epoch_times, read_trace

    from raytag.config import Config
    from raytag.session import ensure_ray  # Ray as a user's fit starts it
    from raytag.training.runner import fit_pipeline

    data, cache, storage, cfg = tiny_fit_setup(args)
    t0 = time.perf_counter()
    ensure_ray()  # (already up where the old tree's store build started it)
    out = {"ray_init_s": time.perf_counter() - t0, "fits": []}
    for k in range(3):
        trace = storage / f"startup-{k}.jsonl"
        trace.unlink(missing_ok=True)
        os.environ["RAYTAG_TRACE"] = str(trace)
        start = time.time()
        fit_pipeline(Config.from_dict(cfg), data, str(storage), f"startup-{k}-{int(start)}",
                     feature_cache=str(cache), progress=False)
        end = time.time()
        events = read_trace(trace)
        first = epoch_times(events)["first_epoch_start"]
        out["fits"].append({"startup_s": first - start, "wall_s": end - start,
                            "events": {e["event"]: round(e["time"] - start, 2) for e in events if e.get("rank") == 0}})
    return out


def child_runners(args) -> dict:
    """The startup fits with each train.runner, alternated in one Ray session."""
    from bench_training import epoch_times, read_trace

    from raytag.config import Config
    from raytag.session import ensure_ray
    from raytag.training.runner import fit_pipeline

    data, cache, storage, cfg = tiny_fit_setup(args)
    ensure_ray()
    out = {"fits": []}
    order = ["ray_train", "auto"] * 4  # the first of each: a session's first, untimed
    for k, runner in enumerate(order):
        trace = storage / f"runners-{k}.jsonl"
        trace.unlink(missing_ok=True)
        os.environ["RAYTAG_TRACE"] = str(trace)
        start = time.time()
        result = fit_pipeline(Config.from_dict({**cfg, "train": {**cfg["train"], "runner": runner}}), data,
                              str(storage), f"runners-{k}-{int(start)}", feature_cache=str(cache), progress=False)
        end = time.time()
        first = epoch_times(read_trace(trace))["first_epoch_start"]
        out["fits"].append({"runner": runner, "ran_as": result.metrics["runner"], "warm_up": k < 2,
                            "startup_s": round(first - start, 2), "wall_s": round(end - start, 2)})
    return out


CHILDREN = {"features": child_features, "librosa": child_loop, "frontend": child_loop, "epoch": child_epoch,
            "startup": child_startup, "runners": child_runners}


# ============================================================================ parent side
def run_child(mode: str, tree: Path, args, extra: list[str] = (), timeout: int = 1800) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), RAY_DEDUP_LOGS="0", TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1")
    env.pop("RAYTAG_TRACE", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--tree", str(tree), *extra]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"child {mode} on {tree} failed ({proc.returncode})")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["_child_wall_s"] = round(time.perf_counter() - t0, 1)
    out["_load_1m_before"] = round(load, 2)
    out["_load_1m_after"] = round(os.getloadavg()[0], 2)
    return out


def run_demo(tree: Path, work: Path) -> dict:
    out_dir = work / "demo"
    shutil.rmtree(out_dir, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(tree), RAY_DEDUP_LOGS="0")
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raytag.cli", "demo", "--out", str(out_dir)], env=env, cwd=tree,
                          capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"demo on {tree} failed")
    summary = json.loads((out_dir / "demo" / "demo_summary.json").read_text())
    board = (out_dir / "demo" / "leaderboard.csv").read_text().splitlines()
    return {"wall_s": round(wall, 1), "reported_s": summary["seconds"], "trials": len(board) - 1,
            "best_cv_lwlrap": summary["best_cv_lwlrap"], "ensemble_cv_lwlrap": summary["ensemble_cv_lwlrap"],
            "_load_1m_before": round(load, 2), "_load_1m_after": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path)
    parser.add_argument("--after", type=Path, default=HERE.parent)
    parser.add_argument("--data", type=Path, default=Path("/work/bench/escfat"))
    parser.add_argument("--sections", nargs="*", default=SECTIONS, choices=SECTIONS)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("/tmp/raytag_speed"))
    parser.add_argument("--out", type=Path, default=HERE.parent / "results" / "benchmarks" / "speed.json")
    # child side
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--cold-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child_tree(args.tree)
        print(json.dumps(CHILDREN[args.child](args), default=str))
        return 0

    trees = {"before": args.before.resolve(), "after": args.after.resolve()} if args.before else {"after": args.after.resolve()}
    report = {"benchmark": "speed (issue 11)", "trees": {k: str(v) for k, v in trees.items()},
              "data": str(args.data), "epochs": args.epochs,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "load_avg_start": os.getloadavg()}, "sections": {}}
    started = time.perf_counter()

    def work_for(name: str) -> Path:
        path = args.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def save():
        report["machine"]["load_avg_end"] = os.getloadavg()
        report["total_s"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))

    data = ["--data", str(args.data)]
    if "features" in args.sections:
        sec = report["sections"]["features"] = {}
        for _ in range(2):  # the page cache warm for every variant; the second round is kept
            for name, tree in trees.items():
                with tempfile.TemporaryDirectory(dir=work_for("features")) as cache:
                    sec[name] = run_child("features", tree, args, data + ["--cache", cache])
            sec["librosa_loop"] = run_child("librosa", trees["after"], args, data)
            sec["frontend_loop"] = run_child("frontend", trees["after"], args, data)
        save()
        print_features(sec)
    def per_tree(kind: str, extra: list[str] = ()) -> dict:
        """One child run of `kind` per source tree, each with its own cache and work folder."""
        sec = report["sections"][kind] = {}
        for name, tree in trees.items():
            cache = work_for(f"{kind}-{name}")
            sec[name] = run_child(kind, tree, args, data + ["--cache", str(cache / "features"), "--work", str(cache),
                                                           *extra])
            save()
        return sec

    if "epoch" in args.sections:
        print_epoch(per_tree("epoch", ["--epochs", str(args.epochs)]))
    if "startup" in args.sections:
        print_startup(per_tree("startup"))
    if "runners" in args.sections:
        cache = work_for("runners")
        sec = report["sections"]["runners"] = run_child(
            "runners", trees["after"], args, data + ["--cache", str(cache / "features"), "--work", str(cache)])
        save()
        print_runners(sec)
    if "demo" in args.sections:
        sec = report["sections"]["demo"] = {}
        for name, tree in trees.items():
            sec[name] = run_demo(tree, work_for(f"demo-{name}"))
            save()
            print(f"demo {name}: {sec[name]['wall_s']} s", flush=True)
    save()
    print(f"wrote {args.out} ({report['total_s'] / 60:.1f} min)")
    return 0


# ============================================================================ tables
def print_features(sec: dict):
    lib = sec["librosa_loop"]["clips"] / sec["librosa_loop"]["seconds"]
    front = sec["frontend_loop"]["clips"] / sec["frontend_loop"]["seconds"]
    print(f"librosa loop {lib:.0f} clips/s, front-end loop {front:.0f} clips/s (one process)")
    for name in ("before", "after"):
        if name in sec:
            r = sec[name]
            cold, warm = r["clips"] / r["cold_s"], r["clips"] / r["warm_s"]
            print(f"{name:>7}: cold {r['cold_s']:.2f} s = {cold / lib:.2f}x librosa, warm {r['warm_s']:.2f} s = "
                  f"{warm / lib:.2f}x ({r['cold_info'].get('ran_in', 'ray tasks')}), load {r['_load_1m_before']}")


def print_epoch(sec: dict):
    for name, runs in sec.items():
        if name.startswith("_"):
            continue
        r = {k: v for k, v in runs.items() if not k.startswith("_")}
        print(f"{name:>7}: ray_1w/plain_1t {r['ray_1w']['median_epoch_s'] / r['plain_1t']['median_epoch_s']:.2f}, "
              f"ray_2w/plain_2t {r['ray_2w']['median_epoch_s'] / r['plain_2t']['median_epoch_s']:.2f}, "
              f"start-up 1w {r['ray_1w']['startup_s']:.1f} s, 2w {r['ray_2w']['startup_s']:.1f} s "
              f"(load {runs['_load_1m_before']})")


def print_startup(sec: dict):
    for name, r in sec.items():
        print(f"{name:>7}: ray.init {r['ray_init_s']:.1f} s; fit start-up " +
              ", ".join(f"{f['startup_s']:.1f}" for f in r["fits"]) + f" s (load {r['_load_1m_before']})")


def print_runners(sec: dict):
    timed = [f for f in sec["fits"] if not f["warm_up"]]
    mean = {}
    for runner in ("ray_train", "auto"):
        fits = [f for f in timed if f["runner"] == runner]
        mean[runner] = {k: sum(f[k] for f in fits) / len(fits) for k in ("startup_s", "wall_s")}
        print(f"{runner:>9} (ran as {fits[0]['ran_as']}): start-up " + ", ".join(f"{f['startup_s']:.1f}" for f in fits)
              + " s, wall " + ", ".join(f"{f['wall_s']:.1f}" for f in fits) + " s")
    print(f"auto / ray_train: start-up {mean['auto']['startup_s'] / mean['ray_train']['startup_s']:.2f}x, "
          f"wall {mean['auto']['wall_s'] / mean['ray_train']['wall_s']:.2f}x "
          f"(load {sec['_load_1m_before']} before, {sec['_load_1m_after']} after)")


if __name__ == "__main__":
    raise SystemExit(main())
