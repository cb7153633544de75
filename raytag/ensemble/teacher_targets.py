"""What the teacher says about each training and test clip, cached in
`<experiment>/distill/` for `raytag distill` (raytag.ensemble.distill trains the student on it).

The teacher is the experiment's artifact (`experiment_artifact`): a sweep's ensemble, or a
`raytag train` run's own (the default's members), whose members' outputs hold the same
out-of-fold predictions a sweep's trials do.

Teacher targets, one row per training clip (`teacher.parquet`: `teacher_targets`):
- curated clips: the ensemble's out-of-fold predictions, i.e. each member's OOF
  predictions (its trial's oof.parquet) combined with the artifact's own combiner, so no
  curated target comes from a model that trained on that clip;
- noisy clips: likewise from each member's noisy_oof.parquet when every member trained
  with `cv.noisy_folds` (each noisy clip predicted by the fold model that left it out);
- else, and for clips lacking an out-of-fold prediction of some member (a sweep that
  trained only some folds: `cv.folds`): the ensemble artifact's predictions
  (`predict_files`, the predict path), from models that trained on the clip. On the dev
  benchmark students did as well with these as with out-of-fold noisy targets (speed.md).
The file is reused while the teacher (its manifest, its members' out-of-fold files and
their front ends' code: `shard_key`) and the dataset (its folder, curated and noisy clips,
their labels and audio files) are unchanged (the noisy pass is the expensive part). So are
the teacher's predictions on the test clips (`teacher_test.npz`: `teacher_test_predictions`),
so trying another student costs its training and its own test pass, and the teacher along
each clip for `--target-grain segment` (`teacher_segments.npz`: `teacher_grid`). A clip the
teacher could not tag (e.g. refused for memory) has no target, is named in a warning on
every run, and is kept in the cache with its failure: a later run tags only the clips whose
failure may pass (memory, I/O) and merges them in, rather than the whole noisy set again.
"""
from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from raytag import storage
from raytag.ensemble.artifact import MANIFEST, Artifact, probability_teacher
from raytag.ensemble.crop_targets import HOP_FRACTION, held_out_folds, teacher_segments
from raytag.ensemble.job import load_trial
from raytag.ensemble.tagging import FAILURE_COLUMNS, predict_files
from raytag.errors import RaytagError
from raytag.features.store import shard_key
from raytag.training.outputs import NOISY_OOF, OOF_PREDICTIONS, read_noisy_oof, read_predictions, write_parquet

log = logging.getLogger(__name__)

TEACHER = "teacher.parquet"
SEGMENTS = "teacher_segments.npz"  # the teacher along each clip (--target-grain segment), cached
SOURCE_COLUMN = "target_source"  # "oof" (out-of-fold: curated; noisy with cv.noisy_folds) or "ensemble"
# teacher.parquet's row for a clip the teacher could not tag: no scores, its failure in these columns
UNTAGGED = "untagged"
UNTAGGED_COLUMNS = {"file": "untagged_file", "reason": "untagged_reason", "retry": "untagged_retry"}
UNTAGGED_NAMED = 5  # failures named in the warning (a count for the rest)
TEACHER_TEST = "teacher_test.npz"  # the teacher's predictions on the test files, cached
# in the keys of teacher.parquet and teacher_test.npz. 2: a cache made before may lack clips
# the teacher refused for memory it only seemed to lack (a cap that counted the page cache)
CACHE_VERSION = 2


# ----------------------------------------------------------------------------- cache keys
def manifest_id(artifact_path: str) -> str:
    return storage.sha256_file(storage.join(artifact_path, MANIFEST))


def _dataset_id(dataset) -> str:
    """Which clips targets are for: the dataset's folder and a hash of its curated and noisy
    clip ids, labels and audio files as they are now (path, size, modification and change
    time: storage.local_file_stamp, as the noisy teacher's cache tells a file replaced in
    place, `cp -p` included), so another --data, or the same one grown, relabelled or with
    audio replaced, is not taught with old targets."""
    root = str(dataset.root)
    if not storage.is_uri(root):
        root = str(Path(root).resolve())
    clips = training_clips(dataset)
    digest = hashlib.sha256()
    for clip_id, labels, path in sorted(zip(clips["clip_id"], clips["labels"], clips["path"].astype(str))):
        digest.update(f"{clip_id}\t{','.join(sorted(labels))}\t{path}\t{storage.local_file_stamp(path)}\n".encode())
    return f"{root}#{digest.hexdigest()[:16]}"


