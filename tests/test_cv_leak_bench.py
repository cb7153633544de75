"""benchmarks/bench_source_groups.py and bench_cv_leak.py: source groups through mixtures,
and which held-out clips had a sibling in training. The end-to-end check (a rebuild that
reproduces the benchmark's CSVs) runs when ../shared has the data."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_cv_leak  # noqa: E402
import bench_source_groups  # noqa: E402

SHARED = REPO.parent / "shared"


def test_items_sharing_a_recording_directly_or_through_a_mixture_share_a_group():
    items = [
        ("a.wav", "curated", ["1-100-A-0"]),
        ("b.wav", "curated", ["1-100-B-0", "1-200-A-3"]),  # a mixture: joins a's and c's recordings
        ("c.wav", "curated", ["1-200-B-3"]),
        ("d.wav", "curated", ["1-300-A-4"]),
    ]
    group = bench_source_groups.groups_by_source(items)
    assert group["a.wav"] == group["b.wav"] == group["c.wav"]
    assert group["d.wav"] != group["a.wav"]


def test_leaked_means_a_sibling_in_another_fold():
    ids = ["curated/a.wav", "curated/b.wav", "curated/c.wav", "curated/d.wav", "curated/e.wav"]
    group_of = {"a.wav": "r1", "b.wav": "r1", "c.wav": "r2", "d.wav": "r2", "e.wav": "r3"}
    folds = np.array([0, 1, 2, 2, 0])
    np.testing.assert_array_equal(bench_cv_leak.leaked_mask(ids, folds, group_of), [True, True, False, False, False])


@pytest.mark.skipif(not (SHARED / "data" / "esc50" / "meta.csv").is_file(), reason="needs ../shared/data/esc50")
def test_groups_of_a_real_build(tmp_path):
    """A 10-class build: the rebuild must match it (the script stops otherwise), and every
    curated item gets a group."""
    script = SHARED / "bench" / "make_fat_bench.py"
    bench = tmp_path / "bench"
    subprocess.run([sys.executable, str(script), "--source", str(SHARED / "data" / "esc50"), "--out", str(bench),
                    "--classes", "10", "--seed", "3"], check=True, capture_output=True)
    out = tmp_path / "groups.csv"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_source_groups.py"), "--source", str(SHARED / "data" / "esc50"),
           "--bench", str(bench), "--out", str(out), "--seed", "3"]
    subprocess.run(cmd + ["--classes", "10"], check=True, capture_output=True)
    groups = pd.read_csv(out)
    curated = pd.read_csv(bench / "train_curated.csv")
    assert set(curated["fname"]) <= set(groups["fname"])
    mine = groups[groups["split"] == "curated"]
    # ESC-50 has several takes of many recordings: some curated items share a group
    assert mine["group"].nunique() < len(mine)
    # a group is named by one of its recordings, and curated clips come from ESC-50's fold 1
    assert mine["group"].str.fullmatch(r"1-\d+").all()
