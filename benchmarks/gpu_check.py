"""One GPU, one table, at most 8 minutes: does raytag use the GPU it is given?

Run through benchmarks/gpu_check.sh (which stops with a clear message where there is no
GPU). Uses the installed raytag and its own demo data (`raytag make-demo-data`).

Sections (one table, results/benchmarks/gpu_check.md):
  1 front end   raytag.features.frontends at search_spaces/fat2019.yaml's feature settings
                (44.1 kHz, n_fft 2560, hop 345, 128 mels; logmel and colormel), 5 s clips in
                batches of 32: clips/s on the CPU (all cores) and on the GPU (wave copied
                from the host each batch, synchronised).
  2 epochs      one fit_pipeline per model (cnn2d, resnet18; width 64) at fat2019.yaml's
                base settings (2 s crops, batch 64, AdamW one-cycle, lsoft, TTA 2), fine-tune
                only, fold 0 of 5, 1 worker x 1 GPU: median epoch seconds after the first
                (training, held-out evaluation and checkpoint, from the run's per-epoch
                events), training
                clips per epoch-second, and GPU utilisation / memory sampled by nvidia-smi
                in the background between the first and last epoch.
  2b profile    cnn2d's third epoch under torch.profiler (train.profile_epoch): host time
                by phase (batch, forward, wait for the device, backward, optimizer) and
                device time; the whole report (operators too) goes beside the table as
                <out>_profile.txt.
  3 shared GPU  `raytag tune`'s path (run_sweep) with 2 trials of cnn2d at resources
                num_workers 1, gpus_per_worker 0.5, max_concurrent_trials 2: sweep wall
                time, each trial's median epoch seconds, the most trainer processes seen on
                the GPU at once (2 = the trials shared it) and utilisation.
  4 DDP         cnn2d on 2 workers: 2 x 1 GPU over NCCL when there are 2 GPUs; with one GPU,
                2 x 0.5 GPU over gloo (NCCL refuses two ranks on one GPU), which measures
                DDP's cost on one device, not scaling.

`--cpu-smoke` runs every section tiny on the CPU (no GPU, no nvidia-smi), to check the
script itself; its table goes to /tmp unless --out is given.

    benchmarks/gpu_check.sh                   # on a GPU node, about 6 minutes
    python benchmarks/gpu_check.py --cpu-smoke
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
FAT2019 = REPO / "search_spaces" / "fat2019.yaml"
SECTIONS = ("frontend", "epochs", "profile", "shared", "ddp")  # --sections, in the order they run


NOTES = "<!-- notes below are kept when the script rewrites this file -->"


def write_keeping_notes(out: Path, text: str):
    """Write the table to `out`, keeping what an earlier file held below NOTES."""
    out.parent.mkdir(parents=True, exist_ok=True)
    notes = out.read_text().split(NOTES, 1)[1] if out.is_file() and NOTES in out.read_text() else "\n"
    out.write_text(text + "\n" + NOTES + notes)


# ----------------------------------------------------------------------------- the table
@dataclass
class Table:
    rows: list = field(default_factory=list)

    def add(self, section: str, setting: str, measure: str, value, note: str = ""):
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        self.rows.append((section, setting, measure, text, note))
        print(f"  {section} | {setting} | {measure}: {text} {note}".rstrip(), flush=True)

    def markdown(self) -> str:
        head = "| section | setting | measure | value | note |\n|---|---|---|---|---|\n"
        return head + "".join("| " + " | ".join(r) + " |\n" for r in self.rows)


# ----------------------------------------------------------------------------- GPU sampling
class GpuSampler:
    """nvidia-smi every `every_s` in a background thread: (time, utilisation %, memory MiB,
    compute processes). Without nvidia-smi (CPU smoke) it samples nothing."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.samples = every_s, []
        self.available = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _query(self, *args: str) -> list[str]:
        out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]

    def _run(self):
        while not self._stop.is_set():
            try:
                gpu = self._query("--query-gpu=utilization.gpu,memory.used")
                apps = self._query("--query-compute-apps=pid")
                util = [float(line.split(",")[0]) for line in gpu]
                mem = [float(line.split(",")[1]) for line in gpu]
                self.samples.append((time.time(), sum(util) / len(util), sum(mem), len(apps)))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError, ZeroDivisionError):
                pass  # one lost sample; the next may work
            self._stop.wait(self.every_s)

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()

    def between(self, start: float, end: float) -> list[tuple]:
        return [s for s in self.samples if start <= s[0] <= end]

    def within(self, windows: list[tuple[float, float]]) -> list[tuple]:
        return [s for s in self.samples if any(a <= s[0] <= b for a, b in windows)]

    def summary(self, start: float, end: float, windows: list[tuple[float, float]] | None = None) -> str:
        got = self.within(windows) if windows is not None else self.between(start, end)
        if not got:
            return "n/a (no nvidia-smi samples)"
        util = statistics.mean(s[1] for s in got)
        return f"util {util:.0f}% mean ({len(got)} samples), mem max {max(s[2] for s in got):.0f} MiB"