def _files_id(paths) -> str:
    """A hash of files as they are now (path, size, modification and change time)."""
    digest = hashlib.sha256()
    for path in sorted(str(p) for p in paths):
        digest.update(f"{path}\t{storage.local_file_stamp(path)}\n".encode())
    return digest.hexdigest()[:16]


def _teacher_id(art: Artifact) -> str:
    """The teacher as its targets depend on it: its manifest and combiner, its members'
    out-of-fold files (a member's outputs written again give other targets) and the code of
    their front ends (the feature store's key: settings, FEATURES_VERSION, librosa), which
    the artifact's own predictions go through."""
    outputs = [(m.name, _out_of_fold_stamps(m.settings.get("source"))) for m in art.members]
    front_ends = sorted({shard_key(m.feature_config) for m in art.members})
    digest = hashlib.sha256(repr((outputs, front_ends)).encode()).hexdigest()[:16]
    return f"{manifest_id(art.path)}:{art.combiner}:{digest}"


@dataclass(frozen=True)
class CacheIds:
    """The teacher's and the dataset's parts of the caches' keys (`_teacher_id`,
    `_dataset_id`), worked out once per `raytag distill` run and handed to each cache: the
    dataset's stats every training file."""
    teacher: str
    dataset: str

    @classmethod
    def of(cls, art: Artifact, dataset) -> "CacheIds":
        return cls(_teacher_id(probability_teacher(art)), _dataset_id(dataset))


def _out_of_fold_stamps(source) -> list:
    """(name, (size, mtime)) of a member's out-of-fold files; none without its outputs
    (teacher_targets then refuses the member)."""
    if not source:
        return []
    return sorted((name, stamp) for name, stamp in storage.file_stamps(source).items()
                  if name in (OOF_PREDICTIONS, NOISY_OOF))


def training_clips(dataset) -> pd.DataFrame:
    """The clips a student trains on: curated, then noisy."""
    return pd.concat([dataset.split("curated"), dataset.split("noisy")], ignore_index=True)


# ----------------------------------------------------------------------------- training clips
def teacher_targets(art: Artifact, dataset, out_dir: str, batch_size: int = 32,
                    progress: bool = False, noisy_targets: str = "oof",
                    ids: Optional[CacheIds] = None) -> pd.DataFrame:
    """DataFrame indexed by clip_id: one column per class and `target_source`; out-of-fold
    rows ("oof") from the members' out-of-fold predictions on curated clips and, where every
    member has them (cv.noisy_folds), on noisy clips, combined as the artifact combines (a
    rank mean as the plain mean: `probability_teacher`); the other clips' rows
    ("ensemble") from the artifact's predictions (likewise). A clip the artifact could not
    tag has no row (never zeros); its failure is logged on every run (`_warn_untagged`).
    Cached in `<out_dir>/teacher.parquet` with those failures (`_cached_teacher`): a later
    run for the same key tags only the clips whose failure may pass (memory, I/O) and any
    the table lacks, and merges them in. `ids`: the cache keys' parts (CacheIds.of),
    when the caller has them."""
    path = storage.join(out_dir, TEACHER)
    ids = ids or CacheIds.of(art, dataset)
    art = probability_teacher(art)
    # nor another teacher's, kind's or dataset's
    key = f"v{CACHE_VERSION}:{ids.teacher}:{noisy_targets}:{ids.dataset}"
    cached = _cached_teacher(path, key)
    if cached is None:
        table, failures = _out_of_fold_rows(art, dataset, noisy_targets), _no_failures()
    else:
        table, failures = cached
    # the rest (noisy clips without noisy folds; clips some member has no out-of-fold
    # prediction of, as in a sweep that trained only some folds): the artifact's own predictions
    rest = training_clips(dataset)
    rest = rest[~rest["clip_id"].isin(table.index)]
    paths = _worth_tagging(list(rest["path"].astype(str)), failures)
    if paths:
        probs, new_failures = predict_files(art, paths, batch_size=batch_size, progress=progress)
        by_path = dict(zip(rest["path"].astype(str), rest["clip_id"]))
        probs.index = pd.Index([by_path[p] for p in probs.index], name="clip_id")
        table = _in_training_order(_concat([table, probs.assign(**{SOURCE_COLUMN: "ensemble"})]), dataset)
        failures = _after_retry(failures, paths, new_failures)
    if paths or cached is None:
        storage.makedirs(out_dir)
        _save_teacher(path, key, table, failures, dataset, list(art.classes))
    _warn_untagged(failures, "training")
    return table


