"""benchmarks/seed_study.py on prediction files made here: scores, per-recipe spread, errors."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports its sibling bench_quality

import seed_study  # noqa: E402


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame(columns=["fname", "a", "b"]).to_csv(data / "sample_submission.csv", index=False)
    pd.DataFrame({"fname": ["x.wav", "y.wav", "z.wav"], "labels": ["a", "b", "a,b"]}).to_csv(
        data / "test_labels.csv", index=False)
    return data


def _reference(path: Path, probs) -> Path:
    frame = pd.DataFrame(np.asarray(probs, np.float32), columns=["a", "b"])
    frame.insert(0, "fname", ["z.wav", "y.wav", "x.wav"])  # another order than test_labels.csv
    frame.to_parquet(path, index=False)
    return path


def test_references_are_scored_on_the_test_clips_by_name_and_summed_up_per_recipe(tmp_path):
    data = _data(tmp_path)
    right = _reference(tmp_path / "r0.parquet", [[0.9, 0.8], [0.1, 0.9], [0.9, 0.1]])  # z, y, x
    wrong = _reference(tmp_path / "r1.parquet", [[0.5, 0.5], [0.9, 0.1], [0.1, 0.9]])
    rows = seed_study.score_runs(data, [], [f"ref:0={right}", f"ref:1={wrong}"])
    assert [r["test_lwlrap"] for r in rows][0] == pytest.approx(1.0)
    assert rows[1]["test_lwlrap"] < 1.0 and rows[1]["cv_lwlrap"] is None
    (summary,) = seed_study.summarise(rows)
    assert summary["seeds"] == [0, 1] and "cv_lwlrap" not in summary
    assert summary["test_lwlrap"]["mean"] == pytest.approx((1.0 + rows[1]["test_lwlrap"]) / 2)
    assert summary["test_lwlrap"]["min"] == rows[1]["test_lwlrap"]
    table = seed_study.markdown(rows, [summary])
    assert "| ref | 0 |  | 1.0000 |" in table and "| ref | 2 |  |" in table


def test_a_malformed_entry_says_what_it_expected():
    with pytest.raises(SystemExit, match="RECIPE:SEED=PATH"):
        seed_study.parse_entry("default=outputs")


def test_earlier_rows_are_carried_unless_scored_again(tmp_path):
    import json

    earlier = tmp_path / "seeds.json"
    earlier.write_text(json.dumps({"runs": [
        {"recipe": "ref", "seed": 0, "path": "gone.parquet", "cv_lwlrap": None, "test_lwlrap": 0.5},
        {"recipe": "ref", "seed": 1, "path": "gone1.parquet", "cv_lwlrap": None, "test_lwlrap": 0.25}]}))
    data = _data(tmp_path)
    right = _reference(tmp_path / "r1.parquet", [[0.9, 0.8], [0.1, 0.9], [0.9, 0.1]])
    rows = seed_study.carry_earlier(earlier, seed_study.score_runs(data, [], [f"ref:1={right}"]))
    assert [(r["seed"], r.get("carried", False)) for r in rows] == [(0, True), (1, False)]
    assert rows[1]["test_lwlrap"] == pytest.approx(1.0)  # seed 1 scored anew, not the earlier 0.25
    (summary,) = seed_study.summarise(rows)
    assert summary["test_lwlrap"]["mean"] == pytest.approx(0.75)
    assert "| ref | 0 (carried) |  | 0.5000 |" in seed_study.markdown(rows, [summary])
