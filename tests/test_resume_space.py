"""`raytag tune --resume` runs the space the sweep stored (its space.yaml), so it must not need
the space file as it is now: one moved, deleted, no longer valid, or now searching a key that
the start's --set fixed still resumes, with a note that the stored space is used."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from raytag.search.space import SpaceError, load_space, with_fixed_settings

from sweep_util import LR, WIDTH, fake_space

FAKE = dict(samples=4, scheduler="asha", grace_period=2, reduction_factor=2, startup_trials=3)
FAKE_SPACE = fake_space(**FAKE)
SETTINGS = {"cv.n_folds": 3}


class _Resumed(Exception):
    """Raised where the resume would start Tune; carries the space it would run."""


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    """A started sweep named fake in tmp/r (what Tuner.can_restore and the resume read), begun
    with --set cv.n_folds=3; run_sweep stopped where it would start Tune."""
    import raytag.search.tuner as tuner

    notes = []
    monkeypatch.setattr(tuner, "_printer", lambda enabled: notes.append)
    for name in ("ensure_ray", "check_storage", "check_data"):
        monkeypatch.setattr(tuner, name, lambda *a, **k: None)

    def resumed(space, requested):
        raise _Resumed(space)

    monkeypatch.setattr(tuner, "concurrency", resumed)
    path = tmp_path / "fake.yaml"
    path.write_text(FAKE_SPACE)
    (tmp_path / "data").mkdir()
    exp = tmp_path / "r" / "fake"
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"")
    (exp / "space.yaml").write_text(with_fixed_settings(load_space(path), SETTINGS).text)
    (exp / "sweep.json").write_text(json.dumps({
        "search": {"samples": 4, "scheduler": "asha", "max_concurrent_trials": 1, "metric": "cv_lwlrap"},
        "settings": SETTINGS, "data": str(tmp_path / "data")}))

    def resume(**kwargs):
        with pytest.raises(_Resumed) as caught:
            tuner.run_sweep(path, tmp_path / "data", storage=str(tmp_path / "r"), resume=True, **kwargs)
        return caught.value.args[0]

    return path, exp, notes, resume


def test_a_resume_needs_no_space_file(sweep):
    path, exp, notes, resume = sweep
    path.unlink()  # moved or deleted since the start
    space = resume(settings=SETTINGS)
    assert space.text == (exp / "space.yaml").read_text() and space.base["cv.n_folds"] == 3
    assert any("cannot be used now" in n and "search space not found" in n and "space.yaml" in n
               for n in notes), notes


def test_a_resume_of_a_space_file_that_now_searches_a_set_key(sweep):
    """The user repeats the start command, --set and all, but the file now searches cv.n_folds."""
    path, exp, notes, resume = sweep
    searched = {"train.lr": LR, "cv.n_folds": {"choice": [2, 3]}, "model.width": WIDTH}
    path.write_text(fake_space(**FAKE, params=searched))
    space = resume(settings=SETTINGS)
    assert space.base["cv.n_folds"] == 3 and "cv.n_folds" not in space.param_keys()
    assert any("cannot be used now" in n and "--set cv.n_folds" in n for n in notes), notes


def test_a_resume_of_a_space_file_that_no_longer_loads(sweep):
    path, exp, notes, resume = sweep
    path.write_text(fake_space(**FAKE, params={"train.lrr": LR, "model.width": WIDTH}))  # a key renamed
    space = resume()
    assert space.param_keys() == ["train.lr", "model.width"]


def test_a_resume_of_an_unchanged_file_says_nothing_about_it(sweep):
    path, exp, notes, resume = sweep
    resume(settings=SETTINGS)
    assert not any("space file" in n or "changed since" in n for n in notes), notes



@pytest.mark.parametrize("damage, says", [
    ('{"search": {"samples": 4, "sched', "not valid JSON"),  # cut short: a full disk when the sweep started
    (None, "missing, or without the sweep's search settings"),
])
def test_a_resume_with_a_damaged_sweep_record_names_it_and_what_to_do(sweep, damage, says):
    """A damaged sweep.json ended `tune --resume` in a JSONDecodeError (a missing one, in a
    FileNotFoundError) traceback; now a RaytagError names the file and what to do."""
    from raytag.errors import RaytagError

    path, exp, notes, resume = sweep
    record = exp / "sweep.json"
    if damage is None:
        record.unlink()
    else:
        record.write_text(damage)
    with pytest.raises(RaytagError) as caught:
        resume()
    text = str(caught.value)
    assert text.startswith(f"{record}: {says}")
    assert "restore the file from a copy, or start a new sweep under another --name" in text

def test_without_a_sweep_to_resume_the_file_s_error_stands(tmp_path, monkeypatch):
    import raytag.search.tuner as tuner

    def no_ray():
        raise AssertionError("started Ray without a space to run")

    monkeypatch.setattr(tuner, "ensure_ray", no_ray)
    (tmp_path / "data").mkdir()
    with pytest.raises(SpaceError, match=r"(?s)search space not found.*no sweep named 'gone'.*--name"):
        tuner.run_sweep(tmp_path / "gone.yaml", tmp_path / "data", storage=str(tmp_path / "r"), resume=True)
    with pytest.raises(SpaceError, match="search space not found"):  # a new sweep: as before
        tuner.run_sweep(tmp_path / "gone.yaml", tmp_path / "data", storage=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- the rung metric a resume keeps
def _trial_setup_of(sweep, monkeypatch, layout: str, **kwargs):
    """The TrialSetup a run of the `sweep` fixture's space makes on `layout` data (resume=True
    by default), stopped there."""
    import ray.tune
    import raytag.search.tuner as tuner

    path, exp, notes, resume = sweep
    monkeypatch.setattr(tuner, "detect_layout", lambda data: layout)
    monkeypatch.setattr(tuner, "concurrency", lambda space, requested: (1, ""))

    def setup_made(**fields):
        raise _Resumed(fields)

    monkeypatch.setattr(tuner, "TrialSetup", setup_made)
    monkeypatch.setattr(ray.tune.Tuner, "can_restore", staticmethod(lambda exp_dir: (Path(exp_dir) / "tuner.pkl").exists()))
    with pytest.raises(_Resumed) as caught:
        tuner.run_sweep(path, path.parent / "data", storage=str(exp.parent), **{"resume": True, **kwargs})
    return caught.value.args[0]


def test_a_2018_sweep_by_lwlrap_started_before_rung_metrics_were_recorded_keeps_map3(sweep, monkeypatch):
    """a38fbf4 made a 2018 sweep by cv_lwlrap score its rungs in lwlrap; one started before it
    and resumed after mixed its recorded MAP@3 rungs (ASHA's replay, Optuna) with lwlrap ones."""
    path, exp, notes, resume = sweep
    assert "rung_metric" not in json.loads((exp / "sweep.json").read_text())  # as such a sweep stored it
    assert _trial_setup_of(sweep, monkeypatch, "fsd2018")["rung_metric"] is None  # the layout's: MAP@3
    assert any("rung_score) in map3 as when it started, not in lwlrap" in n for n in notes), notes


def test_a_resumed_sweep_keeps_the_rung_metric_it_recorded(sweep, monkeypatch):
    path, exp, notes, resume = sweep
    started = json.loads((exp / "sweep.json").read_text())
    (exp / "sweep.json").write_text(json.dumps({**started, "rung_metric": "lwlrap"}))
    assert _trial_setup_of(sweep, monkeypatch, "fsd2018")["rung_metric"] == "lwlrap"
    assert not any("rung_score" in n for n in notes), notes


def test_a_new_sweep_records_its_rung_metric(sweep, monkeypatch):
    import ray.tune
    import raytag.search.tuner as tuner

    path, exp, notes, resume = sweep
    path.write_text(fake_space(**FAKE, metric="cv_lwlrap"))
    (exp / "tuner.pkl").unlink()  # nothing to resume: a new sweep
    (exp / "sweep.json").unlink()
    monkeypatch.setattr(ray.tune, "with_parameters", lambda trainable, **kw: trainable)  # no Ray object store
    monkeypatch.setattr(ray.tune, "with_resources", lambda trainable, resources: trainable)

    def searcher_built(space, trials_dir):
        raise _Resumed(json.loads((exp / "sweep.json").read_text()))

    monkeypatch.setattr(tuner, "build_searcher", searcher_built)
    monkeypatch.setattr(tuner, "concurrency", lambda space, requested: (1, ""))
    for layout, recorded in (("fsd2018", "lwlrap"), ("fat2019", None)):
        monkeypatch.setattr(tuner, "detect_layout", lambda data: layout)
        with pytest.raises(_Resumed) as caught:
            tuner.run_sweep(path, path.parent / "data", storage=str(exp.parent))
        assert caught.value.args[0]["rung_metric"] == recorded
        (exp / "sweep.json").unlink()
