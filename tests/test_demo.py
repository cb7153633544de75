"""`raytag demo` on its tiny setting: every layer (data, features, sweep, ensemble, pull,
predict) runs for real, and a second run reuses what the first one made."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from raytag.cli import app

@pytest.mark.ray
@pytest.mark.slow
def test_demo_tiny_runs_every_layer_then_reuses_its_work(ray_session, tmp_path):
    runner = CliRunner()
    first = runner.invoke(app, ["demo", "--tiny", "--out", str(tmp_path)])
    assert first.exit_code == 0, first.output
    summary = json.loads((tmp_path / "demo-tiny" / "demo_summary.json").read_text())
    assert 0 < summary["best_cv_lwlrap"] <= 1
    assert summary["ensemble_cv_lwlrap"] > 0
    assert summary["tagged"] and (tmp_path / "demo-tiny-pulled").is_dir()
    stages = [row["stage"] for row in summary["stages"]]
    assert stages[:2] == ["warmup", "finetune"] and stages[-1].startswith("stage2")
    board = (tmp_path / "demo-tiny" / "leaderboard.csv").read_text()
    assert board.count("\n") >= 3  # header + 2 trials

    trials_before = sorted(p.name for p in (tmp_path / "demo-tiny" / "trials").iterdir())
    second = runner.invoke(app, ["demo", "--tiny", "--out", str(tmp_path)])
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "demo-tiny" / "demo_summary.json").read_text())
    assert sorted(p.name for p in (tmp_path / "demo-tiny" / "trials").iterdir()) == trials_before
    assert again["best_cv_lwlrap"] == pytest.approx(summary["best_cv_lwlrap"])


@pytest.mark.parametrize("samples", ["0", "-1"])
def test_a_bad_samples_count_is_refused_before_the_demo_data_is_made(tmp_path, monkeypatch, samples):
    """`raytag demo --samples 0` wrote about 1000 clips and built their features before the
    sweep refused the count (and a rerun ignored it)."""
    import raytag.demo

    monkeypatch.setattr(raytag.demo, "make_demo_dataset", lambda *a, **k: pytest.fail("made the data first"))
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--samples", samples], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert f"--samples {samples}: give the number of trials of a new demo sweep, at least 1" in result.output
    assert not any(tmp_path.iterdir())


def test_an_empty_out_is_refused_before_the_demo_data_is_made(tmp_path, monkeypatch):
    """`raytag demo --out ""` (an unset shell variable) filled the current folder."""
    import raytag.demo

    monkeypatch.setattr(raytag.demo, "make_demo_dataset", lambda *a, **k: pytest.fail("made the data first"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--out", ""], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "--out '': empty; give the folder for the demo's data and results" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("given, expected", [("~/demo-out", "home/demo-out"), ("file://{tmp}/uri-out", "uri-out")])
def test_out_is_read_as_the_other_folder_options_read_it(tmp_path, monkeypatch, given, expected):
    """`--out ~/x` was the folder "./~/x" and `--out file:///x` the folder "./file:/x"; like
    --feature-cache and make-demo-data's OUT, "~" is expanded and a file:// URI is its path."""
    from raytag.demo import demo_folder

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert demo_folder(given.format(tmp=tmp_path)) == tmp_path / expected


@pytest.mark.parametrize("out, said", [("  ", "--out '  ': empty; give the folder for the demo's data"),
                                       ("s3://bucket/demo", "--out s3://bucket/demo: a URI, but the demo writes")])
def test_a_blank_or_remote_out_is_refused_before_the_demo_data_is_made(tmp_path, monkeypatch, out, said):
    """A blank --out would be a folder named by spaces; an s3:// one the local folder "s3:"."""
    import raytag.demo

    monkeypatch.setattr(raytag.demo, "make_demo_dataset", lambda *a, **k: pytest.fail("made the data first"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--out", out], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert said in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())
