"""Parameter count and CPU inference time of every model in the zoo at its default config.

Input: one default training crop (64 mels, 4 s at 16 kHz with hop 320 = 200 frames;
rawwave_cnn gets the 64000 raw samples of the same 4 s), 80 classes (FAT2019).
Timing: batch of 16, torch threads 1, eval mode, no grad; one warm-up pass, then the
median of --repeats passes, divided by the batch size. All models are timed in the
same run so the ratios (to cnn2d) are comparable on a shared, noisy machine.

    .venv/bin/python benchmarks/bench_models.py [--repeats 5] [--models cnn2d resnet18]

Writes results/benchmarks/models.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raytag.config import Config, ModelConfig  # noqa: E402
from raytag.models import MODELS, build_model  # noqa: E402

RAW_MODELS = {"rawwave_cnn"}
N_CLASSES = 80


def time_model(name: str, cfg: Config, batch: int, repeats: int) -> dict:
    n_bins = 1 if name in RAW_MODELS else cfg.features.n_mels
    if name in RAW_MODELS:
        length = int(round(cfg.train.crop_seconds * cfg.features.sample_rate))
    else:
        length = cfg.crop_frames()
    model = build_model(ModelConfig(name=name), N_CLASSES, 1, n_bins).eval()
    x = torch.randn(batch, 1, n_bins, length, generator=torch.Generator().manual_seed(0))
    runs = []
    with torch.no_grad():
        model(x)  # warm-up: allocator and kernel selection
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            runs.append(time.perf_counter() - start)
    median = statistics.median(runs)
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "embed_dim": model.embed_dim,
        "input_shape": list(x.shape),
        "ms_per_clip": 1000 * median / batch,
        "ms_per_batch_runs": [round(1000 * r, 3) for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "models.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    cfg = Config()  # default features and crop: 64 mels, 16 kHz, hop 320, 4 s
    rows = [time_model(name, cfg, args.batch, args.repeats) for name in args.models]
    ref = next((r["ms_per_clip"] for r in rows if r["model"] == "cnn2d"), None)
    for r in rows:
        r["ratio_to_cnn2d"] = round(r["ms_per_clip"] / ref, 3) if ref else None

    print(f"{'model':<22}{'params':>12}{'embed':>7}{'ms/clip':>10}{'x cnn2d':>9}  input")
    for r in rows:
        ratio = f"{r['ratio_to_cnn2d']:.2f}" if r["ratio_to_cnn2d"] is not None else "-"
        print(
            f"{r['model']:<22}{r['params']:>12,}{r['embed_dim']:>7}{r['ms_per_clip']:>10.2f}{ratio:>9}"
            f"  {tuple(r['input_shape'])}"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "models",
        "settings": {
            "batch": args.batch,
            "repeats": args.repeats,
            "torch_threads": 1,
            "n_classes": N_CLASSES,
            "n_mels": cfg.features.n_mels,
            "crop_frames": cfg.crop_frames(),
            "raw_samples": int(round(cfg.train.crop_seconds * cfg.features.sample_rate)),
            "model_config": "ModelConfig() defaults (width 32, depth 4, dropout 0.2) per name",
            "timing": "median of repeats after one warm-up, eval mode, no grad, per clip",
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "processor": platform.processor() or platform.machine(),
        },
        "models": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
