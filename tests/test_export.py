"""ONNX export: parity with PyTorch (fp32 and int8), dynamic axes, the collapse check, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_model, build_tokenizer, sentiment_rows, write_jsonl
from tiny_trained import train_tiny

from sentune.cli import main
from sentune.errors import ConfigError, ModelError
from sentune.inference.classifier import Classifier
from sentune.inference.export import check_texts_from, export

TEXTS = ["good great film", "awful", "boring plot and bad acting " * 10, "ok", "love it love it", "meh fine"]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def exported(trained_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "onnx"
    return export(trained_dir, out)


@pytest.fixture(scope="module")
def check_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("check") / "check.jsonl", sentiment_rows(200, seed=5))


def test_onnx_export_matches_pytorch_at_any_batch_and_length(trained_dir, exported):
    out, parity = exported
    assert parity.agreement == 1.0 and parity.max_prob_diff < 1e-4
    onnx = Classifier.load(out)  # auto: no PyTorch weights in the folder -> onnx
    torch_clf = Classifier.load(trained_dir, precision="fp32")  # the ONNX graph is fp32
    assert onnx.backend == "onnx" and onnx.labels == ["neg", "pos"]
    want = torch_clf.predict_proba(TEXTS)
    for batch_size in (1, 4, 32):  # batch axis 1..6, sequence axis from 3 to 60+ tokens
        np.testing.assert_allclose(onnx.predict_proba(TEXTS, batch_size), want, atol=1e-5)


def test_export_folder_has_tokenizer_config_and_parity_record(trained_dir, exported):
    out, parity = exported
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "export.json"} <= names
    assert not any(n.endswith(".safetensors") for n in names)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert config["sentune"] == {"max_length": 128, "truncation": "head", "head_tokens": 128,
                                 "normalize_tweets": False}
    record = json.loads((out / "export.json").read_text())
    assert record["agreement"] == parity.agreement and record["quantize"] is None
    assert record["n"] == len(check_texts_from(None))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_predict_cli_runs_on_the_export(exported, trained_dir):
    out, _ = exported
    result = CliRunner().invoke(main, ["predict", str(out), "good great film", "awful", "--backend", "onnx"])
    assert result.exit_code == 0, result.output
    got = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert got == [p["label"] for p in Classifier.load(trained_dir).predict(["good great film", "awful"])]


def test_int8_export_via_cli_passes_on_a_trained_model(trained_dir, check_file, tmp_path):
    out = tmp_path / "int8"
    result = CliRunner().invoke(main, ["export", str(trained_dir), "--format", "onnx", "--quantize", "int8",
                                       "--output", str(out), "--check-file", str(check_file)])
    assert result.exit_code == 0, result.output
    assert "parity on 200 texts: label agreement 100.00%, max probability difference" in result.stdout
    assert json.loads((out / "export.json").read_text())["quantize"] == "int8"
    int8 = Classifier.load(out, backend="onnx")
    torch_labels = Classifier.load(trained_dir).predict_proba(TEXTS).argmax(1)
    assert (int8.predict_proba(TEXTS).argmax(1) == torch_labels).all()


def outlier_model(path: Path) -> Path:
    """A model int8 dynamic quantization destroys, as outlier features do in real transformers.

    The pooled output has one huge, label-irrelevant feature (tanh -> 1.0) next to tiny informative
    ones (~0.01). fp32 separates the texts by those tiny features; int8 quantizes the whole vector
    with one scale (step ~1/255), so the informative features round to zero and every text gets the
    same label.
    """
    import torch

    tokenizer = build_tokenizer("bert")
    model = build_model("bert", vocab_size=len(tokenizer)).eval()
    texts = check_texts_from(None)
    with torch.no_grad():
        pooler = model.bert.pooler.dense
        pooler.weight.mul_(0.05)
        pooler.bias.zero_()
        pooler.bias[0] = 10.0  # the outlier feature
        w = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 100.0
        w[0] = 0.0
        enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        scores = (model.bert(**enc).pooler_output @ w).sort().values
        middle = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # half the texts each way
        model.classifier.weight.copy_(torch.stack([w, -w]))
        model.classifier.bias.copy_(torch.stack([-middle, middle]))
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_int8_collapse_is_caught_and_nothing_is_written(tmp_path):
    model_dir = outlier_model(tmp_path / "outlier")
    reference = Classifier.load(model_dir).predict_proba(check_texts_from(None)).argmax(1)
    assert set(reference) == {0, 1}  # PyTorch uses both labels
    out = tmp_path / "int8"
    with pytest.raises(ModelError, match=r"agrees with PyTorch on only .*collapsed onto") as err:
        export(model_dir, out, quantize="int8")
    assert "--quantize" in str(err.value) and "--min-agreement" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outlier"]  # no output, no temporary folder


def test_existing_output_needs_overwrite(trained_dir, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="--overwrite"):
        export(trained_dir, tmp_path / "out")


@pytest.mark.parametrize("kwargs, message", [
    ({"quantize": "int4"}, "only int8"),
    ({"fmt": "tflite"}, "only onnx"),
    ({"min_agreement": 1.5}, "between 0 and 1"),
])
def test_bad_options_are_config_errors(trained_dir, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        export(trained_dir, tmp_path / "out", **kwargs)


def test_check_file_texts(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"review": "good"}, {"review": "bad"}])
    assert check_texts_from(str(path), "review") == ["good", "bad"]
    assert len(check_texts_from(None)) > 40  # built-in sentences plus long ones
