"""Ensemble job: combiners on known numbers, weight fitting with its nested guard, and the
whole job on synthetic trial folders written in the trial-outputs format of ARCHITECTURE.md.

`make_trial_outputs` / `make_experiment` are also used by test_artifact.py and test_predict.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from raytag import storage
from raytag.config import Config, recorded_model_settings
from raytag.data.truth import read_truth, truth_matrix
from raytag.ensemble.combiners import (
    arithmetic_mean, combine, geometric_mean, percentile_ranks, rank_mean, rank_reference,
)
from raytag.ensemble.artifact import load_artifact
from raytag.ensemble.job import build_ensemble, load_trial, select_candidates
from raytag.ensemble.weights import fit_weights, nested_fit
from raytag.errors import RaytagError
from raytag.metrics import lwlrap

CLASSES = ["Bark", "Meow", "Rain", "Siren", "Crying_baby", "Clock_tick", "Rooster", "Sea_waves"]
FEATURES = {"kind": "logmel", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 16}
MODEL = {"name": "cnn2d", "width": 4, "depth": 1, "params": {"hidden": 8}}


# ----------------------------------------------------------------------------- synthetic trials
def make_truth(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.zeros((n, len(CLASSES)), dtype=np.float32)
    y[np.arange(n), rng.integers(0, len(CLASSES), n)] = 1
    extra = rng.random(n) < 0.3
    y[extra, rng.integers(0, len(CLASSES), extra.sum())] = 1
    return y


def noisy_probs(y: np.ndarray, signal: float, seed: int) -> np.ndarray:
    """Probabilities that separate positives from negatives by `signal` (0: pure noise)."""
    rng = np.random.default_rng(seed)
    logits = signal * (2 * y - 1) + rng.normal(0, 1, y.shape)
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def make_trial_outputs(out, trial_id: str, y_oof, y_test, signal: float, seed: int,
                       n_folds: int = 3, layout: str = "fat2019", model: dict | None = None,
                       features: dict | None = None, fold_of=None):
    """Write one trial's outputs folder exactly as the runner does; returns its path."""
    out = storage.join(str(out), trial_id, "outputs")
    n, n_test = len(y_oof), len(y_test)
    clip_ids = [f"curated/c{i:04d}.wav" for i in range(n)]
    test_ids = [f"test/t{i:04d}.wav" for i in range(n_test)]
    folds = np.arange(n) % n_folds if fold_of is None else fold_of
    meta = {"raytag.classes": json.dumps(CLASSES)}
    oof = pd.DataFrame(noisy_probs(y_oof, signal, seed), columns=CLASSES)
    oof.insert(0, "clip_id", clip_ids)
    oof.insert(1, "fold", folds)
    oof.insert(2, "run", 0)
    oof.insert(3, "stage", "finetune")
    storage.write_parquet(oof, storage.join(out, "oof.parquet"), metadata=meta)
    test_rows = []
    for k in range(n_folds):
        part = pd.DataFrame(noisy_probs(y_test, signal, seed * 100 + k), columns=CLASSES)
        part.insert(0, "clip_id", test_ids)
        part.insert(1, "fold", k)
        part.insert(2, "run", 0)
        part.insert(3, "stage", "finetune")
        test_rows.append(part)
    storage.write_parquet(pd.concat(test_rows), storage.join(out, "test.parquet"), metadata=meta)
    label_str = lambda y: [",".join(CLASSES[j] for j in np.flatnonzero(row)) for row in y]  # noqa: E731
    storage.write_csv(pd.DataFrame({"clip_id": clip_ids, "labels": label_str(y_oof)}),
                      storage.join(out, "oof_truth.csv"))
    storage.write_csv(pd.DataFrame({"fname": [t.split("/")[1] for t in test_ids], "labels": label_str(y_test)}),
                      storage.join(out, "test_truth.csv"))
    cfg = Config.from_dict({"features": features or FEATURES, "model": model or MODEL,
                            "train": {"crop_seconds": 0.5}, "inference": {"overlap": 0.5}})
    from raytag.features.frontends import frontend_shape
    from raytag.models import build_model

    c, f = frontend_shape(cfg.features)
    torch.manual_seed(seed)
    for k in range(n_folds):
        net = build_model(cfg.model, len(CLASSES), c, f)
        local = storage.join(out, "weights", f"fold{k}.safetensors")
        storage.makedirs(storage.join(out, "weights"))
        save_file({k2: v.contiguous() for k2, v in net.state_dict().items()}, local)
    rng = np.random.default_rng(seed)
    model_json = {
        "features": cfg.to_dict()["features"], "model": recorded_model_settings(cfg.to_dict()["model"]),
        "classes": CLASSES,  # the model as training's model_card records it
        "layout": layout, "norm_mean": (rng.normal(-40, 1, (c, f))).tolist(),
        "norm_std": (np.full((c, f), 15.0)).tolist(),
        "crop_frames": cfg.crop_frames(), "segment_frames": cfg.segment_frames(),
        "inference": cfg.to_dict()["inference"], "folds": list(range(n_folds)), "refit_fold": None,
    }
    storage.write_text(storage.join(out, "model.json"), json.dumps(model_json))
    storage.write_text(storage.join(out, "config.yaml"), cfg.to_yaml())
    cv = lwlrap(y_oof, oof[CLASSES].to_numpy())
    storage.write_text(storage.join(out, "metrics.json"), json.dumps({"cv_lwlrap": cv}))
    return out, cv


