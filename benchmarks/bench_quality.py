"""Tagging quality on the real-audio dev benchmark (issue 10), side by side.

Rows (each a `fit_pipeline` run of raytag's engine, except the first):

    reference_script    ../shared/bench/cnn_reference.py --noisy, unchanged (all curated + noisy
                        clips at face value, 30 epochs, no CV): the one-file CNN to match
    reference           configs/reference.yaml: the same recipe inside raytag
    ref_<ablation>      reference.yaml with ONE of the old defaults swapped in (why they learned slowly)
    face_value          configs/default.yaml, stages set for face value (curated + all noisy, no
                        warm-up, filter or pseudo-labels), the epochs of the default pipeline in one stage
    default             configs/default.yaml as shipped (the default pipeline)

Like with like: the script trains on every curated clip, a raytag fold holds 1/5 of them out
(67 clips) to score CV. Test lwlrap of a raytag row is the mean of its fold models on the test
clips; with --folds 0 (the default here, for time) that is one model trained on 4/5 of the
curated clips, so the comparison is slightly in the script's favour.

Paired bootstrap (1000 resamples of clips, 90% interval) of every row against `reference_script`
on test and, between raytag rows, on their common out-of-fold clips (`--pairs a:b`).

    python benchmarks/bench_quality.py --data /path/to/escfat                 # every row
    python benchmarks/bench_quality.py --data DIR --rows reference_script reference
    python benchmarks/bench_quality.py --data DIR --report-only               # table from finished rows

Finished rows are reused (results/quality/<row>-<config hash>-<data fingerprint>, the
fingerprint covering --data's resolved path and clip lists; --clip-groups' contents too); writes
results/benchmarks/quality.json and quality.md. Run it alone on the machine: it records the
load average beside every row's minutes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
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
STORAGE = REPO / "results" / "quality"
OUT_JSON = REPO / "results" / "benchmarks" / "quality.json"
OUT_MD = REPO / "results" / "benchmarks" / "quality.md"

FACE_VALUE = {
    "pipeline.warmup.enabled": False,
    "pipeline.finetune.noisy": "all",
    "pipeline.filter.enabled": False,
    "pipeline.label_spreading.enabled": False,
    "pipeline.pseudo.enabled": False,
}
# The old defaults (raytag 0.1) that issue 10 suspects, each swapped into reference.yaml alone.
ABLATIONS = {
    "ref_per_bin_norm": ("per-bin mean/std input normalisation", {"train.normalize.kind": "per_bin"}),
    "ref_lr1e-3": ("peak learning rate 1e-3 (not 3e-3)", {"train.lr": 1e-3}),
    "ref_wd1e-4": ("weight decay 1e-4 (not 1e-2)", {"train.weight_decay": 1e-4}),
    "ref_all_augment": ("SpecAugment + gain 6 dB + shift 0.1 + mixup on half the batches",
                        {"train.specaugment.enabled": True, "train.augment.gain_db": 6.0,
                         "train.augment.time_shift": 0.1, "train.mixup.prob": 0.5}),
    "ref_dense_neck": ("dense neck (128, PReLU) and dropout 0.2 / 0.1", {"model.params": {"hidden": 128},
                                                                       "model.dropout": 0.2}),
    "ref_2x32_batch": ("2 workers x 32 clips (the old per-worker batch: 64 per step)",
                       {"train.num_workers": 2, "train.cpus_per_worker": 0.5, "train.torch_threads": 1,
                        "train.batch_size": 64}),
}


CNN2D_W16 = {"model.name": "cnn2d", "model.width": 16, "model.params": {"hidden": 0}}

# Stage layouts tried for the default pipeline, each on default.yaml's training recipe.
FV_THEN_FILTER = {"pipeline.warmup.enabled": False, "pipeline.finetune.noisy": "all", "pipeline.finetune.epochs": 22,
                  "pipeline.filter.enabled": True, "pipeline.pseudo.enabled": False, "pipeline.pseudo.epochs": 8,
                  "pipeline.pseudo.lr": 1e-3}
WARMUP_NOISY = {"pipeline.warmup.enabled": True, "pipeline.warmup.use": "all", "pipeline.warmup.epochs": 15,
                "pipeline.finetune.noisy": "none", "pipeline.finetune.epochs": 7, "pipeline.filter.enabled": True,
                "pipeline.pseudo.enabled": False, "pipeline.pseudo.epochs": 8}
PIPELINE_VARIANTS = {
    "pipe_warmup_noisy": ("shared warm-up on all noisy (15), curated fine-tune (7), filter, stage 2 (8)", WARMUP_NOISY),
    "pipe_fv_filter": ("face value (22), filter (top-2 rule), stage 2 on curated + accepted (8, lr 1e-3)",
                       FV_THEN_FILTER),
    "pipe_fv_filter_soft": ("pipe_fv_filter + rejected clips kept with soft targets (Reed et al.)",
                            {**FV_THEN_FILTER, "pipeline.filter.rejected": "soft"}),
    "pipe_w16_filter_soft": ("width 16: face value (22), filter, stage 2 (8, lr 1e-3) on curated + accepted "
                             "+ rejected clips with soft targets (Reed et al.)",
                             {**FV_THEN_FILTER, "pipeline.filter.rejected": "soft", "model.width": 16}),
    "pipe_w16_filter_groups": ("width 16: face value (22), filter or grouped label spreading (ESC-50's five "
                               "groups), stage 2 (8, lr 1e-3) on curated + accepted, rejected soft",
                               {**FV_THEN_FILTER, "pipeline.filter.rejected": "soft", "model.width": 16,
                                "pipeline.label_spreading.enabled": True,
                                "pipeline.label_spreading.groups_file": "esc50"}),
    "pipe_w16_filter_pseudo_q": ("width 16: face value (22), filter, stage 2 (8, lr 1e-3) on curated + accepted "
                                 "+ the rejected clips the model is most sure of (top half by quantile), "
                                 "relabelled with its predictions",
                                 {**FV_THEN_FILTER, "model.width": 16, "pipeline.pseudo.enabled": True,
                                  "pipeline.pseudo.rounds": 1, "pipeline.pseudo.bounds": "quantile",
                                  "pipeline.pseudo.lower.start": 0.5, "pipeline.pseudo.lower.end": 0.5,
                                  "pipeline.pseudo.upper": 1.0}),
}
PIPELINE_VARIANTS["pipe_swa_filter_pseudo_q"] = (
    "pipe_w16_filter_pseudo_q with each stage's model the mean of its last 5 epochs' weights (the default's SWA)",
    {**PIPELINE_VARIANTS["pipe_w16_filter_pseudo_q"][1], "train.average_last": 5})
PIPELINE_VARIANTS["pipe_swa_filter_soft"] = (
    "pipe_w16_filter_soft with each stage's model the mean of its last 5 epochs' weights (the default's SWA)",
    {**PIPELINE_VARIANTS["pipe_w16_filter_soft"][1], "train.average_last": 5})


# Cheaper face-value recipes for the 25-minute 5-fold budget (issue 10 item 6), chosen on CV.
BUDGET_VARIANTS = {
    "fv_w32": ("face value, cnn2d width 32 (32-64-128-256, the reference's width)", {"model.width": 32}),
    "fv_w16": ("face value, cnn2d width 16 (16-32-64-128: ~1/4 of the FLOPs)", {"model.width": 16}),
    "fv_w16_e20": ("face value, width 16, 20 epochs", {"model.width": 16, "pipeline.finetune.epochs": 20}),
    "fv_w16_keep": ("face value, width 16, small-loss selection: keep the 50% noisy clips of least loss "
                    "per batch, ramped over 10 epochs (co-teaching's rule)",
                    {"model.width": 16, "train.loss.noisy_keep": 0.5, "train.loss.noisy_keep_ramp": 10}),
    "fv_w16_swa5": ("face value, width 16, the mean of the last 5 epochs' weights (SWA)",
                    {"model.width": 16, "train.average_last": 5}),
    "fv_w16_swa10": ("face value, width 16, the mean of the last 10 epochs' weights (SWA)",
                     {"model.width": 16, "train.average_last": 10}),
}

# Other families on the default recipe, as ensemble members that err differently from cnn2d
# (a step of resnet18 at width 32 costs about what cnn2d's at width 16 does on CPU: its stem
# downsamples 4x; the 1-D CNN costs a ninth).
FAMILY_VARIANTS = {
    "fv_resnet18_w32": ("face value, resnet18 width 32", {"model.name": "resnet18", "model.width": 32,
                                                          "model.params": {}}),
    "fv_resnet18_w16": ("face value, resnet18 width 16", {"model.name": "resnet18", "model.width": 16,
                                                          "model.params": {}}),
    "fv_cnn1d_w64": ("face value, 1-D CNN over time (mel bins as channels), cnn_1d_dense_dropout width 64",
                     {"model.name": "cnn_1d_dense_dropout", "model.width": 64, "model.params": {}}),
}

# The default's own noisy-label treatment, taken apart: lsoft (soft bootstrapping at the loss,
# Fonseca et al. 2019) and half weight on the noisy clips, against the noisy labels at face
# value (plain BCE, full weight). `configs/default.yaml` has both on.
NOISY_LOSS_VARIANTS = {
    "fv_w16_plain": ("width 16, noisy labels at face value: plain BCE and full weight on the noisy clips",
                     {"model.width": 16, "train.loss.noisy_loss": "same", "train.loss.noisy_weight": 1.0}),
    "fv_w16_lsoft_w1": ("width 16, lsoft on the noisy clips at full weight",
                        {"model.width": 16, "train.loss.noisy_weight": 1.0}),
    "fv_w16_bce_w05": ("width 16, plain BCE on the noisy clips at half weight",
                       {"model.width": 16, "train.loss.noisy_loss": "same"}),
}


def rows_table() -> dict:
    rows = {"reference_script": ("../shared/bench/cnn_reference.py --noisy (30 epochs), all curated clips", None, {})}
    rows["reference"] = ("configs/reference.yaml", "configs/reference.yaml", {})
    rows["reference_script_fold0"] = ("the script on fold 0's training clips (the `reference` row's data)", None, {})
    for name, (what, over) in ABLATIONS.items():
        rows[name] = (f"reference.yaml + {what}", "configs/reference.yaml", over)
    rows["face_value"] = ("default.yaml, curated + all noisy at face value, same total epochs",
                          "configs/default.yaml", {"FACE_VALUE": True})
    rows["default"] = ("default.yaml (the default pipeline)", "configs/default.yaml", {})
    # rows pin train.average_last (0 = off, as they were run before default.yaml averaged) and
    # the model they were run with (cnn2d w16, default.yaml's model until it became resnet18)
    for name, (what, over) in {**BUDGET_VARIANTS, **FAMILY_VARIANTS, **NOISY_LOSS_VARIANTS}.items():
        rows[name] = (what, "configs/default.yaml", {"FACE_VALUE": True, "train.average_last": 0, **CNN2D_W16, **over})
    for name, (what, over) in PIPELINE_VARIANTS.items():
        rows[name] = (what, "configs/default.yaml", {"train.average_last": 0, **CNN2D_W16, **over})
    return rows


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- runs
# the files that say which clips a dataset has (and their labels): hashed into every cache key
CLIP_LISTS = ("train_curated.csv", "train_noisy.csv", "test_labels.csv", "sample_submission.csv")


def files_digest(paths: list[Path]) -> str:
    """sha256 of the files' names and contents (a missing file counts as empty), 8 hex digits."""
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.name).encode())
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()[:8]


