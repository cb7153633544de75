"""The leaderboard of a sweep: one row per trial, read back from the experiment folder.

Columns: rank, trial_id, status (ok / stopped early / failed / unfinished), reason,
cv_lwlrap, test_lwlrap (only where the dataset has test labels; reported, never used to
choose), epochs_run, seconds, one column per searched setting (its dotted key), outputs_dir.
Sorted by CV lwlrap (best first, in the space's mode); failed trials last.
"""
from __future__ import annotations

import json
import math
import re
from typing import Optional

import pandas as pd

from raytag import storage as files  # local folder or URI through pyarrow.fs
from raytag.search.space import SearchSpace
from raytag.training.outputs import OUTPUTS_DIR

TRIAL_RESULT = "trial_result.json"  # written by a trial that finished its pipeline (search.tuner)
FIXED_COLUMNS = ["rank", "trial_id", "order", "status", "reason", "cv_lwlrap", "test_lwlrap",
                 "epochs_run", "seconds"]


def build_leaderboard(exp_dir: str, space: Optional[SearchSpace] = None) -> pd.DataFrame:
    """Read every trial of the Tune experiment in `exp_dir` into a sorted DataFrame."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(exp_dir)
    keys = space.param_keys() if space is not None else None
    rows = [{**_row(trial, exp_dir, keys), "order": i} for i, trial in enumerate(analysis.trials, 1)]
    # object dtype keeps whole-number settings whole where a conditional one is missing
    board = pd.DataFrame(rows, dtype=object)
    for col in ("cv_lwlrap", "test_lwlrap", "seconds"):
        if col in board:
            board[col] = board[col].astype(float)
    if "epochs_run" in board:
        board["epochs_run"] = board["epochs_run"].astype(int)
    return sort_leaderboard(board, space.search.mode if space else "max", keys)


def sort_leaderboard(board: pd.DataFrame, mode: str = "max", keys: Optional[list] = None) -> pd.DataFrame:
    if board.empty:
        return pd.DataFrame(columns=FIXED_COLUMNS + ["outputs_dir"])
    failed = board["status"] == "failed"
    score = board["cv_lwlrap"].astype(float)
    board = board.assign(_failed=failed, _score=-score if mode == "max" else score)
    board = board.sort_values(["_failed", "_score", "order"], na_position="last")
    board = board.drop(columns=["_failed", "_score"]).reset_index(drop=True)
    board["rank"] = range(1, len(board) + 1)
    params = keys if keys is not None else [c for c in board.columns if c not in FIXED_COLUMNS + ["outputs_dir"]]
    params = [k for k in params if k in board.columns]
    return board[FIXED_COLUMNS + params + ["outputs_dir"]]


def _row(trial, exp_dir: str, keys: Optional[list]) -> dict:
    last = dict(trial.last_result or {})
    done = _trial_result(exp_dir, trial.trial_id)
    if done:
        last.update(done)  # the pipeline's own summary is the final word
    status, reason = _status(trial, last)
    cv = last.get("cv_lwlrap")
    row = {
        "trial_id": trial.trial_id,
        "status": status,
        "reason": reason,
        "cv_lwlrap": float(cv) if cv is not None and status != "failed" else math.nan,
        "test_lwlrap": _num(last.get("test_lwlrap")),
        # step = the global epoch count the workers report; epochs_run is the final tally
        "epochs_run": int(last.get("epochs_run") or last.get("step") or 0),
        "seconds": round(float(last.get("time_total_s") or last.get("pipeline_seconds") or 0.0), 1),
        "outputs_dir": last.get("outputs_dir") or _outputs_dir(exp_dir, trial.trial_id),
    }
    config = trial.config or {}
    for key in keys if keys is not None else sorted(config):
        value = config.get(key)
        row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return row


def _status(trial, last: dict) -> tuple[str, str]:
    if trial.status == "ERROR":
        return "failed", error_reason(trial)
    if last.get("trial_complete"):
        return "ok", ""
    if trial.status == "TERMINATED":
        epochs = last.get("step", last.get("training_iteration", 0))
        return "stopped early", f"stopped after {epochs} epochs (by the scheduler, or the sweep's epoch budget)"
    return "unfinished", f"Tune status {trial.status} (resume the sweep with --resume)"


_EXC_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Failed|Failure))(?:\([\w.]*\))?: (.+)$")


def error_reason(trial) -> str:
    """The innermost exception line of the trial's error ("ConfigError: train.lr: ...")."""
    text = ""
    # error.txt in the trial's folder in storage; during the sweep it may still be only in
    # the driver's staging folder (trial.error_file, readable while Ray runs)
    for where in (lambda: files.join(trial.path, "error.txt"), lambda: trial.error_file):
        try:
            path = where()
            if path and files.exists(path):
                text = files.read_text(path)
                break
        except Exception:  # noqa: BLE001 - an unreadable error file still leaves the trial failed
            continue
    lines = [m.group(1) + ": " + m.group(2) for m in map(_EXC_LINE.match, text.splitlines()) if m]
    if lines:
        return lines[-1][:300]
    text = text.strip().splitlines()
    return text[-1][:300] if text else "failed (no error message recorded)"


def _trial_result(exp_dir: str, trial_id: str) -> Optional[dict]:
    path = files.join(exp_dir, "trials", trial_id, TRIAL_RESULT)
    try:
        return json.loads(files.read_text(path)) if files.exists(path) else None
    except (OSError, ValueError):
        return None


def _outputs_dir(exp_dir: str, trial_id: str) -> str:
    path = files.join(exp_dir, "trials", trial_id, OUTPUTS_DIR)
    return path if files.exists(path) else ""


def _num(x) -> float:
    try:
        return math.nan if x is None else float(x)
    except (TypeError, ValueError):
        return math.nan
