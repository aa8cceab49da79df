"""The feature matrix: every command with every task (one label, several labels, a score) on the tiny BERT.

One training run per task (module-scoped) feeds most cells; the cells that must train themselves (kill -9 and
--resume, sweep, --long-text windows, torchrun) run the smallest run that still exercises them. Each cell passes,
or is refused up front with one `error:` line and exit status 2 (asserted as such). Commands run through the real
CLI (click's CliRunner, in process, so torch is imported once) except where a separate process is the point.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import sentiment_rows, write_jsonl
from test_resume import ENV, TIMING, cli_args, start_paused
from test_tasks import multi_label_rows, regression_rows

from sentune.cli import main
from sentune.inference.classifier import Classifier


@dataclass(frozen=True)
class Task:
    rows: Callable[..., list[dict]]  # (n, seed=...) -> generated rows with text and label
    label_column: str
    labels: tuple[str, ...]  # the model's labels, as config.json's id2label names them


TASKS = {
    "single_label": Task(sentiment_rows, "label", ("neg", "pos")),
    "multi_label": Task(multi_label_rows, "labels", ("film", "neg", "pos")),
    "regression": Task(regression_rows, "score", ("score",)),
}
TEXTS = ["great wonderful film movie", "awful boring worst plot", "the a movie"]
LONG = " ".join(["great wonderful film movie", "awful boring worst plot"] * 4)  # past --max-length 8: windows

def run_cli(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, f"{args[0]} exited {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def assert_refused(result, message: str) -> None:
    """Refused up front: exit status 2, one `error:` line naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def train_flags(model: Path, data: dict, out: Path, task: Task, **extra) -> dict:
    """A tiny but complete run: 4 batches per epoch, 2 epochs, fp32 on CPU, nothing downloaded."""
    return {"model": model, "train_file": data["train"], "validation_file": data["validation"],
            "test_file": data["test"], "label_column": task.label_column, "freeze_layers": 1, "max_length": 32,
            "batch_size": 16, "epochs": 2, "patience": 2, "lr_encoder": 5e-3, "lr_head": 5e-3, "precision": "fp32",
            "device": "cpu", "cache": "off", "progress": False, "output_dir": out, **extra}


def cli(values: dict) -> list[str]:
    return cli_args({k: str(v) if isinstance(v, Path) else v for k, v in values.items()})[1:]


@pytest.fixture(scope="module", params=list(TASKS))
def task_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def task(task_name) -> Task:
    return TASKS[task_name]


