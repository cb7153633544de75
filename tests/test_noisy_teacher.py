"""train.noisy_teacher: a finished run's fold models teach the noisy clips' targets, each fold
by the teacher's model of the same fold (raytag.ensemble.noisy_teacher)."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raytag.config import Config, ConfigError
from raytag.data.layouts import load_dataset
from raytag.ensemble.artifact import Artifact, Member, load_artifact
from raytag.ensemble.members import save_run_artifact
from raytag.ensemble.noisy_teacher import (
    CACHE_DIR, cache_key, fold_safe_teacher, noisy_teacher_targets, teacher_identity,
)
from raytag.ensemble.tagging import predict_files
from raytag.errors import RaytagError
from raytag.training.dataset import LabelledSet
from raytag.training.run_state import _Context
from raytag.training.runner import fit_pipeline, prepare_data

pytestmark = pytest.mark.ray

BASE = {
    "features": {"n_mels": 32, "hop_length": 320},
    "model": {"name": "cnn2d", "width": 8, "depth": 2, "params": {"hidden": 0}},
    "train": {"crop_seconds": 1.0, "batch_size": 32, "lr": 3e-3, "num_workers": 1, "cpus_per_worker": 1},
    "cv": {"n_folds": 3, "folds": [1, 2]},  # fold ids unlike their positions (0, 1)
    "inference": {"overlap": 0.0},
    "pipeline": {"warmup": {"enabled": False}, "finetune": {"epochs": 1, "noisy": "all"},
                 "filter": {"enabled": False}, "pseudo": {"enabled": False}},
}


def _cfg(**sections) -> Config:
    return Config.from_dict({**BASE, **sections})


def _taught(artifact: str, **teacher) -> Config:
    return _cfg(train={**BASE["train"], "noisy_teacher": {"artifact": artifact, **teacher}})


@pytest.fixture(scope="module")
def teacher(ray_session, demo_data, tmp_path_factory):
    """A finished run of folds 1 and 2 and its artifact."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = _cfg()
    result = fit_pipeline(cfg, demo_data, str(out / "results"), "teacher", feature_cache=str(out / "cache"),
                          progress=False)
    return save_run_artifact(cfg, result), out


def test_each_fold_learns_noisy_clips_from_the_teachers_model_of_that_fold(teacher, demo_data):
    artifact, out = teacher
    cfg = _taught(artifact, label_weight=0.25)
    dataset, _, plan = prepare_data(cfg, demo_data, str(out / "cache"), progress=False)
    targets, identity = noisy_teacher_targets(cfg, plan, dataset, str(out / "cache"))
    assert sorted(targets) == [1, 2] and identity == teacher_identity(artifact)
    art = load_artifact(artifact)
    (member,) = art.members
    assert member.settings["folds"] == ["fold1.safetensors", "fold2.safetensors"]
    paths = dataset.clips.set_index("clip_id").loc[plan.noisy_ids, "path"].astype(str).tolist()
    for fold, position in ((1, 0), (2, 1)):  # built here by hand, not with fold_teachers
        alone = dataclasses.replace(art, members=[dataclasses.replace(member, models=[member.models[position]])])
        probs, failures = predict_files(alone, paths)
        assert failures.empty
        want = 0.25 * plan.noisy_y + 0.75 * probs.loc[paths].to_numpy(np.float32)
        np.testing.assert_allclose(targets[fold], want, atol=1e-6)
    assert not np.allclose(targets[1], targets[2])  # two fold models, two teachers


def test_the_predictions_are_cached_and_read_back(teacher, demo_data):
    artifact, out = teacher
    cache = out / "cache_read"
    cfg = _taught(artifact, label_weight=0.0)
    dataset, _, plan = prepare_data(cfg, demo_data, str(out / "cache"), progress=False)
    noisy_teacher_targets(cfg, plan, dataset, str(cache))
    (cached,) = list((cache / CACHE_DIR).glob("*.npz"))
    planted = {f"fold{f}": np.full((len(plan.noisy_ids), len(plan.classes)), 0.25 * f, np.float32) for f in (1, 2)}
    np.savez(cached, **planted)
    again, _ = noisy_teacher_targets(cfg, plan, dataset, str(cache))
    assert np.all(again[1] == 0.25) and np.all(again[2] == 0.5)  # read, not made again
    cached.write_bytes(b"cut short")  # a torn file (BadZipFile) is made again, not a crash
    remade, _ = noisy_teacher_targets(cfg, plan, dataset, str(cache))
    assert not np.all(remade[1] == 0.25)


def test_the_cached_predictions_are_made_again_when_the_decoder_or_front_end_changes(teacher, monkeypatch):
    """The key held the teacher, folds and files, not the feature store's decoder version, so an
    upgrade that decodes otherwise (as FEATURES_VERSION 2 did) kept serving the old predictions."""
    from raytag.features import store

    art = load_artifact(teacher[0])
    key = lambda: cache_key(art, [1, 2], ["noisy/a.wav"], ["/nowhere/a.wav"])
    before = key()
    assert key() == before
    monkeypatch.setattr(store, "FEATURES_VERSION", store.FEATURES_VERSION + 1)
    assert key() != before


