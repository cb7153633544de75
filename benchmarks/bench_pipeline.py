"""Benchmark of the noisy-label pipeline (issue 4): what each stage buys, side by side.

One fixed model and budget (configs/bench_pipeline.yaml), the ESC-50 FAT2019-layout
benchmark (50 classes, ~510 curated, ~1015 noisy clips of which ~60% carry wrong labels,
512 test clips), and these variants, which differ only in the stage switches (same seed,
same folds, same epochs per stage):

    curated_only          fine-tune on curated clips, from scratch
    curated_plus_noisy    curated + every noisy clip at face value (the baseline to beat)
    warmup_curated        stage 0 warm-up on the rough noisy subset, then curated
    plus_filter           + probability filter, one stage-2 round on curated + accepted
    plus_spreading        + label spreading (with the filter)
    plus_pseudo           + pseudo-labelled rounds (the whole pipeline)
    control_stage2        (--control) the filter's stage-2 epochs with no noisy clip
                          accepted: separates "more epochs" from "more clean data"
    face_value_then_stage2  (--extra) stage 1 = the face-value baseline (no warm-up), then
                          the filter, label spreading and pseudo rounds as chosen above

Settings that the issue asks to choose (the filter rule/threshold, how label spreading
joins the filter) are chosen by CV lwlrap of the final (stage-2) model among a few
candidates; test labels are only reported. Filter precision/recall come from
train_noisy_truth.csv, also for reporting only.

    python benchmarks/bench_pipeline.py                 # everything: 8 runs, ~40 min on 2 busy cores
    python benchmarks/bench_pipeline.py --control       # + the stage-2 control run
    python benchmarks/bench_pipeline.py --only curated_only warmup_curated   # a subset

Writes results/benchmarks/pipeline.json and pipeline.md. Finished runs under --storage
are reused unless --fresh (a run is keyed by its resolved config).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAYTAG_SHARED", REPO.parent / "shared"))
OUT_JSON = REPO / "results" / "benchmarks" / "pipeline.json"
OUT_MD = REPO / "results" / "benchmarks" / "pipeline.md"
NOTES_MARKER = "<!-- notes: kept when the script rewrites this file -->"

# The stage switches; every variant sets all of them, nothing else differs.
OFF = {
    "pipeline.warmup.enabled": False,
    "pipeline.finetune.noisy": "none",
    "pipeline.filter.enabled": False,
    "pipeline.label_spreading.enabled": False,
    "pipeline.pseudo.enabled": False,
}
BASELINES = [
    ("curated_only", "curated clips only", {}),
    ("curated_plus_noisy", "curated + all noisy clips at face value", {"pipeline.finetune.noisy": "all"}),
    ("warmup_curated", "noisy warm-up, then curated", {"pipeline.warmup.enabled": True}),
]
WARM = {"pipeline.warmup.enabled": True}
FILTER_ON = {**WARM, "pipeline.filter.enabled": True}
# Candidates chosen by CV (stage-2 model's OOF lwlrap). clip_lwlrap >= 1: every given label
# ranks above every other class (top-1 for a single label); >= 0.5: within the top two.
FILTER_CANDIDATES = [
    {"pipeline.filter.rule": "clip_lwlrap", "pipeline.filter.threshold": 1.0},
    {"pipeline.filter.rule": "clip_lwlrap", "pipeline.filter.threshold": 0.5},
]
# How label spreading (model embeddings, gamma 20, alpha 0.2 as seed 002) joins the filter:
# "and" = a second opinion that must agree (cleaner), "or" = extra clips it vouches for.
SPREAD_CANDIDATES = [
    {"pipeline.label_spreading.combine": "and"},
    {"pipeline.label_spreading.combine": "or"},
]
# The control: stage 2 runs, but the filter accepts nothing (no probability reaches 1.0 under
# min_prob... checked: n_accepted is reported), so stage 2 is curated-only extra epochs.
CONTROL = {**FILTER_ON, "pipeline.filter.rule": "min_prob", "pipeline.filter.threshold": 1.0}


def make_bench_data(out: Path) -> Path:
    if not (out / "train_curated.csv").is_file():
        subprocess.run([sys.executable, str(SHARED / "bench" / "make_fat_bench.py"), "--source",
                        str(SHARED / "data" / "esc50"), "--out", str(out)], check=True)
    n_classes = len(pd.read_csv(out / "sample_submission.csv", nrows=0).columns) - 1
    if n_classes != 50:
        sys.exit(f"{out} holds a {n_classes}-class benchmark; this benchmark needs the 50-class one "
                 f"(make_fat_bench.py without --classes): pass another --data folder")
    return out


def config_key(cfg) -> str:
    blob = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "name"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def run_variant(base, label: str, overrides: dict, data: Path, storage: Path, features: Path) -> dict:
    """One fit_pipeline run (or the finished one already under storage) -> its summary."""
    from raytag.training.runner import fit_pipeline

    cfg = base.with_overrides({**OFF, **overrides, "name": label})
    name = f"{label}-{config_key(cfg)}"
    outputs = storage / name / "outputs"
    if (outputs / "metrics.json").is_file():
        print(f"[bench] {label}: reusing finished run {storage / name}", flush=True)
        metrics = json.loads((outputs / "metrics.json").read_text())
    else:
        if (storage / name).exists():  # an unfinished run: start over, so minutes mean something
            shutil.rmtree(storage / name)
        print(f"[bench] {label}: running ({name}) ...", flush=True)
        result = fit_pipeline(cfg, data, str(storage), name, feature_cache=str(features), progress=False)
        metrics = result.metrics
    stages = pd.read_csv(outputs / "stages.csv")
    summary = summarise(label, overrides, cfg, metrics, stages, outputs, storage / name, data)
    print(f"[bench] {label}: cv {summary['cv_lwlrap']:.4f}  test {summary['test_lwlrap']:.4f}  "
          f"({summary['minutes']:.1f} min)", flush=True)
    return summary


def summarise(label, overrides, cfg, metrics, stages, outputs: Path, run_dir: Path, data: Path) -> dict:
    final = stages.iloc[-1]
    out = {
        "variant": label,
        "switches": {k: v for k, v in {**OFF, **overrides}.items()},
        "run": str(run_dir),
        "cv_lwlrap": float(metrics["cv_lwlrap"]),
        "fold_lwlrap": metrics["fold_lwlrap"],
        "test_lwlrap": float(metrics["test_lwlrap"]) if metrics.get("test_lwlrap") is not None else float("nan"),
        "minutes": round(metrics["seconds"] / 60.0, 2),
        "epochs_run": metrics.get("epochs_run"),
        "final_stage": str(final["stage"]),
        "stages": json.loads(stages.to_json(orient="records")),
    }
    filt = filter_report(outputs, data)
    if filt:
        out["filter"] = filt
    pseudo = pseudo_report(outputs, run_dir, data, cfg)
    if pseudo:
        out["pseudo"] = pseudo
    return out


def filter_report(outputs: Path, data: Path) -> dict | None:
    """Precision/recall of each fold's accepted clips against train_noisy_truth.csv (reporting)."""
    from raytag.pipeline.report import filter_precision_recall

    files = sorted((outputs / "filter").glob("fold*.json")) if (outputs / "filter").exists() else []
    if not files:
        return None
    given, truth = _noisy_labels(data)
    folds = []
    for path in files:
        d = json.loads(path.read_text())
        rep = filter_precision_recall(d["accepted"], given, truth)
        folds.append({"fold": d["fold"], "n_noisy": d["n_noisy"], "n_accepted": d["n_accepted"],
                      "n_prob_accepted": d.get("n_prob_accepted"), "n_spread_accepted": d.get("n_spread_accepted"),
                      **{k: rep[k] for k in ("precision", "recall", "base_precision",
                                             "label_precision", "label_recall", "n_correct_given")}})
    mean = lambda key: float(np.nanmean([f[key] for f in folds if f[key] is not None])) \
        if any(f[key] is not None for f in folds) else None
    return {"precision": mean("precision"), "recall": mean("recall"), "base_precision": mean("base_precision"),
            "label_precision": mean("label_precision"), "n_accepted": mean("n_accepted"),
            "n_prob_accepted": mean("n_prob_accepted"), "n_spread_accepted": mean("n_spread_accepted"),
            "folds": folds}


