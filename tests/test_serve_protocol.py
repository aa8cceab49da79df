"""The Hugging Face Inference API / text-embeddings-inference protocol: `{"inputs": ...}` on `POST /` and
`/predict`, `GET /info`, and `huggingface_hub.InferenceClient` against a real server on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from sentune.inference.classifier import Classifier
from sentune.serve import Limits, create_app

LIMITS = Limits(max_body_bytes=4000, max_texts=5, max_chars=200)
KEY = "k-protocol-0123456789"


@pytest.fixture(scope="module")
def classifier(tiny_bert_dir):
    return Classifier.load(tiny_bert_dir, backend="torch", precision="fp32")


@pytest.fixture(scope="module")
def client(classifier):
    with TestClient(create_app(classifier, max_batch=8, max_wait_ms=1, limits=LIMITS)) as c:
        yield c


def ranked(prediction: dict) -> list[dict]:
    return [{"label": k, "score": v} for k, v in sorted(prediction["probs"].items(), key=lambda kv: -kv[1])]


@pytest.mark.parametrize("path", ["/", "/predict"])
def test_inputs_are_answered_with_ranked_labels_per_input(client, classifier, path):
    texts = ["good great film", "awful boring plot"]
    want = [ranked(p) for p in classifier.predict(texts)]
    for body, expected in [({"inputs": texts[0]}, want[:1]), ({"inputs": texts}, want),
                           ({"inputs": texts[0], "parameters": {}}, want[:1])]:
        r = client.post(path, json=body)
        assert r.status_code == 200, r.text
        got = r.json()
        assert [[e["label"] for e in row] for row in got] == [[e["label"] for e in row] for row in expected]
        for g_row, w_row in zip(got, expected, strict=True):
            assert [e["score"] for e in g_row] == pytest.approx([e["score"] for e in w_row], abs=1e-6)


def test_top_k_and_the_models_own_function(client):
    r = client.post("/", json={"inputs": ["good film"], "parameters": {"top_k": 1, "function_to_apply": "softmax"}})
    assert r.status_code == 200 and len(r.json()[0]) == 1


@pytest.mark.parametrize("path, body, says", [
    ("/", {"inputs": "x", "parameters": {"function_to_apply": "sigmoid"}}, "softmax"),
    ("/", {"inputs": "x", "parameters": {"top_k": 0}}, "top_k"),
    ("/", {"inputs": "x", "parameters": {"truncate": False}}, "truncate"),
    ("/", {"inputs": []}, "empty"),
    ("/", {"inputs": ["a"] * 6}, "limit is 5"),
    ("/", {"inputs": 3}, "inputs"),
    ("/", {"text": "x"}, "inputs"),
    ("/predict", {"inputs": "x", "text": "y"}, "send either"),
    ("/predict", {"text": "x", "parameters": {}}, "inputs"),
])
def test_bad_inference_bodies_get_one_clear_422(client, path, body, says):
    r = client.post(path, json=body)
    assert r.status_code == 422 and says in r.json()["error"], r.text


def test_explain_does_not_take_inputs(client):
    r = client.post("/explain", json={"inputs": "good film"})
    assert r.status_code == 422


def test_info_describes_the_classifier(client, classifier):
    info = client.get("/info").json()
    assert info["model_id"] == classifier.name and info["max_input_length"] == classifier.max_length
    assert info["model_type"]["classifier"]["label2id"] == {label: i for i, label in enumerate(classifier.labels)}
    assert info["max_client_batch_size"] == LIMITS.max_texts and info["model_dtype"] == "fp32"


def test_the_root_post_needs_a_key_and_the_page_does_not(classifier):
    with TestClient(create_app(classifier, max_wait_ms=1, api_keys=[KEY])) as c:
        assert c.post("/", json={"inputs": "good film"}).status_code == 401
        assert c.get("/").status_code == 200
        ok = c.post("/", json={"inputs": "good film"}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200


@contextlib.contextmanager
def running_server(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes the socket over
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_inference_client_text_classification_works_unchanged(classifier, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    # huggingface_hub refuses every request while offline, loopback included: lift it for this client only
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    want = ranked(classifier.predict(["a wonderful film"])[0])
    with running_server(create_app(classifier, max_wait_ms=1, api_keys=[KEY])) as url:
        client = InferenceClient(base_url=url, api_key=KEY, timeout=30)
        got = client.text_classification("a wonderful film")
        top = client.text_classification("a wonderful film", top_k=1)
    assert [(e.label, pytest.approx(e.score, abs=1e-6)) for e in got] == [(w["label"], w["score"]) for w in want]
    assert [e.label for e in top] == [want[0]["label"]]
