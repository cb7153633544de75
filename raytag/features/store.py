"""Feature store: every clip's features computed once, in parallel processes, cached on disk
and read out-of-core.

On disk, `<cache_dir>/<feature_cfg.cache_key()>/<dataset tag>/` (`store.path`), where the
dataset tag is the dataset folder's name plus a hash of its absolute path: one cache
folder serves many datasets (the demo, a benchmark, a competition set) without one
build overwriting the shards another run is reading.
    shard-<id>-<hash>.npy  float16, time-major (T, C, F): the clips of one shard,
                      concatenated; <id> names its clips (shard_id), <hash> is of its
                      contents, so a rebuild that changes a shard writes a new file and
                      never rewrites one a reader may hold
    shard-<id>.json   that shard's .npy name, index rows, decode failures, statistics sums,
                      the signature of its clips (clip_id, path, size, mtime: _clip_row)
                      and their contents (each file's change time and a blake2b of its
                      bytes: _unchanged_contents); written after the .npy, so a shard is
                      trusted only when both are complete
    index.parquet     clip_id, shard, offset, n_frames, file (every clip that decoded;
                      file: its shard's .npy)
    failed.csv        file, reason: clips that could not be decoded (left out, never zeros)
    meta.json         feature settings, (C, F), per-bin mean/std, counts; written last,
                      so its presence marks a finished store

Clips are sorted by clip_id and cut into shards of about `chunk_size` clips where their
contents say (shard_bounds: after a clip whose clip_id hashes to a multiple of a divisor,
within a least and a most size), not at every `chunk_size`-th clip: a clip added, removed
or unreadable for one build changes the shard it falls in (now and then its neighbour too),
not every shard after it. A shard is named by its clips (shard_id), not by its place in the
list, so the others keep their names and are reused. One task per shard decodes, runs the
torch front end (one thread) and writes its shard atomically (temporary file, then rename).
The tasks run in processes forked from the caller, or in Ray tasks where Ray already runs
in the calling process (see _compute_shards), always on the calling node. One process
builds a store at a time (`.build.lock` in its folder: exclusive_lock,
raytag.features.locking): builders that start together, a sweep's trials of the same
features, would each compute every shard; the later ones wait, then reuse the shards. Where
the lock cannot be had the build goes on without it (two builders then compute some shards
twice, as shards are content-addressed and written whole); a build that waited a bounded
time and goes on beside the holder takes each shard the holder finishes meanwhile (where it
computes in this process). A build that reuses every shard writes no shard or index of the
store (only, where it may, the sidecars of shards whose files' change times moved:
_unchanged_contents), so a cache the user may only read serves it; one that must write into
such a cache is refused before any work (StorageError). A rebuild reuses every shard whose
signature and key (`shard_key`: the settings, FEATURES_VERSION, FORMAT_VERSION, librosa's
version) still match, so a second build does no audio work and an interrupted build resumes
where it stopped. For a local dataset a file whose change time moved (rewritten with its
size and mtime kept, but also chmod, chown, a hard link, a rename) is hashed, and its shard
computed again only when its bytes differ from those the shard was computed from.

The cache folder is a path on each node (no URI: shards are read with os.pread). By default
it is on each node's own disk, and on a cluster each node builds its own copy at that path
(training.worker.open_node_store, where the driver's store is not found). On a file system
that the nodes mount at the same path it is shared: the nodes read the store the first of
them built, builders on several nodes take turns through the lock where it supports flock,
and a data-cache copy's change time is not checked (counts_ctime: each node's copy has its own).

Readers read only the frames asked for (`os.pread` at the clip's offset in its shard), so
no process holds the whole store: FAT2019 at 44.1 kHz, 128 mels, hop 345 is about 4.6 GB
of float16 on disk, read through the page cache. Not a memory map: a mapped page once
touched stays in the reading process's RSS, so a training worker's RSS grew with the
store (every clip is read each epoch); a read copies the frames and maps nothing. A
`FeatureStore` pickles as its path and index only; each process reopens the shards it touches.

A rebuild leaves the .npy files of the index it replaces, so a reader that opened the
store before it (a training run beside a `raytag prepare`) still reads what it indexed,
and their sidecars, so a clip missing for one build finds its shard again in the next;
files of older builds are deleted. (An older format's files, `shard-00000-...`, are also
deleted by a build that writes no index, once the index replacing them is a day old.)
A reader two rebuilds behind gets an error, never another clip's frames. A file that a
current sidecar names (a shard whose clips all failed, which no index lists; a concurrent
build's new shard) is never deleted, and an unnamed one only once STALE_AFTER_S old (its mtime), so a concurrent build may index it
first. The limit: a concurrent build whose shard another build has since replaced, and
that indexes it more than STALE_AFTER_S after writing it (or with a file server clock that
far off), may find it deleted: its readers get the "shard gone" error, and running
`raytag prepare` again rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import resource
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from raytag.cluster import is_data_copy
from raytag.cluster import materialize_data  # a dataset URI is copied to this node once
from raytag.cluster import this_node_strategy
from raytag.config import Config, FeatureConfig
from raytag.data.audio import AudioReadError, load_audio, min_samples
from raytag.data.layouts import Dataset, load_dataset
from raytag.errors import AudioDecodeError, RaytagError, StorageError
from raytag.features.frontends import build_frontend, frontend_shape
from raytag.features.locking import exclusive_lock
from raytag.session import ensure_ray
from raytag.storage import local_file_stamp, local_folder_option, write_local_atomically

log = logging.getLogger("raytag.features")

FORMAT_VERSION = 2  # 2: content-addressed shard files named in the index
# FeatureStore.identity's first word: an identity made by another rule (an older raytag's
# "sha256:", by size and mtime) cannot be compared with it (run_settings)
IDENTITY_SCHEME = "blake2b"
# Bump when decoding (raytag.data.audio) or a front end's output changes for the same
# settings: shards are reused only when their sidecar's key (settings + these) matches.
FEATURES_VERSION = 3  # 2: a truncated WAV fails (4153c85); a damaged file is not listed for retry;
# 3: a truncated RF64, W64, AIFF, AU or Ogg fails too (shards cached it as a shorter clip)
INDEX_COLUMNS = ["clip_id", "shard", "offset", "n_frames", "file"]
FAILED_COLUMNS = ["file", "reason"]
MAX_OPEN_SHARDS = 256  # per store; FSDKaggle2019 (24k clips) is ~190 shards of 128 clips
# A shard file nothing names is deleted only once this old (by mtime): younger, it may be a
# concurrent build's not yet indexed. Minutes, so a file server's clock skew does not matter.
STALE_AFTER_S = 600.0
# The files of a store cut every chunk_size-th clip (an older raytag's, `shard-00000-...`) stay
# beside the store that replaced them until its index is this old: then a build that computes
# nothing deletes them (one that writes the index does anyway), so a reader that opened the
# older store (a long training run) keeps reading it meanwhile, and its disk is not held forever.
OLDER_FORMAT_KEPT_S = 86400.0
OLDER_FORMAT_NAME = re.compile(r"shard-\d{5}[-.]")  # its shards had 5-digit numbers, not shard_ids
STD_FLOOR = 1e-5  # a constant bin (e.g. an empty mel band) gets this std, so x/std stays finite


def default_feature_cache() -> str:
    """The feature cache when no --feature-cache is given: on this node's disk (on a cluster
    each node builds its own copy there, unless that path is on a file system the nodes share).
    An empty RAYTAG_CACHE (`export RAYTAG_CACHE=` or one set from an unset variable) counts as
    unset: as a path it would mean whatever folder a command starts in."""
    return os.environ.get("RAYTAG_CACHE") or str(Path.home() / ".cache" / "raytag" / "features")


class FeatureStoreError(RaytagError):
    """A feature store folder is missing, incomplete or of another format."""


def shard_name(shard: str, digest: str) -> str:
    """The .npy file of shard `shard` (its shard_id) with these contents (`digest`: a hash of them)."""
    return f"shard-{shard}-{digest}.npy"


def _sidecar_name(shard: str) -> str:
    return f"shard-{shard}.json"


# ============================================================================ reading
class FeatureStore:
    """Read access to a finished store: `get`, `crop`, per-bin `mean`/`std`, `failed`."""

    def __init__(self, path: str | Path, index: pd.DataFrame, meta: dict, failed: pd.DataFrame):
        self.path = Path(path)
        self.meta = meta
        self.failed = failed
        self._ids = [str(c) for c in index["clip_id"]]
        self._shard = index["shard"].to_numpy(np.int64)
        self._offset = index["offset"].to_numpy(np.int64)
        self._frames = index["n_frames"].to_numpy(np.int64)
        self._files = {int(shard): str(file) for shard, file in zip(index["shard"], index["file"])}
        self._setup()

    def _setup(self):
        self._pos = {cid: i for i, cid in enumerate(self._ids)}
        self._shards: OrderedDict[int, ShardFile] = OrderedDict()  # opened on first use, least recent first
        self.build_info: dict = dict(self.meta.get("last_build", {}))
        # clip_id: blake2b of the audio file the build that returned this store computed it
        # from ({} once opened from disk or unpickled): see `identity`
        self.audio_digests: dict = {}

    # -- pickling: path + index + meta only; shard files are reopened per process --------
    def __getstate__(self):
        return {k: getattr(self, k) for k in ("path", "meta", "failed", "_ids", "_shard", "_offset", "_frames", "_files")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._setup()

    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        """Open a finished store folder (`<cache_dir>/<cache_key>`); cheap, no shard is read."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise FeatureStoreError(
                f"{path}: no finished feature store here (meta.json missing); "
                "build it with `raytag prepare` (an interrupted build resumes)"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise FeatureStoreError(
                f"{path}: feature store format {meta.get('format')!r}, this raytag reads "
                f"{FORMAT_VERSION}; run `raytag prepare` (or any command that builds features) to rebuild it"
            )
        index = pd.read_parquet(path / "index.parquet")
        failed_path = path / "failed.csv"
        failed = (pd.read_csv(failed_path, dtype=str, keep_default_na=False)
                  if failed_path.is_file() else pd.DataFrame(columns=FAILED_COLUMNS))
        return cls(path, index, meta, failed)

    # -- description ------------------------------------------------------------------
    @property
    def clip_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def shape(self) -> tuple[int, int]:
        """(channels, bins) of every clip's features."""
        c, f = self.meta["shape"]
        return int(c), int(f)

    @property
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(**self.meta["features"])

    @property
    def mean(self) -> np.ndarray:
        """Per-bin mean (C, F) over all frames of the non-test clips."""
        return np.asarray(self.meta["mean"], dtype=np.float32)

    @property
    def std(self) -> np.ndarray:
        """Per-bin std (C, F) over the same frames, floored at STD_FLOOR."""
        return np.maximum(np.asarray(self.meta["std"], dtype=np.float32), STD_FLOOR)

    def identity(self, clip_ids) -> Optional[str]:
        """What the features of `clip_ids` are, the same wherever the same audio is: this
        store's key (shard_key: the settings, FEATURES_VERSION, FORMAT_VERSION, librosa's
        version) and the contents of each clip's audio file (its blake2b), not its path or
        times, so a copy that did not keep modification times is the same. No feature bytes,
        which a store built on another node may have otherwise in the last bits. None where
        the build's digests are not known (a store opened from disk)."""
        if not self.audio_digests:
            return None
        ids = [str(c) for c in clip_ids]
        blob = json.dumps([self.meta["key"], [[c, self.audio_digests[c]] for c in ids]]).encode()
        digest = hashlib.blake2b(blob, digest_size=8).hexdigest()
        return f"{IDENTITY_SCHEME}:{digest} (audio contents of {len(ids)} clips, {self.meta['key']})"

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, clip_id) -> bool:
        return clip_id in self._pos

    def n_frames(self, clip_id: str) -> int:
        return int(self._frames[self._row(clip_id)])

    def shard_path(self, shard: int) -> Path:
        """The .npy file this store's index reads shard `shard` from."""
        return self.path / self._files[shard]

    # -- data -------------------------------------------------------------------------
    def get(self, clip_id: str) -> np.ndarray:
        """All frames of one clip, float32 (C, F, T)."""
        i = self._row(clip_id)
        return self._frames_of(i, 0, int(self._frames[i]))

    def crop(self, clip_id: str, start: int, length: int, pad_value: float = 0.0) -> np.ndarray:
        """Frames [start, start+length) of one clip, float32 (C, F, length).

        Frames past the end of a short clip are filled with `pad_value` (0 by default):
        that is padding of a clip shorter than the crop, not data and not a decode
        failure (clips that failed to decode are not in the store at all).
        """
        if start < 0 or length < 1:
            raise ValueError(f"crop of {clip_id!r}: start {start} must be >= 0 and length {length} >= 1")
        i = self._row(clip_id)
        stop = min(start + length, int(self._frames[i]))
        c, f = self.shape
        out = np.full((c, f, length), pad_value, dtype=np.float32)
        if stop > start:
            out[:, :, : stop - start] = self._frames_of(i, start, stop)
        return out

    def _frames_of(self, i: int, start: int, stop: int) -> np.ndarray:
        base = int(self._offset[i])
        block = self._shard_file(int(self._shard[i])).rows(base + start, base + stop)  # (t, C, F) float16
        return np.ascontiguousarray(block.transpose(1, 2, 0), dtype=np.float32)

    def _shard_file(self, shard: int) -> "ShardFile":
        found = self._shards.get(shard)
        if found is None:
            if len(self._shards) >= MAX_OPEN_SHARDS:  # a file descriptor each: keep within ulimit -n
                self._shards.popitem(last=False)[1].close()
            found = self._shards[shard] = ShardFile(self.shard_path(shard))
        else:
            self._shards.move_to_end(shard)
        return found

    def _row(self, clip_id: str) -> int:
        try:
            return self._pos[clip_id]
        except KeyError:
            raise KeyError(
                f"clip {clip_id!r} is not in the feature store {self.path} "
                f"(not in the dataset, or failed to decode: see failed.csv)"
            ) from None


