"""The sweep report (leaderboard.csv, importance.csv, search.png) from hand-made leaderboards:
no Ray, no training."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from raytag.search.leaderboard import sort_leaderboard
from raytag.search.report import save_report
from raytag.search.space import parse_space

SPACE = """
name: rep
base: {cv.n_folds: 2}
space:
  model.name: {choice: [cnn2d, crnn]}
conditional:
  - when: {model.name: crnn}
    space:
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}
search: {samples: 4, scheduler: fifo, metric: cv_lwlrap}
"""


def board(rows: list[dict]) -> pd.DataFrame:
    """A leaderboard as build_leaderboard makes it, from (status, score, settings) rows."""
    full = [{"trial_id": f"t{i}", "order": i + 1, "reason": "", "cv_map3": math.nan,
             "test_lwlrap": math.nan, "epochs_run": 1, "seconds": 1.0, "outputs_dir": "", **row}
            for i, row in enumerate(rows)]
    return sort_leaderboard(pd.DataFrame(full), keys=["model.name", "train.lr"])


@pytest.mark.parametrize("rows", [
    # every trial failed: no score, no lr
    [{"status": "failed", "reason": "boom", "cv_lwlrap": math.nan, "model.name": "crnn", "train.lr": math.nan}] * 2,
    # finished trials, none of which took the branch that searches the log-scaled lr
    [{"status": "ok", "cv_lwlrap": 0.5, "model.name": "cnn2d", "train.lr": math.nan},
     {"status": "ok", "cv_lwlrap": 0.6, "model.name": "cnn2d", "train.lr": math.nan}],
])
def test_report_without_points_on_a_log_axis_is_written(tmp_path, rows):
    save_report(str(tmp_path), board(rows), parse_space(SPACE))
    assert len(pd.read_csv(tmp_path / "leaderboard.csv")) == 2
    assert (tmp_path / "search.png").stat().st_size > 0  # drawn, with a linear axis for the lr


def test_a_plot_that_cannot_be_drawn_leaves_the_leaderboard_and_a_warning(tmp_path, monkeypatch, caplog):
    import raytag.search.report as report

    def broken(*args):
        raise ValueError("no axis")

    monkeypatch.setattr(report, "plot_search", broken)
    rows = [{"status": "ok", "cv_lwlrap": 0.5, "model.name": "crnn", "train.lr": 1e-3}]
    assert save_report(str(tmp_path), board(rows), parse_space(SPACE)) is None
    assert (tmp_path / "leaderboard.csv").exists() and not (tmp_path / "search.png").exists()
    assert "could not draw search.png (ValueError: no axis)" in caplog.text
