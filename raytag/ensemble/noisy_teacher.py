"""`train.noisy_teacher`: a finished run's models teach the noisy clips' targets, fold by fold.

Fold k's model trains each noisy clip towards `label_weight` x its given labels + the rest x
the teacher's prediction of that clip from the teacher's own fold-k models (each member's
fold-k model, combined as the teacher's artifact combines, `fold_safe_teacher`). Those models
trained on the same curated clips as fold k's model and never on fold k's held-out ones, so
the held-out score stays out of sample. A teacher whose folds differ from the run's (another
cv.seed, n_folds, clip groups or curated set) would leak the held-out labels through the
targets, and is refused.

This is the FAT2019 winners' second round, an ensemble's predictions as the noisy set's
labels, and Noisy Student's next generation (Xie et al. 2020) with the labels kept in the mix.
The teacher's fold models run on the noisy clips once: the predictions are cached in the
feature cache (`noisy_teachers/<key>.npz`), keyed by the teacher's manifest, its members' front
ends as the feature store keys them (`shard_key`: settings, decoder version, librosa), the folds
and the noisy files (path, size, modification and change time: storage.local_file_stamp), so
every member of a `raytag train` run, and a rerun, reuse them, and an upgrade that decodes or
featurises otherwise, or audio replaced in place, does not.

The training engine sits below this package, so `fit_pipeline` takes `noisy_teacher_targets`
as an argument (`noisy_teacher=`) from the commands that train (`raytag train`, the members
of a run, `raytag tune`'s trials); it never imports it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from raytag import storage
from raytag.config import Config
from raytag.ensemble.artifact import MANIFEST, Artifact, experiment_artifact, load_artifact, probability_teacher
from raytag.ensemble.crop_targets import held_out_folds
from raytag.ensemble.tagging import predict_files_each
from raytag.errors import RaytagError
from raytag.features.store import shard_key
from raytag.training.outputs import OOF_PREDICTIONS

log = logging.getLogger(__name__)

CACHE_DIR = "noisy_teachers"


def teacher_artifact_path(ref: str) -> str:
    """The artifact `ref` names: an artifact folder itself, or a run's or sweep's folder (its
    ensemble, else its own artifact, as `raytag distill` and `predict` take them)."""
    if storage.exists(storage.join(ref, MANIFEST)):
        return ref
    if not storage.is_dir(ref):
        raise RaytagError(f"train.noisy_teacher.artifact: {ref}: no such folder; give a finished `raytag train` "
                          "run's folder (<storage>/<name>), a sweep's, or an artifact folder")
    path = experiment_artifact(ref)
    if path is None:
        raise RaytagError(f"train.noisy_teacher.artifact: {ref} holds no artifact (no finished `raytag train` "
                          "run or `raytag ensemble` there)")
    return path


def teacher_identity(artifact_path: str) -> str:
    """The teacher by its contents: the SHA-256 of every file its manifest lists (not the
    manifest's date), so the same teacher named by another path is the same, and a teacher
    saved again with other members or weights is not."""
    listed = json.loads(storage.read_text(storage.join(artifact_path, MANIFEST))).get("files") or {}
    digest = hashlib.sha256(json.dumps(listed, sort_keys=True).encode()).hexdigest()[:16]
    return f"sha256:{digest} (teacher artifact of {len(listed)} files)"


def fold_safe_teacher(art: Artifact) -> Artifact:
    """The artifact as a fold's teacher: probabilities (`probability_teacher`: a rank mean as
    the plain mean), and fitted weights dropped for the plain mean too. The ensemble job
    refits `weighted`'s weights on every fold's out-of-fold labels, fold k's held-out clips
    included, so fold k's targets would be tuned on what fold k is scored on."""
    art = probability_teacher(art)
    if art.combiner == "weighted":
        log.warning("train.noisy_teacher: %s combines its members with weights fitted on every fold's held-out "
                    "labels; as a fold's teacher its members are averaged instead", art.path)
        return dataclasses.replace(art, combiner="mean", weights=None)
    return art


def teacher_fold_ids(art: Artifact) -> dict[str, dict[int, int]]:
    """Each member's {fold id: index of its model in member.models}."""
    return {m.name: {fold: i for i, fold in enumerate(m.fold_ids)} for m in art.members}


