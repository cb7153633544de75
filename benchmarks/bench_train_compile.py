"""The training step eager against torch.compile, side by side in one process (issue 11).

What is left of a GPU step's host time is the eager model's kernel launches (speed.md,
twenty-third session); on CPU, inductor fuses the element-wise work around convolutions.
This times the default members' step (forward under the precision raytag resolves here,
BCE, backward, AdamW) on random log-mel batches of the default's shape (batch 32, 64 mels x
128 frames, 50 classes), channels-last as raytag trains:

- eager;
- `torch.compile(model)` (inductor, default mode): the first steps (compilation) timed apart
  from the steady state.

Variants alternate `--repeats` times; the figure kept is each one's fastest repeat.

    .venv/bin/python benchmarks/bench_train_compile.py            # ~3 min on 2 cores

Writes results/benchmarks/train_compile.json (with the load average before and after).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_train_step import CPU, _model, step_args, train_step  # noqa: E402
from raytag.training.precision import resolve_precision  # noqa: E402


def make_step(name: str, width: int, compiled: bool, precision: str):
    """The default's training step on a channels-last model, its forward pass compiled or not."""
    model = _model(name, width, 64, nhwc=True).train()
    return train_step(model, precision, forward=torch.compile(model) if compiled else None,
                      memory_format=torch.channels_last)


def main() -> None:
    a = step_args(__doc__, "train_compile.json")
    torch.set_num_threads(a.threads)
    precision = resolve_precision("auto", CPU)
    load_before = [round(v, 2) for v in os.getloadavg()]
    rows = []
    for spec in a.models.split(","):
        name, width = spec.split(":")
        steps = {}
        first = {}
        for compiled in (False, True):
            start = time.perf_counter()
            steps[compiled] = make_step(name, int(width), compiled, precision)
            for _ in range(3):  # compilation (and its recompiles) happen here
                steps[compiled]()
            first[compiled] = time.perf_counter() - start
        times = {False: [], True: []}
        for _ in range(a.repeats):
            for compiled in (False, True):
                start = time.perf_counter()
                for _ in range(a.steps):
                    steps[compiled]()
                times[compiled].append((time.perf_counter() - start) / a.steps)
        eager, comp = min(times[False]), min(times[True])
        row = {"model": name, "width": int(width), "precision": precision, "eager_step_s": round(eager, 4),
               "compiled_step_s": round(comp, 4), "compiled_over_eager": round(comp / eager, 3),
               "first_3_steps_eager_s": round(first[False], 2), "first_3_steps_compiled_s": round(first[True], 2)}
        rows.append(row)
        print(f"{name:>10} w{width:<3} {precision}: eager {eager:.3f} s/step, compiled {comp:.3f} s/step "
              f"({comp / eager:.2f}x); first 3 steps {first[False]:.1f} s eager, {first[True]:.1f} s compiled",
              flush=True)
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
           "threads": a.threads, "train_batch": 32, "input": [1, 64, 128], "steps": a.steps, "repeats": a.repeats,
           "rows": rows, "load_before": load_before, "load_after": [round(v, 2) for v in os.getloadavg()]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"load {load_before} -> {out['load_after']}; wrote {a.out}")


if __name__ == "__main__":
    main()
