"""One process writes a run folder at a time: a second `raytag train` of the same name and
storage is refused by the run folder's lock (storage.folder_lock) before it reads the dataset
or writes anything; a members run's member and a sweep's trial still train under the lock
their parent folder holds. A run that fails before it writes anything removes the run folder
it made for its lock, and keeps one that was there or that it wrote into."""
from __future__ import annotations

import json
import os

import pytest

from raytag.config import Config
from raytag.errors import DatasetError, StorageError
from raytag.storage import LOCK_NAME, LockHeld, folder_lock

from lock_util import lock_held_elsewhere
from raytag.training import runner



class _PastTheLock(Exception):
    """Raised where the run would load its dataset: the lock let it through."""


@pytest.fixture
def stop_past_the_lock(monkeypatch):
    def prepare_data(*args, **kwargs):
        raise _PastTheLock()

    monkeypatch.setattr(runner, "prepare_data", prepare_data)


@pytest.fixture
def live_holder(tmp_path):
    """Another process (a first `raytag train --name run`) holding the lock of <tmp>/res/run."""
    run_dir = tmp_path / "res" / "run"
    with lock_held_elsewhere(run_dir, "run 'first'") as pid:
        yield run_dir, pid


def test_a_second_run_of_one_name_is_refused_before_it_reads_or_writes(tmp_path, live_holder, stop_past_the_lock):
    run_dir, pid = live_holder
    with pytest.raises(LockHeld, match=rf"run 'run' \({run_dir}\) is in use: .*held by pid {pid} on host"
                                       r".*and rerun to resume the run"):
        runner.fit_pipeline(Config.from_dict({}), tmp_path / "data", str(tmp_path / "res"), "run", progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # nothing of the first run touched
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == pid


def test_the_lock_is_held_while_the_run_works_and_released_after(tmp_path, monkeypatch):
    run_dir = tmp_path / "res" / "run"
    seen = {}

    def prepare_data(*args, **kwargs):
        seen["lock"] = json.loads((run_dir / LOCK_NAME).read_text())
        raise _PastTheLock()

    monkeypatch.setattr(runner, "prepare_data", prepare_data)
    with pytest.raises(_PastTheLock):
        runner.fit_pipeline(Config.from_dict({}), tmp_path / "data", str(tmp_path / "res"), "run", progress=False)
    assert seen["lock"]["pid"] == os.getpid()
    assert not (run_dir / LOCK_NAME).exists()  # a failed run leaves no lock: its rerun resumes


def test_a_member_trains_under_its_members_runs_lock(tmp_path, stop_past_the_lock):
    """Each folder has its own lock file: this process holding the members run's folder (as
    its artifact save does) does not block a member's run in members/<member>/, nor does a
    sweep's lock on its experiment folder block a trial folder under it."""
    run_dir = tmp_path / "res" / "both"
    with folder_lock(run_dir, "the members run"):
        with pytest.raises(_PastTheLock):
            runner.fit_pipeline(Config.from_dict({}), tmp_path / "data", str(run_dir / "members"), "cnn2d",
                                progress=False)
        with pytest.raises(_PastTheLock):
            runner.fit_pipeline(Config.from_dict({}), tmp_path / "data", str(run_dir / "trials"), "trial_1",
                                progress=False)
        assert (run_dir / LOCK_NAME).exists()  # the parent's lock is left as it was
    assert not list(run_dir.rglob(LOCK_NAME))


def test_a_tune_trial_takes_no_lock_of_its_own(tmp_path, live_holder, stop_past_the_lock, monkeypatch):
    """A trial's folder is under its sweep's locked experiment folder; a lock of its own could
    only outlive a lost node and fail the trial when the sweep is resumed on another host."""
    run_dir, _ = live_holder
    monkeypatch.setattr(runner, "_in_tune_trial", lambda: True)
    with pytest.raises(_PastTheLock):
        runner.fit_pipeline(Config.from_dict({}), tmp_path / "data", str(tmp_path / "res"), "run", progress=False)


def test_in_tune_trial_is_false_outside_tune():
    assert runner._in_tune_trial() is False


# ----------------------------------------------------------------------------- a run that fails to start
def _fit_on(data, storage, name="run"):
    runner.fit_pipeline(Config.from_dict({}), data, str(storage), name, progress=False,
                        feature_cache=str(storage.parent / "cache"))


def test_a_run_whose_data_fails_to_load_leaves_no_run_folder(tmp_path):
    """An empty data folder (no known layout): the DatasetError is raised as it was, and the
    run folder the call made for its lock is gone, not left empty for `raytag list` or a resume."""
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetError, match="no known dataset layout"):
        _fit_on(tmp_path / "data", tmp_path / "res")
    assert not (tmp_path / "res" / "run").exists()


def test_a_run_folder_that_was_there_or_was_written_to_is_kept(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    empty, earlier = tmp_path / "res" / "empty", tmp_path / "res" / "earlier"
    empty.mkdir(parents=True)
    earlier.mkdir()
    (earlier / "run_settings.json").write_text("{}")
    for run_dir in (empty, earlier):
        with pytest.raises(DatasetError):
            _fit_on(tmp_path / "data", tmp_path / "res", run_dir.name)
    assert sorted(p.name for p in empty.iterdir()) == []
    assert sorted(p.name for p in earlier.iterdir()) == ["run_settings.json"]

    def prepare_data(*args, **kwargs):  # a run that wrote into its new folder before it failed
        (tmp_path / "res" / "written" / "run_settings.json").write_text("{}")
        raise _PastTheLock()

    monkeypatch.setattr(runner, "prepare_data", prepare_data)
    with pytest.raises(_PastTheLock):
        _fit_on(tmp_path / "data", tmp_path / "res", "written")
    assert sorted(p.name for p in (tmp_path / "res" / "written").iterdir()) == ["run_settings.json"]


def test_a_storage_that_cannot_be_read_is_a_storage_error_naming_the_run(tmp_path, monkeypatch, stop_past_the_lock):
    """The run folder's existence is checked before its lock is taken: a storage that cannot be
    stat'ed (a URI's credentials, a parent without permission) is refused with the run named,
    not with pyarrow's raw OSError and a traceback."""
    def unreadable(path):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(runner.files, "exists", unreadable)
    run_dir = tmp_path / "res" / "run"
    with pytest.raises(StorageError, match=rf"run 'run' \({run_dir}\): cannot read its storage: .*Permission denied"):
        runner.fit_pipeline(Config.from_dict({}), tmp_path / "data", str(tmp_path / "res"), "run", progress=False)


def test_a_storage_that_cannot_be_read_names_a_job_that_is_not_a_train_run_in_its_own_words(tmp_path, monkeypatch):
    """A distill's folder (run_folder's `what`): its storage error says what the job is, as
    its LockHeld does, not "run 'distill'"."""
    def unreadable(path):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(runner.files, "exists", unreadable)
    what = f"the distillation of {tmp_path / 'exp'} ({tmp_path / 'exp' / 'distill'})"
    with pytest.raises(StorageError, match=r"^the distillation of .*exp/distill\): cannot read its storage") as err:
        with runner.run_folder(str(tmp_path / "exp" / "distill"), "distill", what=what, clear_hint=""):
            pass
    assert "run 'distill'" not in str(err.value)