def make_experiment(root, signals=(0.9, 0.8, 0.7, 0.0), n=120, n_test=60, layout="fat2019",
                    extra_rows=(), name="exp", trial_ids=None):
    """An experiment folder with a leaderboard and one trial per signal strength (named
    `trial_ids`, or trial_0, trial_1, ...)."""
    exp = storage.join(str(root), name)
    y_oof, y_test = make_truth(n, 1), make_truth(n_test, 2)
    rows = []
    for i, s in enumerate(signals):
        trial_id = trial_ids[i] if trial_ids else f"trial_{i}"
        out, cv = make_trial_outputs(exp, trial_id, y_oof, y_test, s, seed=10 + i, layout=layout)
        rows.append({"trial_id": trial_id, "status": "TERMINATED", "cv_lwlrap": cv,
                     "test_lwlrap": np.nan, "outputs_dir": out})
    rows += list(extra_rows)
    storage.write_csv(pd.DataFrame(rows), storage.join(exp, "leaderboard.csv"))
    return exp


# ----------------------------------------------------------------------------- combiners
def test_arithmetic_and_geometric_means_on_known_numbers():
    preds = np.array([[[0.2, 0.8]], [[0.8, 0.2]], [[0.5, 0.5]]])  # 3 members, 1 clip, 2 classes
    assert np.allclose(arithmetic_mean(preds), [[0.5, 0.5]])
    assert np.allclose(arithmetic_mean(preds, [1, 0, 1]), [[0.35, 0.65]])
    g = (0.2 * 0.8 * 0.5) ** (1 / 3)
    assert np.allclose(geometric_mean(preds), [[g, g]])
    # a zero cannot veto a class: clipped at EPS
    assert geometric_mean(np.array([[[0.0]], [[1.0]]]))[0, 0] == pytest.approx(1e-3)


def test_rank_mean_uses_each_members_own_scale():
    # member 0 is calibrated high, member 1 low; ranks make them count equally
    a = np.array([[0.90, 0.1], [0.95, 0.2], [0.99, 0.3]])
    b = np.array([[0.03, 0.1], [0.01, 0.2], [0.02, 0.3]])
    r = rank_mean(np.stack([a, b]))
    ranks_a0 = percentile_ranks(a, rank_reference(a))[:, 0]
    assert np.allclose(ranks_a0, [0.0, 0.5, 1.0])
    assert np.allclose(r[:, 0], ([0, 0.5, 1.0] + np.array([1.0, 0.0, 0.5])) / 2)
    # a new clip is ranked against the stored reference, not against the other new clips
    new = rank_mean(np.stack([a[:1], b[:1]]), references=[rank_reference(a), rank_reference(b)])
    assert np.allclose(new, r[:1])


def test_combine_errors_are_clear():
    preds = np.ones((2, 3, 4)) * 0.5
    with pytest.raises(ValueError, match="unknown combiner"):
        combine("median", preds)
    with pytest.raises(ValueError, match="needs fitted weights"):
        combine("weighted", preds)
    with pytest.raises(ValueError, match="2 members but 3 weights"):
        combine("weighted", preds, [1, 1, 1])


# ----------------------------------------------------------------------------- weights
def test_weights_drop_a_bad_member_and_beat_the_plain_mean():
    y = make_truth(200, 3)
    good1, good2, bad = noisy_probs(y, 1.5, 1), noisy_probs(y, 1.5, 2), noisy_probs(y, 0.0, 3)
    preds = np.stack([bad, good1, good2])
    fit = fit_weights(preds, y)
    assert fit.weights[0] < 0.1  # the pure-noise member gets (almost) no weight
    assert fit.weights.sum() == pytest.approx(1.0)
    assert fit.train_lwlrap > lwlrap(y, preds.mean(axis=0))
    assert fit.train_lwlrap >= max(lwlrap(y, p) for p in preds)


def test_nested_fit_scores_heldout_folds_only():
    y = make_truth(150, 4)
    preds = np.stack([noisy_probs(y, 1.2, 5), noisy_probs(y, 1.2, 6), noisy_probs(y, 0.0, 7)])
    folds = np.arange(150) % 3
    res = nested_fit(preds, y, folds)
    assert set(res.fold_weights) == {0, 1, 2}
    # held-out predictions of fold 0 are made with the weights fitted on folds 1 and 2
    w0 = np.array(res.fold_weights[0])
    assert np.allclose(res.heldout_preds[folds == 0], np.tensordot(w0, preds[:, folds == 0], axes=1))
    assert res.nested_lwlrap == pytest.approx(lwlrap(y, res.heldout_preds))
    # the in-sample score is optimistic relative to the nested one (or equal)
    assert res.final.train_lwlrap >= res.nested_lwlrap - 1e-9
    with pytest.raises(ValueError, match="2 outer folds"):
        nested_fit(preds, y, np.zeros(150))


