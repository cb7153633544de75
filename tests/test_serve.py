"""`raytag serve`: upload checks alone, then a real Ray Serve deployment on a free loopback
port hit with real HTTP requests (good, corrupt, empty, oversize, non-finite, concurrent,
a flood of bad ones) and its page driven in a headless browser."""
from __future__ import annotations

import asyncio
import io
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import soundfile as sf

from raytag.errors import RaytagError
from raytag.serve.upload import UploadError, check_audio, clean_fname, parse_top, read_capped

from test_ensemble import CLASSES
from test_predict import GOOD, artifact_2019, write_audio  # noqa: F401  (module fixture)

MB = 2**20
UPLOAD_LIMIT_MB = 0.5
TIMEOUT = 60  # seconds per request: bounded, a hung server fails the test


# ----------------------------------------------------------------------------- upload checks (no Ray)
def _wav_bytes(wave, rate=8000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, dtype=np.float32), rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_check_audio_accepts_good_and_names_each_bad_kind():
    clip = check_audio("a.wav", _wav_bytes(np.zeros(4000)), MB)
    assert clip.duration == pytest.approx(0.5) and clip.fname == "a.wav"
    cases = {
        b"": 400,
        b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk": 415,
        _wav_bytes(np.zeros(0)): 422,
        _wav_bytes([0.1, np.nan, 0.2, 0.3]): 422,
        _wav_bytes(np.full(8, np.inf)): 422,
        _wav_bytes(np.zeros(MB)): 413,  # 4 MB of float32 over a 1 MB limit
    }
    for data, status in cases.items():
        with pytest.raises(UploadError) as err:
            check_audio("x.wav", data, MB)
        assert err.value.status == status and err.value.reason


def test_audio_longer_than_the_limit_is_refused_before_it_is_decoded_whole(monkeypatch):
    """A compressed upload may hold hours: its samples are read in blocks, and reading stops
    at the limit (--max-seconds)."""
    ten_s = _wav_bytes(np.zeros(80_000, np.float32))  # 8 kHz
    assert check_audio("a.wav", ten_s, MB, max_seconds=10).duration == pytest.approx(10)
    read = []
    real_blocks = sf.blocks
    monkeypatch.setattr(sf, "blocks", lambda *a, **k: (read.append(len(b)) or b for b in real_blocks(*a, **k)))
    with pytest.raises(UploadError, match=r"longer than this server's limit of 2 s.*raytag predict") as err:
        check_audio("a.wav", ten_s, MB, max_seconds=2)
    assert err.value.status == 413
    assert sum(read) < 80_000  # it stopped reading at the limit
    with pytest.raises(UploadError, match="2 samples are not finite"):
        check_audio("b.wav", _wav_bytes(np.r_[np.zeros(70_000), np.nan, np.inf]), MB)  # beyond the first block


def _flac_bytes(frames, channels, rate) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full((frames, channels), 0.25, np.float32), rate, format="FLAC")
    return buf.getvalue()


def test_a_small_upload_that_decodes_to_too_many_samples_is_refused_before_decoding(monkeypatch):
    """A few KB of FLAC of a constant value can hold 8 channels at 192 kHz, far more once
    decoded (which `raytag predict` does whole): the header's frames x channels are checked
    against the cap before a block is read, and the rate and channel count are capped."""
    import raytag.serve.upload as upload

    monkeypatch.setattr(upload, "DECODED_SAMPLES_PER_SECOND", 1000)  # cap: 10 s -> 10 000 samples
    read = []
    real_blocks = sf.blocks
    monkeypatch.setattr(sf, "blocks", lambda *a, **k: (read.append(len(b)) or b for b in real_blocks(*a, **k)))
    wide = _flac_bytes(4000, 8, 192_000)  # 0.02 s, but 32 000 samples
    assert len(wide) < 4000
    with pytest.raises(UploadError, match=r"decodes to 32000 samples \(4000 frames x 8 channels\)") as err:
        check_audio("wide.flac", wide, MB, max_seconds=10)
    assert err.value.status == 413 and read == []  # refused from the header, nothing decoded
    assert check_audio("mono.flac", _flac_bytes(4000, 1, 8000), MB, max_seconds=10).duration == pytest.approx(0.5)
    for data, reason in ((_wav_bytes(np.full(100, 0.1), rate=384_000), "sample rate 384000 Hz"),
                         (_wav_bytes(np.full((10, 16), 0.1)), "16 channels")):
        with pytest.raises(UploadError, match=reason) as err:
            check_audio("odd.wav", data, MB, max_seconds=10)
        assert err.value.status == 422


