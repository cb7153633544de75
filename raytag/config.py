"""Typed settings for one raytag run: YAML in, validated, one place for defaults.

A config is a tree of dataclasses. `Config.from_dict` rejects unknown keys and wrong
types with the dotted path of the bad key, so a typo in a YAML file or a search
space ("train.mixup.alhpa") fails before any compute is spent. Search spaces and
`--set` overrides address settings by the same dotted paths (`apply_overrides`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from raytag.errors import RaytagError


class ConfigError(RaytagError, ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names it.
    (A ValueError too, for callers that caught it as one before it was a RaytagError.)"""


# ----------------------------------------------------------------------------- features
@dataclass
class FeatureConfig:
    """Front end: waveform -> [channels, bins, frames]. Cached by `cache_key()`."""

    kind: Literal["logmel", "mfcc", "raw", "colormel", "pcen", "logmel_pcen"] = "logmel"
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 320
    n_mels: int = 96  # one family (resnet18 w32): +0.013 CV over 64, mean of 3 seeds; default.yaml's members share 64
    fmin: float = 20.0
    fmax: Optional[float] = None  # None: sample_rate / 2
    n_mfcc: int = 20  # kind == "mfcc" only
    top_db: Optional[float] = 80.0  # dynamic range kept by power_to_db; None keeps all
    deltas: int = 0  # 0: none, 1: + delta channel, 2: + delta and delta-delta channels
    # kinds pcen and logmel_pcen only: librosa.pcen's parameters, at its defaults (raytag.features.frontends.PCEN)
    pcen_time_constant: float = 0.4  # seconds the per-band smoother averages over
    pcen_gain: float = 0.98  # how far each band is divided by its smoothed level (1: fully)
    pcen_bias: float = 2.0
    pcen_power: float = 0.5  # root compression of the normalised bands

    def cache_key(self) -> str:
        """Hash of every setting that changes the stored features. The pcen_* settings count for
        the kinds with a PCEN channel only, so other kinds keep the keys (and the stored features)
        they had before those settings existed."""
        has_pcen = self.kind in ("pcen", "logmel_pcen")
        settings = {k: v for k, v in dataclasses.asdict(self).items() if has_pcen or not k.startswith("pcen_")}
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def frames_per_second(self) -> float:
        if self.kind == "raw":
            return float(self.sample_rate)
        return self.sample_rate / self.hop_length


# ----------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """Architecture by registry name plus its size knobs (see raytag.models)."""

    name: str = "cnn2d"
    width: int = 32  # channels of the first block; later blocks scale from it
    depth: int = 4  # number of blocks (where the family has a variable depth)
    dropout: float = 0.3
    params: dict = field(default_factory=dict)  # family-specific extras


# Family params whose default changed, as {family: {key: (value before, value now)}}. A saved
# model (model.json, an artifact's member.json) written before the change lacks the key and
# was built with the old value; one written since records it (`recorded_model_settings`),
# so an old artifact keeps loading its weights into the network they came from.
CHANGED_DEFAULTS: dict[str, dict[str, tuple]] = {
    "crnn": {"skip": (0, 1)},  # session 25: +0.26 CV on the dev benchmark (models/crnn.py)
}


def recorded_model_settings(model: dict) -> dict:
    """`model` (a ModelConfig as a dict) to save: with today's value of every changed
    default it leaves out written in, so a later change cannot alter what it builds."""
    changed = CHANGED_DEFAULTS.get(model.get("name"), {})
    params = {key: now for key, (_, now) in changed.items()} | dict(model.get("params") or {})
    return {**model, "params": params}


def saved_model_settings(model: dict) -> dict:
    """`model` as read back from a saved card: a changed default it leaves out takes the
    value it had before the change (the card predates it; see CHANGED_DEFAULTS)."""
    changed = CHANGED_DEFAULTS.get(model.get("name"), {})
    params = {key: before for key, (before, _) in changed.items()} | dict(model.get("params") or {})
    return {**model, "params": params}


# ----------------------------------------------------------------------------- training
@dataclass
class MixupConfig:
    alpha: float = 0.4
    prob: float = 1.0  # probability that a batch is mixed


@dataclass
class SpecAugmentConfig:
    # off by default: with gain, shift and mixup at once it slowed learning on a few hundred
    # clips (results/benchmarks/quality.md); the GPU search spaces switch it on and search it
    enabled: bool = False
    time_masks: int = 2
    time_width: int = 16  # frames, max width of one mask
    freq_masks: int = 2
    freq_width: int = 8  # bins, max width of one mask


@dataclass
class WaveAugmentConfig:
    """Augmentations applied to the stored features of a crop."""

    gain_db: float = 0.0  # random gain in [-gain_db, +gain_db] (added to log-mel in dB); 6 in the GPU spaces
    time_shift: float = 0.0  # fraction of the crop rolled, at most; 0.1 in the GPU spaces


