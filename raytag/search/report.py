"""Sweep report: leaderboard.csv, importance.csv and search.png (the ranking metric, cv_map3
on FSDKaggle2018 and cv_lwlrap on FSDKaggle2019, over trials and against the most important
settings); `read_sweep_board` reads a finished sweep's leaderboard for `raytag report EXPERIMENT`
(which shows it, then redraws them with `save_report`).

Importance is Optuna's fANOVA (`optuna.importance.get_param_importances`) on a study
rebuilt from the finished trials; it needs a few trials with a score, so a tiny sweep
falls back to the space's order of settings (and says so in the plot).
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import warnings
from typing import Optional

import pandas as pd

from raytag.errors import RaytagError
from raytag import storage as files  # local folder or URI through pyarrow.fs
from raytag.search.leaderboard import board_metric, build_leaderboard
from raytag.search.space import SearchSpace, parse_space
from raytag.training.outputs import MEMBERS_DIR, METRICS, OUTPUTS_DIR, STAGES
from raytag.training.run_settings import SETTINGS_FILE

PLOT_NAME = "search.png"
SWEEP_RECORD = "sweep.json"  # written by raytag.search.tuner when a sweep starts
TOP_SETTINGS = 3


def param_importance(board: pd.DataFrame, space: SearchSpace) -> Optional[pd.Series]:
    """fANOVA importance of each setting over the finished trials; None if too few.
    (A stopped trial's score is a partial one, not comparable with the out-of-fold scores.)"""
    import optuna

    metric = board_metric(board)
    scored = board[(board["status"] == "ok") & board[metric].notna()]
    if len(scored) < 3:
        return None
    dists = key_distributions(space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")  # every metric is higher-is-better (space.py)
    for _, row in scored.iterrows():
        params = {}
        for key, dist in dists.items():
            if key not in row or _missing(row[key]):
                continue
            value = row[key]
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                value = _as_choice(value, dist.choices)
                if value is None:
                    continue
            elif not _holds(dist, value):  # e.g. a value edited into leaderboard.csv
                continue
            params[key] = value
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=float(row[metric])))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "few trials" warnings: the plot says how many
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):  # e.g. no setting varies across the scored trials
        return None
    return pd.Series(imp, name="importance") if imp else None


def key_distributions(space: SearchSpace) -> dict:
    """One Optuna distribution per searched key, covering every range the key can take.

    A key may be searched in several conditional blocks (pipeline.filter.threshold over
    [0.3, 0.8] when clip_lwlrap, over [0.2, 0.6] when min_prob); space.py lets their ranges
    differ (Optuna samples each block's own), but a rebuilt study takes one distribution per
    name, and a trial's value must lie in it: so the lowest low to the highest high, with the
    blocks' step where they share one grid (else unquantized: every value is a float / an int)."""
    import optuna.distributions as d

    by_key: dict = {}
    for p in space.params():
        by_key.setdefault(p.key, []).append(p.optuna_distribution())
    out = {}
    for key, dists in by_key.items():
        first = dists[0]
        if len(dists) == 1 or isinstance(first, d.CategoricalDistribution):
            out[key] = first  # one choice list per key (space.py refuses two)
            continue
        low, high = min(x.low for x in dists), max(x.high for x in dists)
        steps = {x.step for x in dists}
        step = steps.pop() if len(steps) == 1 else None
        if step is not None and not all(_on_grid(x.low, low, step) for x in dists):
            step = None
        if step is not None:  # Optuna wants high on the grid (it would move it, with a warning)
            high = low + math.floor((high - low) / step + 1e-9) * step
        if isinstance(first, d.IntDistribution):
            out[key] = d.IntDistribution(int(low), int(high), log=first.log, step=int(step or 1))
        else:
            out[key] = d.FloatDistribution(low, high, log=first.log, step=step)
    return out


def _on_grid(value: float, low: float, step: float) -> bool:
    k = (value - low) / step
    return abs(k - round(k)) < 1e-8


