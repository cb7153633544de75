"""Batch norm's memory layout in a channels-last net, on the CPU (issue 11, speed.md).

A profile of the default's CPU epoch (`train.profile_epoch`) put 35% of vgg_small's host
time in batch norm, which torch runs 2-5x slower on channels-last tensors at 16-32
channels. This times one bf16 training step (batch 32, the default's input shape) of
vgg_small w16 and resnet18 w32 in three layouts, alternating, best of 2 rounds:

- channels-last throughout (what raytag does);
- channels-last convolutions with each batch norm run in NCHW, copying the layout before
  and after it;
- NCHW throughout.

    .venv/bin/python benchmarks/bench_bn_layout.py        # about 30 s on 2 cores
"""
import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train_step import _model, _timed, train_step  # noqa: E402


class NCHWBatchNorm2d(torch.nn.BatchNorm2d):
    """Batch norm on an NCHW copy of a channels-last input, its output made channels-last again."""

    def forward(self, x):
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def step_seconds(name: str, width: int, layout: str, steps: int = 6) -> float:
    model = _model(name, width, 64, nhwc=layout != "nchw").train()
    if layout == "bn_nchw":
        for m in model.modules():
            if type(m) is torch.nn.BatchNorm2d:
                m.__class__ = NCHWBatchNorm2d  # same parameters and buffers, another forward
    return _timed(train_step(model, "bf16"), steps)


def main() -> None:
    # No options; parsed so that --help prints the docstring and runs nothing.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(2)
    print(f"load average before: {os.getloadavg()}")
    layouts = ("channels_last", "bn_nchw", "nchw")
    for name, width in (("vgg_small", 16), ("resnet18", 32)):
        best = {layout: min(step_seconds(name, width, layout) for _ in range(2)) for layout in layouts}
        base = best["channels_last"]
        print(f"{name} w{width}: " + "  ".join(f"{k} {v * 1e3:.0f} ms ({v / base:.2f}x)" for k, v in best.items()))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
