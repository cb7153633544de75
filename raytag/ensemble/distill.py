"""`raytag distill EXPERIMENT`: one small model trained on the ensemble's soft predictions,
saved as an artifact that `raytag predict` and `raytag serve` take like any other.

The teacher is the experiment's artifact (`experiment_artifact`): a sweep's ensemble, or a
`raytag train` run's own (the default's members), whose members' outputs hold the same
out-of-fold predictions a sweep's trials do.

The teacher's targets (one row per training clip: the ensemble's out-of-fold predictions
where every member has them, else the artifact's own) and its predictions on the test
clips come from raytag.ensemble.teacher_targets, cached in `<experiment>/distill/`, so
trying another student costs its training and its own test pass.

The student is trained in this process with the engine's own pieces: the feature store
and plan (`prepare_data`, the student's features; cached like a trial's), random-crop
batches (`CropBatches`), the trial's epoch function (`train_epoch`: gain/shift,
SpecAugment, mixup, the loss, the optimizer and schedule) and weight averaging, all set
as the teacher's best member (by its out-of-fold lwlrap) was trained (its config.yaml).
Each clip's target blends its given labels with the teacher's prediction (`label_weight`). It is one model on one process
with no folds, stages, checkpoints or reports to a scheduler, which is all that Ray
Train's worker group would add (and its start-up, see results/benchmarks/throughput.md).
It trains and predicts on the CPU, whatever the machine has (`_StudentContext`).

Output, in `<experiment>/distill/`: `student/` (the student's model card and weights in
the trial-output format), `artifact/` (a one-member artifact whose ensemble.json carries
a `distilled` record: teacher, targets, scores), `distill_summary.json`.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import save_file

from raytag import storage
from raytag.cluster import check_data_folder
from raytag.config import Config, setting_choices, value_range
from raytag.data.labels import labels_to_matrix
from raytag.data.layouts import Dataset
from raytag.ensemble.artifact import (
    Artifact, Member, MemberSpec, experiment_artifact, load_artifact, probability_teacher, save_artifact,
    trial_settings,
)
from raytag.ensemble.crop_targets import SegmentTargetCrops
from raytag.ensemble.tagging import predict_files, progress_bar
from raytag.ensemble.teacher_targets import (
    SOURCE_COLUMN, TEACHER, CacheIds, local_output, manifest_id, teacher_grid, teacher_targets,
    teacher_test_predictions, training_clips,
)
from raytag.errors import RaytagError
from raytag.features.store import FeatureStore
from raytag.metrics import lwlrap
from raytag.models import MODELS, ModelConfigError, build_model
from raytag.models.registry import check_run_models
from raytag.search.report import SWEEP_RECORD, read_sweep_record
from raytag.session import ensure_ray
from raytag.training.averaging import WeightAverage
from raytag.training.dataset import CropBatches, LabelledSet
from raytag.training.epoch import build_optimizer, train_epoch
from raytag.training.inference import iter_store_clips, predict_segments
from raytag.training.losses import build_loss
from raytag.training.outputs import CONFIG, MODEL_CARD, WEIGHTS, model_card
from raytag.training.plan import Plan
from raytag.training.precision import resolve_precision
from raytag.training.runner import prepare_data, run_folder
from raytag.training.steps import Step

log = logging.getLogger(__name__)

DISTILL_DIR = "distill"
TEACHER_SCALES = ("prob", "clip_max")  # how the teacher's predictions become targets (StudentSettings)
NOISY_TARGETS = ("oof", "ensemble")  # where the noisy clips' teacher predictions come from (StudentSettings)
TARGET_GRAINS = ("clip", "segment")  # a crop's teacher target: its clip's, or the teacher's at the crop (StudentSettings)
INITS = ("scratch", "member")  # the student's first weights: random, or the template member's first fold model's
# the student's front end (StudentSettings.front_end): "member" is the template member's; a kind is
# that member's settings with the kind changed (any features.kind but the raw wave, which needs a
# network of its own); "auto" picks (`student_features`)
FRONT_ENDS = ("auto", "member", *(kind for kind in setting_choices("features.kind") if kind != "raw"))
# combiners fitted on the members' out-of-fold predictions: the ensemble job scores them
# nested (each clip by a fit without its fold); their targets' score here would be in-sample
FITTED = {"weighted": "weights fitted on these clips: in-sample", "rank": "the members' mean"}
MAX_OVERLAP = value_range("InferenceConfig", "overlap")[1]  # --overlap is the student's inference.overlap
MAX_SEED = value_range("Config", "seed")[1]  # --seed is its seed and cv.seed


@dataclass
class StudentSettings:
    """The student and its training; None fields follow the teacher's best member
    (`template_member`)."""

    model: Optional[str] = None  # None: the best member's model (its params and dropout too)
    width: Optional[int] = None
    depth: Optional[int] = None
    # 60, not the members' 30, which stopped students well short. Trained without one curated
    # fold and scored on it (true labels, folds 0 and 1 of the dev benchmark: one student per
    # fold), 30 epochs scored 0.705 and 60 0.803 (+0.098 [+0.063, +0.138]; 100: 0.800;
    # results/benchmarks/distill_holdout.json, benchmarks/distill_holdout.py)
    epochs: int = 60
    lr: Optional[float] = None  # None: the member's peak learning rate
    average_last: Optional[int] = None  # the mean of the last N epochs' weights (SWA; 0: off); None: the member's
    batch_size: int = 32
    crop_seconds: Optional[float] = None  # None: the member's crop
    overlap: Optional[float] = None  # segment overlap at inference; None: the member's
    features: Optional[dict] = None  # front end settings, all of them; None: as `front_end` says
    # "auto": log-mel and PCEN as two channels (logmel_pcen) where the teacher has members on both
    # with the same mel settings, else the template member's front end. Two such students agreed
    # with the default's teacher (members on both) on the dev benchmark's test clips at 0.885
    # against 0.861 for two on log-mel (no labels), and tag at about 300x real time on 2 cores
    # (results/benchmarks/distill_front_ends_dual.json)
    front_end: str = "auto"
    seed: int = 0
    # students trained alike but for their seeds (seed, seed + 1, ...), averaged as a member's
    # fold models are: a run's test predictions are its 5 fold models' mean, which gains over
    # any one of them, and one student is one network. Two agreed better with their teacher
    # on the dev benchmark's test clips (no labels: +0.029 and +0.022 over one, two seed sets)
    # and still tag at 310x real time on 2 cores (results/benchmarks/speed.md)
    students: int = 2
    # each clip's target: label_weight x its given labels + the rest x the teacher's soft
    # prediction (Hinton et al. 2015's two terms, as one BCE target). The teacher's
    # predictions on the clips it trained on repeat the labels it memorised, and on curated
    # clips the given labels are clean, so they are not thrown away
    label_weight: float = 0.5
    # "clip_max": each clip's teacher prediction divided by its largest class score, so its
    # top class teaches 1. An ensemble's mean probabilities are small (a median top score
    # near 0.1-0.3 on the dev benchmark), and lwlrap ranks the classes within a clip, which
    # the scaling keeps. "prob": the probabilities as they are.
    teacher_scale: str = "prob"
    # "oof": the members' out-of-fold predictions on the noisy clips, where every member has
    # them (cv.noisy_folds), else the artifact's; "ensemble": the artifact's in every case
    noisy_targets: str = "oof"
    # "clip": every crop of a clip is taught the clip's target; "segment": the teacher's part
    # follows the teacher along the clip, at the crop's start (raytag.ensemble.crop_targets)
    target_grain: str = "clip"
    # "scratch": random weights; "member": the template member's first fold model's weights
    # (the student is then that network, fine-tuned on every clip's blended target; its
    # model, width, depth and features must be the member's)
    init: str = "scratch"

    def check(self) -> None:
        if self.epochs < 1:
            raise RaytagError(f"--epochs {self.epochs}: must be at least 1")
        if self.students < 1:
            raise RaytagError(f"--students {self.students}: must be at least 1")
        if self.batch_size < 1:
            raise RaytagError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.model is not None and self.model not in MODELS:
            raise RaytagError(f"--model {self.model}: unknown model; valid names: {', '.join(MODELS)}")
        for option, value in (("--width", self.width), ("--depth", self.depth)):
            if value is not None and value < 1:
                raise RaytagError(f"{option} {value}: must be at least 1")
        if self.average_last is not None and not 0 <= self.average_last <= self.epochs:
            raise RaytagError(f"--average-last {self.average_last}: must be in [0, --epochs {self.epochs}]")
        if self.lr is not None and not self.lr > 0:
            raise RaytagError(f"--lr {self.lr}: must be more than 0")
        if not 0 <= self.label_weight <= 1:
            raise RaytagError(f"--label-weight {self.label_weight}: must be in [0, 1]")
        if self.teacher_scale not in TEACHER_SCALES:
            raise RaytagError(f"--teacher-scale {self.teacher_scale}: must be one of {', '.join(TEACHER_SCALES)}")
        if self.noisy_targets not in NOISY_TARGETS:
            raise RaytagError(f"--noisy-targets {self.noisy_targets}: must be one of {', '.join(NOISY_TARGETS)}")
        if self.target_grain not in TARGET_GRAINS:
            raise RaytagError(f"--target-grain {self.target_grain}: must be one of {', '.join(TARGET_GRAINS)}")
        if self.init not in INITS:
            raise RaytagError(f"--init {self.init}: must be one of {', '.join(INITS)}")
        if self.front_end not in FRONT_ENDS:
            raise RaytagError(f"--front-end {self.front_end}: must be one of {', '.join(FRONT_ENDS)}")
        if self.init == "member" and self.front_end not in ("auto", "member"):
            raise RaytagError("--init member starts from the member's own network, which reads the member's front end; "
                              "drop --front-end, or use --init scratch")
        if self.init == "member" and (self.model, self.width, self.depth, self.features) != (None,) * 4:
            raise RaytagError("--init member starts from the member's own network, so the student takes its "
                              "model, width, depth and features; drop --model/--width/--depth, or use --init scratch")
        if self.target_grain == "segment" and self.teacher_scale != "prob":
            raise RaytagError("--target-grain segment takes the teacher's probabilities as they are; "
                              "drop --teacher-scale, or use --target-grain clip")
        if self.overlap is not None and not 0 <= self.overlap <= MAX_OVERLAP:
            raise RaytagError(f"--overlap {self.overlap}: must be from 0 to {MAX_OVERLAP}")
        last_seed = self.seed + self.students - 1  # student i trains with --seed + i
        if not 0 <= self.seed <= MAX_SEED:
            raise RaytagError(f"--seed {self.seed}: must be from 0 to {MAX_SEED}")
        if last_seed > MAX_SEED:
            raise RaytagError(f"--seed {self.seed} with --students {self.students}: the last student's seed, "
                              f"{last_seed}, is above {MAX_SEED}; give a lower --seed")


@dataclass
class DistillResult:
    artifact_path: str
    teacher_path: str
    n_oof: int  # clips whose targets are the ensemble's out-of-fold predictions (curated; noisy too with noisy folds)
    n_ensemble: int  # clips whose targets are the artifact's predictions (the rest)
    epochs: int
    seconds: float
    student: str = ""  # its model, as "cnn2d w16 d4"
    label_weight: float = 0.5
    teacher_scale: str = "prob"
    target_grain: str = "clip"
    train_loss: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)  # agreement with the teacher; test scores (reported only)


# ----------------------------------------------------------------------------- student targets
def student_targets(table: pd.DataFrame, dataset, classes: list[str], label_weight: float,
                    teacher_scale: str = "prob") -> LabelledSet:
    """The student's training set: every clip of the teacher's table, its target
    `label_weight` x its given labels + (1 - label_weight) x the teacher's prediction
    (scaled per `teacher_scale`), and noisy clips flagged as such (the recipe's noisy-label
    loss and weight apply to them)."""
    teacher = table[classes].to_numpy(np.float32)
    if teacher_scale == "clip_max":
        teacher = teacher / np.maximum(teacher.max(axis=1, keepdims=True), 1e-6)
    labels = given_labels(dataset, list(table.index))
    noisy = set(dataset.split("noisy")["clip_id"])
    is_noisy = np.array([c in noisy for c in table.index])
    return LabelledSet(list(table.index), label_weight * labels + (1 - label_weight) * teacher, is_noisy)


def given_labels(dataset, clip_ids: list[str]) -> np.ndarray:
    """(n, n_classes) float32: each clip's labels as the dataset gives them."""
    given = {}
    for split in ("curated", "noisy"):
        given.update(zip(dataset.split(split)["clip_id"], dataset.label_matrix(split)))
    return np.stack([given[c] for c in clip_ids]).astype(np.float32)


