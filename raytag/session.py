"""Starting or joining Ray, in one place.

The dashboard must run: Ray Train V2 cleans up a stopped trial's worker group through it,
and without it a trial stopped early by ASHA keeps its workers and the next trial waits
for resources until "worker group startup timed out" (measured with Ray 2.60). Its
default port (8265) may be held by another Ray instance on the same machine, in which
case the dashboard silently fails; so a local session takes a free port."""
from __future__ import annotations

import os
import socket

from raytag.errors import ClusterError

PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Ray Train's controller takes one report off each worker's queue (of size 1) per poll, every
# 2 s by default, so a worker whose epochs are shorter than that waits in ray.train.report
# (the demo's epochs take 1-3 s on a laptop). Polling every 0.5 s costs the controller little.
CONTROLLER_POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
LOCAL_TRAIN_ENV = {PREEMPTION_WATCHER: "0", CONTROLLER_POLL: "0.5"}  # a user's own values win
# In a local session's runtime env, so the driver and every worker (a sweep's trial) can tell
# a session raytag started on this machine from a cluster it joined (`in_local_session`)
LOCAL_SESSION = "RAYTAG_LOCAL_SESSION"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_init_kwargs(**overrides) -> dict:
    """ray.init arguments for a local session (tests, laptops).

    Ray Train V2 removes a stopped trial's placement group from a cleaner actor that asks
    the State API whether the trial's controller is alive. Without an address the State
    API searches the machine and fails when more than one Ray instance runs there (two
    sweeps, a test session): the cleaner dies and the stopped trial's CPUs stay reserved.
    RAY_API_SERVER_ADDRESS in the session's runtime env points every worker at this
    instance's own dashboard."""
    port = free_port()
    env = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}", LOCAL_SESSION: "1"}
    # Ray Train's preemption watcher (one more actor process per trial, polling every 5 s)
    # watches cloud nodes being drained; a local session has none.
    env.update({key: os.environ.get(key, value) for key, value in LOCAL_TRAIN_ENV.items()})
    kwargs = dict(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                  log_to_driver=False, configure_logging=False, runtime_env={"env_vars": env})
    kwargs.update(overrides)
    return kwargs


def ensure_ray(**overrides) -> None:
    """Join the cluster in RAY_ADDRESS (e.g. under `ray job submit`), else start a local one."""
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        join_cluster(**overrides)
    else:  # "local": never join a cluster that `ray start` left running on this machine
        kwargs = local_init_kwargs(address="local", **overrides)
        # the driver's own trainers read them here (Ray Train passes them on to its controller)
        for key in LOCAL_TRAIN_ENV:
            os.environ.setdefault(key, kwargs["runtime_env"]["env_vars"][key])
        ray.init(**kwargs)


def join_cluster(**overrides) -> None:
    """Join the cluster in RAY_ADDRESS; a failure (unreachable, refused, no token) is a
    ClusterError that names the address and what to do, not Ray's traceback."""
    import ray

    address = os.environ["RAY_ADDRESS"]
    try:
        ray.init(log_to_driver=False, configure_logging=False, **overrides)
    except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError... here
        reason = next(iter(str(err).strip().splitlines()), type(err).__name__)  # Ray's first line, no stack
        raise ClusterError(f"cannot join the Ray cluster at RAY_ADDRESS={address}: {reason}; unset RAY_ADDRESS "
                           "to run locally, or check the address and RAY_AUTH_TOKEN") from err


def in_local_session() -> bool:
    """Whether the connected Ray is a local session (`local_init_kwargs`: a laptop, the
    tests), not a cluster joined through RAY_ADDRESS, which may have one node now and more
    once its autoscaler starts them. Read from the job's runtime env: the same answer in the
    driver and in its workers."""
    import ray

    env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    return env.get(LOCAL_SESSION) == "1"
