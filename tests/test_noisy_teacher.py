"""train.noisy_teacher: a finished run's fold models teach the noisy clips' targets, each fold
by the teacher's model of the same fold (raytag.ensemble.noisy_teacher)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from raytag.config import Config
from raytag.data.layouts import load_dataset
from raytag.ensemble.artifact import load_artifact
from raytag.ensemble.members import save_run_artifact
from raytag.ensemble.noisy_teacher import CACHE_DIR, fold_teachers, noisy_teacher_targets
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
    "cv": {"n_folds": 3, "folds": [0, 1]},
    "inference": {"overlap": 0.0},
    "pipeline": {"warmup": {"enabled": False}, "finetune": {"epochs": 1, "noisy": "all"},
                 "filter": {"enabled": False}, "pseudo": {"enabled": False}},
}


def _cfg(**sections) -> Config:
    return Config.from_dict({**BASE, **sections})


@pytest.fixture(scope="module")
def teacher(ray_session, demo_data, tmp_path_factory):
    """A finished two-fold run and its artifact."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = _cfg()
    result = fit_pipeline(cfg, demo_data, str(out / "results"), "teacher", feature_cache=str(out / "cache"),
                          progress=False)
    return save_run_artifact(cfg, result), out


def test_each_fold_learns_noisy_clips_from_the_teachers_model_of_that_fold(teacher, demo_data):
    artifact, out = teacher
    cfg = _cfg(train={**BASE["train"], "noisy_teacher": {"artifact": artifact, "label_weight": 0.25}})
    dataset, _, plan = prepare_data(cfg, demo_data, str(out / "cache"), progress=False)
    targets = noisy_teacher_targets(cfg, plan, dataset, str(out / "cache"))
    assert sorted(targets) == [0, 1]
    art = load_artifact(artifact)
    paths = dataset.clips.set_index("clip_id").loc[plan.noisy_ids, "path"].astype(str).tolist()
    for fold, fold_art in zip((0, 1), fold_teachers(art, [0, 1])):
        probs, failures = predict_files(fold_art, paths)
        assert failures.empty
        want = 0.25 * plan.noisy_y + 0.75 * probs.loc[paths].to_numpy(np.float32)
        np.testing.assert_allclose(targets[fold], want, atol=1e-6)
    assert not np.allclose(targets[0], targets[1])  # two fold models, two teachers
    assert len(list((out / "cache" / CACHE_DIR).glob("*.npz"))) == 1
    again = noisy_teacher_targets(cfg, plan, dataset, str(out / "cache"))  # from the cache
    for fold in (0, 1):
        np.testing.assert_array_equal(again[fold], targets[fold])


def test_a_run_with_a_teacher_trains_and_its_noisy_set_takes_the_fold_targets(teacher, demo_data, tmp_path):
    artifact, out = teacher
    cfg = _cfg(train={**BASE["train"], "noisy_teacher": {"artifact": str(out / "results" / "teacher")}})
    result = fit_pipeline(cfg, demo_data, str(tmp_path / "results"), "student", feature_cache=str(out / "cache"),
                          progress=False)
    plain = fit_pipeline(_cfg(), demo_data, str(tmp_path / "results"), "plain", feature_cache=str(out / "cache"),
                         progress=False)
    # the same seed, clips and crops: only the noisy clips' targets differ, so the losses do
    losses = [pd.read_csv(f"{r.outputs_dir}/history.csv")["train_loss"].dropna().to_numpy() for r in (result, plain)]
    assert len(losses[0]) == len(losses[1]) == 2 and not np.allclose(losses[0], losses[1])
    dataset, store, plan = prepare_data(cfg, demo_data, str(out / "cache"), progress=False)
    plan.noisy_targets = {0: np.full_like(plan.noisy_y, 0.3), 1: np.full_like(plan.noisy_y, 0.6)}
    ctx = _Context(plan, cfg, store, 0, 1, torch.device("cpu"), state=None, n_steps=1)
    fold1 = ctx.noisy(plan.noisy_ids[:3], fold=1)
    assert isinstance(fold1, LabelledSet) and np.all(fold1.targets == 0.6)
    warmup = ctx.noisy(plan.noisy_ids[:3])  # the shared warm-up has no teacher fold: given labels
    np.testing.assert_array_equal(warmup.targets, plan.noisy_y[:3])


def test_a_teacher_with_other_folds_is_refused(teacher, demo_data):
    artifact, out = teacher
    cfg = _cfg(train={**BASE["train"], "noisy_teacher": {"artifact": artifact}},
               cv={**BASE["cv"], "seed": 7})
    dataset, _, plan = prepare_data(cfg, demo_data, str(out / "cache"), progress=False)
    with pytest.raises(RaytagError, match="leak"):
        noisy_teacher_targets(cfg, plan, dataset, str(out / "cache"))


def test_a_teacher_missing_a_fold_is_refused(teacher, demo_data):
    artifact, out = teacher
    cfg = _cfg(train={**BASE["train"], "noisy_teacher": {"artifact": artifact}},
               cv={"n_folds": 3, "folds": [0, 1, 2]})
    dataset, _, plan = prepare_data(cfg, demo_data, str(out / "cache"), progress=False)
    with pytest.raises(RaytagError, match=r"no model of fold\(s\) \[2\]"):
        noisy_teacher_targets(cfg, plan, dataset, str(out / "cache"))


def test_a_folder_without_an_artifact_is_refused(demo_data, tmp_path):
    cfg = _cfg(train={**BASE["train"], "noisy_teacher": {"artifact": str(tmp_path)}})
    with pytest.raises(RaytagError, match="holds no artifact"):
        noisy_teacher_targets(cfg, None, load_dataset(demo_data), str(tmp_path))


def test_label_weight_is_checked():
    with pytest.raises(Exception, match="label_weight"):
        _cfg(train={**BASE["train"], "noisy_teacher": {"artifact": "x", "label_weight": 1.5}})
