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
import logging
import os
import signal
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from starlette.requests import Request as StarletteRequest

from raytag import storage
from raytag.ensemble.artifact import load_artifact, read_manifest
from raytag.errors import RaytagError
from raytag.session import in_local_session, local_init_kwargs
# helpers the replica calls live in other modules: Serve ships this class by value, and
# functions defined in this module are not found in the replica
from raytag.serve.upload import (MAX_SECONDS, Clip, UploadError, audio_suffix, check_audio, clean_fname,
                                 is_multipart, page_html, parse_top, read_capped)

APP_NAME = "raytag"
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

    def check(self) -> None:
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
        self.created = read_manifest(artifact).get("created", "")
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
        return {"classes": art.classes, "version": art.raytag_version, "created": self.created,
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
            raise RaytagError(f"cannot serve on {host}:{port}: {err.strerror or err}; another program "
                              f"(or an earlier `raytag serve`) holds that port: stop it or choose "
                              f"another with --port") from None


def start(opts: ServeOptions) -> str:
    """Verify the artifact, start Ray Serve and deploy; returns the base URL. Joins the Ray
    session already running in this process, else RAY_ADDRESS's cluster, else a local one."""
    import ray

    opts.check()
    opts.artifact = storage.absolute(opts.artifact)
    load_artifact(opts.artifact)  # a bad artifact is refused here, with its reason, not in a replica log
    check_port_free(opts.host, opts.port)
    if not ray.is_initialized():
        _init_ray()
    refuse_replicas_this_session_cannot_place(opts)
    serve.start(proxy_location="HeadOnly", http_options={"host": opts.host, "port": opts.port})
    _deploy(opts)
    shown = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
    return f"http://{shown}:{opts.port}"


def _deploy(opts: ServeOptions) -> None:
    """serve.run, waiting until every replica has loaded the artifact; its failure (a replica's
    constructor raised) becomes a ServeDeployError with Serve's reason."""
    from ray.serve.exceptions import RayServeException

    try:
        serve.run(build_app(opts), name=APP_NAME, route_prefix="/",
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


def stop() -> None:
    """Shut Serve down (its apps, half-deployed ones included); without Ray there is nothing to
    stop, and serve.shutdown would start a Ray session just to find that out."""
    import ray

    if ray.is_initialized():
        serve.shutdown()


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
                  replica_gpus: float = 0.0, max_seconds: float = MAX_SECONDS) -> None:
    """Serve until Ctrl-C (or SIGTERM, as `ray job stop` sends), then shut Serve down."""
    from rich.console import Console

    console = Console(stderr=True)
    opts = ServeOptions(artifact=str(artifact), host=host, port=port, replicas=replicas,
                        max_batch_size=max_batch_size, max_upload_mb=max_upload_mb,
                        replica_cpus=replica_cpus, replica_gpus=replica_gpus, max_seconds=max_seconds)
    opts.check()
    console.print(f"checking {opts.artifact}, then starting Ray Serve with {opts.replicas} replica(s) ...",
                  highlight=False)
    # from before start(): serve.run may wait minutes (for GPU nodes), and a SIGTERM or a failed
    # deployment then must not leave the detached Serve app behind
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        url = start(opts)
        console.print(f"serving [bold]{url}[/]  (page: {url}/, API: POST {url}/tag, GET {url}/classes, "
                      f"{url}/healthz); Ctrl-C stops", highlight=False)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping: finishing requests in flight and shutting Ray Serve down ...")
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop()
    console.print("stopped")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
