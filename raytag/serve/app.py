"""`raytag serve ARTIFACT`: the ensemble artifact behind an HTTP address, on Ray Serve.

One deployment, `Tagger`, is both the HTTP ingress (FastAPI) and the model: each replica
loads the artifact once, checks every upload (raytag.serve.upload), and scores uploads
that arrive together from different clients as one batch (`@serve.batch`). Scoring calls
the artifact's own `predict_files`, the code path of `raytag predict`, on the uploads
written to a temporary folder, so the two give the same scores for the same file. A clip
that makes its batch fail fails only its own request (the batch's clips are scored alone).

Endpoints: POST /tag, GET /healthz, GET /classes, GET / (a page to drop a clip on).
"""
# no `from __future__ import annotations`: FastAPI must see the real Request type on the routes
import asyncio
import errno
import logging
import os
import re
import signal
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.exceptions import RayServeException
from starlette.requests import Request as StarletteRequest

from raytag import storage
from raytag.ensemble.artifact import load_artifact
from raytag.errors import RaytagError
from raytag.session import in_local_session, local_init_kwargs
# helpers the replica calls live in other modules: Serve ships this class by value, and
# functions defined in this module are not found in the replica
from raytag.serve.upload import (MAX_SECONDS, Clip, UploadError, audio_suffix, check_audio, clean_fname,
                                 is_multipart, page_html, parse_top, read_capped)

APP_NAME = "raytag"  # the default app, served at "/"; any other --name is served under "/<name>"
APP_NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")  # one URL path segment
INTERNAL_ERROR = ("internal error: this clip could not be tagged (the server's log has the details); "
                  "try again, and report it if it happens again")
log = logging.getLogger("ray.serve")  # Serve routes this logger to the replica's log and stderr
api = FastAPI(title="raytag", docs_url=None, redoc_url=None)


class ServeDeployError(RaytagError):
    """Ray Serve could not deploy the artifact (a replica failed to start, or cannot be placed)."""


@dataclass
class ServeOptions:
    artifact: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_batch_size: int = 8
    max_upload_mb: float = 50.0
    max_seconds: float = MAX_SECONDS  # longer uploads get 413 (checked before they are decoded whole)
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    batch_wait_ms: float = 10.0
    max_queued: int = 256  # requests waiting beyond this get 503 (a flood cannot grow memory)
    name: str = APP_NAME  # the Serve app: several `raytag serve` on one cluster each need their own

    @property
    def route_prefix(self) -> str:
        return "/" if self.name == APP_NAME else f"/{self.name}"

    def check(self) -> None:
        if not APP_NAME_RULE.match(self.name):
            raise RaytagError(f"--name {self.name!r}: letters, digits, '-' and '_' only (it is the app's URL path)")
        if self.replicas < 1:
            raise RaytagError(f"--replicas {self.replicas}: must be at least 1")
        if self.max_batch_size < 1:
            raise RaytagError(f"--max-batch-size {self.max_batch_size}: must be at least 1")
        if not self.max_upload_mb > 0:
            raise RaytagError(f"--max-upload-mb {self.max_upload_mb}: must be more than 0")
        if not self.max_seconds > 0:
            raise RaytagError(f"--max-seconds {self.max_seconds}: must be more than 0")
        if not 1 <= self.port <= 65535:
            raise RaytagError(f"--port {self.port}: must be 1 to 65535")
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise RaytagError("--replica-cpus and --replica-gpus must not be negative")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