# ----------------------------------------------------------------------------- settings
@dataclass
class Settings:
    smoke: bool
    data: Path
    work: Path
    epochs: int
    budget_s: float
    extra: dict = field(default_factory=dict)  # --set KEY=VALUE: on top of every run's settings
    started: float = field(default_factory=time.time)

    def left(self) -> float:
        return self.budget_s - (time.time() - self.started)


def base_overrides(s: Settings, model: str, workers: int = 1, gpus: float = 1.0, backend: str = "auto") -> dict:
    """fat2019.yaml's base settings (features, crops, batch, optimizer, loss, TTA) with one
    fixed model, fine-tune only on fold 0; tiny and on the CPU in the smoke run."""
    from raytag.search.space import load_space

    space = load_space(FAT2019)
    over = {**space.base}
    over.update({
        "name": f"gpu_check_{model}",
        "model.name": model, "model.width": 64,
        "features.kind": "logmel", "features.n_mels": 128,
        "cv.folds": [0],
        "pipeline.warmup.enabled": False, "pipeline.finetune.epochs": s.epochs,
        "pipeline.filter.enabled": False, "pipeline.label_spreading.enabled": False,
        "pipeline.pseudo.enabled": False,
        "train.num_workers": workers, "train.ddp_backend": backend,
        "train.use_gpu": not s.smoke, "train.gpus_per_worker": gpus if not s.smoke else 0.0,
        "train.cpus_per_worker": max(0.5, min(4.0, (os.cpu_count() or 2) / 4)) if not s.smoke else 0.5,
        "train.torch_threads": 1 if s.smoke else 4,
    })
    if s.smoke:  # seconds, not minutes, on 2 cores: 16 kHz, small mels and model
        over.update({"features.sample_rate": 16000, "features.n_fft": 1024, "features.hop_length": 320,
                     "features.fmax": 8000.0, "features.n_mels": 32, "model.width": 8,
                     "train.batch_size": 32, "train.crop_seconds": 1.0, "inference.tta": 0})
    over.update(s.extra)
    return over


def config_of(overrides: dict):
    from raytag.config import Config, apply_overrides

    return Config.from_dict(apply_overrides({}, overrides))


def timed_fit(s: Settings, cfg, name: str, sampler: GpuSampler):
    """fit_pipeline with its epoch events -> (result, events [(arrival time, EpochEvent)])."""
    from raytag.training.runner import fit_pipeline

    events = []
    result = fit_pipeline(cfg, s.data, str(s.work / "runs"), name, feature_cache=str(s.work / "cache"),
                          progress=False, on_epoch=lambda e: events.append((time.time(), e)))
    return result, events


def steady(events) -> tuple[float, float, float]:
    """(median epoch seconds after the first, window start, window end) of a run's events."""
    later = events[1:] or events
    return statistics.median(e.seconds for _, e in later), events[0][0], events[-1][0]


# ----------------------------------------------------------------------------- sections
def epoch_phases(trace: Path) -> tuple[dict, list[tuple[float, float]]]:
    """Rank 0's epochs from a RAYTAG_TRACE file: the median seconds after the first epoch of
    training, held-out evaluation, and report (checkpoint included), and the training
    windows [(start, end)] of those epochs (for the GPU samples taken while training)."""
    import json

    events = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    marks, epochs = {}, []
    for e in (e for e in events if e.get("rank") == 0):
        marks[e["event"]] = e["time"]
        if e["event"] == "report_done" and {"epoch_start", "train_done", "eval_done"} <= marks.keys():
            epochs.append((marks["epoch_start"], marks["train_done"], marks["eval_done"], e["time"]))
            marks = {}
    later = epochs[1:] or epochs
    if not later:
        return {}, []
    phases = {name: statistics.median(e[i + 1] - e[i] for e in later)
              for i, name in enumerate(("train", "eval", "report"))}
    return phases, [(e[0], e[1]) for e in later]