def data_fingerprint(data: Path) -> str:
    """The dataset's resolved path and its clip lists: two --data folders never share a cached row."""
    h = hashlib.sha256(str(data.resolve()).encode())
    h.update(files_digest([data / name for name in CLIP_LISTS]).encode())
    return h.hexdigest()[:8]


def link_to(link: Path, target: Path) -> None:
    """`link` -> `target`, replacing a link left pointing elsewhere by an earlier --data."""
    target = target.resolve()
    if link.is_symlink() and Path(os.readlink(link)) != target:
        link.unlink()
    if not link.exists() and not link.is_symlink():
        link.symlink_to(target)


def fold0_training_data(data: Path, reference_info: dict) -> Path:
    """`data` with train_curated.csv cut to the clips a raytag fold-0 model trains on (the
    held-out clips of the `reference` row's oof.parquet removed); audio linked, not copied.
    One folder per source dataset, so its links never point at another --data."""
    out = STORAGE / f"data_fold0_train-{data_fingerprint(data)}"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train_curated", "train_noisy", "test", "sample_submission.csv", "test_labels.csv",
                 "train_noisy.csv"):
        link_to(out / name, data / name)
    held = {c.split("/", 1)[1] for c in pd.read_parquet(Path(reference_info["outputs"]) / "oof.parquet")["clip_id"]}
    curated = pd.read_csv(data / "train_curated.csv", dtype=str, keep_default_na=False)
    curated[~curated["fname"].isin(held)].to_csv(out / "train_curated.csv", index=False)
    return out