def _out_of_fold_rows(art: Artifact, dataset, noisy_targets: str) -> pd.DataFrame:
    """teacher_targets' "oof" rows: the clips every member has an out-of-fold prediction of."""
    classes = list(art.classes)
    sources = []
    for m in art.members:
        source = m.settings.get("source")
        if not source or not storage.exists(source):
            raise RaytagError(
                f"{art.path}: member {m.name}'s trial outputs ({source}) are not there; distillation "
                "takes the curated targets from each member's out-of-fold predictions: run it where "
                "the sweep's results are"
            )
        sources.append(source)
    curated, noisy = dataset.split("curated"), dataset.split("noisy")
    if curated.empty and noisy.empty:
        raise RaytagError(f"{dataset.root}: no curated or noisy clips to distil on")
    rows = [_no_rows(classes, "clip_id").assign(**{SOURCE_COLUMN: "oof"})]
    for clips, member_preds in (
        (curated, [load_trial(s).oof for s in sources]),
        (noisy, [read_noisy_oof(s) if noisy_targets == "oof" else None for s in sources]),
    ):
        if any(p is None for p in member_preds):  # a member trained without cv.noisy_folds
            continue
        common = clips["clip_id"]
        for p in member_preds:
            common = common[common.isin(p.index)]
        if len(common):
            oof = art.combine([p.loc[common, classes].to_numpy(np.float64) for p in member_preds])
            rows.append(pd.DataFrame(oof, index=pd.Index(common, name="clip_id"), columns=classes)
                        .assign(**{SOURCE_COLUMN: "oof"}))
    return _concat(rows)


def _concat(frames: list) -> pd.DataFrame:
    """pd.concat of the frames with rows (an empty one only when all are: pandas warns
    about empty entries' dtypes)."""
    with_rows = [f for f in frames if len(f)]
    return pd.concat(with_rows) if with_rows else frames[0]


def _in_training_order(table: pd.DataFrame, dataset) -> pd.DataFrame:
    """The "oof" rows, then the "ensemble" rows in the dataset's order: the order one run
    gives, so a table completed over several runs (clips tagged on a later try) teaches the
    student as one made at once would (its crops follow the clips' order)."""
    position = {c: i for i, c in enumerate(training_clips(dataset)["clip_id"])}
    oof = table[table[SOURCE_COLUMN] == "oof"]
    ensemble = table[table[SOURCE_COLUMN] != "oof"]
    ensemble = ensemble.iloc[np.argsort([position[c] for c in ensemble.index], kind="stable")]
    return _concat([oof, ensemble])


def _no_rows(classes, index_name: str) -> pd.DataFrame:
    """An empty table of predictions (float columns, one per class)."""
    return pd.DataFrame(np.zeros((0, len(classes))), columns=list(classes), index=pd.Index([], name=index_name))


def _no_failures() -> pd.DataFrame:
    return pd.DataFrame(columns=FAILURE_COLUMNS).astype({"retry": bool})


def _worth_tagging(paths: list[str], failures: pd.DataFrame) -> list[str]:
    """`paths` less the files the teacher failed on in a way another try would repeat (a
    damaged file, not retry): their failure stays recorded until the file changes, which
    changes the cache's key."""
    for_good = set(failures.loc[~failures["retry"].astype(bool), "file"])
    return [p for p in paths if p not in for_good]


def _after_retry(failures: pd.DataFrame, tried: list[str], new_failures: pd.DataFrame) -> pd.DataFrame:
    """The failures once the files `tried` were tagged again: theirs replaced by this try's."""
    kept = failures[~failures["file"].isin(tried)]
    return _concat([kept, new_failures]).reset_index(drop=True).astype({"retry": bool})


def _warn_untagged(failures: pd.DataFrame, what: str) -> None:
    """Log the files the teacher could not tag (how many, the first few as file: reason, and
    how many another try may pass: the next run tags those again, and only those)."""
    if failures.empty:
        return
    named = "; ".join(f"{f}: {r}" for f, r in zip(failures["file"][:UNTAGGED_NAMED], failures["reason"]))
    more = f" (and {len(failures) - UNTAGGED_NAMED} more)" if len(failures) > UNTAGGED_NAMED else ""
    retry = int(failures["retry"].astype(bool).sum())
    log.warning("%d %s file(s) the teacher could not tag have no prediction and are left out: %s%s%s", len(failures),
                what, named, more,
                f"; {retry} of them may pass on another try (memory, I/O): the next run tags those again, and only "
                "those" if retry else "")


