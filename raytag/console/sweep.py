"""`raytag tune` and `raytag report`: a sweep and its leaderboard."""
from __future__ import annotations

import pandas as pd
from rich.markup import escape

from raytag import storage as files  # local folder or URI through pyarrow.fs
from raytag.config import parse_cli_overrides
from raytag.console import output_console
from raytag.console.feature_cache import feature_cache_option
from raytag.console.tables import print_leaderboard
from raytag.ensemble.noisy_teacher import noisy_teacher_targets
from raytag.errors import os_error_text
from raytag.search.report import PLOT_NAME, read_sweep_board, save_report
from raytag.search.tuner import run_sweep


def tune_command(space, data, storage="results", name=None, samples=None, resume=False, scheduler=None,
                 overrides=(), feature_cache=None):
    """`raytag tune`: run the sweep and print its leaderboard. `feature_cache`: where the
    trials build and read features (None: each node's default, default_feature_cache)."""
    if name is not None:  # "" too: it would mean the space's name
        name = files.check_name(name, "--name")
    cache = feature_cache_option(feature_cache)
    result = run_sweep(space, data, storage=storage, name=name, samples=samples, resume=resume,
                       scheduler=scheduler, settings=parse_cli_overrides(list(overrides)),
                       noisy_teacher=noisy_teacher_targets, feature_cache=cache)
    print_leaderboard(result.leaderboard)
    output_console(stderr=True).print(f"leaderboard: {files.join(result.experiment_dir, 'leaderboard.csv')}"
                               + (f"\nplot: {result.plot_path}" if result.plot_path else ""), highlight=False)
    if not has_scored_trials(result.leaderboard):
        print_no_result(result.leaderboard)
    return result


def has_scored_trials(board: pd.DataFrame) -> bool:
    """Whether any trial finished or was scored before the scheduler stopped it: a sweep
    without one has no result (`raytag tune` then exits 2)."""
    return bool(len(board)) and board["status"].isin(["ok", "stopped early"]).any()


def print_no_result(board: pd.DataFrame) -> None:
    """Why no trial has a score: each distinct reason once, with how many trials it ended."""
    from rich.markup import escape

    reasons = board["reason"].fillna("").replace("", "(no reason recorded)").value_counts()
    lines = [f"  {count} x {escape(str(reason))}" for reason, count in reasons.items()]
    output_console(stderr=True).print(
        f"[bold red]error:[/] no trial of the sweep has a score ({len(board)} trials)"
        + (":\n" + "\n".join(lines) if lines else "")
        + "\nFix the cause above (the space's settings, --data, the cluster) and run a new sweep.",
        soft_wrap=True, highlight=False)


def report_command(experiment: str, storage: str = "results") -> pd.DataFrame:
    """`raytag report EXPERIMENT`: rebuild the leaderboard and plots from the experiment folder."""
    experiment = files.check_name(experiment, "EXPERIMENT")  # "fat2019/", as shell completion gives it
    exp_dir, board, space = read_sweep_board(experiment, storage)
    print_leaderboard(board)  # shown before anything is written: the folder may be read-only
    err = output_console(stderr=True)
    try:
        plot = save_report(exp_dir, board, space)
    except OSError as fault:  # a colleague's sweep, a read-only mount: the leaderboard above is the result
        err.print(f"[yellow]warning:[/] leaderboard.csv and {PLOT_NAME} not rewritten ({escape(os_error_text(fault))}); "
                  "the table above is the sweep's leaderboard", soft_wrap=True, highlight=False)
        return board
    err.print(f"leaderboard: {files.join(exp_dir, 'leaderboard.csv')}" + (f"\nplot: {plot}" if plot else ""),
              highlight=False)
    return board
