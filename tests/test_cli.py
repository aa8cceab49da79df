"""The CLI end to end, as a user runs it: `python -m sentune train ...` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest


def sentune(*args, cwd=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "sentune", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def test_train_prints_the_reference_lines(tiny_bert_dir, toy_files, tmp_path):
    out = sentune("train", "--model", tiny_bert_dir, "--train-file", toy_files["train"], "--test-file",
                  toy_files["test"], "--freeze-layers", 1, "--max-length", 32, "--batch-size", 16, "--epochs", 3,
                  "--patience", 1, "--lr-encoder", 0, "--lr-head", 0, "--output-dir", tmp_path / "run",
                  "--precision", "fp32")
    assert out.returncode == 0, out.stderr
    assert "Training: 100%" in out.stderr and "train_acc=" in out.stderr
    assert "Parameters:" in out.stdout and "trainable of" in out.stdout
    assert "Epoch 1 summary - avg loss: " in out.stdout and "Train acc: " in out.stdout and "Val acc: " in out.stdout
    for line in ("Early stopping.", "Best val acc: ", "Applying optimal model weights.",
                 "Test acc of the selected weights: "):
        assert line in out.stdout
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()


def last_error_line(out) -> str:
    return out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args, words", [
    (["--freeze-layers", 7], ["--freeze-layers", "3"]),
    (["--text-column", "review"], ["review", "--text-column"]),
    (["--precision", "fp16", "--device", "cpu"], ["fp16", "GPU"]),
])
def test_user_mistakes_are_one_line(tiny_bert_dir, toy_files, tmp_path, args, words):
    out = sentune("train", "--model", tiny_bert_dir, "--train-file", toy_files["train"], "--epochs", 1,
                  "--output-dir", tmp_path / "run", *args)
    assert out.returncode == 2
    line = last_error_line(out)
    assert line.startswith("error: ") and "Traceback" not in out.stderr
    for word in words:
        assert word in line


def test_missing_file_is_named(tiny_bert_dir, tmp_path):
    out = sentune("train", "--model", tiny_bert_dir, "--train-file", tmp_path / "nope.jsonl")
    assert out.returncode == 2 and "nope.jsonl" in last_error_line(out) and "Traceback" not in out.stderr


def test_imdb_preset_offline_fails_fast_and_clearly(tmp_path):
    start = time.monotonic()
    out = sentune("train", "--preset", "imdb", "--output-dir", tmp_path / "run", timeout=120)
    assert time.monotonic() - start < 60
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = last_error_line(out)
    assert "imdb" in line or "twitter-roberta" in line
    assert "--preset demo" in line


def test_demo_preset_with_tiny_limits(tmp_path):
    out = sentune("train", "--preset", "demo", "--limit-train", 48, "--limit-eval", 24, "--epochs", 1,
                  "--max-length", 32, "--output-dir", tmp_path / "demo", "--no-progress", "--precision", "fp32")
    assert out.returncode == 0, out.stderr
    assert "labels: negative, neutral, positive" in out.stdout
    final = json.loads((tmp_path / "demo" / "final_metrics.json").read_text())
    assert final["n"] == 24


def test_config_file_and_python_m(tmp_path, tiny_bert_dir, toy_files):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{model: {tiny_bert_dir}, freeze_layers: 2}}\n"
                   f"data: {{train_file: {toy_files['train']}, max_length: 16}}\n"
                   "train: {epochs: 1, batch_size: 32, select_on: test, precision: fp32}\n")
    out = sentune("train", "--config", cfg, "--test-file", toy_files["test"], "--output-dir", tmp_path / "r")
    assert out.returncode == 0, out.stderr
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "freeze_layers: 2" in saved and "max_length: 16" in saved and "select_on: test" in saved
