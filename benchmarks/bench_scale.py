"""Peak memory against dataset size (issue 11, "scale"): the feature build and a training run
on the dev benchmark (1x) and on the same clips copied under new names (4x, a stand-in for
FSDKaggle2019's ~24k clips), as a user runs them:

  prepare   `raytag prepare --data D --config C --cache <empty folder>` (the store build:
            the command's process and the processes it forks)
  train     `raytag train --config C --data D --set cv.folds=[0] --set pipeline.finetune.epochs=E`
            with the store of `prepare` reused (RAYTAG_CACHE), so only training is measured:
            the driver, its local Ray session (GCS, raylet, dashboard, ...), the Train
            controller, its helper actors and the Train worker(s)

Every command runs as a child process; a sampler here reads /proc every --interval s and
sums the memory of the child and all its descendants (forked feature builders, Ray's
processes and workers) at that instant. Figures per command:

  tree_rss_mb     peak over samples of the summed VmRSS (counts shared pages, such as torch's
                  libraries, once per process: the figure `ps`/`top` users add up)
  tree_pss_mb     peak of the summed Pss (shared pages split between their processes: the
                  memory the tree really takes)
  tree_anon_mb    peak of the summed RssAnon (heap, no file pages: grows with arrays held)
  tree_file_mb    peak of the summed RssFile (mapped files: libraries, memory-mapped shards)
  groups          the same peaks per kind of process (driver, forked, ray_system, train_worker, ...)
  max_hwm_mb      the largest VmHWM (kernel's peak RSS, between samples too) of one process

The 4x dataset is built once by make_scaled_bench.py (real copies, so every clip is its own
file) into --data4x. Ratios 4x/1x are printed and written with the load average at every
command. Run it alone (it keeps two cores busy):

    git archive <commit> | tar -x -C /tmp/before     # optional: an older tree beside this one
    flock /tmp/raytag-heavy.lock .venv/bin/python benchmarks/bench_scale.py \\
        --trees before=/tmp/before after=. --out results/benchmarks/scale.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from make_scaled_bench import scale as make_scaled  # noqa: E402
from proc_mem import descendants, status_kb  # noqa: E402

# process kinds, by the title Ray gives its processes (the first word of the command line)
RAY_SYSTEM = ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env", "ray_client",
              "agent", "DashboardAgent", "RuntimeEnvAgent", "ray::IDLE", "ray::_")


# ============================================================================ /proc sampling
def read_mem_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem (status) and Pss (smaps_rollup), in KiB."""
    out = status_kb(pid)
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            out["Pss"] = int(line.split()[1])
            break
    return out


def title_of(pid: int) -> str:
    words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return " ".join(w.decode(errors="replace") for w in words[:3]).strip()


def kind_of(pid: int, root: int, root_title: str, title: str) -> str:
    if pid == root:
        return "driver"
    if "RayTrainWorker" in title:
        return "train_worker"
    if "TrainController" in title:
        return "train_controller"
    if title == root_title:
        return "forked"  # a feature builder forked from the command (same command line)
    if any(word in title for word in RAY_SYSTEM):
        return "ray_system"
    if title.startswith("ray::"):
        return "ray_actor"  # Ray Train's helper actors, Ray tasks
    return "other"