@serve.deployment(name="Tagger")
@serve.ingress(api)
class Tagger:
    def __init__(self, artifact: str, max_batch_size: int, max_upload_bytes: int,
                 batch_wait_ms: float = 10.0, use_gpu: bool = False, max_seconds: float = MAX_SECONDS):
        import torch

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.artifact = load_artifact(artifact, device=self.device)
        self.max_upload_bytes = max_upload_bytes
        self.max_seconds = max_seconds
        self._tag_batch.set_max_batch_size(max_batch_size)
        self._tag_batch.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)
        self._pool = ThreadPoolExecutor(max_workers=1)  # model work off the event loop
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0}
        log.info("raytag: loaded %s (%d classes, %d member(s), %s) on %s; batches up to %d",
                 artifact, len(self.artifact.classes), len(self.artifact.members),
                 self.artifact.combiner, self.device, max_batch_size)

    # ------------------------------------------------------------------ endpoints
    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "classes": len(self.artifact.classes), "device": self.device, **self.stats}

    @api.get("/classes")
    async def classes(self):
        art = self.artifact
        return {"classes": art.classes, "version": art.raytag_version, "created": art.created,
                "combiner": art.combiner, "members": [m.name for m in art.members], "layout": art.layout}

    @api.get("/", response_class=HTMLResponse)
    async def page(self):
        return HTMLResponse(page_html())

    @api.post("/tag")
    async def tag(self, request: Request):
        started = time.perf_counter()
        size = 0
        try:
            top = parse_top(request.query_params.get("top"), len(self.artifact.classes))
            fname, data = await self._read_upload(request)
            size = len(data)
            clip = await asyncio.get_running_loop().run_in_executor(
                None, check_audio, fname, data, self.max_upload_bytes, self.max_seconds)
            result = await self._tag_batch(clip)
            if "exception" in result:
                raise result["exception"]  # this clip's own failure: a 500 for this request alone
            if "error" in result:
                raise UploadError(422, result["error"])
        except UploadError as err:
            log.info("POST /tag %d bytes -> %d (%s) in %.1f ms", size, err.status, err.reason,
                     1000 * (time.perf_counter() - started))
            return JSONResponse({"error": err.reason}, status_code=err.status)
        except Exception:  # noqa: BLE001 - one request's bug must not end the server
            # the detail (it may name the server's temp paths) goes to the replica's log only
            log.exception("POST /tag %d bytes: unexpected error", size)
            return JSONResponse({"error": INTERNAL_ERROR}, status_code=500)
        scores = result["scores"]
        order = np.argsort(-scores, kind="stable")[:top]
        tags = [{"label": self.artifact.classes[i], "score": float(scores[i])} for i in order]
        log.info("POST /tag %s: %d bytes, %.2f s of audio -> 200 in %.1f ms (batch of %d)",
                 clip.fname, size, clip.duration, 1000 * (time.perf_counter() - started), result["batch"])
        return {"fname": clip.fname, "duration": clip.duration, "tags": tags}

    async def _read_upload(self, request: Request) -> tuple[str, bytes]:
        """(fname, bytes) from a multipart field `file` or from the raw body."""
        limit = self.max_upload_bytes
        ctype = request.headers.get("content-type", "")
        if not is_multipart(ctype):
            body = await read_capped(request.stream(), limit, request.headers.get("content-length"))
            return clean_fname(request.query_params.get("fname")), body
        body = await read_capped(request.stream(), limit + 64 * 1024, request.headers.get("content-length"))

        async def replay():  # the capped body, handed to starlette's multipart parser
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await StarletteRequest(request.scope, replay).form(max_files=1, max_fields=8)
        except Exception as err:  # noqa: BLE001 - starlette raises several kinds for bad multipart
            raise UploadError(400, f"bad multipart upload: {err}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise UploadError(400, "multipart upload has no file in the field 'file'")
        data = await upload.read()
        await form.close()
        return clean_fname(upload.filename), data

    # ------------------------------------------------------------------ batching
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _tag_batch(self, clips: list[Clip]) -> list[dict]:
        self.stats["requests"] += len(clips)
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(clips))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._score, clips)

    def _score(self, clips: list[Clip]) -> list[dict]:
        """Score a batch; when it fails for a reason other than a decode error (those come back
        per clip), score each clip alone, so that only the clip that fails gets a 500: Serve
        hands an exception from the batch to every client in it."""
        try:
            return self._score_together(clips)
        except Exception:  # noqa: BLE001 - which clip caused it is found by scoring them alone
            if len(clips) == 1:
                raise
            log.warning("raytag: a batch of %d failed; scoring its clips one by one", len(clips), exc_info=True)
            return [self._score_alone(clip) for clip in clips]

    def _score_alone(self, clip: Clip) -> dict:
        try:
            return self._score_together([clip])[0]
        except Exception as err:  # noqa: BLE001 - handed to this clip's request, raised there
            return {"exception": err}

    def _score_together(self, clips: list[Clip]) -> list[dict]:
        """Score clips with the artifact's predict_files (the `raytag predict` path)."""
        with tempfile.TemporaryDirectory(prefix="raytag-serve-") as tmp:
            paths = []
            for i, clip in enumerate(clips):
                path = Path(tmp) / f"{i:04d}{audio_suffix(clip.fname)}"
                path.write_bytes(clip.data)
                paths.append(str(path))
            probs, failures = self.artifact.predict_files(paths, device=self.device)
        reasons = dict(zip(failures["file"], failures["reason"]))
        out = []
        for clip, path in zip(clips, paths):
            if path in reasons:
                out.append({"error": f"{clip.fname}: {reasons[path]}"})
            else:
                out.append({"scores": probs.loc[path].to_numpy(np.float64), "batch": len(clips)})
        return out


