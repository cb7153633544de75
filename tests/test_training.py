"""The training engine on Ray Train: one tiny pipeline end to end, a worker killed
mid-epoch (the run resumes from its last checkpoint, not from epoch 0), a rerun with
the same name (resumes, trains nothing), a run that fails once and resumes (the same
results as without the failure), and a pickle planted in a checkpoint (never loaded)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from raytag.config import Config
from raytag.training.precision import resolve_precision
from raytag.training.runner import fit_pipeline

pytestmark = pytest.mark.ray

TINY = {
    "name": "tiny",
    "features": {"n_mels": 32, "hop_length": 320},
    "model": {"name": "cnn2d", "width": 8, "depth": 2, "params": {"hidden": 16}},
    "train": {"crop_seconds": 1.0, "batch_size": 32, "lr": 3e-3, "num_workers": 2},
    "cv": {"n_folds": 3, "folds": [0]},
    "inference": {"overlap": 0.0},
    "pipeline": {
        "warmup": {"epochs": 1},
        "finetune": {"epochs": 2},
        "filter": {"enabled": True, "rule": "min_prob", "threshold": 0.3},
        "pseudo": {"enabled": True, "rounds": 1, "epochs": 1},
    },
}


def _trace_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _traced_fit(cfg: Config, data, out: Path, name: str, trace: Path):
    """fit_pipeline with the workers' trace hook (RAYTAG_TRACE) writing to `trace`."""
    os.environ["RAYTAG_TRACE"] = str(trace)
    try:
        return fit_pipeline(cfg, data, str(out / "results"), name, feature_cache=str(out / "cache"),
                            progress=False)
    finally:
        os.environ.pop("RAYTAG_TRACE", None)