@pytest.fixture(scope="module")
def data(task, task_name, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(f"data-{task_name}")
    return {split: write_jsonl(root / f"{split}.jsonl", task.rows(n, seed=seed))
            for split, n, seed in (("train", 64, 1), ("validation", 32, 2), ("test", 32, 3))}


@pytest.fixture(scope="module")
def run(tiny_bert_dir, data, task, task_name, tmp_path_factory) -> Path:
    """`sentune train` once per task; most cells use its best/."""
    out = tmp_path_factory.mktemp(f"train-{task_name}") / "run"
    run_cli("train", *cli(train_flags(tiny_bert_dir, data, out, task)))
    return out


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


def assert_a_model_for(folder: Path, task_name: str) -> None:
    """A save_pretrained folder transformers.pipeline loads, answering for the task with its labels."""
    from transformers import pipeline

    answers = pipeline("text-classification", model=str(folder), device="cpu")(TEXTS, top_k=None)
    assert [sorted(a["label"] for a in answer) for answer in answers] == [list(TASKS[task_name].labels)] * len(TEXTS)
    clf = Classifier.load(folder, precision="fp32")
    assert clf.task == task_name and list(clf.labels) == list(TASKS[task_name].labels)


# ---- train, kill -9 and --resume, sweep ---------------------------------------------------------------------
def test_train(run, task_name):
    assert_a_model_for(run / "best", task_name)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["n"] == 32 and final.get("task", "single_label") == task_name
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    assert (run / "test_probs.json").is_file() and "Test" in (run / "report.md").read_text()


def epoch_rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kill_then_resume(run, tiny_bert_dir, data, task, task_name, tmp_path):
    out = tmp_path / "run"
    values = train_flags(tiny_bert_dir, data, out, task, save_every_steps=2)
    proc, _ = start_paused(tmp_path, {k: str(v) if isinstance(v, Path) else v for k, v in values.items()},
                           epoch=1, step=3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = json.loads((out / "checkpoint" / "state.json").read_text())["state"]
    assert (saved["epoch"], saved["step"]) == (0, 2)
    result = run_cli("train", "--resume", out, "--no-progress")
    assert "Resuming" in result.output
    assert epoch_rows(out) == epoch_rows(run)  # the same run as the one never stopped (same flags and seed)
    assert json.loads((out / "final_metrics.json").read_text()) == json.loads((run / "final_metrics.json").read_text())
    assert_a_model_for(out / "best", task_name)


def test_sweep_two_trials_and_its_final_test(tiny_bert_dir, data, task, task_name, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr_head: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    out = tmp_path / "sweep"
    flags = train_flags(tiny_bert_dir, data, out, task, cache="memory", cache_dir=tmp_path / "cache")
    run_cli("sweep", "--search", space, "--n-trials", "2", "--pruner", "none", *cli(flags))
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 2 and all(t["state"] == "complete" for t in trials), trials
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["test"]["n"] == 32 and final["test"].get("task", "single_label") == task_name
    assert set(final["validation"]) <= set(final["test"])  # tested on the metric the trials were chosen by
    assert_a_model_for(out / "best", task_name)


# ---- evaluate, calibrate --------------------------------------------------------------------------------------
def test_evaluate(run, data, task, task_name):
    result = run_cli("evaluate", run / "best", "--test-file", data["test"], "--label-column", task.label_column,
                     "--precision", "fp32")
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 32 and metrics.get("task", "single_label") == task_name
    final = json.loads((run / "final_metrics.json").read_text())  # the run's own test, on the same rows
    key = {"single_label": "accuracy", "multi_label": "macro_f1", "regression": "rmse"}[task_name]
    assert metrics[key] == pytest.approx(final[key], abs=1e-6)


def test_calibrate(run, data, task, task_name, tmp_path):
    model = shutil.copytree(run / "best", tmp_path / "model")
    result = run_cli("calibrate", model, "--validation-file", data["validation"], "--label-column",
                     task.label_column, ok=False)
    if task_name == "regression":  # neither a temperature nor thresholds: refused before any data is read
        assert_refused(result, "is a regression model: there is no temperature or threshold to calibrate")
        return
    assert result.exit_code == 0, result.output
    stored = json.loads((model / "config.json").read_text())["sentune"]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    settings = Classifier.load(model).settings  # what predict, serve and export will apply
    if task_name == "multi_label":
        assert stored["thresholds"] == answer["thresholds"] == settings.thresholds
    else:
        assert stored["temperature"] == answer["temperature"] == settings.temperature > 0
    assert_a_model_for(model, task_name)


# ---- predict, explain ---------------------------------------------------------------------------------------
def assert_same_answers(records: list[dict], answers: list[dict]) -> None:
    """Each record carries the Classifier's answer for its text (plus the input's id): the same batches on
    the same CPU thread, so the very same numbers."""
    assert len(records) == len(answers)
    for record, answer in zip(records, answers, strict=True):
        assert {k: record[k] for k in answer} == answer


def test_predict_cli_and_classifier(run, texts_file):
    result = run_cli("predict", run / "best", "--input", texts_file, "--precision", "fp32")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert_same_answers(records, Classifier.load(run / "best", precision="fp32").predict(TEXTS))


def test_explain(run, task_name):
    result = run_cli("explain", run / "best", *TEXTS[:2], "--format", "jsonl", "--steps", "8")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2
    for record, text in zip(records, TEXTS[:2], strict=True):
        assert record["words"] == text.split() and len(record["scores"]) == len(record["words"])
    if task_name == "regression":
        assert records[0]["label"] == "value"


# ---- export, serve ----------------------------------------------------------------------------------------------
def test_export_onnx_with_its_parity_check(run, task_name, tmp_path):
    out = tmp_path / "onnx"
    result = run_cli("export", run / "best", "--output", out)
    assert f"exported to {out}" in result.output
    record = json.loads((out / "export.json").read_text())
    assert record["agreement"] == 1.0
    onnx, torch_clf = Classifier.load(out, backend="onnx"), Classifier.load(run / "best", precision="fp32")
    assert onnx.task == torch_clf.task == task_name
    import numpy as np

    np.testing.assert_allclose(onnx.predict_proba(TEXTS), torch_clf.predict_proba(TEXTS), atol=1e-4)


def test_serve_predict_and_explain(run, task_name):
    from fastapi.testclient import TestClient

    from sentune.serve import create_app

    clf = Classifier.load(run / "best", precision="fp32")
    with TestClient(create_app(clf, max_wait_ms=1, explain_steps=8)) as client:
        predicted = client.post("/predict", json={"texts": TEXTS})
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["predictions"] == [{"windows": 1} | p for p in clf.predict(TEXTS)]
        explained = client.post("/explain", json={"text": TEXTS[0]})
        assert explained.status_code == 200, explained.text
        (record,) = explained.json()["explanations"]
        assert record["words"] == TEXTS[0].split()
        assert client.get("/metadata").json()["task"] == task_name


# ---- long texts as windows, two processes ---------------------------------------------------------------------
def test_long_text_windows_train_and_predict(tiny_bert_dir, data, task, task_name, tmp_path):
    out = tmp_path / "run"
    run_cli("train", *cli(train_flags(tiny_bert_dir, data, out, task, long_text="windows", max_length=8, stride=2,
                                      epochs=1)))
    saved = json.loads((out / "best" / "config.json").read_text())["sentune"]
    assert saved["long_text"] == "windows"
    clf = Classifier.load(out / "best", precision="fp32")
    assert clf.task == task_name
    texts = [*TEXTS, LONG]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    result = run_cli("predict", out / "best", "--input", tmp_path / "texts.txt", "--precision", "fp32")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert_same_answers(records, clf.predict(texts))
    assert records[-1]["windows"] > 1  # the long text really was read in several windows
    from fastapi.testclient import TestClient

    from sentune.serve import create_app

    with TestClient(create_app(clf, max_wait_ms=1)) as client:  # served, every task says so too
        assert client.post("/predict", json={"texts": texts}).json()["predictions"] == clf.predict(texts)


def test_torchrun_two_processes(tiny_bert_dir, data, task, task_name, tmp_path):
    out = tmp_path / "run"
    values = train_flags(tiny_bert_dir, data, out, task, epochs=1)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "sentune", "train", *cli(values)],
                            # a worker that aborts (SIGABRT, seen rarely at the end of a run) prints every
                            # thread's Python stack, so a failure here says where it happened
                            env={**ENV, "PYTHONFAULTHANDLER": "1"}, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-12000:]
    assert json.loads((out / "manifest.json").read_text())["num_processes"] == 2
    assert json.loads((out / "final_metrics.json").read_text()).get("task", "single_label") == task_name
    assert_a_model_for(out / "best", task_name)