def test_read_capped_counts_what_arrives_not_what_is_declared():
    async def chunks(n):
        for _ in range(n):
            yield b"x" * 1000

    assert len(asyncio.run(read_capped(chunks(3), 5000, None))) == 3000
    for declared in (None, "10"):  # absent, or a lie: the bytes are counted as they come
        with pytest.raises(UploadError, match="over the limit") as err:
            asyncio.run(read_capped(chunks(10), 5000, declared))
        assert err.value.status == 413
    with pytest.raises(UploadError) as err:
        asyncio.run(read_capped(chunks(1), 5000, "999999"))
    assert err.value.status == 413


def test_top_and_fname_parsing():
    assert parse_top(None, 14) == 14 and parse_top("3", 14) == 3 and parse_top("99", 14) == 14
    for bad in ("0", "-1", "three"):
        with pytest.raises(UploadError):
            parse_top(bad, 14)
    assert clean_fname("../../etc/passwd") == "passwd" and clean_fname("C:\\x\\dog.wav") == "dog.wav"
    assert clean_fname(None) == "upload"


# ----------------------------------------------------------------------------- one bad clip in a batch (no Ray)
POISON = _wav_bytes(np.full(800, 0.25))  # the clip the stand-in model fails on


class _FailsOnOneClip:
    """An artifact stand-in that scores every clip 0.5, except that scoring fails (a bug, not a
    decode error) for any batch holding POISON."""
    classes = ["dog", "cat"]

    def predict_files(self, paths, device="cpu"):
        if any(Path(p).read_bytes() == POISON for p in paths):
            raise RuntimeError("model failed on this clip")
        probs = pd.DataFrame(0.5, index=pd.Index(paths, name="file"), columns=self.classes)
        return probs, pd.DataFrame(columns=["file", "reason"])


def _scored_together(score, size):
    """Stands in for @serve.batch (which needs a replica): the first `size` calls are scored
    in one call of `score`, and, as Serve does, an exception from it goes to every caller."""
    waiting = []

    async def tag_batch(clip):
        future = asyncio.get_running_loop().create_future()
        waiting.append((clip, future))
        if len(waiting) == size:
            try:
                for (_, fut), result in zip(waiting, score([c for c, _ in waiting])):
                    fut.set_result(result)
            except Exception as err:  # noqa: BLE001
                for _, fut in waiting:
                    fut.set_exception(err)
        return await future

    return tag_batch


def _raw_upload(data: bytes, fname: str):
    """A POST /tag request with the clip as its raw body."""
    from starlette.requests import Request

    scope = {"type": "http", "method": "POST", "path": "/tag", "query_string": f"fname={fname}".encode(),
             "headers": [(b"content-type", b"audio/wav"), (b"content-length", str(len(data)).encode())]}

    async def receive():
        return {"type": "http.request", "body": data, "more_body": False}

    return Request(scope, receive)


def test_a_clip_that_fails_in_a_batch_fails_only_its_own_request(monkeypatch):
    """Three clients in one batch, one clip breaks the model: that client gets a 500 (a
    generic message: the exception may name server paths), the other two get their tags."""
    from fastapi.responses import JSONResponse

    from raytag.serve import app
    from raytag.serve.app import Tagger

    tagger = object.__new__(Tagger.func_or_class)  # the replica's class, without Serve
    tagger.artifact, tagger.device = _FailsOnOneClip(), "cpu"
    tagger.max_upload_bytes, tagger.max_seconds = MB, 60.0
    tagger._pool = ThreadPoolExecutor(1)
    tagger._tag_batch = _scored_together(tagger._score, size=3)
    uploads = {"a.wav": _wav_bytes(np.zeros(800)), "bad.wav": POISON, "b.wav": _wav_bytes(np.ones(800) * 0.1)}

    async def three_clients():
        return await asyncio.gather(*(tagger.tag(_raw_upload(data, name)) for name, data in uploads.items()))

    logged = []
    monkeypatch.setattr(app.log, "exception", lambda *args, **kw: logged.append(args))
    good_a, bad, good_b = asyncio.run(three_clients())
    for answer, name in ((good_a, "a.wav"), (good_b, "b.wav")):
        assert isinstance(answer, dict), answer.body
        assert answer["fname"] == name and [t["score"] for t in answer["tags"]] == [0.5, 0.5]
    assert isinstance(bad, JSONResponse) and bad.status_code == 500
    error = json.loads(bad.body)["error"]  # generic: the exception's text stays in the server's log
    assert error.startswith("internal error") and "model failed on this clip" not in error
    assert len(logged) == 1  # the detail is in the replica's log (log.exception adds the traceback)


