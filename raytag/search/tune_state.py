"""A last complete copy of Tune's experiment state in the sweep's folder, so that storage
that fails while Tune writes its state cannot cost the sweep its `--resume`.

Tune uploads its state files (experiment_state-*.json: the trials; search_gen_state-*.json
and searcher-state-*.pkl: the searcher, Optuna's study) by copying them over the old ones.
A disk that fills up during that copy leaves one cut short, and Tune's restore then logs
the error and starts the sweep again from nothing (seen with Ray 2.60: the running trial
ran again under a new id, the finished ones were forgotten). `StateBackup.update` keeps a
copy of the whole set whenever every file of it is complete (each copy written under a
temporary name, then renamed); `repair_state` puts that copy back before a resume when
a state file is damaged. Ray Train's own record of a trial's checkpoints
(`checkpoint_manager_snapshot.json`, also rewritten in place) is set aside when damaged
(`set_aside_damaged_snapshot`): that trial then trains again from its first epoch.
"""
from __future__ import annotations

import json
import pickletools
from typing import Optional

from raytag import storage as files  # local folder or URI through pyarrow.fs
from raytag.errors import StorageError

STATE_PREFIXES = ("experiment_state-", "search_gen_state-", "searcher-state-")
BACKUP_DIR = ".tune-state"
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's list of a run's checkpoints


def state_files(exp_dir: str) -> dict[str, tuple]:
    """Tune's state files directly in `exp_dir`: name -> (size, mtime)."""
    return {name: stamp for name, stamp in files.file_stamps(exp_dir).items() if name.startswith(STATE_PREFIXES)}


def is_complete(name: str, data: bytes) -> bool:
    """True when a state file parses to its end: JSON, or a pickle whose opcodes run to
    STOP (checked without unpickling, so nothing in it runs). By content, not by name:
    Tune's search_gen_state-*.json is a pickle."""
    if not data:
        return False
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception:  # noqa: BLE001 - any parse error means cut short or damaged
        return False
    return True


class StateBackup:
    """Copies the set of Tune's state files to `<exp_dir>/.tune-state/` when it changed and
    every file of it is complete (a copy read while Tune writes is skipped until next time)."""

    def __init__(self, exp_dir: str):
        self.exp_dir = exp_dir
        self._saved: Optional[dict] = None  # the (size, mtime) of each file last copied

    def update(self) -> None:
        stamps = state_files(self.exp_dir)
        if not stamps or stamps == self._saved:
            return
        data = {name: files.read_bytes(files.join(self.exp_dir, name)) for name in stamps}
        if not all(is_complete(name, blob) for name, blob in data.items()):
            return
        for name, blob in data.items():
            files.write_bytes(files.join(self.exp_dir, BACKUP_DIR, name), blob)
        self._saved = stamps


def repair_state(exp_dir: str) -> list[str]:
    """Put the last complete copy back when a state file is damaged; returns the names of
    the damaged files (none: nothing done). StorageError when there is no copy to use."""
    damaged = [name for name in state_files(exp_dir)
               if not is_complete(name, files.read_bytes(files.join(exp_dir, name)))]
    if not damaged:
        return []
    backup = files.join(exp_dir, BACKUP_DIR)
    saved = files.file_stamps(backup) if files.is_dir(backup) else {}
    missing = [name for name in damaged if name not in saved]
    if missing:
        raise StorageError(
            f"{exp_dir}: Tune's {', '.join(missing)} is cut short (the storage failed while it was "
            "written) and no complete copy of it was kept, so this sweep cannot be resumed; "
            "run it again under another --name"
        )
    for name in saved:  # the whole set, so the trials and Optuna's study agree
        files.write_bytes(files.join(exp_dir, name), files.read_bytes(files.join(backup, name)))
    return damaged


def set_aside_damaged_snapshot(run_dir: str) -> bool:
    """Rename a cut-short Ray Train checkpoint list of a run (`<run_dir>/<TRAIN_SNAPSHOT>`) to
    `.damaged`, so the run starts again from its first epoch instead of failing to load it
    (training is seeded: it ends with the same result). True when one was set aside."""
    path = files.join(run_dir, TRAIN_SNAPSHOT)
    if not files.exists(path):
        return False
    data = files.read_bytes(path)
    if is_complete(TRAIN_SNAPSHOT, data):
        return False
    files.write_bytes(path + ".damaged", data)
    files.remove_file(path)
    return True
