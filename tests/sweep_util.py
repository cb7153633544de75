"""A small search space and fake trial functions, for the tests of the sweep machinery.

A sweep that runs `disk_filling_fit` or `self_killing_fit` ships it to Ray's workers, which cannot import tests/:
register this module with `cloudpickle.register_pickle_by_value(sweep_util)` first."""
from __future__ import annotations

import errno
import math
import os
import signal
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

from raytag.config import ConfigError

LR = {"loguniform": [1.0e-4, 1.0e-2]}
WIDTH = {"choice": [16, 48]}  # the fake trial functions refuse width 48


def fake_space(*, samples: int, scheduler: str, name: str = "fake", epochs: int = 6,
               params: dict | None = None, **search) -> str:
    """The YAML text of a small space: `epochs` fine-tune epochs, `params` searched (train.lr
    and model.width unless given), `samples` trials by `scheduler`, one at a time from seed 0
    unless `search` (the rest of its search section) says otherwise; one half-CPU worker a trial."""
    space = {
        "name": name,
        "base": {"pipeline.finetune.epochs": epochs},
        "space": params if params is not None else {"train.lr": LR, "model.width": WIDTH},
        "search": {"samples": samples, "scheduler": scheduler, "max_concurrent_trials": 1, "seed": 0, **search},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "trial_cpus": 0.25},
    }
    return yaml.safe_dump(space, sort_keys=False, default_flow_style=None)


def lr_score(lr: float) -> float:
    return 1.0 - abs(math.log10(lr) + 3.0) / 2.0  # 1e-3: 1.0, 3e-4: 0.74


def disk_filling_fit(cfg, data, storage, name, callbacks=(), feature_cache=None, progress=True, *,
                     late_rerun_s: float = 0.0):
    """Stands in for fit_pipeline: one report per epoch (rung_score = the trial's score,
    lr_score, at every epoch); width 48 is refused (the trial's own failure); while
    `<data>/disk_full` exists the "checkpoint" write after the second epoch finds the disk full.
    Progress is kept in `<storage>/<name>/epochs` (its checkpoint): a rerun continues from
    there. Each start is logged in `<data>/starts.log` as "name epoch". A rerun of a trial
    scoring under 0.9 first waits `late_rerun_s` (to order the trials' reports after a resume)."""
    run = Path(storage) / name
    run.mkdir(parents=True, exist_ok=True)
    done = int((run / "epochs").read_text()) if (run / "epochs").exists() else 0
    with open(Path(data) / "starts.log", "a") as log:
        log.write(f"{name} {done}\n")
    if cfg.model.width == 48:
        raise ConfigError("model.width: 48 is refused by this fake runner")
    score = lr_score(cfg.train.lr)
    if late_rerun_s and done and score < 0.9:
        time.sleep(late_rerun_s)
    epochs = cfg.pipeline.finetune.epochs
    for epoch in range(done + 1, epochs + 1):
        if epoch == 3 and (Path(data) / "disk_full").exists():
            raise OSError(errno.ENOSPC, "No space left on device", str(run / "checkpoint_000002"))
        (run / "epochs").write_text(str(epoch))
        metrics = {"step": epoch, "stage": "finetune", "fold": 0, "round": 0, "epoch": epoch,
                   "train_loss": 1.0 / epoch, "val_lwlrap": score, "cv_lwlrap": score,
                   "rung_epoch": epoch, "rung_score": score, "pipeline_done": int(epoch == epochs)}
        for cb in callbacks:
            cb.after_report(None, [metrics], None)
    (run / "outputs").mkdir(exist_ok=True)
    return SimpleNamespace(run_dir=str(run), outputs_dir=str(run / "outputs"), stages=None,
                           metrics={"cv_lwlrap": score, "fold_lwlrap": [score], "test_lwlrap": None,
                                    "epochs_run": epochs, "seconds": 1.0})


def self_killing_fit(cfg, data, storage, name, callbacks=(), feature_cache=None, progress=True):
    """Stands in for fit_pipeline training in the trial's process (raytag.training.in_process):
    each epoch's checkpoint is persisted by InProcessWorker as `<storage>/<name>/checkpoint_local_NNNNNN`
    and reported with it, and a rerun of the same name continues from the last one, as
    fit_in_process does. Width 48 is refused (the trial's own failure). While `<data>/kill_once`
    exists, the first trial to checkpoint its epoch 2 deletes it and SIGKILLs its own process
    (the trial's, as the out-of-memory killer would). Each start is logged in `<data>/starts.log`
    as "name epoch pid"."""
    from raytag.training.in_process import InProcessWorker

    worker = InProcessWorker(Path(storage) / name, callbacks)
    latest = worker.checkpoint()
    done = int((Path(latest.path) / "epoch").read_text()) if latest else 0
    with open(Path(data) / "starts.log", "a") as log:
        log.write(f"{name} {done} {os.getpid()}\n")
    if cfg.model.width == 48:
        raise ConfigError("model.width: 48 is refused by this fake runner")
    score = lr_score(cfg.train.lr)
    epochs = cfg.pipeline.finetune.epochs
    for epoch in range(done + 1, epochs + 1):
        metrics = {"step": epoch, "stage": "finetune", "fold": 0, "round": 0, "epoch": epoch,
                   "train_loss": 1.0 / epoch, "val_lwlrap": score, "cv_lwlrap": score,
                   "rung_epoch": epoch, "rung_score": score, "pipeline_done": int(epoch == epochs)}
        with tempfile.TemporaryDirectory() as state:
            (Path(state) / "epoch").write_text(str(epoch))
            worker.report(metrics, Path(state))
        kill = Path(data) / "kill_once"
        if epoch == 2 and kill.exists():
            kill.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
    (Path(storage) / name / "outputs").mkdir(exist_ok=True)
    return SimpleNamespace(run_dir=str(Path(storage) / name), outputs_dir=str(Path(storage) / name / "outputs"),
                           stages=None, metrics={"cv_lwlrap": score, "fold_lwlrap": [score], "test_lwlrap": None,
                                                 "epochs_run": epochs, "seconds": 1.0})
