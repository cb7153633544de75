"""`raytag tune`'s exit status: a sweep in which no trial has a score is a failure (exit 2),
its leaderboard and report still written. run_sweep is replaced: no Ray, no training."""
from __future__ import annotations

import math

import pandas as pd
from typer.testing import CliRunner

import raytag.cli as cli
import raytag.console.sweep as sweep
from raytag.search.space import parse_space
from raytag.search.tuner import SweepResult


def fake_sweep(statuses: list[str], reason: str = "ConfigError: model.width: 48 is refused"):
    rows = [{"rank": i + 1, "trial_id": f"t{i}", "order": i + 1, "status": status,
             "reason": reason if status == "failed" else "", "rank_by": "cv_lwlrap",
             "cv_lwlrap": math.nan if status == "failed" else 0.5, "cv_map3": math.nan,
             "test_lwlrap": math.nan, "epochs_run": 0, "seconds": 1.0, "outputs_dir": ""}
            for i, status in enumerate(statuses)]
    space = parse_space("space: {train.lr: {uniform: [0.001, 0.01]}}\nsearch: {samples: 2, scheduler: fifo}\n")

    def run_sweep(*args, **kwargs):
        return SweepResult(experiment_dir="/nowhere/sweep", leaderboard=pd.DataFrame(rows),
                           plot_path=None, space=space)
    return run_sweep


def tune(monkeypatch, statuses):
    monkeypatch.setattr(sweep, "run_sweep", fake_sweep(statuses))
    reports = []
    monkeypatch.setattr(cli, "_html_report", reports.append)
    result = CliRunner().invoke(cli.app, ["tune", "--space", "s.yaml", "--data", "d"])
    return result, reports


def test_tune_exits_2_when_every_trial_failed(monkeypatch):
    result, reports = tune(monkeypatch, ["failed", "failed"])
    assert result.exit_code == 2, result.output
    assert reports == ["/nowhere/sweep"]  # the report is still written first
    assert "no trial of the sweep has a score (2 trials)" in result.output
    assert "2 x ConfigError: model.width: 48 is refused" in result.output


def test_tune_exits_0_when_a_trial_has_a_score(monkeypatch):
    result, _ = tune(monkeypatch, ["failed", "stopped early"])
    assert result.exit_code == 0, result.output
    assert "no trial of the sweep has a score" not in result.output


def test_tune_passes_the_feature_cache_to_the_sweep(monkeypatch, tmp_path):
    """Trials build and read features where --feature-cache says (an absolute folder),
    where `raytag prepare --feature-cache` put them; without it, each node's default."""
    calls = []
    run = fake_sweep(["ok"])
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **k: calls.append(k) or run(*a, **k))
    monkeypatch.setattr(cli, "_html_report", lambda path: None)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["tune", "--space", "s.yaml", "--data", "d", "--feature-cache", "features"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli.app, ["tune", "--space", "s.yaml", "--data", "d"])
    assert result.exit_code == 0, result.output
    assert [c["feature_cache"] for c in calls] == [str(tmp_path / "features"), None]



def test_resume_of_a_name_with_no_sweep_is_refused_naming_the_sweeps_there(monkeypatch, tmp_path):
    """`tune --name fat2019b --resume` (meant: fat2019) started a new full sweep with one note
    line; now it is refused before Ray starts, naming the sweeps --storage holds. The demo,
    whose first run resumes nothing, starts its sweep (start_if_nothing_to_resume)."""
    from pathlib import Path

    import pytest

    import raytag.search.tuner as tuner

    class RayStarted(Exception):
        pass

    def ray_started():
        raise RayStarted

    monkeypatch.setattr(tuner, "ensure_ray", ray_started)
    space = Path(__file__).resolve().parents[1] / "search_spaces" / "quick.yaml"
    (tmp_path / "data").mkdir()
    storage = tmp_path / "r"
    (storage / "fat2019").mkdir(parents=True)
    (storage / "fat2019" / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    (storage / "notes").mkdir()  # a folder that is no sweep
    result = CliRunner().invoke(cli.app, ["tune", "--space", str(space), "--data", str(tmp_path / "data"),
                                          "--storage", str(storage), "--name", "fat2019b", "--resume"],
                                env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert f"--resume: there is no sweep named 'fat2019b' in {storage} to resume (the sweeps there: fat2019)" in text
    assert "drop --resume to start a new sweep named 'fat2019b'" in text
    assert sorted(p.name for p in storage.iterdir()) == ["fat2019", "notes"]  # nothing written
    with pytest.raises(RayStarted):  # the demo's first run: lenient
        tuner.run_sweep(space, tmp_path / "data", storage=str(storage), name="demo", resume=True,
                        start_if_nothing_to_resume=True)