def section_frontend(s: Settings, table: Table):
    import torch

    from raytag.features.frontends import build_frontend

    base = config_of(base_overrides(s, "cnn2d")).features
    batch, seconds = (8, 2.0) if s.smoke else (32, 5.0)
    rounds = 2 if s.smoke else 10
    wave = torch.randn(batch, int(seconds * base.sample_rate))
    torch.set_num_threads(os.cpu_count() or 1)
    for kind in ("logmel", "colormel"):
        cfg = dataclasses.replace(base, kind=kind)
        front = build_frontend(cfg)
        with torch.inference_mode():
            front(wave)  # warm-up
            t0 = time.perf_counter()
            for _ in range(rounds):
                front(wave)
            cpu = batch * rounds / (time.perf_counter() - t0)
        table.add("1 front end", f"{kind}, {seconds:g} s clips, batch {batch}", "CPU clips/s",
                  cpu, f"{torch.get_num_threads()} threads")
        if s.smoke:
            table.add("1 front end", f"{kind}", "GPU clips/s", "n/a", "CPU smoke")
            continue
        gpu_front = front.to("cuda")
        with torch.inference_mode():
            gpu_front(wave.to("cuda"))
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(rounds * 5):
                gpu_front(wave.to("cuda", non_blocking=False))
            torch.cuda.synchronize()
            gpu = batch * rounds * 5 / (time.perf_counter() - t0)
        table.add("1 front end", f"{kind}", "GPU clips/s", gpu, f"x{gpu / cpu:.1f} the CPU, host->device copy included")


def section_epochs(s: Settings, table: Table, sampler: GpuSampler, n_train: int) -> dict:
    solo = {}
    for model in ("cnn2d", "resnet18"):
        if s.left() < 60:
            table.add("2 epochs", model, "skipped", "-", "time budget spent")
            continue
        cfg = config_of(base_overrides(s, model))
        t0 = time.time()
        trace = s.work / f"trace_{model}.jsonl"
        os.environ["RAYTAG_TRACE"] = str(trace)  # the worker's phase times (training.worker._trace)
        try:
            _, events = timed_fit(s, cfg, f"epochs_{model}", sampler)
        finally:
            os.environ.pop("RAYTAG_TRACE", None)
        epoch_s, start, end = steady(events)
        phases, training = epoch_phases(trace) if trace.exists() else ({}, [])
        solo[model] = epoch_s
        where = "1 worker x 1 GPU" if not s.smoke else "1 worker x 0.5 CPU"
        table.add("2 epochs", f"{model} width {cfg.model.width}, {where}", "epoch s (median after 1st)", epoch_s,
                  f"{len(events)} epochs, fit {time.time() - t0:.0f} s with start-up")
        table.add("2 epochs", f"{model}", "train clips / epoch-s", n_train / epoch_s, f"{n_train} training clips")
        table.add("2 epochs", f"{model}", "GPU", sampler.summary(start, end))
        if phases:  # where an epoch goes: is the GPU idle for want of work, or between epochs?
            table.add("2 epochs", f"{model}", "epoch phases s (median after 1st)",
                      " / ".join(f"{k} {v:.2f}" for k, v in phases.items()), "report includes the checkpoint")
            table.add("2 epochs", f"{model}", "train clips / training-s", n_train / phases["train"])
            table.add("2 epochs", f"{model}", "GPU while training", sampler.summary(start, end, training))
    return solo


def section_profile(s: Settings, table: Table, sampler: GpuSampler, keep_as: Path):
    """cnn2d's third epoch under torch.profiler (train.profile_epoch): where a step's host
    time goes, by phase; the whole report is kept beside the table (`keep_as`)."""
    from raytag.training.profiling import read_phases

    over = {**base_overrides(s, "cnn2d"), "pipeline.finetune.epochs": 3, "train.profile_epoch": 3}
    result, _ = timed_fit(s, config_of(over), "profile_cnn2d", sampler)
    report = (Path(result.outputs_dir) / "profile" / "epoch3.txt").read_text()
    keep_as.write_text(report)
    table.add("2b profile", "cnn2d, epoch 3 under torch.profiler", "epoch wall",
              report.splitlines()[0].split(": ")[-1].split(" wall")[0], f"profiled; whole report: {keep_as.name}")
    for name, row in read_phases(report).items():
        device = f", device {row['device_ms']:.1f} ms" if row["device_ms"] is not None else ""
        table.add("2b profile", name, "host ms (share of wall)",
                  f"{row['host_ms']:.1f} ({row['share']:.0%})", f"{row['calls']} calls{device}")