def segment_batches(art: Artifact, cfg: Config, store, dataset, targets: LabelledSet, settings: StudentSettings,
                    out_dir: str, ids: Optional[CacheIds] = None) -> SegmentTargetCrops:
    """The student's crops with targets that follow the teacher along each clip (the
    teacher's grid: `teacher_grid`, cached in `<out_dir>/teacher_segments.npz` under `ids`)."""
    crop = cfg.crop_frames()
    segments = teacher_grid(art, cfg.features, store, dataset, targets.clip_ids, crop, settings.noisy_targets,
                            settings.batch_size, out_dir, ids=ids)
    return SegmentTargetCrops(store, targets, crop, cfg.train.batch_size, segments,
                              given_labels(dataset, targets.clip_ids), settings.label_weight)


# ----------------------------------------------------------------------------- student
def template_member(art: Artifact, model: Optional[str] = None) -> Member:
    """The member the student is made like: of those of family `model` when some are (else
    of all), the one with the best out-of-fold lwlrap the artifact recorded (the ensemble job
    scores every member on the same OOF clips, a train run's members share its folds); the
    first when none has one. A copy of the strongest member starts closest to its teacher:
    the default's first member, resnet18, scored 0.08 CV below its vgg_small (quality.md)."""
    members = [m for m in art.members if m.settings.get("model", {}).get("name") == model] or list(art.members)
    scored = [m for m in members if m.settings.get("cv_lwlrap") is not None]
    return max(scored, key=lambda m: float(m.settings["cv_lwlrap"])) if scored else members[0]