# ---------------------------------------------------------------------- start and stop
def build_app(opts: ServeOptions):
    """The bound Serve application for these options (the artifact path must be readable
    where the replicas run: a local path on one machine, a URI or shared folder on a cluster)."""
    max_ongoing = max(2 * opts.max_batch_size, 8)  # room for a full batch and the next one forming
    return Tagger.options(
        num_replicas=opts.replicas,
        max_ongoing_requests=max_ongoing,
        max_queued_requests=opts.max_queued,
        ray_actor_options={"num_cpus": opts.replica_cpus, "num_gpus": opts.replica_gpus},
    ).bind(opts.artifact, opts.max_batch_size, opts.max_upload_bytes, opts.batch_wait_ms,
           opts.replica_gpus > 0, opts.max_seconds)


def check_port_free(host: str, port: int) -> None:
    """A clear error before Ray Serve starts, whose own message for a taken port is buried in a log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise RaytagError(bind_failure(host, port, err)) from None


def bind_failure(host: str, port: int, err: OSError) -> str:
    """What a failed bind of --host/--port says to do: only a taken port is the port's fault."""
    where = f"cannot serve on {host}:{port}: {err.strerror or err}"
    if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:  # no such name / not ours
        return (f"{where}; --host {host} is not an address of this machine: give 127.0.0.1 (this machine "
                "only) or 0.0.0.0 (every address, to accept other machines)")
    if err.errno == errno.EACCES and port < 1024:
        return f"{where}; ports below 1024 need root: choose another with --port, e.g. --port 8000"
    if err.errno == errno.EADDRINUSE:
        return (f"{where}; another program (or an earlier `raytag serve`) holds that port: stop it or "
                "choose another with --port")
    return f"{where}; check --host and --port"


@dataclass(frozen=True)
class RunningServe:
    """Ray Serve as it already runs on the cluster: where its proxy listens, and its apps.
    host and port are None, and each route None, where this Ray does not say (running_serve)."""

    host: Optional[str]
    port: Optional[int]
    routes: dict = field(default_factory=dict)  # app name -> route prefix

    @property
    def address_known(self) -> bool:
        return self.host is not None and self.port is not None

    def url(self, route: str = "/") -> str:
        return _url(self.host, self.port, route)

    def where(self, route: Optional[str]) -> str:
        """An app's URL, for messages."""
        if not self.address_known or route is None:
            return "an address this Ray does not report"
        return self.url(route)


@dataclass(frozen=True)
class Deployment:
    """What `start` put on Ray Serve, so that `stop` removes that and nothing else."""

    app_name: str
    url: str
    started_serve: bool  # Serve was not running before: this command started it


def running_serve() -> Optional[RunningServe]:
    """The Serve already running on this Ray cluster (another `raytag serve`, a killed one's
    leftover app, anyone's), or None. Read through Ray's private controller client, the only
    way to learn where Serve listens (serve.start on a running Serve ignores new http_options
    with a log line only); where a Ray version changed that API, the public serve.status()
    gives the apps without address or routes, and the checks that need those are skipped."""
    get_client = _private_client_getter()
    if get_client is None:
        return _running_serve_from_status()
    client = get_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    missing = [name for name in _PRIVATE_CLIENT_API if not hasattr(client, name)]
    if missing:
        _say_without_private_client(f"its Serve client has no {', '.join(missing)}")
        return _running_serve_from_status()
    return _running_serve_from_client(client)


# what raytag reads of Ray's private ServeControllerClient
_PRIVATE_CLIENT_API = ("get_serve_details", "http_config")


def _private_client_getter():
    """Ray's private ray.serve.context._get_global_client, or None (said) where this Ray has
    none. Looked up here, so that a Ray without it still imports this module."""
    try:
        from ray.serve.context import _get_global_client
    except ImportError as err:
        _say_without_private_client(str(err))
        return None
    return _get_global_client


def _running_serve_from_client(client) -> RunningServe:
    apps = client.get_serve_details().get("applications", {})
    routes = {name: app.get("route_prefix") for name, app in apps.items()}
    http = client.http_config
    if http is None:  # no HTTP options recorded (Serve without a proxy): the address is not known
        return RunningServe(None, None, routes)
    return RunningServe(http.host, int(http.port), routes)


_said_without_private_client = False  # said once per process: running_serve runs at start and at stop