def script_dir(row: str, epochs: int, data: Path) -> Path:
    """Where a script row's run is cached: its epochs and the exact data it trained on (for the
    fold-0 row, the cut clip list, so the reference row's folds and clip groups count too)."""
    return STORAGE / f"{row}-e{epochs}-{data_fingerprint(data)}"


def run_script(data: Path, epochs: int, row: str = "reference_script") -> dict:
    out_dir = script_dir(row, epochs, data)
    preds = out_dir / "test.parquet"
    info_path = out_dir / "info.json"
    if info_path.is_file():
        print(f"[bench] {row}: reusing {out_dir}", flush=True)
        return json.loads(info_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = load_avg()
    started = time.time()
    cmd = [sys.executable, str(REPO / "benchmarks" / "run_reference.py"), str(SHARED / "bench" / "cnn_reference.py"),
           str(data), str(preds), "--noisy", "--epochs", str(epochs)]
    print(f"[bench] {row}: {' '.join(cmd)}", flush=True)
    log = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print(log, flush=True)
    info = {"row": row, "data": str(data.resolve()), "minutes": round((time.time() - started) / 60, 2),
            "load_before": load_before, "load_after": load_avg(), "log": log.splitlines()[-8:],
            "test_preds": str(preds), "cv_lwlrap": None}
    info_path.write_text(json.dumps(info, indent=2))
    return info


def config_for(config_file: str, overrides: dict, epochs: int, folds: list[int] | None,
               clip_groups: Path | None = None):
    from raytag.config import Config

    cfg = Config.from_yaml(REPO / config_file)
    over = dict(overrides)
    if clip_groups is not None:  # folds that keep each recording's clips together
        over["cv.clip_groups"] = str(clip_groups.resolve())
    if over.pop("FACE_VALUE", False):
        p = cfg.pipeline
        # stage 2 runs pseudo.rounds rounds, or one round on the filter's accepted clips, or not at all
        stage2_rounds = p.pseudo.rounds if p.pseudo.enabled else (1 if p.filter.enabled else 0)
        total = sum(s.epochs for s in (p.warmup, p.finetune) if s.enabled) + p.pseudo.epochs * stage2_rounds
        over = {**FACE_VALUE, "pipeline.finetune.epochs": total, **over}
    if folds is not None:
        over["cv.folds"] = folds
    if config_file.endswith("reference.yaml"):
        over["pipeline.finetune.epochs"] = epochs
    return cfg.with_overrides(over)


# settings that change how a run is executed, not what it learns: left out of the row's hash so
# that finished rows stay reusable when such a setting is added
OPERATIONAL = {"train": ("checkpoint_every", "ddp_backend")}
# settings added after rows were run: left out of the hash while they hold the value that
# reproduces the older runs, so those rows stay reusable
ADDED_LATER = {"train": {"average_last": 0}, "cv": {"clip_groups": None, "refit": False}}


def config_hash(cfg) -> str:
    d = {k: v for k, v in cfg.to_dict().items() if k != "name"}
    for section, keys in OPERATIONAL.items():
        d[section] = {k: v for k, v in d[section].items() if k not in keys}
    for section, defaults in ADDED_LATER.items():
        d[section] = {k: v for k, v in d[section].items() if defaults.get(k, object()) != v}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def run_name(row: str, cfg, data: Path) -> str:
    """A raytag row's cache key: its settings (folds included), the data, the clip groups' contents."""
    key = f"{row}-{config_hash(cfg)}-{data_fingerprint(data)}"
    if cfg.cv.clip_groups:
        key += f"-g{files_digest([Path(cfg.cv.clip_groups)])}"
    return key


def run_raytag(row: str, cfg, data: Path, features: Path) -> dict:
    from raytag.training.runner import fit_pipeline

    name = run_name(row, cfg, data)
    outputs = STORAGE / name / "outputs"
    info_path = STORAGE / name / "bench.json"
    if info_path.is_file():
        print(f"[bench] {row}: reusing {STORAGE / name}", flush=True)
        return json.loads(info_path.read_text())
    load_before = load_avg()
    started = time.time()
    print(f"[bench] {row}: training ({name}), load {load_before}", flush=True)
    result = fit_pipeline(cfg.with_overrides({"name": row}), data, str(STORAGE), name,
                          feature_cache=str(features), progress=False)
    info = {"row": row, "minutes": round((time.time() - started) / 60, 2), "load_before": load_before,
            "load_after": load_avg(), "cv_lwlrap": result.metrics["cv_lwlrap"],
            "test_lwlrap": result.metrics.get("test_lwlrap"), "epochs_run": result.metrics.get("epochs_run"),
            "outputs": str(outputs), "stages": json.loads(result.stages.to_json(orient="records"))}
    info_path.write_text(json.dumps(info, indent=2))
    return info


# ----------------------------------------------------------------------------- scoring
def test_truth(data: Path, classes: list[str]) -> pd.DataFrame:
    t = pd.read_csv(data / "test_labels.csv", dtype=str, keep_default_na=False)
    y = np.array([[c in labs.split(",") for c in classes] for labs in t["labels"]], np.float32)
    return pd.DataFrame(y, index=t["fname"], columns=classes)


def test_scores(info: dict, classes: list[str]) -> pd.DataFrame:
    """fname -> class scores (raytag: mean over fold models)."""
    if info["row"].startswith("reference_script"):
        return pd.read_parquet(info["test_preds"]).set_index("fname")[classes]
    return fold_mean_test(Path(info["outputs"]), classes)


def fold_mean_test(outputs: Path, classes: list[str], folds: list[int] | None = None) -> pd.DataFrame:
    """fname -> class scores of a raytag run: the mean of its fold models (of `folds` only, if given).
    A members run's test predictions are already its members' combination over its folds (fold -1)."""
    df = pd.read_parquet(outputs / "test.parquet")
    if folds is not None and set(df["fold"]) != {-1}:
        df = df[df["fold"].isin(folds)]
    df = df.groupby("clip_id")[classes].mean()
    df.index = [c.split("/", 1)[1] for c in df.index]
    return df


def oof_scores(info: dict, classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    if info["row"].startswith("reference_script"):
        return None
    out = Path(info["outputs"])
    df = pd.read_parquet(out / "oof.parquet").set_index("clip_id")[classes]
    truth = pd.read_csv(out / "oof_truth.csv", keep_default_na=False).set_index("clip_id")
    y = np.array([[c in labs.split(",") for c in classes] for labs in truth.loc[df.index, "labels"]], np.float32)
    return df, pd.DataFrame(y, index=df.index, columns=classes)


def paired(y: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame) -> dict:
    from raytag.metrics import paired_bootstrap_lwlrap

    common = a.index.intersection(b.index).intersection(y.index)
    return paired_bootstrap_lwlrap(y.loc[common].to_numpy(), a.loc[common].to_numpy(), b.loc[common].to_numpy())


def ensemble_section(experiment: Path, y_test: pd.DataFrame) -> dict:
    """A finished sweep's ensemble (`raytag tune` + `raytag ensemble`) against its best member:
    the chosen combiner and the best trial by CV, both from the trials' own OOF and test
    predictions, recombined here exactly as the ensemble job combines them; paired intervals
    on the OOF clips (CV) and on the test clips."""
    from raytag.ensemble.combiners import combine, rank_reference
    from raytag.ensemble.job import load_oof_truth, load_trial, select_candidates
    from raytag.data.truth import truth_matrix

    summary = json.loads((experiment / "ensemble" / "ensemble_summary.json").read_text())
    table = pd.read_csv(experiment / "ensemble" / "comparison.csv")
    by_id = {c.trial_id: c for c in select_candidates(str(experiment), top=None, also=summary.get("with", []))[0]}
    members = [by_id[t] for t in summary["members"]]
    trials = [load_trial(c.outputs_dir) for c in members]
    classes = trials[0].classes
    oof_ids = trials[0].oof.index
    for t in trials[1:]:
        oof_ids = oof_ids.intersection(t.oof.index)
    oof_ids = oof_ids.sort_values()
    y_oof = pd.DataFrame(truth_matrix(load_oof_truth(members[0].outputs_dir, str(experiment)), oof_ids, classes),
                         index=oof_ids, columns=classes)
    refs = [rank_reference(t.oof[classes].to_numpy(np.float64)) for t in trials]
    weights = summary.get("weights") if summary["chosen"] == "weighted" else None

    def combined(frames: list[pd.DataFrame]) -> pd.DataFrame:
        ids = frames[0].index
        for f in frames[1:]:
            ids = ids.intersection(f.index)
        stack = np.stack([f.loc[ids, classes].to_numpy(np.float64) for f in frames])
        return pd.DataFrame(combine(summary["chosen"], stack, weights, references=refs), index=ids, columns=classes)

    ens_oof, ens_test = combined([t.oof for t in trials]), combined([t.test for t in trials])
    held_out = experiment / "ensemble" / "oof.parquet"  # the job's CV predictions: nested where fitted
    if held_out.is_file():
        ens_oof = pd.read_parquet(held_out).set_index("clip_id")[classes]
    best = max(range(len(members)), key=lambda i: members[i].leaderboard_cv)  # chosen on CV, never on test
    best_oof, best_test = trials[best].oof[classes], trials[best].test[classes]
    ens_test.index = [i.split("/", 1)[-1] for i in ens_test.index]  # clip_id "test/<fname>" -> fname
    best_test = best_test.set_axis([i.split("/", 1)[-1] for i in best_test.index])  # clip_id -> fname
    sweep_minutes = None
    sweep_json = experiment / "sweep.json"
    if sweep_json.is_file():
        sweep_minutes = json.loads(sweep_json.read_text()).get("minutes")
    chosen_row = table[table["chosen"]].iloc[0]
    frames = {"oof": ens_oof, "test": ens_test, "y_oof": y_oof}
    return frames, {
        "experiment": str(experiment), "chosen": summary["chosen"], "members": summary["members"],
        "best_member": members[best].trial_id, "sweep_minutes": sweep_minutes,
        "ensemble": {"cv_lwlrap": float(chosen_row["cv_lwlrap"]), "test_lwlrap": float(chosen_row["test_lwlrap"])},
        "best": {"cv_lwlrap": float(members[best].leaderboard_cv),
                 "test_lwlrap": float(table.loc[table["name"] == members[best].trial_id, "test_lwlrap"].iloc[0])},
        "cv_pair": paired(y_oof, best_oof, ens_oof),
        "test_pair": paired(y_test, best_test, ens_test),
    }


def ensemble_vs_rows(frames: dict, y_test: pd.DataFrame, rows: dict, scores: dict, classes: list[str]) -> list[dict]:
    """The sweep's ensemble against single-run rows (e.g. the default recipe), paired on the
    test clips and on the OOF clips they share (a row trained on fold 0 shares fold 0's)."""
    out = []
    for row, info in rows.items():
        test = paired(y_test, scores[row], frames["test"])
        out.append({"row": row, "on": "test", "n": int(len(y_test)), **test})
        oof = oof_scores(info, classes)
        if oof is not None:
            common = oof[0].index.intersection(frames["oof"].index)
            out.append({"row": row, "on": "CV (common OOF clips)", "n": int(len(common)),
                        **paired(oof[1].loc[common], oof[0].loc[common], frames["oof"].loc[common])})
    return out


def refuse_combined_test_on_other_folds(label: str, outputs: Path, folds: list[int], run_folds: list[int]) -> None:
    """A members run stores its test predictions already combined over all its folds (fold -1):
    they cannot be cut to the sweep's folds, so comparing them on fewer folds would be mislabelled."""
    test_folds = set(pd.read_parquet(outputs / "test.parquet", columns=["fold"])["fold"])
    if test_folds == {-1} and set(folds) != set(run_folds):
        sys.exit(f"--ensemble-vs-run {label}: {outputs} holds test predictions combined over its folds "
                 f"{run_folds} (a members run), which cannot be cut to the sweep's folds {folds}; "
                 f"give a run trained on folds {folds} only, or one member's outputs "
                 f"(<run>/members/<member>/outputs)")


def ensemble_vs_runs(frames: dict, y_test: pd.DataFrame, runs: list[str], classes: list[str]) -> list[dict]:
    """The sweep's ensemble against finished `raytag train` runs (LABEL=OUTPUTS), like with
    like: each run's test predictions are the mean of its models of the folds the sweep
    trained (the folds of the ensemble's OOF clips), and CV pairs the OOF clips both hold out."""
    out = []
    oof_ids = set(frames["oof"].index)
    for spec in runs:
        label, _, path = spec.partition("=")
        outputs = Path(path)
        oof = pd.read_parquet(outputs / "oof.parquet")
        folds = sorted(oof.loc[oof["clip_id"].isin(oof_ids), "fold"].unique().tolist())
        refuse_combined_test_on_other_folds(label, outputs, folds, sorted(oof["fold"].unique().tolist()))
        pair = paired(y_test, fold_mean_test(outputs, classes, folds), frames["test"])
        out.append({"row": f"{label} (folds {','.join(map(str, folds))})", "on": "test", "n": int(len(y_test)), **pair})
        run_oof = oof.set_index("clip_id")[classes]
        common = run_oof.index.intersection(frames["oof"].index)
        out.append({"row": label, "on": "CV (common OOF clips)", "n": int(len(common)),
                    **paired(frames["y_oof"].loc[common], run_oof.loc[common], frames["oof"].loc[common])})
    return out


# ----------------------------------------------------------------------------- report
def dataset_counts(data: Path, classes: list[str]) -> str:
    """'N curated, N noisy, N test clips, N classes', counted from the data's clip lists."""
    def rows(name: str) -> int:
        path = data / name
        return len(pd.read_csv(path, usecols=[0])) if path.is_file() else 0

    return (f"{rows('train_curated.csv')} curated, {rows('train_noisy.csv')} noisy, "
            f"{rows('test_labels.csv')} test clips, {len(classes)} classes")


def report(results: dict, data: Path, args) -> None:
    from raytag.metrics import lwlrap

    classes = list(pd.read_csv(data / "sample_submission.csv", nrows=0).columns[1:])
    y_test = test_truth(data, classes)
    scores = {row: test_scores(info, classes) for row, info in results.items()}
    base = "reference_script" if "reference_script" in scores else None
    lines = []
    for row, info in results.items():
        s = scores[row].reindex(y_test.index)
        test = float(lwlrap(y_test.to_numpy(), s.to_numpy()))
        vs = paired(y_test, scores[base], scores[row]) if base and row != base else None
        lines.append({"row": row, "what": rows_table()[row][0], "cv_lwlrap": info.get("cv_lwlrap"),
                      "test_lwlrap": round(test, 4), "test_vs_script": vs, "minutes": info["minutes"],
                      "load": f"{info['load_before']} / {info['load_after']}"})
    test_pairs = []
    for pair in args.test_pairs:
        a, b = pair.split(":")
        if a in scores and b in scores:
            test_pairs.append({"a": a, "b": b, **paired(y_test, scores[a], scores[b])})
    cv_pairs = []
    for pair in args.pairs:
        a, b = pair.split(":")
        if a in results and b in results:
            oa, ob = oof_scores(results[a], classes), oof_scores(results[b], classes)
            if oa and ob:
                cv_pairs.append({"a": a, "b": b, **paired(oa[1], oa[0], ob[0])})
    ensemble = None
    if args.ensemble:
        frames, ensemble = ensemble_section(args.ensemble, y_test)
        ensemble["vs_rows"] = ensemble_vs_rows(frames, y_test, {r: results[r] for r in args.ensemble_vs if r in results},
                                               scores, classes)
        ensemble["vs_rows"] += ensemble_vs_runs(frames, y_test, args.ensemble_vs_run, classes)
    report = {"command": " ".join(sys.argv), "data": str(data), "folds": args.folds, "rows": lines,
              "cv_pairs": cv_pairs, "test_pairs": test_pairs, "ensemble": ensemble,
              "when": time.strftime("%Y-%m-%d %H:%M")}
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(report, indent=2))
    md = ["# Tagging quality on the dev benchmark (issue 10)", "",
          f"Data: `{data}` ({dataset_counts(data, classes)}).  ",
          f"Command: `{report['command']}`; folds trained: {args.folds}.  ",
          "CV: out-of-fold lwlrap of the trained folds' held-out curated clips. Test: the fold models' mean "
          f"on the {len(y_test)} test clips (reported, never used to choose). Intervals: paired bootstrap over clips, "
          "1000 resamples, 90%.", "",
          "| row | what | CV lwlrap | test lwlrap | test - script [90% CI] | min | load avg (before / after) |",
          "|---|---|---|---|---|---|---|"]
    for r in lines:
        cv = "" if r["cv_lwlrap"] is None else f"{r['cv_lwlrap']:.4f}"
        vs = "" if r["test_vs_script"] is None else (
            f"{r['test_vs_script']['diff']:+.4f} [{r['test_vs_script']['ci90'][0]:+.3f}, "
            f"{r['test_vs_script']['ci90'][1]:+.3f}]")
        md.append(f"| {r['row']} | {r['what']} | {cv} | {r['test_lwlrap']:.4f} | {vs} | {r['minutes']:.1f} | {r['load']} |")
    for title, pairs in ((f"Paired test comparisons ({len(y_test)} test clips)", test_pairs),
                         ("Paired CV comparisons (common out-of-fold clips)", cv_pairs)):
        if not pairs:
            continue
        md += ["", f"## {title}", "", "| b - a | diff | 90% CI | P(b better) |", "|---|---|---|---|"]
        for p in pairs:
            md.append(f"| {p['b']} - {p['a']} | {p['diff']:+.4f} | [{p['ci90'][0]:+.3f}, {p['ci90'][1]:+.3f}] "
                      f"| {p['p_better']:.2f} |")
    if ensemble:
        e = ensemble
        md += ["", "## Ensemble from a sweep against its best member", "",
               f"Sweep: `{e['experiment']}`; members {', '.join(e['members'])}; combiner chosen on OOF: "
               f"**{e['chosen']}**; best member by CV: {e['best_member']}"
               + (f"; sweep {e['sweep_minutes']:.1f} min" if e.get("sweep_minutes") else "") + ".", "",
               "| row | CV lwlrap | test lwlrap |", "|---|---|---|",
               f"| best member ({e['best_member']}) | {e['best']['cv_lwlrap']:.4f} | {e['best']['test_lwlrap']:.4f} |",
               f"| ensemble ({e['chosen']}) | {e['ensemble']['cv_lwlrap']:.4f} | {e['ensemble']['test_lwlrap']:.4f} |",
               "", "| ensemble - best member | diff | 90% CI | P(ensemble better) |", "|---|---|---|---|"]
        for what, p in (("CV (OOF clips)", e["cv_pair"]), ("test", e["test_pair"])):
            md.append(f"| {what} | {p['diff']:+.4f} | [{p['ci90'][0]:+.3f}, {p['ci90'][1]:+.3f}] | {p['p_better']:.2f} |")
        if e.get("vs_rows"):
            md += ["", "| ensemble - row | on | clips | diff | 90% CI | P(ensemble better) |", "|---|---|---|---|---|---|"]
            for v in e["vs_rows"]:
                md.append(f"| ensemble - {v['row']} | {v['on']} | {v['n']} | {v['diff']:+.4f} | "
                          f"[{v['ci90'][0]:+.3f}, {v['ci90'][1]:+.3f}] | {v['p_better']:.2f} |")
    notes = OUT_MD.read_text().split(NOTES, 1)[1] if OUT_MD.is_file() and NOTES in OUT_MD.read_text() else "\n"
    OUT_MD.write_text("\n".join(md) + "\n\n" + NOTES + notes)
    print("\n".join(md))


NOTES = "<!-- notes below are kept when the script rewrites this file -->"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="make_fat_bench.py output (50 classes)")
    ap.add_argument("--rows", nargs="*", default=None, help=f"rows to run (default: all): {', '.join(rows_table())}")
    ap.add_argument("--folds", default="0", help="folds to train: '0', '0,1' or 'all' (default 0)")
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the script and of reference.yaml rows")
    ap.add_argument("--features", type=Path, default=REPO / ".raytag_cache" / "bench_features")
    ap.add_argument("--pairs", nargs="*", default=["face_value:default", "reference:face_value"],
                    help="raytag rows compared on common OOF clips, as a:b")
    ap.add_argument("--test-pairs", nargs="*", default=["reference_script_fold0:reference", "face_value:default"],
                    help="rows compared on the test clips, as a:b")
    ap.add_argument("--report-only", action="store_true", help="only tabulate rows that already ran")
    ap.add_argument("--ensemble-vs", nargs="*", default=["fv_w16"],
                    help="rows the --ensemble sweep's ensemble is also paired against (default fv_w16)")
    ap.add_argument("--ensemble-vs-run", nargs="*", default=[], metavar="LABEL=OUTPUTS",
                    help="finished `raytag train` runs (their outputs folder) the ensemble is also paired "
                         "against, on the folds the sweep trained (e.g. default=<storage>/default/outputs)")
    ap.add_argument("--ensemble", type=Path, default=None,
                    help="a finished sweep's folder (raytag tune + raytag ensemble on --data): its ensemble "
                         "against its best member, with paired intervals")
    ap.add_argument("--clip-groups", type=Path, default=None,
                    help="cv.clip_groups for every raytag row: the benchmark's source groups "
                         "(benchmarks/bench_source_groups.py), so CV does not reward remembering recordings")
    args = ap.parse_args()
    folds = None if args.folds == "all" else [int(f) for f in args.folds.split(",")]
    table = rows_table()
    wanted = args.rows or list(table)
    unknown = [r for r in wanted if r not in table]
    if unknown:
        sys.exit(f"unknown rows {unknown}; known: {', '.join(table)}")
    results = {}
    for row in wanted:
        what, config_file, over = table[row]
        if row.startswith("reference_script"):
            data = args.data
            if row == "reference_script_fold0":
                if folds != [0]:
                    sys.exit("reference_script_fold0 is the script on fold 0's training clips: run it with --folds 0")
                if "reference" not in results:
                    sys.exit("reference_script_fold0 needs the `reference` row (its fold 0): list it first")
                data = fold0_training_data(args.data, results["reference"])
            if args.report_only and not (script_dir(row, args.epochs, data) / "info.json").is_file():
                continue
            results[row] = run_script(data, args.epochs, row)
            continue
        cfg = config_for(config_file, over, args.epochs, folds, args.clip_groups)
        if args.report_only:
            path = STORAGE / run_name(row, cfg, args.data) / "bench.json"
            if path.is_file():
                results[row] = json.loads(path.read_text())
            continue
        results[row] = run_raytag(row, cfg, args.data, args.features)
    report(results, args.data, args)


if __name__ == "__main__":
    main()
