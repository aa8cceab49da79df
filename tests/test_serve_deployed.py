"""The service where it is deployed (issue 23): keys wherever it is mounted, slow clients timed out,
/explain with backpressure, JSON only and this server's Host, an access log that cannot be forged,
and keys that never travel in the environment.

Slow-client tests drive a real uvicorn on 127.0.0.1 with raw sockets, in bounded loops with short timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import select
import socket
import stat
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Mount
from test_serve_network import metric_samples, requests_count, wait_for

from sentune.serve import Deployment, Limits, Policy, create_app, launch
from sentune.serve.observe import configure_logging

KEY = "k-deployed-0123456789"
READ_TIMEOUT = 1.0


class FakeClassifier:
    """predict answers at once; explain blocks until the test opens its gate (label = the text)."""

    name, labels, max_length, backend = "fake", ["a", "b"], 16, "fake"

    def __init__(self, gate_open: bool = True):
        self.gate = threading.Event()
        if gate_open:
            self.gate.set()
        self.explaining = threading.Event()
        self.explained: list[tuple[str, str | None]] = []

    def predict(self, texts, batch_size=32):
        return [{"label": "a", "score": 0.5, "probs": {"a": 0.5, "b": 0.5}} for _ in texts]

    def explain(self, texts, target=None, steps=None):
        self.explained += [(t, target) for t in texts]
        self.explaining.set()
        assert self.gate.wait(20), "the test never opened the gate"
        return [{"label": target or "a", "words": t.split(), "scores": [0.0] * len(t.split()), "value": 0.0,
                 "baseline_value": 0.0, "delta": 0.0} for t in texts]


def bearer(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


@contextlib.contextmanager
def uvicorn_serving(app, policy: Policy, **extra):
    """The app under uvicorn with sentune's own server options, on a free loopback port."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    options = {**launch.uvicorn_options(policy, "127.0.0.1", 0), **extra}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def exchange(port: int, data: bytes, wait: float = 5.0) -> tuple[bytes, float]:
    """Send `data`, read until the server closes (or `wait` passes): (what came back, seconds it took)."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        got = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                got += chunk
    return got, time.monotonic() - began


def request_head(method: str, path: str, length: int | None = None, host: str = "127.0.0.1",
                 content_type: str = "application/json", extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


# ---- 1. the API key wherever the app is mounted ---------------------------------------------------------
@pytest.mark.parametrize("method, path", [("POST", "/predict"), ("POST", "/explain"), ("GET", "/metadata"),
                                          ("GET", "/nope"), ("POST", "/nope"), ("GET", "/predict/"),
                                          ("POST", "/"), ("POST", "/health"), ("PUT", "/static/app.js")])
def test_every_route_outside_the_open_list_needs_the_key(method, path):
    with TestClient(create_app(FakeClassifier(), api_keys=[KEY])) as c:
        r = c.request(method, path, json={"text": "x"})
        assert r.status_code == 401, (method, path, r.text)


def test_without_the_key_a_client_learns_nothing_but_401():
    with TestClient(create_app(FakeClassifier(), api_keys=[KEY])) as c:
        r = c.post("/predict", content=b"x" * 10, headers={"content-type": "text/plain", "content-length": "99999999"})
        assert r.status_code == 401  # not 415 or 413: what the routes accept is for key holders


def test_the_key_is_needed_under_uvicorns_root_path():
    app = create_app(FakeClassifier(), api_keys=[KEY], policy=Policy(read_timeout=READ_TIMEOUT))
    with uvicorn_serving(app, Policy(), root_path="/api") as port:
        url = f"http://127.0.0.1:{port}"
        # a proxy that strips /api sends /predict; one that does not sends /api/predict: both need the key
        for path in ("/predict", "/api/predict", "/explain"):
            assert httpx.post(url + path, json={"text": "x"}).status_code == 401, path
        assert httpx.post(url + "/predict", json={"text": "x"}, headers=bearer()).status_code == 200
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/metadata").status_code == 401


def test_the_key_is_needed_inside_a_mount():
    parent = Starlette(routes=[Mount("/ml", app=create_app(FakeClassifier(), api_keys=[KEY]))])
    with TestClient(parent) as c:
        for path in ("/ml/predict", "/ml/explain"):
            assert c.post(path, json={"text": "x"}).status_code == 401, path
        assert c.get("/ml/metadata").status_code == 401
        assert c.post("/ml/predict", json={"text": "x"}, headers=bearer()).status_code == 200
        assert c.get("/ml/health").status_code == 200 and c.get("/ml/static/app.js").status_code == 200


# ---- 2. slow clients --------------------------------------------------------------------------------------
def test_slow_headers_are_cut_off_at_the_read_timeout():
    policy = Policy(read_timeout=READ_TIMEOUT)
    with uvicorn_serving(create_app(FakeClassifier(), policy=policy), policy) as port:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(6)]
        began, closed_after = time.monotonic(), {}
        for s in socks:
            s.sendall(b"POST /predict HTTP/1.1\r\n")
        try:
            while len(closed_after) < len(socks) and time.monotonic() - began < 5 * READ_TIMEOUT:
                for s in socks:  # a header line every 0.2 s, forever
                    with contextlib.suppress(OSError):
                        s.sendall(b"X-Slow: 1\r\n")
                ready, _, _ = select.select([s for s in socks if s not in closed_after], [], [], 0.2)
                for s in ready:
                    with contextlib.suppress(OSError):
                        s.recv(4096)
                    closed_after[s] = time.monotonic() - began
        finally:
            for s in socks:
                s.close()
    assert len(closed_after) == len(socks), "slow-header connections were never closed"
    assert all(READ_TIMEOUT - 0.2 < t < READ_TIMEOUT + 2 for t in closed_after.values()), closed_after


def test_a_slow_body_is_408_at_the_read_timeout():
    policy = Policy(read_timeout=READ_TIMEOUT)
    with uvicorn_serving(create_app(FakeClassifier(), policy=policy), policy) as port:
        got, took = exchange(port, request_head("POST", "/predict", 1000) + b'{"text": "')
    assert got.startswith(b"HTTP/1.1 408") and b"not received within" in got
    assert READ_TIMEOUT - 0.2 < took < READ_TIMEOUT + 2


def test_a_declared_body_over_the_limit_is_413_at_once():
    policy = Policy(read_timeout=30.0)
    app = create_app(FakeClassifier(), policy=policy, limits=Limits(max_body_bytes=1000))
    with uvicorn_serving(app, policy) as port:
        got, took = exchange(port, request_head("POST", "/predict", 1_000_000) + b"0123456789")
    assert got.startswith(b"HTTP/1.1 413") and b"over 1000 bytes" in got
    assert took < 5  # answered and closed, not waiting for 999,990 more bytes


def test_a_route_without_a_body_never_waits_for_one():
    policy = Policy(read_timeout=30.0)
    with uvicorn_serving(create_app(FakeClassifier(), policy=policy), policy) as port:
        got, took = exchange(port, request_head("POST", "/nope", 1_000_000) + b"0123456789")
    assert got.startswith(b"HTTP/1.1 404")
    assert took < 10  # at most uvicorn's keep-alive close, never the 30 s read timeout


def test_connections_past_the_limit_get_503():
    policy = Policy(read_timeout=READ_TIMEOUT, max_connections=3)
    with uvicorn_serving(create_app(FakeClassifier(), policy=policy), policy) as port:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(3)]
        try:
            time.sleep(0.2)
            got, _ = exchange(port, request_head("GET", "/health", extra="Connection: close\r\n"))
            assert got.startswith(b"HTTP/1.1 503")
            time.sleep(READ_TIMEOUT + 0.5)  # the idle ones are cut off at the read timeout
            got, _ = exchange(port, request_head("GET", "/health", extra="Connection: close\r\n"))
            assert got.startswith(b"HTTP/1.1 200")
        finally:
            for s in idle:
                s.close()


def test_a_request_head_growing_past_16_kib_is_refused():
    policy = Policy(read_timeout=30.0)
    head = request_head("GET", "/health", extra=f"X-Big: {'a' * 20_000}\r\n")
    with uvicorn_serving(create_app(FakeClassifier(), policy=policy), policy) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head[:17_000])  # an incomplete head already over the limit: refused without the rest
            got = s.recv(65536)
    assert got.startswith(b"HTTP/1.1 400")


def test_uvicorn_gets_bounded_connections_and_the_deadline_protocol():
    options = launch.uvicorn_options(Policy(max_connections=7), "127.0.0.1", 8000)
    assert options["limit_concurrency"] == 7 and options["http"].__name__ == "HeadDeadlineH11"
    assert options["h11_max_incomplete_event_size"] == 16 * 1024 and options["timeout_keep_alive"] == 5


# ---- 3. /explain backpressure ---------------------------------------------------------------------------
def explain_app(fake: FakeClassifier, **policy):
    return create_app(fake, max_wait_ms=0, limits=Limits(explain_max_texts=2),
                      policy=Policy(explain_max_queue=2, **policy))


def test_explain_queue_full_is_429_with_retry_after_and_predict_still_answers():
    fake = FakeClassifier(gate_open=False)
    app = explain_app(fake)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            running = asyncio.ensure_future(http.post("/explain", json={"text": "runs"}))
            await wait_for(fake.explaining)
            waiting = asyncio.ensure_future(http.post("/explain", json={"texts": ["w1", "w2"]}))
            await asyncio.sleep(0.05)
            full = await http.post("/explain", json={"text": "one too many"})
            predicted = await http.post("/predict", json={"text": "not held up"})  # its own line
            fake.gate.set()
            return full, predicted, await running, await waiting, (await http.get("/metrics")).text

    full, predicted, running, waiting, metrics = asyncio.run(scenario())
    asyncio.run(app.state.explainer.close())
    assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
    assert "waiting" in full.json()["error"]
    assert predicted.status_code == 200
    assert running.status_code == 200 and waiting.status_code == 200
    assert ("one too many", None) not in fake.explained
    samples = metric_samples(metrics)
    assert requests_count(samples, "/explain", 429) == 1
    assert samples[("sentune_explain_texts_total", ())] == 3
    assert samples[("sentune_explain_queue_texts", ())] == 0


def test_explain_past_the_request_timeout_is_503():
    fake = FakeClassifier(gate_open=False)
    app = explain_app(fake, request_timeout=0.2)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            first = asyncio.ensure_future(http.post("/explain", json={"text": "stuck"}))
            await wait_for(fake.explaining)
            late = await http.post("/explain", json={"text": "waits too long"})
            fake.gate.set()
            await first
            return late

    late = asyncio.run(scenario())
    asyncio.run(app.state.explainer.close())
    assert late.status_code == 503 and "timeout" in late.json()["error"]
    assert ("waits too long", None) not in fake.explained


def test_explain_is_withdrawn_when_the_client_leaves():
    fake = FakeClassifier(gate_open=False)
    app = explain_app(fake)

    async def quitter():
        body = json.dumps({"text": "gone", "target": "b"}).encode()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await asyncio.sleep(0.1)  # the client hangs up while its text waits
            return {"type": "http.disconnect"}

        async def send(message):
            pass

        scope = {"type": "http", "method": "POST", "path": "/explain", "query_string": b"", "root_path": "",
                 "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")],
                 "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("127.0.0.1", 1)}
        await app(scope, receive, send)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            first = asyncio.ensure_future(http.post("/explain", json={"text": "running"}))
            await wait_for(fake.explaining)
            await asyncio.wait_for(quitter(), 10)
            fake.gate.set()
            assert (await first).status_code == 200
            return metric_samples((await http.get("/metrics")).text)

    samples = asyncio.run(scenario())
    asyncio.run(app.state.explainer.close())
    assert ("gone", "b") not in fake.explained
    assert requests_count(samples, "/explain", 499) == 1


def test_explain_groups_texts_by_target():
    fake = FakeClassifier()
    with TestClient(explain_app(fake)) as c:
        r = c.post("/explain", json={"texts": ["good film", "bad"], "target": "b"})
    assert r.status_code == 200 and [e["label"] for e in r.json()["explanations"]] == ["b", "b"]
    assert fake.explained == [("good film", "b"), ("bad", "b")]


# ---- 4. this server's Host and Origin on loopback -------------------------------------------------------
@pytest.mark.parametrize("headers, status", [
    ({}, 200),
    ({"Host": "localhost:8000"}, 200),
    ({"Host": "[::1]:8000"}, 200),
    ({"Host": "attacker.example:8000"}, 421),  # DNS rebinding: the page's own name, resolved to 127.0.0.1
    ({"Host": "127.0.0.1.attacker.example"}, 421),
    ({"Origin": "http://127.0.0.1:8000"}, 200),  # the served page itself
    ({"Origin": "http://attacker.example"}, 403),
    ({"Origin": "null"}, 403),
])
def test_on_loopback_a_foreign_host_or_origin_is_refused(headers, status):
    app = create_app(FakeClassifier(), allowed_hosts=launch.allowed_hosts("127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        r = c.post("/predict", json={"text": "x"}, headers=headers)
    assert r.status_code == status, r.text
    if status != 200:
        assert r.json()["error"]


def test_serve_checks_the_host_on_loopback_only(monkeypatch):
    import uvicorn

    built = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.setattr(launch, "build_app", built.append)
    for host in ("127.0.0.1", "0.0.0.0"):
        launch.serve(Deployment(model_dir="m", api_keys=[KEY]), host=host, log=lambda _: None)
    assert built[0].allowed_hosts == ["127.0.0.1", "localhost", "::1"] and built[1].allowed_hosts is None


# ---- 5. the access log ----------------------------------------------------------------------------------
def test_the_text_access_log_cannot_be_forged():
    stream = io.StringIO()
    configure_logging("text", stream=stream)
    try:
        with TestClient(create_app(FakeClassifier())) as c:
            c.get("/x%0a2026-01-01T00:00:00.000+00:00 f00 10.0.0.1 GET /admin 200 1.0ms%0d%1b%5b2J%5c%20")
    finally:
        configure_logging("text")
    lines = stream.getvalue().splitlines()
    (line,) = [x for x in lines if "/x" in x]
    assert len([x for x in lines if " GET " in x]) == 1  # no forged second request line
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    assert "/x%0A2026-01-01T00:00:00.000+00:00%20f00" in line and line.endswith("ms")
    assert line.split()[-2] == "404"


# ---- 6. keys never in the environment -------------------------------------------------------------------
def test_workers_get_the_path_of_a_private_keys_file_not_the_keys(monkeypatch):
    import uvicorn

    seen = {}

    def fake_run(app, **options):
        settings = Deployment.model_validate_json(os.environ[launch.SETTINGS_ENV])
        folder = os.path.dirname(settings.api_keys_file)
        seen.update(environ=dict(os.environ), settings=settings, file_mode=os.stat(settings.api_keys_file).st_mode,
                    dir_mode=os.stat(folder).st_mode)
        monkeypatch.setattr(launch, "build_app", lambda d: seen.setdefault("worker", d))
        launch.app_from_env()  # what each worker does

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    launch.serve(Deployment(model_dir="m", api_keys=[KEY, "k-other-987654321"]), workers=2, log=lambda _: None)
    assert not any(KEY in value for value in seen["environ"].values())
    assert seen["settings"].api_keys == [] and seen["settings"].api_keys_file
    assert stat.S_IMODE(seen["file_mode"]) == 0o600 and stat.S_IMODE(seen["dir_mode"]) == 0o700
    assert seen["worker"].api_keys == [KEY, "k-other-987654321"]
    assert not os.path.exists(seen["settings"].api_keys_file)  # removed when the server stopped


def cli_serve(monkeypatch, args: list[str], env: dict | None = None):
    from click.testing import CliRunner

    import sentune.serve
    from sentune.cli import main

    got = {}

    def fake_serve(d, **kwargs):
        got.update(deployment=d, env_key=os.environ.get("SENTUNE_API_KEY"))

    monkeypatch.setattr(sentune.serve, "serve", fake_serve)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["serve", ".", *args])
    assert result.exit_code == 0, result.output
    return result.stderr if hasattr(result, "stderr") else result.output, got


def test_a_key_on_the_command_line_warns_that_ps_shows_it(monkeypatch):
    err, got = cli_serve(monkeypatch, ["--api-key", KEY])
    assert "shows in `ps`" in err and KEY not in err
    assert got["deployment"].api_keys == [KEY]


def test_the_key_variable_is_read_once_and_removed(monkeypatch):
    err, got = cli_serve(monkeypatch, [], env={"SENTUNE_API_KEY": KEY})
    assert "ps" not in err
    assert got["deployment"].api_keys == [KEY] and got["env_key"] is None


@pytest.mark.skipif(os.name != "posix", reason="file modes")
@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o640, True), (0o604, True)])
def test_a_keys_file_others_can_read_is_warned_about(monkeypatch, tmp_path, mode, warned):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    keys.chmod(mode)
    err, got = cli_serve(monkeypatch, ["--api-key-file", str(keys)])
    assert ("can be read by other users" in err) == warned and KEY not in err
    assert got["deployment"].api_keys == [KEY]


# In a fresh process: build the app as every worker does, then free an 8 MiB block and ask for 4 MiB.
# glibc's default would raise its mmap threshold to 8 MiB on that free and carve the 4 MiB from the heap
# (where, under varying batch shapes, freed space piled up: docs/benchmarks.md, "Server memory").
ALLOCATOR_PROBE = """
import ctypes, json, os, sys
from sentune.serve import Deployment, launch
launch.build_app(Deployment(model_dir=sys.argv[1], precision="fp32"))
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = Info, ctypes.c_void_p, [ctypes.c_void_p]
libc.free(libc.malloc(8 << 20))
before = libc.mallinfo2().hblkhd
block = libc.malloc(launch.MMAP_THRESHOLD_BYTES)
print(json.dumps({"mapped": libc.mallinfo2().hblkhd - before}))
"""


@pytest.mark.skipif(not launch.glibc(), reason="glibc's malloc only")
def test_a_worker_returns_large_freed_blocks_to_the_system(tiny_bert_dir):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, str(tiny_bert_dir)], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    # a block at the pinned threshold gets its own mapping, not heap space kept after it is freed
    assert json.loads(out.splitlines()[-1])["mapped"] >= launch.MMAP_THRESHOLD_BYTES


TRIM_PROBE = """
import ctypes, json, sys, time
from sentune.serve import launch
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
launch.pin_mmap_threshold()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
blocks, spacers = [], []
for _ in range(64):  # 64 MiB under the threshold (heap, not mappings), each followed by a block that stays,
    blocks.append(libc.malloc(1 << 20))  # so freeing them leaves gaps inside the heap, not a shorter heap
    spacers.append(libc.malloc(256 << 10))
    ctypes.memset(blocks[-1], 1, 1 << 20)
for b in blocks:
    libc.free(b)
before = rss()
launch.trim_heap_every(0.05)
time.sleep(0.5)
print(json.dumps({"returned": before - rss()}))
"""


@pytest.mark.skipif(not launch.glibc(), reason="glibc's malloc only")
def test_a_worker_hands_freed_heap_pages_back_to_the_system():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert json.loads(out.splitlines()[-1])["returned"] >= 32 << 20  # most of the 64 MiB gap


def test_a_worker_caps_onednns_primitive_cache_unless_the_operator_did(monkeypatch):
    monkeypatch.delenv(launch.ONEDNN_CACHE_ENV, raising=False)
    assert launch.bound_onednn_cache() is True
    assert os.environ[launch.ONEDNN_CACHE_ENV] == str(launch.ONEDNN_CACHE_CAPACITY)
    monkeypatch.setenv(launch.ONEDNN_CACHE_ENV, "4096")
    assert launch.bound_onednn_cache() is False
    assert os.environ[launch.ONEDNN_CACHE_ENV] == "4096"


def test_an_operators_own_mmap_threshold_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert launch.pin_mmap_threshold() is False