MEL_PARTS = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "top_db", "deltas")


def student_features(art: Artifact, template: Member, s: StudentSettings) -> dict:
    """The student's front end settings (`StudentSettings.front_end`). "auto" gives log-mel and PCEN
    as two channels where the teacher has members on both that share the template's mel settings:
    a teacher that gained from seeing both is learnt better by a student that sees both (one
    network, one STFT) than by one on either alone; else, and always with --init member, the
    template member's own."""
    if s.features is not None:
        return dict(s.features)
    own = dict(template.settings["features"])
    kind = s.front_end
    if kind == "auto":
        seen = [m.settings["features"] for m in art.members if m.settings["features"]["kind"] in ("logmel", "pcen")]
        both = {f["kind"] for f in seen} == {"logmel", "pcen"} and own["kind"] in ("logmel", "pcen")
        same_mels = all(f.get(k) == own.get(k) for f in seen for k in MEL_PARTS)
        kind = "logmel_pcen" if both and same_mels and s.init == "scratch" else "member"
    if kind == "member":
        return own
    pcen_like = next((m.settings["features"] for m in art.members if m.settings["features"]["kind"] == "pcen"), {})
    return {**own, **{k: v for k, v in pcen_like.items() if k.startswith("pcen_")}, "kind": kind}  # its PCEN's settings


