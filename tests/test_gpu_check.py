"""benchmarks/gpu_check.py's pure parts, without a GPU or Ray: the epoch phases it reads
from the worker's trace (training, evaluation, report), the GPU samples it counts as taken
while training, and the notes below its table that a rerun keeps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench_util import load_benchmark


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


def write_trace(path: Path, epochs: list[tuple[float, float, float]], start: float = 100.0) -> list:
    """A worker trace of rank 0 (and a rank 1 to be ignored): each epoch (train, eval, report) s."""
    lines, t, windows = [{"event": "worker_start", "rank": 0, "time": start}], start, []
    for train, evaluation, report in epochs:
        windows.append((t, t + train))
        for event, seconds in (("epoch_start", 0.0), ("train_done", train), ("eval_done", evaluation),
                               ("checkpoint", report / 2), ("report_done", report / 2)):
            t += seconds
            lines.append({"event": event, "rank": 0, "time": t})
            lines.append({"event": event, "rank": 1, "time": t + 50.0})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return windows


def test_epoch_phases_are_rank_0s_medians_after_the_first_epoch(gpu_check, tmp_path):
    windows = write_trace(tmp_path / "trace.jsonl", [(9.0, 9.0, 9.0), (1.0, 0.5, 0.2), (3.0, 0.7, 0.4), (2.0, 0.6, 0.3)])
    phases, training = gpu_check.epoch_phases(tmp_path / "trace.jsonl")
    assert phases == pytest.approx({"train": 2.0, "eval": 0.6, "report": 0.3})
    # the first epoch (start-up, cold caches) is left out
    assert [pytest.approx(w) for w in windows[1:]] == training


def test_a_trace_without_a_whole_epoch_gives_no_phases(gpu_check, tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text(json.dumps({"event": "epoch_start", "rank": 0, "time": 1.0}) + "\n")
    assert gpu_check.epoch_phases(trace) == ({}, [])


def test_samples_while_training_are_those_inside_the_windows(gpu_check):
    sampler = gpu_check.GpuSampler()
    sampler.samples = [(1.0, 90.0, 100.0, 1), (2.5, 10.0, 200.0, 1), (4.0, 50.0, 300.0, 2)]
    assert sampler.within([(0.5, 1.5), (3.5, 4.5)]) == [sampler.samples[0], sampler.samples[2]]
    assert sampler.summary(0, 10, [(0.5, 1.5), (3.5, 4.5)]).startswith("util 70% mean (2 samples), mem max 300")
    assert sampler.summary(0, 10, []) == "n/a (no nvidia-smi samples)"


def test_a_rewritten_table_keeps_the_notes_below_it(gpu_check, tmp_path):
    out = tmp_path / "sub" / "gpu_check.md"
    gpu_check.write_keeping_notes(out, "# first table\n")
    out.write_text(out.read_text() + "\n## what the figures say\n")
    gpu_check.write_keeping_notes(out, "# second table\n")
    text = out.read_text()
    assert text.startswith("# second table\n") and "first table" not in text
    assert text.endswith(gpu_check.NOTES + "\n\n## what the figures say\n")