def pseudo_report(outputs: Path, run_dir: Path, data: Path, cfg) -> dict | None:
    """Clips pseudo-labelled per round, and how often their targets equal the true labels."""
    files = sorted((outputs / "pseudo").glob("fold*_r*.json")) if (outputs / "pseudo").exists() else []
    if not files:
        return None
    _, truth = _noisy_labels(data)
    preds = run_dir / "run_files" / "preds" / "pseudo"  # the pseudo-labels as the run saved them
    classes = list(pd.read_csv(data / "sample_submission.csv", nrows=0).columns[1:])
    rounds = []
    for path in files:
        info = json.loads(path.read_text())
        row = {"file": path.stem, "lower": info["lower"], "n_pseudo": info["n_pseudo"],
               "n_unlabelled": info["n_unlabelled"], "exact": None, "top1_true": None}
        npz = preds / f"{path.stem}.npz"
        if npz is not None and npz.is_file() and info["n_pseudo"]:
            got = np.load(npz)
            exact = top1 = 0
            for cid, target in zip(got["ids"], got["probs"]):
                true = set(truth[str(cid)])
                labels = {classes[j] for j in np.flatnonzero(target > 0.5)}
                exact += labels == true
                top1 += bool(labels & true)
            row["exact"] = exact / len(got["ids"])
            row["top1_true"] = top1 / len(got["ids"])
        rounds.append(row)
    return {"rounds": rounds, "n_pseudo_mean": float(np.mean([r["n_pseudo"] for r in rounds]))}


