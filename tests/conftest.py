"""Shared fixtures. One Ray session serves every test that needs Ray (start-up costs
seconds), one per pytest-xdist worker under `-n 2`; tests that must own a cluster
(multi-node) run last and shut it down first."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raytag.session import CONTROLLER_POLL

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAYTAG_SHARED", REPO.parent / "shared"))
ESC50 = SHARED / "data" / "esc50"
MAKE_BENCH = SHARED / "bench" / "make_fat_bench.py"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Ray Train's controller takes one report off each worker's queue (of size 1) per poll, every
# 2 s by default, so every epoch of the tests' tiny runs waited up to 2 s in ray.train.report.
# Polled every 0.25 s they run as fast as they train. Set before any Ray starts: the test
# session's workers and every subprocess (`raytag tune`, sweep drivers) inherit it.
os.environ.setdefault(CONTROLLER_POLL, "0.25")


def pytest_collection_modifyitems(config, items):
    """Run the files that hold slow tests first and the tests that own a Ray cluster after all
    the others (they end the shared session).

    Under pytest-xdist (`-n 2`, `--dist loadgroup --no-loadscope-reorder`) each test file is one
    unit of work, so a module's fixtures (a tiny run, a reference sweep) are made once, by one
    worker. Units are handed out in this order: the long files start first, so the short ones
    fill in around them, and the cluster tests, a unit of their own, sorted last, are the last
    one their worker runs."""
    slow_files = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (bool(item.get_closest_marker("cluster")), item.module.__name__ not in slow_files))
    if config.pluginmanager.hasplugin("xdist"):
        for item in items:
            group = "cluster" if item.get_closest_marker("cluster") else item.module.__name__
            item.add_marker(pytest.mark.xdist_group(group))


_exit_status: dict[str, int] = {}


def pytest_sessionfinish(session, exitstatus):
    _exit_status["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without the interpreter's own teardown, once pytest has reported and written
    everything. Native threads of Ray and torch can crash that teardown after every test
    passed: once, a fresh clone's run printed "549 passed" and then "Segmentation fault"
    (exit 139), which fails CI for nothing a test checks. Ray is shut down first, so no
    daemon outlives the run. RAYTAG_TEST_SOFT_EXIT=1 keeps the normal exit (to look for that
    crash)."""
    if "code" not in _exit_status or os.environ.get("RAYTAG_TEST_SOFT_EXIT") == "1":
        return
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status["code"])


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory) -> Path:
    """Features that the tests' runs build without a cache of their own go to this run's temp
    folder, never to ~/.cache. Set before the shared Ray starts, so its workers use the same
    folder, and so do the sweeps the tests start in processes of their own."""
    cache = tmp_path_factory.getbasetemp() / "features"
    os.environ["RAYTAG_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray session shared by the whole test run (by one xdist worker's tests)."""
    import ray

    from raytag.session import local_init_kwargs

    if not ray.is_initialized():
        # dashboard on (local_init_kwargs): without it ASHA-stopped trials keep their workers
        ray.init(**local_init_kwargs(address="local", num_cpus=2, object_store_memory=256 * 1024**2))
    yield ray
    # left running for the other tests; pytest's exit ends it


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small demo dataset in the 2019 layout, made once per test run."""
    from raytag.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=0, scale=0.25)


@pytest.fixture(scope="session")
def bench_data(tmp_path_factory):
    """The real-audio benchmark (10 ESC-50 classes) in the 2019 layout; skipped without ../shared."""
    if not (ESC50.is_dir() and MAKE_BENCH.is_file()):
        pytest.skip(f"real audio not available ({ESC50} missing)")
    out = tmp_path_factory.mktemp("escfat10")
    subprocess.run(
        [sys.executable, str(MAKE_BENCH), "--source", str(ESC50), "--out", str(out), "--classes", "10"],
        check=True, capture_output=True,
    )
    return out