def check_teacher_folds(art: Artifact, plan) -> None:
    """Refuse a teacher whose fold models do not hold out exactly the run's folds: each
    member's out-of-fold predictions (its trial's oof.parquet) must put every curated clip of
    each of the run's folds in that fold, and no other clip."""
    if list(art.classes) != list(plan.classes):
        raise RaytagError(f"train.noisy_teacher: {art.path} tags other classes than this dataset's; a teacher "
                          "must be a run on the same dataset")
    run_folds = {f: set(c for c, k in zip(plan.curated_ids, plan.curated_fold) if k == f) for f in plan.folds}
    fold_ids = teacher_fold_ids(art)
    for member in art.members:
        have = fold_ids[member.name]
        missing = [f for f in plan.folds if f not in have]
        if missing:
            raise RaytagError(f"train.noisy_teacher: member {member.name} of {art.path} has no model of fold(s) "
                              f"{missing}; the teacher must have trained every fold this run trains")
        source = member.settings.get("source")
        oof_path = storage.join(source, OOF_PREDICTIONS) if source else None
        if not oof_path or not storage.exists(oof_path):
            raise RaytagError(f"train.noisy_teacher: member {member.name}'s out-of-fold predictions ({oof_path}) "
                              "are not there, so its folds cannot be checked against this run's; use the "
                              "teacher where its run's outputs are")
        held_out = held_out_folds(source, noisy=False)
        for fold, clips in run_folds.items():
            theirs = {str(clip) for clip, k in held_out.items() if k == fold}
            if theirs != clips:
                raise RaytagError(
                    f"train.noisy_teacher: {member.name}'s fold {fold} held out {len(theirs)} curated clips, this "
                    f"run's fold {fold} holds {len(clips)} ({len(theirs ^ clips)} differ): its fold-{fold} model "
                    "trained on clips this run scores, which would leak their labels into the targets. Train "
                    "the teacher with the same cv settings (n_folds, seed, clip_groups) on the same dataset")


def fold_teachers(art: Artifact, folds: list[int]) -> list[Artifact]:
    """One artifact per fold: each member reduced to its model of that fold. A fold the
    teacher has no model of (cv.refit's model, on every curated clip: any teacher is out of
    sample for it, as it has no held-out clips) is taught by all the teacher's models."""
    index = teacher_fold_ids(art)

    def models(m, f):
        return [m.models[index[m.name][f]]] if f in index[m.name] else list(m.models)

    return [dataclasses.replace(art, members=[dataclasses.replace(m, models=models(m, f)) for m in art.members])
            for f in folds]


def cache_key(art: Artifact, folds: list[int], noisy_ids: list[str], paths: list[str]) -> str:
    """The teacher (its manifest and combiner), each member's front end as this code runs it
    (the feature store's key: a new decoder or librosa predicts again), the folds and the
    noisy files as they are now (path, size, modification and change time: audio replaced in
    place is predicted again, even with its size and mtime kept, as `cp -p` does)."""
    digest = hashlib.sha256(storage.sha256_file(storage.join(art.path, MANIFEST)).encode())
    front_ends = [shard_key(m.feature_config) for m in art.members]
    files = [(p, *storage.local_file_stamp(p)) for p in paths]  # missing: the prediction reports it
    digest.update(repr((art.combiner, art.weights, front_ends, folds, noisy_ids, files)).encode())
    return digest.hexdigest()[:20]


def noisy_teacher_targets(cfg: Config, plan, dataset, cache_root: str,
                          progress: bool = False) -> tuple[dict[int, np.ndarray], str]:
    """({model fold: (noisy clips, classes) float32 targets}, the teacher's identity): the
    targets aligned with plan.noisy_ids, the given labels and the teacher's fold predictions
    blended by label_weight. `fit_pipeline(noisy_teacher=...)` calls it."""
    setting = cfg.train.noisy_teacher
    path = teacher_artifact_path(setting.artifact)
    loaded = load_artifact(path)
    art = fold_safe_teacher(loaded)
    check_teacher_folds(art, plan)
    path_of = dict(zip(dataset.clips["clip_id"], dataset.clips["path"].astype(str)))
    paths = [path_of[c] for c in plan.noisy_ids]
    predictions = _cached_predictions(art, list(plan.model_folds), list(plan.noisy_ids), paths, cache_root, progress)
    w = float(setting.label_weight)
    targets = {f: (w * plan.noisy_y + (1 - w) * p).astype(np.float32) for f, p in predictions.items()}
    identity = teacher_identity(path)
    if loaded.combiner == "weighted":  # targets unlike those of the same teacher before fold_safe_teacher
        identity += " as the mean of its members (fitted weights dropped)"
    return targets, identity


def _cached_predictions(art: Artifact, folds: list[int], noisy_ids: list[str], paths: list[str], cache_root: str,
                        progress: bool) -> dict[int, np.ndarray]:
    path = Path(cache_root) / CACHE_DIR / f"{cache_key(art, folds, noisy_ids, paths)}.npz"
    if path.exists():
        try:
            with np.load(path) as cached:
                return {f: cached[f"fold{f}"] for f in folds}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:  # cut short by a kill: made again
            log.warning("%s: unreadable (%s); the teacher's predictions are made again", path, err)
    log.info("noisy teacher %s: %d fold(s) x %d member(s) on %d noisy clips", art.path, len(folds),
             len(art.members), len(paths))
    probs, failures = predict_files_each(fold_teachers(art, folds), paths, progress=progress)
    if len(failures):  # the store decoded these clips, so the same decoder should too
        first = failures.iloc[0]
        raise RaytagError(f"train.noisy_teacher: {len(failures)} noisy clip(s) the feature store took could not be "
                          f"tagged by the teacher, e.g. {first['file']}: {first['reason']}")
    out = {f: p.loc[paths].to_numpy(np.float32) for f, p in zip(folds, probs)}
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.write_local_atomically(path, lambda fh: np.savez(fh, **{f"fold{f}": v for f, v in out.items()}))
    return out