_NOISY_CACHE: dict = {}


def _noisy_labels(data: Path):
    """clip_id -> given labels, clip_id -> true labels (truth: reporting only)."""
    if data not in _NOISY_CACHE:
        def read(name):
            t = pd.read_csv(data / name, dtype=str, keep_default_na=False)
            return {f"noisy/{f}": tuple(x.strip() for x in labs.split(",") if x.strip())
                    for f, labs in zip(t["fname"], t["labels"])}
        _NOISY_CACHE[data] = (read("train_noisy.csv"), read("train_noisy_truth.csv"))
    return _NOISY_CACHE[data]


# ----------------------------------------------------------------------------- paired bootstrap
def _aligned(outputs: Path, which: str, data: Path):
    """(clip ids, probs) of a run's final OOF (per clip) or test (mean over folds) predictions."""
    df = pd.read_parquet(outputs / f"{which}.parquet")
    classes = [c for c in df.columns if c not in ("clip_id", "fold", "run", "stage")]
    if which == "test":
        df = df.groupby("clip_id", sort=True)[classes].mean()
    else:
        df = df.set_index("clip_id").sort_index()[classes]
    return df


def _truth(outputs: Path, which: str, data: Path, index, classes) -> np.ndarray:
    from raytag.data.labels import labels_to_matrix, parse_label_field

    if which == "oof":
        t = pd.read_csv(outputs / "oof_truth.csv", keep_default_na=False).set_index("clip_id")
        labs = [parse_label_field(t.loc[c, "labels"]) for c in index]
    else:
        t = pd.read_csv(data / "test_labels.csv", dtype=str, keep_default_na=False)
        t = dict(zip("test/" + t["fname"], t["labels"]))
        labs = [parse_label_field(t[c]) for c in index]
    return labels_to_matrix(labs, classes)


