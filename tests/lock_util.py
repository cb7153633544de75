"""A folder lock held by another live process, for the tests of the sweep's and the run's locks."""
from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

HOLDER = """
import sys, time
from raytag.storage import folder_lock
with folder_lock(sys.argv[1], sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""


@contextmanager
def lock_held_elsewhere(folder: Path, what: str):
    """Yields the pid of a child process that holds `folder`'s lock (as `what`) until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), what], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