def student_config(template: Member, s: StudentSettings) -> Config:
    """The student's Config: the template member's (`template_member` picks it) training recipe (its
    config.yaml: input scaling, augmentation, mixup, optimizer and schedule), front end,
    model, crop and segment settings, with what `s` sets in their place; no folds or stages.
    Noisy clips keep the member's noisy-label loss (lsoft, weight), as their targets carry
    their given labels too; with `label_weight` 0 (the teacher's targets alone) every clip
    takes the plain BCE."""
    made_like = template.settings
    recipe = _member_recipe(made_like)
    features = s.features or made_like["features"]
    fps = Config.from_dict({"features": features}).features.frames_per_second
    crop = s.crop_seconds or round(int(made_like["crop_frames"]) / fps, 3)
    inference = dict(made_like.get("inference", {}))
    inference.update(tta=0, segment_seconds=round(int(made_like["segment_frames"]) / fps, 3))
    if s.overlap is not None:
        inference["overlap"] = s.overlap
    model = dict(made_like["model"])
    if s.model is not None and s.model != model["name"]:
        model = {"name": s.model}  # another family: its own default params and dropout
    model.update({k: v for k, v in (("width", s.width), ("depth", s.depth)) if v is not None})
    train = recipe.get("train", {})
    train.update(crop_seconds=crop, batch_size=s.batch_size, num_workers=1)
    train.pop("noisy_teacher", None)  # the student's targets are the distillation's own
    if s.label_weight == 0:  # the teacher's targets alone: every clip alike
        train["loss"] = {"name": "bce", "noisy_loss": "same", "noisy_weight": 1.0}
    if s.lr is not None:
        train["lr"] = s.lr
    if s.average_last is not None:
        train["average_last"] = s.average_last
    return Config.from_dict({
        "name": "distilled",
        "seed": s.seed,
        "features": features,
        "model": model,
        "train": train,
        "cv": {"n_folds": 2, "folds": [0], "seed": s.seed},
        # the student trains one step on every clip (train_student), never a warm-up; left on, the
        # warm-up's check refused a dataset whose noisy selection keeps no clip, with advice
        # (set pipeline.warmup.enabled) that distill has no option to follow
        "pipeline": {"warmup": {"enabled": False}, "finetune": {"epochs": s.epochs}},
        "inference": inference,
    })


def check_student_model(cfg: Config, s: StudentSettings) -> None:
    """Build the student once on its front end's shape, so that a model it cannot be (a depth
    its family lacks, a waveform model on spectrograms) is refused before Ray starts, features
    are built and the teacher tags every training clip; the message names the options given."""
    try:
        check_run_models(cfg)  # the student's config has no members: its one model
    except ModelConfigError as err:
        given = [f"{option} {value}" for option, value in (("--model", s.model), ("--width", s.width),
                                                             ("--depth", s.depth)) if value is not None]
        prefix = f"{' '.join(given)}: " if given else ""
        raise RaytagError(f"{prefix}the student ({_student_name(cfg, 1)}) cannot be built: {err}") from None


def _member_recipe(settings: dict) -> dict:
    """The member trial's config.yaml as a dict, or {} (raytag's defaults) when its outputs
    do not have one."""
    source = settings.get("source")
    path = storage.join(source, CONFIG) if source else None
    if path is None or not storage.exists(path):
        return {}
    return Config.from_dict(yaml.safe_load(storage.read_text(path)) or {}).to_dict()


def train_students(cfg: Config, plan, store, targets: LabelledSet, n: int, progress: bool = False,
                   batches: Optional[CropBatches] = None, init_from: Optional[torch.nn.Module] = None,
                   say=None) -> tuple[list[torch.nn.Module], list[list[float]]]:
    """`n` students trained alike on the same targets but for their seeds (cfg.seed, + 1,
    ...: initial weights, crops, mixup); their per-epoch losses beside them."""
    models, losses = [], []
    for i in range(n):
        if n > 1 and say is not None:
            say(f"student {i + 1} of {n} (seed {cfg.seed + i})")
        model, loss = train_student(replace(cfg, seed=cfg.seed + i), plan, store, targets, progress=progress,
                                    batches=batches, init_from=init_from)
        models.append(model)
        losses.append(loss)
    return models, losses


