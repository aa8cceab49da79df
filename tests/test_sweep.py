"""`sentune sweep`: shared caches across trials, pruning, test once, faults, resume, several processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import sentiment_rows, write_jsonl

from sentune import config as config_lib
from sentune import tasks
from sentune.errors import ConfigError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
LR = {"lr_encoder": [0.0, 1e-2], "lr_head": [0.0, 1e-2]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Enough toy rows that a good learning rate beats chance after one epoch and a zero one does not."""
    root = tmp_path_factory.mktemp("sweep-data")
    return {"train": write_jsonl(root / "train.jsonl", sentiment_rows(400, seed=1)),
            "validation": write_jsonl(root / "validation.jsonl", sentiment_rows(100, seed=2)),
            "test": write_jsonl(root / "test.jsonl", sentiment_rows(60, seed=3))}


def flags(model_dir: Path, data: dict, tmp_path: Path, **over) -> dict:
    values = {"model": str(model_dir), "train_file": str(data["train"]), "validation_file": str(data["validation"]),
              "test_file": str(data["test"]), "max_length": 32, "batch_size": 16, "epochs": 2, "patience": 2,
              "freeze_layers": 1, "precision": "fp32", "cache": "memory", "cache_dir": str(tmp_path / "cache"),
              "output_dir": str(tmp_path / "sweep")}
    return values | over


def make_cfg(model_dir, data, tmp_path, **over):
    return config_lib.resolve(None, None, flags(model_dir, data, tmp_path, **over))


def enqueue(sweep_dir: Path, *values: dict) -> None:
    """Fix the first trials' values through Optuna's own queue (the sweep opens the same study)."""
    import optuna

    sweep_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{sweep_dir / 'study.db'}", study_name=sweep_dir.name,
                                direction="maximize", load_if_exists=True)
    for v in values:
        study.enqueue_trial(v)


def rows(sweep_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep_dir / "trials.jsonl").read_text().splitlines()]


