"""Rich tables of results: the stage table of a run and a sweep's leaderboard."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from raytag.console import output_console
from raytag.search.leaderboard import board_metric

# stages.csv column -> short console heading (the CSV keeps every column)
_STAGE_COLUMNS = {"stage": "stage", "folds": "folds", "cv_lwlrap": "CV", "cv_map3": "CV MAP@3",
                  "test_lwlrap": "test", "n_accepted": "accepted", "filter_precision": "prec.",
                  "filter_recall": "recall", "n_pseudo": "pseudo"}
_SCORE_HEADINGS = {"lwlrap": "lwlrap", "map3": "MAP@3"}  # a fold table's score columns
_COUNT_COLUMNS = {"folds", "n_accepted", "n_pseudo"}  # averaged over folds, shown as whole clips


def stage_table(stages: pd.DataFrame):
    """lwlrap by stage (and MAP@3 on the 2018 layout), with the filter's accepted count and
    precision/recall and the pseudo-labelled count where they apply (averaged over folds)."""
    cols = [c for c in _STAGE_COLUMNS if c in stages.columns and stages[c].notna().any()]
    with_map3 = "cv_map3" in cols
    scores = ("lwlrap and MAP@3 by stage (CV on out-of-fold clips; test lwlrap only reported)" if with_map3
              else "lwlrap by stage (CV on out-of-fold clips; test only reported)")
    table = Table(title=f"{scores}; filter precision/recall")
    rows = [[_stage_cell(row[c], c) for c in cols] for _, row in stages.iterrows()]
    for i, col in enumerate(cols):
        heading = "CV lwlrap" if with_map3 and col == "cv_lwlrap" else _STAGE_COLUMNS[col]  # beside CV MAP@3
        if col == "stage":  # a long stage name wraps
            table.add_column(heading, overflow="fold")
        else:  # a number is never cut ("0.6…" at 80 columns, piped): its heading wraps instead
            widest = max([len(r[i]) for r in rows], default=1)
            table.add_column(heading, justify="right", overflow="fold", min_width=widest)
    for cells in rows:
        table.add_row(*cells)
    return table


def fold_table(metrics: dict):
    """A run's CV lwlrap by fold and overall (out-of-fold); MAP@3 beside it where the run
    has it (the 2018 layout; "-" for a fold whose MAP@3 the metrics do not hold)."""
    names = ["lwlrap"] + (["map3"] if metrics.get("cv_map3") is not None else [])
    table = Table(title="CV lwlrap and MAP@3 by fold" if "map3" in names else "CV lwlrap by fold")
    table.add_column("fold")
    for name in names:
        table.add_column(_SCORE_HEADINGS[name], justify="right")
    for fold in metrics["fold_lwlrap"]:
        table.add_row(str(fold), *[_score_cell((metrics.get(f"fold_{n}") or {}).get(fold)) for n in names])
    table.add_row("[bold]overall (OOF)[/]", *[f"[bold]{_score_cell(metrics[f'cv_{n}'])}[/]" for n in names])
    return table


def _score_cell(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _stage_cell(v, col: str = "") -> str:
    if isinstance(v, (float, np.floating, int, np.integer)) and np.isnan(v):
        return ""
    if col in _COUNT_COLUMNS:
        return f"{float(v):.0f}"
    if isinstance(v, (float, np.floating)):
        return f"{v:.3f}" if abs(v) <= 1 else f"{v:.0f}"
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
    console = output_console()
    console.print(table)
    for _, r in board[board["status"] == "failed"].iterrows():
        # escape: a reason quoting a path ("[/tmp/x]") is text, not rich markup
        console.print(f"trial {escape(str(r['trial_id']))} failed: {escape(str(r['reason']))}", highlight=False)


def _board_cell(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4g}" if isinstance(x, float) else escape(str(x))  # a parameter's text, not markup