def _student_name(cfg: Config, n: int) -> str:
    """'vgg_small w16 d4', or 'vgg_small w16 d4 x2' for two students averaged."""
    name = f"{cfg.model.name} w{cfg.model.width} d{cfg.model.depth}"
    return name if n == 1 else f"{name} x{n}"


def train_student(cfg: Config, plan, store, targets: LabelledSet, progress: bool = False,
                  batches: Optional[CropBatches] = None,
                  init_from: Optional[torch.nn.Module] = None) -> tuple[torch.nn.Module, list]:
    """The student, trained on `targets` (soft) over the store's random crops (`batches`:
    crops with targets of their own, as `segment_batches` makes), starting from
    `init_from`'s weights when given (a network of the same architecture)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, plan.n_classes, plan.channels, plan.bins)
    if init_from is not None:
        model.load_state_dict(init_from.state_dict())
    step = Step(kind="finetune", fold=None, epochs=int(cfg.pipeline.finetune.epochs))
    batches = batches or CropBatches(store, targets, cfg.crop_frames(), cfg.train.batch_size)
    optimizer, scheduler = build_optimizer(cfg, model, step, batches.steps_per_epoch(1))
    loss_fn = build_loss(cfg.train.loss)
    ctx = _StudentContext(cfg, plan)
    losses = []
    average = WeightAverage(cfg.train.average_last, step.epochs)  # the recipe's SWA, as its member had
    bar = progress_bar(progress)
    with bar:
        task = bar.add_task("student epochs", total=step.epochs)
        for epoch in range(step.epochs):
            losses.append(train_epoch(ctx, model, optimizer, scheduler, loss_fn, batches,
                                       int(cfg.seed * 1_000_003 + epoch), step))
            if average.wants(epoch + 1):
                average.add(model)
            bar.update(task, advance=1, description=f"student epochs (loss {losses[-1]:.4f})")
    average.load_into(model)
    return model.eval(), losses


@dataclass
class _StudentContext:
    """What the trial's epoch function reads of its context: one process, rank 0 of 1."""

    cfg: Config
    plan: object
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def precision(self) -> str:  # train.precision on this machine, as a Train worker resolves it
        return resolve_precision(self.cfg.train.precision, self.device)


# ----------------------------------------------------------------------------- the job
def distill(experiment_dir: str, settings: StudentSettings = StudentSettings(), data: Optional[str] = None,
            feature_cache: Optional[str] = None, progress: bool = False, say=None) -> DistillResult:
    """Distil the experiment's ensemble artifact into one student; returns where it went.
    One distillation of an experiment at a time (the lock of `<experiment>/distill`, held
    throughout): a second one would write its student into the folder this one packs into
    its artifact minutes later, and ship one student's weights with the other's record."""
    started = time.time()
    say = say or (lambda *a, **k: None)
    settings.check()
    experiment_dir = str(experiment_dir)
    local_output(experiment_dir)  # every output is written locally: refuse a URI before any work
    artifact_path = experiment_artifact(experiment_dir)
    if artifact_path is None:
        raise RaytagError(f"{experiment_dir}: no artifact to distil; run `raytag ensemble` for a sweep, or "
                          "`raytag train` for a run, first")
    data = _sweep_data(experiment_dir) if data is None else data
    check_data_folder(data)  # a typo or "" is named before Ray starts and the features are built
    out_dir = storage.join(experiment_dir, DISTILL_DIR)
    with run_folder(out_dir, DISTILL_DIR, what=f"the distillation of {experiment_dir} ({out_dir})",
                    clear_hint=" and run `raytag distill` again"):
        return _distill(artifact_path, out_dir, settings, data, feature_cache, progress, say, started)


def _refuse_no_targets(table: pd.DataFrame, out_dir: str) -> None:
    """A student needs at least one teacher target: with none (the teacher failed on every
    clip it had to tag, and no member has an out-of-fold prediction of any), say so rather
    than fail deep in the student's training set."""
    if table.empty:
        raise RaytagError(
            "the teacher could not tag any training clip: see the failures above; once the files refused for "
            "memory or I/O can be read (more memory, fewer parallel jobs), run `raytag distill` again and it tags "
            "those; damaged files are tried again once replaced (the failures are recorded in "
            f"{storage.join(out_dir, TEACHER)})"
        )


