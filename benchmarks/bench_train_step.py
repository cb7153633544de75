"""A training step and an inference pass in each number format and memory layout, side by
side in one process (issue 11).

raytag trains under bf16 autocast where the hardware runs bf16 natively (`train.precision:
auto`, raytag.training.precision) and keeps the 4-D weights of 2-D convolution nets
channels-last (raytag.models.registry.channels_last). This times, for each model:

- the step a Train worker runs most: forward, BCE on float32 logits, backward, AdamW, on
  random log-mel batches of the default's shape (batch 32, 64 mels x 128 frames, 50 classes);
- an inference pass (batch 64 segments, `inference_mode`), which held-out scoring and
  `raytag predict` run in float32;

in four variants: fp32 or bf16, NCHW (contiguous) or NHWC (channels-last). The variants
alternate `--repeats` times so that drift in the machine's speed hits them alike; the
figure kept is each variant's fastest repeat, and the ratios are to fp32 NCHW (what raytag
ran before).

    .venv/bin/python benchmarks/bench_train_step.py                       # ~2 min on 2 cores
    .venv/bin/python benchmarks/bench_train_step.py --models cnn2d:16,crnn:32 --threads 1

Writes results/benchmarks/train_step.json (with the load average before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raytag.config import ModelConfig  # noqa: E402
from raytag.models import build_model  # noqa: E402
from raytag.training.precision import cpu_has_native_bf16, training_autocast  # noqa: E402

VARIANTS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]  # (format, channels-last)
CPU = torch.device("cpu")


def _model(name: str, width: int, bins: int, nhwc: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, width=width), 50, 1, bins)  # channels-last where it has 2-D convs
    return model if nhwc else model.to(memory_format=torch.contiguous_format)


def _timed(fn, steps: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def train_step(model, precision: str, forward=None, bins=64, frames=128, memory_format=torch.contiguous_format):
    """One training step as a Train worker runs it (forward under `precision`, BCE on float32
    logits, backward, AdamW) on a random batch of the default's shape; `forward` (default:
    the model) is what runs the forward pass, a compiled model say."""
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    forward = model if forward is None else forward  # (a compiled module has no truth value)
    x, y = torch.randn(32, 1, bins, frames).to(memory_format=memory_format), torch.rand(32, 50)

    def step():
        with training_autocast(precision, CPU):
            logits = forward(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_step_seconds(name, width, precision, nhwc, steps, bins=64, frames=128) -> float:
    return _timed(train_step(_model(name, width, bins, nhwc).train(), precision, bins=bins, frames=frames), steps)


def inference_seconds(name, width, precision, nhwc, steps, bins=64, frames=128) -> float:
    model = _model(name, width, bins, nhwc).eval()
    x = torch.randn(64, 1, bins, frames)

    def forward():
        with torch.inference_mode(), training_autocast(precision, CPU):
            model(x)

    return _timed(forward, steps)


def step_args(doc: str, out_name: str) -> argparse.Namespace:
    """The command line this and bench_train_compile.py share: models, steps, repeats, threads, out."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--models", default="vgg_small:16,resnet18:32", help="NAME:WIDTH,... (default: the default's members)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the default's torch_threads)")
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks" / out_name))
    return ap.parse_args()


def main() -> None:
    a = step_args(__doc__, "train_step.json")
    torch.set_num_threads(a.threads)
    load_before = [round(v, 2) for v in os.getloadavg()]
    rows = []
    for spec in a.models.split(","):
        name, width = spec.split(":")
        for kind, fn in (("train step", train_step_seconds), ("inference", inference_seconds)):
            times: dict = {v: [] for v in VARIANTS}
            for _ in range(a.repeats):
                for precision, nhwc in VARIANTS:
                    times[(precision, nhwc)].append(fn(name, int(width), precision, nhwc, a.steps))
            base = min(times[("fp32", False)])
            row = {"model": name, "width": int(width), "what": kind}
            for (precision, nhwc), ts in times.items():
                label = f"{precision}_{'nhwc' if nhwc else 'nchw'}"
                row[f"{label}_s"] = round(min(ts), 4)
                row[f"{label}_ratio"] = round(min(ts) / base, 3)
            rows.append(row)
            labels = [f"{p}_{'nhwc' if c else 'nchw'}" for p, c in VARIANTS]
            print(f"{name:>10} w{width:<3} {kind:<10} " + "  ".join(
                f"{lb} {row[lb + '_s']:.3f} s ({row[lb + '_ratio']:.2f}x)" for lb in labels), flush=True)
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
           "threads": a.threads, "native_bf16": cpu_has_native_bf16(), "train_batch": 32, "inference_batch": 64,
           "input": [1, 64, 128], "steps": a.steps, "repeats": a.repeats, "rows": rows,
           "load_before": load_before, "load_after": [round(v, 2) for v in os.getloadavg()]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"native bf16: {out['native_bf16']}; load {load_before} -> {out['load_after']}; wrote {a.out}")


if __name__ == "__main__":
    main()
