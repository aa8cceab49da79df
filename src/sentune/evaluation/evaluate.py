"""Metrics of a classifier's probabilities, and the `sentune evaluate` command's logic.

Every metric that scikit-learn has comes from scikit-learn; expected calibration error (which it
lacks) is computed here with the usual equal-width confidence bins (Guo et al. 2017).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sentune.errors import ConfigError, DataError

ECE_BINS = 15


def selection_key(select_on: str, select_metric: str) -> str:
    """The metrics.jsonl field that picks the best epoch, e.g. val_acc or val_macro_recall."""
    return ("val" if select_on == "validation" else "test") + "_" + (
        "acc" if select_metric == "accuracy" else select_metric)


def selection_score(metric: str, y_true, y_pred) -> float:
    """The score `--select-metric` names, from labels and predicted class ids (macro: as compute_metrics)."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    if metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    average = {"macro_recall": recall_score, "macro_f1": f1_score}[metric]
    return float(average(y_true, y_pred, average="macro", zero_division=0))


def compute_metrics(
    labels: Sequence[int] | np.ndarray, probs: np.ndarray, label_names: Sequence[str]
) -> dict:
    """Accuracy, macro-F1/recall, per-class scores, confusion matrix (rows = true), ECE, NLL and n.

    Macro averages run over the classes present in the labels or the predictions (scikit-learn's
    default), so a small sample that lacks a class is not charged a zero for it; `per_class` lists
    every class of `label_names` (support 0 where absent).
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_recall_fscore_support,
        recall_score,
    )

    y, p = _check(labels, probs, label_names)
    pred = p.argmax(axis=1)
    table = reliability_table(y, p)
    classes = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(label_names)
    }
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "macro_recall": float(recall_score(y, pred, average="macro", zero_division=0)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y, pred, labels=classes).tolist(),
        "ece": _ece(table),
        "nll": float(log_loss(y, p, labels=classes)),
        "n": int(len(y)),
        "label_names": list(label_names),
        "reliability": table,
    }


def _check(labels, probs, label_names) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    k = len(label_names)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise ValueError(f"probs must have shape (n={len(y)}, {k}), got {p.shape}")
    if len(y) == 0:
        raise DataError("nothing to evaluate: the labelled split is empty")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must lie in 0..{k - 1}, got {y.min()}..{y.max()}")
    # float32 softmax rows sum to 1 only within ~1e-7; renormalize in float64 so log_loss takes them as is.
    return y, p / p.sum(axis=1, keepdims=True)


def reliability_table(labels, probs, bins: int = ECE_BINS) -> dict[str, Any]:
    """Per confidence bin (equal width on [0, 1], right-closed): count, accuracy, mean confidence.

    Empty bins have accuracy and confidence None (JSON null).
    """
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    # bin b holds confidences in (edge[b], edge[b+1]] with the edges of np.linspace(0, 1, B + 1), as in
    # Guo et al.'s reference code; a confidence is at least 1/K > 0, so bin 0's open left end never matters.
    inner_edges = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    index = np.searchsorted(inner_edges, confidence, side="left")
    count = np.bincount(index, minlength=bins)
    hits = np.bincount(index, weights=correct, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc, conf = hits / count, conf_sum / count
    return {
        "bins": bins,
        "count": count.astype(int).tolist(),
        "accuracy": [None if c == 0 else float(a) for c, a in zip(count, acc, strict=True)],
        "confidence": [None if c == 0 else float(m) for c, m in zip(count, conf, strict=True)],
    }


def expected_calibration_error(labels, probs, bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (bin size / n) * |accuracy(bin) - mean confidence(bin)|."""
    return _ece(reliability_table(labels, probs, bins))


def _ece(table: dict) -> float:
    n = sum(table["count"])
    rows = zip(table["count"], table["accuracy"], table["confidence"], strict=True)
    gap = sum(c * abs(a - m) for c, a, m in rows if c)
    return float(gap / n)


def summary_lines(metrics: dict) -> list[str]:
    """The short human summary printed before the JSON line."""
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


def evaluate_model(
    model_dir: str,
    *,
    dataset: str | None = None,
    test_file: str | None = None,
    dataset_config: str | None = None,
    split: str = "test",
    text_column: str = "text",
    label_column: str = "label",
    limit: int | None = None,
    batch_size: int = 32,
    backend: str = "auto",
) -> dict:
    """Predict a labelled split with the model and score it: `compute_metrics` + model, data, temperature."""
    from sentune.data.splits import load_labelled
    from sentune.inference.classifier import Classifier, softmax

    if (dataset is None) == (test_file is None):
        raise ConfigError("give exactly one of --dataset NAME_OR_PATH or --test-file FILE")
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be >= 1")
    if batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    if test_file is not None:
        require_file(test_file, "--test-file")
    source = dataset if dataset is not None else test_file
    clf = Classifier.load(model_dir, backend=backend)
    rows, label_names = load_labelled(
        source, split=split, dataset_config=dataset_config, text_column=text_column,
        label_column=label_column, label_names=list(clf.labels), limit=limit,
    )
    labels = np.asarray(rows["label"], dtype=np.int64)
    logits = clf.logits(list(rows["text"]), batch_size=batch_size)
    temperature = clf.settings.temperature
    metrics = compute_metrics(labels, softmax(logits, temperature), label_names)
    metrics["model"] = str(model_dir)
    metrics["data"] = {"source": str(source), "split": split, "limit": limit}
    metrics["temperature"] = temperature
    if temperature:
        # the same logits without the stored temperature: what calibration changed on this data
        raw = compute_metrics(labels, softmax(logits), label_names)
        metrics["uncalibrated"] = {"ece": raw["ece"], "nll": raw["nll"]}
    return metrics


def require_file(path: str, flag: str) -> None:
    """A missing file must not fall through to a Hub download attempt under the same name."""
    if not Path(path).is_file():
        raise DataError(f"{flag} {path}: no such file")


def write_metrics(path: str | Path, metrics: dict) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
