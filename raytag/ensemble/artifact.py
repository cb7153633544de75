"""The ensemble artifact: one folder that holds everything needed to tag new audio.

    artifact/
      manifest.json              {"format", "raytag_version", "created", "files": {relpath: sha256}}
      ensemble.json              combiner, weights, members (in order), classes, layout, scores,
                                 distilled (a `raytag distill` student only: its teacher and training)
      members/<name>/member.json feature + model settings, classes, normalisation, segments
      members/<name>/fold{k}.safetensors   one state dict per fold model (tensors only)
      members/<name>/rank_reference.safetensors   (rank combiner) the member's OOF quantiles

Weights are safetensors: loading them can never run code (unlike a pickle). The manifest
is written last, so a folder whose writing was interrupted has no manifest and is refused.
A local artifact is written into a sibling folder and swapped in by renames, so a rerun
that fails leaves the old one whole; under a URI (no folder rename) the old one is gone
once writing starts, and a failed rerun leaves a folder without a manifest.
`load_artifact` checks every file against the manifest and refuses a missing file, an
extra file or a checksum mismatch with an ArtifactError naming the file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from raytag import __version__, storage
from raytag.config import Config, ConfigError, safe_name, saved_model_settings
from raytag.ensemble.combiners import COMBINERS, combine
from raytag.ensemble.tagging import predict_files
from raytag.errors import ArtifactError, RaytagError
from raytag.features.frontends import frontend_shape
from raytag.models import build_model
from raytag.training.outputs import MODEL_CARD, WEIGHTS, read_model_card

FORMAT = 1  # bump when the folder layout changes incompatibly
MANIFEST = "manifest.json"
ENSEMBLE = "ensemble.json"
MEMBER = "member.json"
RANK_REFERENCE = "rank_reference.safetensors"
_FOLD_FILE = re.compile(r"^fold(\d+)\.safetensors$")


# ----------------------------------------------------------------------------- where
def experiment_artifact(experiment_dir: str) -> Optional[str]:
    """The artifact an experiment serves, or None: a sweep's ensemble (`raytag ensemble`
    writes <experiment>/ensemble/artifact), else a `raytag train` run's own (its members'
    fold models and combiner, <run>/artifact). A sweep's ensemble wins where both exist.
    An artifact folder without its manifest (written last: an interrupted write, such as a
    failed rerun to a URI) is refused, not passed over for the other place, which would
    silently serve another artifact than the one asked for."""
    for path in (storage.join(experiment_dir, "ensemble", "artifact"), storage.join(experiment_dir, "artifact")):
        if storage.exists(storage.join(path, MANIFEST)):
            return path
        if storage.is_dir(path):
            raise ArtifactError(
                f"{path}: artifact folder has no {MANIFEST} (an interrupted write?); run `raytag ensemble` "
                f"(or the `raytag train` run) for {experiment_dir} again, or delete that folder"
            )
    return None


# ----------------------------------------------------------------------------- members
@dataclass
class MemberSpec:
    """What the ensemble job hands to `save_artifact` for one trial."""

    name: str  # folder name inside the artifact (a sanitised trial id)
    outputs_dir: str  # the trial's outputs folder (local path or URI)
    cv_lwlrap: Optional[float] = None
    rank_reference: Optional[np.ndarray] = None  # (points, classes); rank combiner only


def trial_settings(outputs_dir: str) -> dict:
    """A trial's inference settings, from its model.json only (the trial-output contract,
    raytag.training.outputs: `read_model_card` refuses a card with a field missing, so
    nothing here falls back to config.yaml or to defaults).

    Returns a member.json dict (without the fold list).
    """
    card = read_model_card(outputs_dir)
    try:
        cfg = Config.from_dict({"features": card["features"], "model": saved_model_settings(card["model"]),
                                "inference": card["inference"]})
    except ConfigError as err:
        raise ArtifactError(f"{storage.join(outputs_dir, MODEL_CARD)}: settings cannot be read: {err}") from err
    return {
        "features": cfg.to_dict()["features"],
        "model": cfg.to_dict()["model"],
        "classes": list(card["classes"]),
        "layout": card["layout"],
        "norm_mean": card["norm_mean"],
        "norm_std": card["norm_std"],
        "segment_frames": int(card["segment_frames"]),
        "crop_frames": int(card["crop_frames"]),
        "inference": {key: getattr(cfg.inference, key) for key in ("overlap", "reduce", "tta")},
    }


def fold_files(outputs_dir: str) -> list[str]:
    """The trial's fold weight files (relative to weights/), in fold order: exactly the
    folds its model.json lists (`folds`, plus `refit_fold`), so that a member whose fold
    models were not all saved is refused rather than run with fewer models than it was
    scored with. A card from before those fields were written gives whatever files exist."""
    weights_dir = storage.join(outputs_dir, WEIGHTS)
    if not storage.is_dir(weights_dir):
        raise ArtifactError(f"{weights_dir}: missing; the trial has no saved fold models")
    found = {int(m.group(1)): f for f in storage.list_files(weights_dir) if (m := _FOLD_FILE.match(f))}
    if not found:
        raise ArtifactError(f"{weights_dir}: no fold*.safetensors files")
    listed = listed_folds(outputs_dir)
    if listed is None:
        return [found[k] for k in sorted(found)]
    missing = [k for k in listed if k not in found]
    if missing:
        names = ", ".join(f"fold{k}" for k in missing)
        raise ArtifactError(
            f"{weights_dir}: {names} missing (model.json lists {','.join(map(str, listed))}); "
            "the trial's fold models were not all saved: train it again or leave it out"
        )
    return [found[k] for k in listed]  # stray files of folds the card does not list are not members


def listed_folds(outputs_dir: str) -> Optional[list[int]]:
    """The fold ids whose models a trial saved, by its model.json (`folds` + `refit_fold`);
    None when the card predates those fields (or cannot be read: trial_settings says why)."""
    try:
        card = json.loads(storage.read_text(storage.join(outputs_dir, MODEL_CARD)))
    except (RaytagError, ValueError, OSError):
        return None
    if not isinstance(card, dict) or card.get("folds") is None:
        return None
    refit = card.get("refit_fold")
    return sorted({int(k) for k in card["folds"]} | ({int(refit)} if refit is not None else set()))


# ----------------------------------------------------------------------------- save
def save_artifact(
    dest: str,
    members: Sequence[MemberSpec],
    combiner: str,
    weights: Optional[Sequence[float]],
    classes: Sequence[str],
    layout: str,
    scores: Optional[dict] = None,
    distilled: Optional[dict] = None,
    parent_locked: bool = False,
) -> str:
    """Write an artifact folder at `dest` (local path or URI), replacing any old one.
    `distilled`: for a student model (`raytag distill`), what it was distilled from.
    `parent_locked`: the caller holds the lock of dest's parent folder (storage.folder_lock)
    for its whole job, as `raytag ensemble` and `raytag distill` do; else a local save takes
    it for the save (the lock is not reentrant: taking it twice would refuse our own save)."""
    if combiner not in COMBINERS:
        raise ValueError(f"unknown combiner {combiner!r}")
    if combiner == "weighted" and (weights is None or len(weights) != len(members)):
        raise ValueError("the weighted combiner needs one weight per member")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"member names must be unique, got {names}")
    # the members' model cards (small) are checked before anything is written
    cards = [_member_card(spec, combiner, classes) for spec in members]
    ensemble = {
        "format": FORMAT,
        "raytag_version": __version__,
        "combiner": combiner,
        "weights": None if weights is None else [float(w) for w in weights],
        "members": names,
        "classes": list(classes),
        "layout": layout,
        "scores": scores or {},
    }
    if distilled is not None:
        ensemble["distilled"] = distilled

    def pack(put) -> None:
        _pack(put, members, cards, ensemble)

    if storage.is_local_path(dest):
        _write_swapped(dest, pack, parent_locked)
    else:
        # every file is read and checked before the old artifact goes: a member that cannot
        # be saved must not cost the user the artifact they have (and may be serving)
        contents: dict[str, bytes] = {}
        pack(contents.__setitem__)
        _write_in_place(dest, contents)
    return str(dest)


def _member_card(spec: MemberSpec, combiner: str, classes: Sequence[str]) -> dict:
    """A member's member.json, but for its fold list: its trial's model card, checked."""
    settings = trial_settings(spec.outputs_dir)
    if list(settings["classes"]) != list(classes):
        raise ArtifactError(f"{spec.outputs_dir}: class list differs from the ensemble's")
    if combiner == "rank" and spec.rank_reference is None:
        raise ValueError(f"member {spec.name}: the rank combiner needs a rank reference")
    return settings


def _pack(put, members: Sequence[MemberSpec], cards: list[dict], ensemble: dict) -> None:
    """Hand every file of the artifact to `put(rel, data)`, one at a time (so a local save
    holds one fold file in memory, not every member's), the manifest last: a folder whose
    writing stopped before it is refused."""
    hashes: dict[str, str] = {}

    def put_hashed(rel: str, data: bytes) -> None:
        hashes[rel] = storage.sha256_bytes(data)
        put(rel, data)

    for spec, settings in zip(members, cards):
        files = fold_files(spec.outputs_dir)
        for rel in files:
            data = storage.read_bytes(storage.join(spec.outputs_dir, WEIGHTS, rel))
            _check_state_dict(data, f"{spec.outputs_dir}/weights/{rel}")
            put_hashed(f"members/{spec.name}/{rel}", data)
        if ensemble["combiner"] == "rank":
            ref = torch.from_numpy(np.ascontiguousarray(spec.rank_reference, dtype=np.float64))
            put_hashed(f"members/{spec.name}/{RANK_REFERENCE}", save_safetensors({"quantiles": ref}))
        settings = {**settings, "name": spec.name, "folds": files, "cv_lwlrap": spec.cv_lwlrap,
                    "source": str(spec.outputs_dir)}
        put_hashed(f"members/{spec.name}/{MEMBER}", _json_bytes(settings))
    put_hashed(ENSEMBLE, _json_bytes(ensemble))
    manifest = {
        "format": FORMAT,
        "raytag_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": dict(sorted(hashes.items())),
    }
    put(MANIFEST, _json_bytes(manifest))


def _write_swapped(dest: str, pack, parent_locked: bool) -> None:
    """A local artifact: written whole into a hidden sibling folder, then swapped in by
    renames, so a write that fails (a full disk, a damaged fold file) leaves the old
    artifact whole and loadable. One save at a time (the parent folder's lock, held from
    the first file written): two swaps at once would rename onto each other's folder and
    strand the old artifact, and a save would clear the other's half-written folder."""
    _, inner = storage.resolve(dest)
    target = Path(inner)
    lock = nullcontext() if parent_locked else storage.folder_lock(str(target.parent), f"artifact {target}")
    with lock:
        _clear_stale_swaps(target)
        _swap_in(target, pack)


def _swap_folders(target: Path, suffix: str) -> list[Path]:
    """The hidden `.<name>.<tag><suffix>` siblings of `target`, oldest first."""
    if not target.parent.is_dir():
        return []
    found = [p for p in target.parent.iterdir()
             if p.name.startswith(f".{target.name}.") and p.name.endswith(suffix) and p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _clear_stale_swaps(target: Path) -> None:
    """Remove the swap folders of a save that was killed (SIGKILL, OOM); with the lock held
    none is in use. Killed between its two renames, it left the old artifact in `.old` and
    none at `target`: that one is put back first, in case this save fails too."""
    olds = _swap_folders(target, ".old")
    if olds and not target.exists():
        os.replace(olds.pop(), target)
    for stale in olds + _swap_folders(target, ".new"):
        shutil.rmtree(stale, ignore_errors=True)


def _swap_in(target: Path, pack) -> None:
    tag = uuid.uuid4().hex[:8]
    fresh, old = target.with_name(f".{target.name}.{tag}.new"), target.with_name(f".{target.name}.{tag}.old")
    try:
        pack(lambda rel, data: storage.write_bytes(str(fresh / rel), data))
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(fresh, target)
    except OSError:
        if old.exists():
            os.replace(old, target)  # put the old artifact back
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_in_place(dest: str, contents: dict[str, bytes]) -> None:
    """An artifact under a URI (object storage has no folder rename): the old files go
    first (they would be extra files to verification) and the manifest is written last,
    so a write that fails leaves a folder without a manifest, which loading and `raytag
    pull` refuse as incomplete until the job is run again."""
    storage.remove_tree(dest)
    for rel, data in contents.items():
        storage.write_bytes(storage.join(dest, rel), data)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, default=_json_default) + "\n").encode("utf-8")


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _check_state_dict(data: bytes, where: str) -> dict:
    try:
        return load_safetensors(data)
    except Exception as err:  # safetensors raises its own SafetensorError and others
        raise ArtifactError(f"{where}: not a readable safetensors state dict ({err})") from err


