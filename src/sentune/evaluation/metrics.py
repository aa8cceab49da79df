"""Metrics of a classifier's probabilities: what training, evaluate, calibrate and the reports score with.

Every metric that scikit-learn has comes from scikit-learn; expected calibration error (which it
lacks) is computed here with the usual equal-width confidence bins (Guo et al. 2017).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sentune.errors import DataError

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
        "ece": ece_of_table(table),
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
    return ece_of_table(reliability_table(labels, probs, bins))


def ece_of_table(table: dict) -> float:
    """ECE from a `reliability_table` (bin counts, accuracies, confidences), without the probabilities."""
    n = sum(table["count"])
    rows = zip(table["count"], table["accuracy"], table["confidence"], strict=True)
    gap = sum(c * abs(a - m) for c, a, m in rows if c)
    return float(gap / n)
