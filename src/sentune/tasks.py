"""Task types: one label per text, several labels per text, or a number to regress.

Everything that differs between the three lives here, as one `Task` object per task (`get_task(name)`,
`task_of(config)`), so the data, training, evaluation and inference code keep one path and ask the task
at the few points where they differ: how labels are detected and counted, which loss trains the head, how
logits become scores, which metrics can pick the best epoch (and in which direction), what `calibrate`
fits, how its test numbers read, and how a regression target's scale is folded into the saved head.
Modules above this one that need a per-task function of their own (metrics, plots, markdown) keep one
table keyed by the task's type, never a branch on its name.

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

DEFAULT_THRESHOLD = 0.5
LOWER_IS_BETTER = frozenset({"rmse"})


class Task(str):
    """One task: its name (a str, so configs, JSON and manifests keep the plain name) and all it decides.

    Get one with `get_task(name)` or `task_of(config)`; the subclasses below fill in what differs.
    """

    name: str = ""
    problem_type: str = ""  # transformers' config.problem_type: pipeline() picks softmax / sigmoid / none by it
    select_metrics: tuple[str, ...] = ()  # what --select-metric may name; the first is the default
    losses: tuple[str, ...] = ()  # what --loss may name besides auto; the first is auto's choice
    has_accuracy = True  # whether the running accuracy (train_acc, val_acc) means anything
    calibration = ""  # what `sentune calibrate` fits and stores: temperature, thresholds, or nothing
    score_function = ""  # transformers' `function_to_apply` that `scores` amounts to (the Inference API's name)

    def __new__(cls, name: str | None = None):
        return super().__new__(cls, cls.name)

    def __reduce__(self):  # pickled (accelerate's gather_object, deepcopy) as a lookup by name
        return get_task, (str(self),)

    def select_metric(self, metric: str) -> str:
        """The --select-metric to use: accuracy (the default) means the task's own default outside single-label."""
        if metric == "accuracy" and "accuracy" not in self.select_metrics:
            return self.select_metrics[0]
        if metric not in self.select_metrics:
            raise ConfigError(f"--select-metric {metric} does not apply to {self}; "
                              f"choose one of {', '.join(self.select_metrics)}")
        return metric

    def check_loss(self, loss: str) -> None:
        if loss not in ("auto", *self.losses):
            raise ConfigError(f"--loss {loss} does not apply to {self}; use auto or {' / '.join(self.losses)}")

    # the per-task parts, overridden below
    def scores(self, logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
        """Logits -> what the model answers: class probabilities, per-label probabilities, or values (n, 1)."""
        raise NotImplementedError

    def torch_scores(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, train_cfg, labels: torch.Tensor, num_labels: int) -> torch.nn.Module:
        raise NotImplementedError

    def eval_loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The unweighted loss summed over the examples (per example: mean over labels for multi-label)."""
        raise NotImplementedError

    def hits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Examples counted correct for the running accuracy."""
        return torch.zeros((), device=logits.device)

    def label_counts(self, labels: Sequence, label_names: Sequence[str], scale: dict | None = None) -> dict:
        """What the manifest and the data summary say about one split's labels."""
        raise NotImplementedError

    def data_note(self, counts: dict[str, dict], scale: dict | None) -> str:
        """What the data summary adds about the labels, from `label_counts` per split (nothing by default)."""
        return ""

    def headline(self, metrics: dict) -> str:
        """The task's main test numbers in one phrase (`evaluation.metrics.score` dicts)."""
        raise NotImplementedError

    def final_line(self, metrics: dict) -> str:
        """What training prints about its one test of the selected weights."""
        return f"Test of the selected weights: {self.headline(metrics)}"

    def label_scores(self, prediction: dict, labels: Sequence[str]) -> dict[str, float]:
        """A prediction record's score per label (the Inference API's `[{"label", "score"}]`)."""
        return dict(prediction["probs"])

    # ---- sentune audit / select
    cleanlab_task = ""  # the `task` cleanlab's Datalab takes
    label_audit = ""  # what a `label` finding means for this task, in words (audit.md and the summary)

    def cleanlab_inputs(self, labels: Sequence, scores: np.ndarray) -> tuple[list, np.ndarray]:
        """Labels and out-of-fold scores as Datalab takes them (class ids and probabilities by default)."""
        return [int(v) for v in labels], np.asarray(scores)

    def label_text(self, value, names: Sequence[str], scale: dict | None = None):
        """A label as people read it (a class name by default); `value` as the splits or cleanlab hold it."""
        return names[int(value)]

    def uncertainty(self, scores: np.ndarray, strategy: str) -> np.ndarray:
        """How much a label is worth per text (higher: label it sooner): one minus the margin between the two
        likeliest classes for `margin`, else the predictive entropy."""
        p = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1.0)
        if strategy != "margin":
            return -(p * np.log(p)).sum(axis=1)
        top = np.sort(p, axis=1)
        return 1.0 - (top[:, -1] - top[:, -2])

    # distillation (training/distill.py)
    def soft_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """The student's loss against the teacher's logits (Hinton et al. 2015), scaled by T squared where T
        softens them, so the gradients keep their size whatever T is."""
        raise NotImplementedError

    def teacher_labels(self, logits: np.ndarray, thresholds: np.ndarray) -> list:
        """Labels in the training split's form for texts only the teacher has read (unlabelled transfer text):
        they fill the label column, which the labels' loss never reads for those rows."""
        raise NotImplementedError