def _multipart_upload(data: bytes, fname: str, content_type: str):
    """A POST /tag request with the clip in the multipart field `file`, under `content_type`
    (its boundary added)."""
    from starlette.requests import Request
    from urllib3.filepost import encode_multipart_formdata

    body, ctype = encode_multipart_formdata({"file": (fname, data, "audio/wav")})
    header = content_type + ctype[len("multipart/form-data"):]
    scope = {"type": "http", "method": "POST", "path": "/tag", "query_string": b"",
             "headers": [(b"content-type", header.encode()), (b"content-length", str(len(body)).encode())]}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def test_a_multipart_upload_is_read_whatever_the_case_of_its_media_type_and_415s_say_why_plainly():
    from raytag.serve.app import Tagger

    tagger = object.__new__(Tagger.func_or_class)  # the replica's class, without Serve
    tagger.max_upload_bytes = MB
    clip = _wav_bytes(np.zeros(800))
    for ctype in ("multipart/form-data", "Multipart/Form-Data", "MULTIPART/FORM-DATA"):
        fname, data = asyncio.run(tagger._read_upload(_multipart_upload(clip, "dog.wav", ctype)))
        assert (fname, data) == ("dog.wav", clip), ctype
    with pytest.raises(UploadError) as err:
        check_audio("junk.wav", b"this is not audio at all", MB)
    assert err.value.status == 415
    assert err.value.reason == "junk.wav: cannot decode as audio (Format not recognised.); send wav, flac or ogg"


# ----------------------------------------------------------------------------- a live server
@pytest.fixture(scope="module")
def artifact(artifact_2019):
    """test_predict's small 2019 artifact, served here."""
    return artifact_2019


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    return write_audio(tmp_path_factory.mktemp("serve_audio"))


@pytest.fixture(scope="module")
def server(ray_session, artifact):
    from raytag.serve.app import ServeOptions, start, stop
    from raytag.session import free_port

    opts = ServeOptions(artifact=artifact, port=free_port(), replicas=1, max_batch_size=8,
                        max_upload_mb=UPLOAD_LIMIT_MB, replica_cpus=0.5)
    deployment = start(opts)
    yield deployment.url
    stop(deployment)


def _post_file(url, path, **params):
    with open(path, "rb") as fh:
        return requests.post(f"{url}/tag", files={"file": (path.name, fh)}, params=params, timeout=TIMEOUT)


@pytest.mark.ray
def test_tag_gives_the_scores_of_raytag_predict(server, artifact, audio):
    from raytag.ensemble.artifact import load_artifact

    probs, failures = load_artifact(artifact).predict_files([audio[n] for n in GOOD])
    assert failures.empty
    for name in GOOD:
        expected = probs.loc[str(audio[name])]
        for resp in (_post_file(server, audio[name]),  # multipart
                     requests.post(f"{server}/tag", data=audio[name].read_bytes(),
                                   params={"fname": name}, timeout=TIMEOUT)):  # raw body
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["fname"] == name
            assert body["duration"] == pytest.approx(sf.info(str(audio[name])).duration, rel=1e-6)
            scores = [t["score"] for t in body["tags"]]
            assert scores == sorted(scores, reverse=True) and len(scores) == len(expected)
            for t in body["tags"]:
                assert t["score"] == pytest.approx(expected[t["label"]], abs=1e-5)
    top2 = _post_file(server, audio["tone.wav"], top=2).json()["tags"]
    assert [t["label"] for t in top2] == list(probs.loc[str(audio["tone.wav"])].sort_values(ascending=False).index[:2])