@dataclass
class StudentData:
    """What a student trains on (`prepare_student`): its settings with the front end resolved,
    its Config, the dataset and its features, and the teacher's targets for every clip they hold."""
    art: Artifact
    template: Member  # the member whose recipe (and model, unless set) the student takes
    settings: StudentSettings
    cfg: Config
    dataset: Dataset
    store: FeatureStore
    plan: Plan
    ids: CacheIds
    table: pd.DataFrame  # the teacher's predictions by clip (teacher_targets)
    targets: LabelledSet
    untaught: int  # training clips the features hold that the teacher could not tag, left out


def prepare_student(artifact_path: str, out_dir: str, settings: StudentSettings, data: str,
                    feature_cache: Optional[str], progress: bool, say=lambda _: None) -> StudentData:
    """The teacher, the student's Config and features, and its targets: what `raytag distill`
    trains on, and what a benchmark that holds clips out of it (distill_holdout.py) starts from."""
    art = load_artifact(artifact_path)
    template = template_member(art, settings.model)
    settings = replace(settings, features=student_features(art, template, settings))
    cfg = student_config(template, settings)
    check_student_model(cfg, settings)
    ensure_ray()  # the feature store is built by Ray tasks (cached: a rerun reuses it)
    dataset, store, plan = prepare_data(cfg, data, feature_cache, progress)
    if list(plan.classes) != list(art.classes):
        raise RaytagError(f"{data}: its classes differ from the artifact's; distil on the dataset the sweep ran on")
    say(f"teacher: {len(art.members)} member(s) ({art.combiner}); targets for curated (OOF) and noisy clips")
    ids = CacheIds.of(art, dataset)  # the caches' keys, once: the dataset's stats every training file
    table = teacher_targets(art, dataset, out_dir, progress=progress, noisy_targets=settings.noisy_targets, ids=ids)
    _refuse_no_targets(table, out_dir)
    table = table[table.index.isin(store.clip_ids)]  # clips the student's front end could read
    untaught = _untaught_clips(dataset, store, table)  # counted: the teacher's warning names them once
    if untaught:
        say(f"{untaught} training clip(s) the student's features hold have no teacher target (the teacher could not "
            "tag them) and are left out")
    targets = student_targets(table, dataset, list(art.classes), settings.label_weight, settings.teacher_scale)
    return StudentData(art, template, settings, cfg, dataset, store, plan, ids, table, targets, untaught)


def _distill(artifact_path: str, out_dir: str, settings: StudentSettings, data: str, feature_cache: Optional[str],
             progress: bool, say, started: float) -> DistillResult:
    """distill(), once it holds the lock of `out_dir`."""
    prepared = prepare_student(artifact_path, out_dir, settings, data, feature_cache, progress, say)
    art, template, settings, cfg = prepared.art, prepared.template, prepared.settings, prepared.cfg
    dataset, store, plan, ids = prepared.dataset, prepared.store, prepared.plan, prepared.ids
    table, targets, untaught = prepared.table, prepared.targets, prepared.untaught
    classes = list(art.classes)
    n_oof = int((table[SOURCE_COLUMN] == "oof").sum())
    say(f"student: {cfg.model.name} width {cfg.model.width} depth {cfg.model.depth} on {cfg.features.kind}, "
        f"trained as member {template.name} was; {len(targets)} clips ({n_oof} with OOF targets, {len(targets) - n_oof} with the ensemble's), {settings.epochs} epochs")
    batches = None
    if settings.target_grain == "segment":
        say("teacher along each clip: its members score every quarter-crop segment of the student's features")
        batches = segment_batches(art, cfg, store, dataset, targets, settings, out_dir, ids=ids)
    init_from = template.models[0] if settings.init == "member" else None
    if init_from is not None:
        say(f"student starts from member {template.name}'s first fold model")
    models, losses = train_students(cfg, plan, store, targets, settings.students, progress=progress,
                                    batches=batches, init_from=init_from, say=say)

    student_dir = storage.join(out_dir, "student")
    local = local_output(student_dir)
    (local / WEIGHTS).mkdir(parents=True, exist_ok=True)
    for stale in (local / WEIGHTS).glob("fold*.safetensors"):  # a former run's students, maybe more of them
        stale.unlink()
    for i, model in enumerate(models):  # stored as a member's fold models are, and averaged as they are
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(local / WEIGHTS / f"fold{i}.safetensors"))
    card = {**model_card(plan), "folds": list(range(len(models))), "refit_fold": None}
    (local / MODEL_CARD).write_text(json.dumps(card, indent=2))

    scores = _score(art, dataset, models, cfg, plan, store, targets.clip_ids, table[classes].to_numpy(np.float32))
    scores.update(teacher_oof_scores(art, table, dataset, classes))
    record = {"teacher": artifact_path, "teacher_manifest_sha256": manifest_id(artifact_path),
              "teacher_members": [m.name for m in art.members], "teacher_combiner": art.combiner,
              "student_template": template.name,  # the member whose recipe and model it took
              "student_features": cfg.features.kind,  # its front end: the member's, or --front-end's
              "target_combiner": probability_teacher(art).combiner,  # a rank teacher teaches through its mean
              "targets": {"oof": n_oof, "ensemble": len(targets) - n_oof}, "untaught_clips": untaught,
              "label_weight": settings.label_weight, "teacher_scale": settings.teacher_scale,
              "noisy_targets": settings.noisy_targets, "target_grain": settings.target_grain,
              "init": settings.init, "epochs": settings.epochs, "students": settings.students,
              "seeds": [settings.seed + i for i in range(settings.students)],
              "train_loss": [round(x, 5) for x in losses[0]]}
    if settings.students > 1:
        record["train_loss_by_student"] = [[round(x, 5) for x in run] for run in losses]
    # saved before the test pass too, so an interruption there does not lose the trained student
    _save_student(out_dir, student_dir, classes, art.layout, scores, record)
    # the student's test scores through the predict path, as the saved artifact will tag
    student = Artifact(path=student_dir, combiner="mean", weights=None, classes=classes, layout=art.layout,
                       members=[Member("student", trial_settings(student_dir), models)])
    scores.update(score_on_test(student, probability_teacher(art), dataset, settings.batch_size, progress, out_dir,
                                teacher_id=ids.teacher))
    dest = _save_student(out_dir, student_dir, classes, art.layout, scores, record)
    result = DistillResult(artifact_path=dest, teacher_path=storage.join(out_dir, TEACHER), n_oof=n_oof,
                           n_ensemble=len(targets) - n_oof, epochs=settings.epochs, seconds=time.time() - started,
                           student=_student_name(cfg, settings.students),
                           label_weight=settings.label_weight, teacher_scale=settings.teacher_scale,
                           target_grain=settings.target_grain, train_loss=losses[0], scores=scores)
    storage.write_text(storage.join(out_dir, "distill_summary.json"),
                       json.dumps({**record, "artifact": dest, "scores": scores,
                                   "seconds": round(result.seconds, 1)}, indent=2) + "\n")
    return result