def test_the_cached_predictions_are_made_again_when_a_noisy_clip_is_replaced_keeping_its_size_and_mtime(tmp_path):
    """The key held each noisy file's size and mtime, which `cp -p`, `rsync -a` or an archive
    extracted again keep: other audio under the same name kept the old predictions. The
    change time moves, and the key holds it."""
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    art = Artifact(path=str(folder), combiner="mean", weights=None, classes=["a"], layout="fat2019",
                   members=[Member("m0", {"features": BASE["features"]}, [])])
    clip = tmp_path / "n1.wav"
    clip.write_bytes(b"a" * 10)
    key = lambda: cache_key(art, [1, 2], ["noisy/n1.wav"], [str(clip)])
    before, st = key(), clip.stat()
    assert key() == before
    time.sleep(0.01)  # change times tick with the kernel's clock, coarsely on some kernels
    clip.write_bytes(b"b" * 10)
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert clip.stat().st_size == st.st_size and key() != before


def test_a_run_with_a_teacher_trains_and_its_noisy_set_takes_the_fold_targets(teacher, demo_data, tmp_path):
    artifact, out = teacher
    cfg = _taught(str(out / "results" / "teacher"))
    result = fit_pipeline(cfg, demo_data, str(tmp_path / "results"), "student", feature_cache=str(out / "cache"),
                          progress=False, noisy_teacher=noisy_teacher_targets)
    plain = fit_pipeline(_cfg(), demo_data, str(tmp_path / "results"), "plain", feature_cache=str(out / "cache"),
                         progress=False)
    # the same seed, clips and crops: only the noisy clips' targets differ, so the losses do
    losses = [pd.read_csv(f"{r.outputs_dir}/history.csv")["train_loss"].dropna().to_numpy() for r in (result, plain)]
    assert len(losses[0]) == len(losses[1]) == 2 and not np.allclose(losses[0], losses[1])
    dataset, store, plan = prepare_data(cfg, demo_data, str(out / "cache"), progress=False)
    plan.noisy_targets = {1: np.full_like(plan.noisy_y, 0.3), 2: np.full_like(plan.noisy_y, 0.6)}
    ctx = _Context(plan, cfg, store, 0, 1, torch.device("cpu"), state=None, n_steps=1)
    fold2 = ctx.noisy(plan.noisy_ids[:3], fold=2)
    assert isinstance(fold2, LabelledSet) and np.all(fold2.targets == 0.6)
    warmup = ctx.noisy(plan.noisy_ids[:3])  # the shared warm-up has no teacher fold: given labels
    np.testing.assert_array_equal(warmup.targets, plan.noisy_y[:3])


def test_fit_pipeline_without_a_way_to_load_the_teacher_refuses_it(teacher, demo_data, tmp_path):
    artifact, out = teacher
    with pytest.raises(ConfigError, match="noisy_teacher"):
        fit_pipeline(_taught(artifact), demo_data, str(tmp_path / "results"), "x", feature_cache=str(out / "cache"),
                     progress=False)


def test_a_teacher_with_other_folds_is_refused(teacher, demo_data):
    artifact, out = teacher
    cfg = _taught(artifact)
    cfg = cfg.with_overrides({"cv.seed": 7})
    dataset, _, plan = prepare_data(cfg, demo_data, str(out / "cache"), progress=False)
    with pytest.raises(RaytagError, match="leak"):
        noisy_teacher_targets(cfg, plan, dataset, str(out / "cache"))


def test_a_teacher_missing_a_fold_is_refused(teacher, demo_data):
    artifact, out = teacher
    cfg = _taught(artifact).with_overrides({"cv.folds": [0, 1, 2]})
    dataset, _, plan = prepare_data(cfg, demo_data, str(out / "cache"), progress=False)
    with pytest.raises(RaytagError, match=r"no model of fold\(s\) \[0\]"):
        noisy_teacher_targets(cfg, plan, dataset, str(out / "cache"))


def test_a_folder_without_an_artifact_is_refused(demo_data, tmp_path):
    cfg = _taught(str(tmp_path))
    with pytest.raises(RaytagError, match="holds no artifact"):
        noisy_teacher_targets(cfg, None, load_dataset(demo_data), str(tmp_path))


def test_weights_fitted_on_every_folds_labels_do_not_teach_a_fold(teacher):
    artifact, _ = teacher
    art = load_artifact(artifact)
    weighted = dataclasses.replace(art, combiner="weighted", weights=[1.0])
    safe = fold_safe_teacher(weighted)
    assert safe.combiner == "mean" and safe.weights is None
    ranked = dataclasses.replace(art, combiner="rank")
    assert fold_safe_teacher(ranked).combiner == "mean"
    assert fold_safe_teacher(art) is art


