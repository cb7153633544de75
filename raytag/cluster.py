"""Running raytag on a multi-node Ray cluster: what the cluster looks like, whether a
storage or data path can be seen from every node, and getting the dataset onto each node.

Since Ray 2.7 nothing a trial writes is synced back to the head node: every node writes
its checkpoints and trial outputs straight to the run's storage path. On a cluster that
path must therefore be one that every node sees (s3://, gs://, or a filesystem mounted on
every node). `check_storage` refuses anything else before any compute is spent.

Data on a cluster (the one way raytag supports): the dataset folder lives at a URI
(s3://, gs://, file://) and each node copies it once into a node-local cache with
`materialize_data`; each node then builds its own feature store from that local copy
(feature stores are memory-mapped, so they must be on a local disk anyway). A plain local
path is used in place, which is right on one machine or on a shared filesystem.

`LocalCluster` starts a real 2-node cluster on this machine (loopback) for the tests and
the benchmark; it stops only the processes it started, never `ray stop`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from raytag.errors import DatasetError, StorageError

SHARED_FS_ENV = "RAYTAG_SHARED_FS"  # "1": local paths are on a filesystem mounted on every node
DATA_CACHE_ENV = "RAYTAG_DATA_CACHE"  # node-local folder for copies of data URIs
DEFAULT_DATA_CACHE = Path.home() / ".cache" / "raytag" / "data"
MARKER = ".raytag_materialized.json"  # written last: its presence means the copy is whole
# The cluster launcher writes its config here on the head node, where `ray job submit`
# runs the driver; its max_workers tells whether the autoscaler may add nodes later.
LAUNCHER_CONFIG = Path.home() / "ray_bootstrap_config.yaml"

_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# typer/pathlib turn "s3://b/k" into "s3:/b/k"; accept that form for the schemes we know.
_MANGLED_URI = re.compile(r"^(s3|gs|gcs|hdfs|file):/(?!/)")


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
            "is_head": "node:__internal_head__" in res,
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


def is_uri(path: str | os.PathLike) -> bool:
    """True for "scheme://..." (and the "s3:/..." form pathlib leaves of it)."""
    text = str(path)
    return bool(_URI.match(text) or _MANGLED_URI.match(text))


def normalize_uri(path: str | os.PathLike) -> str:
    """Repair a URI that went through pathlib ("s3:/b/k" -> "s3://b/k"); others unchanged."""
    text = str(path)
    if _MANGLED_URI.match(text):
        scheme, rest = text.split(":/", 1)
        return f"{scheme}://{'/' if scheme == 'file' else ''}{rest}"
    return text


def is_local_path(path: str | os.PathLike) -> bool:
    """A path on this machine's disks: no scheme, or file://."""
    text = normalize_uri(path)
    match = _URI.match(text)
    return match is None or match.group(1).lower() == "file"


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
    if _URI.match(text) or shared_fs_declared() or not is_multinode():
        return
    raise StorageError(_local_on_cluster_message(
        "data", "--data", text, len(cluster_nodes()), "s3://bucket/fat2019"))


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
        from raytag.storage import safe_relpath

        safe_relpath(rel, where=f"data URI {root}", error=DatasetError)
        mtime = item.mtime_ns if item.mtime_ns is not None else 0
        files[rel] = {"size": item.size, "mtime_ns": mtime}
    if not files:
        raise DatasetError(f"data URI {root} holds no files")
    return files


def _copy_one(fs, root: str, rel: str, dest_root: Path) -> None:
    from raytag.storage import safe_join

    target = Path(safe_join(dest_root, rel, where=f"copy of {root}", error=DatasetError))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    with fs.open_input_stream(f"{root.rstrip('/')}/{rel}") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 22)
    os.replace(tmp, target)  # a file under its real name is always whole


