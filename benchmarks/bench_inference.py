"""Inference settings re-scored on finished `raytag train` runs, without retraining.

For each run, every fold's saved model (outputs/weights/fold{k}.safetensors) predicts its
held-out curated clips (the run's own folds, rebuilt by `build_plan` from its config.yaml and
checked against oof.parquet) and the test clips, from the run's own feature store, under each
inference setting of a grid (segment_seconds, overlap, reduce, tta: configs/default.yaml's
`inference:` block). CV lwlrap is scored on the out-of-fold clips, test lwlrap on the mean of
the fold models against the dataset's test truth, as the run's outputs are. Every setting is
paired clip by clip with the run's own setting (raytag.metrics.paired_bootstrap_lwlrap: 1000
resamples, 90% interval), so a setting is chosen on CV and test only confirms.

The run's own setting is scored first and must give the run's metrics.json (cv_lwlrap,
test_lwlrap) to 1e-3; the script says loudly when it does not, with how far the probabilities
are from the run's oof.parquet / test.parquet.

    python benchmarks/bench_inference.py --data /work/bench/escfat --run RUN [RUN ...]
    python benchmarks/bench_inference.py --data DIR --run RUN --settings own overlap0.75 "overlap=0.6,reduce=max"

A setting is a grid name (--list shows them) or "key=value,..." with keys segment_seconds,
overlap, reduce, tta (the rest stay the run's own). Appends a section per run to
results/benchmarks/inference.md and inference.json (with the date and /proc/loadavg).
CPU-heavy: run it alone (`flock /tmp/raytag-heavy.lock python benchmarks/bench_inference.py ...`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from raytag.cluster import materialize_data
from raytag.config import Config
from raytag.data.layouts import load_dataset
from raytag.data.truth import truth_frame
from raytag.errors import RaytagError
from raytag.features.store import FeatureStore, build_feature_store, default_feature_cache, store_dir
from raytag.metrics import lwlrap, paired_bootstrap_lwlrap
from raytag.models import build_model
from raytag.training.inference import iter_store_clips, predict_segments
from raytag.training.outputs import (CONFIG, METRICS, OOF_PREDICTIONS, OUTPUTS_DIR, TEST_PREDICTIONS, WEIGHTS,
                                     read_model_card, read_predictions)
from raytag.training.plan import build_plan

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "results" / "benchmarks" / "inference.json"
OUT_MD = REPO / "results" / "benchmarks" / "inference.md"
TOLERANCE = 1e-3  # own setting's lwlrap vs metrics.json
PROB_TOLERANCE = 1e-4  # own setting's probabilities vs oof.parquet / test.parquet
KEYS = ("segment_seconds", "overlap", "reduce", "tta")  # InferenceConfig's fields

# Each entry: overrides of the run's own inference settings ("own" = none).
GRID: dict[str, dict] = {
    "own": {},
    "overlap0.75": {"overlap": 0.75},
    "seg5.0": {"segment_seconds": 5.0},
    "seg3.84": {"segment_seconds": 3.84},
    "max": {"reduce": "max"},
    "tta2": {"tta": 2},
    "seg3.84+overlap0.75": {"segment_seconds": 3.84, "overlap": 0.75},
    "seg5.0+overlap0.75": {"segment_seconds": 5.0, "overlap": 0.75},
    "max+overlap0.75": {"reduce": "max", "overlap": 0.75},
    "tta2+overlap0.75": {"tta": 2, "overlap": 0.75},
}


def parse_setting(text: str) -> tuple[str, dict]:
    """A grid name, or "key=value,key=value" (keys of KEYS) -> (name, overrides)."""
    if text in GRID:
        return text, dict(GRID[text])
    if "=" not in text:
        raise SystemExit(f"--settings: unknown setting {text!r}; grid names: {', '.join(GRID)}, "
                         f"or key=value pairs with keys {', '.join(KEYS)}")
    overrides = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in KEYS:
            raise SystemExit(f"--settings {text!r}: unknown key {key!r}; keys: {', '.join(KEYS)}")
        value = value.strip()
        overrides[key] = (value if key == "reduce" else int(value) if key == "tta"
                          else None if value.lower() in ("none", "null") else float(value))
    # Config checks reduce and overlap; these two it takes as given
    seconds = overrides.get("segment_seconds")
    if overrides.get("tta", 0) < 0 or (seconds is not None and seconds <= 0):
        raise SystemExit(f"--settings {text!r}: tta must be >= 0 and segment_seconds > 0")
    return text, overrides


@dataclass
class RunData:
    """What re-scoring a run needs: its config, fold models, clips, folds and truth."""

    run: Path
    cfg: Config
    card: dict
    models: dict[int, torch.nn.Module]
    store: FeatureStore
    classes: list[str]
    curated_ids: list[str]
    curated_y: np.ndarray
    curated_fold: np.ndarray
    test_ids: list[str]
    test_truth: pd.DataFrame | None  # multi-hot, index clip_id
    metrics: dict
    store_note: str = ""
    features: dict = field(default_factory=dict)  # clip_id -> (C, F, T) float32, read once


def open_store(cfg: Config, dataset, feature_cache: str) -> tuple[FeatureStore, str]:
    """The run's feature store: opened read-only when complete (a build would rewrite its
    meta.json under any training that reads it); built only when it is missing."""
    path = store_dir(feature_cache, cfg.features, dataset.root)
    if (path / "meta.json").is_file():
        return FeatureStore.open(path), f"{path} (reused)"
    print(f"no feature store at {path}: building it (the run's store may sit under another "
          f"--feature-cache / RAYTAG_CACHE)", flush=True)
    return build_feature_store(dataset, cfg.features, feature_cache, progress=True), f"{path} (built now)"


def load_run(run: Path, data: Path, feature_cache: str) -> RunData:
    outputs = run / OUTPUTS_DIR
    card = read_model_card(str(outputs))
    cfg = Config.from_yaml(outputs / CONFIG)
    dataset = load_dataset(materialize_data(str(data)), sample_rate=cfg.features.sample_rate, features=cfg.features)
    store, note = open_store(cfg, dataset, feature_cache)
    plan = build_plan(cfg, dataset, store)  # the run's folds: same labels, n_folds, seed
    if list(plan.classes) != list(card["classes"]):
        raise RaytagError(f"{data}: its classes differ from {outputs}/model.json; give the dataset the run trained on")
    for key in ("norm_mean", "norm_std"):  # the same store statistics as the run's
        if not np.allclose(getattr(plan, key), np.asarray(card[key], np.float32), atol=1e-5):
            print(f"WARNING: {key} of the store at {note} differs from {outputs}/model.json: the features "
                  "are not the ones the run trained on; the model card's values are used", flush=True)
    check_folds(outputs, plan)
    models = {}
    for fold in saved_model_folds(card):
        models[fold] = load_fold_model(outputs, card, cfg, fold)
    truth = dataset.truth_for("test")
    metrics = json.loads((outputs / METRICS).read_text())
    return RunData(run=run, cfg=cfg, card=card, models=models, store=store, classes=list(plan.classes),
                   curated_ids=list(plan.curated_ids), curated_y=plan.curated_y, curated_fold=plan.curated_fold,
                   test_ids=list(plan.test_ids),
                   test_truth=truth_frame(truth, plan.classes) if truth is not None and len(truth) else None,
                   metrics=metrics, store_note=note)


def saved_model_folds(card: dict) -> list[int]:
    """The fold ids of the run's saved models: its CV folds and, with cv.refit, the model on every
    curated clip (which joins the test mean; leaving it out made a refit run "NOT REPRODUCED")."""
    refit = card.get("refit_fold")
    return [int(f) for f in card["folds"]] + ([int(refit)] if refit is not None else [])


def check_folds(outputs: Path, plan) -> None:
    """The rebuilt folds must be the run's: every OOF clip of oof.parquet in the same fold."""
    oof, _ = read_predictions(str(outputs / OOF_PREDICTIONS))
    fold_of = dict(zip(plan.curated_ids, plan.curated_fold))
    wrong = [(c, f) for c, f in zip(oof["clip_id"], oof["fold"]) if fold_of.get(c) != f]
    if wrong:
        raise RaytagError(f"{outputs}/{OOF_PREDICTIONS}: {len(wrong)} clips sit in another fold than the folds "
                          f"rebuilt from config.yaml (e.g. {wrong[0]}); is --data the dataset the run trained on?")


