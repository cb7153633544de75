"""`train.profile_epoch`: one training epoch of a run under torch.profiler.

Where a step's time goes is what decides the next speed-up (on a GPU the checks found the
device busy a third of an epoch or less, with the host's part unexplained). train_epoch
marks its phases with `record_function` (raytag.batch: reading and augmenting the batch;
raytag.forward; raytag.wait: the host waiting for the device's loss; raytag.backward,
raytag.optimizer), so the profile splits host time by phase as well as by operator. Rank 0
writes, into the run's outputs (persisted with the next
checkpoint like every run file):

    profile/epochN.txt          the phases, then the operators by host and by device time
    profile/epochN.trace.json.gz   the timeline, for chrome://tracing or ui.perfetto.dev
"""
from __future__ import annotations

import gzip
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

PHASES = ("raytag.batch", "raytag.forward", "raytag.wait", "raytag.backward", "raytag.optimizer")

__all__ = ["PHASES", "phase", "profiled", "read_phases", "wants_profile"]

phase = record_function  # `with phase("raytag.forward"):` costs about 6 us when no profiler runs (speed.md)


def wants_profile(profile_epoch: int, epochs_done: int, rank: int) -> bool:
    """Whether the epoch about to run (epochs_done + 1 of the run) is the one to profile."""
    return rank == 0 and profile_epoch > 0 and epochs_done + 1 == profile_epoch


@contextmanager
def profiled(out_dir: Path, epoch_number: int, device: torch.device):
    """Profile the body (one training epoch) on `device`; write its tables and trace to out_dir."""
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        yield
        if on_gpu:
            torch.cuda.synchronize(device)  # the epoch's last kernels belong to it
        wall_ms = (time.perf_counter() - start) * 1e3
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"epoch{epoch_number}"
    stem.with_suffix(".txt").write_text(profile_report(prof, epoch_number, on_gpu, wall_ms))
    raw = stem.with_suffix(".trace.json")
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as src, gzip.open(f"{raw}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()


def profile_report(prof, epoch_number: int, on_gpu: bool, wall_ms: float) -> str:
    """The phases' host time (and share of the epoch's wall time), then the operators."""
    events = prof.key_averages()
    phases = {e.key: e for e in events if e.key in PHASES}
    lines = [f"torch.profiler, training epoch {epoch_number} of the run (rank 0): {wall_ms:.1f} ms wall "
             "(profiled, so slower than unprofiled)", "",
             "phase              calls   host ms (total)   of the wall" + ("   device ms (total)" if on_gpu else "")]
    for name in PHASES:
        e = phases.get(name)
        if e is None:
            continue
        host_ms = e.cpu_time_total / 1e3
        row = f"{name:<18} {e.count:>5}   {host_ms:>15.1f}   {host_ms / wall_ms:>10.0%}"
        if on_gpu:
            row += f"   {_device_time(e) / 1e3:>17.1f}"
        lines.append(row)
    lines += ["", "operators by host time (self)", events.table(sort_by="self_cpu_time_total", row_limit=25)]
    if on_gpu:
        lines += ["operators by device time (self)", events.table(sort_by="self_cuda_time_total", row_limit=25)]
    return "\n".join(lines) + "\n"


def _device_time(event) -> float:
    """Device time in us of an event's kernels (the attribute's name moved in torch 2.4)."""
    for name in ("device_time_total", "cuda_time_total"):
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def read_phases(report: str) -> dict[str, dict]:
    """The phase block of a profile/epochN.txt: {phase: {"calls", "host_ms", "share", "device_ms"}}."""
    rows, lines = {}, report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("phase ")) + 1
    for line in lines[start:]:
        if not line.strip():
            break  # the operator tables follow
        parts = line.split()
        rows[parts[0]] = {"calls": int(parts[1]), "host_ms": float(parts[2]),
                          "share": float(parts[3].rstrip("%")) / 100,
                          "device_ms": float(parts[4]) if len(parts) > 4 else None}
    return rows