def materialize_data(data: str | os.PathLike, cache_root: str | os.PathLike | None = None,
                     threads: int = 16) -> Path:
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
      modification time changed, and drops files the source no longer has.
    """
    text = normalize_uri(data)
    if not _URI.match(text):
        path = Path(text).expanduser()
        if path.is_file():
            raise DatasetError(f"--data {path} is a file; give the dataset folder (the one holding "
                               "train_curated.csv or train.csv)")
        if not path.is_dir():
            raise DatasetError(f"data folder not found: {path}")
        return path.resolve()

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

        todo = [rel for rel, meta in source.items()
                if not ((partial / rel).is_file() and (partial / rel).stat().st_size == meta["size"])]
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            list(pool.map(lambda rel: _copy_one(fs, root, rel, partial), todo))
        for path in sorted(partial.rglob("*"), reverse=True):  # files the source no longer has
            rel = path.relative_to(partial).as_posix()
            if path.is_file() and rel not in source:
                path.unlink()
        (partial / MARKER).write_text(json.dumps({"uri": text, "files": source}, sort_keys=True))
        os.replace(partial, final)
    return final


# ----------------------------------------------------------------------------- a real cluster on loopback
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Every live process of a Unix session (ps -s); `ray start` children stay in it."""
    out = subprocess.run(["ps", "-o", "pid=", "-s", str(sid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if p.strip().isdigit()]


def _refresh_ray_auth() -> None:
    """Make this process re-read RAY_AUTH_* (Ray caches the token per process)."""
    try:  # private API, as in ray._private.authentication_test_utils
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:
        pass


@dataclass
class LocalNode:
    name: str
    sid: int  # Unix session id of its `ray start` (we started it with setsid)
    temp_dir: Path
    log: Path

    def pids(self) -> list[int]:
        return _session_pids(self.sid)

    def ray_processes(self) -> dict[int, str]:
        """pid -> process title of this node's Ray workers ("ray::RayTrainWorker...",
        "ray::ImplicitFunc.train" for a Tune trial's driver): who is working where."""
        titles = {}
        for pid in self.pids():
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::"):
                titles[pid] = title
        return titles

    def kill(self) -> list[int]:
        """SIGKILL every process of this node (like losing the machine); returns the pids."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids


@dataclass
class LocalCluster:
    """A real Ray cluster of separate nodes on this machine, for tests and benchmarks.

    Each node is its own `ray start` in its own Unix session under a private temp dir,
    with free ports, so it never meets another Ray session here; `stop()` kills exactly
    the sessions it started (never `ray stop`, which would end every Ray on the machine).
    """

    root: Path
    num_cpus: float = 2
    memory: int = 1 << 30
    object_store_memory: int = 96 << 20
    include_dashboard: bool = False
    # Notice a dead node in about 3 s instead of about 30 s (GCS health checks).
    system_env: dict = field(default_factory=lambda: {
        "RAY_health_check_initial_delay_ms": "1000",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
        # A worker group restarted after a node loss may wait for CPUs another trial holds;
        # waiting is right here, failing after the default 60 s is not.
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
    })
    # Its own auth token (Ray 2.60 turns token auth on when ~/.ray/auth_token exists, and a
    # node or driver without the token is refused): set on every node and, via
    # `driver_env`, on the process that connects.
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list = field(default_factory=list)
    port: int = 0
    dashboard_port: Optional[int] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> Optional[str]:
        return f"http://127.0.0.1:{self.dashboard_port}" if self.include_dashboard else None

    def driver_env(self) -> dict:
        """Environment a process needs to connect to this cluster (ray.init, ray job submit)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def connect(self, **init_kwargs) -> None:
        """ray.init this process to the cluster, with the cluster's token (restored on disconnect)."""
        import ray

        env = self.driver_env()
        self._saved_env = {key: os.environ.get(key) for key in (*env, "RAY_AUTH_TOKEN_PATH")}
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        os.environ.update(env)
        _refresh_ray_auth()
        ray.init(address=self.address, **init_kwargs)

    def disconnect(self) -> None:
        import ray

        ray.shutdown()
        for key, value in getattr(self, "_saved_env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _refresh_ray_auth()

    def _ray_start(self, name: str, args: list[str], timeout: float) -> LocalNode:
        temp_dir = self.root / name
        temp_dir.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        ray_bin = str(Path(sys.executable).with_name("ray"))
        cmd = [ray_bin, "start", f"--temp-dir={temp_dir}", f"--num-cpus={self.num_cpus}",
               f"--memory={self.memory}", f"--object-store-memory={self.object_store_memory}",
               "--disable-usage-stats",
               f"--dashboard-agent-listen-port={_free_port()}",
               f"--dashboard-agent-grpc-port={_free_port()}",
               f"--runtime-env-agent-port={_free_port()}",
               f"--metrics-export-port={_free_port()}", *args]
        env = {**os.environ, **self.system_env, **self.driver_env()}
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        with open(log, "ab") as out:
            # start_new_session: the node's processes share a session id we can kill by
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            node = LocalNode(name=name, sid=proc.pid, temp_dir=temp_dir, log=log)
            self.nodes.append(node)  # recorded before waiting: stop() cleans up a failed start
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
        if rc != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"`ray start` for {name} failed (rc={rc}); log {log}:\n{tail}")
        return node

    def start(self, n_nodes: int = 2, timeout: float = 90.0) -> "LocalCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        head_args = ["--head", f"--port={self.port}", f"--ray-client-server-port={_free_port()}",
                     f"--include-dashboard={'true' if self.include_dashboard else 'false'}"]
        # Ray starts a dashboard process even with --include-dashboard=false (job and
        # state APIs): give it a free port too, never the shared default 8265.
        self.dashboard_port = _free_port()
        head_args += [f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1"]
        self._ray_start("head", head_args, timeout)
        for i in range(1, n_nodes):
            self._ray_start(f"worker{i}", [f"--address={self.address}"], timeout)
        return self

    def wait_for_nodes(self, n: int, timeout: float = 60.0) -> list[dict]:
        """Block until the connected session sees exactly n alive nodes."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = cluster_nodes()
            if len(nodes) == n or time.monotonic() > deadline:
                return nodes
            time.sleep(0.5)

    def kill_node(self, name: str) -> list[int]:
        return next(node for node in self.nodes if node.name == name).kill()

    def stop(self) -> None:
        """Kill every process of every node this cluster started; SIGTERM first."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [pid for node in self.nodes for pid in node.pids()]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                time.sleep(0.2)
                pids = [pid for node in self.nodes for pid in node.pids()]
            if not pids:
                break
        self.nodes.clear()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()
        self.stop()
