"""The HTTP service: endpoints, every 4xx case (JSON errors, never 500) and micro-batching."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from sentune.inference.classifier import Classifier
from sentune.serve import Limits, create_app

LIMITS = Limits(max_body_bytes=4000, max_texts=5, max_chars=200)


@pytest.fixture(scope="module")
def classifier(tiny_bert_dir):
    return Classifier.load(tiny_bert_dir, backend="torch")


@pytest.fixture(scope="module")
def client(classifier):
    with TestClient(create_app(classifier, max_batch=8, max_wait_ms=1, limits=LIMITS)) as c:
        yield c


def test_predict_texts_matches_the_classifier(client, classifier):
    texts = ["good great film", "awful boring plot", "ok"]
    r = client.post("/predict", json={"texts": texts})
    assert r.status_code == 200
    got = r.json()["predictions"]
    want = classifier.predict(texts)
    assert [p["label"] for p in got] == [p["label"] for p in want]
    for g, w in zip(got, want, strict=True):
        assert g["probs"] == pytest.approx(w["probs"], abs=1e-6)
        assert sum(g["probs"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data",
                                          "text/plain; charset=utf-8; x=application/json", None])
@pytest.mark.parametrize("path", ["/predict", "/explain"])
def test_a_body_that_is_not_declared_json_is_415(client, path, content_type):
    # what a web page may send cross-site without a CORS preflight (text/plain, forms) never reaches the model
    headers = {} if content_type is None else {"content-type": content_type}
    r = client.post(path, content=b'{"text": "good film"}', headers=headers)
    assert r.status_code == 415, r.text
    assert "application/json" in r.json()["error"] and r.headers["connection"] == "close"


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/merge-patch+json"])
def test_json_content_types_are_accepted(client, content_type):
    r = client.post("/predict", content=b'{"text": "good film"}', headers={"content-type": content_type})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_predict_single_text(client, classifier):
    r = client.post("/predict", json={"text": "good film"})
    assert r.status_code == 200
    (pred,) = r.json()["predictions"]
    assert pred["label"] in classifier.labels and set(pred["probs"]) == set(classifier.labels)


def test_health_metadata_docs_and_page(client, classifier):
    assert client.get("/health").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    assert meta["labels"] == classifier.labels
    assert meta["max_length"] == classifier.max_length
    assert meta["backend"] == "torch" and meta["model"] == classifier.name
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "Predict" in page.text
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset).status_code == 200
    # No external assets: every src/href on the page is local.
    assert "http://" not in page.text and "https://" not in page.text


BAD_REQUESTS = {
    "malformed JSON": (400, dict(content=b'{"texts": ["a",', headers={"content-type": "application/json"})),
    "not JSON at all": (400, dict(content=b"hello", headers={"content-type": "application/json"})),
    "malformed JSON, plain-text content type": (415, dict(content=b"{bad", headers={"content-type": "text/plain"})),
    "texts is a string": (422, dict(json={"texts": "good film"})),
    "texts holds numbers": (422, dict(json={"texts": ["ok", 3]})),
    "text is a number": (422, dict(json={"text": 5})),
    "text is null and no texts": (422, dict(json={"text": None})),
    "body is a list": (422, dict(json=["good film"])),
    "empty object": (422, dict(json={})),
    "both text and texts": (422, dict(json={"text": "a", "texts": ["b"]})),
    "unknown field": (422, dict(json={"texts": ["a"], "lang": "en"})),
    "empty list": (422, dict(json={"texts": []})),
    "too many texts": (422, dict(json={"texts": ["a"] * 6})),
    "text too long": (422, dict(json={"texts": ["ok", "x" * 201]})),
    "body over the size limit": (413, dict(json={"texts": ["y" * 150] * 30})),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_answer_4xx_json(client, case):
    status, kwargs = BAD_REQUESTS[case]
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]


def test_streamed_body_over_limit_is_413_without_content_length(client):
    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["error"]


def test_error_messages_name_the_problem(client):
    assert "limit is 5" in client.post("/predict", json={"texts": ["a"] * 6}).json()["error"]
    assert "text 1" in client.post("/predict", json={"texts": ["ok", "x" * 201]}).json()["error"]
    assert "texts" in client.post("/predict", json={"texts": "abc"}).json()["error"]


class EchoClassifier:
    """Stands in for the model: records each call's size; label = the text, so mix-ups would show."""

    name, labels, max_length, backend = "echo", ["a", "b"], 16, "fake"

    def __init__(self, delay: float = 0.05):
        self.delay = delay
        self.calls: list[int] = []
        self.threads: set[str] = set()

    def predict(self, texts, batch_size=32):
        self.calls.append(len(texts))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return [{"label": t, "score": 1.0, "probs": {"a": 0.5, "b": 0.5}} for t in texts]


async def fire(app, n: int) -> list[dict]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        responses = await asyncio.gather(*(http.post("/predict", json={"texts": [f"t{i}"]}) for i in range(n)))
    await app.state.batcher.close()
    return responses


def test_concurrent_requests_are_micro_batched():
    fake = EchoClassifier()
    app = create_app(fake, max_batch=64, max_wait_ms=20)
    responses = asyncio.run(fire(app, 24))
    assert [r.json()["predictions"][0]["label"] for r in responses] == [f"t{i}" for i in range(24)]
    assert sum(fake.calls) == 24
    assert len(fake.calls) < 24 and max(fake.calls) > 1  # requests shared model calls
    assert all(name.startswith("sentune-model") for name in fake.threads)  # off the event loop


def test_max_batch_one_runs_each_request_alone():
    fake = EchoClassifier(delay=0.01)
    app = create_app(fake, max_batch=1, max_wait_ms=20)
    responses = asyncio.run(fire(app, 6))
    assert all(r.status_code == 200 for r in responses)
    assert fake.calls == [1] * 6


def test_request_larger_than_max_batch_is_answered_whole():
    fake = EchoClassifier(delay=0.0)
    app = create_app(fake, max_batch=2, max_wait_ms=1)
    with TestClient(app) as c:
        r = c.post("/predict", json={"texts": ["x", "y", "z"]})
    assert [p["label"] for p in r.json()["predictions"]] == ["x", "y", "z"]


def test_openapi_documents_the_request_shape(client):
    schema = client.get("/openapi.json").json()
    body = json.dumps(schema["components"]["schemas"]["PredictRequest"])
    assert "texts" in body and "text" in body
