"""Rich tables of results: the stage table of a run and a sweep's leaderboard."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from raytag.search.leaderboard import board_metric

# stages.csv column -> short console heading (the CSV keeps every column)
_STAGE_COLUMNS = {"stage": "stage", "folds": "folds", "cv_lwlrap": "CV", "test_lwlrap": "test",
                  "n_accepted": "accepted", "filter_precision": "prec.", "filter_recall": "recall",
                  "n_pseudo": "pseudo"}


def stage_table(stages: pd.DataFrame):
    """lwlrap by stage, with the filter's accepted count and precision/recall and the
    pseudo-labelled count where they apply (averaged over folds)."""
    table = Table(title="lwlrap by stage (CV on out-of-fold clips; test only reported); filter precision/recall")
    cols = [c for c in _STAGE_COLUMNS if c in stages.columns and stages[c].notna().any()]
    for col in cols:
        table.add_column(_STAGE_COLUMNS[col], justify="left" if col == "stage" else "right", no_wrap=True)
    for _, row in stages.iterrows():
        table.add_row(*[_stage_cell(row[c]) for c in cols])
    return table


def _stage_cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else f"{v:.3f}" if abs(v) <= 1 else f"{v:.0f}"
    return str(v)


def print_leaderboard(board: pd.DataFrame, top: int = 20) -> None:
    """The best `top` rows as a table; failed trials' reasons listed under it."""
    fixed = {"rank", "trial_id", "order", "status", "reason", "rank_by", "cv_lwlrap", "cv_map3",
             "test_lwlrap", "epochs_run", "seconds", "outputs_dir"}
    params = [c for c in board.columns if c not in fixed]
    metric = board_metric(board)
    # the ranking metric first; lwlrap beside it (MAP@3 only where the trials have it)
    scores = list(dict.fromkeys([metric, "cv_lwlrap"]
                                + (["cv_map3"] if "cv_map3" in board and board["cv_map3"].notna().any() else [])))
    table = Table(title=f"leaderboard ({len(board)} trials ranked by {metric}, best {min(top, len(board))} shown)")
    for col in ["#", "trial", "status", *(c.replace("_", " ") for c in scores), "test lwlrap", "epochs", "time s"]:
        table.add_column(col, no_wrap=True)
    for col in params:  # the last part of a dotted key is enough to recognise it
        table.add_column(col.rsplit(".", 1)[-1], overflow="fold")
    for _, r in board.head(top).iterrows():
        table.add_row(
            str(r["rank"]), str(r["trial_id"]), str(r["status"]), *[_board_cell(r[c]) for c in scores],
            _board_cell(r["test_lwlrap"]), str(r["epochs_run"]), f"{float(r['seconds']):.0f}",
            *[_board_cell(r[c]) for c in params],
        )
    console = Console(width=None if Console().is_terminal else 160)
    console.print(table)
    for _, r in board[board["status"] == "failed"].iterrows():
        console.print(f"trial {r['trial_id']} failed: {r['reason']}", highlight=False)


def _board_cell(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4g}" if isinstance(x, float) else str(x)