# ----------------------------------------------------------------------------- the job
def test_build_ensemble_table_artifact_and_chart(tmp_path):
    exp = make_experiment(tmp_path)
    res = build_ensemble(exp, top=4)
    t = res.table
    singles = t[t.kind == "single"]
    assert set(singles["name"]) == {"trial_0", "trial_1", "trial_2", "trial_3"}
    assert singles["cv_lwlrap"].is_monotonic_decreasing  # candidates come best first
    assert set(t[t.kind == "ensemble"]["name"]) == {"mean", "geometric", "rank", "weighted"}
    weighted = t[t.name == "weighted"].iloc[0]
    assert weighted.cv_method == "nested oof"
    assert weighted.cv_lwlrap_in_sample >= weighted.cv_lwlrap - 1e-9
    rank = t[t.name == "rank"].iloc[0]  # its CDFs are fitted on OOF clips: scored nested too
    assert rank.cv_method == "nested oof" and not np.isnan(rank.cv_lwlrap_in_sample)
    assert t["test_lwlrap"].notna().all()  # test truth exists: reported for every row
    # the noise member (trial_3) gets little weight in the final fit
    assert res.weights[3] < 0.15
    chosen = t[t.chosen]
    assert len(chosen) == 1 and chosen.iloc[0].kind == "ensemble"
    assert chosen.iloc[0].cv_lwlrap == t[t.kind == "ensemble"]["cv_lwlrap"].max()
    assert res.chosen == chosen.iloc[0]["name"]
    assert storage.exists(storage.join(res.artifact_path, "manifest.json"))
    png = storage.read_bytes(res.chart_path)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    saved = storage.read_csv(res.table_path)
    assert len(saved) == 8
    # the chosen combiner's held-out OOF predictions, scoring what the table says
    held = pd.read_parquet(storage.join(exp, "ensemble", "oof.parquet"))
    classes = [c for c in held.columns if c not in ("clip_id", "fold")]
    truth = read_truth(storage.join(exp, "trial_0", "outputs", "oof_truth.csv")).table()
    y = truth_matrix(truth, pd.Index(held["clip_id"]), classes)
    assert lwlrap(y, held[classes].to_numpy()) == pytest.approx(chosen.iloc[0].cv_lwlrap, abs=1e-9)


def test_nested_rank_ranks_each_fold_against_the_other_folds():
    from raytag.ensemble.job import nested_rank

    y = make_truth(120, 4)
    preds = np.stack([noisy_probs(y, 1.2, 8), noisy_probs(y, 0.8, 9)])
    folds = np.arange(120) % 2
    out = nested_rank(preds, folds)
    for k in (0, 1):
        refs = [rank_reference(p[folds != k]) for p in preds]
        assert np.allclose(out[folds == k], rank_mean(preds[:, folds == k], refs))
    # not the in-sample ranks (the CDFs of the clips being scored)
    assert not np.allclose(out, rank_mean(preds))


def test_choice_ignores_test_labels(tmp_path):
    """Swapping the test truth changes test scores but never the chosen combiner or weights."""
    exp = make_experiment(tmp_path, signals=(1.3, 1.1, 0.2))
    first = build_ensemble(exp, top=3)
    for i in range(3):
        path = storage.join(exp, f"trial_{i}", "outputs", "test_truth.csv")
        truth = storage.read_csv(path)
        truth["labels"] = truth["labels"].sample(frac=1.0, random_state=0).to_numpy()
        storage.write_csv(truth, path)
    second = build_ensemble(exp, top=3)
    assert second.chosen == first.chosen
    assert second.weights == first.weights
    assert np.allclose(second.table["cv_lwlrap"], first.table["cv_lwlrap"])
    assert not np.allclose(second.table["test_lwlrap"], first.table["test_lwlrap"])


def test_candidates_top_k_min_cv_and_unfinished(tmp_path):
    extra = [{"trial_id": "broken", "status": "ERROR", "cv_lwlrap": 0.99, "test_lwlrap": np.nan,
              "outputs_dir": "nowhere"},
             {"trial_id": "no_outputs", "status": "TERMINATED", "cv_lwlrap": 0.98, "test_lwlrap": np.nan,
              "outputs_dir": str(tmp_path / "missing")}]
    exp = make_experiment(tmp_path, extra_rows=extra)
    cands, skipped = select_candidates(exp, top=2)
    board = storage.read_csv(storage.join(exp, "leaderboard.csv"))
    best_two = board[board.trial_id.str.startswith("trial")].nlargest(2, "cv_lwlrap")["trial_id"]
    assert [c.trial_id for c in cands] == list(best_two)
    reasons = {s["trial_id"]: s["reason"] for s in skipped}
    assert "status error" in reasons["broken"] and "no oof.parquet" in reasons["no_outputs"]
    cv = {c.trial_id: c.leaderboard_cv for c in select_candidates(exp, top=None)[0]}
    ranked = sorted(cv, key=cv.get, reverse=True)
    bar = (cv[ranked[1]] + cv[ranked[2]]) / 2
    over, _ = select_candidates(exp, top=None, min_cv=bar)
    assert [c.trial_id for c in over] == ranked[:2]
    with pytest.raises(RaytagError, match="nothing to ensemble"):
        select_candidates(exp, top=None, min_cv=0.9999)


