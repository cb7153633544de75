#!/usr/bin/env python3
"""How much of a run's CV comes from clips whose recording is on both sides of a split.

    python benchmarks/bench_cv_leak.py --groups /work/bench/escfat_groups.csv \\
        --run NAME=RUN/outputs [--run ...] [--out results/benchmarks/cv_leak.json]

For each finished `raytag train` run: the out-of-fold lwlrap of all held-out curated clips,
of the "leaked" ones (another clip of the same source group, from
benchmarks/bench_source_groups.py, was in that fold's training set) and of the "clean" ones.
A CV that leaks scores the leaked clips higher; with `cv.clip_groups` no clip is leaked.
Whether those clips are merely easier shows on a grouped run of the same seed: every run is
also scored on the clips the first run with leaks leaked ("that subset") and on the others.
Needs no training: it reads outputs/oof.parquet and the run's fold ids in it.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench_quality import oof_scores  # the same reader as quality.md's rows
from raytag.metrics import lwlrap


def leaked_mask(clip_ids: list[str], folds: np.ndarray, group_of: dict[str, str]) -> np.ndarray:
    """True where another clip of the same group sits in a different fold (so it was trained on)."""
    groups = np.array([group_of[c.split("/", 1)[1]] for c in clip_ids])
    out = np.zeros(len(clip_ids), dtype=bool)
    for g in np.unique(groups):
        idx = np.nonzero(groups == g)[0]
        out[idx] = len(set(folds[idx])) > 1  # then every member has a sibling in another fold
    return out


def load_run(outputs: Path, group_of: dict[str, str]) -> dict:
    """A run's out-of-fold scores and truth (bench_quality's reader), and which clips leaked."""
    frame = pd.read_parquet(outputs / "oof.parquet")
    oof = frame.set_index("clip_id")["fold"]
    classes = [c for c in frame.columns if c not in ("clip_id", "fold", "run", "stage")]
    scores, truth = oof_scores({"row": outputs.name, "outputs": str(outputs)}, classes)
    n_folds = yaml.safe_load((outputs / "config.yaml").read_text())["cv"]["n_folds"]
    if oof.nunique() < n_folds:
        # the clips of untrained folds are not in oof.parquet, so their folds are unknown here
        raise SystemExit(f"{outputs}: trained {oof.nunique()} of {n_folds} folds; "
                         "the leak can only be read from a run of every fold")
    ids = list(scores.index)
    return {"ids": ids, "y": truth.loc[ids].to_numpy(), "p": scores.to_numpy(),
            "leaked": leaked_mask(ids, oof.loc[ids].to_numpy(), group_of)}


def score_run(run: dict, subset: set | None = None) -> dict:
    ids, y, p, leaked = run["ids"], run["y"], run["p"], run["leaked"]
    part = lambda mask: lwlrap(y[mask], p[mask]) if mask.any() else None  # noqa: E731
    row = {"n": len(ids), "cv_all": lwlrap(y, p), "n_leaked": int(leaked.sum()),
           "cv_leaked": part(leaked), "cv_clean": part(~leaked)}
    if subset is not None:
        inside = np.array([c in subset for c in ids])
        row["cv_that_subset"], row["cv_not_that_subset"] = part(inside), part(~inside)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=Path, required=True, help="fname,group CSV (bench_source_groups.py)")
    ap.add_argument("--run", action="append", required=True, metavar="NAME=OUTPUTS")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    a = ap.parse_args()
    table = pd.read_csv(a.groups, dtype=str, keep_default_na=False)
    group_of = dict(zip(table["fname"], table["group"]))
    runs = {name: load_run(Path(path), group_of) for name, _, path in (spec.partition("=") for spec in a.run)}
    first = next((name for name, run in runs.items() if run["leaked"].any()), None)
    # every run is also scored on the clips the first leaky run leaked
    subset = {c for c, m in zip(runs[first]["ids"], runs[first]["leaked"]) if m} if first else None
    rows = [{"run": name, "outputs": spec.partition("=")[2], **score_run(run, subset)}
            for (name, run), spec in zip(runs.items(), a.run)]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{'run':38} {'all':>7} {'leaked':>13} {'clean':>13} {'that subset':>12} {'the others':>11}")
    for row in rows:
        print(f"{row['run']:38} {row['cv_all']:7.4f} {fmt(row['cv_leaked']):>7} n={row['n_leaked']:<4} "
              f"{fmt(row['cv_clean']):>7} n={row['n'] - row['n_leaked']:<4} {fmt(row.get('cv_that_subset')):>12} "
              f"{fmt(row.get('cv_not_that_subset')):>11}")
    if first is not None:
        print(f"that subset: the {len(subset)} clips leaked in {first!r}")
    if a.out:
        a.out.write_text(json.dumps({"groups": str(a.groups), "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                                     "that_subset": f"the clips leaked in {first!r}" if first else None,
                                     "runs": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