@pytest.fixture(scope="module")
def tiny_run(ray_session, demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    trace = out / "trace.jsonl"
    return _traced_fit(Config.from_dict(TINY), demo_data, out, "tiny", trace), out, trace


def test_pipeline_writes_every_trial_output(tiny_run):
    result, _, _ = tiny_run
    outputs = Path(result.outputs_dir)
    for name in ("oof.parquet", "test.parquet", "stage_oof.parquet", "stages.csv", "metrics.json",
                 "model.json", "config.yaml", "submission.csv", "weights/fold0.safetensors", "history.csv",
                 "oof_truth.csv", "filter/fold0.json", "tsne_filter.png"):
        assert (outputs / name).exists(), name
    oof = pq.read_table(outputs / "oof.parquet")
    classes = json.loads(oof.schema.metadata[b"raytag.classes"])
    df = oof.to_pandas()
    assert list(df.columns[:4]) == ["clip_id", "fold", "run", "stage"]
    assert list(df.columns[4:]) == classes
    assert set(df["fold"]) == {0} and (df["stage"] == "stage2_r0").all()
    assert df[classes].to_numpy().min() >= 0 and df[classes].to_numpy().max() <= 1
    stages = pd.read_csv(outputs / "stages.csv")
    assert list(stages["stage"]) == ["warmup", "finetune", "stage2_r0"]
    assert stages["n_accepted"].notna().any() and "filter_precision" in stages  # demo has noisy truth
    sub = pd.read_csv(outputs / "submission.csv")
    assert list(sub.columns) == ["fname", *classes] and len(sub) > 0
    m = result.metrics
    assert 0 < m["cv_lwlrap"] <= 1 and m["test_lwlrap"] is not None
    assert m["epochs_run"] == 1 + 2 + 1
    # train.precision (auto) resolved on this machine's CPU, recorded with the run
    assert m["precision"] == resolve_precision("auto", torch.device("cpu"))


def test_every_report_carries_the_schedulers_yardstick(tiny_run):
    """rung_epoch counts fold 0's fine-tune and stage-2 epochs (not the warm-up); rung_score is
    fold 0's held-out score then (the 2019 layout's lwlrap), carried over the filter step."""
    result, _, _ = tiny_run
    history = pd.read_csv(Path(result.outputs_dir) / "history.csv")
    assert history["stage"].tolist() == ["warmup", "finetune", "finetune", "filter", "stage2_r0"]
    assert history["rung_epoch"].tolist() == [0, 1, 2, 2, 3]
    assert history["rung_score"].iloc[0] == 0.0
    trained = history["stage"].isin(["finetune", "stage2_r0"])
    assert np.allclose(history.loc[trained, "rung_score"], history.loc[trained, "val_lwlrap"])
    assert history["rung_score"].iloc[3] == history["rung_score"].iloc[2]
    assert "cv_map3" not in history  # MAP@3 only on the 2018 layout


def demo_as_2018(demo: Path, out: Path) -> Path:
    """The demo set in the FSDKaggle2018 layout: one label per clip (curated clips with one
    label are `manually_verified`, noisy clips keep their first label), test clips unlabelled."""
    rows = []
    (out / "audio_train").mkdir(parents=True)
    for split, verified in (("curated", 1), ("noisy", 0)):
        table = pd.read_csv(demo / f"train_{split}.csv")
        for fname, labels in zip(table["fname"], table["labels"]):
            labels = labels.split(",")
            if verified and len(labels) > 1:
                continue
            shutil.copy(demo / f"train_{split}" / fname, out / "audio_train" / f"{split}_{fname}")
            rows.append({"fname": f"{split}_{fname}", "label": labels[0], "manually_verified": verified})
    pd.DataFrame(rows).to_csv(out / "train.csv", index=False)
    shutil.copytree(demo / "test", out / "audio_test")
    test = sorted(p.name for p in (out / "audio_test").iterdir())
    pd.DataFrame({"fname": test, "label": ""}).to_csv(out / "sample_submission.csv", index=False)
    return out


def test_on_the_2018_layout_every_report_has_map3(ray_session, demo_data, tmp_path):
    """val_map3 / cv_map3 beside lwlrap in every report, rung_score in MAP@3, cv_map3 in the metrics."""
    data = demo_as_2018(Path(demo_data), tmp_path / "fsd2018")
    cfg = Config.from_dict({**TINY, "name": "tiny2018", "train": {**TINY["train"], "num_workers": 1},
                            "cv": {"n_folds": 2, "folds": [0]}, "pipeline": {
                                "warmup": {"epochs": 1}, "finetune": {"epochs": 2},
                                "filter": {"enabled": False}, "pseudo": {"enabled": False}}})
    result = fit_pipeline(cfg, data, str(tmp_path / "results"), "t18", feature_cache=str(tmp_path / "cache"),
                          progress=False)
    history = pd.read_csv(Path(result.outputs_dir) / "history.csv")
    assert history["stage"].tolist() == ["warmup", "finetune", "finetune"]
    for key in ("val_map3", "cv_map3", "val_lwlrap", "cv_lwlrap"):
        assert history[key].between(0, 1).all(), key
    assert history["rung_epoch"].tolist() == [0, 1, 2]
    assert np.allclose(history["rung_score"].iloc[1:], history["val_map3"].iloc[1:])
    assert 0 < result.metrics["cv_map3"] <= 1 and 0 < result.metrics["cv_lwlrap"] <= 1
    assert json.loads((Path(result.outputs_dir) / "metrics.json").read_text())["cv_map3"] == \
        pytest.approx(result.metrics["cv_map3"])
    # beside lwlrap by fold and by stage too, and the run's artifact is ranked by it (what `raytag train` prints)
    assert set(result.metrics["fold_map3"]) == set(result.metrics["fold_lwlrap"]) == {"0"}
    assert result.metrics["fold_map3"]["0"] == pytest.approx(result.metrics["cv_map3"])  # fold 0 is all the OOF
    assert pd.read_csv(Path(result.outputs_dir) / "stages.csv")["cv_map3"].between(0, 1).all()
    from raytag.ensemble.artifact import load_artifact
    from raytag.ensemble.members import save_run_artifact

    scores = load_artifact(save_run_artifact(cfg, result)).scores
    assert scores["metric"] == "cv_map3" and scores["cv_map3"] == pytest.approx(result.metrics["cv_map3"])


def test_refit_trains_one_more_model_on_every_curated_clip(tiny_run, demo_data, tmp_path):
    """cv.refit: after fold 0 of 2, a model (fold id 2) on every curated clip joins the test
    average and the weights, adds nothing to CV, and leaves the scheduler's yardstick alone."""
    cfg = Config.from_dict({**TINY, "name": "refit", "train": {**TINY["train"], "num_workers": 1},
                            "cv": {"n_folds": 2, "folds": [0], "refit": True}, "pipeline": {
                                "warmup": {"enabled": False}, "finetune": {"epochs": 1},
                                "filter": {"enabled": False}, "pseudo": {"enabled": False}}})
    _, tiny_out, _ = tiny_run  # its feature cache: the same front end
    result = fit_pipeline(cfg, demo_data, str(tmp_path / "results"), "refit", feature_cache=str(tiny_out / "cache"),
                          progress=False)
    out = Path(result.outputs_dir)
    history = pd.read_csv(out / "history.csv")
    assert history["fold"].tolist() == [0, 2]
    refit = history[history["fold"] == 2]
    # no held-out clips: the refit's rows carry the CV of the folds, and the rungs stay frozen
    assert np.allclose(refit["val_lwlrap"], result.metrics["cv_lwlrap"])
    assert refit["rung_epoch"].tolist() == [1] and (refit["rung_score"] == history["rung_score"].iloc[0]).all()
    assert set(pd.read_parquet(out / "oof.parquet")["fold"]) == {0}
    assert list(result.metrics["fold_lwlrap"]) == ["0"]
    assert result.metrics["cv_lwlrap"] == pytest.approx(result.metrics["fold_lwlrap"]["0"])
    test = pd.read_parquet(out / "test.parquet")
    assert set(test["fold"]) == {0, 2}
    classes = [c for c in test.columns if c not in ("clip_id", "fold", "run", "stage")]
    by_fold = {f: g.set_index("clip_id")[classes].sort_index() for f, g in test.groupby("fold")}
    assert not np.allclose(by_fold[0].to_numpy(), by_fold[2].to_numpy())  # another model
    assert (out / "weights" / "fold2.safetensors").exists()
    assert json.loads((out / "model.json").read_text())["refit_fold"] == 2


def test_noisy_folds_give_every_held_out_noisy_clip_an_out_of_fold_prediction(tiny_run, demo_data, tmp_path):
    """cv.noisy_folds: fold 0's model is filtered and pseudo-labelled on the noisy clips of
    the other folds only, and its final (stage-2) model predicts fold 0's noisy clips into
    noisy_oof.parquet, which `raytag distill` reads as out-of-fold targets."""
    from raytag.data.layouts import load_dataset
    from raytag.training.outputs import read_noisy_oof

    cfg = Config.from_dict({**TINY, "name": "noisyfolds", "cv": {"n_folds": 2, "folds": [0], "noisy_folds": True},
                            "pipeline": {**TINY["pipeline"], "warmup": {"enabled": False},
                                         "finetune": {"epochs": 1, "noisy": "all"}}})
    _, tiny_out, _ = tiny_run  # its feature cache: the same front end
    result = fit_pipeline(cfg, demo_data, str(tmp_path / "results"), "noisyfolds",
                          feature_cache=str(tiny_out / "cache"), progress=False)
    out = Path(result.outputs_dir)
    noisy_oof = pd.read_parquet(out / "noisy_oof.parquet")
    decision = json.loads((out / "filter" / "fold0.json").read_text())
    scored = set(decision["accepted"]) | set(decision["unlabelled"])  # what the filter saw: fold 0's training clips
    held = set(noisy_oof["clip_id"])
    assert held and not held & scored and len(noisy_oof) == len(held) == result.metrics["noisy_oof_clips"]
    assert held | scored == set(load_dataset(demo_data).split("noisy")["clip_id"])
    assert 0.3 < len(held) / (len(held) + len(scored)) < 0.7  # about half of the noisy clips, with 2 folds
    assert set(noisy_oof["fold"]) == {0} and set(noisy_oof["stage"]) == {"stage2_r0"}
    classes = [c for c in noisy_oof.columns if c not in ("clip_id", "fold", "run", "stage")]
    assert noisy_oof[classes].to_numpy().std() > 0  # the model's outputs, not a placeholder
    assert read_noisy_oof(str(out)).shape == (len(held), len(classes))
    assert read_noisy_oof(tiny_run[0].outputs_dir) is None  # trained without noisy folds


def assert_rerun_resumes(result, cfg: Config, data, out: Path, name: str, trace: Path):
    """The finished run `name` fitted again: it resumes from its last checkpoint, trains
    nothing, and ends with the same CV."""
    again = _traced_fit(cfg, data, out, name, trace)
    events = _trace_events(trace)
    assert not [e for e in events if e["event"] == "epoch_start"], "a finished run trained again"
    assert [e for e in events if e["event"] == "resume"]
    assert again.metrics["cv_lwlrap"] == pytest.approx(result.metrics["cv_lwlrap"])


def test_rerun_with_same_name_resumes_instead_of_training(tiny_run, demo_data):
    result, out, _ = tiny_run
    assert_rerun_resumes(result, Config.from_dict(TINY), demo_data, out, "tiny", out / "trace2.jsonl")


def test_a_rerun_with_other_settings_is_refused_not_mixed_into_the_run(tiny_run, demo_data):
    """Rerunning a name resumes its checkpoints: with another seed (or folds, or model) that
    would mix two runs in one folder, so it is refused, naming the difference."""
    from raytag.config import ConfigError

    result, out, _ = tiny_run
    before = sorted(p.name for p in Path(result.run_dir).iterdir())
    other = Config.from_dict({**TINY, "seed": TINY.get("seed", 0) + 1})
    with pytest.raises(ConfigError, match=r"other settings \(seed: \d+ then, \d+ now\).*another --name"):
        _traced_fit(other, demo_data, out, "tiny", out / "trace-refused.jsonl")
    assert sorted(p.name for p in Path(result.run_dir).iterdir()) == before


def test_a_run_that_fails_and_resumes_matches_the_uninterrupted_run(tiny_run, demo_data, monkeypatch):
    """The tiny run again with `train.checkpoint_every: 2` and rank 0 failing once at the start of
    epoch 2 (RAYTAG_FAIL_ONCE): the group restarts from the checkpoint after the warm-up (the
    fine-tune's first epoch has none), restores its run files (the warm-up weights) and train
    state, and ends with the same reports, fold weights and scores as the uninterrupted run (the
    same config and seed give the same results)."""
    from safetensors.torch import load_file

    result, out, _ = tiny_run
    marker, trace = out / "failed-once", out / "trace-twin.jsonl"
    monkeypatch.setenv("RAYTAG_FAIL_ONCE", f"2:{marker}")
    cfg = Config.from_dict({**TINY, "train": {**TINY["train"], "checkpoint_every": 2}})
    twin = _traced_fit(cfg, demo_data, out, "tiny-twin", trace)
    assert marker.exists(), "the injected failure never happened"
    events = _trace_events(trace)
    resumes = [e for e in events if e["event"] == "resume"]
    assert resumes and all(e["global_step"] == 1 for e in resumes), resumes  # after the warm-up
    # checkpoints after: the warm-up, (failure; resume) the fine-tune's 2nd epoch, the filter, stage 2
    assert [e["global_step"] for e in events if e["event"] == "checkpoint"] == [1, 3, 3, 4]
    columns = ["step", "stage", "fold", "epoch", "train_loss", "val_lwlrap", "cv_lwlrap", "rung_score"]
    history = pd.read_csv(Path(result.outputs_dir) / "history.csv")[columns]
    twin_history = pd.read_csv(Path(twin.outputs_dir) / "history.csv")[columns]
    pd.testing.assert_frame_equal(twin_history, history, check_exact=False, rtol=0, atol=1e-6)
    weights = load_file(Path(result.outputs_dir) / "weights" / "fold0.safetensors")
    twin_weights = load_file(Path(twin.outputs_dir) / "weights" / "fold0.safetensors")
    for name, tensor in weights.items():
        np.testing.assert_allclose(twin_weights[name].numpy(), tensor.numpy(), rtol=0, atol=1e-6, err_msg=name)
    assert twin.metrics["cv_lwlrap"] == pytest.approx(result.metrics["cv_lwlrap"], abs=1e-6)


@pytest.mark.slow
def test_weight_averaging_survives_a_failure_inside_its_window(ray_session, demo_data, tmp_path, monkeypatch):
    """`train.average_last`: a 4-epoch fine-tune (the only stage) averages its last 2 epochs'
    weights. Rank 0 fails at the start of the 4th, after the 3rd epoch's weights joined the sum;
    the group resumes from that checkpoint with the running sum (train_state.average) and ends
    with the same fold weights as the same run without the failure."""
    from safetensors.torch import load_file

    cfg = Config.from_dict({**TINY, "train": {**TINY["train"], "average_last": 2}, "pipeline": {
        "warmup": {"enabled": False}, "finetune": {"epochs": 4},
        "filter": {"enabled": False}, "pseudo": {"enabled": False}}})
    plain = _traced_fit(cfg, demo_data, tmp_path, "avg", tmp_path / "trace.jsonl")
    marker, trace = tmp_path / "failed-once", tmp_path / "trace-twin.jsonl"
    monkeypatch.setenv("RAYTAG_FAIL_ONCE", f"3:{marker}")  # global steps: fine-tune 0-3
    twin = _traced_fit(cfg, demo_data, tmp_path, "avg-twin", trace)
    assert marker.exists(), "the injected failure never happened"
    resumes = [e["global_step"] for e in _trace_events(trace) if e["event"] == "resume"]
    assert resumes and set(resumes) == {3}, resumes  # every rank, from the 3rd fine-tune epoch's checkpoint
    weights = load_file(Path(plain.outputs_dir) / "weights" / "fold0.safetensors")
    twin_weights = load_file(Path(twin.outputs_dir) / "weights" / "fold0.safetensors")
    for name, tensor in weights.items():
        np.testing.assert_allclose(twin_weights[name].numpy(), tensor.numpy(), rtol=0, atol=1e-6, err_msg=name)
    assert twin.metrics["cv_lwlrap"] == pytest.approx(plain.metrics["cv_lwlrap"], abs=1e-6)


def test_a_pickle_planted_in_a_checkpoint_is_never_loaded(tiny_run, demo_data):
    """Issue 12: anyone who can write to --storage could put a pickle in a checkpoint, which the
    old format loaded (torch.load(weights_only=False)) on every resuming worker. Every file of
    the run's checkpoints that is not JSON becomes a pickle that writes a marker file when
    loaded, and a train_state.pt (the old format's name) is added: a rerun is refused with an
    error that says why, and the pickle never runs."""
    import pickle

    class WritesMarker:
        def __reduce__(self):
            return (Path.write_text, (marker, "pickle code ran"))

    result, out, _ = tiny_run
    marker = out / "pickle-ran"
    evil = pickle.dumps(WritesMarker())
    run_dir = Path(result.run_dir)
    originals = {p: p.read_bytes() for p in run_dir.glob("checkpoint_*/**/*") if p.is_file()}
    assert originals
    planted = [p for p in originals if p.suffix != ".json"]
    planted += [d / "train_state.pt" for d in run_dir.glob("checkpoint_*") if d.is_dir()]
    try:
        for path in planted:
            path.write_bytes(evil)
        with pytest.raises(Exception) as refused:
            fit_pipeline(Config.from_dict(TINY), demo_data, str(out / "results"), "tiny",
                         feature_cache=str(out / "cache"), progress=False)
    finally:
        for path in planted:
            path.unlink(missing_ok=True)
        for path, data in originals.items():
            path.write_bytes(data)
    assert not marker.exists(), "a pickle planted in a checkpoint was loaded"
    from raytag.errors import CheckpointError  # the driver refuses before any worker starts

    assert isinstance(refused.value, CheckpointError), refused.value
    assert "train_state.pt" in str(refused.value) and "no longer loads pickles" in str(refused.value)


def _registered_step(run_dir: Path) -> int:
    """Global step of the latest checkpoint Ray Train has registered (what a restart loads)."""
    snap = run_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snap.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, ValueError):
        return -1
    return int(latest.get("metrics", {}).get("step", -1))