def shared_space(s: Settings) -> dict:
    """A 2-trial sweep of cnn2d at fat2019.yaml's settings, each trial 1 worker x 0.5 GPU."""
    over = base_overrides(s, "cnn2d")
    over.pop("name")
    kept = ("train.crop_seconds", "train.batch_size", "train.optimizer", "train.scheduler",
            "train.loss.noisy_loss", "train.torch_threads")  # the other train.* keys are resources
    return {
        "name": "gpu_check_shared",
        "base": {k: v for k, v in over.items() if not k.startswith("train.") or k in kept},
        "space": {"train.lr": {"loguniform": [5.0e-4, 2.0e-3]}},
        "search": {"samples": 2, "metric": "auto", "mode": "max", "scheduler": "fifo",
                   "max_concurrent_trials": 2, "seed": 0},
        "resources": {"num_workers": 1, "cpus_per_worker": over["train.cpus_per_worker"],
                      "gpus_per_worker": 0.0 if s.smoke else 0.5, "use_gpu": not s.smoke,
                      "trial_cpus": 0.25},
    }


def section_shared(s: Settings, table: Table, sampler: GpuSampler, solo: dict):
    from raytag.search.tuner import run_sweep

    if s.left() < 90:
        table.add("3 shared GPU", "2 trials x 0.5 GPU", "skipped", "-", "time budget spent")
        return
    space = shared_space(s)
    path = s.work / "shared.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    t0 = time.time()
    result = run_sweep(path, s.data, storage=str(s.work / "sweeps"), feature_cache=str(s.work / "cache"),
                       progress=False)
    wall = time.time() - t0
    where = "2 trials x (1 worker x 0.5 GPU)" if not s.smoke else "2 trials x (1 worker x 0.5 CPU)"
    table.add("3 shared GPU", where, "sweep wall s", wall, f"status: {', '.join(result.leaderboard['status'])}")
    import pandas as pd

    for i, history in enumerate(sorted(glob.glob(f"{result.experiment_dir}/trials/*/outputs/history.csv"))):
        epochs = pd.read_csv(history)
        epochs = epochs[epochs["step_epoch"] > 0]["wall_seconds"].tolist()
        epoch_s = statistics.median(epochs[1:] or epochs)
        ratio = f", x{epoch_s / solo['cnn2d']:.2f} the solo cnn2d epoch" if solo.get("cnn2d") else ""
        table.add("3 shared GPU", f"trial {i + 1}", "epoch s (median after 1st)", epoch_s, ratio.lstrip(", "))
    got = sampler.between(t0, t0 + wall)
    if got:
        table.add("3 shared GPU", "both trials", "GPU", sampler.summary(t0, t0 + wall),
                  f"at most {max(x[3] for x in got)} processes on the GPU at once, "
                  "this script's own (section 1's context) among them")
    else:
        table.add("3 shared GPU", "both trials", "GPU", "n/a", "no nvidia-smi samples")


def section_ddp(s: Settings, table: Table, sampler: GpuSampler, solo: dict, n_train: int):
    import torch

    if s.left() < 60:
        table.add("4 DDP", "2 workers", "skipped", "-", "time budget spent")
        return
    n_gpus = 0 if s.smoke else torch.cuda.device_count()
    if s.smoke:
        gpus, backend, where = 0.0, "gloo", "2 workers x 0.5 CPU, gloo"
    elif n_gpus >= 2:
        gpus, backend, where = 1.0, "nccl", "2 workers x 1 GPU, nccl"
    else:
        gpus, backend, where = 0.5, "gloo", "1 GPU: 2 workers x 0.5 GPU, gloo (NCCL refuses 2 ranks on 1 GPU)"
    cfg = config_of(base_overrides(s, "cnn2d", workers=2, gpus=gpus, backend=backend))
    _, events = timed_fit(s, cfg, "ddp_cnn2d", sampler)
    epoch_s, start, end = steady(events)
    ratio = f"x{solo['cnn2d'] / epoch_s:.2f} the speed of 1 worker" if solo.get("cnn2d") else ""
    table.add("4 DDP", f"cnn2d width {cfg.model.width}, {where}", "epoch s (median after 1st)", epoch_s, ratio)
    table.add("4 DDP", "cnn2d", "train clips / epoch-s", n_train / epoch_s)
    table.add("4 DDP", "cnn2d", "GPU", sampler.summary(start, end))


