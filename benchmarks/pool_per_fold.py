#!/usr/bin/env python3
"""Why pooling runs lifts CV more than test: the same pool scored on test twice, per fold model
(as CV sees a run: each curated clip is predicted by one fold model of each member) and over
the 5 fold models' mean (as test sees a run).

    python benchmarks/pool_per_fold.py --data /work/bench/escfat \\
        --base default1=RUN/members --pool RUN_A/members RUN_B/members ... [--out FILE.json]

Each RUN/members folder holds a `raytag train` run's members (members/<name>/outputs). A
member's test predictions per fold are its `test.parquet` rows of that fold; members are
combined by the geometric mean, as the default run combines them (nothing fitted). For fold k:
the base run's members' fold-k models against every pooled run's fold-k models, on the test
clips (the runs' folds may differ: fold k is just "one model per member"). Then the same over
all 5 folds (each member's fold models averaged first, as `raytag train` does). Paired
bootstrap (1000 resamples, 90%) on the test clips. Needs no training.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench_quality import test_truth  # the same reader as quality.md's rows
from raytag.ensemble.combiners import combine
from raytag.metrics import lwlrap, paired_bootstrap_lwlrap


def member_tests(run_members: Path, classes: list[str]) -> list[pd.DataFrame]:
    """Each member's test.parquet (fold, fname -> class scores), in member-name order."""
    out = []
    for member in sorted(p for p in run_members.iterdir() if (p / "outputs" / "test.parquet").exists()):
        df = pd.read_parquet(member / "outputs" / "test.parquet")
        df["fname"] = [c.split("/", 1)[1] for c in df["clip_id"]]
        out.append(df.set_index(["fold", "fname"])[classes])
    if not out:
        raise SystemExit(f"{run_members}: no members/<name>/outputs/test.parquet")
    return out


def at_fold(members: list[pd.DataFrame], fold: int, clips: list[str]) -> list[np.ndarray]:
    return [m.loc[fold].loc[clips].to_numpy(np.float64) for m in members]


def fold_mean(members: list[pd.DataFrame], clips: list[str]) -> list[np.ndarray]:
    return [m.groupby(level="fname").mean().loc[clips].to_numpy(np.float64) for m in members]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the dataset the runs trained on (with test_labels.csv)")
    ap.add_argument("--base", type=Path, required=True, help="the yardstick run's members folder")
    ap.add_argument("--pool", type=Path, nargs="+", required=True, help="every run's members folder in the pool "
                    "(the base run too, if it belongs to the pool)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = ap.parse_args()
    classes = list(pd.read_csv(args.data / "sample_submission.csv", nrows=0).columns[1:])
    truth = test_truth(args.data, classes)
    clips = list(truth.index)
    y = truth.to_numpy()
    base = member_tests(args.base, classes)
    pool = [m for run in args.pool for m in member_tests(run, classes)]
    folds = sorted(set(base[0].index.get_level_values("fold")))
    per_fold = []
    for k in folds:
        b, p = combine("geometric", at_fold(base, k, clips)), combine("geometric", at_fold(pool, k, clips))
        per_fold.append({"fold": int(k), "base": float(lwlrap(y, b)), "pool": float(lwlrap(y, p)),
                         "pair": paired_bootstrap_lwlrap(y, b, p)})
    b, p = combine("geometric", fold_mean(base, clips)), combine("geometric", fold_mean(pool, clips))
    report = {
        "base": str(args.base), "pool": [str(r) for r in args.pool], "test_clips": len(clips),
        "members": {"base": len(base), "pool": len(pool)},
        "per_fold_model": per_fold,
        "per_fold_model_mean_gain": float(np.mean([f["pool"] - f["base"] for f in per_fold])),
        "fold_mean": {"base": float(lwlrap(y, b)), "pool": float(lwlrap(y, p)), "pair": paired_bootstrap_lwlrap(y, b, p)},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