def _untaught_clips(dataset, store, table: pd.DataFrame) -> int:
    """How many curated and noisy clips the student's store holds have no teacher target."""
    clips = training_clips(dataset)["clip_id"]
    return int((clips.isin(store.clip_ids) & ~clips.isin(table.index)).sum())


def _save_student(out_dir: str, student_dir: str, classes: list, layout: str, scores: dict, record: dict) -> str:
    """The student as a one-member artifact in `<out_dir>/artifact`; returns its path (the
    caller holds `out_dir`'s lock, the artifact folder's parent)."""
    return save_artifact(storage.join(out_dir, "artifact"), [MemberSpec("student", student_dir)], "mean", None,
                         classes, layout, scores, distilled=record, parent_locked=True)


def _sweep_data(experiment_dir: str) -> str:
    """The dataset the sweep ran on, as its sweep.json records it."""
    data = read_sweep_record(experiment_dir, "give the dataset the sweep ran on with --data").get("data")
    if data:
        return str(data)
    raise RaytagError(f"{storage.join(experiment_dir, SWEEP_RECORD)}: no dataset recorded (a `raytag train` run "
                      "keeps none); give the dataset it trained on with --data")


def _score(art, dataset, models, cfg, plan, store, clip_ids: list[str], teacher: np.ndarray) -> dict:
    """How well the students (their mean, as the artifact tags) learned their targets: lwlrap
    of their predictions on the training clips against the teacher's targets made binary
    (> 0.5, else the top class), on curated clips also against the curated labels (the
    teacher's: `teacher_oof_scores`)."""
    probs = np.mean([predict_segments(model, iter_store_clips(store, clip_ids), cfg.segment_frames(),
                                      overlap=cfg.inference.overlap, reduce=cfg.inference.reduce, batch_size=64,
                                      mean=plan.norm_mean, std=plan.norm_std) for model in models], axis=0)
    binary = _top_labels(teacher)
    cur_ids = dataset.split("curated")["clip_id"]
    truth = dict(zip(cur_ids, dataset.label_matrix("curated")))
    rows = [i for i, c in enumerate(clip_ids) if c in truth]
    y = np.stack([truth[clip_ids[i]] for i in rows])
    return {
        "agreement_lwlrap": float(lwlrap(binary, probs)),  # student vs the teacher's top labels
        "train_curated_lwlrap": float(lwlrap(y, probs[rows])),  # in-sample: trained on these clips
        "teacher_cv_lwlrap": art.scores.get("cv_lwlrap"),
        "teacher_test_lwlrap": art.scores.get("test_lwlrap"),
    }


