"""The number format of the training step: float32, or bfloat16 autocast where the
hardware runs it natively.

Under bf16 autocast the convolutions and matrix products of the forward pass (and so of
the backward pass) run in bfloat16, while the weights, their gradients, the optimizer and
the loss stay float32, so no loss scaling is needed (bf16 has float32's range). On a CPU
with AVX512-BF16 a step of the default's members takes 0.61x (vgg_small) and 0.77x
(resnet18) the float32 time, 0.43x and 0.74x with channels-last weights
(results/benchmarks/train_step.json; speed.md, "The training step in bf16 and
channels-last"). Without native support oneDNN emulates bf16 and is slower than float32,
so `auto` keeps float32 there.

Only training runs in bf16: held-out scores, predictions and `raytag predict` stay float32,
so an artifact predicts exactly what its run scored.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import get_args

import torch

from raytag.config import Precision

PRECISIONS = get_args(Precision)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 dot products itself (AVX512-BF16 or AMX), read from
    /proc/cpuinfo; elsewhere (macOS, other systems) False, which keeps float32."""
    try:
        return native_bf16_in(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def native_bf16_in(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text's first `flags` line names a bf16 instruction set."""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_precision(precision: str, device: torch.device) -> str:
    """`train.precision` on this device: "fp32" or "bf16" ("auto": bf16 where it is native)."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() and torch.backends.mkldnn.is_available() else "fp32"
    return "fp32"


def training_autocast(precision: str, device: torch.device):
    """The context a training forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
