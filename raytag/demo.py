"""`raytag demo`: every layer on the built-in synthetic data, on this machine.

demo data -> features (cached) -> a small Ray Tune + Optuna sweep of the multi-stage
pipeline (search_spaces/demo.yaml) -> ensemble of the best trials -> pull the
artifact -> tag a demo clip with it. A second run reuses the data, the features and
the finished trials (the sweep resumes), so it only re-does the cheap steps."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

import raytag
from raytag.console.tables import stage_table
from raytag.data.demo import make_demo_dataset
from raytag.ensemble.artifact import load_artifact
from raytag.ensemble.job import build_ensemble
from raytag.ensemble.pull import pull
from raytag.ensemble.tagging import predict_files
from raytag.errors import RaytagError
from raytag.search.space import load_space
from raytag.search.tuner import run_sweep
from raytag.storage import local_folder_option
from raytag.training.outputs import SKIPPED, read_stages
from raytag.training.runner import prepare_data

console = Console()


def demo_space() -> Path:
    """search_spaces/demo.yaml of the checkout raytag runs from (README: `pip install -e .`)."""
    path = Path(raytag.__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"
    if not path.is_file():
        raise RaytagError(
            f"{path} not found: run the demo from a checkout of raytag installed with `pip install -e .`"
        )
    return path


def run_demo(out: str | Path = "results", tiny: bool = False, samples: Optional[int] = None) -> dict:
    started = time.time()
    check_samples(samples)
    out = demo_folder(out)
    name = "demo-tiny" if tiny else "demo"
    console.rule(f"[bold]raytag demo[/] (results under {out})")

    console.print("[bold]1/5[/] demo dataset (14 synthetic sound-event classes, 2019 layout)")
    data = make_demo_dataset(out / ("demo_data_tiny" if tiny else "demo_data"), seed=0, scale=0.25 if tiny else 1.0)
    console.print(f"    {data}")

    console.print("[bold]2/5[/] features (parallel processes; cached), then a sweep of the multi-stage pipeline")
    space = _tiny_space(out) if tiny else demo_space()
    _prepare_features(space, data, out / "features")
    sweep = run_sweep(space, data, storage=str(out), name=name,
                      samples=samples if samples is not None else (2 if tiny else None),
                      resume=True, start_if_nothing_to_resume=True, feature_cache=str(out / "features"))
    best = sweep.best
    if best is None:
        raise RaytagError(f"every trial of the demo sweep failed: see {sweep.experiment_dir}/leaderboard.csv")

    console.print("[bold]3/5[/] ensemble of the best trials (weights fitted on out-of-fold lwlrap)")
    ens = build_ensemble(sweep.experiment_dir, top=5)

    console.print("[bold]4/5[/] pull the artifact (checksums verified)")
    pulled = pull(name, str(out), out / f"{name}-pulled")

    console.print("[bold]5/5[/] tag a demo test clip with the pulled artifact")
    clip = sorted((data / "test").glob("*.wav"))[0]
    probs, failures = predict_files(load_artifact(pulled.artifact), [clip])
    top3 = probs.iloc[0].sort_values(ascending=False).head(3)

    summary = _summary(sweep, ens, best, clip, top3, time.time() - started, out, data)
    return summary


def demo_folder(out: str | Path) -> Path:
    """--out as an absolute path ("~" expanded, a file:// URI its path), as the other folder
    options read it. An empty one (an unset shell variable) would mean the current folder,
    filled with the demo's data, features and sweep beside the user's own files."""
    return local_folder_option(
        out, "--out", "give the folder for the demo's data and results (the default is results)",
        "the demo writes its data, features and sweep to a local folder; give a local path",
        RaytagError).resolve()


def check_samples(samples: Optional[int]) -> None:
    """--samples below 1 was refused by the sweep only after the demo data (about 1000 clips)
    and their features were made, and ignored on a rerun (the sweep keeps its first count)."""
    if samples is not None and samples < 1:
        raise RaytagError(f"--samples {samples}: give the number of trials of a new demo sweep, at least 1 "
                          "(or leave it out for search_spaces/demo.yaml's)")


# The tests' demo: the same steps on a smaller set with a much smaller budget.
_TINY_BASE = {
    "pipeline.warmup.epochs": 1,
    "pipeline.finetune.epochs": 2,
    "pipeline.pseudo.epochs": 1,
    "cv.folds": [0],
}


def _prepare_features(space_path: Path, data: Path, cache: Path):
    """Build the sweep's feature store once on the driver (with a progress bar), so the
    trials only open the cache. The demo space does not search front-end settings. Ray is
    not started yet, so the build forks its worker processes (raytag.features.store)."""
    prepare_data(load_space(space_path).base_config(), data, str(cache), progress=True)


def _tiny_space(out: Path) -> Path:
    """demo.yaml with a much smaller budget, written beside the results."""
    doc = yaml.safe_load(demo_space().read_text())
    doc["name"] = "demo-tiny"
    doc["base"] = {**doc.get("base", {}), **_TINY_BASE}
    doc.setdefault("search", {})["grace_period"] = 1
    path = out / "demo-tiny.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _summary(sweep, ens, best, clip, top3, seconds, out, data) -> dict:
    console.rule("[bold]summary")
    stages = read_stages(best["outputs_dir"])
    console.print(stage_table(stages))

    table = Table(title="best single trial vs the ensemble (test labels only reported, never used)")
    for col in ("model", "CV lwlrap", "test lwlrap"):
        table.add_column(col, justify="left" if col == "model" else "right")
    t = ens.table
    single = t[t["kind"] == "single"].sort_values("cv_lwlrap", ascending=False).iloc[0]
    chosen = t[t["name"] == ens.chosen].iloc[0]
    n_members = len(ens.members)
    ensemble_label = f"ensemble of {n_members}: {ens.chosen}"
    for label, row in ((f"best single: {single['name']}", single), (ensemble_label, chosen)):
        table.add_row(label, f"{row['cv_lwlrap']:.4f}", _fmt(row.get("test_lwlrap")))
    console.print(table)
    if n_members == 1:  # ASHA stopped the others: the "ensemble" is that one trial
        console.print("(one trial finished its pipeline, the others were stopped early by the scheduler, "
                      "so the ensemble is that trial; a longer sweep gives it more: --samples N with a fresh --out)")

    console.print(f"tagged {clip.name}: " + ", ".join(f"{c} {p:.2f}" for c, p in top3.items()))
    skipped = Path(best["outputs_dir"]) / SKIPPED
    n_skipped = len(pd.read_csv(skipped)) if skipped.exists() else 0
    console.print(
        f"\ntime: {seconds:.0f} s   trials: {len(sweep.leaderboard)}   "
        f"skipped clips: {n_skipped} (listed in {skipped})\n"
        f"leaderboard: {sweep.experiment_dir}/leaderboard.csv   search plot: {sweep.plot_path}\n"
        f"ensemble table: {ens.table_path}   chart: {ens.chart_path}\n"
        f"artifact: {ens.artifact_path}\n"
        f"best trial outputs (predictions, weights, submission.csv, t-SNE): {best['outputs_dir']}"
    )
    summary = {
        "seconds": round(seconds, 1),
        "best_trial": best.get("trial_id"),
        "best_cv_lwlrap": float(single["cv_lwlrap"]),
        "best_test_lwlrap": _float(single.get("test_lwlrap")),
        "ensemble": ens.chosen,
        "ensemble_cv_lwlrap": float(chosen["cv_lwlrap"]),
        "ensemble_test_lwlrap": _float(chosen.get("test_lwlrap")),
        "stages": stages.to_dict(orient="records"),
        "tagged": {clip.name: {c: float(p) for c, p in top3.items()}},
        "artifact": str(ens.artifact_path),
    }
    (Path(sweep.experiment_dir) / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _float(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if x != x else x


def _fmt(x) -> str:
    v = _float(x)
    return "-" if v is None else f"{v:.4f}"
