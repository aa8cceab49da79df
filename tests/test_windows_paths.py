"""One long-text behaviour on every path: a windowed run's evaluation, predict, evaluate, serve, ONNX, resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import POSITIVE, WORDS, build_model, build_tokenizer, sentiment_rows, write_jsonl
from fastapi.testclient import TestClient

from sentune import config
from sentune.evaluation.evaluate import evaluate_model
from sentune.inference.classifier import Classifier
from sentune.serve import Limits, create_app
from sentune.training import checkpoint
from sentune.training import loop as train

MAX_LEN = 16  # content 14 tokens a window: most toy reviews below span several windows


def long_rows(n: int, seed: int) -> list[dict]:
    """Reviews of 2-5 toy sentences: the label's words are spread over the whole text."""
    rng = random.Random(seed)
    rows = sentiment_rows(n * 4, seed=seed)
    out = []
    for i in range(n):
        label = ("neg", "pos")[i % 2]
        same = [r["text"] for r in rows if r["label"] == label]
        out.append({"text": " ".join(rng.sample(same, rng.randint(2, 5))), "label": label})
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("long-data")
    return {name: write_jsonl(root / f"{name}.jsonl", long_rows(n, seed))
            for name, n, seed in (("train", 48, 1), ("validation", 16, 2), ("test", 20, 3))}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert-long")
    tok = build_tokenizer("bert")
    build_model("bert", vocab_size=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def windows_cfg(model_dir, files, out, **flags):
    base = {"model": str(model_dir), "train_file": str(files["train"]), "validation_file": str(files["validation"]),
            "test_file": str(files["test"]), "freeze_layers": 1, "max_length": MAX_LEN, "batch_size": 12,
            "epochs": 2, "patience": 2, "lr_encoder": 3e-3, "lr_head": 3e-3, "cache": "memory",
            "progress": False, "precision": "fp32", "output_dir": str(out), "long_text": "windows",
            "stride": 4, "max_windows": 6, "pool": "attention"}
    return config.resolve(None, None, {**base, **flags})


@pytest.fixture(scope="module")
def run(model_dir, files, tmp_path_factory):
    """A trained windowed run, and its per-document test probabilities as training's evaluation gives them."""
    # no cache here: its bf16 storage would differ from an fp32 reading by ~1e-4 (tests/test_windows.py
    # checks training through the cache against training without it)
    p, state = train.fit(windows_cfg(model_dir, files, tmp_path_factory.mktemp("runs") / "run", cache="off"))
    probs = train.evaluate(p, "test", with_probs=True)["probs"].numpy()
    return p, probs


def test_settings_are_in_best_config_and_the_pool_weights_in_its_safetensors(run):
    p, _ = run
    saved = json.loads((p.run_dir / "best" / "config.json").read_text())["sentune"]
    assert {k: saved[k] for k in ("long_text", "stride", "max_windows", "pool")} == {
        "long_text": "windows", "stride": 4, "max_windows": 6, "pool": "attention"}
    from safetensors import safe_open

    with safe_open(str(p.run_dir / "best" / "model.safetensors"), "pt") as f:
        weight = f.get_tensor("window_pool.score.weight")
    assert weight.abs().sum() > 0  # trained away from its zero init


def test_best_still_loads_in_a_transformers_pipeline(run):
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(run[0].run_dir / "best"), device="cpu")
    assert clf("great excellent movie")[0]["label"] in {"neg", "pos"}


def test_predict_equals_evaluation_on_long_texts(run, files):
    p, probs = run
    texts = list(p.splits.test["text"])
    clf = Classifier.load(p.run_dir / "best", backend="torch", precision="fp32")
    for batch_size in (1, 5, 64):  # windows of different texts batched together, or a text alone
        got = clf.predict_proba(texts, batch_size=batch_size)
        np.testing.assert_allclose(got, probs, atol=1e-5)
    predictions = clf.predict(texts)
    windows = clf.encode_windows(texts)
    assert [q["windows"] for q in predictions] == [len(w) for w in windows]
    assert max(q["windows"] for q in predictions) > 2
    metrics = evaluate_model(str(p.run_dir / "best"), test_file=str(files["test"]), precision="fp32")
    final = json.loads((p.run_dir / "final_metrics.json").read_text())
    assert metrics["accuracy"] == final["accuracy"] and metrics["nll"] == pytest.approx(final["nll"], abs=1e-5)


