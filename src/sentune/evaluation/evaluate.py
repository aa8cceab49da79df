"""The `sentune evaluate` command's logic: predict a labelled split with a saved model and score it.

The scores themselves are `metrics.score` (one path for every task); this module loads the model and
the data, prints the summary and writes the result.
"""

from __future__ import annotations

from pathlib import Path

from sentune import tasks
from sentune.atomic import atomic_write_json
from sentune.errors import ConfigError, DataError
from sentune.evaluation.metrics import score


def summary_lines(metrics: dict) -> list[str]:
    """The short human summary printed before the JSON line."""
    return SUMMARIES[type(tasks.task_of_metrics(metrics))](metrics)


def _class_lines(metrics: dict) -> list[str]:
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


def _value_lines(metrics: dict) -> list[str]:
    return [f"n={metrics['n']}  RMSE={metrics['rmse']:.4f}  MAE={metrics['mae']:.4f}  R2={metrics['r2']:.4f}  "
            f"Pearson={metrics['pearson']:.4f}  Spearman={metrics['spearman']:.4f}"]


def _label_set_lines(metrics: dict) -> list[str]:
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


SUMMARIES = {tasks.SingleLabel: _class_lines, tasks.MultiLabel: _label_set_lines, tasks.Regression: _value_lines}


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
    precision: str = "auto",
    label_separator: str | None = None,
    label_columns: str | None = None,
) -> dict:
    """Predict a labelled split with the model and score it (`metrics.score`, at the model's stored
    temperature or thresholds) + model, data, temperature."""
    from sentune.data.splits import load_labelled
    from sentune.inference.classifier import Classifier

    if (dataset is None) == (test_file is None):
        raise ConfigError("give exactly one of --dataset NAME_OR_PATH or --test-file FILE")
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be >= 1")
    if batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    if test_file is not None:
        require_file(test_file, "--test-file")
    source = dataset if dataset is not None else test_file
    assert source is not None  # exactly one of the two was checked above
    clf = Classifier.load(model_dir, backend=backend, precision=precision)
    task = clf.task
    rows, label_names = load_labelled(
        source, split=split, dataset_config=dataset_config, text_column=text_column, label_column=label_column,
        label_names=list(clf.labels), limit=limit, task=task, form=label_form_of(label_separator, label_columns))
    labels = list(rows["label"])
    logits = clf.logits(list(rows["text"]), batch_size=batch_size)
    temperature = clf.settings.temperature
    metrics = score(task, labels, task.scores(logits, temperature), label_names, clf.settings.thresholds)
    metrics["model"] = str(model_dir)
    metrics["precision"] = clf.precision  # of this machine's run, not of the model
    metrics["data"] = {"source": str(source), "split": split, "limit": limit}
    if task.calibration == "temperature":
        metrics["temperature"] = temperature
    if temperature and task.calibration == "temperature":
        # the same logits without the stored temperature: what calibration changed on this data
        raw = score(task, labels, task.scores(logits), label_names)
        metrics["uncalibrated"] = {"ece": raw["ece"], "nll": raw["nll"]}
    return metrics


def label_form_of(separator: str | None, columns: str | None):
    """--label-separator / --label-columns of evaluate and calibrate, as the readers take them."""
    from sentune.data.readers import LabelForm

    names = tuple(c.strip() for c in (columns or "").split(",") if c.strip())
    return LabelForm(separator=separator or None, columns=names)


def require_file(path: str, flag: str) -> None:
    """A missing file must not fall through to a Hub download attempt under the same name."""
    if not Path(path).is_file():
        raise DataError(f"{flag} {path}: no such file")


def write_metrics(path: str | Path, metrics: dict) -> None:
    """metrics.json, replaced whole or not at all; a failed write is a WriteError."""
    atomic_write_json(Path(path), metrics)
