"""`raytag train` prints one line per epoch while the worker group trains (issue 13):
the time-left estimate, the line's format, and a real tiny run through the command line
whose lines match the run's own history; --quiet leaves only the tables."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from raytag.cli import app
from raytag.console.train import duration, epoch_line
from raytag.training.progress import EpochEvent, EtaClock, MembersEta, epoch_event, step_units
from raytag.training.steps import Step

STEPS = [Step("warmup", None, epochs=2), Step("finetune", 0, epochs=3), Step("filter", 0),
         Step("stage2", 0, round=0, epochs=2)]

LINE = re.compile(r"^(?P<stage>\S+)\s+(?P<fold>all folds|fold \d+/\d+)\s+epoch\s+(?P<epoch>\d+)/(?P<epochs>\d+)\s+"
                  r"loss (?P<loss>\S+)\s+val lwlrap (?P<lwlrap>\S+)\s+(?P<seconds>\S+) s\s+"
                  r"(?P<eta>ETA .+|last epoch)$", re.M)


def _row(step_index: int, step_epoch: int, seconds: float) -> dict:
    """A worker report row, as much of it as the clock and the events read."""
    step = STEPS[step_index]
    return {"stage": step.stage_name, "step_index": step_index, "step_epoch": step_epoch,
            "step_epochs": step.epochs, "wall_seconds": seconds, "train_loss": 0.07, "val_lwlrap": 0.4}


def test_eta_is_what_is_left_of_each_kind_times_its_mean_time():
    clock = EtaClock(STEPS)
    # one warm-up epoch of 10 s seen: everything borrows it; 1 warm-up + 3 fine-tune epochs,
    # 1 filter step and 2 stage-2 epochs left
    assert clock.update(_row(0, 1, 10.0)) == pytest.approx(70.0)
    # warm-up mean 15 s, nothing else seen yet: 3 + 1 + 2 units at 15 s
    assert clock.update(_row(0, 2, 20.0)) == pytest.approx(90.0)
    # fine-tune at 5 s an epoch (2 left); the filter and stage 2 borrow the mean of all (35 / 3)
    assert clock.update(_row(1, 1, 5.0)) == pytest.approx(2 * 5.0 + 3 * 35.0 / 3)
    clock.update(_row(1, 2, 5.0))
    clock.update(_row(1, 3, 5.0))
    # the filter step took 30 s: it counts in its own kind, not in the epochs' means
    assert clock.update(_row(2, 0, 30.0)) == pytest.approx(2 * (10 + 20 + 3 * 5 + 30) / 6)
    clock.update(_row(3, 1, 8.0))
    assert clock.update(_row(3, 2, 8.0)) == 0.0


def test_a_members_run_s_eta_adds_the_members_still_to_train():
    assert step_units(STEPS) == 2 + 3 + 1 + 2  # the filter step counts as one unit
    eta = MembersEta([8, 8, 4])
    event = EpochEvent(stage="finetune", fold=0, n_folds=5, epoch=1, epochs=3, train_loss=0.1,
                       val_lwlrap=0.4, seconds=10.0, eta_seconds=30.0)
    # member 0: its own 30 s, plus 8 + 4 units of the later members at the 10 s seen so far
    assert eta.event(0, event).eta_seconds == pytest.approx(30.0 + 12 * 10.0)
    # member 1's epoch took 30 s: the mean of the epochs seen (40 / 2) prices member 2's 4 units
    assert eta.event(1, replace(event, seconds=30.0, eta_seconds=50.0)).eta_seconds == pytest.approx(50.0 + 4 * 20.0)
    # the last member's events keep their own estimate, and "last epoch" stays the last
    seen: list[EpochEvent] = []
    last = eta.on_epoch(2, seen.append)
    last(replace(event, eta_seconds=0.0))
    assert seen[0].eta_seconds == 0.0 and seen[0].stage == "finetune"


def test_a_row_that_trained_nothing_makes_no_event():
    assert epoch_event(_row(2, 0, 30.0), STEPS, 5, 10.0) is None  # the filter step
    event = epoch_event(_row(1, 3, 4.0), STEPS, 5, 8.0)
    assert (event.stage, event.fold, event.n_folds, event.epoch, event.epochs) == ("finetune", 0, 5, 3, 3)
    assert (event.seconds, event.eta_seconds, event.train_loss, event.val_lwlrap) == (4.0, 8.0, 0.07, 0.4)


def test_the_epoch_line_reads_as_the_issue_asks():
    event = EpochEvent(stage="finetune", fold=0, n_folds=5, epoch=12, epochs=30, train_loss=0.07123,
                       val_lwlrap=0.5414, seconds=21.31, eta_seconds=580)
    line = epoch_line(event)
    assert re.sub(r"\s+", " ", line) == "finetune fold 1/5 epoch 12/30 loss 0.0712 val lwlrap 0.541 21.3 s ETA 9m 40s"
    assert "all folds" in epoch_line(EpochEvent(**{**event.__dict__, "fold": None}))
    assert epoch_line(EpochEvent(**{**event.__dict__, "eta_seconds": 0.0})).endswith("last epoch")
    assert [duration(s) for s in (0.3, 7.4, 65, 3600 + 5 * 60 + 9)] == ["<1s", "7s", "1m 05s", "1h 05m"]


def test_on_the_2018_layout_the_epoch_line_shows_map3_beside_lwlrap():
    """A 2018 run's rows carry val_map3 (its task's score); a 2019 row has none, and its line stays as it was."""
    row = {**_row(1, 3, 4.0), "val_map3": 0.6123}
    event = epoch_event(row, STEPS, 5, 8.0)
    assert event.val_map3 == 0.6123 and epoch_event(_row(1, 3, 4.0), STEPS, 5, 8.0).val_map3 is None
    assert re.sub(r"\s+", " ", epoch_line(event)) == \
        "finetune fold 1/5 epoch 3/3 loss 0.0700 val lwlrap 0.400 MAP@3 0.612 4.0 s ETA 8s"
    assert LINE.match(epoch_line(epoch_event(_row(1, 3, 4.0), STEPS, 5, 8.0)))  # 2019: no MAP@3


TINY = {
    "name": "lines",
    "features": {"n_mels": 32, "hop_length": 320},
    "model": {"name": "cnn2d", "width": 8, "depth": 2, "params": {"hidden": 0}},
    "train": {"crop_seconds": 1.0, "batch_size": 32, "lr": 3e-3, "num_workers": 1, "cpus_per_worker": 1},
    "cv": {"n_folds": 3, "folds": [0]},
    "inference": {"overlap": 0.0},
    "pipeline": {"warmup": {"epochs": 1}, "finetune": {"epochs": 2},
                 "filter": {"enabled": False}, "pseudo": {"enabled": False}},
}


@pytest.fixture(scope="module")
def train_cli(ray_session, demo_data, tmp_path_factory):
    """`raytag train` on the tiny config: (its output, its run's history.csv, the config file, storage)."""
    out = tmp_path_factory.mktemp("train_cli")
    config = out / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--data", str(demo_data),
                                      "--storage", str(out / "results")],
                                env={"RAYTAG_CACHE": str(out / "cache"), "COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    history = pd.read_csv(out / "results" / "lines" / "outputs" / "history.csv")
    return result.output, history, config, out


@pytest.mark.ray
def test_train_prints_one_line_per_epoch_matching_the_runs_history(train_cli):
    output, history, _, _ = train_cli
    lines = [m.groupdict() for m in LINE.finditer(output)]
    assert [(x["stage"], x["fold"], x["epoch"], x["epochs"]) for x in lines] == [
        ("warmup", "all folds", "1", "1"), ("finetune", "fold 1/3", "1", "2"), ("finetune", "fold 1/3", "2", "2")]
    assert [float(x["loss"]) for x in lines] == pytest.approx(history["train_loss"].tolist(), abs=1e-4)
    assert [float(x["lwlrap"]) for x in lines] == pytest.approx(history["val_lwlrap"].tolist(), abs=1e-3)
    # printed to 0.1 s: off by up to half of that, and 1.45 may print as 1.4 (binary floats)
    assert [float(x["seconds"]) for x in lines] == pytest.approx(history["wall_seconds"].tolist(), abs=0.051)
    # an epoch of the tiny config can take under 0.05 s on a fast machine and print as 0.0 s,
    # so the measured times are checked where they are kept unrounded
    assert (history["wall_seconds"] > 0).all()
    assert [x["eta"].startswith("ETA") for x in lines] == [True, True, False]  # the last says "last epoch"
    # the lines come while training, before the final tables
    assert output.index("last epoch") < output.index("CV lwlrap by fold")


@pytest.mark.ray
def test_a_one_family_run_saves_an_artifact_of_its_fold_models(train_cli):
    from raytag.ensemble.artifact import load_artifact

    output, _, _, out = train_cli
    run_dir = out / "results" / "lines"
    assert f"artifact (for raytag predict / serve): {run_dir / 'artifact'}" in " ".join(output.split())
    art = load_artifact(run_dir / "artifact")
    assert [m.name for m in art.members] == [TINY["model"]["name"]] and art.combiner == "mean"
    assert len(art.members[0].models) == len(list((run_dir / "outputs" / "weights").glob("fold*.safetensors")))


@pytest.mark.ray
def test_quiet_prints_no_epoch_line_but_the_tables(train_cli, demo_data, monkeypatch):
    """--quiet: the command asks the library for no epoch events (the run itself is the
    one above; a second worker group would only cost time)."""
    import raytag.console.train as train_console
    from raytag.training.runner import PipelineResult

    _, history, config, out = train_cli
    run_dir = out / "results" / "lines"
    metrics = {"cv_lwlrap": 0.5, "fold_lwlrap": {"0": 0.5}, "test_lwlrap": None}
    finished = PipelineResult(str(run_dir), str(run_dir / "outputs"), metrics,
                              pd.read_csv(run_dir / "outputs" / "stages.csv"))
    event = EpochEvent("finetune", 0, 3, 1, 2, 0.1, 0.5, 1.0, 1.0)

    def fake_fit(cfg, data, storage, name, on_epoch=None, noisy_teacher=None, feature_cache=None):
        if on_epoch is not None:
            on_epoch(event)
        return finished

    monkeypatch.setattr(train_console, "fit_pipeline", fake_fit)
    args = ["train", "--config", str(config), "--data", str(demo_data), "--storage", str(out / "results")]
    loud = CliRunner().invoke(app, args)
    quiet = CliRunner().invoke(app, [*args, "--quiet"])
    assert loud.exit_code == 0 and quiet.exit_code == 0, loud.output + quiet.output
    assert len(LINE.findall(loud.output)) == 1
    assert not LINE.search(quiet.output) and "CV lwlrap by fold" in quiet.output


def test_a_set_that_a_member_sets_itself_is_noted():
    from raytag.config import Config
    from raytag.console.train import members_keep_their_own

    cfg = Config.from_yaml("configs/default.yaml")
    notes = members_keep_their_own(cfg, {"train.lr": 3e-4, "train.mixup": {"alpha": 0.2}, "seed": 1})
    assert notes == [f"--set train.lr: member {m} sets train.lr itself (0.002), so the override does not reach it"
                     for m in ("vgg_small", "vgg_pcen")] + [
                     f"--set train.mixup: member {m} sets train.mixup.alpha itself (0.3), so the override does "
                     "not reach it" for m in ("vgg_small", "vgg_pcen")]
    assert members_keep_their_own(cfg.with_overrides({"members": []}), {"train.lr": 3e-4}) == []


@pytest.mark.parametrize("family", [[], ["--set", "members=[]"]], ids=["members", "one family"])
def test_train_builds_and_reads_features_in_the_feature_cache_given(tmp_path, monkeypatch, family):
    """--feature-cache reaches the run (fit_members or fit_pipeline) as an absolute folder,
    so that a cache `raytag prepare --feature-cache` filled is the one read."""
    import raytag.console.train as train_console
    from raytag.errors import RaytagError

    seen = []

    def fake_fit(cfg, data, storage, name, feature_cache=None, **kwargs):
        seen.append(feature_cache)
        raise RaytagError("stopped by the test")

    for name in ("fit_members", "fit_pipeline"):
        monkeypatch.setattr(train_console, name, fake_fit)
    monkeypatch.setattr(train_console, "ensure_ray", lambda: None)
    monkeypatch.setattr(train_console, "check_storage", lambda storage: None)
    monkeypatch.setattr(train_console, "check_data", lambda data: None)
    config = Path("configs/default.yaml").resolve()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--data", str(tmp_path), *family,
                                      "--feature-cache", "features"])
    assert "stopped by the test" in result.output, result.output
    assert seen == [str(tmp_path / "features")] and (tmp_path / "features").is_dir()
    # the header names every member's front end, not only the config's own
    assert ("on logmel, 5 fold(s)" if family else "on logmel and pcen, 5 fold(s)") in result.output, result.output


def test_a_members_line_names_its_front_end():
    from raytag.config import Config
    from raytag.console.train import member_model

    lines = [member_model(c) for _, c in Config.from_yaml("configs/default.yaml").member_configs()]
    assert lines == ["resnet18 width 32 on 64 mels", "vgg_small width 16 on 64 mels", "vgg_small width 16 on 64 PCEN mels"]