def test_a_relative_teacher_path_is_taken_from_the_command_s_folder(teacher, tmp_path, monkeypatch):
    artifact, out = teacher
    monkeypatch.chdir(out)
    relative = str(Path(artifact).relative_to(out))
    cfg = _taught(relative).with_overrides({"cv.clip_groups": "not-here.csv"})
    monkeypatch.chdir(tmp_path)  # a Tune trial runs in a folder of its own
    resolved = cfg.with_absolute_paths(out)
    assert resolved.train.noisy_teacher.artifact == str(Path(artifact).resolve())
    assert resolved.cv.clip_groups == "not-here.csv"  # not there: left as given (looked up in the dataset)
    assert cfg.with_absolute_paths(tmp_path) is cfg


def test_label_weight_is_checked():
    with pytest.raises(Exception, match="label_weight"):
        _taught("x", label_weight=1.5)


def _recording_fit(cfg, data, storage, name, callbacks=(), feature_cache=None, progress=True, noisy_teacher=None):
    """Stands in for fit_pipeline in a sweep: writes what the trial was given, then fails."""
    (Path(data) / "seen.json").write_text(json.dumps({
        "artifact": cfg.train.noisy_teacher.artifact, "cwd": os.getcwd(),
        "teacher": getattr(noisy_teacher, "__name__", None)}))
    raise ConfigError("recorded")


def test_a_sweep_gives_each_trial_the_teacher_and_the_path_from_its_own_folder(ray_session, tmp_path, monkeypatch):
    from ray import cloudpickle

    from raytag.search.tuner import run_sweep

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "runs" / "default").mkdir(parents=True)
    space = tmp_path / "one.yaml"
    space.write_text("name: one\nspace:\n  train.lr: {choice: [0.001]}\n"
                     "search: {samples: 1, scheduler: fifo, max_concurrent_trials: 1, seed: 0}\n"
                     "resources: {num_workers: 1, cpus_per_worker: 0.5, trial_cpus: 0.25}\n")
    monkeypatch.chdir(tmp_path)
    run_sweep(space, data, storage=str(tmp_path / "res"), name="t", trial_fn=_recording_fit, progress=False,
              settings={"train.noisy_teacher.artifact": "runs/default"}, noisy_teacher=noisy_teacher_targets)
    seen = json.loads((data / "seen.json").read_text())
    assert seen["artifact"] == str((tmp_path / "runs" / "default").resolve())
    assert seen["teacher"] == "noisy_teacher_targets"


def test_paths_left_as_given_where_the_run_looks_elsewhere_first(tmp_path):
    (tmp_path / "esc50").mkdir()  # a dataset folder named like a shipped groups set
    (tmp_path / "groups.csv").write_text("fname,group\n")
    (tmp_path / "mine.yaml").write_text("a: [x]\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "groups.csv").write_text("fname,group\n")
    cfg = Config.from_dict({"cv": {"clip_groups": "groups.csv"},
                            "pipeline": {"label_spreading": {"groups_file": "esc50"}}})
    kept = cfg.with_absolute_paths(tmp_path, data_root=data)
    assert kept.pipeline.label_spreading.groups_file == "esc50"  # shipped: esc50.yaml
    assert kept.cv.clip_groups == "groups.csv"  # the dataset folder's, as raytag train reads it
    moved = cfg.with_overrides({"pipeline.label_spreading.groups_file": "mine.yaml"}).with_absolute_paths(tmp_path)
    assert moved.cv.clip_groups == str(tmp_path / "groups.csv")
    assert moved.pipeline.label_spreading.groups_file == str(tmp_path / "mine.yaml")


def test_a_weighted_teacher_is_known_apart_from_itself_unweighted(teacher, demo_data, monkeypatch):
    """Its fold targets use the members' mean, unlike the targets of a run begun with its weights
    (before fold_safe_teacher): the identity says so, so such a run is refused on resume."""
    import raytag.ensemble.noisy_teacher as noisy_teacher_module

    artifact, out = teacher
    original = noisy_teacher_module.load_artifact
    monkeypatch.setattr(noisy_teacher_module, "load_artifact", lambda path, device="cpu": dataclasses.replace(
        original(path, device), combiner="weighted", weights=[1.0]))
    cfg = _taught(artifact)
    dataset, _, plan = prepare_data(cfg, demo_data, str(out / "cache"), progress=False)
    _, identity = noisy_teacher_targets(cfg, plan, dataset, str(out / "cache"))
    assert identity.startswith(teacher_identity(artifact)) and identity != teacher_identity(artifact)


def test_a_sweep_without_a_way_to_load_the_teacher_is_refused_before_any_trial(ray_session, tmp_path):
    from raytag.search.tuner import run_sweep

    data = tmp_path / "data"
    data.mkdir()
    space = tmp_path / "one.yaml"
    space.write_text("name: one\nbase:\n  train.noisy_teacher.artifact: somewhere\nspace:\n"
                     "  train.lr: {choice: [0.001]}\n"
                     "search: {samples: 1, scheduler: fifo, max_concurrent_trials: 1, seed: 0}\n"
                     "resources: {num_workers: 1, cpus_per_worker: 0.5, trial_cpus: 0.25}\n")
    with pytest.raises(RaytagError, match="no way to load a teacher"):
        run_sweep(space, data, storage=str(tmp_path / "res"), name="t", trial_fn=_recording_fit, progress=False)
    assert not (tmp_path / "res" / "t" / "trials").exists()
