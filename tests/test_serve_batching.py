"""The served batch path: texts are tokenized on the tokenizer thread, not the model thread; results keep each
request's order; a served model's answers equal `Classifier.predict`; an encoding bug fails only its request."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fastapi.testclient import TestClient

from sentune.inference.classifier import Classifier
from sentune.serve import create_app
from sentune.serve.batcher import MicroBatcher


def test_encoding_runs_on_the_tokenizer_thread_and_results_keep_their_order():
    threads: dict[str, set[str]] = {"encode": set(), "predict": set()}

    def encode(texts):
        threads["encode"].add(threading.current_thread().name)
        return [t.upper() for t in texts]

    def predict(items):
        threads["predict"].add(threading.current_thread().name)
        return [f"<{item}>" for item in items]

    batcher = MicroBatcher(predict, max_batch=3, max_wait_ms=1, max_tokens=5, cost=lambda t: 2, encode=encode)

    async def scenario():
        await batcher.warm_up(["w"])
        return await asyncio.gather(*(batcher.submit([f"r{r}t{i}" for i in range(r + 1)]) for r in range(5)))

    results = asyncio.run(scenario())
    asyncio.run(batcher.close())
    assert results == [[f"<R{r}T{i}>" for i in range(r + 1)] for r in range(5)]
    assert {name.split("_")[0] for name in threads["encode"]} == {"sentune-tokenize"}
    assert {name.split("_")[0] for name in threads["predict"]} == {"sentune-model"}


def test_an_encoding_error_fails_its_own_request_only():
    def encode(texts):
        if "bad" in texts:
            raise RuntimeError("tokenizer bug")
        return texts

    batcher = MicroBatcher(lambda items: items, max_batch=8, max_wait_ms=5, encode=encode)

    async def scenario():
        return await asyncio.gather(batcher.submit(["bad"]), batcher.submit(["ok"]), return_exceptions=True)

    bad, ok = asyncio.run(scenario())
    asyncio.run(batcher.close())
    assert isinstance(bad, RuntimeError) and ok == ["ok"]


@pytest.fixture(scope="module")
def classifier(tiny_roberta_dir):
    return Classifier.load(tiny_roberta_dir, backend="torch", precision="fp32", max_batch_tokens=128)


def test_served_predictions_equal_the_classifiers_for_concurrent_mixed_length_requests(classifier):
    requests = [[("good film " * n).strip() for n in range(k, k + 3)] for k in (1, 9, 20, 2, 30)]
    with TestClient(create_app(classifier, max_batch=4, max_wait_ms=20)) as client:
        answers = []
        threads = [threading.Thread(target=lambda b=body: answers.append((b, client.post("/predict", json={
            "texts": b}).json()["predictions"]))) for body in requests]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(answers) == len(requests)
    for body, got in answers:
        want = classifier.predict(body)
        assert [g["label"] for g in got] == [w["label"] for w in want]
        for g, w in zip(got, want, strict=True):
            assert g["probs"] == pytest.approx(w["probs"], abs=1e-5)


def test_one_max_batch_tokens_setting_reaches_the_batcher_and_the_classifier(tiny_bert_dir):
    from sentune.serve import Deployment, Policy
    from sentune.serve.launch import build_app

    app = build_app(Deployment(model_dir=str(tiny_bert_dir), precision="fp32", policy=Policy(max_batch_tokens=96)))
    batcher = app.state.batcher
    assert batcher.max_tokens == 96
    classifier = batcher.encode.__self__  # the served Classifier's bound prepare
    assert classifier.max_batch_tokens == 96
