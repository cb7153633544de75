"""Two `raytag tune` of one name and storage never run at once: the second is refused by a
lock in the storage before it writes anything; a lock left by a dead driver does not block
--resume; one from another host names itself and says how to clear it."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from raytag import storage
from raytag.storage import LOCK_NAME, LockHeld, folder_lock

from lock_util import lock_held_elsewhere

from test_tune import write_space



@pytest.fixture
def live_holder(tmp_path):
    """Another process (a first driver) holding the lock of <tmp>/res/fake."""
    exp = tmp_path / "res" / "fake"
    with lock_held_elsewhere(exp, "sweep 'fake'") as pid:
        yield exp, pid


def test_second_sweep_of_one_name_is_refused_before_writing(tmp_path, live_holder, monkeypatch):
    from raytag.search import tuner

    def past_the_lock():
        raise AssertionError("the second sweep got past the lock")

    monkeypatch.setattr(tuner, "ensure_ray", past_the_lock)
    exp, pid = live_holder
    (tmp_path / "data").mkdir()
    before = sorted(p.name for p in exp.iterdir())
    with pytest.raises(LockHeld, match=rf"sweep 'fake' .* is in use: .*held by pid {pid} on host"):
        tuner.run_sweep(write_space(tmp_path, 2), tmp_path / "data", storage=str(tmp_path / "res"))
    assert sorted(p.name for p in exp.iterdir()) == before == [LOCK_NAME]  # nothing of the first run touched
    assert json.loads((exp / LOCK_NAME).read_text())["pid"] == pid


def test_cli_refuses_with_a_message(tmp_path, live_holder):
    from typer.testing import CliRunner

    from raytag.cli import app

    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(app, ["tune", "--space", str(write_space(tmp_path, 2)), "--data",
                                      str(tmp_path / "data"), "--storage", str(tmp_path / "res")])
    assert result.exit_code == 2, result.output
    assert "is in use" in result.output and "Traceback" not in result.output


def test_lock_of_a_dead_driver_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"host": socket.gethostname(), "pid": dead.pid, "pid_started": "1", "token": "old",
             "started": "yesterday", "command": "raytag tune"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with folder_lock(tmp_path, "sweep 'x'") as me:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == me["token"]
    assert not (tmp_path / LOCK_NAME).exists()  # released at the end


def test_lock_from_another_host_says_how_to_clear_it(tmp_path):
    other = {"host": "gpu-node-7", "pid": 1, "token": "t", "started": "2025-01-01 10:00:00",
             "command": "raytag tune --name x"}
    storage.write_text(storage.join(tmp_path.as_uri(), LOCK_NAME), json.dumps(other))
    with pytest.raises(LockHeld, match=rf"gpu-node-7 since 2025-01-01 10:00:00.*delete file://{tmp_path}/{LOCK_NAME}"):
        with folder_lock(tmp_path.as_uri(), "sweep 'x'"):
            pass
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == other  # not removed by the refused run


def test_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with folder_lock(tmp_path, "sweep 'x'"):
            raise RuntimeError("trial setup failed")
    assert not (tmp_path / LOCK_NAME).exists()
    with folder_lock(tmp_path.as_uri(), "sweep 'x'"):  # object-store path: write and read back
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()
