"""Task types: one label per text, several labels per text, or a number to regress.

Everything that differs between the three lives here, keyed by the task name, so the data, training,
evaluation and inference code keep one path and ask this module at the few points where they differ:
how labels are detected, which loss trains the head, how logits become scores, which metrics can pick
the best epoch, and how a regression target's scale is folded into the saved head.

The task is stored as the transformers `problem_type` in `best/config.json`, so `transformers.pipeline`
applies softmax, sigmoid (multi-label) or nothing (regression) by itself, and every sentune command
reads it back from there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch

from sentune.errors import ConfigError, DataError

TASKS = ("single_label", "multi_label", "regression")
PROBLEM_TYPES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
                 "regression": "regression"}
SELECT_METRICS = {
    "single_label": ("accuracy", "macro_recall", "macro_f1"),
    "multi_label": ("micro_f1", "macro_f1", "samples_f1"),
    "regression": ("rmse", "pearson", "spearman"),
}
DEFAULT_SELECT_METRIC = {"single_label": "accuracy", "multi_label": "macro_f1", "regression": "rmse"}
LOWER_IS_BETTER = frozenset({"rmse"})
DEFAULT_THRESHOLD = 0.5


# ---- which task ----------------------------------------------------------------------------------------
def _is_number(name: str) -> bool:
    try:
        return math.isfinite(float(name))
    except ValueError:
        return False


def detect_task(labels: Sequence) -> str:
    """A list-valued label -> multi_label; a number that is not a whole class id -> regression; else single."""
    if any(isinstance(v, tuple) for v in labels):
        return "multi_label"
    names = [v for v in labels if v is not None]
    if names and all(_is_number(v) for v in names) and any(not float(v).is_integer() for v in names):
        return "regression"
    return "single_label"


def resolve_task(setting: str, labels: Sequence, source: str) -> str:
    """`--task` as given, or detected for auto; a list label in single-label mode is a DataError."""
    task = detect_task(labels) if setting == "auto" else setting
    if task not in TASKS:
        raise ConfigError(f"--task must be auto or one of {', '.join(TASKS)}, got {setting!r}")
    if task == "single_label":
        row = next((i for i, v in enumerate(labels) if isinstance(v, tuple)), None)
        if row is not None:
            raise DataError(f"{source}: row {row + 1} has a list of labels but --task is single_label; "
                            "use --task multi_label (or auto)")
    return task


def task_of(config) -> str:
    """The task a transformers config was trained for (a plain single-label model when nothing says so)."""
    problem = getattr(config, "problem_type", None)
    for task, name in PROBLEM_TYPES.items():
        if problem == name:
            return task
    return "single_label"


def select_metric(task: str, metric: str) -> str:
    """The --select-metric to use: accuracy (the default) means the task's own default outside single-label."""
    if metric == "accuracy" and task != "single_label":
        return DEFAULT_SELECT_METRIC[task]
    if metric not in SELECT_METRICS[task]:
        raise ConfigError(f"--select-metric {metric} does not apply to {task}; "
                          f"choose one of {', '.join(SELECT_METRICS[task])}")
    return metric


def sign(metric: str) -> float:
    """+1 when higher is better, -1 for errors such as RMSE (the loop maximises sign * score)."""
    return -1.0 if metric in LOWER_IS_BETTER else 1.0