class TreeSampler(threading.Thread):
    """Every `interval` s, the summed memory of `root` and its descendants; the peaks kept."""

    FIELDS = {"rss": "VmRSS", "pss": "Pss", "anon": "RssAnon", "file": "RssFile"}

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.root_title = title_of(root)
        self.peak = {f: 0 for f in self.FIELDS}
        self.group_peak: dict[str, dict[str, int]] = {}
        self.procs: dict[int, dict] = {}  # pid -> kind, title, max rss / anon / file / hwm (KiB)
        self.samples = 0
        self.max_procs = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=10)

    def sample(self):
        totals = {f: 0 for f in self.FIELDS}
        groups: dict[str, dict[str, int]] = {}
        seen = 0
        try:
            self.root_title = title_of(self.root)
        except OSError:
            pass  # the command has just ended
        for pid in [self.root, *descendants(self.root)]:
            try:
                mem = read_mem_kb(pid)
                title = title_of(pid)  # read every time: a Ray worker renames itself once it has a job
            except (OSError, ValueError):
                continue  # ended between the listing and the read
            if "VmRSS" not in mem:
                continue  # a zombie
            seen += 1
            row = self.procs.setdefault(pid, {"rss": 0, "anon": 0, "file": 0, "hwm": 0})
            row["title"], row["kind"] = title, kind_of(pid, self.root, self.root_title, title)
            for f, key in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"), ("hwm", "VmHWM")):
                row[f] = max(row[f], mem.get(key, 0))
            group = groups.setdefault(row["kind"], {f: 0 for f in self.FIELDS})
            for f, key in self.FIELDS.items():
                totals[f] += mem.get(key, 0)
                group[f] += mem.get(key, 0)
        self.samples += 1
        self.max_procs = max(self.max_procs, seen)
        for f in self.FIELDS:
            self.peak[f] = max(self.peak[f], totals[f])
        for kind, group in groups.items():
            peak = self.group_peak.setdefault(kind, {f: 0 for f in self.FIELDS})
            for f in self.FIELDS:
                peak[f] = max(peak[f], group[f])

    def figures(self) -> dict:
        mb = lambda kb: round(kb / 1024.0, 1)  # noqa: E731
        biggest = max(self.procs.values(), key=lambda r: r["hwm"], default={"hwm": 0, "title": ""})
        return {
            **{f"tree_{f}_mb": mb(v) for f, v in self.peak.items()},
            "groups": {k: {f"{f}_mb": mb(v) for f, v in g.items()} for k, g in sorted(self.group_peak.items())},
            "max_hwm_mb": mb(biggest["hwm"]), "max_hwm_process": biggest["title"],
            "processes_seen": len(self.procs), "max_processes_at_once": self.max_procs, "samples": self.samples,
            # the largest processes: peak RSS (kernel) and the largest anonymous / file-backed RSS sampled
            "processes": sorted(({"kind": r["kind"], "title": r["title"][:80], "hwm_mb": mb(r["hwm"]),
                                  "anon_mb": mb(r["anon"]), "file_mb": mb(r["file"])}
                                 for r in self.procs.values()), key=lambda r: -r["hwm_mb"])[:12],
        }


# ============================================================================ commands
def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure(cmd: list[str], env: dict, interval: float, log: Path, cwd: Path) -> dict:
    """Run `cmd`, sample its process tree until it exits; its figures, wall time and load."""
    before = load()
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        code = proc.wait()
        sampler.stop()
    wall = time.perf_counter() - t0
    if code:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({code}); log: {log}")
    return {"wall_s": round(wall, 1), "load_before": before, "load_after": load(), **sampler.figures()}


def check_tree(tree: Path, env: dict) -> None:
    """The commands must import raytag from `tree` (PYTHONPATH), not from the installed copy."""
    got = subprocess.run([sys.executable, "-c", "import raytag; print(raytag.__file__)"], env=env, cwd=tree,
                         capture_output=True, text=True).stdout.strip()
    if not got or Path(got).resolve().parents[1] != tree.resolve():
        raise SystemExit(f"{tree}: its commands would import raytag from {got or '(nothing)'}, not from this tree")


def run_pair(label: str, tree: Path, data: Path, work: Path, args) -> dict:
    """`raytag prepare` into an empty cache, then `raytag train` on that store, from `tree`."""
    raytag = [sys.executable, "-m", "raytag.cli"]
    cache, runs = work / "features", work / "runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(tree), RAYTAG_CACHE=str(cache), RAY_DEDUP_LOGS="0", COLUMNS="200")
    env.pop("RAY_ADDRESS", None)  # a local session of its own, inside the sampled tree
    check_tree(tree, env)
    config = str(args.config.resolve())
    out = {"data": str(data), "tree": str(tree)}
    out["prepare"] = measure([*raytag, "prepare", "--data", str(data), "--config", config, "--cache", str(cache)],
                             env, args.interval, work / "prepare.log", tree)
    print(f"{label} prepare: {brief(out['prepare'])}", flush=True)
    out["train"] = measure([*raytag, "train", "--config", config, "--data", str(data), "--storage", str(runs),
                            "--name", f"scale-{label}", "-q", "--set", "cv.folds=[0]",
                            "--set", f"pipeline.finetune.epochs={args.epochs}"],
                           env, args.interval, work / "train.log", tree)
    print(f"{label} train:   {brief(out['train'])}", flush=True)
    metrics = runs / f"scale-{label}" / "outputs" / "metrics.json"
    if metrics.is_file():
        out["train"]["metrics"] = json.loads(metrics.read_text())
    out["clips"] = count_clips(data)
    return out


def count_clips(data: Path) -> dict:
    return {split: sum(1 for _ in (data / split).iterdir()) for split in ("train_curated", "train_noisy", "test")}


def brief(r: dict) -> str:
    return (f"tree RSS {r['tree_rss_mb']:.0f} MB, PSS {r['tree_pss_mb']:.0f}, anon {r['tree_anon_mb']:.0f}, "
            f"largest process {r['max_hwm_mb']:.0f}; {r['wall_s']} s; load {r['load_before'][0]}")


