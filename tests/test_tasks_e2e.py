"""Multi-label and regression end to end on tiny models and generated data: train (with the cache and
resume), thresholds, transformers.pipeline, Classifier, predict files, evaluate, calibrate, serve, ONNX."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_jsonl
from test_tasks import multi_label_rows, regression_rows

from sentune import config
from sentune.training.loop import fit

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def files(root: Path, rows_of, **kw) -> dict[str, Path]:
    return {split: write_jsonl(root / f"{split}.jsonl", rows_of(n, seed=seed, **kw))
            for split, n, seed in (("train", 160, 1), ("validation", 64, 2), ("test", 64, 3))}


def run_flags(model_dir, data: dict, out: Path, **extra) -> dict:
    return {"model": str(model_dir), "train_file": str(data["train"]), "validation_file": str(data["validation"]),
            "test_file": str(data["test"]), "freeze_layers": 1, "max_length": 32, "batch_size": 16, "epochs": 3,
            "patience": 3, "lr_encoder": 3e-3, "lr_head": 1e-2, "precision": "fp32", "device": "cpu",
            "cache": "memory", "cache_dir": str(out.parent / "cache"), "progress": False,
            "output_dir": str(out), **extra}


def one_thread_fit(flags: dict):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(config.resolve(None, None, flags))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def multi_run(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    data = files(root, multi_label_rows)
    # the tiny random model needs its embeddings trained to learn the toy sets: nothing frozen, no cache
    p, state = one_thread_fit(run_flags(tiny_bert_dir, data, root / "run", epochs=12, patience=12, freeze_layers=0,
                                        lr_encoder=5e-3, lr_head=5e-3))
    return p.run_dir, data


@pytest.fixture(scope="module")
def regression_run(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("regression")
    data = files(root, regression_rows)
    p, state = one_thread_fit(run_flags(tiny_bert_dir, data, root / "run", label_column="score", epochs=8,
                                        patience=8, freeze_layers=0, lr_encoder=5e-3, lr_head=5e-3))
    return p.run_dir, data


# ---- training and the run directory ------------------------------------------------------------------------
def test_multi_label_run_records_task_thresholds_and_both_test_scores(multi_run):
    run, _ = multi_run
    cfg = config.load(run / "config.yaml")
    assert cfg.data.task == "multi_label" and cfg.train.select_metric == "macro_f1"
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["problem_type"] == "multi_label_classification"
    thresholds = saved["sentune"]["thresholds"]
    assert set(thresholds["per_label"]) == {"film", "neg", "pos"} and 0 < thresholds["global"] < 1
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["task"] == "multi_label" and final["n"] == 64
    assert {"macro_f1", "micro_f1", "samples_f1", "hamming_loss", "subset_accuracy"} <= set(final["at_0.5"])
    assert final["macro_f1"] > 0.7  # the toy label sets are learnable
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_macro_f1"] is not None for r in rows)
    report = (run / "report.md").read_text()
    assert "per_label_f1.png" in report and "val macro_f1" in report and (run / "per_label_f1.png").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["task"] == "multi_label" and manifest["data"]["train"]["label_counts"]["no_label"] > 0
    assert manifest["best_score"] == max(r["val_macro_f1"] for r in rows)
    probs = json.loads((run / "test_probs.json").read_text())  # per test text: its label set and probabilities
    assert np.shape(probs["label"]) == np.shape(probs["probs"]) == (64, 3)


def test_regression_run_answers_in_original_units(regression_run):
    run, data = regression_run
    cfg = config.load(run / "config.yaml")
    assert cfg.data.task == "regression" and cfg.train.select_metric == "rmse"
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["problem_type"] == "regression" and saved["sentune"]["label_scale"]["method"] == "standard"
    final = json.loads((run / "final_metrics.json").read_text())
    targets = [json.loads(line)["score"] for line in data["test"].read_text().splitlines()]
    assert final["targets"] == pytest.approx(targets, abs=1e-4)  # test scored in the data's own units
    assert final["rmse"] < np.std(targets) and final["pearson"] > 0.5
    report = (run / "report.md").read_text()
    assert "scatter.png" in report and (run / "residuals.png").is_file() and "val rmse" in report
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["best_score"] == min(r["val_rmse"] for r in rows)  # the RMSE itself, lowest is best
    values = json.loads((run / "test_probs.json").read_text())  # per test text: target and value, own units
    assert values["label"] == pytest.approx(targets, abs=1e-4)
    assert np.array(values["probs"])[:, 0] == pytest.approx(final["predictions"], abs=1e-4)


def test_pipeline_reads_the_problem_type(multi_run, regression_run):
    from transformers import pipeline

    from sentune.inference.classifier import Classifier

    multi = pipeline("text-classification", model=str(multi_run[0] / "best"), device="cpu")
    texts = [json.loads(line)["text"] for line in multi_run[1]["test"].read_text().splitlines()]
    answers = multi(texts, top_k=None)
    clf = Classifier.load(multi_run[0] / "best", precision="fp32")  # compared with the fp32 pipeline
    probs = clf.predict_proba(texts)
    several = 0
    for answer, ours in zip(answers, probs, strict=True):
        by_name = {s["label"]: s["score"] for s in answer}
        assert [by_name[n] for n in clf.labels] == pytest.approx(ours.tolist(), abs=1e-5)  # sigmoid, like ours
        several += sum(by_name[n] >= t for n, t in zip(clf.labels, clf.thresholds, strict=True)) >= 2
    assert several >= 4  # several labels for one text (the toy test set has 8 two-label rows)
    assert not all(sum(s["score"] for s in a) == pytest.approx(1.0, abs=1e-3) for a in answers)  # no softmax
    reg = pipeline("text-classification", model=str(regression_run[0] / "best"), device="cpu")
    value = reg("great superb best", function_to_apply=None)[0]["score"]
    ours = Classifier.load(regression_run[0] / "best", precision="fp32").predict(["great superb best"])[0]["value"]
    assert value == pytest.approx(ours, abs=1e-4) and ours > 5  # raw value, original units (mean ~5)


# ---- inference paths apply the thresholds -------------------------------------------------------------------
def with_thresholds(src: Path, dst: Path, per_label: dict) -> Path:
    import shutil

    from sentune.evaluation.calibrate import store_setting

    shutil.copytree(src, dst)
    store_setting(dst, "thresholds",
                  {"global": 0.5, "per_label": per_label, "fallback": [], "min_positives": 1, "n": 1})
    return dst


def test_classifier_applies_stored_thresholds(multi_run, tmp_path):
    from sentune.inference.classifier import Classifier

    best = multi_run[0] / "best"
    text = "great wonderful film movie"
    probs = Classifier.load(best).predict_proba([text])[0]
    low = with_thresholds(best, tmp_path / "low", {"film": 0.0, "neg": 0.0, "pos": 0.0})
    high = with_thresholds(best, tmp_path / "high", {"film": 1.01, "neg": 1.01, "pos": 1.01})
    assert [x["label"] for x in Classifier.load(low).predict([text])[0]["labels"]] == [
        n for _, n in sorted(zip(-probs, Classifier.load(low).labels, strict=True))]
    assert Classifier.load(high).predict([text])[0]["labels"] == []


def test_predict_cli_writes_label_sets_and_values(multi_run, regression_run, tmp_path):
    texts = tmp_path / "in.txt"
    texts.write_text("great wonderful film\nawful boring worst\n")
    for run, fmt in ((multi_run[0], "jsonl"), (multi_run[0], "csv"), (regression_run[0], "jsonl"),
                     (regression_run[0], "csv")):
        out = subprocess.run([sys.executable, "-m", "sentune", "predict", str(run / "best"), "--input", str(texts),
                              "--format", fmt], capture_output=True, text=True, env=ENV, check=True).stdout
        if fmt == "jsonl":
            records = [json.loads(line) for line in out.splitlines()]
            key = "labels" if run == multi_run[0] else "value"
            assert len(records) == 2 and all(key in r for r in records)
        else:
            import csv

            rows = list(csv.DictReader(io.StringIO(out)))
            assert len(rows) == 2
            assert ("prob_film" in rows[0] and "labels" in rows[0]) if run == multi_run[0] else "value" in rows[0]
    first = json.loads(subprocess.run([sys.executable, "-m", "sentune", "predict", str(multi_run[0] / "best"),
                                       "great wonderful film movie"], capture_output=True, text=True, env=ENV,
                                      check=True).stdout)
    from sentune.inference.classifier import Classifier

    clf = Classifier.load(multi_run[0] / "best")
    assert first["labels"] == clf.predict(["great wonderful film movie"])[0]["labels"] != []
    cut = dict(zip(clf.labels, clf.thresholds, strict=True))
    assert all(x["score"] >= cut[x["label"]] for x in first["labels"])  # the stored thresholds decide


def test_evaluate_and_calibrate_multi_label(multi_run, tmp_path):
    import shutil

    from sentune.evaluation.calibrate import calibrate_model
    from sentune.evaluation.evaluate import evaluate_model

    run, data = multi_run
    model = shutil.copytree(run / "best", tmp_path / "model")
    result = calibrate_model(str(model), str(data["validation"]))
    assert result["task"] == "multi_label" and result["macro_f1_after"] >= result["macro_f1_before"] - 1e-9
    stored = json.loads((model / "config.json").read_text())["sentune"]["thresholds"]
    assert stored == result["thresholds"]
    import csv

    rows = [json.loads(line) for line in data["validation"].read_text().splitlines()]
    with open(tmp_path / "val.csv", "w", newline="") as f:  # the same rows as a separator-joined column
        csv.writer(f).writerows([["text", "label"], *[[r["text"], "|".join(r["labels"])] for r in rows]])
    again = calibrate_model(str(model), str(tmp_path / "val.csv"), label_separator="|")
    assert again["thresholds"] == result["thresholds"]
    metrics = evaluate_model(str(model), test_file=str(data["test"]))
    assert metrics["task"] == "multi_label" and metrics["n"] == 64 and "at_0.5" in metrics
    assert {r["threshold"] for r in metrics["per_label"].values()} == set(stored["per_label"].values())


def test_evaluate_regression_in_original_units(regression_run):
    from sentune.evaluation.evaluate import evaluate_model, summary_lines

    run, data = regression_run
    metrics = evaluate_model(str(run / "best"), test_file=str(data["test"]), label_column="score",
                             precision="fp32")  # as the fp32 run's own final test
    final = json.loads((run / "final_metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["rmse"] == pytest.approx(final["rmse"], abs=1e-3)
    assert "RMSE" in summary_lines(metrics)[0]


def test_calibrate_refuses_a_regression_model(regression_run):
    from sentune.errors import ConfigError
    from sentune.evaluation.calibrate import calibrate_model

    run, data = regression_run
    with pytest.raises(ConfigError, match="regression model"):
        calibrate_model(str(run / "best"), str(data["validation"]), label_column="score")


# ---- serve ------------------------------------------------------------------------------------------------------
def test_serve_answers_per_task_with_its_schema(multi_run, regression_run):
    from fastapi.testclient import TestClient

    from sentune.inference.classifier import Classifier
    from sentune.serve import create_app

    clf = Classifier.load(multi_run[0] / "best")
    with TestClient(create_app(clf)) as client:
        body = client.post("/predict", json={"texts": ["great film movie", "awful"]}).json()
        assert body["predictions"] == clf.predict(["great film movie", "awful"])
        meta = client.get("/metadata").json()
        assert meta["task"] == "multi_label" and set(meta["thresholds"]) == {"film", "neg", "pos"}
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "MultiLabelPrediction" in schema and "Prediction" not in schema
    reg = Classifier.load(regression_run[0] / "best")
    with TestClient(create_app(reg)) as client:
        body = client.post("/predict", json={"text": "great superb"}).json()
        assert body["predictions"][0]["value"] == pytest.approx(reg.predict(["great superb"])[0]["value"])
        assert "RegressionPrediction" in client.get("/openapi.json").json()["components"]["schemas"]
        assert client.get("/metadata").json()["label_scale"]["method"] == "standard"


# ---- ONNX -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["multi", "regression"])
def test_onnx_export_keeps_the_task_and_its_decisions(which, multi_run, regression_run, tmp_path):
    from sentune.inference.classifier import Classifier
    from sentune.inference.export import export

    run = (multi_run if which == "multi" else regression_run)[0]
    out, parity = export(run / "best", tmp_path / "onnx")
    assert parity.task == ("multi_label" if which == "multi" else "regression") and parity.agreement == 1.0
    onnx, torch_clf = Classifier.load(out, backend="onnx"), Classifier.load(run / "best", backend="torch",
                                                                           precision="fp32")  # as the ONNX graph
    assert onnx.task == torch_clf.task and onnx.settings.thresholds == torch_clf.settings.thresholds
    texts = ["great wonderful film", "awful boring", "the a movie"]
    if which == "multi":
        assert [[x["label"] for x in p["labels"]] for p in onnx.predict(texts)] == [
            [x["label"] for x in p["labels"]] for p in torch_clf.predict(texts)]
    else:
        assert [p["value"] for p in onnx.predict(texts)] == pytest.approx(
            [p["value"] for p in torch_clf.predict(texts)], abs=1e-3)


def test_int8_that_changes_label_sets_is_refused(multi_run, tmp_path, monkeypatch):
    from sentune.errors import ModelError
    from sentune.inference import export as export_lib

    def broken_quantize(src, dst):  # stands in for a quantization that wrecks the model
        import onnx

        model = onnx.load(str(src))
        for init in model.graph.initializer:
            if "classifier" in init.name and "bias" in init.name:
                array = onnx.numpy_helper.to_array(init).copy() + 50.0
                init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
        onnx.save(model, str(dst))

    monkeypatch.setattr(export_lib, "quantize_int8", broken_quantize)
    with pytest.raises(ModelError, match="label sets"):
        export_lib.export(multi_run[0] / "best", tmp_path / "int8", quantize="int8")
    assert not (tmp_path / "int8").exists()


# ---- resume -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["multi_label", "regression"])
def test_resume_continues_each_task(task, tiny_bert_dir, tmp_path):
    rows_of = multi_label_rows if task == "multi_label" else regression_rows
    data = files(tmp_path, rows_of)
    extra = {} if task == "multi_label" else {"label_column": "score"}
    one_thread_fit(run_flags(tiny_bert_dir, data, tmp_path / "run", epochs=1, **extra))
    from sentune.training.checkpoint import resume_config

    cfg = resume_config(str(tmp_path / "run"), {"epochs": 2})
    assert cfg.data.task == task
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p, state = fit(cfg)
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and state.epoch == 2
    assert json.loads((tmp_path / "run" / "final_metrics.json").read_text())["task"] == task
