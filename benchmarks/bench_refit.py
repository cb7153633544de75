#!/usr/bin/env python3
"""What `cv.refit` adds on the test clips: each fold model alone, the refit model alone, and the
fold models' mean with and without the refit model as one more member.

    python benchmarks/bench_refit.py --data DIR --folds RUN/outputs --refit PROBE/outputs \\
        [--out results/benchmarks/refit.json]

--folds is a run of every fold; --refit a run with `cv.refit: true` (it may train only fold 0,
`--set 'cv.folds=[0]'`, to save time: its refit model is what is measured, and its fold 0 must
equal the --folds run's, which is checked, so both runs had the same seed and folds). Test
scores are reported only: the refit model holds nothing out, so CV cannot see it.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench_quality import fold_mean_test, test_truth  # the same readers as quality.md's rows
from raytag.metrics import lwlrap, paired_bootstrap_lwlrap


def per_fold_test(outputs: Path, classes: list[str], order: list[str]) -> dict[int, np.ndarray]:
    """fold -> that fold model's test probabilities, rows in `order` (test fnames)."""
    folds = sorted(pd.read_parquet(outputs / "test.parquet", columns=["fold"])["fold"].unique())
    return {int(f): fold_mean_test(outputs, classes, [f]).loc[order].to_numpy() for f in folds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the dataset both runs trained on (with test_labels.csv)")
    ap.add_argument("--folds", type=Path, required=True, help="outputs of a run of every fold")
    ap.add_argument("--refit", type=Path, required=True, help="outputs of a run with cv.refit")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    classes = list(pd.read_csv(a.data / "sample_submission.csv", nrows=0).columns[1:])
    truth = test_truth(a.data, classes)
    y = truth.to_numpy()
    folds = per_fold_test(a.folds, classes, list(truth.index))
    probe = per_fold_test(a.refit, classes, list(truth.index))
    refit_fold = json.loads((a.refit / "model.json").read_text()).get("refit_fold")
    if refit_fold is None or refit_fold not in probe:
        raise SystemExit(f"{a.refit}: not a run with cv.refit (model.json has no refit_fold)")
    shared = [f for f in probe if f != refit_fold and f in folds]
    gap = max((float(np.abs(folds[f] - probe[f]).max()) for f in shared), default=None)
    if gap is None or gap > 1e-5:
        raise SystemExit(f"the runs' fold models differ (max {gap}): give runs of the same seed and folds")
    fold_mean = np.mean([folds[f] for f in sorted(folds)], axis=0)
    refit = probe[refit_fold]
    with_refit = (fold_mean * len(folds) + refit) / (len(folds) + 1)  # one more member, as test.parquet's mean
    result = {
        "folds_run": str(a.folds), "refit_run": str(a.refit),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "test_fold_models": {str(f): lwlrap(y, folds[f]) for f in sorted(folds)},
        "test_refit_model": lwlrap(y, refit),
        "test_fold_mean": lwlrap(y, fold_mean),
        "test_fold_mean_with_refit": lwlrap(y, with_refit),
        "with_minus_without": paired_bootstrap_lwlrap(y, fold_mean, with_refit),
    }
    print(json.dumps(result, indent=1, default=float))
    if a.out:
        a.out.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
