"""`raytag serve` starting and failing to start, with Ray and Ray Serve stubbed (fast, no Ray
session): a deployment that fails or is stopped while it deploys still shuts Serve down, a
Serve already on the cluster is joined only as it can be (its address, another app name)
and is left running, and a local session refuses replicas it can never place."""
from __future__ import annotations

import errno
import signal
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import ray
from ray import serve
from typer.testing import CliRunner

from raytag.errors import RaytagError
from raytag.serve import app as serve_app
from raytag.serve.app import ServeOptions
from raytag.session import free_port


@pytest.fixture
def stubbed_ray(monkeypatch):
    """ray.init joins 'a cluster' (not a local session) and, as the real one does, sets its own
    SIGTERM handler (exit at once). The cluster's Serve (`calls["serve"]`, a RunningServe or
    None) is a fake: serve.start starts it on the options' address unless it runs (then, like
    Ray's, it ignores them), serve.run adds an app, serve.delete removes one (recorded), and
    serve.shutdown ends it (counted)."""
    calls = {"shutdown": 0, "ray_up": False, "serve": None, "deleted": []}

    def ray_init(**kwargs):
        calls["ray_up"] = True
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))

    def serve_start(http_options, **kwargs):
        if calls["serve"] is None:
            calls["serve"] = serve_app.RunningServe(http_options["host"], http_options["port"], {})

    def serve_run(app, name, route_prefix, **kwargs):
        calls["serve"].routes[name] = route_prefix

    def serve_delete(name):
        calls["deleted"].append(name)
        calls["serve"].routes.pop(name, None)

    def serve_shutdown():
        calls["shutdown"] += 1
        calls["serve"] = None

    monkeypatch.setattr(serve_app, "load_artifact", lambda path, **kw: None)  # not what is tested here
    monkeypatch.setattr(ray, "init", ray_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: calls["ray_up"])
    monkeypatch.setattr(serve_app, "in_local_session", lambda: False)
    monkeypatch.setattr(serve_app, "running_serve", lambda: calls["serve"])
    monkeypatch.setattr(serve, "start", serve_start)
    monkeypatch.setattr(serve, "run", serve_run)
    monkeypatch.setattr(serve, "delete", serve_delete)
    monkeypatch.setattr(serve, "shutdown", serve_shutdown)
    sigterm = signal.getsignal(signal.SIGTERM)
    yield calls
    signal.signal(signal.SIGTERM, sigterm)


def _raytag_serve(tmp_path, *options):
    from raytag.cli import app

    return CliRunner().invoke(app, ["serve", str(tmp_path), "--port", str(free_port()), *options])


def test_a_failed_deployment_is_a_clear_error_and_shuts_serve_down(stubbed_ray, monkeypatch, tmp_path):
    def deploy_fails(*args, **kwargs):  # what serve.run raises when a replica's constructor fails
        raise RuntimeError("Deploying application raytag failed: Tagger.__init__: CUDA out of memory")

    monkeypatch.setattr(serve, "run", deploy_fails)
    result = _raytag_serve(tmp_path)
    assert result.exit_code == 2, result.output
    assert "could not deploy" in result.output and "CUDA out of memory" in result.output
    assert "Traceback" not in result.output
    assert stubbed_ray["shutdown"] == 1


def test_sigterm_while_deploying_shuts_serve_down(stubbed_ray, monkeypatch, tmp_path):
    """`ray job stop` sends SIGTERM while serve.run still waits (for GPU nodes, say): the
    half-deployed app is shut down, not left behind."""
    before = signal.getsignal(signal.SIGTERM)

    def deploy_interrupted(*args, **kwargs):
        handler = signal.getsignal(signal.SIGTERM)
        assert handler is serve_app._raise_interrupt, f"SIGTERM runs {handler} while Serve deploys"
        handler(signal.SIGTERM, None)  # what the signal would run, without signalling pytest

    monkeypatch.setattr(serve, "run", deploy_interrupted)
    result = _raytag_serve(tmp_path)
    assert result.exit_code == 0, result.output
    assert "stopped" in result.output and stubbed_ray["shutdown"] == 1
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------- a Serve already on the cluster
def test_a_second_serve_on_another_port_is_refused_naming_the_port_in_use(stubbed_ray, monkeypatch, tmp_path):
    """Ray ignores a new HTTP port when Serve already runs: the second `raytag serve` printed a
    URL where nothing listened, and replaced the first one's model on its port."""
    from raytag.cli import app

    running = free_port()
    stubbed_ray["serve"] = serve_app.RunningServe("127.0.0.1", running, {"raytag": "/"})
    monkeypatch.setattr(serve, "run", lambda *a, **k: pytest.fail("deployed over the running app"))
    other = free_port()
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--port", str(other)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"cannot serve on 127.0.0.1:{other}" in text and f"listens on 127.0.0.1:{running}" in text
    assert f"--port {running}" in text and "--name" in text
    assert stubbed_ray["deleted"] == [] and stubbed_ray["shutdown"] == 0
    assert stubbed_ray["serve"].routes == {"raytag": "/"}


