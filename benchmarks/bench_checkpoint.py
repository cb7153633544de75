"""Checkpoint cost per epoch: the old format (every checkpoint copies the whole run-state
folder and pickles the train state) against the new one (train state in safetensors + JSON,
each run file written once to <run>/run_files/), side by side in one run (issues 11 and 12).

What is measured, per epoch of a run, for each format:
  - seconds: writing the checkpoint folder (the worker's `write_checkpoint`) plus persisting
    it the way Ray Train's `StorageContext.persist_current_checkpoint` does (pyarrow
    `copy_files` into `<storage>/<run>/checkpoint_*`), and for the new format the upload of
    the run files made since the last checkpoint;
  - bytes: what lands in storage for that epoch (checkpoint folder + new run files), and the
    bytes of the local staging folder.
Ray's bookkeeping around `ray.train.report` is the same for both formats and left out.

The run replayed: the real model, optimizer (AdamW) and one-cycle scheduler of the config
(one optimizer step per epoch on random input, so the optimizer state is full size), and its
real step list (`build_steps`), on the dimensions of the real-audio benchmark
(/work/bench/escfat: clip counts and 50 classes). At each step's end the files the pipeline
makes there are made with `RunState` (held-out and test predictions, fold weights, final
predictions; filter decisions, embeddings and pseudo-labels with --pipeline full). The two
formats see the same folder; their order alternates per epoch. Storage is a local folder
(`--storage`); on a bucket both times scale with the bytes.

    .venv/bin/python benchmarks/bench_checkpoint.py                    # default config, 5 folds x 30 epochs
    .venv/bin/python benchmarks/bench_checkpoint.py --pipeline full --epochs 5

Writes results/benchmarks/checkpoint.json and checkpoint.md (the figures, load averages).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raytag.config import Config  # noqa: E402
from raytag.features.frontends import frontend_shape  # noqa: E402
from raytag.models import build_model  # noqa: E402
from raytag.training.checkpoint import capture_rng  # noqa: E402
from raytag.training.epoch import build_optimizer  # noqa: E402
from raytag.training.run_state import RUN_FILES, RunState  # noqa: E402
from raytag.training.steps import build_steps, last_training_step_of_fold  # noqa: E402


def legacy_write_checkpoint(state: RunState, train_state: dict, into: Path) -> None:
    """The old RunState.write_checkpoint (main at 471b637): the whole folder, a pickle."""
    shutil.copytree(state.out, into / "outputs", dirs_exist_ok=True)
    torch.save(train_state, into / "train_state.pt")
    (into / "state.json").write_text(json.dumps(state.progress))


def persist(local: Path, target: Path) -> None:
    """What Ray Train does with a reported checkpoint folder (persist_current_checkpoint)."""
    fs = pafs.LocalFileSystem()
    fs.create_dir(str(target))
    pafs.copy_files(str(local), str(target), source_filesystem=fs, destination_filesystem=fs)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def keep_last(run: Path, n: int = 2) -> None:
    """CheckpointConfig(num_to_keep=2), as the runner sets it."""
    for old in sorted(run.glob("checkpoint_*"))[:-n]:
        shutil.rmtree(old)


def counts(data: Path) -> dict:
    def rows(name, default):
        path = data / name
        return sum(1 for _ in path.open()) - 1 if path.is_file() else default

    return {"curated": rows("train_curated.csv", 334), "noisy": rows("train_noisy.csv", 666),
            "test": rows("sample_submission.csv", 332), "classes": 50}


def make_step_files(state: RunState, step, is_fold_final: bool, n: dict, n_folds: int, rng) -> None:
    """The files the pipeline makes at the end of `step` (epoch.py, stage_steps.py), at real sizes."""
    c = n["classes"]
    held = [f"curated/{i}.wav" for i in range(n["curated"] // n_folds)]
    test = [f"test/{i}.wav" for i in range(n["test"])]
    noisy = [f"noisy/{i}.wav" for i in range(n["noisy"])]
    if step.kind == "filter":
        accepted = noisy[: len(noisy) // 2]
        state.save_json(f"filter/fold{step.fold}.json", {"fold": step.fold, "accepted": accepted,
                                                          "unlabelled": noisy[len(accepted):]})
        if step.fold == 0:
            emb = state.out / "embeddings"
            emb.mkdir(exist_ok=True)
            np.savez(emb / "fold0.npz", labelled_ids=np.asarray(held * (n_folds - 1)),
                     labelled=rng.random((len(held) * (n_folds - 1), 256), dtype=np.float32),
                     noisy_ids=np.asarray(noisy), noisy=rng.random((len(noisy), 256), dtype=np.float32),
                     accepted=np.zeros(len(noisy), bool))
        return
    tag = step.stage_name if step.fold is None else f"{step.stage_name}__fold{step.fold}"
    oof, tst = rng.random((len(held), c), dtype=np.float32), rng.random((len(test), c), dtype=np.float32)
    state.save_preds(f"oof/{tag}", held, oof)
    state.save_preds(f"test/{tag}", test, tst)
    if is_fold_final:
        state.save_preds(f"final/oof_fold{step.fold}", held, oof)
        state.save_preds(f"final/test_fold{step.fold}", test, tst)


def run(args) -> dict:
    cfg = Config.from_yaml(args.config)
    if args.pipeline == "full":
        cfg = cfg.with_overrides({"pipeline.warmup.enabled": True, "pipeline.filter.enabled": True,
                                  "pipeline.pseudo.enabled": True, "pipeline.pseudo.rounds": 2})
    if args.model:
        cfg = cfg.with_overrides({"model.name": args.model})
    n = counts(args.data)
    channels, bins = frontend_shape(cfg.features)
    torch.manual_seed(0)
    model = build_model(cfg.model, n["classes"], channels, bins)
    n_params = sum(p.numel() for p in model.parameters())
    folds = list(range(cfg.cv.n_folds))
    steps = build_steps(cfg, folds)
    final_of_fold = last_training_step_of_fold(steps)
    rng = np.random.default_rng(0)
    x = torch.randn(4, channels, bins, cfg.crop_frames())
    y = torch.zeros(4, n["classes"])

    root = Path(tempfile.mkdtemp(prefix="raytag-bench-ckpt-", dir=args.storage))
    before_run, after_run = root / "before" / "run", root / "after" / "run"
    state = RunState(root / "work", str(after_run / RUN_FILES))
    rows = []
    for i, step in enumerate(steps):
        epochs = 1 if step.kind == "filter" else min(step.epochs, args.epochs)
        optimizer, scheduler = build_optimizer(cfg, model, step, steps_per_epoch=1) if step.trains else (None, None)
        if step.kind == "stage2" and cfg.pipeline.pseudo.enabled:  # chosen at the step's start
            ids = [f"noisy/{j}.wav" for j in range(n["noisy"] // 4)]
            state.save_preds(f"pseudo/fold{step.fold}_r{step.round}", ids,
                             rng.random((len(ids), n["classes"]), dtype=np.float32))
        for epoch in range(epochs):
            if step.trains:  # one real optimizer step: full-size optimizer state
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if scheduler is not None:  # built for step.epochs >= the epochs run here
                    scheduler.step()
            last = epoch == epochs - 1
            if last:
                make_step_files(state, step, final_of_fold.get(step.fold) == i, n, len(folds), rng)
                if step.kind == "warmup" or final_of_fold.get(step.fold) == i:
                    state.save_weights("warmup" if step.kind == "warmup" else f"fold{step.fold}", model)
            state.progress["global_step"] += int(step.trains)
            state.progress["history"].append({"step": state.progress["global_step"], "stage": step.stage_name,
                                              "train_loss": 0.5, "val_lwlrap": 0.5, "cv_lwlrap": 0.5})
            # the old worker saved the optimizer every epoch; the new one only mid-step (worker._report)
            legacy_state = {"model": model.state_dict(),
                            "optimizer": optimizer.state_dict() if optimizer else None,
                            "scheduler": scheduler.state_dict() if scheduler else None,
                            "step": None if last else i, "rng": capture_rng()}
            train_state = {**legacy_state, **({"optimizer": None, "scheduler": None} if last else {})}
            name = f"checkpoint_{len(rows):06d}"
            row = {"epoch": len(rows), "stage": step.stage_name, "fold": step.fold,
                   "load_1min": os.getloadavg()[0]}
            order = ("before", "after") if len(rows) % 2 == 0 else ("after", "before")
            for fmt in order:
                with tempfile.TemporaryDirectory(dir=args.storage) as tmp:
                    started = time.perf_counter()
                    if fmt == "before":
                        legacy_write_checkpoint(state, legacy_state, Path(tmp))
                        persist(Path(tmp), before_run / name)
                        new_files = 0
                    else:
                        new_files = state.write_checkpoint(train_state, Path(tmp))["run_files"]
                        persist(Path(tmp), after_run / name)
                    seconds = time.perf_counter() - started
                    staged = folder_bytes(Path(tmp))
                run_dir = before_run if fmt == "before" else after_run
                row[f"{fmt}_s"] = round(seconds, 4)
                row[f"{fmt}_bytes"] = folder_bytes(run_dir / name) + new_files  # what reached storage
                row[f"{fmt}_staged_bytes"] = staged
                keep_last(run_dir)
            rows.append(row)
    result = {"rows": rows, "n_params": n_params, "counts": n, "model": cfg.model.name,
              "pipeline": args.pipeline, "epochs_per_step": args.epochs, "folds": len(folds),
              "storage_before": folder_bytes(before_run), "storage_after": folder_bytes(after_run)}
    shutil.rmtree(root, ignore_errors=True)
    return result


def summarize(result: dict) -> dict:
    rows = result["rows"]
    out = {}
    for fmt in ("before", "after"):
        b = np.array([r[f"{fmt}_bytes"] for r in rows], float)
        s = np.array([r[f"{fmt}_s"] for r in rows], float)
        out[fmt] = {"mb_per_epoch_mean": b.mean() / 1e6, "mb_per_epoch_first": b[0] / 1e6,
                    "mb_per_epoch_last": b[-1] / 1e6, "mb_total": b.sum() / 1e6,
                    "s_per_checkpoint_median": float(np.median(s)), "s_per_checkpoint_mean": float(s.mean()),
                    "s_per_checkpoint_last": float(s[-1]), "s_total": float(s.sum())}
    return out


def markdown(results: list[dict], meta: dict) -> str:
    lines = ["# Checkpoint cost per epoch: old format vs new (issues 11 and 12)", "",
             f"Command: `{meta['command']}`, commit {meta['commit']}, {meta['date']}; "
             f"storage a local folder. Load average (1, 5, 15 min) before: {meta['load_before']}, "
             f"after: {meta['load_after']} (2 cores shared with other agents).", "",
             "old: every checkpoint copies the whole run-state folder and a pickled train state "
             "(`torch.save`); new: train state in safetensors + JSON (the optimizer only mid-step: a "
             "step's end starts a new one), each run file (predictions, weights, filter decisions) "
             "written once to `<run>/run_files/`, the checkpoint lists it. "
             "Bytes = what reaches storage per epoch (checkpoint folder + new run files); seconds = "
             "writing the folder + persisting it as Ray Train does (+ new run files). Same run, same "
             "files, formats alternating first per epoch.", "",
             "| run | params | epochs | format | MB / epoch (mean) | first | last | MB total | s / ckpt (median) | mean | last | s total |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        summ = res["summary"]
        for fmt, label in (("before", "old"), ("after", "new")):
            v = summ[fmt]
            lines.append(f"| {res['model']}, {res['pipeline']}, {res['folds']} folds x <= {res['epochs_per_step']} ep "
                         f"| {res['n_params']:,} | {len(res['rows'])} | {label} | {v['mb_per_epoch_mean']:.2f} "
                         f"| {v['mb_per_epoch_first']:.2f} | {v['mb_per_epoch_last']:.2f} | {v['mb_total']:.0f} "
                         f"| {v['s_per_checkpoint_median']:.3f} | {v['s_per_checkpoint_mean']:.3f} "
                         f"| {v['s_per_checkpoint_last']:.3f} | {v['s_total']:.1f} |")
        b, a = summ["before"], summ["after"]
        lines.append(f"| | | | new / old | {a['mb_per_epoch_mean'] / b['mb_per_epoch_mean']:.2f} | | "
                     f"{a['mb_per_epoch_last'] / b['mb_per_epoch_last']:.2f} | "
                     f"{a['mb_total'] / b['mb_total']:.2f} | "
                     f"{a['s_per_checkpoint_median'] / b['s_per_checkpoint_median']:.2f} | "
                     f"{a['s_per_checkpoint_mean'] / b['s_per_checkpoint_mean']:.2f} | | "
                     f"{a['s_total'] / b['s_total']:.2f} |")
    lines += ["", "Per-epoch rows (bytes, seconds, load) are in `checkpoint.json`."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--data", type=Path, default=Path("/work/bench/escfat"),
                        help="a 2019-layout dataset; only its clip counts are read")
    parser.add_argument("--runs", default="default:30,full:5",
                        help="comma-separated pipeline:epochs-per-step (pipeline: default | full)")
    parser.add_argument("--pipeline", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help="model.name instead of the config's")
    parser.add_argument("--storage", type=Path, default=None, help="where to write (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "checkpoint.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = [round(v, 2) for v in os.getloadavg()]
    runs = [(args.pipeline, args.epochs)] if args.pipeline else \
        [(r.split(":")[0], int(r.split(":")[1])) for r in args.runs.split(",")]
    results = []
    for pipeline, epochs in runs:
        args.pipeline, args.epochs = pipeline, epochs
        res = run(args)
        res["summary"] = summarize(res)
        results.append(res)
        print(json.dumps({"pipeline": pipeline, "epochs": epochs, **res["summary"]}, indent=1))
    meta = {"command": "python " + " ".join(sys.argv[0:1] + sys.argv[1:]),
            "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "platform": platform.platform(),
            "torch": torch.__version__, "load_before": load_before,
            "load_after": [round(v, 2) for v in os.getloadavg()],
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results, meta))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
