"""Two finished `raytag train` runs on the dev benchmark, paired clip by clip.

    python benchmarks/pair_runs.py --data DIR RUN_A/outputs RUN_B/outputs

CV: lwlrap of each run's out-of-fold predictions on the curated clips both hold out, and the
paired bootstrap of b - a (1000 resamples, 90% interval). Test: the same on the test clips,
each run's fold models averaged. Made budget_swa.json's pairing (5 folds with and without
`train.average_last`). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from bench_quality import fold_mean_test, oof_scores, test_truth  # the same readers as quality.md's rows
from raytag.metrics import lwlrap, paired_bootstrap_lwlrap


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the dataset both runs trained on (with test_labels.csv)")
    ap.add_argument("a", type=Path, help="outputs folder of run a")
    ap.add_argument("b", type=Path, help="outputs folder of run b")
    args = ap.parse_args()
    classes = list(pd.read_csv(args.data / "sample_submission.csv", nrows=0).columns[1:])
    (oa, y), (ob, _) = (oof_scores({"row": "run", "outputs": str(o)}, classes) for o in (args.a, args.b))
    common = oa.index.intersection(ob.index)
    y_cv, a_cv, b_cv = y.loc[common].to_numpy(), oa.loc[common].to_numpy(), ob.loc[common].to_numpy()
    y_test = test_truth(args.data, classes)
    a_test, b_test = (fold_mean_test(o, classes).loc[y_test.index].to_numpy() for o in (args.a, args.b))
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