@pytest.mark.slow
def test_worker_killed_mid_epoch_resumes_from_last_checkpoint(ray_session, demo_data, tmp_path):
    """SIGKILL a training worker inside an epoch (>= the 3rd): FailureConfig restarts the
    group, which must continue from the last registered checkpoint, not at epoch 0."""
    cfg = Config.from_dict({**TINY, "name": "killed",
                            "train": {**TINY["train"], "batch_size": 8},  # several steps per epoch
                            "pipeline": {"warmup": {"enabled": False}, "finetune": {"epochs": 5},
                                         "filter": {"enabled": False}, "pseudo": {"enabled": False}}})
    trace = tmp_path / "trace.jsonl"
    run_dir = tmp_path / "results" / "killed"
    killed: list[dict] = []
    registered_at_restart: list[int] = []

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            starts = [e for e in _trace_events(trace) if e["event"] == "epoch_start" and e["rank"] == 1]
            if starts and starts[-1]["global_step"] >= 2 and _registered_step(run_dir) == starts[-1]["global_step"]:
                os.kill(starts[-1]["pid"], signal.SIGKILL)  # the checkpoint before this epoch is registered
                killed.append(starts[-1])
            time.sleep(0.01)  # the tiny run's epochs take about 0.2 s
        # On a loaded machine the epoch may still end, and its checkpoint register, between
        # the check and the kill. What the restart must load is the checkpoint registered
        # when it starts: nothing registers between the group's death and its first resume.
        while time.time() < deadline:
            if any(e["event"] == "resume" for e in _trace_events(trace)):
                registered_at_restart.append(_registered_step(run_dir))
                return
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        result = _traced_fit(cfg, demo_data, tmp_path, "killed", trace)
    finally:
        thread.join(timeout=1)
    assert killed, "the test never caught a worker inside epoch 3 or later"
    at = killed[0]["global_step"]
    assert registered_at_restart and registered_at_restart[0] in (at, at + 1), (at, registered_at_restart)
    resumed_at = registered_at_restart[0]
    events = _trace_events(trace)
    resumes = [e for e in events if e["event"] == "resume"]
    assert resumes and all(r["global_step"] == resumed_at for r in resumes), (resumed_at, resumes)
    starts = [e["global_step"] for e in events if e["event"] == "epoch_start" and e["rank"] == 0]
    assert starts.count(0) == 1, "training started over from epoch 0"
    restart = min(r["time"] for r in resumes)
    after = [e["global_step"] for e in events
             if e["event"] == "epoch_start" and e["rank"] == 0 and e["time"] > restart]
    assert after == list(range(resumed_at, 5))  # the second attempt runs the rest, once
    assert result.metrics["epochs_run"] == 5
    assert np.isfinite(result.metrics["cv_lwlrap"])