# ---- scores ----------------------------------------------------------------------------------------------
def to_scores(task: str, logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """Logits -> softmax probabilities, per-label sigmoid probabilities, or the regressed value (n, 1)."""
    z = np.asarray(logits, dtype=np.float64)
    if task == "regression":
        return z.astype(np.float32)
    if temperature:
        z = z / temperature
    if task == "multi_label":
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# transformers' `function_to_apply` for each task: how `to_scores` turns logits into scores
SCORE_FUNCTION = {"single_label": "softmax", "multi_label": "sigmoid", "regression": "none"}


def label_scores(task: str, prediction: dict, labels: Sequence[str]) -> dict[str, float]:
    """A prediction record's score per label (a regression's one output scores its one label)."""
    if task == "regression":
        return {labels[0]: prediction["value"]}
    return dict(prediction["probs"])


def torch_scores(task: str, logits: torch.Tensor) -> torch.Tensor:
    if task == "multi_label":
        return logits.sigmoid()
    return logits if task == "regression" else logits.softmax(-1)


def threshold_vector(thresholds: dict | None, labels: Sequence[str]) -> np.ndarray:
    """Per-label decision thresholds from the stored {"global", "per_label"} dict (0.5 when none stored)."""
    if not thresholds:
        return np.full(len(labels), DEFAULT_THRESHOLD, dtype=np.float64)
    default = float(thresholds.get("global", DEFAULT_THRESHOLD))
    per = thresholds.get("per_label") or {}
    return np.array([float(per.get(name, default)) for name in labels], dtype=np.float64)


def decide(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Multi-label decisions: a label is on when its probability reaches its threshold."""
    return np.asarray(probs) >= thresholds[None, :]


# ---- training -------------------------------------------------------------------------------------------
class RegressionLoss(torch.nn.Module):
    """MSE or Huber between the single output and the (standardised) target."""

    def __init__(self, kind: str):
        super().__init__()
        self.inner = torch.nn.HuberLoss() if kind == "huber" else torch.nn.MSELoss()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.inner(logits.squeeze(-1), labels.float())


def make_loss(task: str, train_cfg, labels: torch.Tensor, num_labels: int) -> torch.nn.Module:
    """Cross-entropy, BCE-with-logits (balanced: per-label positive weights), or MSE / Huber."""
    if train_cfg.loss not in ("auto", *LOSSES[task]):
        raise ConfigError(f"--loss {train_cfg.loss} does not apply to {task}; use auto or "
                          f"{' / '.join(LOSSES[task])}")
    if task == "regression":
        return RegressionLoss(train_cfg.loss)
    balanced = train_cfg.class_weights == "balanced"
    if task == "multi_label":
        positives = labels.float().sum(0)
        pos_weight = (len(labels) - positives) / positives.clamp(min=1) if balanced else None
        return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    weight = None
    if balanced:
        counts = torch.bincount(labels, minlength=num_labels).float()
        weight = counts.sum() / (len(counts) * counts.clamp(min=1))  # sklearn's "balanced" formula
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=train_cfg.label_smoothing)


LOSSES = {"single_label": ("cross_entropy",), "multi_label": ("bce",), "regression": ("mse", "huber")}


def eval_loss_sum(task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The unweighted loss summed over the examples (per example: mean over labels for multi-label)."""
    if task == "regression":
        return torch.nn.functional.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")
    if task == "multi_label":
        per = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
        return per.mean(-1).sum()
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


def hits(task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Examples counted correct for the running accuracy: argmax, or the exact label set at 0.5 (subset
    accuracy, sklearn's multi-label accuracy); regression has no accuracy (0)."""
    if task == "multi_label":
        return ((logits > 0) == (labels > 0.5)).all(-1).sum().float()
    if task == "regression":
        return torch.zeros((), device=logits.device)
    return (logits.argmax(-1) == labels).sum().float()


# ---- regression scale ------------------------------------------------------------------------------------
def _last_linear(model: torch.nn.Module) -> torch.nn.Linear:
    head = cast(torch.nn.Module, model.classifier)
    # BERT | RoBERTa family
    return head if isinstance(head, torch.nn.Linear) else cast(torch.nn.Linear, head.out_proj)


@torch.no_grad()
def fold_scale(model: torch.nn.Module, scale: dict | None, inverse: bool = False) -> None:
    """Fold the target standardisation into the output layer (y = z * std + mean), so the saved model
    answers in the original units for transformers.pipeline, ONNX and sentune alike; inverse undoes it."""
    if not scale or scale.get("method", "none") == "none":
        return
    layer = _last_linear(model)
    mean, std = float(scale["mean"]), float(scale["std"])
    if inverse:
        layer.bias.sub_(mean).div_(std)
        layer.weight.div_(std)
    else:
        layer.weight.mul_(std)
        layer.bias.mul_(std).add_(mean)


def standardise(values: Sequence[float], method: str) -> dict:
    """The scale of regression targets: z-scores with the training mean and std (or none)."""
    if method == "none":
        return {"method": "none", "mean": 0.0, "std": 1.0}
    y = np.asarray(values, dtype=np.float64)
    std = float(y.std())
    return {"method": "standard", "mean": float(y.mean()), "std": std if std > 0 else 1.0}


def unscale(values, scale: dict | None) -> np.ndarray:
    """Standardised values back in the original units."""
    y = np.asarray(values, dtype=np.float64)
    return y if not scale else y * float(scale["std"]) + float(scale["mean"])