RATIO_FIELDS = ("tree_rss_mb", "tree_pss_mb", "tree_anon_mb", "tree_file_mb", "max_hwm_mb")


def ratios(small: dict, big: dict) -> dict:
    out = {}
    for step in ("prepare", "train"):
        a, b = small[step], big[step]
        row = {f: round(b[f] / a[f], 3) for f in RATIO_FIELDS if a.get(f)}
        for kind in sorted(set(a["groups"]) & set(b["groups"])):
            if a["groups"][kind]["rss_mb"]:
                row[f"{kind}_rss"] = round(b["groups"][kind]["rss_mb"] / a["groups"][kind]["rss_mb"], 3)
        out[step] = row
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/bench/escfat"))
    parser.add_argument("--data4x", type=Path, default=Path("/tmp/escfat4x"))
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/raytag_scale"))
    parser.add_argument("--trees", nargs="+", default=[f"this={ROOT}"], metavar="NAME=DIR",
                        help="Source trees to measure, one after another (e.g. before=/tmp/old after=.): "
                             "each command imports raytag from its tree.")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "scale.json")
    parser.add_argument("--markdown", type=Path, metavar="JSON", help="Print the tables of a finished run's JSON and stop.")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    trees = dict(item.split("=", 1) for item in args.trees)
    trees = {name: Path(folder).resolve() for name, folder in trees.items()}

    big = make_scaled(args.data, args.data4x, args.factor)
    large = f"{args.factor}x"
    report = {"benchmark": f"scale (issue 11): peak memory of the feature build and of training, 1x vs {large} clips",
              "trees": {name: {"path": str(tree), "commit": git_commit(tree)} for name, tree in trees.items()},
              "config": str(args.config), "epochs": args.epochs, "interval_s": args.interval,
              "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "runs": {}, "ratios": {}}
    started = time.perf_counter()

    def save():
        report["total_s"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    for name, tree in trees.items():
        runs = report["runs"][name] = {}
        for label, data in (("1x", args.data), (large, big)):
            runs[label] = run_pair(f"{name} {label}", tree, data, args.work / name / label, args)
            save()
        report["ratios"][name] = ratios(runs["1x"], runs[large])
        save()
    for name, by_step in report["ratios"].items():
        for step, row in by_step.items():
            print(f"{name} {step} {large}/1x: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    print(f"wrote {args.out} ({report['total_s'] / 60:.1f} min)")
    return 0


def markdown(report: dict) -> str:
    """The figures of a report as markdown tables (for results/benchmarks/speed.md)."""
    lines = ["| tree | step | clips | tree RSS MB | tree PSS MB | tree anon MB | tree file MB | largest process MB "
             "| train worker MB (anon / file) | wall s | load 1/5/15 |", "|" + "---|" * 11]
    for name, runs in report["runs"].items():
        for label, run in runs.items():
            clips = sum(run["clips"].values())
            for step in ("prepare", "train"):
                r = run[step]
                worker = next((p for p in r["processes"] if p["kind"] == "train_worker"), None)
                lines.append(f"| {name} | {step} {label} | {clips} | {r['tree_rss_mb']:.0f} | {r['tree_pss_mb']:.0f} | "
                             f"{r['tree_anon_mb']:.0f} | {r['tree_file_mb']:.0f} | {r['max_hwm_mb']:.0f} | "
                             + (f"{worker['hwm_mb']:.0f} ({worker['anon_mb']:.0f} / {worker['file_mb']:.0f})" if worker else "-")
                             + f" | {r['wall_s']} | {' '.join(str(x) for x in r['load_before'])} |")
    lines += ["", "| tree | step | tree RSS | tree PSS | tree anon | largest process | train worker RSS |", "|" + "---|" * 7]
    for name, by_step in report["ratios"].items():
        for step, row in by_step.items():
            lines.append(f"| {name} | {step} | " + " | ".join(
                f"{row[k]:.2f}x" if k in row else "-"
                for k in ("tree_rss_mb", "tree_pss_mb", "tree_anon_mb", "max_hwm_mb", "train_worker_rss")) + " |")
    return "\n".join(lines)


def git_commit(tree: Path) -> str:
    """The commit of a checkout ("" for an exported tree), with "+changes" when it has uncommitted ones."""
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=tree, capture_output=True, text=True).stdout.strip()

    if not (tree / ".git").exists():
        return ""
    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


if __name__ == "__main__":
    raise SystemExit(main())
