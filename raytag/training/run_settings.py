"""A run folder remembers the settings it trains with, so that a rerun under the same name
resumes only the same run.

Rerunning `raytag train` (or a trial) with the same name and storage resumes from the
run's checkpoints. With other settings (other folds, another model, another seed) that
would continue the old run's progress on a new plan: steps, weights and predictions of
two runs mixed in one folder. `run_settings.json` holds the settings of the run's first
start, with a signature of its clips and labels; a rerun whose settings or data differ,
while the folder holds checkpoints, is refused with the difference. Settings that only say
where and how fast to train (workers, devices, threads, checkpoint spacing, number
format...) may change between attempts. A model param whose default changed since the run
began (config.CHANGED_DEFAULTS) and that the rerun leaves unset keeps its value of then:
the checkpoints hold that model's weights.

The config holds only the paths of the files the plan is derived from (cv.clip_groups,
pipeline.label_spreading.groups_file, train.noisy_teacher.artifact), so the plan itself is
recorded too (`plan.*` keys, a SHA-256 each): the curated and noisy folds, the noisy subset,
the resolved label-spreading groups and the noisy teacher's artifact. A groups file fixed,
a teacher re-ensembled or a fold splitter upgraded between attempts would otherwise resume
folds trained on one split with folds of another (clips scored twice or never, held-out
clips a fold's model already trained on). `plan.features` is the feature store the run
reads (its key: the feature settings, FEATURES_VERSION, librosa's version; and the contents
of each clip's audio file, so a copy that did not keep modification times resumes): audio
re-exported under the same names, or an upgrade that changes the features, would otherwise
resume checkpoints trained on the old features with the new ones and a new input scaling.
A members run records each member's own front end, in the member's own run folder. Runs
recorded before these keys resume as before: only keys in both records are compared (and
a plan.features made by an older rule, by size and modification time, is not compared).
"""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from raytag import storage as files
from raytag.config import CHANGED_DEFAULTS, Config, ConfigError, recorded_model_settings, saved_model_settings

log = logging.getLogger(__name__)

SETTINGS_FILE = "run_settings.json"
FEATURES = "plan.features"  # the feature store's key and the clips' audio contents (Plan.features_id)
PARAMS = "model.params."  # the prefix of a model family's params among the recorded settings

# may change between attempts of one run: where and how fast it trains, not what it learns
FREE_TO_CHANGE = (
    "name",
    "train.num_workers", "train.use_gpu", "train.cpus_per_worker", "train.gpus_per_worker",
    "train.ddp_backend", "train.max_failures", "train.runner", "train.checkpoint_every",
    "train.torch_threads", "train.precision", "train.profile_epoch",
    # paths may be spelt another way (relative, absolute, a moved working folder, the teacher's run
    # or artifact folder): what they hold is compared as plan.* (the folds, the resolved groups,
    # plan.noisy_teacher), so a changed file is still refused
    "train.noisy_teacher.artifact", "cv.clip_groups", "pipeline.label_spreading.groups_file",
)


def check_run_settings(run_dir: str, cfg: Config, plan=None) -> Config:
    """Record `cfg` (and the clips and labels of `plan`) as the run's settings, or refuse a
    resume with other ones (ConfigError). Returns the config the run trains with: `cfg`, or
    on a resume `cfg` with the model params the run began with whose default changed since
    and that `cfg` leaves unset (set in `plan.cfg` too, which the workers build the model
    from): the checkpoints hold weights of that model."""
    path = files.join(run_dir, SETTINGS_FILE)
    if not (files.exists(path) and _has_checkpoints(run_dir)):
        files.write_text(path, json.dumps(_with_data(_settings(cfg), plan), indent=1, sort_keys=True))
        return cfg
    before = _saved_settings(json.loads(files.read_text(path)))
    kept = _params_kept_from_start(before, cfg)
    if kept:
        cfg = _with_model_params(cfg, plan, kept)
    settings = _with_data(_settings(cfg), plan)
    # keys in both only: a setting a newer raytag added (or dropped) is not a change of the run
    changed = sorted(k for k in before.keys() & settings.keys()
                     if before[k] != settings[k] and _comparable(k, before[k], settings[k]))
    if changed:
        shown = "; ".join(f"{k}: {before[k]!r} then, {settings[k]!r} now" for k in changed[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise ConfigError(
            f"{run_dir}: this run began with other settings ({shown}{more}{_why_derived(changed)}), and rerunning "
            "a name resumes its checkpoints; give the new run another --name, or delete the folder to start over"
        )
    if kept:
        log.info("run %s resumes with %s as it began (a default changed since)", run_dir,
                 ", ".join(f"{PARAMS}{k}={v!r}" for k, v in kept.items()))
    return cfg


def _why_derived(changed: list) -> str:
    """What a changed plan.* key stands for (the config only names its files)."""
    why = ""
    if any(k.startswith("plan.") and k != FEATURES for k in changed):
        why += ("; plan.* is derived from the files the config names (cv.clip_groups, "
                "pipeline.label_spreading.groups_file, train.noisy_teacher.artifact) and the dataset: "
                "one of them changed since the run began")
    if FEATURES in changed:
        why += ("; plan.features is the feature store's key (the features settings, FEATURES_VERSION, librosa's "
                "version) and the contents of each clip's audio file (not its times: a copy resumes): an audio "
                "file's contents changed or raytag or librosa upgraded since the run began, so its checkpoints "
                "learnt from other features")
    return why


def _comparable(key: str, then, now) -> bool:
    """Whether a recorded value can be compared with today's: a plan.features made by another
    rule (its first word, e.g. an older raytag's "sha256:" of sizes and modification times)
    cannot, and counts as not recorded."""
    if key != FEATURES:
        return True
    return str(then).split(":", 1)[0] == str(now).split(":", 1)[0]


def _with_data(settings: dict, plan) -> dict:
    if plan is not None:
        settings["data"] = data_signature(plan)
        settings.update(plan_signature(plan))
    return settings


def _saved_settings(before: dict) -> dict:
    """Recorded settings as read back: a changed default of the model family that they lack
    (recorded before the change, see config.CHANGED_DEFAULTS) takes its value before it."""
    params = {k[len(PARAMS):]: v for k, v in before.items() if k.startswith(PARAMS)}
    saved = saved_model_settings({"name": before.get("model.name"), "params": params})["params"]
    return {**before, **{PARAMS + k: v for k, v in saved.items()}}


def _params_kept_from_start(before: dict, cfg: Config) -> dict:
    """The changed-default params of the run's model that `cfg` leaves unset: built with the
    value the run began with, not today's default, or the checkpoints' weights would not fit."""
    if before.get("model.name") != cfg.model.name:
        return {}  # another family: a change check_run_settings refuses
    changed = CHANGED_DEFAULTS.get(cfg.model.name, {})
    return {key: before[PARAMS + key] for key in changed
            if key not in cfg.model.params and PARAMS + key in before}


def _with_model_params(cfg: Config, plan, params: dict) -> Config:
    if plan is not None:
        model = plan.cfg["model"]
        plan.cfg["model"] = {**model, "params": {**model.get("params", {}), **params}}
    return Config.from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"],
                                                        "params": {**cfg.model.params, **params}}})