def test_trials_of_other_experiments_compete_as_candidates(tmp_path):
    """`raytag ensemble A --with B`: B's trials are ranked with A's, named B/<trial>, and a
    chosen one is copied into the artifact under A; a leaderboard ranked by another metric
    is refused."""
    exp = make_experiment(tmp_path, signals=(0.9, 0.1))
    other = make_experiment(tmp_path, signals=(1.2, 0.2), name="families")
    cands, skipped = select_candidates(exp, top=3, also=[other])
    assert [c.trial_id for c in cands][0] == "families/trial_0"  # the strongest signal
    assert {c.trial_id for c in cands} | {s["trial_id"] for s in skipped} == {
        "trial_0", "trial_1", "families/trial_0", "families/trial_1"}
    res = build_ensemble(exp, top=3, also=[other])
    assert "families/trial_0" in res.members
    summary = json.loads(storage.read_text(storage.join(exp, "ensemble", "ensemble_summary.json")))
    assert summary["with"] == [other]
    assert res.artifact_path.startswith(str(exp))
    art = load_artifact(res.artifact_path)
    assert "families_trial_0" in [m.name for m in art.members]
    board_path = storage.join(other, "leaderboard.csv")
    board = storage.read_csv(board_path)
    board["rank_by"], board["cv_map3"] = "cv_map3", board["cv_lwlrap"]
    storage.write_csv(board, board_path)
    with pytest.raises(RaytagError, match="ranks by cv_map3"):
        select_candidates(exp, also=[other])


def test_the_experiment_itself_or_an_experiment_twice_is_refused_as_with(tmp_path):
    """`raytag ensemble demo --with demo` (or `--with b --with b`) built an artifact holding
    every chosen model twice: predict and serve ran each network twice for the same scores."""
    from typer.testing import CliRunner

    from raytag.cli import app

    exp = make_experiment(tmp_path, signals=(0.9, 0.1), n=40, n_test=10)
    other = make_experiment(tmp_path, signals=(1.2, 0.2), n=40, n_test=10, name="families")
    with pytest.raises(RaytagError, match="--with exp: that is EXPERIMENT itself"):
        select_candidates(exp, also=[f"{tmp_path}/./exp/"])  # the same folder, written otherwise
    with pytest.raises(RaytagError, match="--with families: given twice"):
        build_ensemble(exp, also=[other, other])
    result = CliRunner().invoke(app, ["ensemble", "exp", "--storage", str(tmp_path), "--with", "exp"])
    assert result.exit_code == 2, result.output
    assert "--with exp: that is EXPERIMENT itself" in " ".join(result.output.split())
    assert not (tmp_path / "exp" / "ensemble").exists()


def test_a_trial_two_leaderboards_name_joins_once(tmp_path):
    """A copied sweep's leaderboard keeps the original trials' absolute outputs_dir: with
    `--with` of the copy each model would join twice; the second is listed as skipped."""
    exp = make_experiment(tmp_path, signals=(0.9, 0.1), n=40, n_test=10)
    shutil.copytree(exp, tmp_path / "copy")
    cands, skipped = select_candidates(exp, top=None, also=[str(tmp_path / "copy")])
    assert [c.trial_id for c in cands] == ["trial_0", "trial_1"]
    assert {s["trial_id"] for s in skipped} == {"copy/trial_0", "copy/trial_1"}
    assert all(s["reason"].startswith("the same outputs as trial_") for s in skipped)


def test_a_train_run_s_members_join_as_candidates(tmp_path):
    """`raytag ensemble SWEEP --with RUN` where RUN is a `raytag train` run: each member's own
    outputs compete (not the run's fixed combination), named RUN/<member>, ranked by its CV;
    an unfinished member is listed as skipped; a run without members gives its one model."""
    exp = make_experiment(tmp_path, signals=(0.9, 0.1))
    y_oof, y_test = make_truth(120, 1), make_truth(60, 2)
    run = storage.join(str(tmp_path), "default")
    cvs = {}
    for i, (member, signal) in enumerate((("resnet18", 1.3), ("cnn2d", 0.7))):
        out, cvs[member] = make_trial_outputs(storage.join(run, "members"), member, y_oof, y_test, signal, seed=30 + i)
        storage.write_text(storage.join(out, "metrics.json"), json.dumps({"cv_lwlrap": cvs[member]}))
    storage.makedirs(storage.join(run, "members", "crnn", "outputs"))  # a member the run has not finished
    storage.write_text(storage.join(run, "outputs", "metrics.json"), json.dumps({"cv_lwlrap": 0.5}))

    cands, skipped = select_candidates(exp, top=None, also=[run])
    by_id = {c.trial_id: c for c in cands}
    assert {"default/resnet18", "default/cnn2d"} <= set(by_id)
    assert by_id["default/resnet18"].leaderboard_cv == pytest.approx(cvs["resnet18"])
    assert cands[0].trial_id == "default/resnet18"  # the strongest signal ranks first
    assert [s["trial_id"] for s in skipped] == ["default/crnn"]
    res = build_ensemble(exp, top=None, also=[run])
    assert "default/resnet18" in res.members

    one = storage.join(str(tmp_path), "single")
    out, cv = make_trial_outputs(one, "x", y_oof, y_test, 1.0, seed=40)
    storage.write_text(storage.join(one, "outputs", "metrics.json"), json.dumps({"cv_lwlrap": cv}))
    storage.copy_tree(out, storage.join(one, "outputs"))
    cands, _ = select_candidates(exp, top=None, also=[one])
    assert "single" in [c.trial_id for c in cands]
    # a train run ensembles on its own too (`raytag ensemble RUN --with OTHER_RUN`): its members
    cands, skipped = select_candidates(run, top=None)
    assert {c.trial_id for c in cands} == {"resnet18", "cnn2d"} and [s["trial_id"] for s in skipped] == ["crnn"]
    res = build_ensemble(run, top=None, also=[one])
    assert set(res.members) == {"resnet18", "cnn2d", "single"}