def teacher_oof_scores(art: Artifact, table: pd.DataFrame, dataset, classes: list[str]) -> dict:
    """The teacher's out-of-fold curated lwlrap, how many clips it is on and how it was
    scored, with its targets' own (`targets_oof_scores`) beside it. A plain or geometric
    mean fits nothing, so its targets are its held-out predictions. A fitted teacher
    (FITTED) is not: its targets come from weights refitted on every clip (in-sample), or
    from the members' mean (a rank teacher), so its score is the nested one the ensemble
    job computed and saved with the artifact."""
    targets = targets_oof_scores(table, dataset, classes)
    if art.combiner not in FITTED:
        return {"teacher_curated_oof_lwlrap": targets["targets_curated_oof_lwlrap"],
                "teacher_curated_oof_clips": targets["targets_curated_oof_clips"], "teacher_cv_method": "oof",
                **targets}
    return {"teacher_curated_oof_lwlrap": art.scores.get("cv_lwlrap"),
            "teacher_curated_oof_clips": art.scores.get("oof_clips"),
            "teacher_cv_method": art.scores.get("cv_method"), "targets_are": FITTED[art.combiner], **targets}


def targets_oof_scores(table: pd.DataFrame, dataset, classes: list[str]) -> dict:
    """The targets' lwlrap on the curated clips whose targets are out-of-fold
    (SOURCE_COLUMN "oof"), and how many there are; None when there are none. Rows from the
    artifact's predictions ("ensemble": a sweep that trained only some folds) come from
    models that trained on the clip, so they would flatter the teacher."""
    truth = dict(zip(dataset.split("curated")["clip_id"], dataset.label_matrix("curated")))
    oof = table[(table[SOURCE_COLUMN] == "oof") & table.index.isin(list(truth))]
    y = np.stack([truth[c] for c in oof.index]) if len(oof) else np.zeros((0, len(classes)))
    score = float(lwlrap(y, oof[classes].to_numpy(np.float64))) if y.sum() > 0 else None
    return {"targets_curated_oof_lwlrap": score, "targets_curated_oof_clips": len(oof)}


def score_on_test(student: Artifact, teacher: Artifact, dataset, batch_size, progress, out_dir: str,
                  teacher_id: Optional[str] = None) -> dict:
    """On the test clips, which neither model trained on: how well the student agrees with
    its teacher (lwlrap against the teacher's top labels, as `_score` on the training clips;
    no labels used, so it is there for any dataset and may guide a choice of student), and
    its lwlrap on the clips with labels (reported only, never used to choose). The
    teacher's predictions are cached in `out_dir` (`teacher_test_predictions`, under
    `teacher_id` when the caller has it)."""
    paths = [str(p) for p in dataset.split("test")["path"]]
    if not paths:
        return {"test_agreement_lwlrap": None, "test_lwlrap": None}
    t_probs = teacher_test_predictions(teacher, paths, out_dir, batch_size, progress, teacher_id=teacher_id)
    probs, _ = predict_files(student, paths, batch_size=batch_size, progress=progress)
    return scores_on_test(probs, t_probs, dataset)


def scores_on_test(student_probs: pd.DataFrame, teacher_probs: pd.DataFrame, dataset) -> dict:
    """score_on_test's figures from the two models' predictions (indexed by test file path).
    The agreement is on the files both read: the teacher decodes each file for its longest
    frame, and members on other front ends than the student's may not read a short file
    the student did (`test_agreement_left_out` counts those)."""
    both = student_probs.index.intersection(teacher_probs.index, sort=False)
    left_out = len(student_probs) - len(both)
    if left_out:
        log.warning("%d test file(s) the student read but its teacher could not (e.g. %s) are left out of the "
                    "test agreement", left_out, student_probs.index.difference(both)[0])
    agreement = (float(lwlrap(_top_labels(teacher_probs.loc[both].to_numpy()), student_probs.loc[both].to_numpy()))
                 if len(both) else None)
    scores = {"test_agreement_lwlrap": agreement, "test_agreement_clips": len(both),
              "test_agreement_left_out": left_out}
    truth = dataset.truth_for("test")
    if truth is None or not len(truth):
        return {**scores, "test_lwlrap": None}
    y, rows = labelled_test_rows(student_probs.index, dataset)
    return {**scores, "test_lwlrap": float(lwlrap(y, student_probs.to_numpy()[rows])), "test_clips": len(rows)}


def labelled_test_rows(paths, dataset) -> tuple[np.ndarray, list[int]]:
    """(label matrix, row numbers in `paths`) of the test files with at least one label."""
    test = dataset.split("test")
    by_path = dict(zip(test["path"].astype(str), test["clip_id"]))
    truth = dataset.truth_for("test")
    labels = dict(zip(truth["clip_id"], truth["labels"]))
    rows = [i for i, p in enumerate(paths) if labels.get(by_path.get(str(p)))]
    y = labels_to_matrix([labels[by_path[str(paths[i])]] for i in rows], list(dataset.classes))
    return y, rows


def _top_labels(teacher: np.ndarray) -> np.ndarray:
    """The teacher's predictions made binary: every class above 0.5, and always its top one."""
    binary = (teacher > 0.5).astype(np.float32)
    binary[np.arange(len(binary)), teacher.argmax(axis=1)] = 1.0
    return binary
