"""Plots are real PNGs of the intended pixel size; reports embed them and say the right numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sentune import config as config_lib
from sentune.errors import WriteError
from sentune.evaluation import plots, report
from sentune.evaluation.metrics import compute_metrics

NAMES = ["neg", "pos"]


def probs_and_labels(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    p_pos = rng.uniform(0.02, 0.98, n)
    labels = (rng.uniform(size=n) < p_pos).astype(int)
    return labels, np.stack([1 - p_pos, p_pos], axis=1)


def assert_png(path, inches):
    """Non-empty PNG of exactly inches x DPI pixels, with something drawn on it (not one flat color)."""
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (int(inches[0] * plots.DPI), int(inches[1] * plots.DPI))
        assert len(image.convert("L").getcolors(maxcolors=1_000_000)) > 10


ROWS = [
    {"epoch": 1, "train_loss": 0.60, "train_acc": 0.70, "val_acc": 0.75, "test_acc": None, "val_loss": 0.55,
     "epoch_seconds": 10.0, "train_samples_per_second": 100.0},
    {"epoch": 2, "train_loss": 0.40, "train_acc": 0.82, "val_acc": 0.84, "test_acc": None, "val_loss": 0.45,
     "epoch_seconds": 12.0, "train_samples_per_second": 90.0},
    {"epoch": 3, "train_loss": 0.30, "train_acc": 0.88, "val_acc": 0.84, "test_acc": None, "val_loss": 0.50,
     "epoch_seconds": 11.0, "train_samples_per_second": 95.0},
]


def test_plots_have_the_expected_size(tmp_path):
    labels, probs = probs_and_labels()
    metrics = compute_metrics(labels, probs, NAMES)
    assert_png(plots.plot_confusion(metrics["confusion_matrix"], NAMES, tmp_path / "cm.png"),
               plots.CONFUSION_INCHES)
    assert_png(plots.plot_reliability(labels, probs, tmp_path / "rel.png"), plots.RELIABILITY_INCHES)
    assert_png(plots.plot_curves(ROWS, 2, tmp_path / "curves.png"), plots.CURVES_INCHES)


def test_confusion_plot_handles_many_classes_and_empty_rows(tmp_path):
    names = [f"class{i}" for i in range(12)]
    cm = np.zeros((12, 12), dtype=int)
    cm[0, 0], cm[1, 2] = 5, 3  # most rows empty: no division by zero
    assert_png(plots.plot_confusion(cm.tolist(), names, tmp_path / "cm.png"), plots.CONFUSION_INCHES)


def test_eval_report_embeds_plots_and_numbers(tmp_path):
    labels, probs = probs_and_labels()
    metrics = compute_metrics(labels, probs, NAMES)
    metrics["data"] = {"source": "toy.jsonl", "split": "test", "limit": None}
    path = report.write_eval_report(tmp_path, metrics, title="Toy evaluation")
    text = path.read_text()
    assert text.startswith("# Toy evaluation")
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in text
    assert f"| expected calibration error (15 bins) | {metrics['ece']:.4f} |" in text
    pos = metrics["per_class"]["pos"]
    row = f"| pos | {pos['precision']:.4f} | {pos['recall']:.4f} | {pos['f1']:.4f} | {pos['support']} |"
    assert row in text
    assert "![confusion matrix](confusion_matrix.png)" in text
    assert "![reliability diagram](reliability.png)" in text
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 60
    assert_png(tmp_path / "confusion_matrix.png", plots.CONFUSION_INCHES)
    assert_png(tmp_path / "reliability.png", plots.RELIABILITY_INCHES)


def test_a_failed_report_write_is_a_write_error(tmp_path):
    metrics = compute_metrics(*probs_and_labels(), NAMES)
    (tmp_path / "taken").write_text("a file where the output folder should be")
    with pytest.raises(WriteError, match="cannot write .*taken"):
        report.write_eval_report(tmp_path / "taken" / "out", metrics)
    with pytest.raises(WriteError, match="cannot write .*taken"):
        plots.plot_curves(ROWS, 1, tmp_path / "taken" / "curves.png")


def make_run(run_dir, select_on="validation", final=True):
    cfg = config_lib.Config()
    cfg.train.select_on = select_on
    config_lib.save(cfg, run_dir / "config.yaml")
    manifest = {
        "versions": {"python": "3.11", "torch": "2.13.0"}, "device": {"type": "cpu"},
        "data": {"train": {"source": "train.jsonl", "rows": 100, "fingerprint": "ab" * 32,
                           "label_counts": {"neg": 25, "pos": 75}},
                 "test": {"source": "test.jsonl", "rows": 60, "fingerprint": "cd" * 32,
                          "label_counts": {"neg": 30, "pos": 30}}},
        "started": "2025-01-01T00:00:00", "ended": "2025-01-01T00:01:00",
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    if final:
        labels, probs = probs_and_labels()
        (run_dir / "final_metrics.json").write_text(json.dumps(compute_metrics(labels, probs, NAMES)))


def test_training_report_from_a_run_directory(tmp_path):
    make_run(tmp_path)
    text = report.write_training_report(tmp_path).read_text()
    assert "selected epoch: 2 (on validation accuracy)" in text  # 0.84 first reached in epoch 2
    assert "| 2 (selected) |" in text
    assert "time per epoch: 11.0 s on average (33 s in all)" in text
    assert "training throughput: 95.0 samples/s on average" in text
    assert "| train | 100 | neg 25 (25.0%), pos 75 (75.0%) |" in text
    assert "| freeze_layers | `9` |" in text
    assert "![loss and accuracy per epoch](curves.png)" in text
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert f"| accuracy | {final['accuracy']:.4f} |" in text
    assert_png(tmp_path / "curves.png", plots.CURVES_INCHES)
    assert_png(tmp_path / "confusion_matrix.png", plots.CONFUSION_INCHES)
    assert_png(tmp_path / "reliability.png", plots.RELIABILITY_INCHES)


def test_training_report_without_final_metrics(tmp_path):
    make_run(tmp_path, final=False)
    text = report.write_training_report(tmp_path).read_text()
    assert "Test metrics" not in text and not (tmp_path / "confusion_matrix.png").exists()
    assert (tmp_path / "curves.png").exists()


def test_best_epoch_follows_the_selection_split():
    rows = [{"epoch": 1, "val_acc": 0.8, "test_acc": 0.9}, {"epoch": 2, "val_acc": 0.9, "test_acc": 0.7}]
    assert report.best_epoch(rows, "validation", {}, None) == 2
    assert report.best_epoch(rows, "test", {}, None) == 1
    assert report.best_epoch(rows, "validation", {"best_epoch": 1}, None) == 1  # the run's own record wins
    assert report.best_epoch([{"epoch": 1, "val_acc": None}], "validation", {}, None) == 1
