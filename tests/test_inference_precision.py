"""Inference precision follows the machine as training's does: `--precision auto|fp32|bf16|fp16`, stored nowhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_trained import train_tiny

from sentune import Classifier, precision
from sentune.cli import main
from sentune.errors import ConfigError, ModelError

TEXTS = ["good great film", "awful boring", "love it", "the worst plot", "ok fine movie"]


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("sharp"))


def dtype_of(clf: Classifier) -> torch.dtype:
    return next(clf.runner.model.parameters()).dtype


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_cpu(monkeypatch, sharp_dir, native, expected):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    clf = Classifier.load(sharp_dir, device="cpu")
    assert clf.precision == expected
    assert dtype_of(clf) == precision.torch_dtype(expected)


def test_the_environment_variable_reaches_inference(monkeypatch, sharp_dir):
    for forced, expected in (("1", torch.bfloat16), ("0", torch.float32)):
        monkeypatch.setenv("SENTUNE_CPU_BF16", forced)
        assert dtype_of(Classifier.load(sharp_dir, device="cpu")) == expected


def test_bf16_keeps_the_labels_of_fp32(sharp_dir):
    fp32 = Classifier.load(sharp_dir, device="cpu", precision="fp32")
    bf16 = Classifier.load(sharp_dir, device="cpu", precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    np.testing.assert_allclose(bf16.predict_proba(TEXTS), fp32.predict_proba(TEXTS), atol=0.05)
    assert [p["label"] for p in bf16.predict(TEXTS)] == [p["label"] for p in fp32.predict(TEXTS)]
    assert Classifier.load(sharp_dir, device="cpu", bf16=True).precision == "bf16"  # the older keyword


def test_nothing_is_stored_in_the_model(sharp_dir):
    before = (sharp_dir / "config.json").read_text()
    Classifier.load(sharp_dir, device="cpu", precision="bf16")
    assert (sharp_dir / "config.json").read_text() == before


def test_fp16_on_cpu_and_bf16_on_onnx_are_user_errors(sharp_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs a GPU"):
        Classifier.load(sharp_dir, device="cpu", precision="fp16")
    (tmp_path / "model.onnx").write_bytes(b"")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((sharp_dir / name).read_bytes())
    with pytest.raises(ModelError, match="torch backend"):
        Classifier.load(tmp_path, backend="onnx", precision="bf16")


def test_cli_predict_and_evaluate_take_precision(sharp_dir, tmp_path):
    out = CliRunner().invoke(main, ["predict", str(sharp_dir), *TEXTS, "--precision", "bf16"])
    assert out.exit_code == 0, out.output
    assert len([line for line in out.output.splitlines() if line.startswith("{")]) == len(TEXTS)
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": "pos" if i % 2 else "neg"}) + "\n"
                            for i, t in enumerate(TEXTS)))
    out = CliRunner().invoke(main, ["evaluate", str(sharp_dir), "--test-file", str(data), "--precision", "fp32"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1])["precision"] == "fp32"
    bad = CliRunner().invoke(main, ["predict", str(sharp_dir), "hi", "--precision", "fp16"])
    assert bad.exit_code == 2 and "needs a GPU" in bad.output
