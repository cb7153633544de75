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


BAD_NAMES = ["", "a/b", ".."]
NAMED = {  # command line -> the option its name is given as
    "train": (["train", "--config", "{cfg}", "--data", "{data}", "--storage", "{st}", "--name", "{bad}"], "--name"),
    "tune": (["tune", "--space", "{cfg}", "--data", "{data}", "--storage", "{st}", "--name", "{bad}"], "--name"),
    "report": (["report", "{bad}", "--storage", "{st}"], "EXPERIMENT"),
    "ensemble": (["ensemble", "{bad}", "--storage", "{st}"], "EXPERIMENT"),
    "ensemble --with": (["ensemble", "quick", "--storage", "{st}", "--with", "{bad}"], "--with"),
    "pull": (["pull", "{bad}", "--storage", "{st}", "--to", "{data}/to"], "EXPERIMENT"),
    "distill": (["distill", "{bad}", "--storage", "{st}"], "EXPERIMENT"),
}


def _no_ray():
    raise AssertionError("started Ray with a name that is refused")


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("command", list(NAMED))
def test_a_name_that_is_not_one_folder_under_storage_is_refused(command, bad, tmp_path, monkeypatch):
    """`raytag report ''` read the storage itself, `report ../other/sweep` another storage's
    sweep, and `train/tune --name ../x` would write outside --storage: every name is one folder."""
    import raytag.console.train
    import raytag.search.tuner

    monkeypatch.setattr(raytag.console.train, "ensure_ray", _no_ray)
    monkeypatch.setattr(raytag.search.tuner, "ensure_ray", _no_ray)
    (tmp_path / "st").mkdir()
    cfg = tmp_path / "run.yaml"
    cfg.write_text("name: run\n")
    args, option = NAMED[command]
    fill = dict(cfg=str(cfg), data=str(tmp_path), st=str(tmp_path / "st"), bad=bad)
    result = CliRunner().invoke(app, [a.format(**fill) for a in args], env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert f"error: {option} {bad!r}:" in text and "give a name such as" in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml", "st"] and not any((tmp_path / "st").iterdir())


@pytest.mark.parametrize("command", list(NAMED))
def test_an_empty_storage_is_refused_not_read_as_the_current_folder(command, tmp_path, monkeypatch):
    """`--storage "$UNSET"`: report and ensemble looked for the experiment in the current folder and
    train would have written its run there."""
    import raytag.console.train
    import raytag.search.tuner

    monkeypatch.setattr(raytag.console.train, "ensure_ray", _no_ray)
    monkeypatch.setattr(raytag.search.tuner, "ensure_ray", _no_ray)
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("name: run\n")
    args, _ = NAMED[command]
    fill = dict(cfg=str(cfg), data=str(tmp_path), st="", bad="run")
    result = CliRunner().invoke(app, [a.format(**fill) for a in args], env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert "error: --storage '': empty; give the folder or URI that holds the experiments" in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]


def test_train_refuses_a_config_whose_name_is_a_path(tmp_path, monkeypatch):
    import raytag.console.train

    monkeypatch.setattr(raytag.console.train, "ensure_ray", _no_ray)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("name: ../elsewhere\n")
    result = CliRunner().invoke(app, ["train", "--config", str(cfg), "--data", str(tmp_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert f"{cfg}: name '../elsewhere'" in " ".join(result.output.split())


def test_tune_refuses_a_space_whose_name_is_a_path(tmp_path, monkeypatch):
    """Without --name a sweep is named by its space's `name:`; `../x` made its folder beside --storage."""
    import raytag.search.tuner

    monkeypatch.setattr(raytag.search.tuner, "ensure_ray", _no_ray)
    space = tmp_path / "s.yaml"
    space.write_text("name: ../escaped\nspace: {train.lr: {loguniform: [1.0e-4, 1.0e-3]}}\n"
                     "search: {samples: 2, scheduler: fifo}\n")
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(app, ["tune", "--space", str(space), "--data", str(tmp_path / "data"),
                                      "--storage", str(tmp_path / "st" / "res")], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert f"{space}: name '../escaped'" in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "s.yaml"]  # no sweep folder anywhere


def test_a_file_system_error_is_one_line_naming_the_file(monkeypatch):
    """Backstop: an OSError no command turned into a RaytagError prints `error: <file>: <reason>`
    and exits 2, with no traceback."""
    import errno

    def denied(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/results/quick/leaderboard.csv")

    monkeypatch.setattr(raytag.console.ensemble, "pull_command", denied)
    result = CliRunner().invoke(app, ["pull", "quick", "--storage", "/srv/results", "--to", "got"])
    assert result.exit_code == 2, result.output
    assert "error: /srv/results/quick/leaderboard.csv: Permission denied" in result.output
    assert "Traceback" not in result.output


def _stored_sweep(storage, name="demo"):
    import pandas as pd

    exp = storage / name
    exp.mkdir(parents=True)
    (exp / "space.yaml").write_text(f"name: {name}\nspace:\n  train.lr: {{uniform: [0.001, 0.01]}}\n"
                                    "search: {samples: 2, scheduler: fifo}\n")
    pd.DataFrame([{"rank": 1, "trial_id": "t1", "status": "ok", "reason": "", "rank_by": "cv_lwlrap",
                   "cv_lwlrap": 0.5, "test_lwlrap": None, "epochs_run": 3, "seconds": 10.0, "outputs_dir": "",
                   "train.lr": 0.004}]).to_csv(exp / "leaderboard.csv", index=False)


def test_a_name_with_a_trailing_slash_is_the_folder_itself(tmp_path):
    """`raytag report demo/` (shell completion; `aws s3 ls` prints `PRE demo/`) was refused as a path."""
    _stored_sweep(tmp_path / "r")
    plain, slashed = (CliRunner().invoke(app, ["report", name, "--storage", str(tmp_path / "r")], env={"COLUMNS": "300"})
                      for name in ("demo", "demo/"))
    assert plain.exit_code == slashed.exit_code == 0, slashed.output
    assert "t1" in slashed.output and slashed.output == plain.output


def test_a_name_that_is_a_path_is_told_to_point_storage_at_its_parent(tmp_path):
    _stored_sweep(tmp_path / "r" / "team")
    result = CliRunner().invoke(app, ["report", "team/demo", "--storage", str(tmp_path / "r")], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "point --storage at the folder that holds it: --storage <storage>/team with the name demo" in " ".join(
        result.output.split())
    moved = CliRunner().invoke(app, ["report", "demo", "--storage", str(tmp_path / "r" / "team")], env={"COLUMNS": "300"})
    assert moved.exit_code == 0 and "t1" in moved.output, moved.output  # as the message says