def test_serve_says_how_many_windows_and_keeps_its_body_limit(run):
    p, probs = run
    texts = list(p.splits.test["text"])[:4]
    clf = Classifier.load(p.run_dir / "best", backend="torch", precision="fp32")
    limits = Limits(max_body_bytes=3000, max_texts=8, max_chars=2000)
    with TestClient(create_app(clf, max_batch=8, max_wait_ms=1, limits=limits)) as client:
        got = client.post("/predict", json={"texts": texts}).json()["predictions"]
        want = clf.predict(texts)
        assert [g["windows"] for g in got] == [w["windows"] for w in want]
        for g, w in zip(got, want, strict=True):
            assert g["label"] == w["label"] and g["probs"] == pytest.approx(w["probs"], abs=1e-6)
        assert client.get("/metadata").json()["long_text"] == {"mode": "windows", "stride": 4, "max_windows": 6,
                                                              "pool": "attention"}
        huge = " ".join(random.Random(0).choice(WORDS) for _ in range(1000))  # ~5 KB: over the body limit
        r = client.post("/predict", json={"text": huge})
        assert r.status_code == 413 and "error" in r.json()
    from importlib import resources

    static = resources.files("sentune.serve").joinpath("static")
    assert "read in ${n} windows" in static.joinpath("app.js").read_text()  # the page shows the count
    assert 'id="windows"' in static.joinpath("index.html").read_text()


def test_onnx_export_pools_like_pytorch(run, tmp_path):
    from sentune.inference.export import export

    p, probs = run
    out, parity = export(p.run_dir / "best", tmp_path / "onnx")
    assert parity.agreement == 1.0 and parity.max_prob_diff < 1e-4
    onnx = Classifier.load(out)
    assert onnx.backend == "onnx" and onnx.settings.windows and onnx.settings.pool == "attention"
    texts = list(p.splits.test["text"])
    for batch_size in (1, 7):
        np.testing.assert_allclose(onnx.predict_proba(texts, batch_size=batch_size), probs, atol=1e-5)
    assert [q["windows"] for q in onnx.predict(texts)] == [len(w) for w in onnx.encode_windows(texts)]


def test_a_short_text_gets_the_truncate_result(model_dir, files, tmp_path):
    """Same weights read as a truncating model and as a windowed one: a text of one window scores the same."""
    p, _ = train.fit(windows_cfg(model_dir, files, tmp_path / "mean", pool="mean", epochs=1))
    best = p.run_dir / "best"
    windowed = Classifier.load(best, backend="torch", precision="fp32")
    plain = Classifier.load(best, backend="torch", precision="fp32")
    plain.settings.long_text, plain.runner.windowed = "truncate", None
    short = ["good great film", "awful " + " ".join(POSITIVE[:3]), "boring"]
    assert all(len(w) == 1 for w in windowed.encode_windows(short))
    np.testing.assert_allclose(windowed.predict_proba(short), plain.predict_proba(short), atol=1e-6)


def test_resume_with_windows_equals_the_uninterrupted_run(model_dir, files, tmp_path):
    whole, _ = train.fit(windows_cfg(model_dir, files, tmp_path / "whole", epochs=3, patience=3))
    first, _ = train.fit(windows_cfg(model_dir, files, tmp_path / "split", epochs=1, patience=3))
    resumed, state = train.fit(checkpoint.resume_config(first.run_dir, {"epochs": 3}))
    assert state.epoch == 3

    def rows(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    for a, b in zip(rows(whole.run_dir), rows(resumed.run_dir), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6) and a["val_acc"] == b["val_acc"]
    want, got = whole.model.state_dict(), resumed.model.state_dict()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0)


def test_two_processes_train_on_windows(model_dir, files, tmp_path):
    """torchrun with 2 CPU processes: every document once per epoch across the ranks, the same weights."""
    import subprocess
    import sys

    from test_distributed import WORKER
    from test_resume import ENV, cli_args

    script, log, run = tmp_path / "worker.py", tmp_path / "log", tmp_path / "ddp"
    script.write_text(WORKER)
    log.mkdir()
    values = {"model": str(model_dir), "train_file": str(files["train"]),
              "validation_file": str(files["validation"]), "test_file": str(files["test"]), "freeze_layers": 1,
              "max_length": MAX_LEN, "batch_size": 12, "epochs": 2, "precision": "fp32", "device": "cpu",
              "cache": "disk", "cache_dir": str(tmp_path / "cache"), "progress": False, "output_dir": str(run),
              "long_text": "windows", "stride": 4, "max_windows": 6, "pool": "attention"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             "2", str(script), str(log), *cli_args(values)],
                            env=ENV, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((log / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    for epoch in ("1", "2"):
        shard0, shard1 = (ranks[r]["seen"][epoch] for r in (0, 1))
        assert not set(shard0) & set(shard1) and len(shard0) == len(set(shard0))
        assert len(set(shard0) | set(shard1)) > 40  # of 48: only the last uneven batch may be dropped
    assert "texts in" in result.stdout and "windows" in result.stdout  # the cache report counts windows
