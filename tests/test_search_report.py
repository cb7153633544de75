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


def test_best_and_importance_come_from_finished_trials_only():
    """A stopped or unfinished trial's score is partial: not the sweep's best, not in the
    best-so-far line, not in the importance fit."""
    from raytag.search.report import param_importance, running_best
    from raytag.search.tuner import SweepResult

    space = parse_space(SPACE.replace("model.name: {choice: [cnn2d, crnn]}",
                                      "model.name: {choice: [cnn2d, crnn]}\n  train.weight_decay: {uniform: [0.0, 0.1]}"))
    rows = [{"status": "stopped early", "cv_lwlrap": 0.9, "model.name": "crnn", "train.lr": 1e-3, "train.weight_decay": 0.01},
            {"status": "ok", "cv_lwlrap": 0.5, "model.name": "cnn2d", "train.lr": math.nan, "train.weight_decay": 0.02},
            {"status": "unfinished", "cv_lwlrap": 0.8, "model.name": "crnn", "train.lr": 2e-3, "train.weight_decay": 0.03},
            {"status": "ok", "cv_lwlrap": 0.6, "model.name": "crnn", "train.lr": 3e-3, "train.weight_decay": 0.04},
            {"status": "stopped early", "cv_lwlrap": 0.7, "model.name": "cnn2d", "train.lr": math.nan, "train.weight_decay": 0.05}]
    ranked = board(rows)
    order = ranked.sort_values("order").reset_index(drop=True)
    assert running_best(order, "cv_lwlrap").tolist()[1:] == [0.5, 0.5, 0.6, 0.6]
    assert math.isnan(running_best(order, "cv_lwlrap").iloc[0])
    assert param_importance(ranked, space) is None  # two finished trials: too few for fANOVA
    result = SweepResult(experiment_dir="x", leaderboard=ranked, plot_path=None, space=space)
    assert result.best["trial_id"] == "t3"
    unfinished = ranked[ranked["status"] != "ok"]
    assert SweepResult(experiment_dir="x", leaderboard=unfinished, plot_path=None, space=space).best is None


@pytest.mark.parametrize("finished", [True, False])
def test_report_of_a_train_run_says_what_it_is_and_where_its_tables_are(tmp_path, finished):
    """`raytag report NAME` on a `raytag train` run said "no sweep named NAME ... check the name"."""
    from raytag.errors import RaytagError
    from raytag.search.report import read_sweep_board

    run = tmp_path / "r" / "quick"
    (run / "outputs").mkdir(parents=True)
    (run / "run_settings.json").write_text("{}")
    if finished:
        (run / "outputs" / "stages.csv").write_text("stage,cv_lwlrap\nfinal,0.5\n")
    with pytest.raises(RaytagError, match=r"'quick' is a `raytag train` run, not a sweep: .* tables are in "
                                          rf".*quick/outputs/stages.csv and .*metrics.json{'' if finished else ' .once'}"):
        read_sweep_board("quick", storage=str(tmp_path / "r"))
    with pytest.raises(RaytagError, match="no sweep named 'other'"):
        read_sweep_board("other", storage=str(tmp_path / "r"))


def test_report_of_a_read_only_sweep_prints_the_leaderboard_and_warns(tmp_path, monkeypatch):
    """`raytag report` of a colleague's sweep or a read-only mount: the leaderboard is shown,
    then a warning that its files were not rewritten, and the exit code is 0."""
    import errno

    from typer.testing import CliRunner

    from raytag import storage
    from raytag.cli import app

    exp = tmp_path / "r" / "rep"
    exp.mkdir(parents=True)
    (exp / "space.yaml").write_text(SPACE)
    rows = [{"status": "ok", "cv_lwlrap": 0.5, "model.name": "crnn", "train.lr": 1e-3},
            {"status": "ok", "cv_lwlrap": 0.6, "model.name": "cnn2d", "train.lr": math.nan}]
    (exp / "leaderboard.csv").write_text(board(rows).to_csv(index=False))  # no Tune state: read from the CSV
    before = (exp / "leaderboard.csv").read_bytes()

    def read_only(path, data):
        raise PermissionError(errno.EPERM, "Operation not permitted", f"{exp}/.leaderboard.csv.0.tmp")

    monkeypatch.setattr(storage, "write_bytes", read_only)
    result = CliRunner().invoke(app, ["report", "rep", "--storage", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    table = result.output.index("leaderboard (2 trials")
    warning = result.output.index("warning: leaderboard.csv and search.png not rewritten")
    assert table < warning and "Operation not permitted" in result.output and "Traceback" not in result.output
    assert (exp / "leaderboard.csv").read_bytes() == before


def _sweep_folder(root, leaderboard: bytes):
    """A sweep folder with no Tune state: its leaderboard is read from leaderboard.csv."""
    exp = root / "r" / "rep"
    exp.mkdir(parents=True)
    (exp / "space.yaml").write_text(SPACE)
    (exp / "leaderboard.csv").write_bytes(leaderboard)
    return exp


def test_report_with_a_damaged_sweep_json_warns_and_shows_the_leaderboard(tmp_path, caplog):
    from typer.testing import CliRunner

    from raytag.cli import app

    rows = [{"status": "ok", "cv_lwlrap": 0.5, "model.name": "crnn", "train.lr": 1e-3}]
    exp = _sweep_folder(tmp_path, board(rows).to_csv(index=False).encode())
    (exp / "sweep.json").write_text("{nope")
    result = CliRunner().invoke(app, ["report", "rep", "--storage", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "leaderboard (1 trials" in result.output
    assert "sweep.json: not valid JSON" in caplog.text and "ranking by the space's metric" in caplog.text


def test_report_of_an_empty_leaderboard_without_tune_state_is_one_error(tmp_path):
    from typer.testing import CliRunner

    from raytag.cli import app

    _sweep_folder(tmp_path, b"")
    result = CliRunner().invoke(app, ["report", "rep", "--storage", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "cannot read the sweep in" in result.output and "leaderboard.csv is empty or unreadable" in result.output