@pytest.mark.ray
def test_bad_uploads_get_a_4xx_with_the_reason(server, audio, tmp_path):
    nan_wav = tmp_path / "nan.wav"
    sf.write(nan_wav, np.array([0.1, np.nan, 0.3] * 1000, dtype=np.float32), 8000, subtype="FLOAT")
    big = b"\0" * int(UPLOAD_LIMIT_MB * MB + 10)

    def chunked():  # no Content-Length: the server must count what arrives
        for _ in range(int(UPLOAD_LIMIT_MB * 4) + 1):
            yield b"\0" * (MB // 4)

    cases = [
        ("corrupt", _post_file(server, audio["corrupt.wav"]), 415, "cannot decode"),
        ("no samples", _post_file(server, audio["empty.wav"]), 422, "0 samples"),
        ("empty body", requests.post(f"{server}/tag", data=b"", timeout=TIMEOUT), 400, "empty upload"),
        ("non-finite", _post_file(server, nan_wav), 422, "not finite"),
        ("oversize", requests.post(f"{server}/tag", data=big, timeout=TIMEOUT), 413, "over the limit"),
        ("oversize chunked", requests.post(f"{server}/tag", data=chunked(), timeout=TIMEOUT), 413, "over the limit"),
        ("no file field", requests.post(f"{server}/tag", files={"other": ("a.wav", b"x")}, timeout=TIMEOUT),
         400, "field 'file'"),
        ("bad top", _post_file(server, audio["tone.wav"], top="lots"), 400, "top="),
    ]
    for what, resp, status, words in cases:
        assert resp.status_code == status, (what, resp.status_code, resp.text)
        assert words in resp.json()["error"], (what, resp.json())
    assert requests.get(f"{server}/healthz", timeout=TIMEOUT).json()["status"] == "ok"


@pytest.mark.ray
def test_concurrent_clients_are_batched_and_a_flood_of_bad_requests_is_survived(server, audio):
    files = [audio[n] for n in GOOD] * 6  # 24 requests from 12 clients at once
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda p: _post_file(server, p), files))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    first = {}
    for path, resp in zip(files, answers):  # the same file scores the same in any batch
        scores = {t["label"]: t["score"] for t in resp.json()["tags"]}
        ref = first.setdefault(path.name, scores)
        assert all(abs(scores[k] - ref[k]) < 1e-5 for k in ref)
    health = requests.get(f"{server}/healthz", timeout=TIMEOUT).json()
    assert health["largest_batch"] > 1, health

    bad = audio["corrupt.wav"].read_bytes()
    with ThreadPoolExecutor(16) as pool:  # 200 bad requests, a bounded loop
        codes = list(pool.map(lambda _: requests.post(f"{server}/tag", data=bad, timeout=TIMEOUT).status_code,
                              range(200)))
    assert set(codes) <= {415, 503}, set(codes)  # 503: Serve's queue bound pushed back
    assert _post_file(server, audio["tone.wav"]).status_code == 200


@pytest.mark.ray
def test_classes_and_page(server, artifact):
    from raytag.ensemble.artifact import load_artifact

    info = requests.get(f"{server}/classes", timeout=TIMEOUT).json()
    art = load_artifact(artifact)
    assert info["classes"] == art.classes and info["version"] == art.raytag_version
    page = requests.get(f"{server}/", timeout=TIMEOUT)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'type="file"' in page.text


@pytest.mark.ray
def test_a_second_serve_on_another_port_is_refused_naming_the_running_ones(server, artifact):
    """Ray Serve 2.60, really running: its address is read from the controller (Ray ignores
    the http_options of a second serve.start, so the second URL had nothing behind it)."""
    from raytag.serve.app import ServeOptions, start
    from raytag.session import free_port

    port = int(server.rsplit(":", 1)[1])
    with pytest.raises(RaytagError, match=rf"listens on 127.0.0.1:{port} \(apps: 'raytag' at {server}\)"):
        start(ServeOptions(artifact=artifact, port=free_port(), replica_cpus=0.5))