def test_trials_with_different_folds_are_aligned_by_clip(tmp_path):
    """Two trials with other fold assignments and a shuffled row order still align per clip."""
    exp = storage.join(str(tmp_path), "exp")
    y, yt = make_truth(90, 1), make_truth(30, 2)
    out0, cv0 = make_trial_outputs(exp, "a", y, yt, 1.4, 1)
    out1, cv1 = make_trial_outputs(exp, "b", y, yt, 1.4, 2, n_folds=3, fold_of=(np.arange(90) // 30))
    oof_path = storage.join(out1, "oof.parquet")
    table = storage.read_parquet_table(oof_path)
    df = table.to_pandas().sample(frac=1.0, random_state=1)
    storage.write_parquet(df, oof_path, metadata={"raytag.classes": json.dumps(CLASSES)})
    storage.write_csv(pd.DataFrame([
        {"trial_id": "a", "status": "TERMINATED", "cv_lwlrap": cv0, "outputs_dir": out0},
        {"trial_id": "b", "status": "TERMINATED", "cv_lwlrap": cv1, "outputs_dir": out1},
    ]), storage.join(exp, "leaderboard.csv"))
    res = build_ensemble(exp, top=2)
    singles = res.table[res.table.kind == "single"].set_index("name")["cv_lwlrap"]
    assert singles["a"] == pytest.approx(cv0) and singles["b"] == pytest.approx(cv1)


def test_trials_of_a_dataset_without_test_clips_are_ensembled_with_no_test_score(tmp_path):
    """Test clips are optional, and the runner then writes an empty test.parquet: it was read
    as a damaged file, every candidate was left out and the job stopped."""
    exp = make_experiment(tmp_path, signals=(0.9, 0.8), n=60, n_test=0)
    out = storage.join(exp, "trial_0", "outputs")
    assert pd.read_parquet(storage.join(out, "test.parquet")).empty
    assert load_trial(out).test is None
    res = build_ensemble(exp, top=2)
    assert res.members == ["trial_0", "trial_1"] and res.skipped == []
    assert res.table["test_lwlrap"].isna().all() and res.table["cv_lwlrap"].notna().all()
    art = load_artifact(res.artifact_path)
    assert art.scores["test_lwlrap"] is None
    summary = json.loads(storage.read_text(storage.join(exp, "ensemble", "ensemble_summary.json")))
    assert summary["test_clips"] == 0
    # an empty oof.parquet is still no trial's outputs
    oof_path = storage.join(out, "oof.parquet")
    storage.write_parquet(pd.read_parquet(oof_path).iloc[:0], oof_path, metadata={"raytag.classes": json.dumps(CLASSES)})
    with pytest.raises(RaytagError, match="oof.parquet: holds no predictions"):
        load_trial(out)


def test_missing_leaderboard_is_a_clear_error(tmp_path):
    with pytest.raises(RaytagError, match="no leaderboard; run `raytag tune`"):
        build_ensemble(str(tmp_path / "nothing"))


def test_oof_truth_from_the_sweeps_dataset(tmp_path):
    """Without oof_truth.csv the curated labels come from the dataset named in sweep.json."""
    import soundfile as sf

    exp = make_experiment(tmp_path, signals=(0.9, 0.5), n=40, n_test=10)
    with_file = build_ensemble(exp, top=2).table
    data = tmp_path / "data"
    (data / "train_curated").mkdir(parents=True)
    (data / "test").mkdir()
    truth = storage.read_csv(storage.join(exp, "trial_0", "outputs", "oof_truth.csv"))
    for cid in truth["clip_id"]:
        sf.write(data / "train_curated" / cid.split("/")[1], np.zeros(800, dtype=np.float32), 8000)
    pd.DataFrame({"fname": truth["clip_id"].str.split("/").str[1], "labels": truth["labels"]}).to_csv(
        data / "train_curated.csv", index=False)
    pd.DataFrame(columns=["fname", *CLASSES]).to_csv(data / "sample_submission.csv", index=False)
    for i in range(2):
        (tmp_path / "exp" / f"trial_{i}" / "outputs" / "oof_truth.csv").unlink()
    with pytest.raises(RaytagError, match="needs the curated labels"):
        build_ensemble(exp, top=2)
    storage.write_text(storage.join(exp, "sweep.json"), json.dumps({"data": str(data)}))
    from_data = build_ensemble(exp, top=2).table
    assert np.allclose(from_data["cv_lwlrap"], with_file["cv_lwlrap"])


def test_cli_ensemble(tmp_path):
    from typer.testing import CliRunner

    from raytag.cli import app

    make_experiment(tmp_path, signals=(0.9, 0.5), n=40, n_test=10)
    result = CliRunner().invoke(app, ["ensemble", "exp", "--storage", str(tmp_path), "--top", "2"])
    assert result.exit_code == 0, result.output
    assert "chosen:" in result.output and "weighted" in result.output
    assert (tmp_path / "exp" / "ensemble" / "artifact" / "manifest.json").exists()
    missing = CliRunner().invoke(app, ["ensemble", "nope", "--storage", str(tmp_path)])
    assert missing.exit_code == 2 and "no leaderboard" in " ".join(missing.output.split())


def test_cli_ensemble_piped_shows_names_and_paths_whole_on_one_line(tmp_path):
    """Piped to a file (CliRunner: not a terminal), rich fitted the output to 80 columns: a
    trial's name was cut with "…" and the artifact's path split across lines, so the file did
    not say which trial or where. Now each comes whole, on one line."""
    from typer.testing import CliRunner

    from raytag.cli import app

    name = "a_sweep_named_at_some_length"
    ids = ("train_fn_7ab02f3c_00003_3_lr=0.0031,width=48", "train_fn_7ab02f3c_00007_7_lr=0.0007,width=32")
    make_experiment(tmp_path, signals=(0.9, 0.5), n=40, n_test=10, name=name, trial_ids=ids)
    result = CliRunner().invoke(app, ["ensemble", name, "--storage", str(tmp_path), "--top", "2"],
                                env={"COLUMNS": "80"})  # as a shell that exports its width would
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for trial_id in ids:  # its row of the table
        assert any(trial_id in line and "single" in line for line in lines), (trial_id, result.output)
    for path in (tmp_path / name / "ensemble" / "artifact", tmp_path / name / "report.html"):
        assert any(str(path) in line for line in lines), (path, result.output)
    assert "…" not in result.output


def test_on_2018_data_candidates_and_the_choice_go_by_map3(tmp_path):
    """A leaderboard ranked by cv_map3 (a 2018 sweep): candidates come in that order, every
    row is scored in MAP@3 with lwlrap beside it, and the chosen combiner has the best OOF MAP@3."""
    from raytag.metrics import map_at_3

    exp = storage.join(str(tmp_path), "exp")
    rng = np.random.default_rng(5)
    n, n_test = 90, 30
    y_oof = np.eye(len(CLASSES), dtype=np.float32)[rng.integers(0, len(CLASSES), n)]  # one label per clip
    y_test = np.eye(len(CLASSES), dtype=np.float32)[rng.integers(0, len(CLASSES), n_test)]
    rows = []
    # the leaderboard's MAP@3 order (given here) is the reverse of the signal strengths
    for i, (signal, map3) in enumerate([(0.9, 0.50), (0.6, 0.60), (0.3, 0.70)]):
        out, cv = make_trial_outputs(exp, f"trial_{i}", y_oof, y_test, signal, seed=20 + i, layout="fsd2018")
        rows.append({"trial_id": f"trial_{i}", "status": "ok", "rank_by": "cv_map3", "cv_lwlrap": cv,
                     "cv_map3": map3, "test_lwlrap": np.nan, "outputs_dir": out})
    storage.write_csv(pd.DataFrame(rows), storage.join(exp, "leaderboard.csv"))

    candidates, _ = select_candidates(exp, top=None, min_cv=0.55)
    assert [c.trial_id for c in candidates] == ["trial_2", "trial_1"]  # by cv_map3, bar in MAP@3
    assert {c.rank_by for c in candidates} == {"cv_map3"}

    res = build_ensemble(exp, top=None)
    t = res.table
    assert res.metric == "cv_map3"
    assert {"cv_map3", "cv_lwlrap", "test_map3", "test_lwlrap"} <= set(t.columns)
    assert t[t.kind == "single"]["name"].tolist() == ["trial_2", "trial_1", "trial_0"]
    oof = pd.read_parquet(storage.join(exp, "trial_0", "outputs", "oof.parquet"))
    single = t[t.name == "trial_0"].iloc[0]
    assert single.cv_map3 == pytest.approx(map_at_3(y_oof.argmax(axis=1), oof[CLASSES].to_numpy()))
    ens = t[t.kind == "ensemble"]
    assert t[t.chosen].iloc[0].cv_map3 == ens["cv_map3"].max()
    summary = json.loads(storage.read_text(storage.join(exp, "ensemble", "ensemble_summary.json")))
    assert summary["chosen_by"] == "cv_map3" and summary["scores"]["metric"] == "cv_map3"
    assert summary["scores"]["cv_map3"] == pytest.approx(t[t.chosen].iloc[0].cv_map3)


def test_a_member_that_cannot_be_saved_is_left_out_and_the_old_artifact_survives(tmp_path):
    """A trial whose fold models are gone is skipped with its reason; and a save that fails
    leaves the artifact already there whole (it may be serving)."""
    import shutil

    from raytag.ensemble.artifact import MemberSpec, load_artifact, save_artifact
    from raytag.errors import ArtifactError

    exp = make_experiment(tmp_path, signals=(0.9, 0.8, 0.7))
    first = build_ensemble(exp, top=2)
    weights = next(Path(exp).rglob("trial_2/outputs/weights"))
    shutil.rmtree(weights)
    again = build_ensemble(exp, top=3)
    assert [s["trial_id"] for s in again.skipped] == ["trial_2"] and "no saved fold models" in again.skipped[0]["reason"]
    assert load_artifact(again.artifact_path).members
    with pytest.raises(ArtifactError, match="no saved fold models"):
        save_artifact(first.artifact_path, [MemberSpec("broken", str(weights.parent))], "mean", None,
                      CLASSES, "fat2019")
    assert len(load_artifact(first.artifact_path).members) == len(again.members)  # untouched


def test_a_second_ensemble_job_while_one_writes_is_refused_and_the_files_describe_one_job(tmp_path, monkeypatch):
    """Only the artifact's own swap was locked: a second job (another terminal, --top 1)
    finishing between the first's artifact and its table left the first's comparison.csv and
    ensemble_summary.json beside the second's artifact. The ensemble folder's lock is now held
    over all of a job's writes."""
    import raytag.ensemble.job as job

    exp = make_experiment(tmp_path, signals=(0.9, 0.8, 0.7))
    real_save, refused, ran = job.save_artifact, [], []

    def save_then_a_second_job(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if not ran:  # another `raytag ensemble` of the experiment, between this one's writes
            ran.append(True)
            try:
                build_ensemble(exp, top=1)
            except storage.LockHeld as err:
                refused.append(str(err))
        return path

    monkeypatch.setattr(job, "save_artifact", save_then_a_second_job)
    result = build_ensemble(exp, top=3)
    assert len(refused) == 1 and "the ensemble folder" in refused[0] and "is in use" in refused[0]
    summary = json.loads(storage.read_text(storage.join(exp, "ensemble", "ensemble_summary.json")))
    shipped = [m.name for m in load_artifact(summary["artifact"]).members]
    assert summary["artifact_members"] == result.artifact_members == shipped
    assert not (Path(exp) / "ensemble" / storage.LOCK_NAME).exists()


def test_a_trial_with_the_classes_in_another_order_is_left_out(tmp_path):
    """Each member's network outputs its classes in its own order: the artifact needs one."""
    import pyarrow.parquet as pq

    exp = make_experiment(tmp_path, signals=(0.9, 0.8))
    out = next(Path(exp).rglob("trial_1/outputs"))
    for name in ("oof.parquet", "test.parquet"):
        table = pq.read_table(out / name)
        meta = dict(table.schema.metadata)
        meta[b"raytag.classes"] = json.dumps(json.loads(meta[b"raytag.classes"])[::-1]).encode()
        pq.write_table(table.replace_schema_metadata(meta), out / name)
    card = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**card, "classes": card["classes"][::-1]}))
    res = build_ensemble(exp, top=2)
    assert [s["reason"] for s in res.skipped] == ["different class list (or order)"]
    assert len(res.members) == 1 and res.skipped[0]["trial_id"] not in res.members


