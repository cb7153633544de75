#!/usr/bin/env python3
"""Finished single-family runs of one seed, combined as `raytag train` with `members` combines
them: does a second model family pay, and is it the family or just a second model?

    python benchmarks/bench_members.py --data /work/bench/escfat \\
        --pair SEED NAME_A=RUN_A/outputs NAME_B=RUN_B/outputs [--pair ...] \\
        [--members-run SEED RUN/outputs ...] [--against SEED A=OUT B=OUT VARIANT/outputs ...] \\
        [--swap SEED KEEP=OUT OLD=OUT NEW=OUT ...] [--add SEED A=OUT B=OUT NEW=OUT ...] [--seeds A=OUT,B=OUT A=OUT,B=OUT ...] \\
        [--out results/benchmarks/members.json]

Each pair's two runs must have held out every curated clip in the same fold (the same seed and
cv settings): checked. Where a run is named, OUT1+OUT2 joins runs of one model over disjoint
folds into one (`load`). For each pair: each run's CV (out-of-fold lwlrap) and test lwlrap (its
fold models averaged), the geometric and the arithmetic mean of the two (nothing fitted, as in
raytag.ensemble.members), and the paired bootstrap (1000 resamples, 90%) of the combination
against each run alone, on CV and on test. `--members-run`: a finished members run of the
default config, scored from its own outputs/ (and its members' own folders). `--against`: the
default's two members run alone (their geometric mean) against a members run of a variant of
the default at the same seed (face-value training, say), combined and member by member.
`--add`: a third run joins the pair (A, B) in the geometric mean, against the pair alone.
`--seeds`: the pairs of several seeds in one geometric mean, against each seed's pair.
Needs no training.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench_quality import fold_mean_test, oof_scores, test_truth  # the same readers as quality.md's rows
from raytag.ensemble.combiners import combine
from raytag.metrics import lwlrap, paired_bootstrap_lwlrap


def load(outputs: Path, classes: list[str]):
    """(OOF scores, OOF truth, each OOF clip's fold, test scores) of one run's outputs, or of
    runs of one model over disjoint folds given as OUT1+OUT2 (one seed, `cv.folds` split
    between them): their OOF clips joined, and their test scores the mean of all their fold
    models. A fold's model then differs from the one a run of every fold trains only in its
    random draws (batches, crops and mixup are seeded by the run's epoch count)."""
    parts = [Path(p) for p in str(outputs).split("+")]
    if len(parts) > 1:
        loaded = [load(p, classes) for p in parts]
        folds = pd.concat([x[2] for x in loaded])
        if not folds.index.is_unique:
            raise SystemExit(f"{outputs}: the runs held out the same clips; join runs of disjoint folds only")
        n_models = [x[2].nunique() for x in loaded]
        test = sum(x[3] * n for x, n in zip(loaded, n_models)) / sum(n_models)
        return pd.concat([x[0] for x in loaded]), pd.concat([x[1] for x in loaded]), folds, test
    oof, y = oof_scores({"row": "run", "outputs": str(outputs)}, classes)
    folds = pd.read_parquet(outputs / "oof.parquet").set_index("clip_id")["fold"]
    return oof, y, folds, fold_mean_test(outputs, classes)


def pair_report(seed: int, runs: dict[str, Path], data: Path, classes: list[str]) -> dict:
    (na, pa_), (nb, pb) = runs.items()
    (oa, y, fa, ta), (ob, _, fb, tb) = load(pa_, classes), load(pb, classes)
    if set(oa.index) != set(ob.index) or not (fa.loc[oa.index] == fb.loc[oa.index]).all():
        raise SystemExit(f"{pa_} and {pb} held out different clips: not the same seed and folds")
    ids = oa.index
    yt = test_truth(data, classes)
    y_cv, y_test = y.loc[ids].to_numpy(), yt.to_numpy()
    a_cv, b_cv = oa.loc[ids].to_numpy(), ob.loc[ids].to_numpy()
    a_test, b_test = ta.loc[yt.index].to_numpy(), tb.loc[yt.index].to_numpy()
    out = {"seed": seed, "runs": {na: str(pa_), nb: str(pb)},
           na: {"cv_lwlrap": lwlrap(y_cv, a_cv), "test_lwlrap": lwlrap(y_test, a_test)},
           nb: {"cv_lwlrap": lwlrap(y_cv, b_cv), "test_lwlrap": lwlrap(y_test, b_test)}}
    for how in ("geometric", "mean"):
        c_cv, c_test = combine(how, np.stack([a_cv, b_cv])), combine(how, np.stack([a_test, b_test]))
        out[how] = {"cv_lwlrap": lwlrap(y_cv, c_cv), "test_lwlrap": lwlrap(y_test, c_test),
                    **{f"minus_{n}": {"cv": paired_bootstrap_lwlrap(y_cv, s_cv, c_cv),
                                      "test": paired_bootstrap_lwlrap(y_test, s_test, c_test)}
                       for n, s_cv, s_test in ((na, a_cv, a_test), (nb, b_cv, b_test))}}
    return out


def members_run(seed: int, outputs: Path, data: Path, classes: list[str]) -> dict:
    """A members run from its own outputs, paired against each member's own outputs."""
    metrics = json.loads((outputs / "metrics.json").read_text())
    oof, y, _, test = load(outputs, classes)
    yt = test_truth(data, classes)
    y_cv, y_test = y.loc[oof.index].to_numpy(), yt.to_numpy()
    c_cv, c_test = oof.to_numpy(), test.loc[yt.index].to_numpy()
    members = {}
    for name, m in metrics.get("members", {}).items():
        m_oof, _, _, m_test = load(Path(m["outputs"]), classes)
        s_cv, s_test = m_oof.loc[oof.index].to_numpy(), m_test.loc[yt.index].to_numpy()
        members[name] = {**{k: m[k] for k in ("model", "cv_lwlrap", "test_lwlrap", "seconds")},
                         "combined_minus_member": {"cv": paired_bootstrap_lwlrap(y_cv, s_cv, c_cv),
                                                   "test": paired_bootstrap_lwlrap(y_test, s_test, c_test)}}
    return {"seed": seed, "outputs": str(outputs), "combine": metrics.get("combine"),
            "cv_lwlrap": lwlrap(y_cv, c_cv), "test_lwlrap": lwlrap(y_test, c_test),
            "seconds": metrics.get("seconds"), "members": members}


def pair_against_members_run(seed: int, runs: dict[str, Path], other: Path, data: Path, classes: list[str]) -> dict:
    """The geometric mean of two single runs (the default's members, run alone) against a
    members run of the same seed and folds (a variant of the default), and member by member."""
    loaded = {n: load(p, classes) for n, p in runs.items()}
    o_oof, y, o_folds, o_test = load(other, classes)
    yt = test_truth(data, classes)
    ids = o_oof.index
    for n, (oof, _, folds, _) in loaded.items():
        if set(oof.index) != set(ids) or not (folds.loc[ids] == o_folds.loc[ids]).all():
            raise SystemExit(f"{runs[n]} and {other} held out different clips: not the same seed and folds")
    y_cv, y_test = y.loc[ids].to_numpy(), yt.to_numpy()
    a_cv = combine("geometric", np.stack([v[0].loc[ids].to_numpy() for v in loaded.values()]))
    a_test = combine("geometric", np.stack([v[3].loc[yt.index].to_numpy() for v in loaded.values()]))
    b_cv, b_test = o_oof.loc[ids].to_numpy(), o_test.loc[yt.index].to_numpy()
    metrics = json.loads((other / "metrics.json").read_text())
    by_member = {}
    for n, (oof, _, _, test) in loaded.items():
        if n not in metrics.get("members", {}):
            continue
        m_oof, _, _, m_test = load(Path(metrics["members"][n]["outputs"]), classes)
        by_member[n] = {"cv": paired_bootstrap_lwlrap(y_cv, oof.loc[ids].to_numpy(), m_oof.loc[ids].to_numpy()),
                        "test": paired_bootstrap_lwlrap(y_test, test.loc[yt.index].to_numpy(),
                                                        m_test.loc[yt.index].to_numpy())}
    return {"seed": seed, "default_members": {n: str(p) for n, p in runs.items()}, "variant": str(other),
            "default": {"cv_lwlrap": lwlrap(y_cv, a_cv), "test_lwlrap": lwlrap(y_test, a_test)},
            "variant_scores": {"cv_lwlrap": lwlrap(y_cv, b_cv), "test_lwlrap": lwlrap(y_test, b_test),
                               "seconds": metrics.get("seconds")},
            "variant_minus_default": {"cv": paired_bootstrap_lwlrap(y_cv, a_cv, b_cv),
                                      "test": paired_bootstrap_lwlrap(y_test, a_test, b_test)},
            "variant_minus_default_by_member": by_member}


def _same_folds(runs: dict[str, Path], loaded: dict) -> pd.Index:
    (n0, (oof0, _, folds0, _)), *rest = loaded.items()
    for n, (oof, _, folds, _) in rest:
        if set(oof.index) != set(oof0.index) or not (folds.loc[oof0.index] == folds0.loc[oof0.index]).all():
            raise SystemExit(f"{runs[n]} and {runs[n0]} held out different clips: not the same seed and folds")
    return oof0.index


def _aligned(runs: dict[str, Path], data: Path, classes: list[str]):
    """(y_cv, y_test, cv, test) of runs that held out the same clips: truth and each run's
    OOF and fold-mean test predictions as arrays, clip by clip in one order."""
    loaded = {n: load(p, classes) for n, p in runs.items()}
    ids = _same_folds(runs, loaded)
    y = loaded[next(iter(loaded))][1]
    yt = test_truth(data, classes)
    cv = {n: v[0].loc[ids].to_numpy() for n, v in loaded.items()}
    test = {n: v[3].loc[yt.index].to_numpy() for n, v in loaded.items()}
    return y.loc[ids].to_numpy(), yt.to_numpy(), cv, test


def _two_means(seed: int, runs: dict[str, Path], data: Path, classes: list[str],
               first: list[str], second: list[str], diff_key: str) -> dict:
    """Each run alone, the geometric mean of the runs named in `first` and of those in
    `second`, and the paired bootstrap of second against first, on CV and on test."""
    y_cv, y_test, cv, test = _aligned(runs, data, classes)
    def mean_of(names):  # (CV, test) geometric means of the named runs
        return tuple(combine("geometric", np.stack([x[n] for n in names])) for x in (cv, test))

    (a_cv, a_test), (b_cv, b_test) = mean_of(first), mean_of(second)
    return {"seed": seed, "runs": {n: str(p) for n, p in runs.items()},
            "alone": {n: {"cv_lwlrap": lwlrap(y_cv, cv[n]), "test_lwlrap": lwlrap(y_test, test[n])} for n in runs},
            "+".join(first): {"cv_lwlrap": lwlrap(y_cv, a_cv), "test_lwlrap": lwlrap(y_test, a_test)},
            "+".join(second): {"cv_lwlrap": lwlrap(y_cv, b_cv), "test_lwlrap": lwlrap(y_test, b_test)},
            diff_key: {"cv": paired_bootstrap_lwlrap(y_cv, a_cv, b_cv),
                       "test": paired_bootstrap_lwlrap(y_test, a_test, b_test)}}


def pair_swap(seed: int, runs: dict[str, Path], data: Path, classes: list[str]) -> dict:
    """(KEEP, NEW) against (KEEP, OLD): is NEW the better second member, at this seed?"""
    keep, old, new = list(runs)
    return _two_means(seed, runs, data, classes, [keep, old], [keep, new], "new_pair_minus_old_pair")


def pair_plus(seed: int, runs: dict[str, Path], data: Path, classes: list[str]) -> dict:
    """(A, B, NEW) against the pair (A, B), geometric means: does a third family pay on top of
    the default's pair, at this seed?"""
    a, b, new = list(runs)
    return _two_means(seed, runs, data, classes, [a, b], [a, b, new], "three_minus_pair")


def seed_ensemble(seeds: list[dict[str, Path]], data: Path, classes: list[str]) -> dict:
    """Every seed's pair combined into one geometric mean, against each seed's pair alone: what an
    ensemble of the default run over seeds adds (same folds: cv.seed, not seed, sets them)."""
    named = {f"s{i}:{n}": p for i, runs in enumerate(seeds) for n, p in runs.items()}
    y_cv, y_test, cv, test = _aligned(named, data, classes)
    all_cv = combine("geometric", np.stack(list(cv.values())))
    all_test = combine("geometric", np.stack(list(test.values())))
    out = {"runs": {n: str(p) for n, p in named.items()},
           "all_seeds": {"models": len(named), "cv_lwlrap": lwlrap(y_cv, all_cv), "test_lwlrap": lwlrap(y_test, all_test)},
           "per_seed": []}
    for i in range(len(seeds)):
        mine = [n for n in named if n.startswith(f"s{i}:")]
        p_cv = combine("geometric", np.stack([cv[n] for n in mine]))
        p_test = combine("geometric", np.stack([test[n] for n in mine]))
        out["per_seed"].append({"seed_index": i, "cv_lwlrap": lwlrap(y_cv, p_cv), "test_lwlrap": lwlrap(y_test, p_test),
                                "all_seeds_minus_this": {"cv": paired_bootstrap_lwlrap(y_cv, p_cv, all_cv),
                                                         "test": paired_bootstrap_lwlrap(y_test, p_test, all_test)}})
    out["mean_gain"] = {on: float(np.mean([r["all_seeds_minus_this"][on]["diff"] for r in out["per_seed"]]))
                        for on in ("cv", "test")}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the dataset the runs trained on (with test_labels.csv)")
    ap.add_argument("--pair", nargs=3, action="append", default=[], metavar=("SEED", "A=OUT", "B=OUT"))
    ap.add_argument("--members-run", nargs=2, action="append", default=[], metavar=("SEED", "OUT"))
    ap.add_argument("--against", nargs=4, action="append", default=[], metavar=("SEED", "A=OUT", "B=OUT", "VARIANT_OUT"),
                    help="the default's two members run alone, against a members run of a variant (same seed)")
    ap.add_argument("--swap", nargs=4, action="append", default=[], metavar=("SEED", "KEEP=OUT", "OLD=OUT", "NEW=OUT"),
                    help="the pair (KEEP, NEW) against the pair (KEEP, OLD), same seed and folds")
    ap.add_argument("--add", nargs=4, action="append", default=[], metavar=("SEED", "A=OUT", "B=OUT", "NEW=OUT"),
                    help="the three runs' geometric mean against the pair (A, B), same seed and folds")
    ap.add_argument("--seeds", nargs="+", default=[], metavar="A=OUT,B=OUT",
                    help="one seed's runs per argument (comma-separated): all seeds' runs in one geometric mean, "
                         "against each seed's own")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = ap.parse_args()
    classes = list(pd.read_csv(args.data / "sample_submission.csv", nrows=0).columns[1:])
    pairs = [pair_report(int(seed), {k: Path(v) for k, v in (x.split("=", 1) for x in (a, b))}, args.data, classes)
             for seed, a, b in args.pair]
    for p in pairs:
        p["runs"] = {k: str(v) for k, v in p["runs"].items()}
    report = {
        "what": "finished single-family runs of one seed combined clip by clip as raytag.ensemble.members "
                "does (geometric and arithmetic mean, nothing fitted), against each run alone",
        "command": f"python benchmarks/bench_members.py --data {args.data} " + " ".join(
            f"--pair {s} {a} {b}" for s, a, b in args.pair) + "".join(
            f" --members-run {s} {o}" for s, o in args.members_run) + "".join(
            f" --against {s} {a} {b} {v}" for s, a, b, v in args.against) + "".join(
            f" --swap {s} {k} {o} {n}" for s, k, o, n in args.swap) + "".join(
            f" --add {s} {a} {b} {n}" for s, a, b, n in args.add) + (
            " --seeds " + " ".join(args.seeds) if args.seeds else ""),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "pairs": pairs,
        "members_runs": [members_run(int(s), Path(o), args.data, classes) for s, o in args.members_run],
        "variants": [pair_against_members_run(int(s), {k: Path(v) for k, v in (x.split("=", 1) for x in (a, b))},
                                              Path(o), args.data, classes) for s, a, b, o in args.against],
    }
    swaps = [pair_swap(int(s), {k: Path(v) for k, v in (x.split("=", 1) for x in (a, b, c))}, args.data, classes)
             for s, a, b, c in args.swap]
    if swaps:
        diffs = [w["new_pair_minus_old_pair"] for w in swaps]
        report["swaps"] = swaps
        report["mean_of_swaps"] = {on: float(np.mean([d[on]["diff"] for d in diffs])) for on in ("cv", "test")}
    if args.add:
        report["additions"] = [pair_plus(int(s), {k: Path(v) for k, v in (x.split("=", 1) for x in (a, b, c))},
                                         args.data, classes) for s, a, b, c in args.add]
    if args.seeds:
        report["seed_ensemble"] = seed_ensemble(
            [{k: Path(v) for k, v in (x.split("=", 1) for x in group.split(","))} for group in args.seeds],
            args.data, classes)
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
