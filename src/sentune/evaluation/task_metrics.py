"""Metrics of multi-label and regression models (single-label metrics live in `evaluate.compute_metrics`).

Multi-label (scikit-learn): micro / macro / samples F1 at the decision thresholds, per-label precision,
recall, F1, support and confusion counts (tp, fp, fn, tn), Hamming loss and subset accuracy. Macro
averages run over every label of the model, as GoEmotions reports them.
Regression: RMSE, MAE, R², Pearson and Spearman correlation (scipy), in the target's original units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sentune import tasks
from sentune.errors import DataError


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
        "task": "multi_label",
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
        "task": "regression",
        "rmse": float(np.sqrt(mean_squared_error(y, p))),
        "mae": float(mean_absolute_error(y, p)),
        "r2": float(r2_score(y, p)) if len(y) > 1 else float("nan"),
        "pearson": 0.0 if constant else float(pearsonr(y, p).statistic),
        "spearman": 0.0 if constant else float(spearmanr(y, p).statistic),
        "n": int(len(y)),
        "targets": y.tolist(),
        "predictions": p.tolist(),
    }


def task_metrics(task: str, labels, scores, label_names: Sequence[str], thresholds: dict | None = None,
                 scale: dict | None = None) -> dict:
    """The task's metrics from labels and scores (probabilities; regression: values, unscaled by `scale`)."""
    if task == "multi_label":
        return multi_label_metrics(labels, scores, label_names, thresholds)
    return regression_metrics(tasks.unscale(labels, scale), tasks.unscale(np.asarray(scores)[:, 0], scale))


def selection_score(task: str, metric: str, labels, scores, scale: dict | None = None) -> float:
    """The --select-metric score of one evaluation (multi-label at the default 0.5 thresholds)."""
    return float(task_metrics(task, labels, scores, [str(i) for i in range(np.shape(scores)[1])],
                              scale=scale)[metric])


def evaluate_task(clf, source: str, *, split: str, dataset_config: str | None, text_column: str,
                  label_column: str, limit: int | None, batch_size: int, form=None) -> dict:
    """`sentune evaluate` of a multi-label model (at its stored thresholds, and at 0.5) or a regression one."""
    from sentune.data.splits import load_labelled

    rows, names = load_labelled(source, split=split, dataset_config=dataset_config, text_column=text_column,
                                label_column=label_column, label_names=clf.labels, limit=limit, task=clf.task,
                                form=form)
    scores = clf.predict_proba(list(rows["text"]), batch_size=batch_size)
    labels = np.asarray(list(rows["label"]))
    if clf.task == "regression":
        return regression_metrics(labels, scores[:, 0])
    metrics = multi_label_metrics(labels, scores, names, clf.settings.thresholds)
    at_half = multi_label_metrics(labels, scores, names)
    metrics["at_0.5"] = {k: at_half[k] for k in ("micro_f1", "macro_f1", "samples_f1", "hamming_loss",
                                                 "subset_accuracy")}
    return metrics


def summary_lines(metrics: dict) -> list[str]:
    """The human summary of multi-label or regression metrics."""
    if metrics["task"] == "regression":
        return [f"n={metrics['n']}  RMSE={metrics['rmse']:.4f}  MAE={metrics['mae']:.4f}  R2={metrics['r2']:.4f}  "
                f"Pearson={metrics['pearson']:.4f}  Spearman={metrics['spearman']:.4f}"]
    lines = [f"n={metrics['n']}  micro-F1={metrics['micro_f1']:.4f}  macro-F1={metrics['macro_f1']:.4f}  "
             f"samples-F1={metrics['samples_f1']:.4f}  Hamming={metrics['hamming_loss']:.4f}  "
             f"subset-acc={metrics['subset_accuracy']:.4f}"]
    at_half = metrics.get("at_0.5")
    if at_half:
        lines.append(f"at 0.5 instead of the tuned thresholds: micro-F1={at_half['micro_f1']:.4f}  "
                     f"macro-F1={at_half['macro_f1']:.4f}  samples-F1={at_half['samples_f1']:.4f}")
    lines.append(f"{'label':<16}{'threshold':>10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name, row in metrics["per_label"].items():
        lines.append(f"{name[:16]:<16}{row['threshold']:>10.2f}{row['precision']:>10.4f}{row['recall']:>10.4f}"
                     f"{row['f1']:>10.4f}{row['support']:>10d}")
    return lines


def all_metrics(task: str, labels, scores, label_names: Sequence[str], thresholds: dict | None = None) -> dict:
    """Every metric of the task from labels and scores as predict gives them (probabilities, or values in the
    data's units). One entry for distill's gate until evaluation has one scoring path for all tasks."""
    if task == "single_label":
        from sentune.evaluation.metrics import compute_metrics

        return compute_metrics(np.asarray(labels, dtype=np.int64), scores, label_names)
    return task_metrics(task, labels, scores, label_names, thresholds)