def _save_teacher(path: str, key: str, table: pd.DataFrame, failures: pd.DataFrame, dataset,
                  classes: list[str]) -> None:
    """teacher.parquet: the table's rows, and one row per clip the teacher could not tag
    (SOURCE_COLUMN UNTAGGED, no scores, its failure in the UNTAGGED_COLUMNS)."""
    clips = training_clips(dataset)
    clip_of = dict(zip(clips["path"].astype(str), clips["clip_id"]))
    untagged = failures.rename(columns=UNTAGGED_COLUMNS).assign(
        clip_id=[clip_of[f] for f in failures["file"]], **{SOURCE_COLUMN: UNTAGGED})
    frame = _concat([table.reset_index(), untagged]).reset_index(drop=True)
    for column in classes:  # no scores where no clip was tagged: still one column per class, or it reads as damaged
        if column not in frame.columns:
            frame[column] = np.nan
    for column in UNTAGGED_COLUMNS.values():  # on every row: empty where the clip was tagged
        if column not in frame.columns:
            frame[column] = None
    frame[UNTAGGED_COLUMNS["retry"]] = frame[UNTAGGED_COLUMNS["retry"]].eq(True)
    frame["artifact_manifest"] = key
    write_parquet(frame, local_output(path), classes)


def _cached_teacher(path: str, key: str) -> Optional[tuple[pd.DataFrame, pd.DataFrame]]:
    """(the cached teacher table, the failures recorded with it: FAILURE_COLUMNS) when it was
    made for `key` (which holds the dataset's clips: `_dataset_id`); None when there is
    none, it is another's, or it cannot be read (then it is made again, not a crash on every
    rerun). A clip the teacher could not tag has a row of its own (SOURCE_COLUMN UNTAGGED)
    with its failure, so a rerun knows what to try again and what to report; a table
    written before those rows were kept simply lacks such clips, which teacher_targets
    then tags."""
    if not storage.exists(path):
        return None
    try:
        cached, _ = read_predictions(path)
    except (OSError, ValueError, RaytagError) as err:  # e.g. cut short by a kill (pyarrow's ArrowInvalid)
        log.warning("%s: unreadable (%s); the teacher's targets are computed again", path, err)
        return None
    if "artifact_manifest" not in cached.columns or not (cached["artifact_manifest"] == key).all():
        return None
    cached = cached.drop(columns=["artifact_manifest"]).set_index("clip_id")
    untagged = cached[SOURCE_COLUMN] == UNTAGGED
    failures = _no_failures()
    if untagged.any():
        failures = (cached.loc[untagged, list(UNTAGGED_COLUMNS.values())]
                    .rename(columns={v: k for k, v in UNTAGGED_COLUMNS.items()})
                    .reset_index(drop=True).astype({"retry": bool}))
    return cached.loc[~untagged].drop(columns=[c for c in UNTAGGED_COLUMNS.values() if c in cached.columns]), failures


# ----------------------------------------------------------------------------- test clips
def teacher_test_predictions(teacher: Artifact, paths: list[str], out_dir: str, batch_size: int,
                             progress: bool, teacher_id: Optional[str] = None) -> pd.DataFrame:
    """The teacher's predictions on the test files (indexed by path, in the order of `paths`;
    the files it could read), from `<out_dir>/teacher_test.npz` while the teacher and the
    files are unchanged: the full ensemble (K x F networks) on every test file is the slow
    part of a student's test pass, and the same for every student of that teacher. The
    files it could not tag are kept with it (their failures), and a later run tags only
    those another try may pass (memory, I/O), as `teacher_targets` does. `teacher_id`:
    `_teacher_id(teacher)` (CacheIds.teacher), when the caller has it."""
    cache = local_output(storage.join(out_dir, TEACHER_TEST))
    key = f"v{CACHE_VERSION}:{teacher_id or _teacher_id(teacher)}:{_files_id(paths)}"
    paths = [str(p) for p in paths]
    cached = _cached_test_predictions(cache, key, teacher.classes)
    if cached is None:
        probs, failures = _no_rows(teacher.classes, "file"), _no_failures()
    else:
        probs, failures = cached
    to_tag = _worth_tagging([p for p in paths if p not in probs.index], failures)
    if to_tag:
        new, new_failures = predict_files(teacher, to_tag, batch_size=batch_size, progress=progress)
        probs = _concat([probs, new])
        probs = probs.loc[[p for p in paths if p in probs.index]]
        failures = _after_retry(failures, to_tag, new_failures)
    if to_tag or cached is None:
        _save_npz(cache, key=np.array(key), files=np.array(list(probs.index), dtype=str),
                  probs=probs.to_numpy(np.float64), failed_files=np.array(list(failures["file"]), dtype=str),
                  failed_reasons=np.array(list(failures["reason"]), dtype=str),
                  failed_retry=failures["retry"].to_numpy(bool))
    _warn_untagged(failures, "test")
    return probs


