"""`raytag distill`: a student trained on the ensemble's soft predictions over the demo
data's curated and noisy clips, saved as an artifact that `raytag predict` takes.

The teacher is an ensemble of two trials on the demo dataset written in the trial-output
format (as test_ensemble does): their out-of-fold predictions on the curated clips are the
true labels with noise; their fold models are one small CNN trained here on the curated
and noisy clips' given labels (a few seconds), so the artifact's predictions on the noisy
clips carry class information too."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from raytag import storage
from raytag.config import Config
from raytag.data.labels import labels_to_matrix
from raytag.data.layouts import load_dataset
from raytag.ensemble.artifact import Artifact, Member, describe, load_artifact, probability_teacher
from raytag.ensemble.distill import (
    StudentSettings, distill, score_on_test, scores_on_test, student_config, student_features, student_targets,
    targets_oof_scores, teacher_oof_scores, template_member, train_student,
)
from raytag.ensemble.teacher_targets import teacher_targets, teacher_test_predictions
from raytag.ensemble.job import build_ensemble
from raytag.ensemble.tagging import FAILURE_COLUMNS
from raytag.errors import RaytagError
from raytag.metrics import lwlrap
from raytag.training.dataset import LabelledSet
from raytag.training.outputs import model_card
from raytag.training.runner import prepare_data

from test_ensemble import noisy_probs

pytestmark = [pytest.mark.ray]

FEATURES = {"kind": "logmel", "sample_rate": 8000, "n_fft": 256, "hop_length": 128, "n_mels": 32}
TEACHER_MODEL = {"name": "cnn2d", "width": 8, "depth": 2}


def train_teacher(dataset_path, cache: str) -> tuple:
    """(state dict, plan) of a small CNN trained on the given labels of every training clip."""
    cfg = Config.from_dict({"features": FEATURES, "model": TEACHER_MODEL, "train": {"crop_seconds": 1.0, "lr": 3e-3},
                            "cv": {"n_folds": 2, "folds": [0]}, "pipeline": {"finetune": {"epochs": 20}}})
    dataset, store, plan = prepare_data(cfg, dataset_path, cache, progress=False)
    ids = plan.curated_ids + plan.noisy_ids
    y = np.concatenate([plan.curated_y, plan.noisy_y])
    model, _ = train_student(cfg, plan, store, LabelledSet(ids, y, np.zeros(len(ids), bool)))
    return {n: v.contiguous() for n, v in model.state_dict().items()}, plan


def write_trial(exp: str, trial: str, dataset, signal: float, seed: int, teacher) -> str:
    """A finished trial's outputs on the demo dataset's curated clips (2 folds)."""
    state, plan = teacher
    out = storage.join(exp, trial, "outputs")
    cur = dataset.split("curated")
    y = dataset.label_matrix("curated")
    classes = list(dataset.classes)
    oof = pd.DataFrame(noisy_probs(y, signal, seed), columns=classes)
    oof.insert(0, "clip_id", list(cur["clip_id"]))
    oof.insert(1, "fold", np.arange(len(cur)) % 2)
    oof.insert(2, "run", 0)
    oof.insert(3, "stage", "finetune")
    storage.write_parquet(oof, storage.join(out, "oof.parquet"), metadata={"raytag.classes": json.dumps(classes)})
    storage.write_csv(pd.DataFrame({"clip_id": cur["clip_id"], "labels": [",".join(lab) for lab in cur["labels"]]}),
                      storage.join(out, "oof_truth.csv"))
    storage.makedirs(storage.join(out, "weights"))
    for k in range(2):
        save_file(state, storage.join(out, "weights", f"fold{k}.safetensors"))
    storage.write_text(storage.join(out, "model.json"), json.dumps(model_card(plan)))
    return out


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, demo_data, ray_session):
    dataset = load_dataset(demo_data)
    root = tmp_path_factory.mktemp("distill")
    teacher = train_teacher(demo_data, str(root / "cache"))
    exp = str(root / "exp")
    rows = []
    for i, signal in enumerate((2.5, 2.0)):
        out = write_trial(exp, f"trial_{i}", dataset, signal, seed=20 + i, teacher=teacher)
        rows.append({"trial_id": f"trial_{i}", "status": "ok", "cv_lwlrap": 0.9 - i / 10, "outputs_dir": out})
    storage.write_csv(pd.DataFrame(rows), storage.join(exp, "leaderboard.csv"))
    storage.write_text(storage.join(exp, "sweep.json"), json.dumps({"data": str(demo_data)}))
    build_ensemble(exp, top=2)
    return exp


@pytest.fixture(scope="module")
def distilled(experiment, ray_session, tmp_path_factory):
    settings = StudentSettings(model="cnn2d", width=8, depth=2, epochs=20, batch_size=16, lr=3e-3)
    return distill(experiment, settings, feature_cache=str(Path(experiment).parent / "cache"))


def test_targets_are_the_ensembles_oof_on_curated_and_its_predictions_on_noisy(experiment, distilled, demo_data):
    dataset = load_dataset(demo_data)
    teacher = pd.read_parquet(distilled.teacher_path).set_index("clip_id")
    classes = list(dataset.classes)
    curated = teacher[teacher["target_source"] == "oof"]
    noisy = teacher[teacher["target_source"] == "ensemble"]
    assert set(curated.index) == set(dataset.split("curated")["clip_id"])
    assert set(noisy.index) == set(dataset.split("noisy")["clip_id"])
    # curated: the members' OOF combined with the artifact's combiner
    art = probability_teacher(load_artifact(storage.join(experiment, "ensemble", "artifact")))
    oofs = [pd.read_parquet(Path(m.settings["source"]) / "oof.parquet").set_index("clip_id").loc[curated.index, classes]
            for m in art.members]
    expected = art.combine([o.to_numpy(np.float64) for o in oofs])
    assert np.allclose(curated[classes].to_numpy(), expected, atol=1e-6)
    # noisy: what the artifact itself predicts for those files
    some = dataset.split("noisy").head(3)
    probs, _ = art.predict_files(list(some["path"]))
    assert np.allclose(noisy.loc[some["clip_id"], classes].to_numpy(), probs.to_numpy(), atol=1e-5)


def test_student_is_a_one_member_flagged_artifact_that_predict_takes(experiment, distilled, demo_data, tmp_path):
    from raytag.cli import app

    art = load_artifact(distilled.artifact_path)
    # one member, the default two students (seeds 0 and 1) as its models
    assert len(art.members) == 1 and len(art.members[0].models) == 2 and art.distilled["seeds"] == [0, 1]
    assert art.distilled["teacher"].endswith("artifact") and art.distilled["targets"] == {"oof": 70, "ensemble": 140}
    assert art.distilled["target_combiner"] == ("mean" if art.distilled["teacher_combiner"] == "rank"
                                                else art.distilled["teacher_combiner"])
    assert describe(art)["model"].tolist() == ["cnn2d"]
    out = tmp_path / "sub.csv"
    result = CliRunner().invoke(app, ["predict", distilled.artifact_path, str(Path(demo_data) / "test"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    sub = pd.read_csv(out)
    assert len(sub) == 28 and list(sub.columns[1:]) == list(art.classes)


def test_student_learned_the_teachers_classes(experiment, distilled, demo_data):
    """On the demo's test clips (never trained on), the student ranks classes like its
    teacher and finds the true labels about as well; chance lwlrap here is about 0.25."""
    dataset = load_dataset(demo_data)
    test = dataset.split("test")
    teacher = load_artifact(storage.join(experiment, "ensemble", "artifact"))
    t_probs, _ = teacher.predict_files(list(test["path"]))
    s_probs, _ = load_artifact(distilled.artifact_path).predict_files(list(test["path"]))
    top = np.zeros_like(t_probs.to_numpy())
    top[np.arange(len(top)), t_probs.to_numpy().argmax(axis=1)] = 1
    shuffled = s_probs.to_numpy()[np.random.default_rng(0).permutation(len(top))]
    agreement, chance = lwlrap(top, s_probs.to_numpy()), lwlrap(top, shuffled)
    truth = dataset.truth_for("test")
    y = labels_to_matrix(list(truth.set_index("clip_id").loc[test["clip_id"], "labels"]), dataset.classes)
    teacher_score = lwlrap(y, t_probs.to_numpy())
    print(f"agreement {agreement:.3f} (shuffled {chance:.3f}); test lwlrap student {distilled.scores['test_lwlrap']:.3f} "
          f"teacher {teacher_score:.3f}; train agreement {distilled.scores['agreement_lwlrap']:.3f}")
    assert agreement > chance + 0.15
    assert distilled.scores["test_agreement_lwlrap"] > chance + 0.15  # the same, as distill reports it (no labels)
    assert distilled.scores["test_clips"] == 28
    assert distilled.scores["test_lwlrap"] > teacher_score - 0.15
    assert distilled.train_loss[-1] < distilled.train_loss[0]


def test_reruns_reuse_the_teacher_targets_and_errors_are_clear(experiment, distilled, tmp_path):
    before = Path(distilled.teacher_path).stat().st_mtime_ns
    again = distill(experiment, StudentSettings(width=4, depth=1, epochs=1, students=1), feature_cache=str(tmp_path / "c"))
    assert Path(again.teacher_path).stat().st_mtime_ns == before
    with pytest.raises(RaytagError, match="run `raytag ensemble`"):
        distill(str(tmp_path / "nothing"))
    with pytest.raises(RaytagError, match="--epochs"):
        distill(experiment, StudentSettings(epochs=0))


def test_a_train_runs_artifact_is_a_teacher_too(experiment, distilled, demo_data, tmp_path):
    """`raytag train` leaves <run>/artifact (its members' fold models) and no sweep.json: the
    run's members' out-of-fold predictions teach the curated clips, and the dataset comes
    from --data."""
    run = tmp_path / "default"
    storage.copy_tree(storage.join(experiment, "ensemble", "artifact"), str(run / "artifact"))
    small = StudentSettings(width=4, depth=1, epochs=1, students=1)
    with pytest.raises(RaytagError, match="--data"):
        distill(str(run), small)
    got = distill(str(run), small, data=str(demo_data), feature_cache=str(Path(experiment).parent / "cache"))
    assert Path(got.artifact_path) == run / "distill" / "artifact"
    assert (got.n_oof, got.n_ensemble) == (distilled.n_oof, distilled.n_ensemble)
    assert load_artifact(got.artifact_path).members[0].name == "student"


def test_the_student_is_made_like_the_member_with_the_best_out_of_fold_score():
    def member(name, family, cv=None):
        return Member(name, {"model": {"name": family}, **({"cv_lwlrap": cv} if cv is not None else {})}, [])

    art = Artifact(path="x", combiner="geometric", weights=None, classes=["a"], layout="fat2019",
                   members=[member("r18", "resnet18", 0.51), member("vgg", "vgg_small", 0.59), member("cnn", "cnn2d", 0.55)])
    assert template_member(art).name == "vgg"  # not the first
    assert template_member(art, "cnn2d").name == "cnn"  # --model names a family the teacher has
    assert template_member(art, "crnn").name == "vgg"  # one it lacks: the best of all
    unscored = dataclasses.replace(art, members=[member(m.name, m.settings["model"]["name"]) for m in art.members])
    assert template_member(unscored).name == "r18"


def test_a_teacher_on_log_mel_and_pcen_gets_students_that_see_both():
    """auto: logmel_pcen where the teacher has members on log-mel and PCEN with the template's mel
    settings (the PCEN member's pcen_* kept); the template's own front end otherwise."""
    mels = {"sample_rate": 16000, "n_fft": 1024, "hop_length": 320, "n_mels": 64, "fmin": 20.0, "fmax": None,
            "top_db": 80.0, "deltas": 0, "pcen_time_constant": 0.4}

    def member(name, kind, cv, **changed):
        return Member(name, {"model": {"name": "vgg_small"}, "cv_lwlrap": cv, "features": {**mels, "kind": kind, **changed}}, [])

    def teacher(*members):
        return Artifact(path="x", combiner="geometric", weights=None, classes=["a"], layout="fat2019", members=list(members))

    def kind_of(art, **settings):
        return student_features(art, template_member(art), StudentSettings(**settings))

    both = teacher(member("log", "logmel", 0.7), member("pcen", "pcen", 0.6, pcen_time_constant=0.06))
    assert kind_of(both) == {**mels, "kind": "logmel_pcen", "pcen_time_constant": 0.06}
    assert kind_of(both, front_end="member")["kind"] == "logmel"
    assert kind_of(both, init="member")["kind"] == "logmel"  # its network reads the member's front end
    assert kind_of(both, front_end="pcen") == {**mels, "kind": "pcen", "pcen_time_constant": 0.06}
    assert kind_of(teacher(member("log", "logmel", 0.7)))["kind"] == "logmel"  # one front end: the member's
    assert kind_of(teacher(member("log", "logmel", 0.7)), front_end="logmel_pcen")["kind"] == "logmel_pcen"
    other_mels = teacher(member("log", "logmel", 0.7), member("pcen", "pcen", 0.6, n_mels=96))
    assert kind_of(other_mels)["kind"] == "logmel"  # one STFT cannot give both: the member's
    assert kind_of(both, features={"kind": "mfcc"}) == {"kind": "mfcc"}  # features given whole win
    with pytest.raises(RaytagError, match="--front-end raw: must be one of"):
        StudentSettings(front_end="raw").check()
    for kind in ("logmel_pcen", "colormel", "mfcc"):  # every 2-D front end is offered
        StudentSettings(front_end=kind).check()
    with pytest.raises(RaytagError, match="--init member starts from the member's own network"):
        StudentSettings(init="member", front_end="logmel").check()


def test_targets_blend_the_given_labels_with_the_teachers_and_flag_noisy_clips(demo_data):
    dataset = load_dataset(demo_data)
    classes = list(dataset.classes)
    ids = list(dataset.split("curated")["clip_id"][:3]) + list(dataset.split("noisy")["clip_id"][:2])
    teacher = pd.DataFrame(np.random.default_rng(0).uniform(size=(5, len(classes))), index=ids, columns=classes)
    given = np.vstack([dataset.label_matrix("curated")[:3], dataset.label_matrix("noisy")[:2]])
    got = student_targets(teacher, dataset, classes, 0.25)
    np.testing.assert_allclose(got.targets, 0.25 * given + 0.75 * teacher.to_numpy(), rtol=1e-6)
    assert got.is_noisy.tolist() == [False, False, False, True, True]
    np.testing.assert_allclose(student_targets(teacher, dataset, classes, 0.0).targets, teacher.to_numpy(), rtol=1e-6)
    # clip_max: each clip's teacher scores over its top one, so its top class teaches 1
    scaled = student_targets(teacher, dataset, classes, 0.0, teacher_scale="clip_max").targets
    np.testing.assert_allclose(scaled.max(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(scaled.argsort(axis=1), teacher.to_numpy().argsort(axis=1))
    with pytest.raises(RaytagError, match="teacher-scale"):
        StudentSettings(teacher_scale="softmax").check()


def test_the_student_trains_with_its_teachers_recipe(experiment, tmp_path):
    """The member's config.yaml (its scaling, mixup, optimizer, learning rate, noisy-label
    loss) is the student's recipe, not raytag's built-in defaults; what the user sets wins."""
    art = load_artifact(storage.join(experiment, "ensemble", "artifact"))
    recipe = Config.from_dict({"train": {"lr": 0.0123, "weight_decay": 0.05, "mixup": {"alpha": 0.9},
                                         "normalize": {"kind": "fixed"}, "loss": {"lsoft_beta": 0.6}}})
    (tmp_path / "config.yaml").write_text(recipe.to_yaml())
    first = art.members[0]
    member = dataclasses.replace(first, settings={**first.settings, "source": str(tmp_path)})
    art = dataclasses.replace(art, members=[member])
    cfg = student_config(template_member(art), StudentSettings())
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.mixup.alpha, cfg.train.normalize.kind,
            cfg.train.loss.lsoft_beta) == (0.0123, 0.05, 0.9, "fixed", 0.6)
    assert cfg.model.name == first.settings["model"]["name"] and cfg.model.width == first.settings["model"]["width"]
    cfg = student_config(template_member(art), StudentSettings(lr=0.002, width=4, label_weight=0.0))
    assert (cfg.train.lr, cfg.model.width, cfg.train.loss.noisy_loss) == (0.002, 4, "same")
    assert student_config(template_member(art), StudentSettings(average_last=5)).train.average_last == 5
    with pytest.raises(RaytagError, match="--average-last"):
        StudentSettings(epochs=3, average_last=5).check()


def test_a_rank_teacher_gives_probabilities_as_targets(experiment):
    """Mean percentile ranks are about uniform on [0, 1] for every class: as BCE targets they
    would teach ~0.5 everywhere, so a rank ensemble teaches through its members' mean."""
    art = load_artifact(storage.join(experiment, "ensemble", "artifact"))
    ranked = dataclasses.replace(art, combiner="rank")
    teacher = probability_teacher(ranked)
    assert teacher.combiner == "mean" and teacher.weights is None
    probs = [np.random.default_rng(i).uniform(size=(4, len(art.classes))) for i in range(len(art.members))]
    np.testing.assert_allclose(teacher.combine(probs), np.mean(probs, axis=0), rtol=1e-5)
    weighted = dataclasses.replace(art, combiner="weighted", weights=[1.0] + [0.0] * (len(art.members) - 1))
    assert probability_teacher(weighted) is weighted


def test_a_teacher_trained_with_noisy_folds_teaches_noisy_clips_out_of_fold(experiment, demo_data, tmp_path):
    """Members with noisy_oof.parquet (cv.noisy_folds): every noisy clip's target is the
    members' out-of-fold predictions combined as the artifact combines, as on curated clips;
    when one member lacks them (or `noisy_targets="ensemble"` asks), the noisy clips take the
    artifact's predictions."""
    dataset = load_dataset(demo_data)
    classes = list(dataset.classes)
    art = load_artifact(storage.join(experiment, "ensemble", "artifact"))
    noisy = dataset.split("noisy")
    members, member_noisy = [], []
    for i, m in enumerate(art.members):
        src = tmp_path / f"member{i}"
        storage.copy_tree(m.settings["source"], str(src))
        probs = noisy_probs(dataset.label_matrix("noisy"), 1.0, seed=40 + i)
        frame = pd.DataFrame(probs, columns=classes)
        frame.insert(0, "clip_id", list(noisy["clip_id"]))
        frame.insert(1, "fold", np.arange(len(noisy)) % 2)
        frame.insert(2, "run", 0)
        frame.insert(3, "stage", "finetune")
        storage.write_parquet(frame, str(src / "noisy_oof.parquet"), metadata={"raytag.classes": json.dumps(classes)})
        members.append(dataclasses.replace(m, settings={**m.settings, "source": str(src)}))
        member_noisy.append(probs)
    teacher = teacher_targets(dataclasses.replace(art, members=members), dataset, str(tmp_path / "all"))
    assert set(teacher["target_source"]) == {"oof"} and len(teacher) == len(dataset.split("curated")) + len(noisy)
    combined = probability_teacher(art).combine([p.astype(np.float64) for p in member_noisy])
    np.testing.assert_allclose(teacher.loc[noisy["clip_id"], classes].to_numpy(), combined, atol=1e-6)

    (tmp_path / "member1" / "noisy_oof.parquet").unlink()  # one member trained without noisy folds
    mixed = teacher_targets(dataclasses.replace(art, members=members), dataset, str(tmp_path / "mixed"))
    assert set(mixed.loc[noisy["clip_id"], "target_source"]) == {"ensemble"}
    assert set(mixed.loc[dataset.split("curated")["clip_id"], "target_source"]) == {"oof"}
    with pytest.raises(RaytagError, match="noisy-targets"):
        StudentSettings(noisy_targets="given").check()


# ----------------------------------------------------------------------------- --target-grain segment
class _ConstantModel(torch.nn.Module):
    """A fold model whose logit for every class is `logit` on segments whose mean feature
    is above 0, and minus it elsewhere: its prediction follows the clip along time."""

    def __init__(self, logit: float, n_classes: int = 3):
        super().__init__()
        self.logit, self.n_classes = logit, n_classes

    def forward(self, x):
        sign = torch.where(x.mean(dim=(1, 2, 3)) > 0, 1.0, -1.0)[:, None]
        return sign * self.logit * torch.ones(len(x), self.n_classes)


class _FakeStore:
    def __init__(self, clips: dict):
        self.clips = clips

    def get(self, clip_id):
        return self.clips[clip_id]

    def n_frames(self, clip_id):
        return self.clips[clip_id].shape[-1]

    def crop(self, clip_id, start, length):
        return self.clips[clip_id][..., start:start + length]


def _member(name, logits, features):
    settings = {"features": features, "folds": [f"fold{k}.safetensors" for k in range(len(logits))]}
    return Member(name, settings, [_ConstantModel(v) for v in logits])


def test_the_teacher_along_a_clip_takes_the_held_out_fold_and_follows_the_audio():
    from raytag.ensemble.crop_targets import teacher_segments

    features = {**FEATURES}
    cfg = Config.from_dict({"features": features}).features
    # 16 frames: loud (+1) for the first 8, quiet (-1) after; segments of 8 every 2 frames
    clip = np.concatenate([np.ones((1, 4, 8)), -np.ones((1, 4, 8))], axis=-1).astype(np.float32)
    store = _FakeStore({"cur": clip, "noisy": clip})
    members = [_member("a", [0.0, 2.0], features), _member("b", [1.0, 1.0], features)]
    held_out = [{"cur": 1}, {"cur": 0}]
    got = teacher_segments(members, lambda ps: np.mean(ps, axis=0), store, cfg, ["cur", "noisy"], 8, held_out)
    starts, probs = got["cur"]
    assert starts.tolist() == [0, 2, 4, 6, 8]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    # member a's fold 1 (logit 2) and member b's fold 0 (logit 1), each by the segment's sign
    assert np.allclose(probs[0], (sig(2.0) + sig(1.0)) / 2, atol=1e-6)
    assert np.allclose(probs[-1], (sig(-2.0) + sig(-1.0)) / 2, atol=1e-6)
    # a clip no member held out: every fold model, as the artifact (member a: (0 + 2) / 2 logits)
    _, noisy = got["noisy"]
    assert np.allclose(noisy[0], ((sig(0.0) + sig(2.0)) / 2 + sig(1.0)) / 2, atol=1e-6)
    # another front end than the student's cannot be cut from the student's store
    other = _member("c", [1.0], {**features, "n_mels": 16})
    with pytest.raises(RaytagError, match="another front end"):
        teacher_segments([other], lambda ps: ps[0], store, cfg, ["cur"], 8, [{}])


def test_a_crops_target_interpolates_the_teacher_at_its_start_and_keeps_the_given_labels():
    from raytag.ensemble.crop_targets import SegmentTargetCrops, teacher_at

    starts = np.array([0.0, 4.0, 8.0])
    probs = np.array([[0.0, 1.0], [1.0, 1.0], [0.5, 0.0]], dtype=np.float32)
    assert np.allclose(teacher_at(starts, probs, 2), [0.5, 1.0])
    assert np.allclose(teacher_at(starts, probs, 8), [0.5, 0.0])
    assert np.allclose(teacher_at(starts, probs, None), probs.mean(axis=0))  # a clip looped to length
    clip = np.zeros((1, 2, 12), dtype=np.float32)
    data = LabelledSet(["a"], np.array([[0.3, 0.3]]), np.array([False]))
    crops = SegmentTargetCrops(_FakeStore({"a": clip}), data, 4, 1, {"a": (starts, probs)},
                               labels=np.array([[1.0, 0.0]]), label_weight=0.5)
    _, y, _ = next(crops.epoch(seed=3, rank=0, world_size=1))
    start = np.random.default_rng([3, 0]).integers(0, 12 - 4 + 1)  # the crop CropBatches draws for seed 3
    assert np.allclose(y.numpy()[0], 0.5 * np.array([1.0, 0.0]) + 0.5 * teacher_at(starts, probs, start))
    with pytest.raises(RaytagError, match="no teacher segments"):
        SegmentTargetCrops(_FakeStore({"a": clip}), data, 4, 1, {}, labels=np.ones((1, 2)), label_weight=0.5)


def test_a_segment_grain_student_trains_and_records_its_grain(experiment, distilled, tmp_path):
    small = StudentSettings(model="cnn2d", width=4, depth=1, epochs=1, target_grain="segment", students=1)
    got = distill(experiment, small, feature_cache=str(Path(experiment).parent / "cache"))
    summary = json.loads((Path(experiment) / "distill" / "distill_summary.json").read_text())
    assert summary["target_grain"] == "segment" and Path(got.artifact_path).is_dir()
    cache = Path(experiment) / "distill" / "teacher_segments.npz"
    assert cache.is_file()
    before = cache.stat().st_mtime_ns
    distill(experiment, small, feature_cache=str(Path(experiment).parent / "cache"))
    assert cache.stat().st_mtime_ns == before  # the teacher's grid is reused for the same teacher and crop
    with np.load(cache) as saved:
        grid = {k: saved[k] for k in saved.files}
    whole = cache.read_bytes()
    cache.write_bytes(whole[: len(whole) // 2])  # as a kill while it was written would have left it
    distill(experiment, small, feature_cache=str(Path(experiment).parent / "cache"))
    with np.load(cache) as saved:  # computed again: the same grid
        assert set(saved.files) == set(grid)
        for k in grid:
            np.testing.assert_array_equal(saved[k], grid[k], err_msg=k)
    assert [p.name for p in cache.parent.glob("*.partial*")] == []
    with pytest.raises(RaytagError, match="--target-grain"):
        distill(experiment, StudentSettings(target_grain="frame"))
    with pytest.raises(RaytagError, match="teacher's probabilities as they are"):
        distill(experiment, StudentSettings(target_grain="segment", teacher_scale="clip_max"))


def test_a_student_can_start_from_its_template_members_network(experiment, distilled):
    """--init member: the student is the template member's first fold model, fine-tuned. At a
    learning rate too small to move them, its trained weights are that model's; from
    scratch they are not."""
    teacher = load_artifact(storage.join(experiment, "ensemble", "artifact"))
    member = template_member(teacher).models[0]
    cache = str(Path(experiment).parent / "cache")

    def student_params(init: str) -> dict:
        got = distill(experiment, StudentSettings(epochs=1, lr=1e-12, init=init, students=1), feature_cache=cache)
        summary = json.loads((Path(experiment) / "distill" / "distill_summary.json").read_text())
        assert summary["init"] == init
        return dict(load_artifact(got.artifact_path).members[0].models[0].named_parameters())

    fine_tuned, scratch = student_params("member"), student_params("scratch")
    for name, weight in member.named_parameters():
        torch.testing.assert_close(fine_tuned[name], weight, atol=1e-6, rtol=0, msg=name)
    assert any(not torch.allclose(scratch[n], w) for n, w in member.named_parameters())
    with pytest.raises(RaytagError, match="--init member starts from the member's own network"):
        StudentSettings(init="member", width=4).check()
    with pytest.raises(RaytagError, match="--init"):
        StudentSettings(init="teacher").check()


# ----------------------------------------------------------------------------- the teacher's cache, no training
HAND_CLASSES = ["bark", "rain", "siren"]


def _hand_dataset(root: Path, curated: dict, noisy: dict):
    """A Dataset of clips that need no audio: {fname: labels tuple} per split."""
    from raytag.data.layouts import Dataset

    rows = [{"clip_id": f"{split}/{f}", "fname": f, "path": str(root / split / f), "labels": labels,
             "split": split, "duration": 1.0}
            for split, clips in (("curated", curated), ("noisy", noisy)) for f, labels in clips.items()]
    return Dataset(root=root, layout="fat2019", classes=list(HAND_CLASSES), clips=pd.DataFrame(rows),
                   skipped=pd.DataFrame(columns=["file", "reason"]))


def _hand_member(folder: Path, name: str, curated_ids: list, noisy_ids: list, seed: int) -> Member:
    """A member whose out-of-fold predictions (curated and noisy) cover every clip given,
    so teacher_targets never has to run a model."""
    rng = np.random.default_rng(seed)
    for file, ids in (("oof.parquet", curated_ids), ("noisy_oof.parquet", noisy_ids)):
        frame = pd.DataFrame(rng.uniform(size=(len(ids), len(HAND_CLASSES))), columns=HAND_CLASSES)
        frame.insert(0, "clip_id", ids)
        frame.insert(1, "fold", np.arange(len(ids)) % 2)
        frame.insert(2, "run", 0)
        frame.insert(3, "stage", "finetune")
        storage.write_parquet(frame, str(folder / name / file), metadata={"raytag.classes": json.dumps(HAND_CLASSES)})
    return Member(name, {"source": str(folder / name), "features": FEATURES}, [])


def _hand_teacher(tmp_path: Path, curated: dict, noisy: dict, extra_noisy: tuple = ()) -> tuple:
    """(artifact, dataset): a two-member mean teacher with out-of-fold predictions for every
    clip of the dataset (and for the noisy fnames `extra_noisy`, which it does not have yet)."""
    art_dir = tmp_path / "artifact"
    art_dir.mkdir(parents=True, exist_ok=True)
    (art_dir / "manifest.json").write_text("{}")
    cur_ids = [f"curated/{f}" for f in curated]
    noisy_ids = [f"noisy/{f}" for f in [*noisy, *extra_noisy]]
    members = [_hand_member(tmp_path / "trials", f"m{i}", cur_ids, noisy_ids, seed=i) for i in range(2)]
    art = Artifact(path=str(art_dir), combiner="mean", weights=None, classes=list(HAND_CLASSES), layout="fat2019",
                   members=members)
    return art, _hand_dataset(tmp_path / "data", curated, noisy)


CURATED = {"c1.wav": ("bark",), "c2.wav": ("rain",), "c3.wav": ("siren", "bark")}
NOISY = {"n1.wav": ("rain",), "n2.wav": ("bark",)}


def test_a_damaged_teacher_cache_is_computed_again(tmp_path):
    """A kill mid-write once left teacher.parquet cut short, and every rerun then crashed in
    pyarrow: now it is written whole or not at all, and an unreadable one is made again."""
    art, dataset = _hand_teacher(tmp_path, CURATED, NOISY)
    out = str(tmp_path / "distill")
    first = teacher_targets(art, dataset, out)
    cache = tmp_path / "distill" / "teacher.parquet"
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    again = teacher_targets(art, dataset, out)
    assert list(again.index) == list(first.index) and set(again["target_source"]) == {"oof"}
    np.testing.assert_allclose(again[HAND_CLASSES].to_numpy(), first[HAND_CLASSES].to_numpy())
    assert pd.read_parquet(cache).shape[0] == len(first)  # the cache was written again, whole
    assert [p.name for p in cache.parent.iterdir()] == ["teacher.parquet"]  # no partial file left


def test_a_write_cut_short_leaves_the_old_teacher_cache_whole(tmp_path, monkeypatch):
    import raytag.training.outputs as outputs

    art, dataset = _hand_teacher(tmp_path, CURATED, NOISY)
    out = str(tmp_path / "distill")
    teacher_targets(art, dataset, out)
    cache = tmp_path / "distill" / "teacher.parquet"
    before = cache.read_bytes()

    def killed(table, where, **kwargs):  # half a file written (into the writer's open file), then the process dies
        where.write(before[: len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.pq, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_parquet(pd.DataFrame({"clip_id": ["x"], "bark": [0.5]}), cache, ["bark"])
    assert cache.read_bytes() == before


def test_two_writers_of_one_teacher_cache_both_finish_and_leave_one_whole_file(tmp_path, monkeypatch):
    """Both wrote `teacher.parquet.partial`: the first rename moved the file the other was
    still writing, and the second rename raised FileNotFoundError. Each writer now has its
    own temporary name."""
    import threading

    import raytag.training.outputs as outputs

    real_write, both_written = outputs.pq.write_table, threading.Barrier(2, timeout=60)

    def write_then_wait(table, where, **kwargs):  # neither renames before the other has written
        real_write(table, where, **kwargs)
        both_written.wait()

    monkeypatch.setattr(outputs.pq, "write_table", write_then_wait)
    path = tmp_path / "teacher.parquet"
    frames = [pd.DataFrame({"clip_id": [f"c{i}"], "bark": [i / 2]}) for i in range(2)]
    errors = []

    def write(frame):
        try:
            outputs.write_parquet(frame, path, ["bark"])
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(frame,)) for frame in frames]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    back = pd.read_parquet(path)
    assert any(back.equals(frame) for frame in frames)
    assert [p.name for p in tmp_path.iterdir()] == ["teacher.parquet"]


def test_a_distillation_of_an_experiment_another_one_holds_is_refused_before_any_work(experiment, distilled,
                                                                                       monkeypatch):
    """Two `raytag distill` runs of one experiment (two --width values in two terminals)
    shared distill/ with no lock: one packed the other's student weights with its own record
    and scores. The distill folder's lock is now held for the whole run."""
    import raytag.ensemble.distill as distill_module

    monkeypatch.setattr(distill_module, "prepare_data",
                        lambda *a, **k: pytest.fail("worked in a distill folder another run holds"))
    manifest = Path(distilled.artifact_path) / "manifest.json"
    before = manifest.read_bytes()
    with storage.folder_lock(str(Path(experiment) / "distill"), "another raytag distill"):
        with pytest.raises(storage.LockHeld, match=r"the distillation of .* is in use") as refused:
            distill(experiment, StudentSettings(width=4, depth=1, epochs=1, students=1))
    # a distill has nothing to resume, and "run 'distill'" read as a train run's name
    assert "resume" not in str(refused.value) and "run 'distill'" not in str(refused.value)
    assert str(refused.value).endswith("and run `raytag distill` again.")
    assert manifest.read_bytes() == before


def _experiment_that_must_not_start(tmp_path: Path, monkeypatch) -> str:
    """An experiment whose artifact is a hand teacher (a cnn2d member on FEATURES), with
    Ray's start and the feature build made to fail the test: a distill refused up front
    never reaches them."""
    import raytag.ensemble.distill as distill_module

    art, _ = _hand_teacher(tmp_path, CURATED, NOISY)
    for member in art.members:
        member.settings.update(model=dict(TEACHER_MODEL), crop_frames=62, segment_frames=62)
    monkeypatch.setattr(distill_module, "experiment_artifact", lambda exp: art.path)
    monkeypatch.setattr(distill_module, "load_artifact", lambda path: art)
    monkeypatch.setattr(distill_module, "ensure_ray", lambda: pytest.fail("started Ray before refusing"))
    monkeypatch.setattr(distill_module, "prepare_data", lambda *a, **k: pytest.fail("built features before refusing"))
    (tmp_path / "data").mkdir(exist_ok=True)  # the dataset folder the hand teacher's clips are in
    exp = tmp_path / "exp"
    exp.mkdir()
    return str(exp)


@pytest.mark.parametrize("settings, message", [
    (StudentSettings(model="nosuch"), "--model nosuch: unknown model; valid names: cnn2d, crnn"),
    (StudentSettings(width=0), "--width 0: must be at least 1"),
    (StudentSettings(depth=-2), "--depth -2: must be at least 1"),
    # a depth only the family lacks: known once the student's config is made, still before Ray
    (StudentSettings(model="resnet18", depth=9),
     r"--model resnet18 --depth 9: the student \(resnet18 w32 d9\) cannot be built: .*has 4 stages"),
])
def test_a_student_model_it_cannot_build_is_refused_before_ray_features_and_the_teacher(
        tmp_path, monkeypatch, settings, message):
    """--model nosuch, --width 0 and --depth 0 were refused by build_model only after Ray
    started, the features were built and the teacher tagged every noisy clip (minutes to an
    hour on FSDKaggle2019); now at once, naming the option typed."""
    exp = _experiment_that_must_not_start(tmp_path, monkeypatch)
    with pytest.raises(RaytagError, match=message):
        distill(exp, settings, data=str(tmp_path / "data"))


@pytest.mark.parametrize("data, message", [("no_such_folder", "--data .*no_such_folder: folder not found"),
                                           ("", "--data '': empty")])
def test_a_missing_data_folder_is_named_before_ray_starts(tmp_path, monkeypatch, data, message):
    """`distill --data <typo>` started Ray and reached the feature build before saying the
    folder did not exist."""
    exp = _experiment_that_must_not_start(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RaytagError, match=message):
        distill(exp, StudentSettings(), data=data)


def test_the_teacher_cache_follows_the_dataset(tmp_path):
    """The cache was keyed by the teacher only: a clip added to the dataset got no target
    (and another --data with the same clip ids reused the old ones)."""
    art, dataset = _hand_teacher(tmp_path, CURATED, NOISY, extra_noisy=("n3.wav",))
    out = str(tmp_path / "distill")
    first = teacher_targets(art, dataset, out)
    assert "noisy/n3.wav" not in first.index
    grown = _hand_dataset(dataset.root, CURATED, {**NOISY, "n3.wav": ("siren",)})
    assert "noisy/n3.wav" in teacher_targets(art, grown, out).index
    # the same clips in another folder, then relabelled: each time the targets are made again
    cache = tmp_path / "distill" / "teacher.parquet"

    def cache_key() -> str:
        return pd.read_parquet(cache)["artifact_manifest"].iloc[0]

    keys = [cache_key()]
    teacher_targets(art, _hand_dataset(tmp_path / "elsewhere", CURATED, {**NOISY, "n3.wav": ("siren",)}), out)
    keys.append(cache_key())
    teacher_targets(art, _hand_dataset(tmp_path / "elsewhere", CURATED, {**NOISY, "n3.wav": ("rain",)}), out)
    keys.append(cache_key())
    assert len(set(keys)) == 3 and str(tmp_path / "elsewhere") in keys[1]


def test_the_teachers_curated_score_takes_only_out_of_fold_rows(tmp_path):
    """Curated rows from the artifact's own predictions ("ensemble": a sweep that trained only
    some folds) come from models that trained on the clip: they used to count, flattering
    the teacher."""
    dataset = _hand_dataset(tmp_path, {**CURATED, "c4.wav": ("rain",)}, NOISY)
    ids = list(dataset.split("curated")["clip_id"]) + list(dataset.split("noisy")["clip_id"])
    probs = np.random.default_rng(0).uniform(size=(len(ids), len(HAND_CLASSES)))
    table = pd.DataFrame(probs, index=pd.Index(ids, name="clip_id"), columns=HAND_CLASSES)
    table["target_source"] = "oof"
    oof_only = targets_oof_scores(table.drop(index="curated/c4.wav"), dataset, HAND_CLASSES)
    table.loc["curated/c4.wav", HAND_CLASSES] = [0.0, 1.0, 0.0]  # perfect, and in-sample
    table.loc["curated/c4.wav", "target_source"] = "ensemble"
    got = targets_oof_scores(table, dataset, HAND_CLASSES)
    assert got == oof_only and got["targets_curated_oof_clips"] == 3  # the noisy rows are not curated
    mean = Artifact(path="x", combiner="mean", weights=None, classes=HAND_CLASSES, layout="fat2019", members=[])
    teacher = teacher_oof_scores(mean, table, dataset, HAND_CLASSES)  # nothing fitted: the targets' score
    assert (teacher["teacher_curated_oof_lwlrap"], teacher["teacher_curated_oof_clips"]) == (
        got["targets_curated_oof_lwlrap"], 3)
    table["target_source"] = "ensemble"
    assert targets_oof_scores(table, dataset, HAND_CLASSES) == {"targets_curated_oof_lwlrap": None,
                                                                "targets_curated_oof_clips": 0}


def test_a_fitted_teachers_curated_score_is_the_ensemble_jobs_nested_one(tmp_path):
    """A weighted teacher's targets come from weights refitted on every OOF clip: scored on
    those clips they were reported as its out-of-fold score, in-sample (0.7507 against
    0.7319 nested on the dev benchmark's default5). The teacher's figure is now the ensemble
    job's nested score, and the targets' own is reported beside it for what it is."""
    from raytag.data.layouts import Dataset

    from test_ensemble import CLASSES, make_experiment

    exp = make_experiment(tmp_path, signals=(1.0, 0.2), n=90, n_test=10)
    result = build_ensemble(exp, top=2)
    assert result.chosen == "weighted"
    row = result.table.set_index("name").loc["weighted"]
    truth = pd.read_csv(Path(result.table_path).parents[1] / "trial_0" / "outputs" / "oof_truth.csv")
    clips = pd.DataFrame({"clip_id": truth["clip_id"], "fname": truth["clip_id"].str.split("/").str[1],
                          "path": [str(tmp_path / c) for c in truth["clip_id"]],
                          "labels": [tuple(lab.split(",")) for lab in truth["labels"]], "split": "curated",
                          "duration": 1.0})
    dataset = Dataset(root=tmp_path, layout="fat2019", classes=CLASSES, clips=clips,
                      skipped=pd.DataFrame(columns=["file", "reason"]))
    art = load_artifact(result.artifact_path)
    table = teacher_targets(art, dataset, str(tmp_path / "distill"))
    got = teacher_oof_scores(art, table, dataset, CLASSES)
    assert got["teacher_curated_oof_lwlrap"] == pytest.approx(row["cv_lwlrap"], abs=1e-9)
    assert got["teacher_cv_method"] == "nested oof" and got["teacher_curated_oof_clips"] == 90
    assert got["targets_curated_oof_lwlrap"] == pytest.approx(row["cv_lwlrap_in_sample"], abs=1e-9)
    assert "in-sample" in got["targets_are"]
    # a rank teacher teaches through its members' mean: that is its targets' score, not its own
    ranked = dataclasses.replace(art, combiner="rank", weights=None,
                                 scores={"cv_lwlrap": 0.5, "cv_method": "nested oof", "oof_clips": 90})
    got = teacher_oof_scores(ranked, teacher_targets(ranked, dataset, str(tmp_path / "rank")), dataset, CLASSES)
    assert got["teacher_curated_oof_lwlrap"] == 0.5 and "mean" in got["targets_are"]
    assert got["targets_curated_oof_lwlrap"] == pytest.approx(result.table.set_index("name").loc["mean", "cv_lwlrap"])


def _write_audio_stand_ins(dataset) -> None:
    """Files at the clips' paths: their bytes stand for the audio (a fake predict reads their size)."""
    for path in dataset.clips["path"]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"a" * 10)


def _predict_by_size(calls: list):
    """A stand-in for predict_files: each file's scores are its size / 100; `calls` records the paths asked for."""
    def predict(artifact, paths, batch_size=32, progress=False):
        calls.append([str(p) for p in paths])
        probs = [[Path(p).stat().st_size / 100] * len(artifact.classes) for p in paths]
        index = pd.Index([str(p) for p in paths], name="file")
        return pd.DataFrame(probs, index=index, columns=list(artifact.classes)), pd.DataFrame(columns=FAILURE_COLUMNS)
    return predict


def _predict_failing(calls: list, failing: dict):
    """`_predict_by_size` with the files of `failing` ({path: retry}) as failures: refused for
    memory (retry) or damaged (no retry)."""
    by_size = _predict_by_size(calls)

    def predict(artifact, paths, batch_size=32, progress=False):
        probs, _ = by_size(artifact, paths, batch_size, progress)
        bad = [str(p) for p in paths if str(p) in failing]
        reasons = ["too long to decode whole: need more memory" if failing[p] else "cannot decode: damaged"
                   for p in bad]
        failures = pd.DataFrame({"file": bad, "reason": reasons, "retry": [failing[p] for p in bad]},
                                columns=FAILURE_COLUMNS)
        return probs.drop(index=bad), failures
    return predict


def _drop_noisy_oof(tmp_path: Path, member: str, fnames) -> None:
    """Take noisy clips out of one member's noisy_oof.parquet (as a sweep that trained only
    some folds leaves them): with --noisy-targets oof, the artifact then predicts them."""
    path = tmp_path / "trials" / member / "noisy_oof.parquet"
    frame = pd.read_parquet(path)
    frame = frame[~frame["clip_id"].isin([f"noisy/{f}" for f in fnames])]
    storage.write_parquet(frame, str(path), metadata={"raytag.classes": json.dumps(HAND_CLASSES)})


def _refusing_teacher(tmp_path: Path, monkeypatch, caplog, noisy_targets: str) -> tuple:
    """(targets, calls, refused): a hand teacher whose artifact predicts the noisy clips and
    refuses noisy/n1.wav for memory; targets() runs teacher_targets with the warnings of
    that run alone in caplog. With --noisy-targets oof, a member lacks the noisy clips'
    out-of-fold predictions, so the artifact predicts them there too."""
    import raytag.ensemble.teacher_targets as teacher_module

    art, dataset = _hand_teacher(tmp_path, CURATED, NOISY, extra_noisy=("n3.wav",))
    if noisy_targets == "oof":
        _drop_noisy_oof(tmp_path, "m1", NOISY)
    _write_audio_stand_ins(dataset)
    refused = str(tmp_path / "data" / "noisy" / "n1.wav")
    calls, out = [], str(tmp_path / "distill")
    monkeypatch.setattr(teacher_module, "predict_files", _predict_failing(calls, {refused: True}))

    def targets(where: str = out) -> pd.DataFrame:
        with caplog.at_level(logging.WARNING, logger="raytag.ensemble.teacher_targets"):
            caplog.clear()
            return teacher_targets(art, dataset, where, noisy_targets=noisy_targets)
    return targets, calls, refused


@pytest.mark.parametrize("noisy_targets", ["ensemble", "oof"])
def test_a_clip_refused_for_memory_is_the_only_one_tagged_again(tmp_path, monkeypatch, caplog, noisy_targets):
    """A clip the teacher refused for memory (a shortage that passes) kept teacher.parquet
    from being written at all, so every later distill tagged every noisy clip again with the
    full ensemble (hours on FSDKaggle2019) to fail on the same clip. The others' targets are
    kept now, with the failure; the next run tags only that clip, and names it again while
    it fails. So with --noisy-targets oof, where a member lacks some noisy clips'
    out-of-fold predictions."""
    targets, calls, refused = _refusing_teacher(tmp_path, monkeypatch, caplog, noisy_targets)
    first = targets()
    assert calls == [[refused, str(tmp_path / "data" / "noisy" / "n2.wav")]]
    assert "noisy/n1.wav" not in first.index and first.loc["noisy/n2.wav", "bark"] == pytest.approx(0.1)
    assert f"{refused}: too long to decode whole" in caplog.text
    again = targets()  # still refused: only that clip is tried, and it is named again
    assert calls[1:] == [[refused]] and again.equals(first)
    assert f"{refused}: too long to decode whole" in caplog.text and "tags those again" in caplog.text


@pytest.mark.parametrize("noisy_targets", ["ensemble", "oof"])
def test_a_clip_refused_for_memory_then_tagged_completes_the_table(tmp_path, monkeypatch, caplog, noisy_targets):
    """Once the refused clip can be tagged, the next run tags it alone and the table is whole,
    as one run would have made it (the student's crops follow its order); a run after that
    tags nothing."""
    import raytag.ensemble.teacher_targets as teacher_module

    targets, calls, refused = _refusing_teacher(tmp_path, monkeypatch, caplog, noisy_targets)
    targets()
    monkeypatch.setattr(teacher_module, "predict_files", _predict_by_size(calls))  # the memory is there now
    whole = targets()
    assert calls[1:] == [[refused]] and whole.loc["noisy/n1.wav", "bark"] == pytest.approx(0.1) and not caplog.text
    assert targets().equals(whole) and len(calls) == 2 and not caplog.text
    at_once = targets(str(tmp_path / "at_once"))
    assert list(whole.index) == list(at_once.index)
    np.testing.assert_allclose(whole[HAND_CLASSES].to_numpy(np.float64), at_once[HAND_CLASSES].to_numpy(np.float64))


def test_a_damaged_clip_is_kept_out_and_named_on_every_run_without_tagging_again(tmp_path, monkeypatch, caplog):
    """A clip that fails the same way every time (damaged) is recorded with the targets: a
    rerun tags nothing for it and still names it (file: reason); it has no row, never zeros."""
    import raytag.ensemble.teacher_targets as teacher_module

    art, dataset = _hand_teacher(tmp_path, CURATED, NOISY)
    _write_audio_stand_ins(dataset)
    damaged = str(tmp_path / "data" / "noisy" / "n2.wav")
    calls, out = [], str(tmp_path / "distill")
    monkeypatch.setattr(teacher_module, "predict_files", _predict_failing(calls, {damaged: False}))
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raytag.ensemble.teacher_targets"):
            table = teacher_targets(art, dataset, out, noisy_targets="ensemble")
        assert "noisy/n2.wav" not in table.index and "noisy/n1.wav" in table.index
        assert f"{damaged}: cannot decode: damaged" in caplog.text and "tags those again" not in caplog.text
    assert len(calls) == 1
    Path(damaged).write_bytes(b"b" * 20)  # replaced: another key, so every clip is tagged again
    monkeypatch.setattr(teacher_module, "predict_files", _predict_by_size(calls))
    table = teacher_targets(art, dataset, out, noisy_targets="ensemble")
    assert table.loc["noisy/n2.wav", "bark"] == pytest.approx(0.2)
    assert len(calls[1]) == 2


def _teacher_failing_everywhere(tmp_path: Path, monkeypatch) -> tuple:
    """(artifact, dataset, calls, damaged, refused): a hand teacher with no out-of-fold
    prediction of any clip of its dataset (curated z1.wav is new to it; noisy clips are
    tagged with --noisy-targets ensemble), whose artifact fails on every clip: the first
    damaged, the others refused for memory."""
    import raytag.ensemble.teacher_targets as teacher_module

    art, _ = _hand_teacher(tmp_path, CURATED, NOISY)
    dataset = _hand_dataset(tmp_path / "data", {"z1.wav": ("bark",)}, NOISY)
    _write_audio_stand_ins(dataset)
    damaged, *refused = [str(p) for p in dataset.clips["path"]]
    calls = []
    failing = {damaged: False, **{p: True for p in refused}}
    monkeypatch.setattr(teacher_module, "predict_files", _predict_failing(calls, failing))
    return art, dataset, calls, damaged, refused


def test_a_teacher_that_tagged_no_clip_keeps_its_failures_for_the_next_run(tmp_path, monkeypatch, caplog):
    """With every clip failing, teacher.parquet was written without the class columns, so
    every rerun found it "unreadable" and tagged every clip again, the damaged ones too.
    Now a rerun reads it and tags only the clips refused for memory."""
    art, dataset, calls, damaged, refused = _teacher_failing_everywhere(tmp_path, monkeypatch)
    out = str(tmp_path / "distill")
    assert teacher_targets(art, dataset, out, noisy_targets="ensemble").empty
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raytag.ensemble.teacher_targets"):
        assert teacher_targets(art, dataset, out, noisy_targets="ensemble").empty
    assert calls == [[damaged, *refused], refused]
    assert "unreadable" not in caplog.text and f"{damaged}: cannot decode: damaged" in caplog.text


def test_a_distillation_whose_teacher_tagged_no_clip_says_so(tmp_path, monkeypatch):
    """With no teacher target at all, distill died in np.stack ("need at least one array to
    stack"); now it names the cause and what to do."""
    from types import SimpleNamespace

    import raytag.ensemble.distill as distill_module

    exp = _experiment_that_must_not_start(tmp_path, monkeypatch)
    art, dataset, *_ = _teacher_failing_everywhere(tmp_path, monkeypatch)
    for member in art.members:
        member.settings.update(model=dict(TEACHER_MODEL), crop_frames=62, segment_frames=62)
    monkeypatch.setattr(distill_module, "load_artifact", lambda path: art)
    monkeypatch.setattr(distill_module, "ensure_ray", lambda: None)
    store = SimpleNamespace(clip_ids=list(dataset.clips["clip_id"]))
    monkeypatch.setattr(distill_module, "prepare_data",
                        lambda *a, **k: (dataset, store, SimpleNamespace(classes=list(HAND_CLASSES))))
    with pytest.raises(RaytagError, match="the teacher could not tag any training clip: see the failures above"):
        distill(exp, StudentSettings(noisy_targets="ensemble", students=1), data=str(tmp_path / "data"))


def test_the_teachers_test_predictions_are_kept_and_only_a_file_refused_for_memory_is_tagged_again(
        tmp_path, monkeypatch, caplog):
    """A test file refused for memory kept teacher_test.npz from being written, so every run
    tagged the whole test set with the full teacher again; now only that file is."""
    import raytag.ensemble.teacher_targets as teacher_module

    art, _ = _hand_teacher(tmp_path, CURATED, NOISY)
    paths = [str(tmp_path / "data" / "test" / f"t{i}.wav") for i in range(3)]
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"a" * 10)
    calls, out = [], str(tmp_path / "distill")
    monkeypatch.setattr(teacher_module, "predict_files", _predict_failing(calls, {paths[1]: True}))
    with caplog.at_level(logging.WARNING, logger="raytag.ensemble.teacher_targets"):
        assert list(teacher_test_predictions(art, paths, out, 8, False).index) == [paths[0], paths[2]]
    assert f"{paths[1]}: too long to decode whole" in caplog.text
    assert (tmp_path / "distill" / "teacher_test.npz").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raytag.ensemble.teacher_targets"):
        assert list(teacher_test_predictions(art, paths, out, 8, False).index) == [paths[0], paths[2]]
    assert calls[1:] == [[paths[1]]] and f"{paths[1]}: too long to decode whole" in caplog.text
    monkeypatch.setattr(teacher_module, "predict_files", _predict_by_size(calls))
    assert list(teacher_test_predictions(art, paths, out, 8, False).index) == paths and calls[2:] == [[paths[1]]]
    assert list(teacher_test_predictions(art, paths, out, 8, False).index) == paths and len(calls) == 3


def test_the_segment_teachers_cache_computes_only_the_clips_it_lacks(tmp_path, monkeypatch):
    """A clip added to the student's targets (one the teacher tagged on a later try) made the
    whole grid be computed again; now only that clip's is, and the cache holds both."""
    from types import SimpleNamespace

    import raytag.ensemble.distill as distill_module
    import raytag.ensemble.teacher_targets as teacher_module

    art, dataset = _hand_teacher(tmp_path, CURATED, NOISY)
    ids = list(dataset.clips["clip_id"])
    asked = []

    def grid(members, combine, store, features, clip_ids, *a, **k):
        asked.append(list(clip_ids))
        return {c: (np.arange(3, dtype=np.float64), np.full((3, 3), ids.index(c), np.float32)) for c in clip_ids}

    monkeypatch.setattr(teacher_module, "teacher_segments", grid)
    monkeypatch.setattr(teacher_module, "held_out_folds", lambda *a, **k: {})
    monkeypatch.setattr(distill_module, "SegmentTargetCrops", lambda store, data, crop, batch, by_clip, *a: by_clip)
    cfg = SimpleNamespace(crop_frames=lambda: 64, features=None, train=SimpleNamespace(batch_size=4))
    settings = StudentSettings(target_grain="segment")

    def segments(clips: list) -> dict:
        targets = LabelledSet(clips, np.zeros((len(clips), len(HAND_CLASSES))), np.zeros(len(clips), bool))
        return distill_module.segment_batches(art, cfg, None, dataset, targets, settings, str(tmp_path / "distill"))

    segments(ids[:-1])
    got = segments(ids)
    assert asked == [ids[:-1], ids[-1:]] and set(got) == set(ids)
    assert got[ids[1]][1][0, 0] == 1 and got[ids[-1]][1][0, 0] == len(ids) - 1
    segments(ids)
    assert len(asked) == 2


def test_the_segment_teachers_cache_is_written_without_a_copy_in_memory(tmp_path, monkeypatch):
    """It went through np.savez into a BytesIO and its getvalue(): the grid, the buffer and
    the copy were alive at once (3x the grid, hundreds of MB on FSDKaggle2019). It is
    streamed to a temporary file of its own now, renamed over the cache."""
    import tracemalloc
    from types import SimpleNamespace

    import raytag.ensemble.distill as distill_module
    import raytag.ensemble.teacher_targets as teacher_module

    art, dataset = _hand_teacher(tmp_path, CURATED, NOISY)
    ids = list(dataset.clips["clip_id"])
    rng = np.random.default_rng(0)
    grid = {c: (np.arange(625_000, dtype=np.float32), rng.random((625_000, 3), dtype=np.float32)) for c in ids}
    monkeypatch.setattr(teacher_module, "teacher_segments", lambda *a, **k: grid)
    monkeypatch.setattr(distill_module, "SegmentTargetCrops", lambda *a, **k: "crops")
    cfg = SimpleNamespace(crop_frames=lambda: 64, features=None, train=SimpleNamespace(batch_size=4))
    targets = LabelledSet(ids, np.zeros((len(ids), len(HAND_CLASSES))), np.zeros(len(ids), bool))
    settings = StudentSettings(target_grain="segment")
    tracemalloc.start()
    try:
        distill_module.segment_batches(art, cfg, None, dataset, targets, settings, str(tmp_path / "distill"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = sum(s.nbytes + p.nbytes for s, p in grid.values())  # 50 MB
    assert peak < size / 2, f"peak {peak / 2**20:.0f} MiB writing a {size / 2**20:.0f} MiB grid"
    cache = tmp_path / "distill" / "teacher_segments.npz"
    with np.load(cache) as saved:
        assert list(saved["clip_ids"]) == ids
        np.testing.assert_array_equal(saved["p3"], grid[ids[3]][1])
    assert [p.name for p in cache.parent.iterdir()] == ["teacher_segments.npz"]  # no temporary left


def test_the_teacher_cache_follows_the_audio_the_members_outputs_and_the_feature_code(tmp_path, monkeypatch):
    """teacher.parquet was keyed on clip ids and labels only: a noisy clip's audio replaced
    under its name, a member's out-of-fold predictions written again, or another front-end
    code (FEATURES_VERSION, librosa) kept the old targets."""
    import raytag.ensemble.teacher_targets as teacher_module
    import raytag.features.store as feature_store

    art, dataset = _hand_teacher(tmp_path, CURATED, NOISY)
    _write_audio_stand_ins(dataset)
    calls = []
    monkeypatch.setattr(teacher_module, "predict_files", _predict_by_size(calls))
    out = str(tmp_path / "distill")

    def targets() -> pd.DataFrame:  # the noisy clips from the artifact's predictions (predict_files)
        return teacher_targets(art, dataset, out, noisy_targets="ensemble")

    first = targets()
    assert len(calls) == 1 and targets().equals(first) and len(calls) == 1  # reused
    (tmp_path / "data" / "noisy" / "n1.wav").write_bytes(b"b" * 30)  # replaced in place
    assert targets().loc["noisy/n1.wav", "bark"] == pytest.approx(0.3) and len(calls) == 2
    oof = tmp_path / "trials" / "m0" / "oof.parquet"
    frame = pd.read_parquet(oof)
    frame[HAND_CLASSES] = 1 - frame[HAND_CLASSES]
    storage.write_parquet(frame, str(oof), metadata={"raytag.classes": json.dumps(HAND_CLASSES)})
    again = targets()
    assert len(calls) == 3 and not np.allclose(again.loc["curated/c1.wav", HAND_CLASSES].to_numpy(np.float64),
                                               first.loc["curated/c1.wav", HAND_CLASSES].to_numpy(np.float64))
    monkeypatch.setattr(feature_store, "FEATURES_VERSION", feature_store.FEATURES_VERSION + 1)
    targets()
    assert len(calls) == 4
    # a cache keyed the old way (manifest, combiner, kind, dataset) is made again, not a crash
    cache = tmp_path / "distill" / "teacher.parquet"
    frame = pd.read_parquet(cache)
    frame["artifact_manifest"] = "0" * 64 + ":mean:ensemble:" + str(dataset.root) + "#0123456789abcdef"
    frame.to_parquet(cache)
    assert targets().loc["noisy/n1.wav", "bark"] == pytest.approx(0.3) and len(calls) == 5


def test_the_teachers_test_predictions_are_made_once_per_teacher_and_files(tmp_path, monkeypatch):
    """Every distill run tagged the whole test set with the full teacher again (K x F
    networks), so another student cost more than its training; they are cached now, and
    made again when a test file or the teacher changes, or the cache cannot be read."""
    import raytag.ensemble.distill as distill_module
    import raytag.ensemble.teacher_targets as teacher_module
    from raytag.data.layouts import Dataset

    art, _ = _hand_teacher(tmp_path, CURATED, NOISY)
    names = ["t1.wav", "t2.wav", "t3.wav"]
    paths = [str(tmp_path / "data" / "test" / f) for f in names]
    clips = pd.DataFrame({"clip_id": [f"test/{f}" for f in names], "fname": names, "path": paths,
                          "labels": [()] * 3, "split": "test", "duration": 1.0})
    dataset = Dataset(root=tmp_path / "data", layout="fat2019", classes=list(HAND_CLASSES), clips=clips,
                      skipped=pd.DataFrame(columns=["file", "reason"]))
    _write_audio_stand_ins(dataset)
    calls = []
    for module in (teacher_module, distill_module):  # the teacher's test pass, and the student's
        monkeypatch.setattr(module, "predict_files", _predict_by_size(calls))
    student = dataclasses.replace(art, path=str(tmp_path / "student"))
    out = str(tmp_path / "distill")
    score_on_test(student, art, dataset, 8, False, out)
    assert len(calls) == 2  # the teacher, then the student
    score_on_test(student, art, dataset, 8, False, out)
    assert len(calls) == 3  # the student only
    got = teacher_test_predictions(art, paths, out, 8, False)
    assert len(calls) == 3 and list(got.index) == paths and got.to_numpy() == pytest.approx(0.1)
    Path(paths[1]).write_bytes(b"c" * 20)  # a test file replaced
    assert teacher_test_predictions(art, paths, out, 8, False).loc[paths[1], "bark"] == pytest.approx(0.2)
    assert len(calls) == 4
    cache = tmp_path / "distill" / "teacher_test.npz"
    cache.write_bytes(cache.read_bytes()[:40])  # cut short by a kill
    teacher_test_predictions(art, paths, out, 8, False)
    assert len(calls) == 5 and [p.name for p in cache.parent.iterdir()] == ["teacher_test.npz"]


def _replace_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """Other bytes under the same name, size and mtime, as `cp -p` or `rsync -a` leave them."""
    st = path.stat()
    assert len(data) == st.st_size
    time.sleep(0.01)  # change times tick with the kernel's clock, coarsely on some kernels
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_teachers_caches_follow_a_clip_replaced_keeping_its_size_and_mtime(tmp_path, monkeypatch):
    """teacher.parquet and teacher_test.npz were keyed on each file's size and mtime, which
    `cp -p`, `rsync -a` or an archive extracted again keep: other audio under the same name
    kept the old targets and test predictions. The change time moves, and the key holds it."""
    import raytag.ensemble.teacher_targets as teacher_module

    art, dataset = _hand_teacher(tmp_path, CURATED, NOISY)
    _write_audio_stand_ins(dataset)
    calls = []
    monkeypatch.setattr(teacher_module, "predict_files", _predict_by_size(calls))
    out = str(tmp_path / "distill")
    paths = [str(p) for p in dataset.clips["path"]]

    def both() -> int:  # the noisy clips' targets, then the predictions on the files as test files
        teacher_targets(art, dataset, out, noisy_targets="ensemble")
        teacher_test_predictions(art, paths, out, 8, False)
        return len(calls)

    assert both() == 2 and both() == 2  # reused
    _replace_keeping_size_and_mtime(tmp_path / "data" / "noisy" / "n1.wav", b"b" * 10)
    assert both() == 4


def test_a_teacher_trained_without_test_clips_still_teaches(tmp_path):
    """Its members' test.parquet is empty (a dataset without test clips): it was read as a
    damaged file and distill stopped; now it means no test predictions."""
    art, dataset = _hand_teacher(tmp_path, CURATED, NOISY)
    for member in art.members:
        empty = pd.DataFrame({"clip_id": pd.Series(dtype=str), "fold": pd.Series(dtype=int), "run": 0, "stage": "",
                              **{c: pd.Series(dtype=np.float32) for c in HAND_CLASSES}})
        storage.write_parquet(empty, storage.join(member.settings["source"], "test.parquet"),
                              metadata={"raytag.classes": json.dumps(HAND_CLASSES)})
    table = teacher_targets(art, dataset, str(tmp_path / "distill"))
    assert len(table) == len(CURATED) + len(NOISY) and set(table["target_source"]) == {"oof"}


def test_test_agreement_is_scored_on_the_files_the_teacher_could_read_too(tmp_path):
    """The teacher decodes each file for its longest frame, so a short test file the student
    read may be missing from the teacher's predictions: a KeyError once, after the student
    was trained; now the agreement covers the files both read and counts the others."""
    from raytag.data.layouts import Dataset

    test = {f"t{i}.wav": HAND_CLASSES[i % 3] for i in range(6)}
    paths = [str(tmp_path / "test" / f) for f in test]
    clips = pd.DataFrame({"clip_id": [f"test/{f}" for f in test], "fname": list(test), "path": paths,
                          "labels": [()] * len(test), "split": "test", "duration": 1.0})
    dataset = Dataset(root=tmp_path, layout="fat2019", classes=list(HAND_CLASSES), clips=clips,
                      skipped=pd.DataFrame(columns=["file", "reason"]),
                      test_truth=pd.DataFrame({"fname": list(test), "labels": [(lab,) for lab in test.values()]}))
    rng = np.random.default_rng(0)
    student = pd.DataFrame(rng.uniform(size=(6, 3)), index=paths, columns=HAND_CLASSES)
    teacher = pd.DataFrame(rng.uniform(size=(6, 3)), index=paths, columns=HAND_CLASSES)
    short = paths[2]
    got = scores_on_test(student, teacher.drop(index=short), dataset)
    both = [p for p in paths if p != short]
    expected = lwlrap(_top(teacher.loc[both].to_numpy()), student.loc[both].to_numpy())
    assert got["test_agreement_lwlrap"] == pytest.approx(expected)
    assert got["test_agreement_clips"] == 5 and got["test_agreement_left_out"] == 1
    assert got["test_clips"] == 6  # the student's own test score needs no teacher: every file it read
    full = scores_on_test(student, teacher, dataset)
    assert full["test_agreement_left_out"] == 0 and full["test_lwlrap"] == got["test_lwlrap"]


def _top(probs: np.ndarray) -> np.ndarray:
    top = (probs > 0.5).astype(np.float32)
    top[np.arange(len(top)), probs.argmax(axis=1)] = 1.0
    return top


def test_several_students_are_averaged_like_fold_models(experiment, distilled, demo_data):
    """--students 2 trains the seed's student and the next seed's, saves both as the student
    member's models, and tags with their mean; the first is the one a single-student run of
    the same seed trains, and a later single-student run leaves no second model behind."""
    small = dict(width=4, depth=1, epochs=2, batch_size=16)
    cache = str(Path(experiment).parent / "cache")
    one = distill(experiment, StudentSettings(**small, seed=3, students=1), feature_cache=cache)
    first = load_artifact(one.artifact_path).members[0].models[0].state_dict()
    two = distill(experiment, StudentSettings(**small, seed=3, students=2), feature_cache=cache)
    art = load_artifact(two.artifact_path)
    member = art.members[0]
    assert len(member.models) == 2 and two.student.endswith(" x2")
    assert art.distilled["seeds"] == [3, 4] and len(art.distilled["train_loss_by_student"]) == 2
    a, b = (m.state_dict() for m in member.models)
    assert all(torch.equal(a[k], first[k]) for k in first)  # the same seed, the same student
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the next seed, another one
    clips = [str(p) for p in load_dataset(demo_data).split("test")["path"][:4]]
    mean, _ = art.predict_files(clips)
    each = [dataclasses.replace(art, members=[dataclasses.replace(member, models=[m])]).predict_files(clips)[0]
            for m in member.models]
    assert np.allclose(mean.to_numpy(), np.mean([e.to_numpy() for e in each], axis=0), atol=1e-6)
    again = distill(experiment, StudentSettings(**small, seed=3, students=1), feature_cache=cache)
    assert len(load_artifact(again.artifact_path).members[0].models) == 1
    # the artifact packs only the folds model.json lists: the folder shows a former student left behind
    weights = Path(experiment) / "distill" / "student" / "weights"
    assert sorted(p.name for p in weights.iterdir()) == ["fold0.safetensors"]
    with pytest.raises(RaytagError, match="--students"):
        distill(experiment, StudentSettings(students=0))


@pytest.mark.parametrize("args, said", [
    (["--seed", "-1"], "--seed -1: must be from 0 to 4294967295"),
    (["--seed", "4294967295", "--students", "2"], "the last student's seed, 4294967296, is above 4294967295"),
    (["--overlap", "0.97"], "--overlap 0.97: must be from 0 to 0.95"),
    (["--overlap", "-0.1"], "--overlap -0.1: must be from 0 to 0.95"),
])
def test_distill_names_the_option_typed_and_overlap_has_one_range(args, said, tmp_path):
    """`distill --seed -1` was told "cv.seed: -1 is below the minimum 0" and `--overlap 0.97`
    "inference.overlap: 0.97 is above the maximum 0.95" (check() said [0, 1)), only once the
    student's config was made; now check() names the option, with the config's own range."""
    from typer.testing import CliRunner

    from raytag.cli import app
    from raytag.config import _RANGES
    from raytag.ensemble.distill import MAX_OVERLAP

    assert MAX_OVERLAP == _RANGES[("InferenceConfig", "overlap")][1]
    result = CliRunner().invoke(app, ["distill", "demo", "--storage", str(tmp_path), *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.split())
    StudentSettings(overlap=MAX_OVERLAP, seed=2**32 - 2, students=2).check()  # the ends of the ranges pass


def test_the_student_has_no_warm_up_to_refuse_a_dataset_for(tmp_path):
    """The student's config left pipeline.warmup on (the default), so a dataset whose rough
    noisy selection keeps no clip was refused ("set pipeline.warmup.enabled: false"), advice
    distill has no option for; the student never warms up (train_student trains one step)."""
    from raytag.training.plan import _refuse_a_warmup_without_clips

    art, _ = _hand_teacher(tmp_path, CURATED, NOISY)
    for member in art.members:
        member.settings.update(model=dict(TEACHER_MODEL), crop_frames=62, segment_frames=62)
    cfg = student_config(template_member(art), StudentSettings())
    assert not cfg.pipeline.warmup.enabled
    _refuse_a_warmup_without_clips(cfg, n_noisy=len(NOISY), n_subset=0)  # no noisy clip selected: fine


@pytest.mark.parametrize("record, said", [("{nope", "not valid JSON"), ("[1, 2]", "not a sweep record")])
def test_a_damaged_sweep_json_asks_for_data(tmp_path, monkeypatch, record, said):
    """Without --data, distill reads the dataset from sweep.json: a damaged one is named, with
    what to do, before any work."""
    import raytag.ensemble.distill as distill_module
    from raytag.cli import app

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "sweep.json").write_text(record)
    monkeypatch.setattr(distill_module, "experiment_artifact", lambda folder: str(exp / "ensemble" / "artifact"))
    result = CliRunner().invoke(app, ["distill", "exp", "--storage", str(tmp_path), "--epochs", "1"])
    assert result.exit_code == 2, result.output
    assert f"sweep.json: {said}" in result.output and "give the dataset the sweep ran on with --data" in result.output
