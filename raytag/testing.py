"""A real multi-node Ray cluster on this machine (loopback), for tests and benchmarks.

`LocalCluster` starts each node as its own `ray start` in its own Unix session, under a
private temp dir and with free ports, so it never meets another Ray session here; it
stops only the processes it started, never `ray stop`.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from raytag.cluster import cluster_nodes
from raytag.session import free_port


# ----------------------------------------------------------------------------- a real cluster on loopback
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
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}", *args]
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
        self.port = free_port()
        head_args = ["--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}",
                     f"--include-dashboard={'true' if self.include_dashboard else 'false'}"]
        # Ray starts a dashboard process even with --include-dashboard=false (job and
        # state APIs): give it a free port too, never the shared default 8265.
        self.dashboard_port = free_port()
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
        try:
            self.disconnect()
        finally:  # a failed disconnect must not leave the nodes' Ray processes running
            self.stop()