def test_an_app_of_the_running_apps_name_is_refused_and_another_name_is_served_beside_it(stubbed_ray, monkeypatch,
                                                                                          tmp_path):
    """The app was always named "raytag": a second serve on the same port replaced the first
    one's model under its clients. And stopping it ran serve.shutdown, which removed every
    Serve app on the cluster; now it deletes its own app only."""
    port = free_port()
    stubbed_ray["serve"] = serve_app.RunningServe("127.0.0.1", port, {"raytag": "/", "theirs": "/theirs"})
    with pytest.raises(RaytagError, match=r"already runs an app named 'raytag' \(at http://127.0.0.1:\d+: .*--name"):
        serve_app.start(ServeOptions(artifact=str(tmp_path), port=port))
    deployment = serve_app.start(ServeOptions(artifact=str(tmp_path), port=port, name="student"))
    assert deployment.url == f"http://127.0.0.1:{port}/student" and not deployment.started_serve
    assert stubbed_ray["serve"].routes == {"raytag": "/", "theirs": "/theirs", "student": "/student"}
    assert serve_app.stop(deployment) == ["raytag", "theirs"]
    assert stubbed_ray["deleted"] == ["student"] and stubbed_ray["shutdown"] == 0


def test_a_serve_this_command_started_stays_up_while_another_app_joined_it(stubbed_ray, tmp_path):
    deployment = serve_app.start(ServeOptions(artifact=str(tmp_path), port=free_port()))
    assert deployment.started_serve and stubbed_ray["serve"].routes == {"raytag": "/"}
    stubbed_ray["serve"].routes["student"] = "/student"  # another `raytag serve --name student` joined
    assert serve_app.stop(deployment) == ["student"] and stubbed_ray["shutdown"] == 0
    assert serve_app.stop(serve_app.Deployment("student", "", started_serve=False)) == []
    assert stubbed_ray["shutdown"] == 0  # not this one's Serve to end
    deployment = serve_app.start(ServeOptions(artifact=str(tmp_path), port=stubbed_ray["serve"].port))
    assert serve_app.stop(deployment) == [] and stubbed_ray["shutdown"] == 0  # joined, not started: left up