class ShardFile:
    """One shard's .npy file, read a range of rows at a time with `os.pread` (no memory map).

    The header is parsed once; the file stays open for the life of the store. pread takes
    its offset per call, so a descriptor inherited by a forked process is still safe."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(fh)
                self.data_start = fh.tell()
            if fortran or len(shape) != 3:
                raise ValueError(f"expected a C-ordered (T, C, F) array, found shape {shape}"
                                 f"{' in Fortran order' if fortran else ''}")
            self.length, self.row_shape, self.dtype = int(shape[0]), tuple(int(d) for d in shape[1:]), dtype
            self.row_bytes = int(np.prod(self.row_shape)) * dtype.itemsize
            expected = self.data_start + self.length * self.row_bytes
            if path.stat().st_size < expected:
                raise ValueError(f"truncated: {path.stat().st_size} bytes, the header says {expected}")
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as err:
            raise FeatureStoreError(
                f"{path}: shard gone: the store was rebuilt more than once since this reader "
                "opened it; open the store again (FeatureStore.open) to read the new build"
            ) from err
        except (OSError, ValueError) as err:
            raise self._unreadable(err) from err

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a (stop - start, C, F) array of the stored dtype."""
        start, stop = max(start, 0), min(stop, self.length)
        n = max(stop - start, 0)
        want = n * self.row_bytes
        try:
            data = os.pread(self.fd, want, self.data_start + start * self.row_bytes) if want else b""
        except OSError as err:
            raise self._unreadable(err) from err
        if len(data) != want:
            raise self._unreadable(ValueError(f"read {len(data)} of {want} bytes: the file shrank"))
        return np.frombuffer(data, dtype=self.dtype).reshape(n, *self.row_shape)

    def _unreadable(self, err: Exception) -> "FeatureStoreError":
        return FeatureStoreError(f"{self.path}: shard unreadable ({err}); run `raytag prepare` again to rebuild it")

    def close(self):
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        self.close()