@pytest.mark.ray
def test_a_second_app_is_served_beside_the_first_and_stopping_it_leaves_the_first(server, artifact, audio):
    from raytag.serve.app import ServeOptions, start, stop

    port = int(server.rsplit(":", 1)[1])
    second = start(ServeOptions(artifact=artifact, port=port, name="second", replica_cpus=0.5))
    try:
        assert second.url == f"{server}/second" and not second.started_serve
        assert requests.get(f"{second.url}/classes", timeout=TIMEOUT).json()["classes"] == \
            requests.get(f"{server}/classes", timeout=TIMEOUT).json()["classes"]
        assert _post_file(second.url, audio["tone.wav"]).status_code == 200
        assert 'type="file"' in requests.get(f"{second.url}/", timeout=TIMEOUT).text
        # the page fetches `classes` and `tag` relative to itself: at /second (no slash) they
        # would be the default app's, so that address must send the browser to /second/
        bare = requests.get(second.url, allow_redirects=False, timeout=TIMEOUT)
        assert bare.status_code in (307, 308) and bare.headers["location"] == f"{second.url}/"
    finally:
        left = stop(second)
    assert left == ["raytag"]
    assert requests.get(f"{server}/healthz", timeout=TIMEOUT).json()["status"] == "ok"
    assert requests.get(f"{second.url}/healthz", timeout=TIMEOUT).status_code == 404


def test_a_taken_port_is_a_clear_error(artifact):
    from raytag.serve.app import ServeOptions, start

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(RaytagError, match=f"127.0.0.1:{port}.*--port"):
            start(ServeOptions(artifact=artifact, port=port))


def test_bad_options_and_artifact_are_refused_before_serving(tmp_path, artifact):
    from raytag.serve.app import ServeOptions, start

    with pytest.raises(RaytagError, match="--max-batch-size"):
        start(ServeOptions(artifact=artifact, max_batch_size=0))
    with pytest.raises(RaytagError, match="no such artifact"):
        start(ServeOptions(artifact=str(tmp_path / "nothing")))


# ----------------------------------------------------------------------------- the page, in a browser
@pytest.mark.ray
def test_page_in_a_headless_browser_shows_tags_and_errors(server, audio):
    from browser_util import headless_chromium
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chromium()
    try:
        driver.get(server + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(audio["tone.wav"]))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tags .tag"))
        rows = driver.find_elements(By.CSS_SELECTOR, "#tags .tag")
        expected = _post_file(server, audio["tone.wav"], top=10).json()["tags"]  # the page asks for 10
        assert len(rows) == len(expected) == min(10, len(CLASSES))
        assert rows[0].find_element(By.CLASS_NAME, "label").text == expected[0]["label"]
        assert float(rows[0].find_element(By.CLASS_NAME, "score").text) == pytest.approx(expected[0]["score"], abs=1e-3)
        assert "tone.wav" in driver.find_element(By.ID, "status").text

        driver.find_element(By.ID, "file").send_keys(str(audio["corrupt.wav"]))
        wait.until(lambda d: d.find_element(By.ID, "error").text)
        assert "cannot decode" in driver.find_element(By.ID, "error").text
        assert not driver.find_elements(By.CSS_SELECTOR, "#tags .tag")
    finally:
        driver.quit()


# ----------------------------------------------------------------------------- the command, end to end
@pytest.mark.ray
@pytest.mark.slow
def test_raytag_serve_command_logs_requests_and_stops_cleanly_on_ctrl_c(artifact, audio, tmp_path):
    """`raytag serve` in its own process (its own local Ray): serves, logs each request,
    and on SIGINT shuts Serve down and exits 0, leaving the port free."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from raytag.session import free_port

    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "raytag.cli", "serve", artifact, "--port", str(port),
                                 "--replica-cpus", "0.5"], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "RAY_ADDRESS": ""})
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # bounded wait for the deployment
            assert proc.poll() is None, log_path.read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or the proxy waits for the app
                pass
            time.sleep(1)
        else:
            pytest.fail("raytag serve did not answer within 240 s:\n" + log_path.read_text())
        assert _post_file(f"http://127.0.0.1:{port}", audio["tone.wav"]).status_code == 200
        assert requests.post(f"http://127.0.0.1:{port}/tag", data=b"junk", timeout=TIMEOUT).status_code == 415
        time.sleep(2)  # replica logs reach the driver asynchronously
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert f"serving http://127.0.0.1:{port}" in text and "stopped" in text
    assert "POST /tag tone.wav" in text and "-> 200" in text and "-> 415" in text
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", port))
