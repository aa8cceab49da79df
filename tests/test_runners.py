"""inference/runners.py: the one device rule (training and inference), and the runners apart from Classifier."""

from __future__ import annotations

import pytest
import torch

from sentune.errors import ConfigError
from sentune.inference.runners import pick_device


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_is_the_cpu_without_a_gpu_and_an_absent_gpu_is_one_clear_error(cpu_only):
    assert pick_device("auto") == "cpu" and pick_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="--device cuda was asked for but no CUDA GPU is visible"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="MPS is not available"):
        pick_device("mps")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == "cuda" and pick_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == "mps"


def test_training_and_inference_share_the_rule(cpu_only, tiny_bert_dir, tmp_path):
    from sentune import config
    from sentune.inference.classifier import Classifier
    from sentune.training.accel import make_accelerator

    with pytest.raises(ConfigError, match="no CUDA GPU"):
        Classifier.load(tiny_bert_dir, device="cuda")
    cfg = config.resolve(None, None, {"model": str(tiny_bert_dir), "device": "cuda"})
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        make_accelerator(cfg, lambda processes: tmp_path / "run")


def test_explain_no_longer_imports_the_classifier():
    import ast
    from pathlib import Path

    import sentune.inference.explain as explain

    tree = ast.parse(Path(explain.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "sentune.inference.runners" in imported and "sentune.inference.classifier" not in imported
