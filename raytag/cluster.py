"""Running raytag on a multi-node Ray cluster: what the cluster looks like, whether a
storage or data path can be seen from every node, and getting the dataset onto each node.

Since Ray 2.7 nothing a trial writes is synced back to the head node: every node writes
its checkpoints and trial outputs straight to the run's storage path. On a cluster that
path must therefore be one that every node sees (s3://, gs://, or a filesystem mounted on
every node). `check_storage` refuses anything else before any compute is spent.

Data on a cluster (the one way raytag supports): the dataset folder lives at a URI
(s3://, gs://, file://) and each node copies it once into a node-local cache with
`materialize_data`; each node then builds its own feature store from that local copy
(feature stores are read with os.pread, so they must be on a local disk anyway). A plain local
path is used in place, which is right on one machine or on a shared filesystem.

`LocalCluster`, a real multi-node cluster on loopback for tests, is in raytag.testing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from raytag.errors import DatasetError, StorageError
from raytag.storage import is_local_path, is_uri, nonempty_option, normalize_uri, safe_join, safe_relpath

SHARED_FS_ENV = "RAYTAG_SHARED_FS"  # "1": local paths are on a filesystem mounted on every node
DATA_CACHE_ENV = "RAYTAG_DATA_CACHE"  # node-local folder for copies of data URIs
DEFAULT_DATA_CACHE = Path.home() / ".cache" / "raytag" / "data"
MARKER = ".raytag_materialized.json"  # written last: its presence means the copy is whole
# The cluster launcher writes its config here on the head node, where `ray job submit`
# runs the driver; its max_workers tells whether the autoscaler may add nodes later.
LAUNCHER_CONFIG = Path.home() / "ray_bootstrap_config.yaml"
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's built-in resource of the head node



# ----------------------------------------------------------------------------- the cluster
def _require_ray():
    import ray

    if not ray.is_initialized():
        raise RuntimeError(
            "raytag.cluster needs a connected Ray session: call ray.init(...) before asking "
            "about the cluster (an unconnected process would wrongly look like one node)"
        )
    return ray


def cluster_nodes() -> list[dict]:
    """Alive nodes of the connected Ray cluster: node_id, address, cpus, gpus, is_head."""
    ray = _require_ray()
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        nodes.append({
            "node_id": node["NodeID"],
            "address": node.get("NodeManagerAddress", ""),
            "cpus": float(res.get("CPU", 0.0)),
            "gpus": float(res.get("GPU", 0.0)),
            "is_head": HEAD_NODE_RESOURCE in res,
        })
    return nodes


def autoscaler_max_workers() -> int:
    """Worker nodes the autoscaler may still add (0 when unknown or fixed-size).

    Read from the autoscaler config Ray keeps in the GCS (autoscaler v2, KubeRay) or else
    from the cluster launcher's ~/ray_bootstrap_config.yaml on this (the head) node. Both
    are best effort: a cluster neither describes counts as fixed-size.
    """
    _require_ray()
    try:  # private API: guarded, a move in Ray only loses this extra check
        from ray._private.state import state

        config = state.get_cluster_config()
        if config is not None:
            return sum(max(g.max_count, 0) if g.max_count != -1 else 1 << 30
                       for g in config.node_group_configs)
    except Exception:
        pass
    try:
        import yaml

        if LAUNCHER_CONFIG.is_file():
            config = yaml.safe_load(LAUNCHER_CONFIG.read_text()) or {}
            return int(config.get("max_workers", 0) or 0)
    except Exception:
        pass
    return 0


def is_multinode() -> bool:
    """True when more than one node is alive, or the autoscaler may add worker nodes."""
    return len(cluster_nodes()) > 1 or autoscaler_max_workers() > 0


def shared_fs_declared() -> bool:
    return os.environ.get(SHARED_FS_ENV, "").strip().lower() in ("1", "true", "yes")


def _local_on_cluster_message(what: str, option: str, path: str, n_nodes: int, example: str) -> str:
    nodes = f"{n_nodes} nodes" if n_nodes > 1 else "an autoscaler that adds worker nodes"
    return (
        f"{what} {path!r} is a local path, but this Ray cluster has {nodes}: "
        f"since Ray 2.7 each node reads and writes its own disk and nothing is synced to the head, "
        f"so {'results would be scattered and lost' if option == '--storage' else 'other nodes would not find it'}. "
        f"Use {option} {example} (or gs://bucket/prefix), or a path on a shared filesystem "
        f"(NFS, EFS, ...) mounted at the same place on every node, declared with {SHARED_FS_ENV}=1 "
        f"(for `ray job submit`: --runtime-env-json '{{\"env_vars\": {{\"{SHARED_FS_ENV}\": \"1\"}}}}')."
    )


def check_storage(storage: str | os.PathLike) -> None:
    """Refuse a local storage path on a multi-node cluster unless declared shared.

    Call after ray.init. Raises StorageError saying what to use instead.
    """
    if not is_local_path(storage) or shared_fs_declared() or not is_multinode():
        return
    raise StorageError(_local_on_cluster_message(
        "storage", "--storage", str(storage), len(cluster_nodes()), "s3://bucket/prefix"))


def check_data(data: str | os.PathLike) -> None:
    """Refuse a plain local dataset path on a multi-node cluster unless declared shared.

    file:// and remote URIs are fine: `materialize_data` copies them onto each node.
    """
    text = normalize_uri(data)
    if is_uri(text) or shared_fs_declared() or not is_multinode():
        return
    raise StorageError(_local_on_cluster_message(
        "data", "--data", text, len(cluster_nodes()), "s3://bucket/fat2019"))


def check_data_folder(data: str | os.PathLike) -> Path | None:
    """--data as a local dataset folder (resolved), or None for a URI (`materialize_data`
    copies it onto each node); DatasetError when it is empty (an unset shell variable: it
    would mean the current folder), a file or not there. Cheap, so the commands call it
    before Ray starts or a run folder is made."""
    text = nonempty_option(data, "--data", "give the dataset folder (the one holding train_curated.csv or train.csv)",
                           DatasetError)
    if is_uri(text):
        return None
    path = Path(text).expanduser()
    if path.is_file():
        raise DatasetError(f"--data {path} is a file; give the dataset folder (the one holding "
                           "train_curated.csv or train.csv)")
    if not path.is_dir():
        raise DatasetError(f"--data {path}: folder not found; give the dataset folder (the one holding "
                           "train_curated.csv or train.csv)")
    return path.resolve()


def this_node_strategy():
    """A Ray scheduling strategy that keeps tasks on the calling node (hard affinity).

    A Train worker that builds a feature store from its node-local data copy must run the
    extraction tasks on its own node: elsewhere the copy (and the store) is not there.
    """
    ray = _require_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


# ----------------------------------------------------------------------------- data on every node
def _cache_dir_for(uri: str, cache_root: Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", uri.rstrip("/").rsplit("/", 1)[-1]) or "data"
    digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return cache_root / f"{name}-{digest}"


def _list_source(fs, root: str) -> dict[str, dict]:
    import pyarrow.fs as pafs

    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DatasetError(f"data URI not found: {root}; check the bucket, prefix and credentials")
    if info.type != pafs.FileType.Directory:
        raise DatasetError(f"data URI {root} is a file; give the dataset folder")
    files = {}
    for item in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if item.type != pafs.FileType.File:
            continue
        rel = item.path[len(root.rstrip("/")) + 1:]
        # an object key may hold ".." or start with "/": refuse it before anything is copied
        safe_relpath(rel, where=f"data URI {root}", error=DatasetError)
        mtime = item.mtime_ns if item.mtime_ns is not None else 0
        files[rel] = {"size": item.size, "mtime_ns": mtime}
    if not files:
        raise DatasetError(f"data URI {root} holds no files")
    return files


COPY_BLOCK = 1 << 22  # bytes read from the source at a time


def _copy_one(fs, root: str, rel: str, mtime_ns: int, dest_root: Path, report: "_CopyReport") -> None:
    target = Path(safe_join(dest_root, rel, where=f"copy of {root}", error=DatasetError))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    with fs.open_input_stream(f"{root.rstrip('/')}/{rel}", compression=None) as src, open(tmp, "wb") as dst:
        while block := src.read(COPY_BLOCK):
            dst.write(block)
            report.copied_bytes(len(block))
    os.utime(tmp, ns=(mtime_ns, mtime_ns))  # the source's time: a resumed copy can tell whose version it has
    os.replace(tmp, target)  # a file under its real name is always whole
    report.copied_file()


class _CopyReport:
    """What a copy of a data URI does, on stderr: one line with the files and bytes to copy
    (a node's first copy of a large dataset takes minutes, and said nothing), and with
    `bar` (the driver, progress on) a rich bar of bytes and files, updated by the copying
    threads. Redrawn by those threads, at most every REDRAW_S, not by a refresh thread of
    rich's: the caller may fork worker processes right after (raytag.features.store)."""

    REDRAW_S = 0.2

    def __init__(self, uri: str, dest: Path, sizes: list[int], kept: int, bar: bool):
        self.uri, self.dest, self.sizes, self.kept, self.show_bar = uri, dest, sizes, kept, bar
        self.lock = threading.Lock()
        self.bar = self.task = None
        self.files_done, self.redrawn = 0, 0.0

    def __enter__(self) -> "_CopyReport":
        from rich.console import Console
        from rich.filesize import decimal

        console = Console(stderr=True)
        kept = f"; {self.kept:,} already copied" if self.kept else ""
        files = f"{len(self.sizes):,} file{'s' if len(self.sizes) != 1 else ''}"
        console.print(f"data: copying {files} ({decimal(sum(self.sizes))}) from {self.uri} "
                      f"to {self.dest}{kept}", markup=False, highlight=False, soft_wrap=True)
        if self.show_bar:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self.bar = Progress(TextColumn("data"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                TextColumn("{task.fields[files]}"), TimeRemainingColumn(),
                                console=console, auto_refresh=False)
            self.bar.start()
            self.task = self.bar.add_task("data", total=sum(self.sizes), files=self._files_text())
            self.bar.refresh()
        return self

    def _files_text(self) -> str:
        return f"{self.files_done:,}/{len(self.sizes):,} files"

    def copied_bytes(self, n: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.advance(self.task, n)
                self._redraw()

    def copied_file(self) -> None:
        with self.lock:
            self.files_done += 1
            if self.bar is not None:
                self.bar.update(self.task, files=self._files_text())
                self._redraw()

    def _redraw(self, now: bool = False) -> None:
        if now or time.monotonic() - self.redrawn >= self.REDRAW_S:
            self.bar.refresh()
            self.redrawn = time.monotonic()

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self._redraw(now=True)
            self.bar.stop()
        return False


def is_data_copy(path: str | os.PathLike) -> bool:
    """Whether `path` is a copy materialize_data made of a data URI: its files keep their
    source's size and modification time, but each node's copy has a change time of its own."""
    return (Path(path) / MARKER).is_file()


def _copied(path: Path, meta: dict) -> bool:
    """Whether `path` is a finished copy of the source file `meta` (its size and time)."""
    if not path.is_file():
        return False
    st = path.stat()
    return st.st_size == meta["size"] and st.st_mtime_ns == meta["mtime_ns"]


def materialize_data(data: str | os.PathLike, cache_root: str | os.PathLike | None = None,
                     threads: int = 16, progress: bool = False) -> Path:
    """Make a dataset folder readable on this node; return its local path.

    A plain local path is returned as it is. A URI (s3://, gs://, file://, read through
    pyarrow.fs) is copied once into `<cache_root>/<name>-<hash of URI>/` (cache_root
    defaults to $RAYTAG_DATA_CACHE or ~/.cache/raytag/data). The copy is
    - shared: a file lock lets one process per node copy while the others wait;
    - resumable: files are written under a temporary name and renamed, so an interrupted
      copy keeps its finished files and the next call copies only what is missing;
    - atomic: the folder is renamed into place with a marker listing every file, so a
      reader never sees half a dataset;
    - kept current: each call lists the source and recopies files whose size or
      modification time changed, and drops files the source no longer has;
    - reported: a copy with files to fetch prints their count and size (stderr), and with
      `progress` (a command's driver) a bar of bytes and files while it runs.
    """
    text = normalize_uri(data)
    local = check_data_folder(text)
    if local is not None:
        return local

    import pyarrow.fs as pafs
    from filelock import FileLock  # ships with Ray

    try:
        fs, root = pafs.FileSystem.from_uri(text)
    except Exception as err:  # unknown scheme, filesystem not built into pyarrow, bad URI
        raise DatasetError(f"cannot open data URI {text}: {err}") from err
    cache_root = Path(cache_root or os.environ.get(DATA_CACHE_ENV) or DEFAULT_DATA_CACHE).expanduser()
    cache_root.mkdir(parents=True, exist_ok=True)
    final = _cache_dir_for(text, cache_root)
    partial = final.with_name(final.name + ".partial")

    with FileLock(str(final) + ".lock"):
        source = _list_source(fs, root)
        marker = final / MARKER
        if marker.is_file():
            if json.loads(marker.read_text()).get("files") == source:
                return final
            # the source changed: update in place of a fresh copy, keeping unchanged files
            if partial.exists():
                shutil.rmtree(partial)
            os.replace(final, partial)
            old = json.loads((partial / MARKER).read_text())["files"]
            (partial / MARKER).unlink()
            for rel, meta in old.items():
                if source.get(rel) != meta and (partial / rel).exists():
                    (partial / rel).unlink()
        partial.mkdir(parents=True, exist_ok=True)

        # a file left by an interrupted copy is kept only if it is the source's current version
        todo = [rel for rel, meta in source.items() if not _copied(partial / rel, meta)]
        if todo:
            report = _CopyReport(text, final, [source[rel]["size"] for rel in todo], len(source) - len(todo),
                                 bar=progress)
            with report, ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                list(pool.map(lambda rel: _copy_one(fs, root, rel, source[rel]["mtime_ns"], partial, report), todo))
        for path in sorted(partial.rglob("*"), reverse=True):  # files the source no longer has
            rel = path.relative_to(partial).as_posix()
            if path.is_file() and rel not in source:
                path.unlink()
        (partial / MARKER).write_text(json.dumps({"uri": text, "files": source}, sort_keys=True))
        os.replace(partial, final)
    return final