def _holds(dist, value) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (TypeError, ValueError):
        return False


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _as_choice(value, choices):
    """A value read back from a CSV or a decoded JSON choice -> the Optuna choice."""
    for c in choices:
        if c == value or str(c) == str(value) or (isinstance(value, (list, dict)) and c == json.dumps(value)):
            return c
    return None


def running_best(order: pd.DataFrame, metric: str) -> pd.Series:
    """The best finished trial's score so far, trial by trial in start order (NaN before the
    first): stopped and unfinished trials have partial scores, which are not results."""
    return order[metric].where(order["status"] == "ok").cummax().ffill()


def plot_search(board: pd.DataFrame, space: SearchSpace, importance: Optional[pd.Series]) -> bytes:
    """PNG: the ranking metric by trial (running best line) and against the top settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    metric = board_metric(board)
    keys = list(importance.index[:TOP_SETTINGS]) if importance is not None else space.param_keys()[:TOP_SETTINGS]
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(4.2 * (1 + len(keys)), 3.6), squeeze=False)
    axes = axes[0]

    order = board.sort_values("order").reset_index(drop=True)
    ax = axes[0]
    styles = {"ok": ("o", "C0"), "stopped early": ("x", "0.5"), "unfinished": ("s", "C2")}
    for status, (marker, colour) in styles.items():
        part = order[order["status"] == status]
        ax.scatter(part.index + 1, part[metric], marker=marker, color=colour, label=status)
    failed = order[order["status"] == "failed"]
    if len(failed):
        lo = order[metric].min()
        ax.scatter(failed.index + 1, [0 if math.isnan(lo) else lo] * len(failed), marker="v",
                   color="C3", label="failed")
    ax.step(order.index + 1, running_best(order, metric), where="post", color="k", lw=1, label="best so far")
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel(metric)
    ax.set_title(f"{space.name}: {len(board)} trials")
    ax.legend(fontsize=7)

    scored = board[board["status"].isin(["ok", "stopped early"])]
    by_key = {p.key: p for p in space.params()}
    for ax, key in zip(axes[1:], keys):
        part = scored[[key, metric, "status"]].dropna() if key in scored else scored.iloc[0:0]
        p = by_key.get(key)
        if p is not None and p.kind != "choice":
            for status, (marker, colour) in styles.items():
                s = part[part["status"] == status]
                ax.scatter(s[key].astype(float), s[metric], marker=marker, color=colour)
            # a log axis with no positive point raises (every trial failed, or none took
            # the `when` branch that searches this key)
            if p.kind == "loguniform" and (part[key].astype(float) > 0).any():
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            labels = sorted(part[key].astype(str).unique())
            pos = {v: i for i, v in enumerate(labels)}
            ax.scatter(part[key].astype(str).map(pos), part[metric], color="C0", alpha=0.7)
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        imp = f" (importance {importance[key]:.2f})" if importance is not None and key in importance else ""
        ax.set_title(f"{key}{imp}", fontsize=8)
        ax.set_ylabel(metric)
    if importance is None and keys:
        fig.text(0.99, 0.01, "too few scored trials for importance; settings in space order",
                 ha="right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def save_report(exp_dir: str, board: pd.DataFrame, space: SearchSpace) -> Optional[str]:
    """Write leaderboard.csv, importance.csv (when computed) and search.png; returns the plot path."""
    files.write_text(files.join(exp_dir, "leaderboard.csv"), board.to_csv(index=False))
    if board.empty:
        return None
    try:
        importance = param_importance(board, space)
    except Exception as err:  # noqa: BLE001 - importance is extra too: plot without it
        logging.getLogger(__name__).warning("could not compute the settings' importance (%s: %s); "
                                            "%s shows them in the space's order", type(err).__name__, err,
                                            PLOT_NAME)
        importance = None
    if importance is not None:
        files.write_text(files.join(exp_dir, "importance.csv"),
                         importance.rename_axis("setting").reset_index().to_csv(index=False))
    try:
        png = plot_search(board, space, importance)
    except Exception as err:  # noqa: BLE001 - the plot is extra: the leaderboard is the result
        logging.getLogger(__name__).warning("could not draw %s (%s: %s); leaderboard.csv is written",
                                            PLOT_NAME, type(err).__name__, err)
        return None
    path = files.join(exp_dir, PLOT_NAME)
    files.write_bytes(path, png)
    return path


def _refuse_a_train_run(experiment: str, exp_dir: str) -> None:
    """`raytag report` of a `raytag train` run: say what it is and where its tables are."""
    if not any(files.exists(files.join(exp_dir, mark)) for mark in (SETTINGS_FILE, OUTPUTS_DIR, MEMBERS_DIR)):
        return
    outputs = files.join(exp_dir, OUTPUTS_DIR)
    state = "" if files.exists(files.join(outputs, STAGES)) else " (once it has finished)"
    raise RaytagError(f"'{experiment}' is a `raytag train` run, not a sweep: it has no leaderboard. Its tables "
                      f"are in {files.join(outputs, STAGES)} and {files.join(outputs, METRICS)}{state}; "
                      "`raytag report` is for `raytag tune` sweeps")


def read_sweep_board(experiment: str, storage: str = "results") -> tuple[str, pd.DataFrame, SearchSpace]:
    """A sweep's leaderboard read from its experiment folder, writing nothing (a colleague's
    sweep or a read-only mount can be shown): (experiment folder, board, space)."""
    exp_dir = files.join(files.absolute(storage), experiment)
    space_file = files.join(exp_dir, "space.yaml")
    if not files.exists(space_file):
        _refuse_a_train_run(experiment, exp_dir)
        raise RaytagError(f"no sweep named '{experiment}' in {storage} ({space_file} is missing); "
                          "check the name and --storage")
    space = parse_space(files.read_text(space_file), source=space_file, default_name=experiment)
    stored = _stored_metric(exp_dir)  # the metric the sweep resolved ("auto" -> the layout's)
    if stored:
        space.search = dataclasses.replace(space.search, metric=stored)
    try:
        board = build_leaderboard(exp_dir, space)
    except Exception as err:  # noqa: BLE001 - Tune's state unreadable: fall back to the saved CSV
        csv = files.join(exp_dir, "leaderboard.csv")
        if not files.exists(csv):
            raise RaytagError(f"cannot read the sweep in {exp_dir}: {err}") from err
        try:
            board = pd.read_csv(io.StringIO(files.read_text(csv)))
        except ValueError as bad:  # empty (a disk that filled), not text, not a table
            raise RaytagError(f"cannot read the sweep in {exp_dir}: {err}; and its {csv} is empty or "
                              f"unreadable ({bad})") from bad
    return exp_dir, board, space


def read_sweep_record(exp_dir: str, action: str) -> dict:
    """The experiment's sweep.json (how `raytag tune` started it: its dataset, the metric it
    resolved), {} where there is none; a damaged one is a RaytagError ending in `action`."""
    path = files.join(exp_dir, SWEEP_RECORD)
    if not files.exists(path):
        return {}
    try:
        record = json.loads(files.read_text(path))
    except ValueError as err:  # not JSON (a write cut short), not UTF-8
        raise RaytagError(f"{path}: not valid JSON ({err}); {action}") from err
    if not isinstance(record, dict):
        raise RaytagError(f"{path}: not a sweep record (a JSON object); {action}")
    return record


def _stored_metric(exp_dir: str) -> Optional[str]:
    """The metric sweep.json records; a damaged record is only warned about: the leaderboard
    is still shown, ranked by the space's metric."""
    try:
        search = read_sweep_record(exp_dir, "ranking by the space's metric").get("search")
    except RaytagError as err:
        logging.getLogger(__name__).warning("%s", err)
        return None
    return search.get("metric") if isinstance(search, dict) else None
