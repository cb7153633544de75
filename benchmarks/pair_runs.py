"""Two finished `raytag train` runs on the dev benchmark, paired clip by clip.

    python benchmarks/pair_runs.py --data DIR RUN_A/outputs RUN_B/outputs
    python benchmarks/pair_runs.py --data DIR M1/outputs+M2/outputs+M3/outputs M1/outputs+OTHER/outputs+M3/outputs

CV: lwlrap of each run's out-of-fold predictions on the curated clips both hold out, and the
paired bootstrap of b - a (1000 resamples, 90% interval). Test: the same on the test clips,
each run's fold models averaged. A side written as outputs folders joined by "+" is a pool of
runs (members), combined by the geometric mean as a `raytag train` run combines its members:
the default's members with one of them swapped for another run (default_vgg60.json's seed-1
pairing). Made budget_swa.json's pairing (5 folds with and without `train.average_last`).
Prints JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench_quality import fold_mean_test, oof_scores, test_truth  # the same readers as quality.md's rows
from raytag.ensemble.combiners import geometric_mean
from raytag.metrics import lwlrap, paired_bootstrap_lwlrap


def pooled_oof(side: str, classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(OOF scores, truth) of one side: a run's outputs folder, or "+"-joined ones pooled."""
    runs = [oof_scores({"row": "run", "outputs": o}, classes) for o in side.split("+")]
    if len(runs) == 1:  # a run alone, its scores as they are (the mean would clip them at EPS)
        return runs[0]
    common = runs[0][0].index
    for scores, _ in runs[1:]:
        common = common.intersection(scores.index)
    pooled = geometric_mean([scores.loc[common].to_numpy() for scores, _ in runs])
    return pd.DataFrame(pooled, index=common, columns=classes), runs[0][1].loc[common]


def pooled_test(side: str, classes: list[str], clips) -> np.ndarray:
    runs = [fold_mean_test(Path(o), classes).loc[clips].to_numpy() for o in side.split("+")]
    return runs[0] if len(runs) == 1 else geometric_mean(runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the dataset both runs trained on (with test_labels.csv)")
    ap.add_argument("a", help="outputs folder of run a (or several joined by +: a pool)")
    ap.add_argument("b", help="outputs folder of run b (or several joined by +: a pool)")
    args = ap.parse_args()
    classes = list(pd.read_csv(args.data / "sample_submission.csv", nrows=0).columns[1:])
    (oa, y), (ob, _) = (pooled_oof(side, classes) for side in (args.a, args.b))
    common = oa.index.intersection(ob.index)
    y_cv, a_cv, b_cv = y.loc[common].to_numpy(), oa.loc[common].to_numpy(), ob.loc[common].to_numpy()
    y_test = test_truth(args.data, classes)
    a_test, b_test = (pooled_test(side, classes, y_test.index) for side in (args.a, args.b))
    y_test = y_test.to_numpy()
    print(json.dumps({
        "a": str(args.a), "b": str(args.b), "n_oof": len(common),
        "cv_a": float(lwlrap(y_cv, a_cv)), "cv_b": float(lwlrap(y_cv, b_cv)),
        "cv_pair": paired_bootstrap_lwlrap(y_cv, a_cv, b_cv),
        "test_a": float(lwlrap(y_test, a_test)), "test_b": float(lwlrap(y_test, b_test)),
        "test_pair": paired_bootstrap_lwlrap(y_test, a_test, b_test),
    }, indent=1, default=float))


if __name__ == "__main__":
    main()
