"""A run folder remembers the settings it trains with, so that a rerun under the same name
resumes only the same run.

Rerunning `raytag train` (or a trial) with the same name and storage resumes from the
run's checkpoints. With other settings (other folds, another model, another seed) that
would continue the old run's progress on a new plan: steps, weights and predictions of
two runs mixed in one folder. `run_settings.json` holds the settings of the run's first
start, with a signature of its clips and labels; a rerun whose settings or data differ,
while the folder holds checkpoints, is refused with the difference. Settings that only say
where and how fast to train (workers, devices, threads, checkpoint spacing, number
format...) may change between attempts.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from raytag import storage as files
from raytag.config import Config, ConfigError

SETTINGS_FILE = "run_settings.json"

# may change between attempts of one run: where and how fast it trains, not what it learns
FREE_TO_CHANGE = (
    "name",
    "train.num_workers", "train.use_gpu", "train.cpus_per_worker", "train.gpus_per_worker",
    "train.ddp_backend", "train.max_failures", "train.runner", "train.checkpoint_every",
    "train.torch_threads", "train.precision", "train.profile_epoch",
)


def check_run_settings(run_dir: str, cfg: Config, plan=None) -> None:
    """Record `cfg` (and the clips and labels of `plan`) as the run's settings, or refuse a
    resume with other ones (ConfigError)."""
    settings = _settings(cfg)
    if plan is not None:
        settings["data"] = data_signature(plan)
    path = files.join(run_dir, SETTINGS_FILE)
    if files.exists(path) and _has_checkpoints(run_dir):
        before = json.loads(files.read_text(path))
        # keys in both only: a setting a newer raytag added (or dropped) is not a change of the run
        changed = sorted(k for k in before.keys() & settings.keys() if before[k] != settings[k])
        if changed:
            shown = "; ".join(f"{k}: {before[k]!r} then, {settings[k]!r} now" for k in changed[:5])
            more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
            raise ConfigError(
                f"{run_dir}: this run began with other settings ({shown}{more}), and rerunning a name "
                "resumes its checkpoints; give the new run another --name, or delete the folder to start over"
            )
        return
    files.write_text(path, json.dumps(settings, indent=1, sort_keys=True))


def data_signature(plan) -> str:
    """What the run learns from and is scored on: its classes, clips and labels (SHA-256),
    whatever path the dataset was given by."""
    digest = hashlib.sha256(json.dumps([list(plan.classes), list(plan.curated_ids), list(plan.noisy_ids),
                                        list(plan.test_ids)]).encode())
    for labels in (plan.curated_y, plan.noisy_y):
        digest.update(np.ascontiguousarray(labels, dtype=np.float32).tobytes())
    return f"sha256:{digest.hexdigest()[:16]} ({len(plan.curated_ids)} curated, {len(plan.noisy_ids)} noisy, " \
           f"{len(plan.test_ids)} test clips)"


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

    walk("", json.loads(json.dumps(cfg.to_dict())))  # JSON's types: a tuple compares as the list it is saved as
    return flat