class SingleLabel(Task):
    name, problem_type = "single_label", "single_label_classification"
    score_function = "softmax"
    cleanlab_task = "classification"
    label_audit = "the given class is unlikely by the out-of-fold probabilities; suggested: the likeliest class"
    select_metrics = ("accuracy", "macro_recall", "macro_f1")
    losses = ("cross_entropy",)
    calibration = "temperature"

    def scores(self, logits, temperature=None):
        z = np.asarray(logits, dtype=np.float64) / (temperature or 1.0)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def torch_scores(self, logits):
        return logits.softmax(-1)

    def loss(self, train_cfg, labels, num_labels):
        self.check_loss(train_cfg.loss)
        weight = None
        if train_cfg.class_weights == "balanced":
            counts = torch.bincount(labels, minlength=num_labels).float()
            weight = counts.sum() / (len(counts) * counts.clamp(min=1))  # sklearn's "balanced" formula
        return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=train_cfg.label_smoothing)

    def eval_loss_sum(self, logits, labels):
        return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")

    def hits(self, logits, labels):
        return (logits.argmax(-1) == labels).sum().float()

    def headline(self, metrics):
        return (f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
                f"macro-recall {metrics['macro_recall']:.4f}, n={metrics['n']}")

    def final_line(self, metrics):
        return f"Test acc of the selected weights: {metrics['accuracy']:.4f} (n={metrics['n']})"

    def label_counts(self, labels, label_names, scale=None):
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(label_names)).tolist()
        return dict(zip(label_names, counts, strict=True))

    def soft_loss(self, student, teacher, temperature):
        """KL divergence between the teacher's and the student's softmax at temperature T."""
        t = float(temperature)
        log_student = torch.nn.functional.log_softmax(student.float() / t, -1)
        log_teacher = torch.nn.functional.log_softmax(teacher.float() / t, -1)
        return torch.nn.functional.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * t * t

    def teacher_labels(self, logits, thresholds):
        return np.asarray(logits).argmax(-1).astype(np.int64).tolist()


