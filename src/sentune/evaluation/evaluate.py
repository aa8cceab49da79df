"""The `sentune evaluate` command's logic: predict a labelled split with a saved model and score it.

The scores themselves are `metrics.compute_metrics`; this module loads the model and the data and
writes the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sentune.atomic import atomic_write_json
from sentune.errors import ConfigError
from sentune.evaluation.labelled import LabelledSource
from sentune.evaluation.metrics import compute_metrics


def summary_lines(metrics: dict) -> list[str]:
    """The short human summary printed before the JSON line."""
    if metrics.get("task") in ("multi_label", "regression"):
        from sentune.evaluation import task_metrics

        return task_metrics.summary_lines(metrics)
    lines = [
        f"n={metrics['n']}  accuracy={metrics['accuracy']:.4f}  macro-F1={metrics['macro_f1']:.4f}  "
        f"macro-recall={metrics['macro_recall']:.4f}  ECE={metrics['ece']:.4f}  NLL={metrics['nll']:.4f}",
        f"{'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    raw = metrics.get("uncalibrated")
    if raw:
        lines.insert(1, f"temperature T={metrics['temperature']:.4f}: ECE {raw['ece']:.4f} -> {metrics['ece']:.4f}, "
                        f"NLL {raw['nll']:.4f} -> {metrics['nll']:.4f} (T=1 -> stored T)")
    for name, row in metrics["per_class"].items():
        lines.append(f"{name[:16]:<16}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
                     f"{row['support']:>10d}")
    return lines


def evaluate_model(model_dir: str, *, dataset: str | None = None, test_file: str | None = None,
                   dataset_config: str | None = None, split: str = "test", text_column: str = "text",
                   label_column: str = "label", limit: int | None = None, batch_size: int = 32,
                   backend: str = "auto", precision: str = "auto", label_separator: str | None = None,
                   label_columns: str | None = None) -> dict:
    """Predict a labelled split with the model and score it: `compute_metrics` + model, data, temperature."""
    from sentune.inference.classifier import Classifier, softmax

    if batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    source = LabelledSource.pick(test_file, "--test-file", dataset, split=split, dataset_config=dataset_config,
                                 text_column=text_column, label_column=label_column, limit=limit,
                                 label_separator=label_separator, label_columns=label_columns)
    clf = Classifier.load(model_dir, backend=backend, precision=precision)
    rows, label_names = source.load(clf.labels, clf.task)
    if clf.task != "single_label":  # multi-label / regression: their own metrics (task_metrics.py)
        from sentune.evaluation.task_metrics import evaluate_task

        metrics = evaluate_task(clf, rows, label_names, batch_size)
        metrics["model"] = str(model_dir)
        metrics["precision"] = clf.precision
        metrics["data"] = source.describe()
        return metrics
    labels = np.asarray(rows["label"], dtype=np.int64)
    logits = clf.logits(list(rows["text"]), batch_size=batch_size)
    temperature = clf.settings.temperature
    metrics = compute_metrics(labels, softmax(logits, temperature), label_names)
    metrics["model"] = str(model_dir)
    metrics["precision"] = clf.precision  # of this machine's run, not of the model
    metrics["data"] = source.describe()
    metrics["temperature"] = temperature
    if temperature:
        # the same logits without the stored temperature: what calibration changed on this data
        raw = compute_metrics(labels, softmax(logits), label_names)
        metrics["uncalibrated"] = {"ece": raw["ece"], "nll": raw["nll"]}
    return metrics


def write_metrics(path: str | Path, metrics: dict) -> None:
    """metrics.json, replaced whole or not at all; a failed write is a WriteError."""
    atomic_write_json(Path(path), metrics)
