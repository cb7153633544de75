"""The scheduler a sweep may use: ASHA or FIFO. HyperBand is refused for a new sweep wherever
it is chosen (the space file's search.scheduler, `raytag tune --scheduler`), with what to
use instead; a sweep stored with it still loads (its --resume and `raytag report`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raytag.config import ConfigError
from raytag.search.space import SpaceError, load_space, parse_space, with_fixed_settings, with_search_overrides

from sweep_util import LR, fake_space


def _space_text(scheduler: str) -> str:
    return fake_space(name="hb", params={"train.lr": LR}, samples=4, scheduler=scheduler,
                      grace_period=2, reduction_factor=2)


def _space_file(tmp_path: Path, scheduler: str) -> Path:
    path = tmp_path / f"{scheduler}.yaml"
    path.write_text(_space_text(scheduler))
    return path


def test_a_space_file_with_hyperband_is_refused_with_what_to_use(tmp_path):
    with pytest.raises(SpaceError, match=r"search\.scheduler: hyperband .*grace_period.*use asha \(or fifo\)"):
        load_space(_space_file(tmp_path, "hyperband"))


def test_the_command_line_s_hyperband_is_refused(tmp_path):
    space = load_space(_space_file(tmp_path, "asha"))
    with pytest.raises(SpaceError, match=r"^--scheduler hyperband: .*use asha \(or fifo\)"):
        with_search_overrides(space, {"--scheduler": ("scheduler", "hyperband")})
    assert with_search_overrides(space, {"--scheduler": ("scheduler", "fifo")}).search.scheduler == "fifo"


def test_build_scheduler_refuses_hyperband():
    from raytag.search.tuner import build_scheduler

    space = parse_space(_space_text("asha"))
    with pytest.raises(SpaceError, match="use asha"):
        build_scheduler(space, "hyperband")


def test_a_stored_sweep_that_used_hyperband_still_loads(tmp_path):
    """What --resume and `raytag report` read: the stored space.yaml, parsed as stored."""
    stored = parse_space(_space_text("hyperband"), source="results/hb/space.yaml")
    assert stored.search.scheduler == "hyperband"
    with pytest.raises(SpaceError, match="no longer offered"):  # but --set makes a new sweep's space
        with_fixed_settings(stored, {"cv.n_folds": 3})


def test_run_sweep_refuses_hyperband_before_anything_starts(tmp_path, monkeypatch):
    import raytag.search.tuner as tuner

    def no_ray():
        raise AssertionError("the sweep started Ray with a scheduler it should have refused")

    monkeypatch.setattr(tuner, "ensure_ray", no_ray)
    (tmp_path / "data").mkdir()
    for space, args in ((_space_file(tmp_path, "asha"), {"scheduler": "hyperband"}),
                        (_space_file(tmp_path, "hyperband"), {})):
        with pytest.raises(ConfigError, match="use asha"):  # a SpaceError, which the CLI prints
            tuner.run_sweep(space, tmp_path / "data", storage=str(tmp_path / "r"), **args)
    assert not (tmp_path / "r").exists()


def test_a_resumed_hyperband_sweep_reads_its_stored_space(tmp_path):
    """A sweep started with hyperband before it was refused: resumed_space reads it back."""
    from raytag.search.tuner import resumed_space

    exp = tmp_path / "r" / "hb"
    exp.mkdir(parents=True)
    text = _space_text("hyperband")
    (exp / "space.yaml").write_text(text)
    (exp / "sweep.json").write_text(json.dumps({
        "search": {"samples": 4, "scheduler": "hyperband", "max_concurrent_trials": 1, "metric": "cv_lwlrap"},
        "settings": {}, "data": str(tmp_path / "data")}))
    notes = []
    space = resumed_space(str(exp), parse_space(text), space_path=str(tmp_path / "hb.yaml"), name="hb",
                          data=str(tmp_path / "data"), samples=None, scheduler=None, settings=None,
                          say=notes.append)
    assert space.search.scheduler == "hyperband"


def test_cli_help_offers_only_asha_and_fifo():
    from raytag.cli import app

    result = CliRunner().invoke(app, ["tune", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "asha | fifo (default: from the space)" in text and "asha | fifo | hyperband" not in text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "--scheduler asha|fifo|hyperband" not in readme
