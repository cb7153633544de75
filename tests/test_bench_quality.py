"""benchmarks/bench_quality.py's caches and its --ensemble-vs-run comparison, without training.

Its cached rows were keyed on the row and epochs only, so a second --data (or other folds or
clip groups) reused the first's run; the fold-0 data folder kept links to the first --data;
and a members run's test predictions (combined over all its folds, fold -1) were reported as
"(folds 0,1)" against a sweep of two folds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench_util import load_benchmark

CLASSES = ["a", "b"]


def _bench():
    return load_benchmark("bench_quality")


def _dataset(root: Path, curated: list[str]) -> Path:
    root.mkdir(parents=True)
    for folder in ("train_curated", "train_noisy", "test"):
        (root / folder).mkdir()
    pd.DataFrame({"fname": curated, "labels": "a"}).to_csv(root / "train_curated.csv", index=False)
    for name in ("train_noisy.csv", "test_labels.csv"):
        pd.DataFrame({"fname": ["n.wav"], "labels": "b"}).to_csv(root / name, index=False)
    (root / "sample_submission.csv").write_text("fname,a,b\n")
    return root


def test_two_datasets_or_two_clip_lists_never_share_a_cached_script_row(tmp_path):
    bench = _bench()
    first = _dataset(tmp_path / "one", ["x.wav", "y.wav"])
    second = _dataset(tmp_path / "two", ["x.wav", "y.wav"])
    assert bench.script_dir("reference_script", 30, first) != bench.script_dir("reference_script", 30, second)
    before = bench.script_dir("reference_script", 30, first)
    pd.DataFrame({"fname": ["x.wav"], "labels": "a"}).to_csv(first / "train_curated.csv", index=False)
    assert bench.script_dir("reference_script", 30, first) != before


def test_the_fold0_folder_of_another_dataset_links_to_that_dataset(tmp_path, monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "STORAGE", tmp_path / "storage")
    reference = tmp_path / "reference_outputs"
    reference.mkdir()
    pd.DataFrame({"clip_id": ["train_curated/y.wav"], "fold": [0]}).to_parquet(reference / "oof.parquet")
    info = {"outputs": str(reference)}
    folders = []
    for name in ("one", "two"):
        data = _dataset(tmp_path / name, ["x.wav", "y.wav"])
        out = bench.fold0_training_data(data, info)
        assert (out / "test").resolve() == (data / "test").resolve()
        assert list(pd.read_csv(out / "train_curated.csv")["fname"]) == ["x.wav"]  # y.wav held out
        folders.append(out)
    assert folders[0] != folders[1]


def test_a_link_left_pointing_at_another_dataset_is_replaced(tmp_path):
    bench = _bench()
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    link = tmp_path / "link"
    link.symlink_to(old)
    bench.link_to(link, new)
    assert link.resolve() == new.resolve()


def _run_outputs(root: Path, test_folds: list[int], oof_folds: list[int]) -> Path:
    """A finished run's outputs: OOF clip i held out by fold oof_folds[i]; test rows per fold."""
    root.mkdir()
    rng = np.random.default_rng(0)
    oof = pd.DataFrame({"clip_id": [f"train_curated/c{i}.wav" for i in range(len(oof_folds))], "fold": oof_folds})
    oof[CLASSES] = rng.random((len(oof), 2))
    oof.to_parquet(root / "oof.parquet")
    test = pd.DataFrame([{"clip_id": f"test/t{j}.wav", "fold": f} for f in test_folds for j in range(6)])
    test[CLASSES] = rng.random((len(test), 2))
    test.to_parquet(root / "test.parquet")
    return root


def _sweep_frames(oof_clips: list[str]) -> tuple[dict, pd.DataFrame]:
    rng = np.random.default_rng(1)
    test_ids = [f"t{j}.wav" for j in range(6)]
    y_test = pd.DataFrame(np.eye(2)[[0, 1, 0, 1, 0, 1]], index=test_ids, columns=CLASSES)
    y_oof = pd.DataFrame(np.eye(2)[[i % 2 for i in range(len(oof_clips))]], index=oof_clips, columns=CLASSES)
    frames = {"oof": pd.DataFrame(rng.random((len(oof_clips), 2)), index=oof_clips, columns=CLASSES),
              "test": pd.DataFrame(rng.random((6, 2)), index=test_ids, columns=CLASSES), "y_oof": y_oof}
    return frames, y_test


def test_a_members_run_combined_over_more_folds_than_the_sweep_is_refused(tmp_path):
    outputs = _run_outputs(tmp_path / "members_run", test_folds=[-1], oof_folds=[0, 1, 2, 0, 1, 2])
    frames, y_test = _sweep_frames(["train_curated/c0.wav", "train_curated/c1.wav"])  # the sweep's folds 0,1
    with pytest.raises(SystemExit, match="combined over its folds"):
        _bench().ensemble_vs_runs(frames, y_test, [f"default={outputs}"], CLASSES)


def test_a_members_run_of_the_sweeps_own_folds_is_compared(tmp_path):
    outputs = _run_outputs(tmp_path / "members_run", test_folds=[-1], oof_folds=[0, 1, 0, 1])
    frames, y_test = _sweep_frames(["train_curated/c0.wav", "train_curated/c1.wav"])
    rows = _bench().ensemble_vs_runs(frames, y_test, [f"default={outputs}"], CLASSES)
    assert rows[0]["row"] == "default (folds 0,1)"


def test_a_run_with_fold_models_is_cut_to_the_sweeps_folds(tmp_path):
    outputs = _run_outputs(tmp_path / "run", test_folds=[0, 1, 2], oof_folds=[0, 1, 2])
    frames, y_test = _sweep_frames(["train_curated/c0.wav", "train_curated/c1.wav"])
    rows = _bench().ensemble_vs_runs(frames, y_test, [f"default={outputs}"], CLASSES)
    assert rows[0]["row"] == "default (folds 0,1)"
    test = pd.read_parquet(outputs / "test.parquet")
    expected = test[test["fold"].isin([0, 1])].groupby("clip_id")[CLASSES].mean()
    got = _bench().fold_mean_test(outputs, CLASSES, [0, 1])
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy())


def test_a_raytag_rows_cache_key_covers_its_folds_data_and_clip_groups(tmp_path):
    bench = _bench()
    one = _dataset(tmp_path / "one", ["x.wav"])
    two = _dataset(tmp_path / "two", ["x.wav"])
    groups = tmp_path / "groups.csv"
    groups.write_text("fname,group\nx.wav,g1\n")
    fold0 = bench.config_for("configs/default.yaml", {}, 30, [0])
    keys = {bench.run_name("default", fold0, one), bench.run_name("default", fold0, two),
            bench.run_name("default", bench.config_for("configs/default.yaml", {}, 30, [0, 1]), one)}
    grouped = bench.config_for("configs/default.yaml", {}, 30, [0], groups)
    keys.add(bench.run_name("default", grouped, one))
    groups.write_text("fname,group\nx.wav,g2\n")
    keys.add(bench.run_name("default", grouped, one))
    assert len(keys) == 5


def test_the_reports_clip_counts_come_from_the_data(tmp_path):
    data = _dataset(tmp_path / "one", ["x.wav", "y.wav", "z.wav"])
    assert _bench().dataset_counts(data, CLASSES) == "3 curated, 1 noisy, 1 test clips, 2 classes"