def test_a_trial_with_fold_models_missing_is_left_out(tmp_path):
    """model.json lists the folds whose models were saved: a member missing some would run
    with fewer fold models than it was scored with, so it is left out with the reason."""
    exp = make_experiment(tmp_path, signals=(0.9, 0.8, 0.7))
    weights = Path(exp) / "trial_1" / "outputs" / "weights"
    for k in (1, 2):
        (weights / f"fold{k}.safetensors").unlink()
    res = build_ensemble(exp, top=3)
    assert sorted(res.members) == ["trial_0", "trial_2"]
    reasons = {s["trial_id"]: s["reason"] for s in res.skipped}
    assert "fold1, fold2 missing (model.json lists 0,1,2)" in reasons["trial_1"]


def test_a_trial_whose_model_card_cannot_be_read_is_left_out_and_the_job_finishes(tmp_path):
    """model.json is read when a candidate loads (the artifact needs it), not after scoring:
    an old or incomplete card costs that trial, not the whole job."""
    exp = make_experiment(tmp_path, signals=(0.9, 0.8, 0.7))
    card_path = Path(exp) / "trial_1" / "outputs" / "model.json"
    card = json.loads(card_path.read_text())
    del card["norm_std"]
    card_path.write_text(json.dumps(card))
    res = build_ensemble(exp, top=3)
    assert sorted(res.members) == ["trial_0", "trial_2"]
    reasons = {s["trial_id"]: s["reason"] for s in res.skipped}
    assert "norm_std missing" in reasons["trial_1"]
    assert len(load_artifact(res.artifact_path).members) == 2