@dataclass
class LossConfig:
    name: Literal["bce", "lsoft"] = "bce"
    label_smoothing: float = 0.0
    lsoft_beta: float = 0.7  # lsoft: weight of the given label vs the model's own guess
    noisy_loss: Literal["same", "lsoft"] = "lsoft"  # loss applied to noisy clips
    noisy_weight: float = 0.5  # per-source weight of noisy (and pseudo-labelled) clips
    # small-loss selection (co-teaching's rule): the share of each batch's noisy clips, those
    # with the smallest loss, that count; 1.0 keeps all (see raytag.training.losses)
    noisy_keep: float = 1.0
    noisy_keep_ramp: int = 5  # epochs over which the share falls from 1 to noisy_keep
    curated_weight: float = 1.0


@dataclass
class InputNormConfig:
    """How stored features are scaled before the model sees them.

    per_bin: each (channel, bin) by the store's mean and std (bins with little variance,
    e.g. the top mel bands, get blown up); global: one mean and std per channel over all
    bins (keeps the spectral shape); fixed: (x - offset) / scale, e.g. the reference CNN's
    (dB + 40) / 20. The chosen scaling is saved as per-bin arrays, so inference and
    artifacts apply it the same way whichever kind made it."""

    kind: Literal["per_bin", "global", "fixed"] = "global"
    offset: float = -40.0  # fixed only
    scale: float = 20.0  # fixed only


@dataclass
class NoisyTeacherConfig:
    """A finished run teaches the noisy clips' targets (raytag.ensemble.noisy_teacher): fold k's
    model trains each noisy clip towards label_weight x its given labels + the rest x the
    prediction of the teacher's fold-k models, which never saw fold k's curated clips, so CV
    stays honest. The teacher must have the run's folds (same cv settings and curated clips)."""

    # a `raytag train` run or sweep folder (its artifact), or an artifact folder; None: off
    artifact: Optional[str] = None
    label_weight: float = 0.5  # the given (noisy) labels' share of each noisy clip's target