# ----------------------------------------------------------------------------- verify + load
def read_manifest(path: str) -> dict:
    manifest_path = storage.join(path, MANIFEST)
    if not storage.exists(manifest_path):
        _refuse_an_experiment_folder(path)
        raise ArtifactError(
            f"{manifest_path}: missing; {path} is not a complete raytag artifact "
            "(its writing or copying may have been interrupted: run `raytag ensemble` or `raytag pull` again)"
        )
    try:
        manifest = json.loads(storage.read_text(manifest_path))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{manifest_path}: not a valid manifest ({err})") from err
    if not isinstance(files, dict):
        raise ArtifactError(f"{manifest_path}: 'files' must map paths to SHA-256")
    for rel in files:  # names decide where `raytag pull` writes: refuse any that leave the folder
        storage.safe_relpath(rel, where=manifest_path, error=ArtifactError)
    if int(manifest.get("format", 0)) > FORMAT:
        raise ArtifactError(
            f"{path}: artifact format {manifest.get('format')} is newer than this raytag "
            f"{__version__} reads ({FORMAT}); upgrade raytag"
        )
    return manifest


def _refuse_an_experiment_folder(path: str) -> None:
    """A run's or sweep's folder given where an artifact is wanted (`raytag predict <run>`):
    name the artifact inside it, rather than call the folder an interrupted artifact."""
    inner = experiment_artifact(path)  # an artifact folder inside without its manifest is refused there
    if inner is not None:
        raise ArtifactError(f"{path} is a run's or sweep's folder, not an artifact; give its artifact: {inner}")
    if storage.exists(storage.join(path, "sweep.json")):
        raise ArtifactError(f"{path} is a sweep's folder with no ensemble yet: run `raytag ensemble` on it, "
                            f"then give {storage.join(path, 'ensemble', 'artifact')}")


