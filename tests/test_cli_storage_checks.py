"""`raytag distill` refuses a URI --storage before any work, and `raytag ensemble` of a
`raytag train` run (no leaderboard) writes no report page and warns about none."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

import raytag.console.ensemble
import raytag.ensemble.distill as distill_module
import raytag.report_html
from raytag.cli import app
from raytag.errors import RaytagError


def _no_bucket(*args, **kwargs):
    raise AssertionError("looked in the bucket before refusing the URI")


def test_distill_refuses_a_uri_before_reading_it(monkeypatch):
    monkeypatch.setattr(distill_module, "experiment_artifact", _no_bucket)
    with pytest.raises(RaytagError, match="use a local --storage"):
        distill_module.distill("s3://bucket/raytag/quick")


def test_distill_command_refuses_a_uri_storage(monkeypatch):
    monkeypatch.setattr(distill_module, "experiment_artifact", _no_bucket)
    result = CliRunner().invoke(app, ["distill", "quick", "--storage", "s3://bucket/raytag"])
    assert result.exit_code == 2, result.output
    assert "use a local --storage" in result.output


def test_ensemble_of_a_train_run_writes_no_report(monkeypatch, tmp_path):
    monkeypatch.setattr(raytag.console.ensemble, "ensemble_command", lambda **kwargs: None)
    written = []
    monkeypatch.setattr(raytag.report_html, "write_report_html", lambda exp_dir: written.append(exp_dir) or "r.html")
    (tmp_path / "default").mkdir()  # a train run: no leaderboard.csv
    result = CliRunner().invoke(app, ["ensemble", "default", "--storage", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert written == [] and "report.html not written" not in result.output

    (tmp_path / "quick").mkdir()  # a sweep: its leaderboard is there
    (tmp_path / "quick" / "leaderboard.csv").write_text("rank\n1\n")
    result = CliRunner().invoke(app, ["ensemble", "quick", "--storage", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(written) == 1 and written[0].endswith("quick")