def data_signature(plan) -> str:
    """What the run learns from and is scored on: its classes, clips and labels (SHA-256),
    whatever path the dataset was given by."""
    data = json.dumps([list(plan.classes), list(plan.curated_ids), list(plan.noisy_ids), list(plan.test_ids)]).encode()
    for labels in (plan.curated_y, plan.noisy_y):
        data += np.ascontiguousarray(labels, dtype=np.float32).tobytes()
    return _digest(data, f"{len(plan.curated_ids)} curated, {len(plan.noisy_ids)} noisy, "
                         f"{len(plan.test_ids)} test clips")


def plan_signature(plan) -> dict:
    """What the driver derives from files the config only names (`plan.*` keys, beside the
    config's and "data"): the folds (cv.clip_groups, the fold splitter), the noisy folds and
    subset, the label-spreading groups as resolved from groups_file, the noisy teacher, and
    the features (`Plan.features_id`: no feature bytes, which a store rebuilt on another
    node may have otherwise in the last bits)."""
    signature = {}
    curated_fold = getattr(plan, "curated_fold", None)
    if curated_fold is not None:
        folds = np.asarray(curated_fold, dtype=np.int64)
        signature["plan.curated_fold"] = _digest(folds.tobytes(), f"folds of {len(folds)} curated clips")
    if hasattr(plan, "noisy_fold"):
        noisy = plan.noisy_fold
        signature["plan.noisy_fold"] = ("none" if noisy is None else _digest(
            np.asarray(noisy, dtype=np.int64).tobytes(), f"folds of {len(noisy)} noisy clips"))
    subset = getattr(plan, "noisy_subset", None)
    if subset is not None:
        signature["plan.noisy_subset"] = _digest(json.dumps([str(c) for c in subset]).encode(),
                                                 f"{len(subset)} noisy clips")
    cfg = getattr(plan, "cfg", None)
    if isinstance(cfg, dict):
        groups = ((cfg.get("pipeline") or {}).get("label_spreading") or {}).get("groups")
        signature["plan.label_spreading_groups"] = ("none" if not groups else _digest(
            json.dumps(groups, sort_keys=True).encode(), f"{len(groups)} groups"))
    if hasattr(plan, "noisy_targets"):
        signature["plan.noisy_teacher"] = _teacher_signature(plan)
    features = getattr(plan, "features_id", None)
    if features is not None:
        signature[FEATURES] = features
    return signature


def _teacher_signature(plan) -> str:
    """The noisy teacher by its artifact's contents (`plan.noisy_teacher_id`, the SHA-256 of
    every file its manifest lists): the targets' own bytes are not compared, as a teacher
    whose cached predictions are made again on another node (the feature cache is node-local)
    may differ from them in the last bits."""
    if plan.noisy_targets is None:
        return "none"
    return getattr(plan, "noisy_teacher_id", None) or "unknown"


def _digest(data: bytes, what: str) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()[:16]} ({what})"


def _has_checkpoints(run_dir: str) -> bool:
    return any(entry.startswith("checkpoint_") for entry in files.list_dir(run_dir))


def _settings(cfg: Config) -> dict:
    """The config as {"section.key": value}, without the keys that may change."""
    flat: dict = {}

    def walk(prefix: str, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif prefix not in FREE_TO_CHANGE:
            flat[prefix] = value

    as_dict = json.loads(json.dumps(cfg.to_dict()))  # JSON's types: a tuple compares as the list it is saved as
    as_dict["model"] = recorded_model_settings(as_dict["model"])  # today's changed defaults written in
    walk("", as_dict)
    return flat