# ----------------------------------------------------------------------------- main
def attempt(table: Table, section: str, fn, *args):
    """Run one section; a failure becomes a row of the table (the other sections still run)."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - reported in the table, with its type
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        table.add(section, "-", "FAILED", type(err).__name__, first.replace("|", "/"))
        return None


def make_data(s: Settings, scale: float) -> Path:
    """The demo set through the installed command line, as a user would make it; kept from
    an earlier run in the same --work folder at the same scale."""
    made = s.data / ".gpu_check_scale"
    if made.exists() and made.read_text() == str(scale):
        return s.data
    raytag = shutil.which("raytag") or str(Path(sys.executable).parent / "raytag")
    subprocess.run([raytag, "make-demo-data", str(s.data), "--scale", str(scale)], check=True)
    made.write_text(str(scale))
    return s.data


def environment(smoke: bool) -> str:
    import ray
    import torch

    import raytag

    gpu = "none (CPU smoke)"
    if not smoke:
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    load = os.getloadavg()
    return (f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n- GPU: {gpu}\n"
            f"- CPU cores: {os.cpu_count()}; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
            f"- raytag {raytag.__version__} ({Path(raytag.__file__).parent}), torch {torch.__version__}, "
            f"ray {ray.__version__}, python {platform.python_version()}\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="every section tiny on the CPU (checks the script)")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown table (default: results/benchmarks/gpu_check.md; smoke: /tmp/raytag_gpu_check_smoke.md)")
    ap.add_argument("--scale", type=float, default=None, help="demo data scale (default 4; smoke 0.25)")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tune epochs per run (default 4; smoke 2)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="sections that would start after this many seconds are skipped (default 420; smoke 1100)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run (data is always made): {', '.join(SECTIONS)}")
    ap.add_argument("--sample-every", type=float, default=0.5, help="seconds between nvidia-smi samples")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="extra",
                    help="a setting for every run, on top of the script's (repeatable), e.g. train.precision=fp32")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    from raytag.config import ConfigError, parse_cli_overrides

    try:
        extra = parse_cli_overrides(args.extra)  # as `raytag train --set` reads them
    except ConfigError as err:
        ap.error(str(err))
    if not smoke:
        import torch

        if not torch.cuda.is_available():
            print(f"gpu_check: torch {torch.__version__} sees no CUDA GPU; nothing measured. "
                  "Install the CUDA build of torch on a GPU node, or use --cpu-smoke.")
            return 0
    out = args.out or (Path("/tmp/raytag_gpu_check_smoke.md") if smoke else REPO / "results/benchmarks/gpu_check.md")
    work = args.work or Path(tempfile.mkdtemp(prefix="raytag-gpu-check-"))
    s = Settings(smoke=smoke, data=work / "demo", work=work, epochs=args.epochs or (2 if smoke else 4),
                 budget_s=args.budget_s or (1100.0 if smoke else 420.0), extra=extra)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    env = environment(smoke)
    print(env, flush=True)
    table = Table()

    from raytag.session import ensure_ray
    from raytag.training.runner import prepare_data

    t0 = time.time()
    make_data(s, args.scale or (0.25 if smoke else 4.0))
    table.add("0 data", "raytag make-demo-data", "seconds", time.time() - t0)
    ensure_ray()
    t0 = time.time()
    dataset, store, plan = prepare_data(config_of(base_overrides(s, "cnn2d")), s.data, str(work / "cache"), False)
    n_train = int((plan.curated_fold != 0).sum())
    table.add("0 data", f"{len(store.clip_ids)} clips at {store.shape}", "feature store s", time.time() - t0,
              "Ray tasks on the CPUs")

    sections = {name.strip() for name in args.sections.split(",")}
    unknown = sections - set(SECTIONS)
    if unknown:
        ap.error(f"unknown --sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    solo = {}
    with GpuSampler(args.sample_every) as sampler:
        if "frontend" in sections:
            attempt(table, "1 front end", section_frontend, s, table)
        if "epochs" in sections:
            solo = attempt(table, "2 epochs", section_epochs, s, table, sampler, n_train) or {}
        if "profile" in sections:
            attempt(table, "2b profile", section_profile, s, table, sampler, out.with_name(f"{out.stem}_profile.txt"))
        if "shared" in sections:
            attempt(table, "3 shared GPU", section_shared, s, table, sampler, solo)
        if "ddp" in sections:
            attempt(table, "4 DDP", section_ddp, s, table, sampler, solo, n_train)

    load = os.getloadavg()
    title = "CPU smoke of benchmarks/gpu_check.py (no GPU; checks the script, not a GPU)" if smoke else \
        "GPU check (benchmarks/gpu_check.sh)"
    text = (f"# {title}\n\n{env}- load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
            f"- total {time.time() - s.started:.0f} s; demo data scale {args.scale or (0.25 if smoke else 4.0)}, "
            f"{s.epochs} fine-tune epochs per run"
            + "".join(f"; {k}={v}" for k, v in extra.items()) + f"\n\n{table.markdown()}")
    write_keeping_notes(out, text)
    print("\n" + table.markdown() + f"\nwritten: {out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