class MultiLabel(Task):
    name, problem_type = "multi_label", "multi_label_classification"
    score_function = "sigmoid"
    cleanlab_task = "multilabel"
    label_audit = ("the given label set is unlikely; `labels` names the labels given but unlikely or likely but "
                   "not given; suggested: the set the out-of-fold probabilities give")
    select_metrics = ("macro_f1", "micro_f1", "samples_f1")
    losses = ("bce",)
    calibration = "thresholds"

    def scores(self, logits, temperature=None):
        z = np.asarray(logits, dtype=np.float64) / (temperature or 1.0)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def torch_scores(self, logits):
        return logits.sigmoid()

    def loss(self, train_cfg, labels, num_labels):
        """BCE with logits; balanced: per-label positive weights (negatives / positives)."""
        self.check_loss(train_cfg.loss)
        positives = labels.float().sum(0)
        balanced = train_cfg.class_weights == "balanced"
        pos_weight = (len(labels) - positives) / positives.clamp(min=1) if balanced else None
        return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def eval_loss_sum(self, logits, labels):
        per = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
        return per.mean(-1).sum()

    def hits(self, logits, labels):
        """The exact label set at 0.5 (subset accuracy, sklearn's multi-label accuracy)."""
        return ((logits > 0) == (labels > 0.5)).all(-1).sum().float()

    def label_counts(self, labels, label_names, scale=None):
        y = np.asarray(labels, dtype=np.float64).reshape(len(labels), len(label_names))
        per_row = y.sum(1)
        return {"no_label": int((per_row == 0).sum()), "two_or_more": int((per_row >= 2).sum()),
                "positives": dict(zip(label_names, y.sum(0).astype(int).tolist(), strict=True))}

    def headline(self, metrics):
        at = "the tuned thresholds" if metrics.get("thresholds") else "0.5"
        line = f"macro-F1 {metrics['macro_f1']:.4f}, micro-F1 {metrics['micro_f1']:.4f} at {at}"
        half = metrics.get("at_0.5") if metrics.get("thresholds") else None
        if half:
            line += f" (at 0.5: macro-F1 {half['macro_f1']:.4f}, micro-F1 {half['micro_f1']:.4f})"
        return f"{line}, n={metrics['n']}"

    def cleanlab_inputs(self, labels, scores):
        """The indices of the labels each row has; per-label probabilities."""
        return [[j for j, on in enumerate(row) if on > 0.5] for row in labels], np.asarray(scores)

    def label_text(self, value, names, scale=None):
        """Label indices (cleanlab's form) or a 0/1 vector (the splits' form) -> the label names."""
        ints = all(isinstance(v, int | np.integer) for v in value)
        return [names[int(j)] for j in (value if ints else np.flatnonzero(np.asarray(value) > 0.5))]

    def uncertainty(self, scores, strategy):
        """Binary entropies summed over the labels, or how close the most undecided label is to 0.5."""
        p = np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1.0 - 1e-12)
        if strategy != "margin":
            return -(p * np.log(p) + (1.0 - p) * np.log(1.0 - p)).sum(axis=1)
        return 1.0 - np.abs(2.0 * p - 1.0).min(axis=1)

    def soft_loss(self, student, teacher, temperature):
        """Per-label BCE against the teacher's sigmoids at temperature T."""
        t = float(temperature)
        targets = torch.sigmoid(teacher.float() / t)
        return torch.nn.functional.binary_cross_entropy_with_logits(student.float() / t, targets) * t * t

    def teacher_labels(self, logits, thresholds):
        """The teacher's label set at its thresholds."""
        return decide(self.scores(logits), thresholds).astype(np.float32).tolist()

    def data_note(self, counts, scale):
        return "\nLabel sets: " + "; ".join(f"{name} {c['no_label']:,} with no label, {c['two_or_more']:,} with 2+"
                                           for name, c in counts.items())


class Regression(Task):
    name, problem_type = "regression", "regression"
    score_function = "none"
    cleanlab_task = "regression"
    label_audit = ("the target is far from the out-of-fold prediction (cleanlab's residual-based label quality); "
                   "suggested: the prediction")
    select_metrics = ("rmse", "pearson", "spearman")
    losses = ("mse", "huber")
    has_accuracy = False

    def scores(self, logits, temperature=None):  # a temperature does not apply to a value
        return np.asarray(logits, dtype=np.float32)

    def label_scores(self, prediction, labels):  # the one output scores the one label
        return {labels[0]: prediction["value"]}

    def torch_scores(self, logits):
        return logits

    def loss(self, train_cfg, labels, num_labels):
        self.check_loss(train_cfg.loss)
        return RegressionLoss(train_cfg.loss)

    def eval_loss_sum(self, logits, labels):
        return torch.nn.functional.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")

    def label_counts(self, labels, label_names, scale=None):
        """The target's spread in the data's own units."""
        y = unscale(labels, scale)
        return {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()), "max": float(y.max())}

    def soft_loss(self, student, teacher, temperature):
        """MSE to the teacher's value: a score has nothing to soften, so T does not apply."""
        return torch.nn.functional.mse_loss(student.float(), teacher.float())

    def teacher_labels(self, logits, thresholds):
        return np.asarray(logits, dtype=np.float32)[:, 0].tolist()

    def headline(self, metrics):
        return (f"RMSE {metrics['rmse']:.4f}, MAE {metrics['mae']:.4f}, Pearson {metrics['pearson']:.4f}, "
                f"Spearman {metrics['spearman']:.4f}, n={metrics['n']}")

    def cleanlab_inputs(self, labels, scores):
        return [float(v) for v in labels], np.asarray(scores).reshape(-1)

    def label_text(self, value, names, scale=None):
        """The target in the data's own units."""
        return round(float(unscale([float(np.asarray(value).reshape(-1)[0])], scale)[0]), 6)

    def uncertainty(self, scores, strategy):
        """One number per text carries no uncertainty: random and diverse weigh every text alike."""
        if strategy in ("entropy", "margin"):
            raise ConfigError(f"--strategy {strategy} needs class probabilities; a regression model gives one "
                              "number per text, so use --strategy random or diverse")
        return np.zeros(len(scores))

    def data_note(self, counts, scale):
        return "" if not scale else (f"\nTarget scale: {scale['method']} (train mean {scale['mean']:.4g}, "
                                     f"std {scale['std']:.4g})")