# train.precision's values (raytag.training.precision reads them from here)
Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class TrainConfig:
    crop_seconds: float = 2.56  # length of the random fixed crops in training
    # the global batch, split across the Ray Train workers, so the optimisation does not
    # change with num_workers (each worker takes ceil(batch_size / num_workers) clips)
    batch_size: int = 32
    lr: float = 3e-3  # peak of the one-cycle schedule
    weight_decay: float = 1e-2
    optimizer: Literal["adamw", "sgd"] = "adamw"
    scheduler: Literal["onecycle", "cosine", "none"] = "onecycle"
    onecycle_pct: float = 0.3  # share of the steps spent raising the learning rate (torch's default)
    normalize: InputNormConfig = field(default_factory=InputNormConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    augment: WaveAugmentConfig = field(default_factory=WaveAugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    noisy_teacher: NoisyTeacherConfig = field(default_factory=NoisyTeacherConfig)
    # Ray Train scaling: one worker group runs every stage of a pipeline.
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # fractional on a 2-core laptop
    gpus_per_worker: float = 1.0  # used only when use_gpu; <1 lets trials share a GPU
    # DDP between the workers: auto is Ray's choice (nccl on GPUs, gloo on CPUs). NCCL refuses
    # two ranks on one GPU, which fractional GPUs per worker give (Ray packs them on one GPU)
    ddp_backend: Literal["auto", "nccl", "gloo"] = "auto"
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    # where a run trains: "ray_train", a Ray Train worker group (DDP over num_workers, any node
    # of the cluster); "in_process", in the calling process (the trial's, or `raytag train`'s),
    # which skips the group's ~12 s start-up (raytag.training.in_process); "auto", in_process
    # for one CPU worker on a local one-node Ray session with a local run folder, else ray_train
    runner: Literal["auto", "ray_train", "in_process"] = "auto"
    # epochs between checkpoints; the end of every step (and every filter step) always
    # checkpoints, so a resumed run never misses predictions or weights made there
    checkpoint_every: int = 1
    # a step's model is the mean of its weights at the end of its last N epochs (SWA; 0 or
    # 1: the last epoch's weights). training/averaging.py says why
    average_last: int = 0
    torch_threads: int = 1  # intra-op threads per worker (CPU)
    # number format of the training step (raytag.training.precision): auto is bf16 autocast where
    # the hardware runs bf16 natively (AVX512-BF16 or AMX CPUs, Ampere+ GPUs), else fp32.
    # Held-out scores and predictions are always float32
    precision: Precision = "auto"
    # N > 0: rank 0 records the run's N-th training epoch with torch.profiler, into
    # outputs/profile/ (raytag.training.profiling); 0: off
    profile_epoch: int = 0


# ----------------------------------------------------------------------------- CV and inference
@dataclass
class CVConfig:
    n_folds: int = 5
    folds: Optional[list] = None  # run only these fold ids (None: all)
    seed: int = 0
    # a CSV (columns fname, group) of curated clips that must share a fold: clips cut from one
    # recording, or one uploader's series. A relative path is looked up in the dataset folder.
    # Without it, siblings fall on both sides of a split and CV overrates memorising models.
    clip_groups: Optional[str] = None
    # after the folds, train one more model the same way on every curated clip (fold id
    # n_folds, "refit"). It has no held-out clips, so it adds nothing to CV; it joins the fold
    # models as one more member of the test average, the artifact and the ensembles.
    refit: bool = False
    # split the noisy clips into the same K folds too (stratified on their given labels,
    # cv.clip_groups kept whole): fold k's model trains without noisy fold k and predicts it,
    # so every noisy clip gets an out-of-fold prediction (noisy_oof.parquet), which `raytag
    # distill` takes as the noisy clips' targets. Each fold model sees (K-1)/K of the noisy
    # clips. On the dev benchmark its students did no better (speed.md), so it is off.
    noisy_folds: bool = False


@dataclass
class InferenceConfig:
    segment_seconds: Optional[float] = None  # None: same as train.crop_seconds
    overlap: float = 0.5  # fraction of a segment shared with the next one
    reduce: Literal["mean", "max"] = "mean"
    tta: int = 0  # extra passes with small time shifts, averaged


# ----------------------------------------------------------------------------- pipeline
@dataclass
class NoisySelectionConfig:
    """Seed 000's rough noisy subset ("best50s"), rule documented in raytag.pipeline.selection."""

    enabled: bool = True
    single_label_only: bool = True
    max_per_class: int = 50
    min_seconds: float = 1.0
    max_seconds: float = 15.0


@dataclass
class StageConfig:
    enabled: bool = True
    epochs: int = 5
    lr: Optional[float] = None  # None: train.lr


@dataclass
class WarmupConfig(StageConfig):
    use: Literal["subset", "all"] = "subset"  # subset = the rough noisy selection


@dataclass
class FinetuneConfig(StageConfig):
    # Noisy clips taken at face value in stage 1: "none" (seed 000), "subset" (the rough
    # selection) or "all" (the plain curated + noisy baseline the pipeline must beat).
    noisy: Literal["none", "subset", "all"] = "none"


@dataclass
class FilterConfig:
    enabled: bool = True
    rule: Literal["min_prob", "clip_lwlrap"] = "clip_lwlrap"
    threshold: float = 0.5
    # rejected noisy clips: drop them (seed 000), or keep them in stage 2 with soft targets
    # soft_beta * given + (1 - soft_beta) * the filter model's prediction (Reed et al. 2015)
    rejected: Literal["drop", "soft"] = "drop"
    soft_beta: float = 0.5


@dataclass
class LabelSpreadingConfig:
    enabled: bool = False
    embedding: Literal["model", "pca"] = "model"
    pca_components: int = 64
    gamma: float = 20.0
    alpha: float = 0.2
    max_iter: int = 1000
    groups: Optional[dict] = None  # {group_name: [class, ...]}; spread within each group
    # a YAML file of such groups, or the name of a shipped one (esc50, fsdkaggle2019): classes
    # of the file that the dataset lacks are ignored, so one ontology serves class subsets
    groups_file: Optional[str] = None
    combine: Literal["or", "and", "only"] = "or"  # with the probability filter
    max_graph: int = 4000  # clips per LabelSpreading graph (dense rbf: ~0.4 GB at 4000); noisy clips go in chunks


@dataclass
class ThresholdSchedule:
    start: float = 0.35
    end: float = 0.65
    shape: Literal["linear", "constant", "cosine"] = "linear"


@dataclass
class PseudoLabelConfig(StageConfig):
    enabled: bool = True
    rounds: int = 2
    epochs: int = 2  # per round
    lower: ThresholdSchedule = field(default_factory=ThresholdSchedule)
    upper: float = 0.98  # leave out clips the model is already sure of
    # probability: lower/upper are probabilities; quantile: they are quantiles of the clips'
    # top probabilities (robust to a model's calibration, see raytag.pipeline.pseudo); the lower
    # bound is then also the per-class cut for a taken clip's targets, so an under-confident
    # model (bound ~0.24) gives clips more positive labels than they hold (by design)
    bounds: Literal["probability", "quantile"] = "probability"


@dataclass
class PipelineConfig:
    noisy_selection: NoisySelectionConfig = field(default_factory=NoisySelectionConfig)
    warmup: WarmupConfig = field(default_factory=lambda: WarmupConfig(enabled=True, epochs=5))
    # 10 epochs where the config has no finetune section; a section without `epochs` (a sweep's
    # `pipeline.finetune.noisy: all` alone) takes FinetuneConfig's own 5. Left unequal on purpose:
    # either change would alter what existing config files and resumed sweeps train
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(enabled=True, epochs=10))
    filter: FilterConfig = field(default_factory=FilterConfig)
    label_spreading: LabelSpreadingConfig = field(default_factory=LabelSpreadingConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    # Stage 2 (after the filter) runs whenever the filter, label spreading or pseudo-labelling
    # is on: pseudo.rounds rounds (1 when pseudo is off) of pseudo.epochs epochs, each on
    # curated + accepted noisy clips (+ pseudo-labelled clips when pseudo is on).


# ----------------------------------------------------------------------------- members
@dataclass
class MemberConfig:
    """One model family of a `raytag train` run with `members`: the run's settings with
    `set` (dotted keys, as `--set` takes them) changed. Each member trains on the same folds."""
    name: str = ""
    set: dict = field(default_factory=dict)


def safe_name(text: str) -> str:
    """A name as a folder name (a member, a trial id in an artifact): letters, digits, '-',
    '_', '.' only, not starting or ending with '.' or '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return name or "member"


# the class-group sets shipped for label spreading (pipeline.label_spreading.groups_file: esc50, ...)
SHIPPED_GROUPS = Path(__file__).resolve().parent / "pipeline" / "groups"


def shipped_groups_file(name: str) -> Optional[Path]:
    """The shipped groups set a groups_file value names (esc50 -> .../esc50.yaml), or None when it
    names none: a value with a suffix is a path."""
    path = SHIPPED_GROUPS / f"{name}.yaml"
    return path if not Path(name).suffix and path.is_file() else None



# ----------------------------------------------------------------------------- top level
@dataclass
class Config:
    name: str = "raytag"
    seed: int = 0
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    # `raytag train` only: one model per fold for each member (its own settings), combined by
    # `combine` into the run's predictions and artifact. Empty: one model family.
    members: list = field(default_factory=list)
    combine: Literal["geometric", "mean"] = "geometric"

    # -- construction -------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict | None) -> "Config":
        data = dict(data or {})
        if "members" in data and data["members"] is None:  # `members:` left empty in YAML: none
            data["members"] = []
        cfg = _build(cls, data, "")
        cfg.members = [_build(MemberConfig, m, f"members[{i}]") for i, m in enumerate(cfg.members)]
        cfg.member_configs()  # every member's settings checked now, before compute is spent
        _check_noisy_folds(cfg)
        _check_model_takes_features(cfg)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of settings")
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        return Config.from_dict(apply_overrides(self.to_dict(), overrides))

    def with_absolute_paths(self, base: Path, data_root: Optional[Path] = None) -> "Config":
        """The config with each setting that names a file or folder made
        absolute where it names one relative to `base`, the folder the command was run from: a
        Tune trial runs in a folder of its own, where a relative path no longer leads there.
        Left as given: a clip-groups file in the dataset folder `data_root` (looked up there
        first, as `raytag train` does), a shipped groups set (esc50), and a path that names
        nothing there (the run then says which file is missing)."""
        clip_groups, groups_file = self.cv.clip_groups, self.pipeline.label_spreading.groups_file
        in_data = data_root is not None and clip_groups and (Path(data_root) / clip_groups).is_file()
        found = {  # setting: (value, whether it names a file or folder relative to `base` that the run reads)
            "cv.clip_groups": (clip_groups, lambda here: here.is_file() and not in_data),
            "pipeline.label_spreading.groups_file":
                (groups_file, lambda here: here.is_file() and shipped_groups_file(groups_file) is None),
            "train.noisy_teacher.artifact": (self.train.noisy_teacher.artifact, Path.is_dir),
        }
        overrides = {}
        for key, (value, leads_there) in found.items():
            if isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute() \
                    and leads_there(Path(base) / value):
                overrides[key] = str((Path(base) / value).resolve())
        return self.with_overrides(overrides) if overrides else self

    # -- derived ------------------------------------------------------------
    def member_configs(self) -> list[tuple[str, "Config"]]:
        """(member name, its full config) for each member, in order; [] without members."""
        base = self.to_dict()
        base["members"] = []
        out, seen = [], set()
        for i, member in enumerate(self.members):
            where = f"members[{i}]"
            if safe_name(member.name) != member.name:  # the artifact refuses other member names
                raise ConfigError(f"{where}.name: {member.name!r}: give each member a folder name "
                                  "(letters, digits, '-', '_', '.'; not starting or ending with '.' or '_'), "
                                  "e.g. resnet18")
            if member.name in seen:
                raise ConfigError(f"{where}.name: {member.name!r} is used twice; member names must differ")
            seen.add(member.name)
            for key in member.set:
                _key_text(key, f"{where}.set")
            bad = [k for k in member.set if k.split(".")[0] in ("members", "combine", "name", "seed", "cv")]
            if bad:
                raise ConfigError(f"{where}.set: {bad[0]!r} cannot differ between members (they share the "
                                  "run's name, seed and folds, so that their out-of-fold predictions combine)")
            try:
                cfg = Config.from_dict(apply_overrides(base, member.set))
            except ConfigError as err:
                raise ConfigError(f"{where}.set: {err}") from None
            out.append((member.name, cfg))
        if len(out) == 1:
            raise ConfigError("members: one member is one model family; list two or more, or none")
        return out

    def crop_frames(self) -> int:
        return max(1, int(round(self.train.crop_seconds * self.features.frames_per_second)))

    def segment_frames(self) -> int:
        seconds = self.inference.segment_seconds or self.train.crop_seconds
        return max(1, int(round(seconds * self.features.frames_per_second)))


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """Set dotted keys ("train.mixup.alpha": 0.2) in a nested dict (a Config's); a copy is
    returned. A mapping given for a section ("train": {"lr": 0.002}) changes only the keys it
    names; a mapping-valued setting (model.params) is replaced whole."""
    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        _set_dotted(out, _key_text(dotted, "override"), value)
    return out


def _key_text(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"{where}: key {key!r} is not a setting name; write dotted names as text, "
                          "e.g. train.lr: 0.001 (quote keys YAML reads as other types, e.g. 'true')")
    return key


def _set_dotted(out: dict, dotted: str, value: Any) -> None:
    if isinstance(value, dict) and _section_type(dotted) is not None:
        # merged key by key: assigned whole, the section's other settings would fall back to
        # the built-in defaults (from_dict fills what a mapping leaves out)
        for key, inner in value.items():
            _set_dotted(out, f"{dotted}.{_key_text(key, dotted)}", inner)
        return
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {} if node.get(part) is None else node[part]
            if not isinstance(node[part], dict):
                raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = node[part]
    node[parts[-1]] = value


def _section_type(dotted: str):
    """The dataclass a dotted key of Config names (pipeline.finetune -> FinetuneConfig), or
    None where it names a value, a mapping-valued setting or no setting at all."""
    tp = _optional_inner(_setting_type(dotted))
    return tp if dataclasses.is_dataclass(tp) else None


def _setting_type(dotted: str):
    """The declared type of a dotted key of Config (train.lr -> float, cv.folds ->
    Optional[list]), or None where it names no setting (a key inside model.params, a typo)."""
    tp: Any = Config
    for part in dotted.split("."):
        tp = _optional_inner(tp)
        if not dataclasses.is_dataclass(tp):
            return None
        tp = get_type_hints(tp).get(part)
    return tp


def setting_choices(dotted: str) -> tuple:
    """The allowed values of a Literal setting (features.kind -> ("logmel", ...)), for a caller
    that offers them under another name, so a value added here is offered there too."""
    tp = _optional_inner(_setting_type(dotted))
    if get_origin(tp) is not Literal:
        raise KeyError(f"{dotted} is not a setting with a fixed set of values")
    return get_args(tp)


def _optional_inner(tp):
    """Optional[X] -> X; other types unchanged."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


# Python's spelling of null, which YAML reads as text
_PYTHON_NONE = ("None", "none")


def parse_cli_overrides(items: list[str]) -> dict[str, Any]:
    """`--set train.lr=3e-4` -> {"train.lr": 3e-4}; values parsed as YAML (`_cli_value`)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        out[key.strip()] = _cli_value(key.strip(), raw)
        _check_null_section(key.strip(), out[key.strip()])
    return out


def _check_null_section(key: str, value: Any) -> None:
    """A `--set` section given as null is refused here, where its advice can be written in
    --set syntax (`_coerce` would say it as YAML), unless null means the section's defaults."""
    section = _section_type(key)
    if value is None and section is not None and not _off_by_default(section):
        raise _empty_section_error(section, key, on_command_line=True)


def _cli_value(key: str, raw: str) -> Any:
    """One `--set` value as YAML reads it, except that a text setting keeps the text typed
    (YAML reads name=0123 as the octal 83, name=2024-01-01 as a date), and None/none mean
    null for a setting whose values are not words (else cv.clip_groups=None named a file).
    A key inside a mapping-valued setting (model.params.*) keeps YAML's reading."""
    value = yaml.safe_load(raw)
    tp = _setting_type(key)
    if tp is None:
        return value
    if _takes_text(tp):
        if value is not None and not isinstance(value, str):
            typed = yaml.load(raw, Loader=yaml.BaseLoader)  # the same YAML, every scalar as text
            return typed if isinstance(typed, str) else value
        if not _takes_null(tp):
            return value  # name=None is a run called None; train.scheduler=none a choice
    return None if isinstance(value, str) and value in _PYTHON_NONE else value


def _takes_text(tp) -> bool:
    """Whether a setting of type `tp` holds text: str, or a choice of words (Literal)."""
    tp = _optional_inner(tp)
    if get_origin(tp) is Literal:
        return all(isinstance(a, str) for a in get_args(tp))
    return tp is str


def _takes_null(tp) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


# ----------------------------------------------------------------------------- validation
def _build(cls, data: Any, path: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown setting '{where}{unknown[0]}'; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{path}.{name}" if path else name)
    obj = cls(**kwargs)
    _check_ranges(obj, path)
    return obj


def _coerce(tp, value, path):
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            if _off_by_default(tp):  # null: none of it (train.noisy_teacher: null, no teacher)
                return tp()
            raise _empty_section_error(tp, path)
        return _build(tp, value, path)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in get_args(tp):
                return None
            raise ConfigError(f"{path}: must not be empty")
        if isinstance(value, str) and value in _PYTHON_NONE and type(None) in get_args(tp):
            # YAML reads None as text: a file named None, or "expected a number, got 'None'"
            raise ConfigError(f"{path}: {value!r} is text in YAML; write null (or leave the key out) for none")
        return _coerce(args[0], value, path) if len(args) == 1 else value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 (PyYAML) reads 3e-4, with no ".", as text
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if math.isnan(value):
            raise ConfigError(f"{path}: expected a number, got NaN")
        if math.isinf(value):  # no setting means "unbounded" by inf; it fails later (crop_frames' int())
            raise ConfigError(f"{path}: {value} is not a finite number; give a finite value")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected text, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return value
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            example = f"[{value}]" if isinstance(value, (str, int)) and not isinstance(value, bool) else "[0, 1]"
            raise ConfigError(f"{path}: expected a list, got {value!r}; write it in brackets, e.g. {example}")
        return list(value)
    return value


# the setting that switches a section on, and its value when off; "enabled" where not named
_SECTION_SWITCH = {NoisyTeacherConfig: ("artifact", None)}


def _section_switch(tp) -> Optional[tuple[str, Any]]:
    """(setting, value when off) of the section class `tp`, or None for a section with no
    switch (train, features, train.mixup: their settings are always in use)."""
    name, off = _SECTION_SWITCH.get(tp, ("enabled", False))
    return (name, off) if name in {f.name for f in dataclasses.fields(tp)} else None


def _off_by_default(tp) -> bool:
    """Whether the section's built-in defaults leave it off (train.noisy_teacher, train.specaugment,
    pipeline.label_spreading). Such a section given as null means those defaults: off, as null
    meant before null sections were refused; one whose defaults switch it on is refused."""
    switch = _section_switch(tp)
    return switch is not None and getattr(tp(), switch[0]) == switch[1]


def _empty_section_error(tp, path: str, on_command_line: bool = False) -> ConfigError:
    """A section given as null (`--set pipeline.warmup=null`, a YAML section whose keys are all
    commented out) used to become the section class's own defaults, which switch stages on and
    differ from the file's values; say what to write instead, as --set or as YAML."""
    switch = _section_switch(tp)
    if switch is not None:
        name, off = switch
        verb = "give" if on_command_line else "write"
        instead = f"to switch it off {verb} {_setting_text(f'{path}.{name}', off, on_command_line)}"
    else:
        instead = f"to change it give its settings, e.g. {_setting_text(_example_key(tp, path), '...', on_command_line)}"
    keep = ("leave this --set out to keep the config file's settings" if on_command_line
            else "leave the key out to keep its settings")
    return ConfigError(f"{path}: empty (null); {instead}; {keep}")


def _setting_text(key: str, value: Any, on_command_line: bool) -> str:
    """`key` set to `value` as the user would type it: --set key=value, or YAML's key: value."""
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).splitlines()[0]
    return f"--set {key}={text}" if on_command_line else f"{key}: {text}"


def _example_key(tp, path: str) -> str:
    """The dotted key of the first value setting inside section `tp` (train -> train.crop_seconds)."""
    first = dataclasses.fields(tp)[0]
    inner = _optional_inner(get_type_hints(tp)[first.name])
    key = f"{path}.{first.name}"
    return _example_key(inner, key) if dataclasses.is_dataclass(inner) else key


_RANGES = {
    # (class name, field): (low, high) inclusive; None = open
    ("FeatureConfig", "sample_rate"): (1000, 192000),
    ("FeatureConfig", "n_fft"): (16, 1 << 16),
    ("FeatureConfig", "hop_length"): (1, 1 << 16),
    ("FeatureConfig", "n_mels"): (4, 512),
    ("FeatureConfig", "deltas"): (0, 2),
    ("FeatureConfig", "top_db"): (0, None),  # below 0 every value becomes the clip's peak: a constant
    ("FeatureConfig", "pcen_time_constant"): (0.001, None),
    ("FeatureConfig", "pcen_gain"): (0.0, 1.0),
    ("FeatureConfig", "pcen_bias"): (0.001, None),  # 0 is librosa's other formula, not this one's
    ("FeatureConfig", "pcen_power"): (0.01, 1.0),  # 0 is librosa's log1p formula, not this one's
    ("MixupConfig", "alpha"): (0.0, None),
    ("MixupConfig", "prob"): (0.0, 1.0),
    ("TrainConfig", "batch_size"): (1, None),
    ("TrainConfig", "onecycle_pct"): (0.01, 0.99),
    ("TrainConfig", "weight_decay"): (0.0, None),
    ("InputNormConfig", "scale"): (1e-6, None),
    ("TrainConfig", "num_workers"): (1, None),
    ("TrainConfig", "checkpoint_every"): (1, None),
    ("TrainConfig", "average_last"): (0, None),
    ("WaveAugmentConfig", "gain_db"): (0.0, None),
    ("WaveAugmentConfig", "time_shift"): (0.0, 1.0),
    ("ModelConfig", "dropout"): (0.0, 0.99),
    # a model's first block's channels and its number of blocks: 0 builds no network
    ("ModelConfig", "width"): (1, None),
    ("ModelConfig", "depth"): (1, None),
    ("WarmupConfig", "epochs"): (0, None),
    ("FinetuneConfig", "epochs"): (0, None),
    # 1, not 0: build_steps keeps every stage-2 round and a worker trains a 0-epoch round once anyway;
    # turn stage 2 off with pipeline.filter / label_spreading / pseudo .enabled: false
    ("PseudoLabelConfig", "epochs"): (1, None),
    ("TrainConfig", "profile_epoch"): (0, None),
    ("TrainConfig", "crop_seconds"): (0.05, None),
    ("CVConfig", "n_folds"): (2, None),
    ("InferenceConfig", "overlap"): (0.0, 0.95),
    ("InferenceConfig", "tta"): (0, None),
    ("InferenceConfig", "segment_seconds"): (0.05, None),  # None: the crop's length
    ("FilterConfig", "threshold"): (0.0, 1.0),
    ("FilterConfig", "soft_beta"): (0.0, 1.0),
    ("PseudoLabelConfig", "upper"): (0.0, 1.0),
    ("ThresholdSchedule", "start"): (0.0, 1.0),
    ("ThresholdSchedule", "end"): (0.0, 1.0),
    ("LossConfig", "label_smoothing"): (0.0, 0.5),
    ("LossConfig", "lsoft_beta"): (0.0, 1.0),
    ("LossConfig", "noisy_keep"): (0.05, 1.0),
    ("LossConfig", "noisy_keep_ramp"): (0, None),
    ("NoisyTeacherConfig", "label_weight"): (0.0, 1.0),
    # in_process runs range(max_failures + 1) attempts (-1: none at all); Ray Train reads -1 as unlimited
    ("TrainConfig", "max_failures"): (0, None),
    # sklearn's LabelSpreading / PCA limits, checked here so a run does not fail after fold 0 trained
    ("LabelSpreadingConfig", "gamma"): (0.0, None),
    ("LabelSpreadingConfig", "max_iter"): (1, None),
    ("LabelSpreadingConfig", "pca_components"): (1, None),
    ("LabelSpreadingConfig", "max_graph"): (2, None),
    # 0 rounds silently dropped stage 2; turn it off with the .enabled switches instead
    ("PseudoLabelConfig", "rounds"): (1, None),
    # numpy, iterstrat and sklearn take seeds in [0, 2**32 - 1]
    ("Config", "seed"): (0, 2**32 - 1),
    ("CVConfig", "seed"): (0, 2**32 - 1),
}

_OPEN_RANGES = {
    # (class name, field): (low, high) exclusive; None = open
    ("LabelSpreadingConfig", "alpha"): (0.0, 1.0),
    # the learning rate, and a stage's own (None: train.lr): AdamW refuses one below 0 and 0 learns
    # nothing (every fold and stage trained for hours with no update)
    ("TrainConfig", "lr"): (0.0, None),
    ("WarmupConfig", "lr"): (0.0, None),
    ("FinetuneConfig", "lr"): (0.0, None),
    ("PseudoLabelConfig", "lr"): (0.0, None),
}


def _check_noisy_folds(cfg: "Config") -> None:
    """cv.noisy_folds promises noisy predictions out of sample; a warm-up on noisy clips,
    whose weights start every fold, would break that promise silently."""
    warmup = cfg.pipeline.warmup
    if cfg.cv.noisy_folds and warmup.enabled and warmup.epochs > 0:
        raise ConfigError("cv.noisy_folds: the warm-up trains on noisy clips before the folds split them, so no "
                          "fold model's noisy predictions would be out of sample; set pipeline.warmup.enabled: "
                          "false, or cv.noisy_folds: false")


def _check_model_takes_features(cfg: "Config") -> None:
    """Raw waveforms ([B, C, 1, samples]) go to the raw-wave CNN only: a spectrogram network
    would train on them as an image one bin tall, without a word."""
    raw_in, raw_model = cfg.features.kind == "raw", cfg.model.name == "rawwave_cnn"
    if raw_in and not raw_model:
        raise ConfigError(f"features.kind: raw (waveforms) needs model.name: rawwave_cnn; {cfg.model.name} "
                          "takes spectrogram-like features (logmel, mfcc, colormel, pcen, logmel_pcen)")
    if raw_model and not raw_in:
        raise ConfigError(f"model.name: rawwave_cnn takes waveforms; set features.kind: raw "
                          f"(not {cfg.features.kind})")
    if raw_in and cfg.train.specaugment.enabled:
        # its masks cut time-frequency bins; the training step applies them to spectrogram-like features only
        raise ConfigError("train.specaugment.enabled: SpecAugment masks time and mel bins, which raw waveforms "
                          "(features.kind: raw) do not have, so it would be skipped without a word; set "
                          "train.specaugment.enabled: false, or train on logmel, mfcc, colormel, pcen or logmel_pcen")
    if cfg.features.kind == "pcen" and cfg.train.augment.gain_db:
        # PCEN divides each band by its own smoothed level (gain 0.98): a clip's gain hardly moves
        # its features, and an additive dB offset on them would be a different, made-up transform
        raise ConfigError(f"train.augment.gain_db: {cfg.train.augment.gain_db} with features.kind: pcen, whose "
                          "per-band gain control removes a clip's gain, so the random gain would change nothing "
                          "real; set train.augment.gain_db: 0, or train on logmel, mfcc, colormel or logmel_pcen (whose "
                          "gain moves the log-mel channel only)")


def members_keep_their_own(cfg: Config, cli: dict) -> list[str]:
    """A note for each `--set` key that a member's own `set` names (or a key inside it): the
    member's value wins there, so the override reaches only the other members."""
    def overlaps(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or b.startswith(a + ".")

    return [f"--set {key}: member {m.name} sets {own} itself ({m.set[own]!r}), so the override does not reach it"
            for key in cli for m in cfg.members for own in m.set if overlaps(key, own)]


def value_range(cls_name: str, name: str) -> tuple:
    """(low, high) inclusive of a setting's range (None = open), for a caller that checks the
    same value under another name (an option of its own) before a Config is made."""
    return _RANGES[(cls_name, name)]


def _out_of_range(value, low, high, exclusive: bool) -> Optional[str]:
    """What is wrong with `value` for the bounds (low, high), None = open; None if nothing."""
    if exclusive:
        if low is not None and not value > low:
            return f"{value} must be above {low}"
        if high is not None and not value < high:
            return f"{value} must be below {high}"
    else:
        if low is not None and value < low:
            return f"{value} is below the minimum {low}"
        if high is not None and value > high:
            return f"{value} is above the maximum {high}"
    return None


def _check_ranges(obj, path):
    for table, exclusive in ((_RANGES, False), (_OPEN_RANGES, True)):
        for (cls_name, name), (low, high) in table.items():
            if type(obj).__name__ != cls_name:
                continue
            value = getattr(obj, name)
            if value is None:  # an optional setting left to its default
                continue
            problem = _out_of_range(value, low, high, exclusive)
            if problem:
                raise ConfigError(f"{path}.{name}: {problem}" if path else f"{name}: {problem}")
    if (isinstance(obj, TrainConfig) and obj.use_gpu and obj.num_workers > 1 and obj.gpus_per_worker < 1
            and obj.ddp_backend != "gloo"):
        raise ConfigError(
            f"{path + '.' if path else ''}gpus_per_worker: {obj.gpus_per_worker} GPU for each of {obj.num_workers} "
            "DDP workers puts several ranks on one GPU, which NCCL refuses (\"Duplicate GPU detected\"): "
            "give each worker a whole GPU (gpus_per_worker: 1) or set ddp_backend: gloo")
    if isinstance(obj, FeatureConfig) and obj.fmax is not None and obj.fmax > obj.sample_rate / 2:
        raise ConfigError(f"{path}.fmax: {obj.fmax} is above the Nyquist frequency {obj.sample_rate / 2}")
    if isinstance(obj, FeatureConfig):
        top = obj.fmax if obj.fmax is not None else obj.sample_rate / 2
        if obj.fmin >= top:
            raise ConfigError(f"{path}.fmin: {obj.fmin} leaves no band below fmax ({top})")
    if isinstance(obj, CVConfig) and obj.folds is not None:
        bad = [f for f in obj.folds if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < obj.n_folds]
        if bad or not obj.folds:
            raise ConfigError(f"{path + '.' if path else ''}folds: {obj.folds!r}: give fold numbers from 0 to "
                              f"{obj.n_folds - 1} (n_folds {obj.n_folds}), or null for all")
    if isinstance(obj, PseudoLabelConfig) and obj.enabled:
        # the highest lower bound the schedule reaches (raytag.pipeline.schedule.lower_bound)
        one_bound = obj.lower.shape == "constant" or obj.rounds <= 1
        highest = obj.lower.start if one_bound else max(obj.lower.start, obj.lower.end)
        if highest >= obj.upper:
            raise ConfigError(f"{path}.upper: {obj.upper} must stay above the lower bound, which reaches "
                              f"{highest}: no clip could be selected")