def _cached_test_predictions(cache: Path, key: str, classes: list[str]) -> Optional[tuple[pd.DataFrame,
                                                                                          pd.DataFrame]]:
    """(the cached teacher's test predictions, the failures kept with them) when made for
    `key`; None when there are none, they are another teacher's or files', or they cannot be
    read (then made again). A cache written before failures were kept has none: a file it
    lacks is tagged again."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as saved:
            if str(saved["key"]) != key:
                return None
            files = pd.Index([str(f) for f in saved["files"]], name="file")
            probs = pd.DataFrame(saved["probs"], index=files, columns=list(classes))
            failures = _no_failures()
            if "failed_files" in saved.files and len(saved["failed_files"]):
                failures = pd.DataFrame({"file": [str(f) for f in saved["failed_files"]],
                                         "reason": [str(r) for r in saved["failed_reasons"]],
                                         "retry": saved["failed_retry"].astype(bool)}, columns=FAILURE_COLUMNS)
            return probs, failures
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:  # cut short by a kill
        log.warning("%s: unreadable (%s); the teacher's test predictions are made again", cache, err)
        return None


# ----------------------------------------------------------------------------- along each clip (--target-grain segment)
def teacher_grid(art: Artifact, features, store, dataset, clip_ids: list[str], crop: int, noisy_targets: str,
                 batch_size: int, out_dir: str, ids: Optional[CacheIds] = None) -> dict:
    """{clip: (starts, probs)}: the teacher along each of `clip_ids` at every quarter-crop of
    the student's features (raytag.ensemble.crop_targets), cached in
    `<out_dir>/teacher_segments.npz` for this teacher and crop; a clip the cache lacks, e.g.
    one the teacher tagged on a later try, is computed and added, the others reused.
    `ids`: the cache keys' parts (CacheIds.of), when the caller has them."""
    teacher = probability_teacher(art)
    ids = ids or CacheIds.of(teacher, dataset)
    key = f"{ids.teacher}:{noisy_targets}:{crop}:{HOP_FRACTION}:{ids.dataset}"
    cache = local_output(storage.join(out_dir, SEGMENTS))
    segments = _cached_segments(cache, key)
    missing = [c for c in clip_ids if c not in segments]
    if missing:
        # every member has its trial outputs: teacher_targets, which ran first, refuses a teacher without
        held_out = [held_out_folds(m.settings["source"], noisy=noisy_targets == "oof") for m in teacher.members]
        segments.update(teacher_segments(teacher.members, teacher.combine, store, features, missing,
                                         crop, held_out, batch_size=batch_size))
        clip_order = list(segments)
        arrays = {f"s{i}": segments[c][0] for i, c in enumerate(clip_order)}
        arrays.update({f"p{i}": segments[c][1] for i, c in enumerate(clip_order)})
        _save_npz(cache, key=np.array(key), clip_ids=np.array(clip_order), **arrays)
    return segments


def _cached_segments(cache: Path, key: str) -> dict:
    """{clip: (starts, probs)} of the cached teacher grid when made for `key`; {} when there
    is none, it is another teacher's, crop's or dataset's, or it cannot be read."""
    if not cache.is_file():
        return {}
    try:
        with np.load(cache) as saved:
            if str(saved["key"]) != key:
                return {}
            return {str(c): (saved[f"s{i}"], saved[f"p{i}"]) for i, c in enumerate(saved["clip_ids"])}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:  # damaged: computed again
        log.warning("%s: unreadable (%s); the teacher's grid is computed again", cache, err)
        return {}


# ----------------------------------------------------------------------------- files
def _save_npz(path: Path, **arrays) -> None:
    """np.savez streamed to a temporary name of this writer's own beside `path`, then renamed
    over it: a kill leaves no half cache, two writers never share a file, and the arrays are
    not first copied into memory (a segment grid is hundreds of MB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.write_local_atomically(path, lambda fh: np.savez(fh, **arrays))


def local_output(path: str):
    """The local path of a distillation output (write_parquet and safetensors write local files)."""
    if storage.is_uri(path):
        raise RaytagError(f"{path}: distillation writes its outputs to a local folder; use a local --storage")
    return Path(path)