_TASKS = {t.name: t() for t in (SingleLabel, MultiLabel, Regression)}
TASKS = tuple(_TASKS)
PROBLEM_TYPES = {name: t.problem_type for name, t in _TASKS.items()}


def get_task(name: str) -> Task:
    """The task object of a name (`--task`, manifest, config.yaml)."""
    if name not in _TASKS:
        raise ConfigError(f"--task must be auto or one of {', '.join(TASKS)}, got {name!r}")
    return _TASKS[name]


# ---- which task ----------------------------------------------------------------------------------------
def _is_number(name: str) -> bool:
    try:
        return math.isfinite(float(name))
    except ValueError:
        return False


def detect_task(labels: Sequence) -> Task:
    """A list-valued label -> multi_label; a number that is not a whole class id -> regression; else single."""
    if any(isinstance(v, tuple) for v in labels):
        return _TASKS["multi_label"]
    names = [v for v in labels if v is not None]
    if names and all(_is_number(v) for v in names) and any(not float(v).is_integer() for v in names):
        return _TASKS["regression"]
    return _TASKS["single_label"]


def resolve_task(setting: str, labels: Sequence, source: str) -> Task:
    """`--task` as given, or detected for auto; a list label in single-label mode is a DataError."""
    task = detect_task(labels) if setting == "auto" else get_task(setting)
    if isinstance(task, SingleLabel):
        row = next((i for i, v in enumerate(labels) if isinstance(v, tuple)), None)
        if row is not None:
            raise DataError(f"{source}: row {row + 1} has a list of labels but --task is single_label; "
                            "use --task multi_label (or auto)")
    return task


def task_of(config) -> Task:
    """The task a transformers config was trained for (a plain single-label model when nothing says so)."""
    problem = getattr(config, "problem_type", None)
    return next((t for t in _TASKS.values() if t.problem_type == problem), _TASKS["single_label"])


def task_of_metrics(metrics: dict) -> Task:
    """The task a metrics dict (final_metrics.json, metrics.json), manifest or config.yaml's data section names;
    one-label metrics carry no "task", and a config may still say auto (an old run's)."""
    name = metrics.get("task")
    return get_task(SingleLabel.name if name in (None, "auto") else name)


def sign(metric: str) -> float:
    """+1 when higher is better, -1 for errors such as RMSE (the loop maximises sign * score)."""
    return -1.0 if metric in LOWER_IS_BETTER else 1.0


# ---- scores ----------------------------------------------------------------------------------------------
def to_scores(task: str, logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """Logits -> softmax probabilities, per-label sigmoid probabilities, or the regressed value (n, 1)."""
    return get_task(task).scores(logits, temperature)


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
    """Standardised values back in the original units (as they are, in an array, when there is no scale)."""
    if not scale:
        return np.asarray(values)
    return np.asarray(values, dtype=np.float64) * float(scale["std"]) + float(scale["mean"])


def rescale(values, scale: dict | None) -> np.ndarray:
    """Values in the original units -> the standardised ones training works in (the inverse of unscale)."""
    if not scale:
        return np.asarray(values)
    return (np.asarray(values, dtype=np.float64) - float(scale["mean"])) / float(scale["std"])