def paired_bootstrap(run_a: Path, run_b: Path, which: str, data: Path, n_boot: int = 500, seed: int = 0) -> dict:
    """lwlrap(b) - lwlrap(a) on the clips both runs predicted, with a 90% interval
    (raytag.metrics.paired_bootstrap_lwlrap)."""
    from raytag.metrics import paired_bootstrap_lwlrap

    a = _aligned(run_a / "outputs", which, data)
    b = _aligned(run_b / "outputs", which, data)
    common = a.index.intersection(b.index)
    a, b = a.loc[common], b.loc[common]
    y = _truth(run_a / "outputs", which, data, common, list(a.columns))
    got = paired_bootstrap_lwlrap(y, a.to_numpy(), b.to_numpy(), n_boot=n_boot, seed=seed)
    return {k: got[k] for k in ("diff", "ci90", "p_better")}


# ----------------------------------------------------------------------------- reporting
COLUMNS = ["variant", "CV lwlrap", "test lwlrap", "filter prec", "recall", "accepted", "pseudo/round", "min"]


def table_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for r in results:
        f, p = r.get("filter") or {}, r.get("pseudo") or {}
        fmt = lambda v, spec: "" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)
        rows.append([r["variant"], fmt(r["cv_lwlrap"], ".4f"), fmt(r["test_lwlrap"], ".4f"),
                     fmt(f.get("precision"), ".3f"), fmt(f.get("recall"), ".3f"),
                     fmt(f.get("n_accepted"), ".0f"), fmt(p.get("n_pseudo_mean"), ".0f"),
                     fmt(r["minutes"], ".1f")])
    return rows


def print_table(results: list[dict]):
    rows = table_rows(results)
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in rows)) for i in range(len(COLUMNS))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(COLUMNS))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))


