"""`POST /explain`: word attributions over HTTP, the same input rules as /predict and stricter limits."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sentune.inference.classifier import Classifier
from sentune.serve import Limits, create_app

pytest.importorskip("captum", reason="pip install 'sentune[explain]'")

LIMITS = Limits(max_body_bytes=4000, max_texts=5, max_chars=200, explain_max_texts=2, explain_max_chars=50)


@pytest.fixture(scope="module")
def classifier(tiny_bert_dir):
    return Classifier.load(tiny_bert_dir, backend="torch")


@pytest.fixture(scope="module")
def client(classifier):
    with TestClient(create_app(classifier, max_batch=8, max_wait_ms=1, limits=LIMITS, explain_steps=16)) as c:
        yield c


def test_explain_matches_the_classifier(client, classifier):
    r = client.post("/explain", json={"text": "good great film, boring plot"})
    assert r.status_code == 200, r.text
    (got,) = r.json()["explanations"]
    (want,) = classifier.explain(["good great film, boring plot"], steps=16)
    assert got["words"] == want["words"] == ["good", "great", "film,", "boring", "plot"]
    assert got["label"] == want["label"] == classifier.predict(["good great film, boring plot"])[0]["label"]
    assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    assert sum(got["scores"]) - (got["value"] - got["baseline_value"]) == pytest.approx(got["delta"], abs=1e-4)


def test_explain_target_and_a_list(client, classifier):
    r = client.post("/explain", json={"texts": ["good film", "awful"], "target": "LABEL_1"})
    assert r.status_code == 200
    assert [e["label"] for e in r.json()["explanations"]] == ["LABEL_1", "LABEL_1"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"texts": ["a", "b", "c"]}, 422, "3 texts in one request; the limit is 2"),
    ({"text": "x" * 51}, 422, "text 0 has 51 characters; the limit is 50"),
    ({"texts": []}, 422, "texts is empty"),
    ({"text": 3}, 422, "text"),
    ({"text": "good", "texts": ["good"]}, 422, "send either"),
    ({"text": "good", "target": "nope"}, 422, "target 'nope' is not a label; labels: LABEL_0, LABEL_1"),
    ({"text": "good", "steps": 1000}, 422, "steps"),  # the server chooses the steps, not the caller
])
def test_explain_request_mistakes_are_4xx_json(client, body, status, message):
    r = client.post("/explain", json=body)
    assert r.status_code == status and message in r.json()["error"]


def test_explain_limits_are_stricter_than_predict(client):
    text = "good film " * 10  # 100 characters: fine for /predict (200), over /explain's 50
    assert client.post("/predict", json={"text": text}).status_code == 200
    assert client.post("/explain", json={"text": text}).status_code == 422


def test_explain_malformed_and_oversized_bodies(client):
    broken = client.post("/explain", content=b'{"text": ', headers={"content-type": "application/json"})
    assert broken.status_code == 400
    big = client.post("/explain", content=b'{"text": "' + b"x" * 5000 + b'"}',
                      headers={"content-type": "application/json"})
    assert big.status_code == 413 and "over 4000 bytes" in big.json()["error"]


def test_explain_is_documented_and_its_limits_published(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/explain"]["post"]
    assert {"400", "413", "422"} <= set(op["responses"])
    schema = spec["components"]["schemas"]["Explanation"]
    assert {"words", "scores", "delta", "label"} <= set(schema["properties"])
    meta = client.get("/metadata").json()
    assert meta["limits"]["explain_max_texts"] == 2 and meta["explain_steps"] == 16


def test_explain_needs_the_api_key_like_predict(classifier):
    app = create_app(classifier, limits=LIMITS, explain_steps=8, api_keys=["explain-key-123"])
    with TestClient(app) as c:
        assert c.post("/explain", json={"text": "good"}).status_code == 401
        wrong = c.post("/explain", json={"text": "good"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = c.post("/explain", json={"text": "good"}, headers={"Authorization": "Bearer explain-key-123"})
        assert ok.status_code == 200 and ok.json()["explanations"][0]["words"] == ["good"]