# ============================================================================ building
DEFAULT_CHUNK = 128  # clips per shard: a few MB of float16, big enough that per-shard costs vanish


def shard_bounds(clip_ids: list[str], chunk_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard of `clip_ids` (sorted): about `chunk_size` clips each, cut
    where the clips say, so that a clip added or removed moves no boundary but those near it.

    A shard ends after a clip whose clip_id hashes to a multiple of a divisor, once it holds
    at least half of `chunk_size` clips (none is tiny: each shard costs a task, a file and a
    sidecar); the divisor makes shards `chunk_size` clips on average. A run of clips that
    none ends is cut at twice `chunk_size` (so no shard grows without bound): the one
    boundary a clip's place decides, which an insert before it moves until the next shard
    the clips end. A last piece shorter than the least joins the shard before it."""
    least, most = max(1, chunk_size // 2), 2 * chunk_size
    divisor = chunk_size - least + 1  # past the least, 1 in `divisor` clips ends a shard
    bounds, start = [], 0
    for i, clip_id in enumerate(clip_ids):
        size = i + 1 - start
        if size >= most or (size >= least and _ends_a_shard(clip_id, divisor)):
            bounds.append((start, i + 1))
            start = i + 1
    if start < len(clip_ids):
        if bounds and len(clip_ids) - start < least:
            start = bounds.pop()[0]
        bounds.append((start, len(clip_ids)))
    return bounds


def _ends_a_shard(clip_id: str, divisor: int) -> bool:
    """Whether a shard may end after this clip: a hash of its clip_id (the same in every
    process and run, unlike Python's hash()) is a multiple of `divisor`."""
    digest = hashlib.sha1(clip_id.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % divisor == 0


def shard_id(clip_ids: list[str]) -> str:
    """A shard's name: a hash of its clip_ids, the same wherever these clips make a shard, so
    a build finds the shards that a clip added or removed elsewhere in the list left as
    they were (a name by place would change for every shard after it). In digits: an older
    raytag building in the same folder reads a sidecar's name as its shard's number."""
    digest = hashlib.blake2b(json.dumps(list(clip_ids)).encode(), digest_size=8).digest()
    return f"{int.from_bytes(digest, 'big'):020d}"


def build_feature_store(
    dataset, feature_cfg: FeatureConfig, cache_dir: str | Path, progress: bool = True,
    chunk_size: int = DEFAULT_CHUNK, workers: Optional[int] = None, lock_wait_s: Optional[float] = None,
) -> FeatureStore:
    """Compute (or reuse) the features of every clip of `dataset`, shards in parallel.

    Up to `workers` processes (default: the CPUs this process may use) each take whole
    shards (see _compute_shards for which processes). Returns the opened store;
    `store.build_info` says how many shards were computed and how many reused, where they
    ran, the time taken and the peak RSS of the processes that computed them. A build that
    reuses every shard writes no shard or index of the store (only, where it may, its lock's
    holder record, the sidecars of shards whose files' change times moved, with the new
    ones, and, a day after an upgrade, the deletion of an older format's files), so a cache
    this user may only read serves it.
    `lock_wait_s`: how long to wait for another builder of this store before building
    beside it (None: until it is done).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    shape = frontend_shape(feature_cfg)  # refuses impossible settings before any work
    root = store_dir(cache_dir, feature_cfg, dataset.root)
    _make_store_folder(root)
    # one builder of a store at a time: builders that start together (a sweep's trials of the
    # same features) would each compute every shard; a later one finds them done and reuses them
    with exclusive_lock(root / BUILD_LOCK, waiting=f"features: another process is building {root}; "
                                                   "waiting for it, then reusing its shards",
                        say=progress, wait_s=lock_wait_s):
        return _build_locked(dataset, feature_cfg, root, shape, progress, chunk_size, workers)


def _make_store_folder(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(root, err.strerror or str(err), "its folder does not exist yet") from None


def _check_writable(root: Path, what: str) -> None:
    """Refuse, before any work, a build that must write into a store this user may only read."""
    if not os.access(root, os.W_OK | os.X_OK):
        raise _unwritable(root, "no write access", what)


def _unwritable(root: Path, reason: str, what: str) -> StorageError:
    return StorageError(
        f"cannot write the feature store {root} ({reason}), and {what}: give --feature-cache (or "
        "RAYTAG_CACHE) a folder you can write, or have whoever owns this cache build these features "
        "there first (raytag prepare with the same data, config and --set), after which they are only read")


def _build_locked(dataset, feature_cfg: FeatureConfig, root: Path, shape, progress: bool, chunk_size: int,
                  workers: Optional[int]) -> FeatureStore:
    """build_feature_store's work, under the store's build lock."""
    key = shard_key(feature_cfg)
    started = time.perf_counter()
    clips = dataset.clips.sort_values("clip_id", kind="stable").reset_index(drop=True)
    ids = clips["clip_id"].astype(str).tolist()
    bounds = shard_bounds(ids, chunk_size)
    chunks = [clips.iloc[start:stop] for start, stop in bounds]
    shards = [shard_id(ids[start:stop]) for start, stop in bounds]
    results, todo = _reusable_shards(root, zip(shards, chunks), dataset.root, feature_cfg, key)
    if todo:
        _check_writable(root, f"{len(todo)} of its {len(chunks)} shards must be computed")

    task_rss = []
    ran_in = None
    if todo:
        ran_in, finished = _compute_shards(todo, asdict(feature_cfg), key, root, workers)
        with _progress(progress, len(chunks), len(results)) as advance:
            for shard, out in finished:
                rss = out.pop("peak_rss_mb", None)  # None: another builder finished it meanwhile
                if rss is not None:
                    task_rss.append(rss)
                results[shard] = out
                advance()
    else:
        log.info("%s: all %d shards reused, no audio decoded", root, len(chunks))

    computed = len(task_rss)
    build_info = {
        "chunks": len(chunks), "computed": computed, "reused": len(chunks) - computed, "ran_in": ran_in,
        "seconds": round(time.perf_counter() - started, 3),
        "task_peak_rss_mb": max(task_rss) if task_rss else None,
    }
    merged = _merge(results, shards, shape)
    store = _finished_as(root, key, merged)
    if store is None:
        _check_writable(root, "its index must be written again")
        _finish(root, merged, feature_cfg, shape, key, build_info)
        store = FeatureStore.open(root)
    else:
        # The store there is what _finish would write: its files are left as they are.
        # Rewriting them (meta.json last) would open a window in which a sweep's concurrent
        # trial, opening the same store, finds no meta.json and fails.
        store.build_info = build_info
        _remove_older_format(root, merged)
    store.audio_digests = merged.digests
    for file, reason in store.failed.itertuples(index=False):
        log.warning("feature extraction skipped %s: %s", file, reason)
    return store


def _reusable_shards(root: Path, chunks, dataset_root, feature_cfg: FeatureConfig, key: str):
    """({shard: sidecar} of the finished shards to reuse, [(shard, rows, signature)] to compute),
    of `chunks`: (shard_id, its clips)."""
    results: dict[str, dict] = {}
    todo = []
    with_ctime = counts_ctime(dataset_root)
    for shard, chunk in chunks:
        rows = [_clip_row(r, dataset_root) for r in chunk.itertuples(index=False)]
        signature = [r["signature"] for r in rows]
        done = _finished_shard(root, shard, key, signature)
        if done is not None and with_ctime:
            done = _unchanged_contents(root, done, rows)
        if done is not None and _read_failures_decode_now(done, feature_cfg):
            done = None  # a clip that could not be read before can be now: compute the shard again
        if done is not None:
            results[shard] = done
        else:
            todo.append((shard, rows, signature))
    return results, todo


BUILD_LOCK = ".build.lock"  # in a store folder: held by the process building it (exclusive_lock)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _compute_shards(todo: list, cfg_dict: dict, key: str, root: Path, workers: Optional[int]):
    """(where they run, an iterator of (shard, sidecar info) as each shard finishes).

    One CPU or one shard: computed in this process. Else, where this process may fork (a
    plain `raytag prepare`, or a fit before it starts Ray), a pool of processes forked
    from this one, which start in milliseconds and share the torch it imported. A process
    running Ray (a sweep's trial, a Train worker building its node's copy) must not fork,
    so it runs Ray tasks on this node, whose worker processes Ray has already started
    (shards are written to this node's disk, so they must run here)."""
    n = min(len(todo), workers or usable_cpus())
    if n <= 1:
        return "this process", _in_this_process(todo, cfg_dict, key, root)
    if _may_fork():
        return f"{n} forked processes", _forked_pool(todo, cfg_dict, key, root, n)
    return "ray tasks", _ray_tasks(todo, cfg_dict, key, root)


def _in_this_process(todo: list, cfg_dict: dict, key: str, root: Path):
    """One shard after another. A builder that runs beside another (its wait for the lock ran
    out: a Train worker's, open_node_store) takes each shard that the other has finished
    since this build was planned rather than computing it again."""
    planned = {shard: _sidecar_stamp(root, shard) for shard, _, _ in todo}
    front = None
    for shard, rows, signature in todo:
        done = _finished_since(root, shard, key, signature, planned[shard])
        if done is not None:
            log.info("%s: shard %s reused: another builder finished it meanwhile", root, shard)
            yield shard, done
            continue
        if front is None:
            front = _frontend(cfg_dict)
        yield shard, _compute_shard(shard, rows, signature, key, str(root), front)


def _sidecar_stamp(root: Path, shard: str) -> Optional[tuple]:
    """Which file a shard's sidecar is now (a rewrite renames a new one in), None if absent."""
    try:
        st = os.stat(root / _sidecar_name(shard))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _finished_since(root: Path, shard: str, key: str, signature: list, planned: Optional[tuple]) -> Optional[dict]:
    """The sidecar of this shard if another builder has written it since `planned` (its
    stamp when this build was planned) for exactly these clips, else None. A sidecar that
    was there at planning time was judged then (stale: changed audio, a read failure that
    decodes now) and is not taken."""
    if _sidecar_stamp(root, shard) in (planned, None):
        return None
    return _finished_shard(root, shard, key, signature)


def _may_fork() -> bool:
    """Whether worker processes may be forked from this one: no other Python thread and
    no Ray in it (Ray's threads do I/O and hold locks a child would inherit). The native
    pool threads of numpy, torch and arrow wait idle and are safe to fork beside, as
    torch's DataLoader does."""
    import sys
    import threading

    ray = sys.modules.get("ray")
    return threading.active_count() == 1 and not (ray is not None and ray.is_initialized())


_SHOW_FILES = 5  # how many of a failed shard's files an error names


def _failed(root: Path, shard, rows: list, err: Exception) -> RaytagError:
    """The error for a shard whose task failed or whose process died (killed for memory,
    a crash in a decoder): it names the shard's files, one of which may be the cause."""
    files = [row["file"] for row in rows]
    more = f" and {len(files) - _SHOW_FILES} more" if len(files) > _SHOW_FILES else ""
    return RaytagError(
        f"feature extraction of shard {shard} in {root} failed: {str(err) or type(err).__name__}. "
        f"Its files: {', '.join(files[:_SHOW_FILES])}{more}. Finished shards are kept; run the "
        "same command again to resume. If a process died again, one of these files (or one "
        "of a shard computed at the same time) is the likely cause: move it out of the dataset.")


def _forked_pool(todo: list, cfg_dict: dict, key: str, root: Path, n: int):
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    global _POOL_FRONTEND
    _POOL_FRONTEND = _frontend(cfg_dict)  # built once here; the forked processes inherit it
    pool = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("fork"), initializer=_one_thread)
    try:
        pending = {pool.submit(_compute_shard, shard, rows, signature, key, str(root)): (shard, rows)
                   for shard, rows, signature in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                shard, rows = pending.pop(future)
                try:
                    out = future.result()
                except Exception as err:  # noqa: BLE001 - the task's error, or its process died (BrokenProcessPool)
                    raise _failed(root, shard, rows, err) from err
                yield shard, out
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# One shard's Ray task holds a whole CPU of the calling node: where trial functions hold every
# CPU of the node they build on, none starts (search.tuner.head_concurrency leaves one free)
SHARD_TASK_CPUS = 1


def _ray_tasks(todo: list, cfg_dict: dict, key: str, root: Path):
    import ray

    ensure_ray()
    # An explicit strategy also lets the tasks leave a caller's placement group (inside a
    # Tune trial, which holds a fraction of a CPU, they would otherwise never be scheduled).
    task = ray.remote(num_cpus=SHARD_TASK_CPUS, scheduling_strategy=this_node_strategy())(_ray_shard)
    refs = {task.remote(shard, rows, signature, cfg_dict, key, str(root)): (shard, rows)
            for shard, rows, signature in todo}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            shard, rows = refs[ref]
            try:
                out = ray.get(ref)
            except ray.exceptions.RayError as err:
                raise _failed(root, shard, rows, err) from err
            yield shard, out


def _ray_shard(shard: str, rows: list, signature: list, cfg_dict: dict, key: str, root: str) -> dict:
    """Ray task: one shard, with the front end built once per worker process."""
    global _POOL_FRONTEND
    import torch

    torch.set_num_threads(1)
    if _POOL_FRONTEND is None or asdict(_POOL_FRONTEND[0]) != cfg_dict:
        _POOL_FRONTEND = _frontend(cfg_dict)
    return _compute_shard(shard, rows, signature, key, root)


_POOL_FRONTEND = None  # (settings, front end) for forked processes (built before forking) or a Ray worker


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # one process per CPU (the forked torch may have more)


def _frontend(cfg_dict: dict) -> tuple[FeatureConfig, "torch.nn.Module"]:
    cfg = FeatureConfig(**cfg_dict)
    return cfg, build_frontend(cfg).eval()


def shard_key(feature_cfg: FeatureConfig) -> str:
    """What a shard's features depend on besides its clips: the settings, this code's
    decoder and front end (FEATURES_VERSION), the file format and librosa's filters."""
    from importlib.metadata import version

    librosa = ".".join(version("librosa").split(".")[:2])
    return f"{feature_cfg.cache_key()}-features{FEATURES_VERSION}-format{FORMAT_VERSION}-librosa{librosa}"


def store_dir(cache_dir: str | Path, feature_cfg: FeatureConfig, dataset_root: str | Path) -> Path:
    """`<cache_dir>/<cache_key>/<dataset name>-<hash of its absolute path>`."""
    root = Path(dataset_root).expanduser().absolute()
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name) or "dataset"
    return Path(cache_dir).expanduser().absolute() / feature_cfg.cache_key() / f"{name}-{tag}"


def _clip_row(row, dataset_root) -> dict:
    """What a task needs about one clip: the clip, its path, its change time (`ctime`, which
    no tool can set back: see _unchanged_contents) and the signature that decides shard
    reuse (clip_id, path, size, mtime)."""
    path = str(row.path)
    size, mtime, ctime = local_file_stamp(path)  # -1s when missing now: the task reports the decode failure
    try:
        file = str(Path(path).relative_to(dataset_root))
    except ValueError:
        file = path
    return {
        "clip_id": str(row.clip_id), "path": path, "file": file, "ctime": ctime,
        "in_stats": row.split != "test",  # statistics over training material only
        "signature": [str(row.clip_id), path, size, mtime],
    }


def counts_ctime(dataset_root) -> bool:
    """Whether a moved change time has a file hashed before its shard is reused: not for a
    data-cache copy of a URI (cluster.materialize_data), which each node makes with its own
    change time (nodes whose feature cache is shared would hash every file again in turn)
    and which is copied again only when the source's size or mtime changes, so a change time
    adds nothing."""
    return not is_data_copy(dataset_root)


def file_digest(path) -> Optional[str]:
    """blake2b of a file's bytes: what a shard's clip was computed from. None where the file
    cannot be read (its decode failure says why)."""
    blake = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                blake.update(block)
    except OSError:
        return None
    return blake.hexdigest()


def _unchanged_contents(root: Path, info: dict, rows: list) -> Optional[dict]:
    """`info` (the sidecar of a shard whose signature matches) if its clips' files still hold
    the bytes it was computed from, else None. A change time moves when a file is rewritten,
    even with its size and mtime kept (cp -p, rsync -a, an archive extracted again), but also
    on chmod, chown, a hard link or a rename: only files whose change time moved are hashed
    (far cheaper than decoding them), and the shard is computed again only where a digest
    differs. Else the sidecar takes the new change times, so the next build hashes nothing."""
    contents = info["contents"]
    moved = [i for i, row in enumerate(rows) if row["ctime"] != contents[i][0]]
    if not moved:
        return info
    if any(file_digest(rows[i]["path"]) != contents[i][1] for i in moved):
        return None
    for i in moved:
        contents[i] = [rows[i]["ctime"], contents[i][1]]
    log.info("%s: shard %s reused: %d of its files changed status, not contents", root, info["shard"], len(moved))
    try:
        write_local_atomically(root / _sidecar_name(info["shard"]), lambda fh: fh.write(json.dumps(info).encode()))
    except OSError as err:  # a cache this user may only read: the next build hashes them again
        log.info("%s: cannot record shard %s's new change times (%s)", root, info["shard"], err.strerror or err)
    return info


def _finished_shard(root: Path, shard: str, key: str, signature: list) -> Optional[dict]:
    """The sidecar of a complete shard of exactly these clips, else None."""
    side = root / _sidecar_name(shard)
    try:
        info = json.loads(side.read_text())
        complete = (root / info["file"]).stat().st_size == info["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if complete and info.get("key") == key and info.get("signature") == signature and _has_contents(info):
        return info
    return None


def _has_contents(info: dict) -> bool:
    """Whether a sidecar holds a [change time, digest] per clip (one written before them does
    not: its shard is computed again, once)."""
    contents = info.get("contents")
    return (isinstance(contents, list) and len(contents) == len(info["signature"])
            and all(isinstance(c, list) and len(c) == 2 for c in contents))


def _read_failures_decode_now(info: dict, cfg: FeatureConfig) -> bool:
    """Whether a clip that a shard left out because it could not be read (maybe for a
    passing reason: an I/O error, a copy in progress) decodes now. Clips with bad samples
    are not tried again: their files (size, mtime) are unchanged, so is the verdict."""
    for path in info.get("retry", []):
        try:
            load_audio(path, cfg.sample_rate, min_samples=min_samples(cfg))
        except (AudioDecodeError, MemoryError):  # still failing (an older sidecar may list an OOM clip)
            continue
        log.info("%s decodes now; its shard %s is computed again", path, info["shard"])
        return True
    return False


def _compute_shard(shard: str, rows: list, signature: list, key: str, root: str, front=None) -> dict:
    """Decode one shard's clips, run the front end, write the shard atomically.

    `front`: (settings, front end) to run (default: the one _forked_pool or _ray_shard set up)."""
    import torch

    cfg, front = front if front is not None else _POOL_FRONTEND
    c, f = frontend_shape(cfg)
    feats, index, failures, retry, contents = [], [], [], [], []
    sums, squares, count = np.zeros(c * f), np.zeros(c * f), 0
    offset = 0
    for row in rows:
        # the bytes the clip is computed from, hashed just before it is decoded (one read from
        # disk, the other from the page cache); with the change time its build saw, they let
        # the next build tell a file rewritten from one whose status changed (_unchanged_contents)
        contents.append([row["ctime"], file_digest(row["path"])])
        try:
            wave = load_audio(row["path"], cfg.sample_rate, min_samples=min_samples(cfg))
        except AudioDecodeError as err:
            failures.append([row["file"], err.reason])
            if isinstance(err, AudioReadError):
                retry.append(row["path"])  # tried again by the next build
            continue
        except MemoryError:  # one huge file: its failure, not the shard's
            # not in `retry`: the next build would decode it in the driver, where a
            # MemoryError fails the whole build; a new mtime (touch) has it computed again
            failures.append([row["file"], "out of memory while decoding it (a very long or damaged file?); "
                                          "touch the file to have the next build try it again"])
            continue
        try:
            with torch.inference_mode():
                x = front(torch.from_numpy(wave)[None])[0]  # (C, F, T)
        except RuntimeError as err:
            failures.append([row["file"], f"front end failed: {str(err).splitlines()[0]}"])
            continue
        x16 = x.permute(2, 0, 1).contiguous().numpy().astype(np.float16)  # (T, C, F)
        if not np.isfinite(x16).all():
            failures.append([row["file"], "features are not finite (NaN/inf, or beyond float16 range)"])
            continue
        feats.append(x16)
        index.append([row["clip_id"], offset, int(x16.shape[0])])  # its place in the build: _merge
        offset += int(x16.shape[0])
        if row["in_stats"]:
            flat = x16.reshape(x16.shape[0], -1).astype(np.float64)
            sums += flat.sum(axis=0)
            squares += np.square(flat).sum(axis=0)
            count += flat.shape[0]
    data = np.concatenate(feats) if feats else np.zeros((0, c, f), np.float16)
    out_dir = Path(root)
    # named by its contents: equal names hold equal bytes, so replacing a file that a
    # reader has open (or will open from an older index) changes nothing it reads
    npy = out_dir / shard_name(shard, _digest(data))
    write_local_atomically(npy, lambda fh: np.save(fh, data))
    info = {
        "key": key, "shard": shard, "file": npy.name, "signature": signature, "contents": contents,
        "bytes": npy.stat().st_size,
        "index": index, "failed": failures, "retry": retry,
        "sums": sums.tolist(), "squares": squares.tolist(), "count": count,
    }
    write_local_atomically(out_dir / _sidecar_name(shard), lambda fh: fh.write(json.dumps(info).encode()))
    info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    return info


def _digest(data: np.ndarray) -> str:
    blob = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    blob.update(np.ascontiguousarray(data).data)
    return blob.hexdigest()[:16]


@dataclass
class _Merged:
    """What the shards' sidecars say of the whole store: its index, failures and per-bin stats."""

    index: pd.DataFrame
    failed: list
    files: set  # every shard's .npy, also one whose clips all failed (no index row names it)
    sidecars: set  # every shard's sidecar (its name)
    n_chunks: int
    count: int
    mean: np.ndarray  # (C * F,)
    std: np.ndarray
    digests: dict  # clip_id: file_digest of the audio every clip was computed from


def _merge(results: dict, shards: list[str], shape) -> _Merged:
    """`results`: {shard_id: sidecar}; `shards`: this build's shard_ids in clip order, whose
    place in it is the index's `shard` (the store's number for a shard file)."""
    rows, failed = [], []
    digests = {sig[0]: content[1] for shard in shards
               for sig, content in zip(results[shard]["signature"], results[shard]["contents"])}
    sums, squares, count = np.zeros(shape[0] * shape[1]), np.zeros(shape[0] * shape[1]), 0
    for number, shard in enumerate(shards):
        info = results[shard]
        rows.extend([clip_id, number, offset, n_frames, info["file"]] for clip_id, offset, n_frames in info["index"])
        failed.extend(info["failed"])
        sums += np.asarray(info["sums"])
        squares += np.asarray(info["squares"])
        count += info["count"]
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS).astype({"shard": "int32", "offset": "int64", "n_frames": "int64"})
    if count:
        mean = sums / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    else:  # no training frames (only test clips, or all failed): nothing to normalise by
        mean, std = np.zeros_like(sums), np.ones_like(sums)
    files = {results[shard]["file"] for shard in shards}
    sidecars = {_sidecar_name(shard) for shard in shards}
    return _Merged(index, failed, files, sidecars, len(shards), count, mean, std, digests)


def _finished_as(root: Path, key: str, merged: _Merged) -> "FeatureStore | None":
    """The finished store at `root` if it holds exactly what _finish would write from
    `merged` (the same settings, clips, failures and statistics), else None."""
    try:
        store = FeatureStore.open(root)
    except (FeatureStoreError, OSError, ValueError):  # absent, older format, unreadable
        return None
    meta = store.meta
    same = (meta.get("key") == key and meta.get("n_shards") == merged.n_chunks
            and meta.get("stats_frames") == merged.count
            and store.clip_ids == [str(c) for c in merged.index["clip_id"]]
            and np.array_equal(store._shard, merged.index["shard"]) and np.array_equal(store._offset, merged.index["offset"])
            and np.array_equal(store._frames, merged.index["n_frames"])
            and store._files == _files_of(merged.index)
            and store.failed.values.tolist() == [list(map(str, f)) for f in merged.failed]
            and np.array_equal(np.ravel(meta.get("mean")), merged.mean) and np.array_equal(np.ravel(meta.get("std")), merged.std))
    return store if same else None


def _finish(root: Path, merged: _Merged, cfg: FeatureConfig, shape, key: str, build_info: dict):
    """Write index.parquet, failed.csv and (last) meta.json from the merged sidecars."""
    _remove_stale_shards(root, merged)
    index, failed = merged.index, merged.failed
    (root / "meta.json").unlink(missing_ok=True)  # the store is incomplete until meta is rewritten
    write_local_atomically(root / "index.parquet", lambda fh: index.to_parquet(fh, index=False))
    write_local_atomically(root / "failed.csv",
                  lambda fh: pd.DataFrame(failed, columns=FAILED_COLUMNS).to_csv(fh, index=False))
    meta = {
        "format": FORMAT_VERSION, "key": key, "features": asdict(cfg), "shape": list(shape),
        "dtype": "float16", "layout": "time-major (T, C, F)",
        "n_clips": len(index), "n_failed": len(failed), "n_shards": merged.n_chunks,
        "n_frames": int(index["n_frames"].sum()) if len(index) else 0,
        "stats_frames": merged.count, "stats_over": "all frames of non-test clips",
        "mean": merged.mean.reshape(shape).tolist(), "std": merged.std.reshape(shape).tolist(),
        "last_build": build_info,
    }
    write_local_atomically(root / "meta.json", lambda fh: fh.write(json.dumps(meta, indent=1).encode()))


def _files_of(index: pd.DataFrame) -> dict[int, str]:
    return {int(shard): str(file) for shard, file in zip(index["shard"], index["file"])}


def _indexed_files(root: Path) -> set[str]:
    """The shard files the index now at `root` reads (none if it is absent or of an older format)."""
    try:
        return set(pd.read_parquet(root / "index.parquet", columns=["file"])["file"])
    except (OSError, ValueError, KeyError):  # absent, or an older index without the column
        return set()


def _sidecar_file(side: Path) -> Optional[str]:
    """The shard file sidecar `side` names (None if it is being replaced, or removed meanwhile)."""
    try:
        return str(json.loads(side.read_text())["file"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sidecar_files(root: Path) -> set[str]:
    """The shard files the sidecars now at `root` name (a concurrent build's included)."""
    return {file for side in root.glob("shard-*.json") if (file := _sidecar_file(side)) is not None}


def _older_than(path: Path, when: float) -> bool:
    try:
        return path.stat().st_mtime < when
    except FileNotFoundError:  # a concurrent build removed it first
        return False


def _remove_stale_shards(root: Path, merged: _Merged) -> None:
    """Delete the sidecars and shard files that nothing names and that are STALE_AFTER_S old.

    Sidecars kept: this build's, those of the replaced index's shards (a clip that could not
    be listed for one build makes its shard another; the next build, with the clip back,
    reuses the shard it was in: their files are kept anyway), and younger ones (a concurrent
    build's). Files kept: the new index's, the replaced index's (a reader that opened it
    keeps reading what it indexed), and every file a sidecar kept names (a shard whose clips
    all failed; a concurrent build's shard). A younger file may be a concurrent build's
    whose sidecar is not written yet."""
    cutoff = time.time() - STALE_AFTER_S
    replaced = _indexed_files(root)
    for side in root.glob("shard-*.json"):  # shards of other clip lists (or an older raytag's)
        if side.name not in merged.sidecars and _older_than(side, cutoff) and _sidecar_file(side) not in replaced:
            side.unlink(missing_ok=True)
    keep = merged.files | set(_files_of(merged.index).values()) | replaced | _sidecar_files(root)
    for npy in root.glob("shard-*.npy"):
        if npy.name not in keep and _older_than(npy, cutoff):
            npy.unlink(missing_ok=True)


def _remove_older_format(root: Path, merged: _Merged) -> None:
    """In a build that writes no index: delete an older format's shard files and sidecars
    (and any other STALE_AFTER_S old that nothing names) once the index that replaced them
    is OLDER_FORMAT_KEPT_S old. Nothing in a cache this user may only read: it serves the
    build all the same, and its owner's next build tidies it."""
    if not any(OLDER_FORMAT_NAME.match(path.name) for path in root.glob("shard-*")):
        return
    if not os.access(root, os.W_OK | os.X_OK):
        return
    if not _older_than(root / "index.parquet", time.time() - OLDER_FORMAT_KEPT_S):
        return
    try:
        # the index at `root` is this build's: the older format's files, which only the index
        # it replaced named, and their sidecars, are no longer kept
        _remove_stale_shards(root, merged)
    except OSError as err:  # a file of a group-shared cache this user may not delete
        log.info("%s: cannot delete the older format's shard files (%s)", root, err.strerror or err)


class _progress:
    """A rich progress bar over chunks (or nothing); `advance()` marks one chunk done."""

    def __init__(self, show: bool, total: int, done: int):
        self.show, self.total, self.done = show, total, done

    def __enter__(self):
        if not self.show:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        # redrawn on each finished chunk, not by a refresh thread: a process with a thread
        # must not fork its worker processes
        self.bar = Progress(
            TextColumn("features"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            auto_refresh=False,
        )
        self.bar.start()
        task = self.bar.add_task("features", total=self.total, completed=self.done)
        self.bar.refresh()

        def advance():
            self.bar.advance(task)
            self.bar.refresh()

        return advance

    def __exit__(self, *exc):
        if self.show:
            self.bar.stop()
        return False


# ============================================================================ `raytag prepare`
def feature_cache_folder(cache: Optional[str | os.PathLike], option: str = "--feature-cache") -> str:
    """The feature cache to build in and read from: `cache`, else default_feature_cache(), as
    an absolute local folder (created). Called before any work, so a wrong one costs no data
    copy. Features are read with os.pread from a path on each node (its own disk by default,
    each node building its own copy; or a file system the nodes share): a URI (s3://...) is
    refused; a file:// URI is its local path."""
    path = local_folder_option(
        cache if cache is not None else default_feature_cache(), option,
        f"give a folder for the feature cache, or leave {option} out for the default ($RAYTAG_CACHE, else "
        "~/.cache/raytag/features)",
        "features are read by byte range from a folder on each node (its own disk, where each node builds its "
        "own copy, or a file system the nodes share); give a local folder, e.g. /mnt/nvme/raytag-features",
        FeatureStoreError)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise FeatureStoreError(f"{option} {path}: not a folder ({err.strerror}: {err.filename}); "
                                "give a folder for the feature cache") from None
    except OSError as err:
        raise FeatureStoreError(f"{option} {path}: cannot create it ({err.strerror}: {err.filename}); "
                                "give a folder you can write to") from None
    return str(path)


@dataclass
class PreparedFeatures:
    """What `prepare_features` did for one front end: the dataset read, its store, and what
    was left out."""

    members: list[str]  # the members that train on these features; []: the config has none
    dataset: Dataset
    features: FeatureConfig  # the settings the store was built with
    store: FeatureStore
    seconds: float  # building (or reusing) the store
    skipped: pd.DataFrame  # file, reason: left out by the dataset reader or failed to decode
    skipped_path: Path  # where `skipped` was written (<store>/skipped.csv)
    hours: float  # audio in the store


def front_ends(cfg: Config) -> list[tuple[list[str], FeatureConfig]]:
    """Each distinct front end a run of `cfg` trains on, with the members that use it. With
    `members`, one per distinct `features` of Config.member_configs (what `raytag train`
    trains, each member building its own store); else cfg.features, used by no member."""
    runs = cfg.member_configs()
    if not runs:
        return [([], cfg.features)]
    by_key: dict[str, tuple[list[str], FeatureConfig]] = {}
    for member, member_cfg in runs:
        by_key.setdefault(member_cfg.features.cache_key(), ([], member_cfg.features))[0].append(member)
    return list(by_key.values())


def prepare_features(data, cfg: Config, cache: str) -> list[PreparedFeatures]:
    """Read the dataset, build or reuse the features of every front end a run of `cfg` trains
    on (front_ends), and write skipped.csv beside each store. `cache`: the folder as
    feature_cache_folder returns it, already checked and created (`raytag prepare` resolves
    it before this, so a wrong one costs no data copy)."""
    root = materialize_data(data, progress=True)
    return [_prepare_one(root, members, features, cache) for members, features in front_ends(cfg)]


def _prepare_one(root: Path, members: list[str], features: FeatureConfig, cache: str) -> PreparedFeatures:
    dataset = load_dataset(root, sample_rate=features.sample_rate, features=features)
    started = time.perf_counter()
    store = build_feature_store(dataset, features, cache, progress=True)
    seconds = time.perf_counter() - started

    skipped = pd.concat([dataset.skipped[FAILED_COLUMNS], store.failed[FAILED_COLUMNS]], ignore_index=True)
    skipped_path = store.path / "skipped.csv"
    skipped.to_csv(skipped_path, index=False)

    durations = dataset.clips.set_index("clip_id")["duration"]
    hours = float(durations.reindex(store.clip_ids).sum()) / 3600.0
    return PreparedFeatures(members, dataset, features, store, seconds, skipped, skipped_path, hours)
