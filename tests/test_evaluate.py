"""Metrics against hand-computed values, and `sentune evaluate` end to end on a tiny model."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from sentune import tasks
from sentune.cli import main
from sentune.errors import DataError
from sentune.evaluation.metrics import compute_metrics, expected_calibration_error, reliability_table, selection_score

NAMES = ["neg", "neu", "pos"]
# label, probabilities, predicted, correct: see the comments for the hand computation
LABELS = [0, 0, 1, 1, 2, 2]
PROBS = [
    [0.70, 0.20, 0.10],  # pred 0, right, confidence 0.70 -> bin (0.667, 0.733]
    [0.25, 0.50, 0.25],  # pred 1, wrong, 0.50 -> bin (0.467, 0.533]
    [0.05, 0.90, 0.05],  # pred 1, right, 0.90 -> bin (0.867, 0.933]
    [0.30, 0.55, 0.15],  # pred 1, right, 0.55 -> bin (0.533, 0.600]
    [0.15, 0.30, 0.55],  # pred 2, right, 0.55 -> bin (0.533, 0.600]
    [0.70, 0.10, 0.20],  # pred 0, wrong, 0.70 -> bin (0.667, 0.733]
]


def test_metrics_match_hand_computed_values():
    m = compute_metrics(LABELS, np.array(PROBS), NAMES)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # rows = true class: neg -> (neg, neu); neu -> (neu, neu); pos -> (pos, neg)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # neg: tp 1 of 2 predicted, 2 true; neu: tp 2 of 3 predicted, 2 true; pos: tp 1 of 1 predicted, 2 true
    per_class = m["per_class"]
    assert per_class["neg"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert per_class["neu"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert per_class["pos"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["macro_recall"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    # bins: {0.70 right, 0.70 wrong} gap 0.2; {0.50 wrong} gap 0.5; {0.90 right} 0.1; {0.55, 0.55 right} 0.45
    assert m["ece"] == pytest.approx((2 * 0.2 + 0.5 + 0.1 + 2 * 0.45) / 6)
    true_class_probs = [0.70, 0.25, 0.90, 0.55, 0.55, 0.20]
    assert m["nll"] == pytest.approx(-sum(math.log(p) for p in true_class_probs) / 6)
    json.dumps(m)  # every value is plain JSON


def test_selection_scores_match_hand_computed_values():
    # a majority-class predictor: accuracy 3/4, but it never finds class 1
    y, probs = [0, 0, 0, 1], np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]])
    task = tasks.get_task("single_label")
    assert selection_score(task, "accuracy", y, probs) == pytest.approx(0.75)
    assert selection_score(task, "macro_recall", y, probs) == pytest.approx((1.0 + 0.0) / 2)
    assert selection_score(task, "macro_f1", y, probs) == pytest.approx((2 * 0.75 / 1.75 + 0.0) / 2)


def test_reliability_table_bins_are_right_closed_and_empty_bins_null():
    table = reliability_table(LABELS, np.array(PROBS))
    assert table["bins"] == 15 and sum(table["count"]) == 6
    assert table["count"][10] == 2 and table["accuracy"][10] == 0.5
    assert table["confidence"][10] == pytest.approx(0.7)
    assert table["count"][0] == 0 and table["accuracy"][0] is None and table["confidence"][0] is None
    # a confidence exactly on an edge (1.0, 0.6 = 9/15) falls in the bin that it closes
    edge = reliability_table([0, 0], np.array([[1.0, 0.0], [0.6, 0.4]]))
    assert edge["count"][14] == 1 and edge["count"][8] == 1


def test_ece_is_zero_when_confidence_equals_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error([0, 0, 0, 1], probs) == pytest.approx(0.0)


def test_macro_average_skips_a_class_absent_from_labels_and_predictions():
    m = compute_metrics([0, 1, 1, 0], np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1],
                                                [0.8, 0.1, 0.1]]), NAMES)
    assert m["per_class"]["pos"]["support"] == 0
    # neg: precision 2/3, recall 1 -> f1 0.8; neu: precision 1, recall 0.5 -> f1 2/3; pos not averaged
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["confusion_matrix"] == [[2, 0, 0], [1, 1, 0], [0, 0, 0]]


def test_float32_probabilities_are_accepted_without_warnings(recwarn):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 3)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    compute_metrics(rng.integers(0, 3, 50), probs.astype(np.float32), NAMES)
    assert not [w for w in recwarn if "sum to one" in str(w.message)]


def test_bad_shapes_and_empty_input_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        compute_metrics([0, 1], np.array([[0.5, 0.5]]), ["a", "b"])
    with pytest.raises(DataError, match="empty"):
        compute_metrics([], np.zeros((0, 2)), ["a", "b"])


# ---- the CLI end to end --------------------------------------------------------------------------------
@pytest.fixture
def neg_pos_model(tiny_bert_dir, tmp_path):
    """The tiny BERT with the toy data's label names."""
    folder = shutil.copytree(tiny_bert_dir, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "neg", "1": "pos"}
    config["label2id"] = {"neg": 0, "pos": 1}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_evaluate_cli_end_to_end(neg_pos_model, toy_files, tmp_path):
    from sentune.inference.classifier import Classifier

    out_dir, out_file = tmp_path / "eval", tmp_path / "metrics-line.json"
    result = CliRunner().invoke(main, ["evaluate", str(neg_pos_model), "--test-file", str(toy_files["test"]),
                                       "--output-dir", str(out_dir), "--output", str(out_file)])
    assert result.exit_code == 0, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["n"] == 24 and {"accuracy", "macro_f1", "per_class", "ece", "nll"} <= set(last)
    assert json.loads(out_file.read_text())["accuracy"] == last["accuracy"]
    # the same numbers as predicting the file directly
    rows = [json.loads(line) for line in toy_files["test"].read_text().splitlines()]
    probs = Classifier.load(neg_pos_model).predict_proba([r["text"] for r in rows])
    expected = np.mean(probs.argmax(axis=1) == np.array([["neg", "pos"].index(r["label"]) for r in rows]))
    assert last["accuracy"] == pytest.approx(expected)
    saved = json.loads((out_dir / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "ece", "nll", "n"} <= set(saved)
    for name in ("confusion_matrix.png", "reliability.png", "report.md"):
        assert (out_dir / name).stat().st_size > 0
    assert "![confusion matrix](confusion_matrix.png)" in (out_dir / "report.md").read_text()


def test_evaluate_cli_limit_scores_a_sample(neg_pos_model, toy_files):
    result = CliRunner().invoke(main, ["evaluate", str(neg_pos_model), "--test-file", str(toy_files["test"]),
                                       "--limit", "10"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["n"] == 10


def test_evaluate_cli_user_errors_are_one_line(neg_pos_model, tiny_bert_dir, toy_files):
    runner = CliRunner()
    neither = runner.invoke(main, ["evaluate", str(neg_pos_model)])
    assert neither.exit_code == 2 and "--test-file" in neither.stderr
    # the tiny model's labels are LABEL_0/LABEL_1: the file's neg/pos were never seen by it
    unseen = runner.invoke(main, ["evaluate", str(tiny_bert_dir), "--test-file", str(toy_files["test"])])
    assert unseen.exit_code == 2, unseen.output
    assert unseen.stderr.strip().splitlines()[-1].startswith("error:")
    assert "Traceback" not in unseen.output


def test_evaluate_reports_ece_and_nll_with_and_without_the_stored_temperature(neg_pos_model, toy_files, tmp_path):
    from sentune.evaluation.calibrate import store_temperature

    args = ["evaluate", str(neg_pos_model), "--test-file", str(toy_files["test"])]
    plain = json.loads(CliRunner().invoke(main, args).stdout.strip().splitlines()[-1])
    assert plain["temperature"] is None and "uncalibrated" not in plain
    store_temperature(neg_pos_model, 0.5)
    result = CliRunner().invoke(main, args + ["--output-dir", str(tmp_path / "out")])
    scaled = json.loads(result.stdout.strip().splitlines()[-1])
    assert scaled["temperature"] == 0.5 and scaled["accuracy"] == plain["accuracy"]
    assert scaled["uncalibrated"] == pytest.approx({"ece": plain["ece"], "nll": plain["nll"]})
    assert scaled["nll"] != pytest.approx(plain["nll"])
    assert f"ECE {plain['ece']:.4f} (now {scaled['ece']:.4f})" in (tmp_path / "out" / "report.md").read_text()