def cli_args(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", str(v))]


# ---- bad spaces: one clear error naming the field, before any work --------------------------------------
@pytest.mark.parametrize("space, field", [
    ({"lr_encodr": {"low": 1e-5, "high": 1e-3}}, "lr_encodr"),
    ({"lr_head": {"low": 1e-3, "high": 1e-3}}, "lr_head"),
    ({"lr_head": {"low": 1e-2, "high": 1e-3}}, "lr_head"),
    ({"max_length": [64, 128]}, "max_length"),
    ({"seed": [1, 2]}, "seed"),
    ({"scheduler": []}, "scheduler"),
    ({"scheduler": ["linear", "cubic"]}, "scheduler"),
    ({"lr_head": {"low": 0.0, "high": 1e-2, "log": True}}, "lr_head"),
    ({"freeze_layers": {"low": 1.5, "high": 3}}, "freeze_layers"),
])
def test_bad_space_is_one_error_naming_the_field(space, field):
    from sentune.training.space import parse_space

    with pytest.raises(ConfigError, match=field):
        parse_space(space)


def test_space_beyond_the_models_depth_fails_before_any_trial(tiny_bert_dir, data, tmp_path):
    from sentune.training.sweep import sweep

    cfg = make_cfg(tiny_bert_dir, data, tmp_path)
    with pytest.raises(ConfigError, match="freeze_layers"):
        sweep(cfg, {"freeze_layers": [1, 4]}, n_trials=2)  # the tiny model has 3 layers
    with pytest.raises(ConfigError, match="layer-decay"):
        sweep(cfg, {"layer_decay": {"low": 0.5, "high": 1.5}}, n_trials=2)
    assert not (tmp_path / "sweep").exists()


def test_cli_bad_space_prints_one_line(tiny_bert_dir, data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("max_length: [64, 128]\n")
    out = subprocess.run([sys.executable, "-m", "sentune", "sweep", "--search", str(space),
                          *cli_args(flags(tiny_bert_dir, data, tmp_path))], capture_output=True, text=True, env=ENV)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: search space: max_length changes the data")
    assert "Traceback" not in out.stderr


# ---- shared caches, best/, test once ---------------------------------------------------------------------
def test_trials_reuse_one_cache_and_a_deeper_trial_runs_only_the_extra_layers(tiny_bert_dir, data, tmp_path,
                                                                               monkeypatch):
    from transformers import pipeline

    from sentune import model as model_lib
    from sentune.training import sweep as sweep_lib

    prefix_calls, layer_calls, test_calls = [], [], []
    real_prefix, real_layers, real_test = model_lib.forward_prefix, model_lib.forward_layers, sweep_lib.test_once
    monkeypatch.setattr(model_lib, "forward_prefix", lambda m, k, *a: prefix_calls.append(k) or real_prefix(m, k, *a))
    monkeypatch.setattr(model_lib, "forward_layers",
                        lambda m, i, j, *a: layer_calls.append((i, j)) or real_layers(m, i, j, *a))
    monkeypatch.setattr(sweep_lib, "test_once", lambda *a: test_calls.append(1) or real_test(*a))
    sweep_dir = tmp_path / "sweep"
    enqueue(sweep_dir, {"freeze_layers": 1, "lr_head": 1e-2}, {"freeze_layers": 1, "lr_head": 3e-3},
            {"freeze_layers": 2, "lr_head": 1e-2})
    result = sweep_lib.sweep(make_cfg(tiny_bert_dir, data, tmp_path, lr_encoder=1e-2),
                             {"freeze_layers": [1, 2], "lr_head": [3e-3, 1e-2]}, n_trials=3, pruner="none")

    trials = rows(sweep_dir)
    assert [t["cache"] for t in trials] == ["built", "reused", "derived:1"]
    assert {c["split"] for t in trials for c in t["cache_detail"]} == {"train", "validation"}  # never test
    # the prefix ran once per build batch of the first trial only (train 400 + validation 100, 32 a batch) ...
    # (depth 0: the final test's classifier, whose forward is the same prefix -> suffix code, builds nothing)
    assert [k for k in prefix_calls if k] == [1] * (13 + 4)
    # ... and the deeper trial ran layer 1 alone, once over the same examples, from the depth-1 cache
    assert layer_calls == [(1, 2)] * (13 + 4)
    assert all(t["state"] == "complete" and len(t["epochs"]) == 2 and t["seconds"] > 0 for t in trials)

    assert test_calls == [1]
    final = json.loads((sweep_dir / "final_metrics.json").read_text())
    assert final["trial"] == result.best_trial.number and final["test"]["n"] == 60
    assert final["validation"]["accuracy"] == pytest.approx(max(t["value"] for t in trials))
    clf = pipeline("text-classification", model=str(sweep_dir / "best"), tokenizer=str(sweep_dir / "best"))
    assert clf("good great")[0]["label"] in ("neg", "pos")
    for t in trials:  # trials keep their metrics, not their weights
        run = Path(t["run_dir"])
        assert (run / "metrics.jsonl").exists() and not (run / "best").exists() and not (run / "checkpoint").exists()
    report = (sweep_dir / "report.md").read_text()
    assert "Chosen trial" in report and "derived:1" in report
    assert (sweep_dir / "plots" / "optimization_history.png").stat().st_size > 0
    assert (sweep_dir / "plots" / "param_importances.png").exists()


def test_derived_cache_matches_a_built_one(tiny_bert_dir):
    """Layers 1.. run on the stored depth-1 states give the depth-2 states a direct build gives (bf16 storage)."""
    import torch
    from conftest import build_tokenizer
    from transformers import AutoModelForSequenceClassification

    from sentune.data.batches import make_feed
    from sentune.training.cache import CacheStore, cache_feeds

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    tok = build_tokenizer("bert")
    ids = [tok(r["text"])["input_ids"] for r in sentiment_rows(40)]
    feed = {"train": make_feed(ids, [0] * 40, batch_size=8, train=True, seed=0, pad_id=0, max_length=64)}
    common = dict(mode="memory", cache_dir=None, fingerprint_parts={}, device="cpu", log=lambda line: None)
    store = CacheStore()
    cache_feeds(model, 1, feed, store=store, **common)
    derived = cache_feeds(model, 2, feed, store=store, **common)["train"]
    built = cache_feeds(model, 2, feed, **common)["train"]
    assert [e["status"] for e in store.events] == ["built", "derived:1"]
    for a, b in zip(derived.batches(0), built.batches(0), strict=True):
        torch.testing.assert_close(a["hidden"].float(), b["hidden"].float(), atol=0.05, rtol=0.02)


def test_pruner_stops_a_poor_trial_after_one_epoch(tiny_bert_dir, data, tmp_path):
    from sentune.training.sweep import sweep

    good, zero = {"lr_encoder": 1e-2, "lr_head": 1e-2}, {"lr_encoder": 0.0, "lr_head": 0.0}
    enqueue(tmp_path / "sweep", good, good, zero)
    sweep(make_cfg(tiny_bert_dir, data, tmp_path, epochs=3, patience=3), LR, n_trials=3, pruner="median")
    trials = rows(tmp_path / "sweep")
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"]
    assert len(trials[2]["epochs"]) == 1 and trials[2]["epochs"][0]["score"] < trials[0]["epochs"][0]["score"]


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tiny_bert_dir, data, tmp_path, monkeypatch):
    from sentune.errors import SentuneError
    from sentune.training import loop
    from sentune.training.sweep import sweep

    real_fit = loop.fit

    def fit(cfg, shared=None):
        if cfg.train.lr_head == 0.0:
            raise SentuneError("non-finite loss at epoch 1 step 3")
        return real_fit(cfg, shared)

    monkeypatch.setattr(loop, "fit", fit)
    enqueue(tmp_path / "sweep", {"lr_encoder": 0.0, "lr_head": 0.0}, {"lr_encoder": 1e-2, "lr_head": 1e-2})
    result = sweep(make_cfg(tiny_bert_dir, data, tmp_path, epochs=1), LR, n_trials=2, pruner="none")
    trials = rows(tmp_path / "sweep")
    assert trials[0]["state"] == "failed" and "non-finite loss at epoch 1 step 3" in trials[0]["error"]
    assert [t["state"] for t in trials[1:]] == ["complete", "complete"]
    assert result.final_metrics["trial"] in (1, 2)


# ---- kill -9, resume ---------------------------------------------------------------------------------------
# A sweep subprocess whose trial 1 pauses inside a training step (after writing a marker) so the test can kill it.
PAUSING_SWEEP = """
import sys, time
from pathlib import Path
from sentune.training import loop
marker = Path(sys.argv[1])
real_step = loop.train_step

def train_step(p, batch, sync, epoch, step):
    if p.run_dir.name == "trial-0001" and (epoch, step) == (1, 2):
        marker.write_text("paused")
        time.sleep(600)
    return real_step(p, batch, sync, epoch, step)

loop.train_step = train_step
from sentune.cli import main
sys.argv = ["sentune", *sys.argv[2:]]
main()
"""


def test_kill_9_mid_trial_then_resume_retries_it(tiny_bert_dir, data, tmp_path):
    script, marker = tmp_path / "pausing_sweep.py", tmp_path / "paused"
    script.write_text(PAUSING_SWEEP)
    space = tmp_path / "space.yaml"
    space.write_text("lr_head: {low: 1.0e-3, high: 1.0e-1, log: true}\n")
    args = ["sweep", "--search", space, "--n-trials", 3, "--pruner", "none",
            *cli_args(flags(tiny_bert_dir, data, tmp_path, epochs=1))]
    proc = subprocess.Popen([sys.executable, str(script), str(marker), *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the sweep never reached trial 1:\n" + "\n".join(proc.communicate()))
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    sweep_dir = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "-m", "sentune", "sweep", "--resume", str(sweep_dir)],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr
    trials = rows(sweep_dir)
    states = {t["number"]: t["state"] for t in trials}
    assert states[0] == "complete" and states[1] == "failed" and "died" in trials[1]["error"]
    retry = next(t for t in trials if t["retry_of"] == 1)
    assert retry["params"] == trials[1]["params"] and retry["state"] == "complete"
    assert sum(s == "complete" for s in states.values()) == 3 and len(trials) == 4
    assert (sweep_dir / "final_metrics.json").exists() and (sweep_dir / "best" / "config.json").exists()


# ---- several processes on one study ------------------------------------------------------------------------
def run_two(tiny_bert_dir, data, tmp_path, storage_args: list, dirs: list[Path], n: int):
    space = tmp_path / "space.yaml"
    space.write_text("lr_head: {low: 1.0e-3, high: 1.0e-1, log: true}\nlr_encoder: [0.0, 3.0e-3, 1.0e-2]\n")
    procs, logs = [], []
    for i, d in enumerate(dirs):
        args = ["sweep", "--search", space, "--n-trials", n, *storage_args,
                *cli_args(flags(tiny_bert_dir, data, tmp_path, epochs=2, output_dir=d))]
        # files, not pipes: a process blocked on a full pipe while holding a running trial would stall the other
        logs.append((tmp_path / f"out-{i}.txt", tmp_path / f"err-{i}.txt"))
        with open(logs[-1][0], "w") as out, open(logs[-1][1], "w") as err:
            procs.append(subprocess.Popen([sys.executable, "-m", "sentune", *map(str, args)], env=ENV,
                                          stdout=out, stderr=err, text=True))
    for p, (_, err) in zip(procs, logs, strict=True):
        assert p.wait(timeout=900) == 0, err.read_text()
    return [out.read_text() for out, _ in logs]


def check_shared(trials: list[dict], n: int, outs: list[str]) -> None:
    finished = [t for t in trials if t["state"] in ("complete", "pruned")]
    assert len(finished) == n and len({t["number"] for t in trials}) == len(trials)
    assert len({t["run_dir"] for t in trials}) == len(trials)  # every trial ran once, in its own directory
    assert sum("Best trial" in o for o in outs) == 1  # one process chose, tested and wrote best/


def test_two_processes_share_one_sqlite_study(tiny_bert_dir, data, tmp_path):
    sweep_dir = tmp_path / "sweep"
    outs = run_two(tiny_bert_dir, data, tmp_path, [], [sweep_dir, sweep_dir], n=4)
    trials = rows(sweep_dir)
    check_shared(trials, 4, outs)
    assert (sweep_dir / "final_metrics.json").exists() and (sweep_dir / "best" / "model.safetensors").exists()
    assert len({t["host"] for t in trials}) == 1


POSTGRES_URL = os.environ.get("SENTUNE_TEST_POSTGRES",
                              "postgresql+psycopg2://postgres:postgres@127.0.0.1:5432/postgres")


def postgres_answers(url: str) -> bool:
    try:
        import psycopg2

        psycopg2.connect(url.replace("+psycopg2", ""), connect_timeout=3).close()
        return True
    except Exception:
        return False


def test_two_processes_share_one_postgresql_study(tiny_bert_dir, data, tmp_path):
    """Two 'machines' (separate sweep directories) on one PostgreSQL study, as several machines would run."""
    if not postgres_answers(POSTGRES_URL):
        if os.environ.get("CI"):
            pytest.fail(f"no PostgreSQL server answers at {POSTGRES_URL} (.ci/run starts one)")
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL} (set SENTUNE_TEST_POSTGRES)")
    name = f"sentune-test-{uuid.uuid4().hex[:8]}"
    dirs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    outs = run_two(tiny_bert_dir, data, tmp_path, ["--storage", POSTGRES_URL, "--study-name", name], dirs, n=4)
    trials = rows(dirs[0])
    assert rows(dirs[1]) == trials  # either machine can write the whole study's trials.jsonl
    check_shared(trials, 4, outs)
    assert sum((d / "final_metrics.json").exists() for d in dirs) == 1


# ---- every task: the task's selection metric and direction, test once with its metrics -----------------------
@pytest.mark.parametrize("task, label_column, metric, best_of", [
    ("multi_label", "labels", "macro_f1", max),
    ("regression", "score", "rmse", min),  # an error: the study minimises it
])
def test_sweep_of_each_task_selects_on_its_metric_and_tests_once(task, label_column, metric, best_of,
                                                                 tiny_bert_dir, tmp_path):
    import transformers
    from test_tasks import multi_label_rows, regression_rows

    from sentune.evaluation.evaluate import evaluate_model
    from sentune.training.sweep import sweep

    rows_of = multi_label_rows if task == "multi_label" else regression_rows
    task_data = {split: write_jsonl(tmp_path / f"{split}.jsonl", rows_of(n, seed=seed))
                 for split, n, seed in (("train", 96, 1), ("validation", 48, 2), ("test", 40, 3))}
    cfg = make_cfg(tiny_bert_dir, task_data, tmp_path, epochs=1, patience=1, task=task, label_column=label_column)
    result = sweep(cfg, LR, n_trials=2, pruner="none")

    sweep_dir = tmp_path / "sweep"
    trials = rows(sweep_dir)
    assert [t["state"] for t in trials] == ["complete", "complete"], [t.get("error") for t in trials]
    final = json.loads((sweep_dir / "final_metrics.json").read_text())
    assert final["validation"] == {metric: best_of(t["value"] for t in trials)}
    assert final["trial"] == result.best_trial.number
    # the chosen weights were tested once with the task's metrics, as `sentune evaluate` scores best/ on test
    test = final["test"]
    assert test["task"] == task and test["n"] == 40
    again = evaluate_model(str(sweep_dir / "best"), test_file=str(task_data["test"]), label_column=label_column)
    assert test[metric] == pytest.approx(again[metric], abs=1e-5)
    assert f"Test (once): {tasks.get_task(task).headline(test)}" in (sweep_dir / "report.md").read_text()
    pipe = transformers.pipeline("text-classification", model=str(sweep_dir / "best"), top_k=None)
    assert len(pipe(["a great movie"])[0]) == (3 if task == "multi_label" else 1)
