"""`exclusive_lock`: one builder at a time of a feature store (and of a node's stores, for
Train workers), with an flock that never stops a build that could run without it.

The lock only saves work: a store's shards are content-addressed and written atomically, so
two builders at once compute some shards twice and nothing worse. So where the lock cannot
be had the block runs without it, logged:
  - a lock file this user cannot open (a colleague's prepared cache, a read-only mount) or
    a file system without flock (Lustre without `-o flock`: ENOLCK, ENOSYS, EOPNOTSUPP);
  - a bounded wait (`wait_s`) that ran out: a Train worker must not wait for ever on a
    builder whose Ray tasks may be waiting for the CPUs that worker holds.
Hand-written rather than `filelock` (which Ray installs, unpinned; cluster.materialize_data
uses it for a data copy): its 3.x raises on a lock file it cannot open for writing, retries
for ever when flock fails with another error than ENOSYS, and truncates the file on every
try; its 4.x falls back to marker files of its own. Here the holder writes who it is into
the lock file, so that a waiter can name it.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger("raytag.features")

LOCK_POLL_S = 0.5  # how often a bounded wait tries the lock again
_SAID_UNLOCKED: set[str] = set()  # lock files already reported unusable by this process


@contextmanager
def exclusive_lock(path: Path, waiting: str, say: bool = False, wait_s: Optional[float] = None) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (created if absent) while the block runs; yields
    whether it holds it. Another holder is waited for first, saying `waiting` and who holds
    it (logged; also printed on stderr with `say`): as long as it holds it, or at most
    `wait_s` seconds. Where the lock cannot be had (see the module's docstring) the block
    runs without it. The kernel drops the lock when its holder exits, so a killed builder
    leaves nothing to clear. A lock per open file: two threads of one process exclude each
    other too."""
    fd = _open_lock_file(path)
    if fd is None:
        yield False
        return
    held = False
    try:
        held = _take_lock(fd, path, waiting, say, wait_s)
        if held:
            _write_holder(fd, _this_process())
        yield held
    finally:
        if held:
            _write_holder(fd, "")  # released: a later waiter must not name this process
        os.close(fd)  # releases the lock


def _open_lock_file(path: Path) -> Optional[int]:
    """The lock file opened to read and write (flock over NFS needs write access), else to
    read only (a local flock does not); None, logged, where neither is possible."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        try:
            return os.open(path, os.O_RDONLY)
        except OSError as err:
            _unusable(path, f"cannot open it ({err.strerror or err})")
            return None
    _share_like_its_folder(fd, path.parent)
    return fd


def _share_like_its_folder(fd: int, folder: Path) -> None:
    """Give a lock file this user owns the write permissions of its folder: in a cache
    shared by a group (chmod g+ws), the umask would leave the others a file they cannot
    open for writing, so no lock over NFS."""
    try:
        st = os.fstat(fd)
        want = 0o600 | (stat.S_IMODE(os.stat(folder).st_mode) & 0o066)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != want:
            os.fchmod(fd, want)
    except OSError:
        pass  # the lock works for this user either way


def _take_lock(fd: int, path: Path, waiting: str, say: bool, wait_s: Optional[float]) -> bool:
    """Whether this process now holds the lock; waits for another holder as
    exclusive_lock says."""
    try:
        if _try_lock(fd):
            return True
        _tell(f"{waiting} ({_holder(fd)}; a holder that is stopped or hung keeps {path} until it ends)", say)
        if _wait_for_lock(fd, wait_s):
            return True
    except OSError as err:  # ENOLCK, ENOSYS, EOPNOTSUPP; EBADF: NFS wants a file open for writing
        _unusable(path, f"cannot lock it ({err.strerror or err})")
        return False
    _without_lock(path, f"another process still held it after {wait_s:g} s ({_holder(fd)})")
    return False


def _wait_for_lock(fd: int, wait_s: Optional[float]) -> bool:
    """Wait for the lock: as long as it takes (None), or at most `wait_s` seconds."""
    if wait_s is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(LOCK_POLL_S)
        if _try_lock(fd):
            return True
    return False


def _try_lock(fd: int) -> bool:
    """Take the lock if it is free; False where another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _this_process() -> str:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    return (f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{command[:160]}")


def _write_holder(fd: int, text: str) -> None:
    """Record who holds the lock in the lock file, for a waiter's message (not where the
    file could only be opened to read)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
    except OSError:
        pass


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 1024, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return f"held by {text}" if text else "its holder is not recorded"


def _unusable(path: Path, why: str) -> None:
    """A lock file that cannot be opened or locked: said once per file and process (a cache
    this user may only read stays so)."""
    if str(path) not in _SAID_UNLOCKED:
        _SAID_UNLOCKED.add(str(path))
        _without_lock(path, why)


def _without_lock(path: Path, why: str) -> None:
    log.warning("%s: %s; going on without the lock (only work the lock would save is done twice: "
                "feature shards are content-addressed)", path, why)


def _tell(text: str, say: bool) -> None:
    log.info(text)
    if say:
        from rich.console import Console

        Console(stderr=True).print(text, markup=False, highlight=False, soft_wrap=True)