def test_a_node_without_the_drivers_store_builds_its_own(ray_session, demo_data, tmp_path):
    """On a cluster, a worker whose node lacks the driver's store path builds the store
    from the plan's data reference into its own cache, and it holds every planned clip."""
    from dataclasses import replace

    from raytag.training.runner import prepare_data
    from raytag.training.worker import open_node_store

    cfg = Config.from_dict(TINY)
    _, store, plan = prepare_data(cfg, demo_data, str(tmp_path / "driver-cache"), progress=False)
    elsewhere = replace(plan, store_path=str(tmp_path / "not-on-this-node"),
                        feature_cache=str(tmp_path / "node-cache"))
    node_store = open_node_store(elsewhere)
    assert str(node_store.path).startswith(str(tmp_path / "node-cache"))
    assert set(plan.curated_ids + plan.noisy_ids + plan.test_ids) <= set(node_store.clip_ids)
    some = plan.curated_ids[0]
    np.testing.assert_array_equal(node_store.get(some), store.get(some))


def test_the_artifact_predicts_what_the_trial_scored(tiny_run, demo_data, tmp_path):
    """Issue 10: the ensemble job scores the trial's test.parquet (made by the Train workers from the
    float16 feature store); `predict` recomputes float32 features from the audio with the saved fold
    weights. The member's probabilities must agree per clip and class up to the store's float16
    rounding (about 0.03 dB), whatever the number of workers (the tiny run has 2), and the combined
    scores must be the job's combiner applied to them."""
    import dataclasses

    from raytag.ensemble.artifact import load_artifact
    from raytag.ensemble.job import build_ensemble

    result, _, _ = tiny_run
    exp = tmp_path / "exp"
    exp.mkdir()
    pd.DataFrame([{"trial_id": "t0", "status": "TERMINATED", "cv_lwlrap": result.metrics["cv_lwlrap"],
                   "test_lwlrap": np.nan, "outputs_dir": result.outputs_dir}]).to_csv(exp / "leaderboard.csv",
                                                                                        index=False)
    art = load_artifact(build_ensemble(str(exp), top=1).artifact_path)
    test = pd.read_parquet(Path(result.outputs_dir) / "test.parquet")
    trial = test.groupby("clip_id")[art.classes].mean()  # fold models averaged, as the ensemble job does
    paths = [Path(demo_data) / "test" / cid.split("/", 1)[1] for cid in trial.index]
    raw, failures = dataclasses.replace(art, combiner="mean").predict_files(paths)  # the member's probabilities
    assert failures.empty
    # measured: 2.4e-6 at most (float16 store against float32 features); 1.7e-3 before every rank
    # predicted with rank 0's BatchNorm statistics, which the rank combiner magnified to 0.08
    diff = np.abs(raw.to_numpy() - trial.to_numpy())
    assert diff.max() < 1e-4, diff.max()
    combined, _ = art.predict_files(paths)
    np.testing.assert_allclose(combined.to_numpy(), art.combine([raw.to_numpy()]), atol=1e-6)
    np.testing.assert_allclose(combined.to_numpy(), art.combine([trial.to_numpy()]), atol=1e-2)