def _say_without_private_client(why: str) -> None:
    global _said_without_private_client
    if not _said_without_private_client:
        _said_without_private_client = True
        log.warning("raytag: this Ray does not offer the private Serve client API raytag reads the running "
                    "Serve's address and routes from (%s); checking the app names only", why)


def _running_serve_from_status() -> Optional[RunningServe]:
    """Serve's public status: with no Serve running it has neither proxies nor apps."""
    status = serve.status()
    if not status.proxies and not status.applications:
        return None
    return RunningServe(None, None, {name: None for name in status.applications})


def check_can_join(running: RunningServe, opts: ServeOptions) -> None:
    """RaytagError unless this app can be added to the running Serve as asked: Serve has one
    HTTP address per cluster (it ignores another --host/--port), and deploying an app of a
    running app's name would replace that app's model under its clients."""
    apps = ", ".join(f"'{name}' at {running.where(route or '/')}" for name, route in sorted(running.routes.items()))
    if not running.address_known:
        log.warning("raytag: Ray Serve already runs on this cluster and this Ray does not say where it "
                    "listens; if not on %s:%d, Serve keeps its own address and %s has nothing behind it",
                    opts.host, opts.port, _url(opts.host, opts.port, opts.route_prefix))
    elif (running.host, running.port) != (opts.host, opts.port):
        beside = " and a --name of its own" if running.routes else ""
        raise RaytagError(
            f"cannot serve on {opts.host}:{opts.port}: Ray Serve already runs on this cluster and listens on "
            f"{running.host}:{running.port} (apps: {apps or 'none'}), and one cluster's Serve has one HTTP "
            f"address. Serve there with --host {running.host} --port {running.port}{beside}, or stop that "
            f"Serve first")
    if opts.name in running.routes:
        raise RaytagError(
            f"Ray Serve on this cluster already runs an app named '{opts.name}' "
            f"(at {running.where(running.routes[opts.name] or '/')}: another `raytag serve`, or one left by a killed "
            f"job); deploying would replace its model under its clients. Give this one its own --name (it is "
            f"then served under /<name>/), or stop that one first (`ray job stop`; a leftover: `serve shutdown "
            f"-y`, which stops every Serve app on the cluster)")
    taken = [name for name, route in running.routes.items() if route == opts.route_prefix]
    if taken:
        raise RaytagError(f"the route {opts.route_prefix} is taken by the Serve app '{taken[0]}' on this cluster; "
                          f"give this one another --name")


def start(opts: ServeOptions) -> Deployment:
    """Verify the artifact, start Ray Serve (or join the Serve already running on the
    cluster) and deploy; returns what was deployed, for `stop`. Joins the Ray session
    already running in this process, else RAY_ADDRESS's cluster, else a local one. A
    deployment that fails or is interrupted is stopped before the error passes on."""
    import ray

    opts.check()
    opts.artifact = storage.absolute(opts.artifact)
    load_artifact(opts.artifact)  # a bad artifact is refused here, with its reason, not in a replica log
    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):  # a new local session has no Serve: refused before Ray starts
            check_port_free(opts.host, opts.port)
        _init_ray()
    running = running_serve()
    if running is None:
        check_port_free(opts.host, opts.port)
    else:  # its proxy holds the port already
        check_can_join(running, opts)
    refuse_replicas_this_session_cannot_place(opts)
    deployment = Deployment(opts.name, _url(opts.host, opts.port, opts.route_prefix), started_serve=running is None)
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": opts.host, "port": opts.port})
        _deploy(opts)
    except BaseException:  # SIGTERM (KeyboardInterrupt) too: no half-deployed app is left behind
        stop(deployment)
        raise
    return deployment


def _url(host: str, port: int, route: str) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}{route.rstrip('/')}"


def _deploy(opts: ServeOptions) -> None:
    """serve.run, waiting until every replica has loaded the artifact; its failure (a replica's
    constructor raised) becomes a ServeDeployError with Serve's reason."""
    try:
        serve.run(build_app(opts), name=opts.name, route_prefix=opts.route_prefix,
                  logging_config={"enable_access_log": False})
    except (RuntimeError, TimeoutError, RayServeException) as err:
        raise ServeDeployError(f"Ray Serve could not deploy {opts.artifact}: {err}\nThe replica's own log "
                               f"(Ray dashboard, Serve tab, or `ray logs`) has the whole story; fix "
                               f"the cause and run `raytag serve` again") from None