def test_top_k_takes_the_next_candidate_in_place_of_one_left_out(tmp_path):
    """--top K counts members, not candidates: a top-K trial that cannot be a member is
    replaced by the next best one."""
    import shutil

    exp = make_experiment(tmp_path, signals=(1.6, 1.0, 0.5, 0.1))
    ranked = [c.trial_id for c in select_candidates(exp, top=None)[0]]
    shutil.rmtree(Path(exp) / ranked[1] / "outputs" / "weights")
    res = build_ensemble(exp, top=2)
    assert res.members == [ranked[0], ranked[2]]
    reasons = {s["trial_id"]: s["reason"] for s in res.skipped}
    assert "no saved fold models" in reasons[ranked[1]] and reasons[ranked[3]] == "not in the top 2"


def test_with_one_outer_fold_fitted_combiners_are_still_scored_on_held_out_clips(tmp_path):
    """cv.folds=[0]: every OOF clip is in one fold, so the rank and weighted combiners are
    scored over seeded groups of the clips, never on the clips they were fitted on."""
    exp = storage.join(str(tmp_path), "exp")
    y, yt = make_truth(100, 1), make_truth(30, 2)
    rows = []
    for i, signal in enumerate((1.2, 1.0, 0.0)):
        out, cv = make_trial_outputs(exp, f"t{i}", y, yt, signal, seed=50 + i, fold_of=np.zeros(100, dtype=int))
        rows.append({"trial_id": f"t{i}", "status": "TERMINATED", "cv_lwlrap": cv, "outputs_dir": out})
    storage.write_csv(pd.DataFrame(rows), storage.join(exp, "leaderboard.csv"))
    res = build_ensemble(exp, top=3)
    t = res.table.set_index("name")
    for name in ("rank", "weighted", res.chosen):
        assert t.loc[name, "cv_method"].startswith("nested oof"), t.loc[name, "cv_method"]
    assert t.loc["weighted", "cv_lwlrap_in_sample"] >= t.loc["weighted", "cv_lwlrap"] - 1e-9
    assert len(res.nested_fold_weights) == 5


