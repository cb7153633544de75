#!/usr/bin/env python3
"""How much one run's score moves with its seed: finished runs of a few recipes, each with
several seeds, scored side by side on the dev benchmark.

    python benchmarks/seed_study.py --data DIR --out results/benchmarks/seeds.json \
        --run default:0=RUN0/outputs --run default:1=RUN1/outputs \
        --reference reference:0=REF0.parquet --reference reference:1=REF1.parquet

`--run RECIPE:SEED=OUTPUTS` is a finished `raytag train` run (CV: its out-of-fold lwlrap on
the curated clips; test: its fold models' mean). `--reference RECIPE:SEED=PARQUET` is the
test predictions `benchmarks/run_reference.py` keeps of ../shared/bench/cnn_reference.py
(no CV: the script holds nothing out). Prints a table (each run, then each recipe's mean and
spread over its seeds) and writes the same as JSON. A paired bootstrap over clips, as
pair_runs.py gives, measures how sure a difference is for these trained models; this measures
what it leaves out, the variance of training itself (initial weights, crops, mixup, folds).

`--earlier SEEDS.json` carries the rows of an earlier study whose runs are no longer on this
machine (each keeps its scores, marked `"carried": true`); a recipe and seed given again with
--run or --reference is scored anew instead.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import pandas as pd

from bench_quality import oof_scores, test_scores, test_truth  # the same readers as quality.md's rows
from raytag.metrics import lwlrap


def parse_entry(text: str) -> tuple[str, int, Path]:
    try:
        key, path = text.split("=", 1)
        recipe, seed = key.rsplit(":", 1)
        return recipe, int(seed), Path(path)
    except ValueError:
        raise SystemExit(f"expected RECIPE:SEED=PATH, got {text!r}") from None


def score_runs(data: Path, runs: list[str], references: list[str]) -> list[dict]:
    classes = list(pd.read_csv(data / "sample_submission.csv", nrows=0).columns[1:])
    y_test = test_truth(data, classes)

    def row(text: str, info_of) -> dict:
        recipe, seed, path = parse_entry(text)
        info = info_of(path)  # a row as bench_quality describes it, for its readers
        scored = oof_scores(info, classes)  # None for the script: it holds nothing out
        test = test_scores(info, classes).loc[y_test.index]
        return {"recipe": recipe, "seed": seed, "path": str(path),
                "cv_lwlrap": None if scored is None else float(lwlrap(scored[1].to_numpy(), scored[0].to_numpy())),
                "test_lwlrap": float(lwlrap(y_test.to_numpy(), test.to_numpy()))}

    return ([row(text, lambda path: {"row": "run", "outputs": str(path)}) for text in runs]
            + [row(text, lambda path: {"row": "reference_script", "test_preds": str(path)}) for text in references])


def carry_earlier(path: Path, rows: list[dict]) -> list[dict]:
    """The earlier study's rows that `rows` does not score again, first, marked as carried."""
    scored = {(r["recipe"], r["seed"]) for r in rows}
    earlier = [{**r, "carried": True} for r in json.loads(path.read_text())["runs"]
               if (r["recipe"], r["seed"]) not in scored]
    return earlier + rows


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        entry = {"recipe": recipe, "seeds": [r["seed"] for r in mine]}
        for key in ("cv_lwlrap", "test_lwlrap"):
            values = [r[key] for r in mine if r[key] is not None]
            if values:
                entry[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
        out.append(entry)
    return out


def markdown(rows: list[dict], recipes: list[dict]) -> str:
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["| recipe | seed | CV lwlrap | test lwlrap |", "|---|---|---|---|"]
    lines += [f"| {r['recipe']} | {r['seed']}{' (carried)' if r.get('carried') else ''} | "
              f"{fmt(r['cv_lwlrap'])} | {fmt(r['test_lwlrap'])} |" for r in rows]
    lines += ["", "| recipe | seeds | CV mean [min, max] | test mean [min, max] |", "|---|---|---|---|"]
    for r in recipes:
        cells = [f"{r[k]['mean']:.4f} [{r[k]['min']:.4f}, {r[k]['max']:.4f}]" if k in r else ""
                 for k in ("cv_lwlrap", "test_lwlrap")]
        lines.append(f"| {r['recipe']} | {len(r['seeds'])} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the dataset every run trained on (with test_labels.csv)")
    ap.add_argument("--run", action="append", default=[], help="RECIPE:SEED=OUTPUTS of a finished raytag run")
    ap.add_argument("--reference", action="append", default=[], help="RECIPE:SEED=PARQUET of run_reference.py")
    ap.add_argument("--earlier", type=Path, help="an earlier study's JSON: its rows are carried over")
    ap.add_argument("--out", type=Path, help="JSON file to write")
    args = ap.parse_args()
    rows = score_runs(args.data, args.run, args.reference)
    if args.earlier:
        rows = carry_earlier(args.earlier, rows)
    recipes = summarise(rows)
    print(markdown(rows, recipes))
    if args.out:
        args.out.write_text(json.dumps({"data": str(args.data), "load": " ".join(map(str, os.getloadavg())),
                                        "runs": rows, "recipes": recipes}, indent=1) + "\n")


if __name__ == "__main__":
    main()
