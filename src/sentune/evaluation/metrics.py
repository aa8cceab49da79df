"""Metrics of a model's scores, for every task: what training, sweep, evaluate, calibrate and the reports use.

`score(task, ...)` is the one entry: one label per text gets accuracy, macro-F1/recall, per-class scores,
the confusion matrix, ECE and NLL; several labels per text get micro / macro / samples F1 at the decision
thresholds (and at 0.5), per-label counts, Hamming loss and subset accuracy (macro over every label of the
model, as GoEmotions reports them); a score gets RMSE, MAE, R², Pearson and Spearman in the target's
original units. `selection_score` is the one number `--select-metric` names, taken from the same dict.

Every metric that scikit-learn has comes from scikit-learn; expected calibration error (which it
lacks) is computed here with the usual equal-width confidence bins (Guo et al. 2017).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sentune import tasks
from sentune.errors import DataError

ECE_BINS = 15


def selection_key(select_on: str, select_metric: str) -> str:
    """The metrics.jsonl field that picks the best epoch, e.g. val_acc or val_macro_recall."""
    return ("val" if select_on == "validation" else "test") + "_" + (
        "acc" if select_metric == "accuracy" else select_metric)


def score(task: tasks.Task, labels, scores, label_names: Sequence[str], thresholds: dict | None = None,
          scale: dict | None = None) -> dict:
    """The task's metrics of `scores` (probabilities; regression: values, both unscaled by `scale`) against
    `labels`; `thresholds`: a multi-label model's decision thresholds (0.5 for every label when None)."""
    return SCORERS[type(task)](labels, scores, label_names, thresholds, scale)


def selection_score(task: tasks.Task, metric: str, labels, scores, scale: dict | None = None) -> float:
    """The score `--select-metric` names, of one evaluation (multi-label: at 0.5)."""
    names = [str(i) for i in range(np.shape(scores)[1])]
    return float(score(task, labels, scores, names, scale=scale)[metric])


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


def multi_label_metrics(labels, probs, label_names: Sequence[str], thresholds: dict | None = None) -> dict:
    """Scores of label sets decided at `thresholds` (0.5 for every label when None)."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, multilabel_confusion_matrix
    from sklearn.metrics import precision_recall_fscore_support as prfs

    y = np.asarray(labels, dtype=np.float64) > 0.5
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 2 or p.shape[1] != len(label_names):
        raise ValueError(f"labels and probs must both be (n, {len(label_names)}), got {y.shape} and {p.shape}")
    if len(y) == 0:
        raise DataError("nothing to evaluate: the labelled split is empty")
    cut = tasks.threshold_vector(thresholds, label_names)
    pred = tasks.decide(p, cut)
    precision, recall, f1, support = prfs(y, pred, zero_division=0)
    confusion = multilabel_confusion_matrix(y, pred)  # [[tn, fp], [fn, tp]] per label
    per_label = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i]), "threshold": float(cut[i]),
               "tp": int(confusion[i, 1, 1]), "fp": int(confusion[i, 0, 1]), "fn": int(confusion[i, 1, 0]),
               "tn": int(confusion[i, 0, 0])}
        for i, name in enumerate(label_names)
    }
    average = {kind: float(f1_score(y, pred, average=kind, zero_division=0)) for kind in ("micro", "macro")}
    return {
        "task": tasks.MultiLabel.name,
        "micro_f1": average["micro"],
        "macro_f1": average["macro"],
        "samples_f1": float(f1_score(y, pred, average="samples", zero_division=0)),
        "hamming_loss": float(hamming_loss(y, pred)),
        "subset_accuracy": float(accuracy_score(y, pred)),
        "per_label": per_label,
        "n": int(len(y)),
        "label_names": list(label_names),
        "thresholds": thresholds,
    }


def regression_metrics(targets, predictions) -> dict:
    """RMSE, MAE, R², Pearson, Spearman of predictions against targets (both in the original units)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        raise DataError("nothing to evaluate: the labelled split is empty")
    constant = len(y) < 2 or np.ptp(y) == 0 or np.ptp(p) == 0  # correlations are undefined
    return {
        "task": tasks.Regression.name,
        "rmse": float(np.sqrt(mean_squared_error(y, p))),
        "mae": float(mean_absolute_error(y, p)),
        "r2": float(r2_score(y, p)) if len(y) > 1 else float("nan"),
        "pearson": 0.0 if constant else float(pearsonr(y, p).statistic),
        "spearman": 0.0 if constant else float(spearmanr(y, p).statistic),
        "n": int(len(y)),
        "targets": y.tolist(),
        "predictions": p.tolist(),
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


AT_HALF = ("micro_f1", "macro_f1", "samples_f1", "hamming_loss", "subset_accuracy")


def _label_sets(labels, scores, label_names, thresholds, scale) -> dict:
    """At the stored thresholds, with the same numbers at 0.5 beside them under "at_0.5"."""
    at_half = multi_label_metrics(labels, scores, label_names)
    metrics = multi_label_metrics(labels, scores, label_names, thresholds) if thresholds else dict(at_half)
    return metrics | {"at_0.5": {k: at_half[k] for k in AT_HALF}}


def _values(labels, scores, label_names, thresholds, scale) -> dict:
    return regression_metrics(tasks.unscale(labels, scale), tasks.unscale(np.asarray(scores)[:, 0], scale))


def _classes(labels, scores, label_names, thresholds, scale) -> dict:
    return compute_metrics(labels, scores, label_names)


SCORERS = {tasks.SingleLabel: _classes, tasks.MultiLabel: _label_sets, tasks.Regression: _values}