def verify_artifact(path: str) -> dict:
    """Check every file against the manifest; returns the manifest or raises ArtifactError."""
    manifest = _check_file_list(path)
    for rel, sha in manifest["files"].items():
        _check_checksum(path, rel, storage.sha256_file(storage.join(path, rel)), sha)
    return manifest


def _check_file_list(path: str) -> dict:
    """The manifest, once the folder holds exactly the files it lists (hidden ones aside)."""
    manifest = read_manifest(path)
    expected: dict[str, str] = manifest["files"]
    present = set(storage.list_files(path)) - {MANIFEST}
    missing = sorted(set(expected) - present)
    if missing:
        raise ArtifactError(f"{path}: file {missing[0]} is listed in the manifest but missing"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    # hidden files a copy may pick up (.DS_Store, ._x from macOS) are not part of the artifact
    extra = sorted(f for f in present - set(expected) if not _hidden(f))
    if extra:
        raise ArtifactError(f"{path}: file {extra[0]} is not in the manifest; an artifact must hold "
                            "only the files it was saved with")
    return manifest


def _check_checksum(path: str, rel: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise ArtifactError(
            f"{path}: checksum mismatch for {rel} (manifest {expected[:12]}..., file {actual[:12]}...); "
            "the file was changed or damaged, copy the artifact again (or, if a rerun was saving over "
            "it, load it again once that has finished)"
        )


@dataclass
class _CheckedFiles:
    """An artifact's files, each read once and checked against the manifest read at the
    start, so the bytes loaded are the bytes verified: a rerun swapping a new artifact in
    while this one loads gives a checksum error, never a mix of the two."""

    path: str
    manifest: dict
    done: set = field(default_factory=set)

    def read(self, rel: str) -> bytes:
        expected = self.manifest["files"].get(rel)
        if expected is None:
            raise ArtifactError(f"{self.path}: file {rel} is not in the manifest; an artifact must hold "
                                "only the files it was saved with")
        data = storage.read_bytes(storage.join(self.path, rel))
        _check_checksum(self.path, rel, storage.sha256_bytes(data), expected)
        self.done.add(rel)
        return data

    def json(self, rel: str) -> dict:
        try:
            return json.loads(self.read(rel).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ArtifactError(f"{self.path}/{rel}: not valid JSON ({err})") from err

    def check_the_rest(self) -> None:
        """The files loading did not read (a member ensemble.json does not list) are checked too."""
        for rel, sha in self.manifest["files"].items():
            if rel not in self.done:
                _check_checksum(self.path, rel, storage.sha256_file(storage.join(self.path, rel)), sha)


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


@dataclass
class Member:
    name: str
    settings: dict  # member.json
    models: list[torch.nn.Module]  # one per fold, eval mode
    rank_reference: Optional[np.ndarray] = None

    @property
    def fold_ids(self) -> list[int]:
        """The fold of each model in `models` (fold3.safetensors -> 3), in their order."""
        return [int(_FOLD_FILE.match(Path(rel).name).group(1)) for rel in self.settings["folds"]]

    @property
    def feature_config(self):
        return Config.from_dict({"features": self.settings["features"]}).features


@dataclass
class Artifact:
    path: str
    combiner: str
    weights: Optional[list[float]]
    classes: list[str]
    layout: str
    members: list[Member]
    scores: dict = field(default_factory=dict)
    raytag_version: str = ""
    distilled: Optional[dict] = None  # a distilled student: its teacher and training record
    created: str = ""  # when it was saved (its manifest's, read with the files loaded)

    def combine(self, member_probs: list[np.ndarray]) -> np.ndarray:
        """Combine per-member probabilities (each (clips, classes)) with the saved combiner."""
        refs = [m.rank_reference for m in self.members] if self.combiner == "rank" else None
        return combine(self.combiner, np.stack(member_probs), self.weights, refs).astype(np.float32)

    def predict_files(self, paths, batch_size: int = 32, progress: bool = False, device: str = "cpu"):
        """Tag audio files: (probs DataFrame indexed by file, classes as columns;
        failures DataFrame file, reason, retry). Unreadable files are only in `failures`.
        `device` must be the one the artifact was loaded on."""
        return predict_files(self, paths, batch_size=batch_size, progress=progress, device=device)


def probability_teacher(art: Artifact) -> Artifact:
    """The teacher whose outputs are targets: the artifact itself, but for a rank mean, the
    plain mean of its members' probabilities. Mean percentile ranks order clips within a
    class as lwlrap wants, but they are not probabilities (about uniform on [0, 1] for
    every class), so as BCE targets they would teach every class at ~0.5 (on the dev
    benchmark a student of a rank teacher scored 0.42 test lwlrap, its teacher 0.64)."""
    if art.combiner != "rank":
        return art
    return dataclasses.replace(art, combiner="mean", weights=None)


def load_artifact(path, device: str = "cpu") -> Artifact:
    """Verify and load an artifact folder (local path or URI)."""
    path = str(path)
    if not storage.is_dir(path):
        if storage.exists(path):  # e.g. an audio file given first, the artifact forgotten
            raise ArtifactError(f"{path}: is a file, not an artifact folder; give the artifact's folder "
                                "(made by `raytag train`, `ensemble`, `distill` or `pull`)")
        raise ArtifactError(f"{path}: no such artifact folder")
    manifest = _check_file_list(path)
    files = _CheckedFiles(path, manifest)
    ens = files.json(ENSEMBLE)
    for key in ("combiner", "members", "classes", "layout"):
        if key not in ens:
            raise ArtifactError(f"{path}/{ENSEMBLE}: '{key}' is missing")
    if ens["combiner"] not in COMBINERS:
        raise ArtifactError(f"{path}/{ENSEMBLE}: unknown combiner {ens['combiner']!r}")
    members = []
    for name in ens["members"]:
        if not isinstance(name, str) or safe_name(name) != name:
            raise ArtifactError(f"{path}/{ENSEMBLE}: bad member name {name!r}")
        settings = files.json(f"members/{name}/{MEMBER}")
        if list(settings.get("classes", [])) != list(ens["classes"]):
            raise ArtifactError(f"{path}/members/{name}/{MEMBER}: class list differs from {ENSEMBLE}")
        try:
            settings["model"] = saved_model_settings(settings["model"])  # a member saved before a default changed
            cfg = Config.from_dict({"features": settings["features"], "model": settings["model"]})
        except (ConfigError, KeyError) as err:
            raise ArtifactError(f"{path}/members/{name}/{MEMBER}: bad settings: {err}") from err
        in_channels, n_bins = frontend_shape(cfg.features)
        models = []
        for rel in settings["folds"]:
            # member.json names its files: only files inside the member folder that the
            # manifest vouches for are read
            storage.safe_join(storage.join(path, "members", name), rel,  # no name or link out of the folder
                              where=f"{path}/members/{name}/{MEMBER} folds", error=ArtifactError)
            in_artifact = f"members/{name}/{storage.safe_relpath(rel)}"
            if in_artifact not in manifest["files"]:
                raise ArtifactError(f"{path}/members/{name}/{MEMBER}: fold file {rel!r} is not in the manifest")
            where = f"{path}/members/{name}/{rel}"
            state = _check_state_dict(files.read(in_artifact), where)
            try:
                model = build_model(cfg.model, len(ens["classes"]), in_channels, n_bins)
                model.load_state_dict(state, strict=True)
            except (RuntimeError, RaytagError) as err:
                raise ArtifactError(f"{where}: weights do not fit the model in member.json: {err}") from err
            models.append(model.to(device).eval())
        ref = None
        if ens["combiner"] == "rank":
            data = files.read(f"members/{name}/{RANK_REFERENCE}")
            ref = _check_state_dict(data, f"{path}/members/{name}/{RANK_REFERENCE}")["quantiles"].numpy()
        members.append(Member(name=name, settings=settings, models=models, rank_reference=ref))
    files.check_the_rest()
    return Artifact(
        path=path,
        combiner=ens["combiner"],
        weights=ens.get("weights"),
        classes=list(ens["classes"]),
        layout=ens["layout"],
        members=members,
        scores=ens.get("scores", {}),
        raytag_version=manifest.get("raytag_version", ""),
        distilled=ens.get("distilled"),
        created=manifest.get("created", ""),
    )


def artifact_size(path: str) -> int:
    """Bytes of every file in the artifact (manifest included)."""
    return sum(storage.size(storage.join(path, rel)) for rel in storage.list_files(path))


def describe(artifact: Artifact) -> pd.DataFrame:
    """One row per member: name, model, features, folds, weight, cv_lwlrap."""
    rows = []
    for i, m in enumerate(artifact.members):
        rows.append({
            "member": m.name,
            "model": m.settings["model"]["name"],
            "features": m.settings["features"]["kind"],
            "folds": len(m.models),
            "weight": None if artifact.weights is None else artifact.weights[i],
            "cv_lwlrap": m.settings.get("cv_lwlrap"),
        })
    return pd.DataFrame(rows)