def load_fold_model(outputs: Path, card: dict, cfg: Config, fold: int) -> torch.nn.Module:
    """Fold `fold`'s final model, from the run's weights (safetensors: no code is loaded)."""
    path = outputs / WEIGHTS / f"fold{fold}.safetensors"
    if not path.is_file():
        path = outputs.parent / "run_files" / WEIGHTS / f"fold{fold}.safetensors"
    model = build_model(cfg.model, len(card["classes"]), int(card["channels"]), int(card["bins"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def resolve(cfg: Config, overrides: dict) -> tuple[Config, int]:
    """The run's config with the setting's inference overrides (validated by Config), and
    the segment length in frames it gives (None seconds: the crop length, as in training)."""
    new = cfg.with_overrides({f"inference.{k}": v for k, v in overrides.items()})
    return new, new.segment_frames()


def clips_of(rd: RunData, ids: list[str]):
    return (rd.features[c] for c in ids) if rd.features else iter_store_clips(rd.store, ids)


def score_setting(rd: RunData, overrides: dict, batch_size: int) -> dict:
    """OOF and fold-mean test predictions of one setting, and their lwlrap."""
    cfg, seg_frames = resolve(rd.cfg, overrides)
    inf = cfg.inference
    mean = np.asarray(rd.card["norm_mean"], np.float32)
    std = np.asarray(rd.card["norm_std"], np.float32)
    kwargs = dict(segment_frames=seg_frames, overlap=inf.overlap, reduce=inf.reduce, tta=inf.tta,
                  batch_size=batch_size, mean=mean, std=std)
    started = time.perf_counter()
    oof_ids, oof_parts, test_parts = [], [], []
    with torch.inference_mode():
        for fold, model in rd.models.items():
            if fold != rd.card.get("refit_fold"):  # the refit model holds no clip out
                held = [c for c, f in zip(rd.curated_ids, rd.curated_fold) if f == fold]
                oof_ids += held
                oof_parts.append(predict_segments(model, clips_of(rd, held), **kwargs))
            if rd.test_ids:
                test_parts.append(predict_segments(model, clips_of(rd, rd.test_ids), **kwargs))
    seconds = time.perf_counter() - started
    row = {c: i for i, c in enumerate(rd.curated_ids)}
    oof = np.concatenate(oof_parts)
    y_cv = rd.curated_y[[row[c] for c in oof_ids]]
    out = {"segment_seconds": inf.segment_seconds, "segment_frames": seg_frames, "overlap": inf.overlap,
           "reduce": inf.reduce, "tta": inf.tta, "seconds": round(seconds, 1),
           "oof_ids": oof_ids, "oof": oof, "y_cv": y_cv, "cv_lwlrap": float(lwlrap(y_cv, oof)),
           "test_per_fold": test_parts, "test_lwlrap": None}
    if test_parts and rd.test_truth is not None:
        test = pd.DataFrame(np.mean(test_parts, axis=0), index=rd.test_ids, columns=rd.classes)
        common = test.index.intersection(rd.test_truth.index)  # as outputs._score_against
        out["test_ids"] = list(common)
        out["test"] = test.loc[common].to_numpy()
        out["y_test"] = rd.test_truth.loc[common].to_numpy()
        out["test_lwlrap"] = float(lwlrap(out["y_test"], out["test"]))
    return out


def reproduction(rd: RunData, own: dict) -> dict:
    """The own setting against the run's metrics.json and its saved predictions."""
    outputs = rd.run / OUTPUTS_DIR
    saved_oof, _ = read_predictions(str(outputs / OOF_PREDICTIONS))
    saved_oof = saved_oof.set_index("clip_id").loc[own["oof_ids"], rd.classes].to_numpy()
    rep = {"cv_run": rd.metrics.get("cv_lwlrap"), "cv_here": own["cv_lwlrap"],
           "test_run": rd.metrics.get("test_lwlrap"), "test_here": own["test_lwlrap"],
           "oof_max_abs_diff": float(np.abs(saved_oof - own["oof"]).max())}
    if own["test_per_fold"]:
        saved_test, _ = read_predictions(str(outputs / TEST_PREDICTIONS))
        diffs = []
        for fold, probs in zip(rd.models, own["test_per_fold"]):
            part = saved_test[saved_test["fold"] == fold].set_index("clip_id").loc[rd.test_ids, rd.classes]
            diffs.append(float(np.abs(part.to_numpy() - probs).max()))
        rep["test_max_abs_diff"] = max(diffs)
    gaps = [abs(a - b) for a, b in ((rep["cv_run"], rep["cv_here"]), (rep["test_run"], rep["test_here"]))
            if a is not None and b is not None]
    rep["metrics_match"] = all(g <= TOLERANCE for g in gaps)
    # the same store and weights give the same probabilities (to float rounding of batching)
    rep["probabilities_match"] = max(rep["oof_max_abs_diff"], rep.get("test_max_abs_diff", 0.0)) <= PROB_TOLERANCE
    rep["ok"] = rep["metrics_match"] and rep["probabilities_match"]
    return rep


def _f(x, spec=".4f") -> str:
    return "none" if x is None else format(x, spec)


def explain(rep: dict, rd: RunData) -> str:
    if rep["ok"]:
        return (f"own setting reproduces metrics.json: CV {_f(rep['cv_here'])} (run {_f(rep['cv_run'])}), "
                f"test {_f(rep['test_here'])} (run {_f(rep['test_run'])}); probabilities within "
                f"{rep['oof_max_abs_diff']:.1e} (OOF), {rep.get('test_max_abs_diff', float('nan')):.1e} (test) "
                f"of the run's oof/test.parquet")
    what = "metrics.json" if not rep["metrics_match"] else "the saved probabilities (metrics.json within 1e-3)"
    return (f"!!! OWN SETTING DOES NOT REPRODUCE {what} !!!\n"
            f"    CV {_f(rep['cv_here'])} here vs {_f(rep['cv_run'])} in the run, test {_f(rep['test_here'])} "
            f"vs {_f(rep['test_run'])}; "
            f"largest probability difference {rep['oof_max_abs_diff']:.3g} (OOF), "
            f"{rep.get('test_max_abs_diff', float('nan')):.3g} (test).\n"
            f"    The run predicted from its float16 feature store with the same predict_segments; a gap here "
            f"means other inputs: the store used now ({rd.store_note}) is not the run's (another cache, "
            "rebuilt features), or the weights are not the ones that made oof.parquet.")


def pair(y, a, b) -> dict:
    return paired_bootstrap_lwlrap(y, a, b)


def bench_run(run: Path, data: Path, settings: list[tuple[str, dict]], feature_cache: str,
              batch_size: int) -> dict:
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    started = time.perf_counter()
    rd = load_run(run, data, feature_cache)
    rd.features = {c: rd.store.get(c) for c in rd.curated_ids + rd.test_ids}
    print(f"{run}: {len(rd.models)} fold models, {len(rd.curated_ids)} curated and {len(rd.test_ids)} test "
          f"clips; store {rd.store_note}", flush=True)
    own = score_setting(rd, {}, batch_size)
    rep = reproduction(rd, own)
    print(explain(rep, rd), flush=True)
    rows = []
    for name, overrides in settings:
        res = own if not overrides else score_setting(rd, overrides, batch_size)
        row = {k: res[k] for k in ("segment_seconds", "segment_frames", "overlap", "reduce", "tta",
                                   "cv_lwlrap", "test_lwlrap", "seconds")}
        row["setting"] = name
        if overrides:
            row["cv_pair"] = pair(res["y_cv"], own["oof"], res["oof"])
            if res["test_lwlrap"] is not None:
                row["test_pair"] = pair(res["y_test"], own["test"], res["test"])
        rows.append(row)
        print(f"  {name:24s} CV {row['cv_lwlrap']:.4f}  test {_f(row['test_lwlrap'])}  "
              f"{row['seconds']:.0f} s", flush=True)
    return {"run": str(run), "data": str(data), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg_before": " ".join(load_before),
            "loadavg_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "torch_threads": torch.get_num_threads(), "batch_size": batch_size,
            "model": f"{rd.cfg.model.name} w{rd.cfg.model.width}", "store": rd.store_note,
            "n_oof": len(own["oof_ids"]), "n_test": len(own.get("test_ids", [])),
            "reproduction": rep, "rows": rows, "seconds": round(time.perf_counter() - started, 1)}


def _interval(p: dict | None) -> str:
    if not p:
        return ""
    return f"{p['diff']:+.4f} [{p['ci90'][0]:+.4f}, {p['ci90'][1]:+.4f}]"


def _seg(row: dict) -> str:
    secs = row["segment_seconds"]
    return f"{secs if secs is not None else 'crop'} ({row['segment_frames']})"


def markdown(section: dict) -> str:
    rep = section["reproduction"]
    lines = [f"## {section['run']} ({section['model']})", "",
             f"{section['date']}; load average {section['loadavg_before']} (before) / "
             f"{section['loadavg_after']} (after); torch threads {section['torch_threads']}; "
             f"{section['n_oof']} OOF clips, {section['n_test']} test clips; store {section['store']}.", "",
             f"Own setting vs metrics.json: CV {_f(rep['cv_here'])} (run {_f(rep['cv_run'])}), test "
             f"{_f(rep['test_here'])} (run {_f(rep['test_run'])}); max |p - saved| OOF {rep['oof_max_abs_diff']:.1e}, "
             f"test {rep.get('test_max_abs_diff', float('nan')):.1e}: {'reproduced' if rep['ok'] else 'NOT REPRODUCED'}.",
             "",
             "| setting | segment s (frames) | overlap | reduce | tta | CV lwlrap | test lwlrap | "
             "CV - own [90%] | test - own [90%] | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in section["rows"]:
        test = f"{r['test_lwlrap']:.4f}" if r["test_lwlrap"] is not None else ""
        lines.append(f"| {r['setting']} | {_seg(r)} | {r['overlap']} | {r['reduce']} | {r['tta']} | "
                     f"{r['cv_lwlrap']:.4f} | {test} | {_interval(r.get('cv_pair'))} | "
                     f"{_interval(r.get('test_pair'))} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def print_table(section: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{section['run']} ({section['model']}), load {section['loadavg_before']}")
    for col in ("setting", "segment s (frames)", "overlap", "reduce", "tta", "CV lwlrap", "test lwlrap",
                "CV - own [90%]", "test - own [90%]", "s"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for r in section["rows"]:
        table.add_row(r["setting"], _seg(r), str(r["overlap"]), r["reduce"], str(r["tta"]),
                      f"{r['cv_lwlrap']:.4f}", "" if r["test_lwlrap"] is None else f"{r['test_lwlrap']:.4f}",
                      _interval(r.get("cv_pair")), _interval(r.get("test_pair")), f"{r['seconds']:.0f}")
    Console(width=170).print(table)  # whole numbers also in a log file (no terminal: 80 columns)


def append_results(section: dict, out_json: Path, out_md: Path) -> None:
    out_json.parent.mkdir(parents=True, exist_ok=True)
    sections = json.loads(out_json.read_text()) if out_json.exists() else []
    sections.append(section)
    out_json.write_text(json.dumps(sections, indent=1, default=float) + "\n")
    if not out_md.exists():
        out_md.write_text("# Inference settings on finished runs (benchmarks/bench_inference.py)\n\n"
                          "Each run's saved fold models re-scored, no retraining: CV on the out-of-fold curated "
                          "clips, test on the mean of the fold models. Differences are setting minus the run's own "
                          "setting, paired over clips (1000 bootstrap resamples, 90% interval).\n\n")
    with out_md.open("a") as fh:
        fh.write(markdown(section) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, nargs="+", help="finished `raytag train` run folders (with outputs/)")
    ap.add_argument("--data", type=Path, help="the dataset the runs trained on (with test_labels.csv for test)")
    ap.add_argument("--settings", nargs="+", default=list(GRID), help="grid names or key=value,... (default: the grid)")
    ap.add_argument("--feature-cache", default=None, help="feature cache folder (default: RAYTAG_CACHE or ~/.cache)")
    ap.add_argument("--batch-size", type=int, default=64, help="segments per forward pass (training's default)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", type=Path, default=OUT_JSON.with_suffix(""),
                    help="results path without suffix (.json and .md are appended to)")
    ap.add_argument("--list", action="store_true", help="print the grid and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, overrides in GRID.items():
            print(f"{name:24s} {overrides or '(the run own settings)'}")
        return []
    if not args.run or not args.data:
        ap.error("--run and --data are required")
    torch.set_num_threads(args.threads)
    settings = [parse_setting(s) for s in args.settings]
    if not any(not overrides for _, overrides in settings):  # the baseline row is always shown
        settings.insert(0, ("own", {}))
    cache = args.feature_cache or default_feature_cache()
    sections = []
    for run in args.run:
        if not (run / OUTPUTS_DIR / METRICS).is_file():
            raise SystemExit(f"{run}: no {OUTPUTS_DIR}/{METRICS}; give a finished `raytag train` run folder")
        for name, overrides in settings:  # a bad value fails before any model runs
            resolve(Config.from_yaml(run / OUTPUTS_DIR / CONFIG), overrides)
        section = bench_run(run, args.data, settings, cache, args.batch_size)
        print_table(section)
        append_results(section, args.out.with_suffix(".json"), args.out.with_suffix(".md"))
        sections.append(section)
    return sections


if __name__ == "__main__":
    try:
        main()
    except RaytagError as err:
        sys.exit(f"error: {err}")