def refuse_replicas_this_session_cannot_place(opts: ServeOptions) -> None:
    """On a one-node local session, replicas that do not fit would wait for resources forever;
    a joined cluster (RAY_ADDRESS) may add nodes (its autoscaler), so there they are left to wait."""
    import ray

    if in_local_session() and sum(1 for node in ray.nodes() if node.get("Alive")) == 1:
        check_replicas_fit(opts, ray.cluster_resources())


def check_replicas_fit(opts: ServeOptions, have: dict) -> None:
    """RaytagError unless opts.replicas replicas fit the resources `have` (Ray's CPU and GPU counts)."""
    need = {"CPU": opts.replicas * opts.replica_cpus, "GPU": opts.replicas * opts.replica_gpus}
    short = [kind for kind, amount in need.items() if amount > have.get(kind, 0.0) + 1e-9]
    if not short:
        return
    fix = " / ".join(f"--replica-{kind.lower()}s" for kind in short)
    raise ServeDeployError(
        f"--replicas {opts.replicas} x (--replica-cpus {opts.replica_cpus:g}, --replica-gpus "
        f"{opts.replica_gpus:g}) need {need['CPU']:g} CPUs and {need['GPU']:g} GPUs, but this "
        f"machine's Ray session has {have.get('CPU', 0.0):g} CPUs and {have.get('GPU', 0.0):g} GPUs, so "
        f"Serve would wait for them forever; lower --replicas or {fix}"
        + (" (--replica-gpus 0 runs the models on the CPU)" if "GPU" in short else ""))


def stop(deployment: Deployment) -> list[str]:
    """Delete this command's app (half-deployed or not); shut Serve down only when this
    command started it and no other app runs there now (another `raytag serve` may have
    joined it). Returns the apps left running. Without Ray there is nothing to stop, and a
    Serve call would start a Ray session just to find that out."""
    import ray

    if not ray.is_initialized():
        return []
    try:
        serve.delete(deployment.app_name)
    # no Serve (any more: someone ran `serve shutdown`), so nothing of ours runs
    except (RayServeException, ray.exceptions.RayActorError):
        return []
    except TimeoutError as err:  # still deleting after Serve's wait: Serve finishes it without us
        log.warning("raytag: %s", err)
    running = running_serve()
    left = sorted(name for name in running.routes if name != deployment.app_name) if running is not None else []
    if deployment.started_serve and running is not None and not left:
        serve.shutdown()
    return left


def _init_ray() -> None:
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    handler = signal.getsignal(signal.SIGTERM)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True, configure_logging=False)
    else:  # the replicas' request logs are printed here (log_to_driver)
        ray.init(**local_init_kwargs(address="local", log_to_driver=True))
    if handler is _raise_interrupt:  # ray.init sets its own, which exits without stopping Serve
        signal.signal(signal.SIGTERM, handler)


def serve_command(artifact: str, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
                  max_batch_size: int = 8, max_upload_mb: float = 50.0, replica_cpus: float = 1.0,
                  replica_gpus: float = 0.0, max_seconds: float = MAX_SECONDS, name: str = APP_NAME) -> None:
    """Serve until Ctrl-C (or SIGTERM, as `ray job stop` sends), then remove the app (and
    Serve, when this command started it and nothing else runs there)."""
    from rich.console import Console

    console = Console(stderr=True)
    opts = ServeOptions(artifact=str(artifact), host=host, port=port, replicas=replicas,
                        max_batch_size=max_batch_size, max_upload_mb=max_upload_mb,
                        replica_cpus=replica_cpus, replica_gpus=replica_gpus, max_seconds=max_seconds, name=name)
    opts.check()
    console.print(f"checking {opts.artifact}, then starting Ray Serve with {opts.replicas} replica(s) ...",
                  highlight=False)
    # from before start(): serve.run may wait minutes (for GPU nodes), and a SIGTERM or a failed
    # deployment then must not leave the detached Serve app behind
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    deployment = None
    try:
        deployment = start(opts)  # a failed or interrupted start stops what it deployed itself
        url = deployment.url
        console.print(f"serving [bold]{url}[/]  (page: {url}/, API: POST {url}/tag, GET {url}/classes, "
                      f"{url}/healthz); Ctrl-C stops", highlight=False)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping: finishing requests in flight and removing the app from Ray Serve ...")
    finally:
        signal.signal(signal.SIGTERM, previous)
        left = stop(deployment) if deployment is not None else []
    if left:
        console.print(f"Ray Serve keeps running on the cluster for its other app(s): {', '.join(left)}",
                      highlight=False)
    console.print("stopped")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