def markdown(report: dict) -> str:
    rows = table_rows(report["table"])
    md = ["# Noisy-label pipeline on the ESC-50 FAT2019-layout benchmark (issue 4)", "",
          f"Command: `{report['command']}`  ",
          f"Machine: {report['machine']}; {report['total_minutes']:.1f} min of runs in all (load average 10-70 "
          "from other jobs on the 2 cores while they ran).  ",
          f"Model and budget (fixed): {report['budget']}.  ",
          "CV lwlrap: out-of-fold predictions of each fold's final model on its held-out curated clips. "
          "Test lwlrap: mean of the fold models on the 512 test clips, reported only. Filter precision/recall "
          "(against train_noisy_truth.csv, reporting only) are means over folds; accepted and pseudo counts are "
          "per fold.", "",
          "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "## Settings chosen by CV (never by test labels)", ""]
    for name, choice in report["choices"].items():
        md.append(f"- **{name}**: chose `{choice['chosen']}`. Candidates (CV / test, test shown only for the record):")
        for c in choice["candidates"]:
            f = c.get("filter") or {}
            md.append(f"  - `{c['setting']}`: CV {c['cv_lwlrap']:.4f}, test {c['test_lwlrap']:.4f}, "
                      f"precision {f.get('precision', float('nan')):.3f}, recall {f.get('recall', float('nan')):.3f}, "
                      f"accepted {f.get('n_accepted', float('nan')):.0f}")
    base = next((r["filter"]["base_precision"] for r in report["table"] if r.get("filter")), None)
    if base is not None:
        md += ["", f"Precision of accepting every noisy clip (the share whose given labels are right): {base:.3f}."]
    md += ["", "## Stages inside each run (CV / test lwlrap of the model after each stage)", ""]
    for r in report["table"]:
        cells = [f"{s['stage']} {s['cv_lwlrap']:.3f} / {s['test_lwlrap']:.3f}" for s in r["stages"]]
        md.append(f"- {r['variant']}: " + "; ".join(cells))
    md += ["", "## Each step against the one before (paired bootstrap over clips, 90% interval)", ""]
    for d in report["deltas"]:
        md.append(f"- {d['step']}: CV {d['cv']['diff']:+.4f} [{d['cv']['ci90'][0]:+.4f}, {d['cv']['ci90'][1]:+.4f}], "
                  f"test {d['test']['diff']:+.4f} [{d['test']['ci90'][0]:+.4f}, {d['test']['ci90'][1]:+.4f}]")
    return "\n".join(md) + "\n"


def write_md(text: str):
    notes = ""
    if OUT_MD.is_file() and NOTES_MARKER in OUT_MD.read_text():
        notes = OUT_MD.read_text().split(NOTES_MARKER, 1)[1]
    OUT_MD.write_text(text + "\n" + NOTES_MARKER + notes)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/escfat"), help="50-class benchmark (built if missing)")
    ap.add_argument("--storage", type=Path, default=Path("/tmp/raytag_bench_pipeline"))
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "bench_pipeline.yaml")
    ap.add_argument("--control", action="store_true", help="also run the stage-2 control (no clip accepted)")
    ap.add_argument("--extra", action="store_true",
                    help="also run the face-value baseline followed by filter, spreading and pseudo rounds")
    ap.add_argument("--only", nargs="*", help="run only these variants (no choices, no JSON)")
    ap.add_argument("--fresh", action="store_true", help="delete finished runs under --storage first")
    args = ap.parse_args(argv)

    import ray
    import torch

    from raytag.config import Config

    torch.set_num_threads(1)
    data = make_bench_data(args.data.resolve())
    storage = args.storage.resolve()
    if args.fresh and (storage / "runs").exists():
        shutil.rmtree(storage / "runs")
    runs, features = storage / "runs", storage / "features"
    runs.mkdir(parents=True, exist_ok=True)
    base = Config.from_yaml(args.config)
    # our own local Ray instance (never another agent's cluster); fit_pipeline reuses it
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, object_store_memory=256 * 1024**2)
    started = time.time()
    run = lambda label, ov: run_variant(base, label, ov, data, runs, features)

    if args.only:
        everything = {**{k: v for k, _, v in BASELINES},
                      "plus_filter": {**FILTER_ON, **FILTER_CANDIDATES[0]}, "control_stage2": CONTROL}
        results = [run(k, everything[k]) for k in args.only]
        print_table(results)
        return

    results = [run(label, ov) for label, _, ov in BASELINES]

    # the filter: each candidate as its own +filter run, chosen by CV of the stage-2 model
    cands = [(c, run(f"plus_filter_{c['pipeline.filter.rule']}{c['pipeline.filter.threshold']:g}",
                     {**FILTER_ON, **c})) for c in FILTER_CANDIDATES]
    best_filter, filt = max(cands, key=lambda t: t[1]["cv_lwlrap"])
    choices = {"filter": _choice(cands, best_filter)}
    results.append({**filt, "variant": "plus_filter"})

    # label spreading with the chosen filter, joined by "and" or "or", chosen by CV
    spread_on = {**FILTER_ON, **best_filter, "pipeline.label_spreading.enabled": True}
    cands = [(c, run(f"plus_spreading_{c['pipeline.label_spreading.combine']}", {**spread_on, **c}))
             for c in SPREAD_CANDIDATES]
    best_spread, spread = max(cands, key=lambda t: t[1]["cv_lwlrap"])
    choices["label_spreading"] = _choice(cands, best_spread)
    results.append({**spread, "variant": "plus_spreading"})

    # the semi-supervised rounds on top of both chosen settings
    pseudo = run("plus_pseudo", {**spread_on, **best_spread, "pipeline.pseudo.enabled": True})
    results.append(pseudo)
    if args.control:
        results.append(run("control_stage2", CONTROL))
    if args.extra:  # the face-value baseline as stage 1, then the rest of the pipeline as chosen
        results.append(run("face_value_then_stage2", {**spread_on, **best_spread, "pipeline.warmup.enabled": False,
                                                      "pipeline.finetune.noisy": "all",
                                                      "pipeline.pseudo.enabled": True}))

    by = {r["variant"]: Path(r["run"]) for r in results}
    steps = [("curated_only", "curated_plus_noisy"), ("curated_only", "warmup_curated"),
             ("curated_plus_noisy", "warmup_curated"), ("warmup_curated", "plus_filter"),
             ("plus_filter", "plus_spreading"), ("plus_spreading", "plus_pseudo"),
             ("curated_plus_noisy", "plus_pseudo")]
    if args.control:
        steps += [("warmup_curated", "control_stage2"), ("control_stage2", "plus_filter")]
    if args.extra:
        steps += [("curated_plus_noisy", "face_value_then_stage2")]
    deltas = [{"step": f"{a} -> {b}", "cv": paired_bootstrap(by[a], by[b], "oof", data),
               "test": paired_bootstrap(by[a], by[b], "test", data)} for a, b in steps]

    print()
    print_table(results)
    print()
    for d in deltas:
        print(f"{d['step']:<40} CV {d['cv']['diff']:+.4f} {d['cv']['ci90']}  test {d['test']['diff']:+.4f} {d['test']['ci90']}")
    for name, c in choices.items():
        print(f"chosen by CV: {name} = {c['chosen']}")

    cfg = base
    report = {
        "benchmark": "noisy-label pipeline stages (issue 4)",
        "command": "python benchmarks/bench_pipeline.py" + (" --control" if args.control else "")
                   + (" --extra" if args.extra else ""),
        "data": str(data),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
                   f"torch {torch.__version__}, ray {ray.__version__}, 1 Ray Train worker, 1 torch thread",
        "budget": (f"{cfg.model.name} width {cfg.model.width} depth {cfg.model.depth}, {cfg.features.n_mels} mels, "
                   f"{cfg.train.crop_seconds:g} s crops, {cfg.cv.n_folds} folds (trained: {cfg.cv.folds}), "
                   f"warm-up {cfg.pipeline.warmup.epochs} ep on the rough subset, fine-tune "
                   f"{cfg.pipeline.finetune.epochs} ep, stage 2 {cfg.pipeline.pseudo.epochs} ep per round "
                   f"({cfg.pipeline.pseudo.rounds} rounds with pseudo labels, else 1), lr {cfg.train.lr:g}, seed {cfg.seed}"),
        "config": cfg.to_dict(),
        # every run's own minutes (runs reused from an earlier invocation keep their time)
        "total_minutes": round(sum(r["minutes"] for r in _all_runs(results, choices)), 1),
        "this_invocation_minutes": round((time.time() - started) / 60.0, 1),
        "table": results,
        "choices": choices,
        "deltas": deltas,
        "floors_from_data_readme": {"logreg_curated": 0.434, "logreg_curated_noisy": 0.451,
                                    "cnn_curated_30ep": 0.582, "cnn_curated_all_noisy_30ep": 0.652},
    }
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(report, indent=2, default=_jsonable))
    write_md(markdown(report))
    print(f"\nwrote {OUT_JSON} and {OUT_MD} ({report['total_minutes']:.1f} min)")


def _all_runs(results, choices) -> list[dict]:
    """Every distinct run behind the table, the CV candidates not chosen included."""
    runs = {r["run"]: r for r in results}
    for choice in choices.values():
        for c in choice["candidates"]:
            runs.setdefault(c["run"], c)
    return list(runs.values())


def _choice(cands, best) -> dict:
    fmt = lambda c: ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in c.items())
    return {"chosen": fmt(best), "by": "highest CV lwlrap of the final (stage-2) model",
            "candidates": [{"setting": fmt(c), "variant": r["variant"], "run": r["run"], "minutes": r["minutes"],
                            "cv_lwlrap": r["cv_lwlrap"],
                            "test_lwlrap": r["test_lwlrap"], "filter": {k: v for k, v in (r.get("filter") or {}).items()
                                                                       if k != "folds"}}
                           for c, r in cands]}


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON: {type(v)}")


if __name__ == "__main__":
    main()
