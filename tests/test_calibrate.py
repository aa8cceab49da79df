"""Temperature scaling: it lowers NLL on miscalibrated logits, and the stored T is what inference applies."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from sentune.cli import main
from sentune.evaluation.calibrate import fit_temperature, nll_and_ece, store_temperature


def calibrated_sample(n: int = 3000, k: int = 3, seed: int = 0):
    """Logits whose softmax is the true label distribution (T = 1 is right), and labels drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, k))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(k, p=row) for row in probs])
    return logits, labels


@pytest.mark.parametrize("scale", [5.0, 0.3])
def test_temperature_undoes_over_and_underconfidence(scale):
    logits, labels = calibrated_sample()
    miscalibrated = logits * scale  # overconfident (x5, with many errors) or underconfident (x0.3)
    temperature = fit_temperature(miscalibrated, labels)
    assert temperature == pytest.approx(scale, rel=0.15)
    nll_before, ece_before = nll_and_ece(miscalibrated, labels)
    nll_after, ece_after = nll_and_ece(miscalibrated, labels, temperature)
    assert nll_after < nll_before and ece_after < ece_before


def test_fitted_temperature_is_the_nll_minimum():
    logits, labels = calibrated_sample(n=500, seed=1)
    logits = logits * 3
    best = fit_temperature(logits, labels)
    nll_best = nll_and_ece(logits, labels, best)[0]
    for t in (best * 0.9, best * 1.1):
        assert nll_and_ece(logits, labels, t)[0] > nll_best


def test_separable_data_keeps_a_finite_temperature():
    logits = np.array([[4.0, -4.0], [-4.0, 4.0]] * 10)
    labels = np.array([0, 1] * 10)
    assert 0.05 <= fit_temperature(logits, labels) < 1.0


@pytest.fixture
def neg_pos_model(tiny_bert_dir, tmp_path):
    folder = shutil.copytree(tiny_bert_dir, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "neg", "1": "pos"}, {"neg": 0, "pos": 1}
    config["sentune"] = {"max_length": 64, "truncation": "head", "head_tokens": 16, "normalize_tweets": False}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_stored_temperature_is_applied_by_the_classifier(neg_pos_model):
    from sentune.inference.classifier import Classifier

    texts = ["good great fun", "awful boring plot"]
    logits = Classifier.load(neg_pos_model).logits(texts)
    store_temperature(neg_pos_model, 0.25)
    config = json.loads((neg_pos_model / "config.json").read_text())
    assert config["sentune"]["temperature"] == 0.25 and config["sentune"]["max_length"] == 64  # others kept
    scaled = np.exp(logits / 0.25) / np.exp(logits / 0.25).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(Classifier.load(neg_pos_model).predict_proba(texts), scaled, rtol=1e-5)
    assert not list(neg_pos_model.glob(".config.json.*"))  # no temporary file left behind


def test_calibrate_cli_stores_the_temperature_and_prints_before_after(neg_pos_model, toy_files):
    result = CliRunner().invoke(main, ["calibrate", str(neg_pos_model), "--validation-file",
                                       str(toy_files["validation"])])
    assert result.exit_code == 0, result.output
    assert "NLL:" in result.stdout and "ECE:" in result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["nll_after"] <= summary["nll_before"] + 1e-9
    stored = json.loads((neg_pos_model / "config.json").read_text())["sentune"]["temperature"]
    assert stored == pytest.approx(summary["temperature"])


def test_calibrate_cli_missing_file_is_one_line(neg_pos_model, tmp_path):
    result = CliRunner().invoke(main, ["calibrate", str(neg_pos_model), "--validation-file",
                                       str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1] == (
        f"error: --validation-file {tmp_path / 'nope.jsonl'}: no such file")


def test_calibrate_cli_on_a_dataset_folder_split(neg_pos_model, toy_files):
    folder = toy_files["validation"].parent  # holds train/validation/test.jsonl
    result = CliRunner().invoke(main, ["calibrate", str(neg_pos_model), "--dataset", str(folder),
                                       "--split", "validation", "--limit", "12"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 12 and summary["data"]["split"] == "validation"


def test_calibrate_cli_needs_exactly_one_source(neg_pos_model, toy_files):
    result = CliRunner().invoke(main, ["calibrate", str(neg_pos_model)])
    assert result.exit_code == 2 and "--validation-file" in result.stderr.strip().splitlines()[-1]
