"""Host cost of one training batch at fat2019.yaml's sizes (batch 64, 2 s crops at 128 fps,
128 mels): the crop gather from the float16 store and the augmentations on the CPU, per batch,
as `train_epoch` does them. The GPU check (results/benchmarks/gpu_check.md) found a GPU
training step waiting on the host; this measures the host's part without a GPU.

    python benchmarks/bench_batch_host.py DATA_DIR FEATURE_CACHE   # e.g. `raytag make-demo-data` output
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCH = 64


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", help="dataset folder (e.g. `raytag make-demo-data` output)")
    ap.add_argument("feature_cache", help="feature store folder (built if missing)")
    return ap.parse_args()


def fat2019_config():
    """fat2019.yaml's base settings with cnn2d on 128 log-mels."""
    from raytag.config import Config, apply_overrides
    from raytag.search.space import load_space

    space = load_space(REPO / "search_spaces" / "fat2019.yaml")
    over = {**space.base, "model.name": "cnn2d", "features.kind": "logmel", "features.n_mels": 128}
    return Config.from_dict(apply_overrides({}, over))


def time_one_pass(cfg, batches, plan, rep: int, gen: torch.Generator) -> None:
    """One epoch of crops and augmentations, timed apart, printed per 64-clip batch."""
    from raytag.training.augment import gain_pattern, mixup, random_gain_shift, spec_augment

    mean = torch.tensor(plan.norm_mean, dtype=torch.float32)[..., None]
    std = torch.tensor(np.maximum(plan.norm_std, 1e-5), dtype=torch.float32)[..., None]
    pattern = gain_pattern(cfg.features)
    t_crop = t_aug = 0.0
    n = 0
    it = batches.epoch(rep, 0, 1)
    while True:
        t0 = time.perf_counter()
        try:
            x, y, noisy = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        x = random_gain_shift(x, cfg.train.augment, gen, is_log=True, pattern=pattern)
        x = (x - mean) / std
        x = spec_augment(x, cfg.train.specaugment, gen)
        x, y, noisy, _ = mixup(x, y, noisy.float(), cfg.train.mixup.alpha, cfg.train.mixup.prob, gen)
        t2 = time.perf_counter()
        t_crop += t1 - t0
        t_aug += t2 - t1
        n += len(x)
    per = BATCH * 1000 / n  # ms per 64 clips
    print(f"pass {rep}: {n} clips, crops {tuple(x.shape[1:])}: crop gather {t_crop * per:.1f} ms and CPU "
          f"augmentations {t_aug * per:.1f} ms per 64-clip batch; load {os.getloadavg()}")


def main() -> None:
    args = parse_args()
    from raytag.session import ensure_ray
    from raytag.training.dataset import CropBatches, LabelledSet
    from raytag.training.runner import prepare_data

    torch.set_num_threads(2)
    cfg = fat2019_config()
    ensure_ray()
    _, store, plan = prepare_data(cfg, args.data_dir, args.feature_cache, False)
    ids = plan.curated_ids
    data = LabelledSet(ids, plan.curated_y, np.zeros(len(ids), bool))
    batches = CropBatches(store, data, cfg.crop_frames(), BATCH)
    gen = torch.Generator().manual_seed(0)
    for rep in range(4):  # the first pass warms the page cache and torch
        time_one_pass(cfg, batches, plan, rep, gen)


if __name__ == "__main__":
    main()
