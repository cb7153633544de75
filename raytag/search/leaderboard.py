"""The leaderboard of a sweep: one row per trial, read back from the experiment folder.

Columns: rank, trial_id, status (ok / stopped early / failed / unfinished), reason,
rank_by (the metric the rows are ranked by: cv_map3 on FSDKaggle2018, cv_lwlrap on
FSDKaggle2019, or the space's search.metric), cv_lwlrap, cv_map3 (2018 layout only),
test_lwlrap (only where the dataset has test labels; reported, never used to choose),
epochs_run, seconds, one column per searched setting (its dotted key), outputs_dir.
Sorted by status (finished trials, then those stopped early with the score they had
reached, then unfinished, then failed) and within it by `rank_by`, best first.
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
# written by a trial that failed for a reason of its own (not the storage's): its reason, and the
# mark that `--resume` must not train it again (search.tuner)
TRIAL_FAILURE = "trial_failure.json"
FIXED_COLUMNS = ["rank", "trial_id", "order", "status", "reason", "rank_by", "cv_lwlrap", "cv_map3",
                 "test_lwlrap", "epochs_run", "seconds"]
SCORE_COLUMNS = ("cv_lwlrap", "cv_map3", "test_lwlrap")
# a trial stopped early has only a partial score: it ranks after every finished trial
_STATUS_ORDER = {"ok": 0, "stopped early": 1, "unfinished": 2, "failed": 3}


def build_leaderboard(exp_dir: str, space: Optional[SearchSpace] = None) -> pd.DataFrame:
    """Read every trial of the Tune experiment in `exp_dir` into a sorted DataFrame."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(exp_dir)
    keys = space.param_keys() if space is not None else None
    rows = [{**_row(trial, exp_dir, keys), "order": i} for i, trial in enumerate(analysis.trials, 1)]
    # object dtype keeps whole-number settings whole where a conditional one is missing
    board = pd.DataFrame(rows, dtype=object)
    for col in (*SCORE_COLUMNS, "seconds"):
        if col in board:
            board[col] = board[col].astype(float)
    if "epochs_run" in board:
        board["epochs_run"] = board["epochs_run"].astype(int)
    metric = rank_metric(board, space.search.metric if space else "auto")
    return sort_leaderboard(board, space.search.mode if space else "max", keys, metric=metric)


def rank_metric(board: pd.DataFrame, metric: str = "auto") -> str:
    """The column a leaderboard ranks by: `metric`, or for "auto" (a sweep whose resolved
    metric was not stored) cv_map3 where the trials reported it (the 2018 layout), else cv_lwlrap."""
    if metric != "auto":
        return metric
    has_map3 = "cv_map3" in board and board["cv_map3"].astype(float).notna().any()
    return "cv_map3" if has_map3 else "cv_lwlrap"


def board_metric(board: pd.DataFrame) -> str:
    """The metric a leaderboard (also one read back from leaderboard.csv) is ranked by."""
    if "rank_by" in board and len(board) and isinstance(board["rank_by"].iloc[0], str):
        return board["rank_by"].iloc[0]
    return "cv_lwlrap"  # leaderboards written before rank_by existed


def sort_leaderboard(board: pd.DataFrame, mode: str = "max", keys: Optional[list] = None,
                     metric: str = "cv_lwlrap") -> pd.DataFrame:
    if board.empty:
        return pd.DataFrame(columns=FIXED_COLUMNS + ["outputs_dir"])
    for col in SCORE_COLUMNS:
        if col not in board:
            board = board.assign(**{col: math.nan})
    group = board["status"].map(_STATUS_ORDER).fillna(len(_STATUS_ORDER))
    score = board[metric].astype(float)
    board = board.assign(_group=group, _score=-score if mode == "max" else score, rank_by=metric)
    board = board.sort_values(["_group", "_score", "order"], na_position="last")
    board = board.drop(columns=["_group", "_score"]).reset_index(drop=True)
    board["rank"] = range(1, len(board) + 1)
    params = keys if keys is not None else [c for c in board.columns if c not in FIXED_COLUMNS + ["outputs_dir"]]
    params = [k for k in params if k in board.columns]
    return board[FIXED_COLUMNS + params + ["outputs_dir"]]


def _row(trial, exp_dir: str, keys: Optional[list]) -> dict:
    last = dict(trial.last_result or {})
    done = _trial_result(exp_dir, trial.trial_id)
    if done:
        last.update(done)  # the pipeline's own summary is the final word
    status, reason = _status(trial, last, exp_dir)
    row = {
        "trial_id": trial.trial_id,
        "status": status,
        "reason": reason,
        # a failed trial's last score is no result
        **{key: _num(last.get(key)) if status != "failed" else math.nan for key in ("cv_lwlrap", "cv_map3")},
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


def _status(trial, last: dict, exp_dir: str) -> tuple[str, str]:
    if trial.status == "ERROR":
        return "failed", recorded_failure(exp_dir, trial.trial_id) or error_reason(trial)
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
    return reason_from_text(text)


def reason_from_text(text: str) -> str:
    """The innermost exception line of a traceback's text."""
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


def recorded_failure(exp_dir: str, trial_id: str) -> Optional[str]:
    """The reason a trial recorded when it failed for a reason of its own (None: it did not)."""
    path = files.join(exp_dir, "trials", trial_id, TRIAL_FAILURE)
    try:
        return json.loads(files.read_text(path))["reason"] if files.exists(path) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _outputs_dir(exp_dir: str, trial_id: str) -> str:
    path = files.join(exp_dir, "trials", trial_id, OUTPUTS_DIR)
    return path if files.exists(path) else ""


def _num(x) -> float:
    try:
        return math.nan if x is None else float(x)
    except (TypeError, ValueError):
        return math.nan