def test_a_weighted_mean_s_zero_weight_members_are_not_saved(tmp_path):
    """A member the fitted weights leave at 0 adds nothing: it is not in the artifact (so
    it is not run at predict time), and the artifact predicts as it would with it."""
    import soundfile as sf

    from raytag.ensemble.artifact import MemberSpec, save_artifact

    exp = make_experiment(tmp_path, signals=(1.5, 1.4, 0.0))
    res = build_ensemble(exp, top=3)
    assert res.chosen == "weighted" and res.weights[res.members.index("trial_2")] == 0
    ensemble = json.loads((Path(res.artifact_path) / "ensemble.json").read_text())
    assert ensemble["members"] == [m for m in res.members if m != "trial_2"]
    assert 0 not in ensemble["weights"] and len(ensemble["weights"]) == 2
    assert res.artifact_members == ensemble["members"]
    everyone = str(tmp_path / "all")
    save_artifact(everyone, [MemberSpec(m, str(Path(exp) / m / "outputs")) for m in res.members], "weighted",
                  res.weights, CLASSES, "fat2019")
    wav = tmp_path / "noise.wav"
    sf.write(wav, np.random.default_rng(3).normal(0, 0.1, 8000 * 2).astype(np.float32), 8000)
    saved, _ = load_artifact(res.artifact_path).predict_files([wav])
    full, _ = load_artifact(everyone).predict_files([wav])
    assert np.allclose(saved.to_numpy(), full.to_numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--top", "-1"], "--top -1: give the number of best trials"),
    (["--min-cv", "1.5"], "--min-cv 1.5: a CV bar must lie between 0 and 1"),
    (["--min-cv", "-0.1"], "--min-cv -0.1: a CV bar must lie between 0 and 1"),
])
def test_cli_ensemble_refuses_a_negative_top_and_a_cv_bar_outside_0_1(tmp_path, args, message):
    """--top -1 used to slice off the worst trial silently; no artifact is written now."""
    from typer.testing import CliRunner

    from raytag.cli import app

    make_experiment(tmp_path, signals=(0.9, 0.5), n=40, n_test=10)
    result = CliRunner().invoke(app, ["ensemble", "exp", "--storage", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "exp" / "ensemble").exists()


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_an_empty_or_unreadable_leaderboard_says_how_to_rebuild_it(tmp_path, content):
    """A leaderboard.csv cut to nothing (a disk that filled while tune wrote it) or not text:
    `raytag ensemble` names it and the command that rebuilds it, with no traceback."""
    from typer.testing import CliRunner

    from raytag.cli import app

    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "leaderboard.csv").write_bytes(content)
    result = CliRunner().invoke(app, ["ensemble", "exp", "--storage", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "leaderboard.csv: empty or unreadable leaderboard" in result.output
    assert f"run `raytag report exp --storage {tmp_path}` to rebuild it" in result.output


def test_a_damaged_sweep_json_is_named_where_the_ensemble_reads_the_dataset(tmp_path):
    from raytag.ensemble.job import load_oof_truth

    (tmp_path / "exp" / "trial" / "outputs").mkdir(parents=True)  # no oof_truth.csv: the dataset is read
    (tmp_path / "exp" / "sweep.json").write_text("{nope")
    with pytest.raises(RaytagError, match=r"sweep.json: not valid JSON .*restore it, or remove it"):
        load_oof_truth(str(tmp_path / "exp" / "trial" / "outputs"), str(tmp_path / "exp"))
