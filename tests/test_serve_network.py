"""The service on a network: API keys (401), backpressure (429), timeouts (503), disconnects, request ids,
/ready and /metrics, and the fair token-budget batcher."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sentune.errors import ConfigError
from sentune.serve import Limits, Policy, create_app
from sentune.serve import auth as auth_lib
from sentune.serve.batcher import MicroBatcher

KEYS = ["k-first-0123456789", "k-second-abcdefghij"]
LIMITS = Limits(max_body_bytes=4000, max_texts=5, max_chars=200)


class GateClassifier:
    """A model stand-in that blocks inside predict until the test opens the gate (label = the text)."""

    name, labels, max_length, backend = "gate", ["a", "b"], 16, "fake"

    def __init__(self, open_: bool = True):
        self.gate = threading.Event()
        if open_:
            self.gate.set()
        self.running = threading.Event()
        self.calls: list[list[str]] = []

    def predict(self, texts, batch_size=32):
        self.calls.append(list(texts))
        self.running.set()
        assert self.gate.wait(20), "the test never opened the gate"
        return [{"label": t, "score": 1.0, "probs": {"a": 0.5, "b": 0.5}} for t in texts]

    def seen(self) -> list[str]:
        return [t for call in self.calls for t in call]


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def requests_count(samples, route: str, status: int) -> float:
    return samples.get(("sentune_requests_total", (("route", route), ("status", str(status)))), 0.0)


@pytest.fixture(scope="module")
def keyed(tiny_bert_dir):
    from sentune.inference.classifier import Classifier

    app = create_app(Classifier.load(tiny_bert_dir, backend="torch"), max_batch=8, max_wait_ms=1, limits=LIMITS,
                     api_keys=KEYS)
    with TestClient(app) as c:
        yield c


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# ---- API keys ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers, challenge", [
    ({}, 'Bearer realm="sentune"'),
    (bearer("wrong-key"), 'Bearer realm="sentune", error="invalid_token"'),
    ({"Authorization": f"Basic {KEYS[0]}"}, 'Bearer realm="sentune"'),
    ({"Authorization": "Bearer "}, 'Bearer realm="sentune"'),
])
def test_predict_without_a_valid_key_is_401_json(keyed, headers, challenge):
    r = keyed.post("/predict", json={"text": "good film"}, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == challenge
    assert "API key" in r.json()["error"]
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("key", KEYS)
def test_every_configured_key_is_accepted(keyed, key):
    r = keyed.post("/predict", json={"text": "good film"}, headers=bearer(key))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_explain_is_protected_too(keyed):
    # 401 before routing: whether or not /explain exists on this build, no key means no answer
    assert keyed.post("/explain", json={"text": "good film"}).status_code == 401


def test_probes_metrics_page_and_docs_stay_open(keyed):
    assert keyed.get("/health").json() == {"status": "ok"}
    deadline = time.monotonic() + 20
    while keyed.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.05)
    assert keyed.get("/ready").json() == {"status": "ready"}
    assert keyed.get("/metrics").status_code == 200
    assert keyed.get("/").status_code == 200 and keyed.get("/static/app.js").status_code == 200
    assert keyed.get("/docs").status_code == 200 and "/predict" in keyed.get("/openapi.json").json()["paths"]
    assert keyed.get("/metadata", headers=bearer(KEYS[0])).json()["auth"] is True


def test_keys_are_compared_with_compare_digest_against_every_key(keyed, monkeypatch):
    calls = []

    def spy(a, b):
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(auth_lib.hmac, "compare_digest", spy)
    assert keyed.post("/predict", json={"text": "ok"}, headers=bearer(KEYS[0])).status_code == 200
    # a match on the first key does not stop the comparisons: timing does not tell which key matched
    assert [b for _, b in calls] == [k.encode() for k in KEYS]
    calls.clear()
    assert keyed.post("/predict", json={"text": "ok"}, headers=bearer("nope")).status_code == 401
    assert len(calls) == len(KEYS)


def test_keys_never_reach_the_log(keyed, caplog):
    with caplog.at_level(logging.INFO, logger="sentune"):
        keyed.post("/predict", json={"text": "ok"}, headers=bearer(KEYS[1]))
        keyed.post("/predict", json={"text": "ok"}, headers=bearer("guessed-key-xyz"))
    text = caplog.text + json.dumps([getattr(r, "access", {}) for r in caplog.records])
    assert "/predict" in text
    assert KEYS[1] not in text and "guessed-key-xyz" not in text


def test_load_api_keys_from_flags_and_file(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text("# ops team\nkey-from-file-1\n\n  key-from-file-2  \nkey-a\n")
    assert auth_lib.load_api_keys(["key-a", " "], str(f)) == ["key-a", "key-from-file-1", "key-from-file-2"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no key"):
        auth_lib.load_api_keys([], str(tmp_path / "empty.txt"))
    with pytest.raises(ConfigError, match="cannot read"):
        auth_lib.load_api_keys([], str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="API key 2") as e:
        auth_lib.load_api_keys(["fine", "secret\tvalue"])
    assert "secret" not in str(e.value)


# ---- request ids and the access log --------------------------------------------------------------------
def test_request_id_is_echoed_or_made(keyed):
    given = keyed.get("/health", headers={"X-Request-ID": "trace-42.a"})
    assert given.headers["x-request-id"] == "trace-42.a"
    made = keyed.get("/health").headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0
    for bad in ("x" * 200, "has space", "new\u00e9line"):
        rid = keyed.get("/health", headers={"X-Request-ID": bad.encode("utf-8")})
        assert rid.headers["x-request-id"] not in (bad, "") and len(rid.headers["x-request-id"]) == 32
    # on errors too, including the ones answered by middleware
    assert keyed.post("/predict", json={"texts": ["y" * 150] * 30}, headers=bearer(KEYS[0])).headers["x-request-id"]
    assert keyed.post("/predict", json={"texts": []}, headers=bearer(KEYS[0])).headers["x-request-id"]


def test_one_json_access_line_per_request(keyed):
    import io

    from sentune.serve.observe import configure_logging

    stream = io.StringIO()
    configure_logging("json", stream)
    try:
        keyed.post("/predict", json={"texts": ["ok"]}, headers={**bearer(KEYS[0]), "X-Request-ID": "req-1"})
        keyed.post("/predict", json={"texts": []}, headers={**bearer(KEYS[0]), "X-Request-ID": "req-2"})
    finally:
        logging.getLogger("sentune").handlers.clear()
        logging.getLogger("sentune").propagate = True
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["request_id"], r["status"], r["path"]) for r in lines] == [("req-1", 200, "/predict"),
                                                                          ("req-2", 422, "/predict")]
    assert all(r["duration_ms"] >= 0 and r["method"] == "POST" for r in lines)


# ---- metrics ------------------------------------------------------------------------------------------
def test_metrics_count_what_clients_saw(tiny_bert_dir):
    from sentune.inference.classifier import Classifier

    app = create_app(Classifier.load(tiny_bert_dir, backend="torch"), max_batch=8, max_wait_ms=1, limits=LIMITS,
                     api_keys=KEYS)
    seen: dict[int, int] = {}
    with TestClient(app) as c:
        sends = [dict(json={"texts": ["good", "bad"]}, headers=bearer(KEYS[0]))] * 3 + [
            dict(json={"texts": []}, headers=bearer(KEYS[0])),
            dict(content=b"{oops", headers={**bearer(KEYS[0]), "content-type": "application/json"}),
            dict(json={"texts": ["y" * 150] * 30}, headers=bearer(KEYS[0])),
            dict(json={"text": "no key"})]
        for kwargs in sends:
            status = c.post("/predict", **kwargs).status_code
            seen[status] = seen.get(status, 0) + 1
        c.get("/health")
        samples = metric_samples(c.get("/metrics").text)
    assert seen == {200: 3, 422: 1, 400: 1, 413: 1, 401: 1}
    for status, n in seen.items():
        assert requests_count(samples, "/predict", status) == n, status
    assert requests_count(samples, "/health", 200) == 1
    assert samples[("sentune_texts_total", ())] == 6  # the warm-up batch is not a client's
    assert samples[("sentune_batch_texts_count", ())] == samples[("sentune_model_duration_seconds_count", ())]
    assert samples[("sentune_request_duration_seconds_count", (("route", "/predict"),))] == 7
    assert samples[("sentune_queue_texts", ())] == 0
    assert samples[("sentune_ready", ())] == 1


# ---- backpressure, timeouts, disconnects ----------------------------------------------------------------
async def wait_for(event: threading.Event, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not event.is_set():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


def test_full_queue_answers_429_at_once_with_retry_after():
    fake = GateClassifier(open_=False)
    app = create_app(fake, max_batch=1, max_wait_ms=0, policy=Policy(max_queue=2, request_timeout=None))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            first = asyncio.ensure_future(http.post("/predict", json={"text": "running"}))
            await wait_for(fake.running)  # "running" is inside the model; the next two wait
            queued = [asyncio.ensure_future(http.post("/predict", json={"text": f"q{i}"})) for i in range(2)]
            while app.state.batcher.queued_texts < 2:
                await asyncio.sleep(0.005)
            began = time.monotonic()
            refused = await http.post("/predict", json={"text": "one too many"})
            waited = time.monotonic() - began
            fake.gate.set()
            rest = await asyncio.gather(first, *queued)
        await app.state.batcher.close()
        return refused, waited, rest

    refused, waited, rest = asyncio.run(scenario())
    assert refused.status_code == 429 and waited < 2
    assert int(refused.headers["retry-after"]) >= 1
    assert "limit 2" in refused.json()["error"] and refused.headers["x-request-id"]
    assert [r.status_code for r in rest] == [200, 200, 200]
    assert "one too many" not in fake.seen()


def test_request_past_its_timeout_gets_503_and_leaves_the_batch():
    fake = GateClassifier(open_=False)
    app = create_app(fake, max_batch=1, max_wait_ms=0, policy=Policy(request_timeout=0.3))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            first = asyncio.ensure_future(http.post("/predict", json={"text": "running"}))
            await wait_for(fake.running)
            late = await http.post("/predict", json={"text": "waits too long"})
            fake.gate.set()
            await first
            after = await http.post("/predict", json={"text": "after"})
        await app.state.batcher.close()
        return late, after

    late, after = asyncio.run(scenario())
    assert late.status_code == 503 and "timeout" in late.json()["error"]
    assert after.status_code == 200
    assert "waits too long" not in fake.seen()  # it timed out in the line: no model time spent on it
    assert app.state.batcher.queued_texts == 0


def test_a_client_that_disconnects_costs_no_model_time():
    fake = GateClassifier(open_=False)
    app = create_app(fake, max_batch=1, max_wait_ms=0)
    sent: list[dict] = []

    async def quitter():
        body = json.dumps({"text": "gone"}).encode()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await asyncio.sleep(0.1)  # the client hangs up while its text waits
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-length",
                 str(len(body)).encode()), (b"content-type", b"application/json")], "query_string": b"",
                 "http_version": "1.1", "scheme": "http",
                 "server": ("t", 80), "client": ("127.0.0.1", 1), "root_path": ""}
        await app(scope, receive, send)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            first = asyncio.ensure_future(http.post("/predict", json={"text": "running"}))
            await wait_for(fake.running)
            await asyncio.wait_for(quitter(), 10)
            fake.gate.set()
            assert (await first).status_code == 200
            return metric_samples((await http.get("/metrics")).text)

    samples = asyncio.run(scenario())
    asyncio.run(app.state.batcher.close())
    assert "gone" not in fake.seen()
    assert requests_count(samples, "/predict", 499) == 1


# ---- the batcher: token budget and fair turns --------------------------------------------------------
def test_a_huge_request_does_not_starve_small_ones():
    fake = GateClassifier(open_=False)
    batcher = MicroBatcher(fake.predict, max_batch=64, max_wait_ms=0, max_tokens=40, cost=len)

    async def scenario():
        huge = batcher.enqueue([f"h{i:02d}-------" for i in range(20)])  # 10 tokens each: five batches of 4
        await wait_for(fake.running)
        small = batcher.enqueue(["s1"])  # arrives while the huge request's first chunk runs
        fake.gate.set()
        result = await huge
        await small
        return result

    result = asyncio.run(scenario())
    asyncio.run(batcher.close())
    # 40 tokens a batch: 4 huge texts, then the small one first, then the huge request's next chunk
    assert [len(call) for call in fake.calls] == [4, 4, 4, 4, 4, 1]
    assert fake.calls[1] == ["s1", "h04-------", "h05-------", "h06-------"]
    assert [p["label"] for p in result] == [f"h{i:02d}-------" for i in range(20)]  # reassembled in order


def test_a_single_text_over_the_budget_still_runs_alone():
    calls = []
    batcher = MicroBatcher(lambda texts: calls.append(texts) or texts, max_batch=8, max_wait_ms=0,
                           max_tokens=5, cost=len)

    async def scenario():
        return await asyncio.gather(batcher.submit(["x" * 50]), batcher.submit(["ab", "cd"]))

    assert asyncio.run(scenario()) == [["x" * 50], ["ab", "cd"]]
    asyncio.run(batcher.close())
    assert calls == [["x" * 50], ["ab", "cd"]]


def test_ready_waits_for_the_warm_up_batch():
    fake = GateClassifier(open_=False)
    with TestClient(create_app(fake)) as c:
        assert c.get("/ready").status_code == 503 and c.get("/ready").json()["error"] == "warming up"
        assert c.get("/health").status_code == 200  # alive, just not ready
        fake.gate.set()
        deadline = time.monotonic() + 10
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)


# ---- launching: the network warning and the worker factory -------------------------------------------
def test_serving_beyond_loopback_without_a_key_warns_once(monkeypatch):
    import uvicorn

    from sentune.serve import Deployment, launch

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.setattr(launch, "build_app", lambda d: object())
    for host, keys, warned in [("0.0.0.0", [], 1), ("0.0.0.0", ["k-123456789"], 0), ("127.0.0.1", [], 0)]:
        lines: list[str] = []
        launch.serve(Deployment(model_dir="m", api_keys=keys), host=host, log=lines.append)
        assert sum(line.startswith("warning:") for line in lines) == warned, (host, keys, lines)
        assert not keys or keys[0] not in " ".join(lines)


def test_workers_start_from_an_import_string_with_the_settings_in_the_environment(monkeypatch):
    import os

    import uvicorn

    from sentune.serve import Deployment, launch

    seen = {}

    def fake_run(app, **options):
        seen.update(app=app, options=options, settings=os.environ[launch.SETTINGS_ENV],
                    metrics_dir=os.environ["PROMETHEUS_MULTIPROC_DIR"])

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    launch.serve(Deployment(model_dir="m", policy=Policy(graceful_timeout=7)), workers=2, log=lambda _: None)
    assert seen["app"] == "sentune.serve.launch:app_from_env" and seen["options"]["factory"] is True
    assert seen["options"]["workers"] == 2 and seen["options"]["timeout_graceful_shutdown"] == 7
    sent = Deployment.model_validate_json(seen["settings"])
    assert sent.model_dir == "m" and sent.threads == max(1, launch.cores() // 2)
    assert not os.path.exists(seen["metrics_dir"])  # cleaned up after the server stopped
    assert launch.SETTINGS_ENV not in os.environ and "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_draining_for_shutdown_answers_503_never_silence():
    fake = GateClassifier(open_=False)
    app = create_app(fake, max_batch=1, max_wait_ms=0)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            running = asyncio.ensure_future(http.post("/predict", json={"text": "running"}))
            await wait_for(fake.running)
            waiting = asyncio.ensure_future(http.post("/predict", json={"text": "waiting"}))
            while app.state.batcher.queued_texts < 1:
                await asyncio.sleep(0.005)
            app.state.batcher.begin_drain(0.3)  # what SIGTERM does, a second before uvicorn's deadline
            refused = await http.post("/predict", json={"text": "too late"})
            ready = await http.get("/ready")
            late = await waiting  # still waiting when the drain time ran out
            fake.gate.set()
            await running
        await app.state.batcher.close()
        return refused, ready, late

    refused, ready, late = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["connection"] == "close"
    assert "shutting down" in refused.json()["error"]
    assert ready.status_code == 503 and ready.json()["error"] == "shutting down"
    assert late.status_code == 503 and "shut down" in late.json()["error"]
    assert "too late" not in fake.seen() and "waiting" not in fake.seen()


def test_draining_does_not_start_a_batch_that_would_outlast_the_grace_period():
    from sentune.serve.batcher import ShuttingDown

    fake = GateClassifier(open_=False)
    batcher = MicroBatcher(fake.predict, max_batch=1, max_wait_ms=0, cost=len)

    async def scenario():
        first = batcher.enqueue(["running"])
        await wait_for(fake.running)
        long = batcher.enqueue(["ten tokens"])
        batcher.seconds_per_token = 1.0  # so the next batch would take ~10 s
        batcher.begin_drain(3.0)
        fake.gate.set()
        await first
        began = time.monotonic()
        with pytest.raises(ShuttingDown):
            await long
        return time.monotonic() - began

    waited = asyncio.run(scenario())
    asyncio.run(batcher.close())
    assert waited < 2.0  # answered at once, not at the drain deadline
    assert "ten tokens" not in fake.seen()
