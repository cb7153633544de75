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

from raytag.metrics import lwlrap


def leaked_mask(clip_ids: list[str], folds: np.ndarray, group_of: dict[str, str]) -> np.ndarray:
    """True where another clip of the same group sits in a different fold (so it was trained on)."""
    groups = np.array([group_of[c.split("/", 1)[1]] for c in clip_ids])
    out = np.zeros(len(clip_ids), dtype=bool)
    for g in np.unique(groups):
        idx = np.nonzero(groups == g)[0]
        out[idx] = len(set(folds[idx])) > 1  # then every member has a sibling in another fold
    return out


def score_run(outputs: Path, group_of: dict[str, str], subset: set | None = None) -> dict:
    oof = pd.read_parquet(outputs / "oof.parquet").set_index("clip_id")
    classes = [c for c in oof.columns if c not in ("fold", "run", "stage")]
    truth = pd.read_csv(outputs / "oof_truth.csv", keep_default_na=False).set_index("clip_id")
    ids = list(oof.index)
    y = np.array([[c in labs.split(",") for c in classes] for labs in truth.loc[ids, "labels"]], np.float32)
    p = oof[classes].to_numpy()
    n_folds = yaml.safe_load((outputs / "config.yaml").read_text())["cv"]["n_folds"]
    if oof["fold"].nunique() < n_folds:
        # the clips of untrained folds are not in oof.parquet, so their folds are unknown here
        raise SystemExit(f"{outputs}: trained {oof['fold'].nunique()} of {n_folds} folds; "
                         "the leak can only be read from a run of every fold")
    leaked = leaked_mask(ids, oof["fold"].to_numpy(), group_of)
    row = {"outputs": str(outputs), "n": len(ids), "cv_all": lwlrap(y, p), "n_leaked": int(leaked.sum())}
    row["cv_leaked"] = lwlrap(y[leaked], p[leaked]) if leaked.any() else None
    row["cv_clean"] = lwlrap(y[~leaked], p[~leaked]) if (~leaked).any() else None
    if subset is not None:
        inside = np.array([c in subset for c in ids])
        row["cv_that_subset"] = lwlrap(y[inside], p[inside]) if inside.any() else None
        row["cv_not_that_subset"] = lwlrap(y[~inside], p[~inside]) if (~inside).any() else None
    row["leaked_ids"] = [c for c, m in zip(ids, leaked) if m]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=Path, required=True, help="fname,group CSV (bench_source_groups.py)")
    ap.add_argument("--run", action="append", required=True, metavar="NAME=OUTPUTS")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    a = ap.parse_args()
    table = pd.read_csv(a.groups, dtype=str, keep_default_na=False)
    group_of = dict(zip(table["fname"], table["group"]))
    runs = [(name, Path(path)) for name, _, path in (spec.partition("=") for spec in a.run)]
    rows = [{"run": name, **score_run(path, group_of)} for name, path in runs]
    first = next((r for r in rows if r["n_leaked"]), None)
    if first is not None:  # score every run on the clips that run leaked
        subset = set(first["leaked_ids"])
        rows = [{"run": name, **score_run(path, group_of, subset)} for name, path in runs]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{'run':38} {'all':>7} {'leaked':>13} {'clean':>13} {'that subset':>12} {'the others':>11}")
    for row in rows:
        print(f"{row['run']:38} {row['cv_all']:7.4f} {fmt(row['cv_leaked']):>7} n={row['n_leaked']:<4} "
              f"{fmt(row['cv_clean']):>7} n={row['n'] - row['n_leaked']:<4} {fmt(row.get('cv_that_subset')):>12} "
              f"{fmt(row.get('cv_not_that_subset')):>11}")
    if first is not None:
        print(f"that subset: the {len(first['leaked_ids'])} clips leaked in {first['run']!r}")
    for row in rows:
        row.pop("leaked_ids")
    if a.out:
        a.out.write_text(json.dumps({"groups": str(a.groups), "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                                     "that_subset": f"the clips leaked in {first['run']!r}" if first else None,
                                     "runs": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
