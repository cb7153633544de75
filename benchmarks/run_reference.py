#!/usr/bin/env python3
"""Run ../shared/bench/cnn_reference.py unchanged and keep its final test predictions.

The script prints test lwlrap only; a paired bootstrap against raytag needs its per-clip
scores. This wrapper imports the script, wraps its `predict` to remember the last call
(the test set after the final epoch) and writes them as parquet (fname + class columns).

usage: run_reference.py SCRIPT DATA_DIR OUT.parquet [script args...]
"""
import argparse
import csv
import importlib.util
import sys
from pathlib import Path

import pandas as pd


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("script", help="path to cnn_reference.py")
    ap.add_argument("data", help="dataset folder (with sample_submission.csv and test_labels.csv)")
    ap.add_argument("out", help="where to write the test predictions (parquet)")
    ap.add_argument("script_args", nargs=argparse.REMAINDER, help="passed to the script unchanged")
    return ap.parse_args()


def main():
    a = parse_args()
    script, data, out, args = a.script, a.data, a.out, a.script_args
    spec = importlib.util.spec_from_file_location("cnn_reference", script)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    last = {}
    original = ref.predict

    def remembering_predict(net, X, T):
        last["probs"] = original(net, X, T)
        return last["probs"]

    ref.predict = remembering_predict
    sys.argv = [script, data, *args]
    ref.main()
    classes = next(csv.reader(open(Path(data) / "sample_submission.csv")))[1:]
    fnames = [r["fname"] for r in csv.DictReader(open(Path(data) / "test_labels.csv"))]
    frame = pd.DataFrame(last["probs"], columns=classes)
    frame.insert(0, "fname", fnames)
    frame.to_parquet(out, index=False)
    print(f"test predictions -> {out}")


if __name__ == "__main__":
    main()