def test_a_taken_port_is_refused_when_no_serve_runs(stubbed_ray, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(RaytagError, match=f"127.0.0.1:{port}.*another program"):
            serve_app.start(ServeOptions(artifact=str(tmp_path), port=port))
    assert stubbed_ray["serve"] is None


@pytest.mark.parametrize("name", ["../x", "a/b", "", "-lead", "with space"])
def test_an_app_name_that_is_not_one_url_segment_is_refused(name):
    with pytest.raises(RaytagError, match="--name"):
        ServeOptions(artifact="a", name=name).check()


def test_an_error_before_ray_starts_does_not_start_ray_to_shut_it_down(monkeypatch, tmp_path):
    """A bad artifact is refused before Ray starts; stopping then must not start Ray (serve.shutdown would)."""
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(serve, "shutdown", lambda: pytest.fail("serve.shutdown without Ray"))
    result = _raytag_serve(tmp_path / "nothing")
    assert result.exit_code == 2 and "no such artifact" in result.output


# ----------------------------------------------------------------------------- what fits a local session
@pytest.mark.parametrize("options, have, wanted", [
    (dict(replica_gpus=1.0), {"CPU": 2.0}, "--replica-gpus"),
    (dict(replicas=4), {"CPU": 2.0}, "--replicas 4"),
    (dict(replicas=3, replica_gpus=0.5), {"CPU": 8.0, "GPU": 1.0}, "1.5 GPUs"),
])
def test_replicas_that_cannot_fit_one_node_are_refused(options, have, wanted):
    with pytest.raises(RaytagError, match=wanted):
        serve_app.check_replicas_fit(ServeOptions(artifact="a", **options), have)


def test_replicas_that_fit_one_node_pass():
    serve_app.check_replicas_fit(ServeOptions(artifact="a", replicas=2, replica_cpus=1.0), {"CPU": 2.0})
    serve_app.check_replicas_fit(ServeOptions(artifact="a", replicas=2, replica_gpus=0.5), {"CPU": 4.0, "GPU": 1.0})
    serve_app.check_replicas_fit(ServeOptions(artifact="a", replicas=3, replica_cpus=0.1), {"CPU": 0.30000000000000004})


def _one_node_with(monkeypatch, resources: dict, local: bool):
    monkeypatch.setattr(serve_app, "in_local_session", lambda: local)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": resources}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    monkeypatch.setattr(serve, "run", lambda *a, **k: pytest.fail("deployed replicas that cannot be placed"))


def test_start_refuses_a_gpu_replica_on_a_local_session_without_gpu(stubbed_ray, monkeypatch, tmp_path):
    _one_node_with(monkeypatch, {"CPU": 2.0}, local=True)
    with pytest.raises(RaytagError, match="--replica-gpus"):
        serve_app.start(ServeOptions(artifact=str(tmp_path), port=free_port(), replica_gpus=1.0))


def test_start_trusts_a_joined_cluster_to_add_nodes(stubbed_ray, monkeypatch, tmp_path):
    """A cluster joined through RAY_ADDRESS may autoscale: a GPU replica waits for its GPU node."""
    _one_node_with(monkeypatch, {"CPU": 4.0}, local=False)
    deployed = []
    monkeypatch.setattr(serve, "run", lambda *a, **k: deployed.append(k["name"]))
    serve_app.start(ServeOptions(artifact=str(tmp_path), port=free_port(), replica_gpus=1.0))
    assert deployed == ["raytag"]


# ----------------------------------------------------------------------------- Ray's private Serve client
REAL_RUNNING_SERVE = serve_app.running_serve  # stubbed_ray replaces it


def test_the_module_imports_where_ray_lacks_its_private_serve_client():
    """The private ray.serve.context._get_global_client was imported at module load: a Ray that
    renames it would break `import raytag.serve.app`, so all of `raytag serve`."""
    code = ("import ray.serve.context as context\n"
            "del context._get_global_client\n"
            "import raytag.serve.app as app\n"
            "app.ServeOptions(artifact='a').check()\n"
            "print('imported')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]


def test_without_the_private_client_serve_is_joined_by_app_names_alone(stubbed_ray, monkeypatch, tmp_path, caplog):
    """The address check is skipped with a logged note; the public serve.status still gives
    the apps, so a running app's name is refused and stop still finds what is left."""
    import logging

    import ray.serve.context as context

    monkeypatch.delattr(context, "_get_global_client")
    monkeypatch.setattr(serve_app, "running_serve", REAL_RUNNING_SERVE)
    monkeypatch.setattr(serve_app, "_said_without_private_client", False)
    caplog.set_level(logging.WARNING, logger="ray.serve")

    def status():  # the public status of the fake cluster's Serve (no address, no routes)
        running = stubbed_ray["serve"]
        apps = {} if running is None else {name: object() for name in running.routes}
        return SimpleNamespace(proxies={} if running is None else {"head": object()}, applications=apps)

    monkeypatch.setattr(serve, "status", status)
    assert serve_app.running_serve() is None
    assert "private Serve client" in caplog.text
    stubbed_ray["serve"] = serve_app.RunningServe("127.0.0.1", free_port(), {"raytag": "/"})
    with pytest.raises(RaytagError, match="already runs an app named 'raytag'"):
        serve_app.start(ServeOptions(artifact=str(tmp_path), port=free_port()))
    caplog.clear()
    deployment = serve_app.start(ServeOptions(artifact=str(tmp_path), port=free_port(), name="student"))
    assert "does not say where it listens" in caplog.text
    assert stubbed_ray["serve"].routes == {"raytag": "/", "student": "/student"}
    assert serve_app.stop(deployment) == ["raytag"] and stubbed_ray["shutdown"] == 0
    assert "private Serve client" not in caplog.text  # said once per process, not at every start and stop


class _Client:
    """Ray's private Serve controller client as raytag reads it."""

    def __init__(self, http_config=SimpleNamespace(host="127.0.0.1", port=8000), details=None):
        self.http_config = http_config
        self._details = details

    def get_serve_details(self):
        if self._details is None:
            raise AttributeError("'NoneType' object has no attribute 'get'")  # a fault inside the API
        return self._details


def _with_client(monkeypatch, client):
    import ray.serve.context as context

    monkeypatch.setattr(context, "_get_global_client", lambda raise_if_no_controller_running=True: client)
    monkeypatch.setattr(serve_app, "_said_without_private_client", False)


def test_an_attribute_error_inside_the_private_client_is_not_taken_for_an_older_ray(monkeypatch, caplog):
    """Only a missing API falls back to serve.status(); a fault inside a present one (or in
    raytag) is raised, not reported as "this Ray does not offer the private Serve client"."""
    _with_client(monkeypatch, _Client(details=None))
    monkeypatch.setattr(serve, "status", lambda: pytest.fail("fell back to serve.status()"))
    with pytest.raises(AttributeError, match="no attribute 'get'"):
        serve_app.running_serve()
    assert "private Serve client" not in caplog.text


def test_a_private_client_without_the_api_raytag_reads_falls_back_to_app_names(monkeypatch, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="ray.serve")
    _with_client(monkeypatch, SimpleNamespace(http_config=None))  # no get_serve_details
    monkeypatch.setattr(serve, "status", lambda: SimpleNamespace(proxies={"head": 1}, applications={"raytag": 1}))
    assert serve_app.running_serve() == serve_app.RunningServe(None, None, {"raytag": None})
    assert "its Serve client has no get_serve_details" in caplog.text


def test_a_serve_without_http_options_has_its_apps_but_no_address(monkeypatch):
    _with_client(monkeypatch, _Client(http_config=None, details={"applications": {"raytag": {"route_prefix": "/"}}}))
    running = serve_app.running_serve()
    assert running == serve_app.RunningServe(None, None, {"raytag": "/"}) and not running.address_known


# ----------------------------------------------------------------------------- benchmarks/bench_serve.py
def test_the_serve_benchmark_deploys_serves_and_removes_its_own_app(stubbed_ray, monkeypatch, tmp_path):
    """bench_serve.py took start()'s Deployment for its URL (requests' MissingSchema on the
    first request) and called stop() without it (a TypeError that hid that error)."""
    import requests
    from bench_util import load_benchmark

    bench = load_benchmark("bench_serve")
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF")
    posted, measured = [], []
    monkeypatch.setattr(requests, "post", lambda url, **kw: posted.append(url) or SimpleNamespace(
        raise_for_status=lambda: None))
    monkeypatch.setattr(bench, "bench_serve", lambda url, clips, n: measured.append(url) or [{"clients": 1}])
    port = free_port()
    startup, levels = bench.timed_serve(ServeOptions(artifact=str(tmp_path), port=port), [clip], 4)
    url = f"http://127.0.0.1:{port}"
    assert posted == [f"{url}/tag"] and measured == [url] and levels == [{"clients": 1}] and startup >= 0
    assert stubbed_ray["deleted"] == ["raytag"] and stubbed_ray["shutdown"] == 1


# ----------------------------------------------------------------------------- the page of a --name'd app
def _get(path: str, root_path: str) -> dict:
    """The response start of GET `path` on the app's FastAPI ingress, with the scope Ray Serve's
    proxy gives an app under `root_path` (its route prefix; the path is left whole)."""
    import asyncio

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": root_path,
             "query_string": b"", "headers": [(b"host", b"127.0.0.1:8000")],
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(serve_app.api(scope, receive, send))
    return {"status": sent[0]["status"], **{k.decode(): v.decode() for k, v in sent[0]["headers"]}}


def test_a_named_apps_page_opened_without_its_slash_is_sent_to_it():
    """page.html fetches `classes` and `tag` relative to the page: opened at /student it would
    ask /classes and /tag, the default app's model. FastAPI redirects /student to /student/
    (checked with Ray Serve 2.60 in tests/test_serve.py); this keeps that from going unseen."""
    answer = _get("/student", "/student")
    assert answer["status"] in (307, 308) and answer["location"] == "http://127.0.0.1:8000/student/"


@pytest.mark.parametrize("failure, port, said", [
    (OSError(errno.EADDRINUSE, "Address already in use"), 18123, "holds that port"),
    (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), 18123,
     "--host 10.99.99.99 is not an address of this machine"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), 18123,
     "--host 10.99.99.99 is not an address of this machine"),
    (OSError(errno.EACCES, "Permission denied"), 80, "ports below 1024 need root"),
])
def test_a_failed_bind_says_whether_the_host_or_the_port_is_wrong(failure, port, said, monkeypatch, tmp_path):
    """Every failed bind was blamed on a taken port, also a --host that is not this machine's
    (10.99.99.99: 'Cannot assign requested address'), a host name that does not resolve, and
    a port below 1024 without root."""
    def bind(self, address):
        raise failure

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(serve_app, "load_artifact", lambda path, **kw: None)
    monkeypatch.setattr(serve_app, "_init_ray", lambda: pytest.fail("started Ray on an address it cannot serve"))
    monkeypatch.setattr(socket.socket, "bind", bind)
    from raytag.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--host", "10.99.99.99", "--port", str(port)],
                                env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert said in text, text
    assert ("holds that port" in text) == (said == "holds that port"), text
