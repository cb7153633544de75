"""The same tiny raytag sweep on one node and on a 2-node loopback cluster, then the
second node killed mid-trial: wall times, where trial drivers and workers ran, and what
happened step by step. Writes results/benchmarks/multinode.json.

    .venv/bin/python benchmarks/bench_multinode.py            # about 6-10 minutes on 2 cores

Both clusters are started here by `raytag.testing.LocalCluster` (its own sessions, ports
and token) and torn down by killing only their processes. One node = head only with
4 logical CPUs; two nodes = head + second node with 2 logical CPUs each, so the two
layouts offer the same CPUs (this machine has 2 physical cores: the comparison measures
scheduling and start-up cost across nodes, not extra compute).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

from raytag import cluster as rc  # noqa: E402
from raytag.testing import LocalCluster  # noqa: E402
from test_multinode import SWEEP_SPACE, _Watcher  # noqa: E402  (same tiny sweep as the test)


def _prepare(root: Path) -> tuple[Path, Path, Path]:
    from raytag.config import Config
    from raytag.data.demo import make_demo_dataset

    data = Path(make_demo_dataset(root / "demo", seed=0, scale=0.25))
    space = root / "twonode.yaml"
    space.write_text(SWEEP_SPACE)
    features = Config.from_dict({"features": {"n_mels": 32}}).features
    return data, space, features


def _run(layout: str, root: Path, data: Path, space: Path, features, kill: bool) -> dict:
    import ray

    from raytag.data.layouts import load_dataset
    from raytag.features.store import build_feature_store
    from raytag.search.tuner import run_sweep

    n_nodes, cpus = (1, 4) if layout == "one_node" else (2, 2)
    cluster = LocalCluster(root=root / f"rc_{layout}_{int(kill)}", num_cpus=cpus)
    events, t0 = [], time.time()

    def note(what: str):
        events.append({"t_s": round(time.time() - t0, 2), "event": what})
        print(f"[{layout}{' kill' if kill else ''}] {events[-1]['t_s']:7.1f}s  {what}", flush=True)

    try:
        cluster.start(n_nodes=n_nodes)
        cluster.connect(log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes(n_nodes)
        note(f"cluster up: {n_nodes} node(s) x {cpus} CPUs")
        os.environ[rc.SHARED_FS_ENV] = "1"
        storage = str(root / f"storage_{layout}_{int(kill)}")
        rc.check_storage(storage)
        cache = root / "features"
        build_feature_store(load_dataset(data, sample_rate=features.sample_rate), features, cache, progress=False)
        note("features ready (cached)")
        watcher = _Watcher(cluster).start()
        out = {}
        started = time.time()

        def sweep():
            out["result"] = run_sweep(space, data, storage=storage, name="twonode", progress=False,
                                      feature_cache=str(cache))
            out["seconds"] = time.time() - started

        runner = threading.Thread(target=sweep, daemon=True)
        runner.start()
        note("sweep submitted (2 trials, up to 2 at once)")
        killed_at, second = None, cluster.nodes[-1].name
        seen_workers = set()
        while runner.is_alive():
            for node in cluster.nodes:
                for pid in watcher.pids(node.name, "RayTrainWorker") - seen_workers:
                    seen_workers.add(pid)
                    note(f"Train worker pid {pid} started on {node.name}")
            if kill and killed_at is None:
                training = [p for p in watcher.pids(second, "RayTrainWorker") if time.time() - watcher.first_seen(p) > 4]
                if training:
                    drivers = sorted(watcher.pids(second, "ImplicitFunc", after=time.time() - 1))
                    pids = cluster.kill_node(second)
                    killed_at = time.time()
                    note(f"SIGKILL {second}: {len(pids)} processes (trial drivers there: {len(drivers)})")
                    alive = rc.cluster_nodes()
                    note(f"nodes alive right after: {len(alive)}")
                    cluster.wait_for_nodes(1, timeout=30)
                    note("GCS marks the node dead")
            time.sleep(0.3)
        runner.join()
        watcher.stop()
        note(f"sweep returned after {out['seconds']:.1f} s")
        board = out["result"].leaderboard
        placement = {}
        for node in cluster.nodes:
            placement[node.name] = {
                "train_workers": len(watcher.pids(node.name, "RayTrainWorker")),
                "trial_drivers": len(watcher.pids(node.name, "ImplicitFunc")),
            }
        if killed_at:
            placement["head"]["train_workers_started_after_kill"] = len(
                watcher.pids("head", "RayTrainWorker", after=killed_at + 0.5) - watcher.pids("head", "RayTrainWorker", before=killed_at))
        trials = [{"trial_id": r["trial_id"], "status": r["status"], "reason": str(r["reason"])[:300],
                   "cv_lwlrap": None if r["cv_lwlrap"] != r["cv_lwlrap"] else round(float(r["cv_lwlrap"]), 4),
                   "epochs_run": None if r["epochs_run"] != r["epochs_run"] else int(r["epochs_run"])}
                  for _, r in board.iterrows()]
        for t in trials:
            note(f"trial {t['trial_id']}: {t['status']} {t['reason'][:120]}")
        return {"layout": layout, "nodes": n_nodes, "cpus_per_node": cpus, "killed_second_node": kill,
                "sweep_wall_s": round(out["seconds"], 1), "placement": placement, "trials": trials,
                "events": events}
    finally:
        cluster.disconnect()
        cluster.stop()
        os.environ.pop(rc.SHARED_FS_ENV, None)


def parse_args() -> argparse.Namespace:
    """No options; parsed so that --help prints this and runs nothing (the run overwrites multinode.json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return ap.parse_args()


def main():
    import torch

    parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="rtbench_") as tmp:
        root = Path(tmp)
        data, space, features = _prepare(root)
        runs = [_run("one_node", root, data, space, features, kill=False),
                _run("two_nodes", root, data, space, features, kill=False),
                _run("two_nodes", root, data, space, features, kill=True)]
    one, two = runs[0]["sweep_wall_s"], runs[1]["sweep_wall_s"]
    report = {
        "what": "2-trial raytag sweep (tiny cnn2d, demo data scale 0.25, 2 folds, 2 Train workers x 0.5 CPU per trial)",
        "machine": f"{os.cpu_count()} cores, shared with other jobs; loopback cluster via `ray start`",
        "wall_s": {"one_node": one, "two_nodes": two, "two_nodes_ratio": round(two / one, 2)},
        "runs": runs,
    }
    out = REPO / "results" / "benchmarks" / "multinode.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["wall_s"]), f"\nwritten to {out}")


if __name__ == "__main__":
    main()
