"""benchmarks/bench_distill.py's teacher cache: it keyed teachers on their folder's name
("ensemble" for every sweep), so a second run's students were scored against the first's
teacher. The key is now the artifact's full resolved path."""
from __future__ import annotations

from bench_util import load_benchmark


def _bench():
    return load_benchmark("bench_distill")


def test_two_teachers_of_one_name_in_different_storages_get_different_keys(tmp_path):
    first = tmp_path / "storage_a" / "sweep" / "ensemble" / "artifact"
    second = tmp_path / "storage_b" / "sweep" / "ensemble" / "artifact"
    key = _bench().teacher_key
    assert key(str(first)) != key(str(second))


def test_one_teacher_reached_two_ways_gets_one_key(tmp_path):
    real = tmp_path / "runs" / "default" / "artifact"
    real.mkdir(parents=True)
    link = tmp_path / "linked"
    link.symlink_to(tmp_path / "runs")
    key = _bench().teacher_key
    assert key(str(link / "default" / "artifact")) == key(str(real))
    assert key(str(tmp_path / "runs" / "default" / ".." / "default" / "artifact")) == key(str(real))
