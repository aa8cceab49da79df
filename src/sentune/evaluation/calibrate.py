"""Temperature scaling (Guo et al. 2017): one scalar T so that softmax(logits / T) is calibrated.

`fit_temperature` minimizes the negative log-likelihood of validation logits over log T (so T stays
positive) with L-BFGS; `calibrate_model` stores T in the model folder's config.json, under the
`sentune` dict that `inference.classifier.Classifier` reads, so predict, serve and evaluate apply it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sentune.atomic import atomic_write_text
from sentune.errors import ConfigError, DataError, ModelError

# Beyond these the validation set is separable or degenerate, and T would run off to 0 or infinity.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def fit_temperature(logits, labels, max_iter: int = 200) -> float:
    """The T > 0 that minimizes mean NLL of softmax(logits / T) on (logits, labels)."""
    import torch

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"need logits (n, K) and n labels with n > 0, got {tuple(z.shape)} and {len(y)}")
    lo, hi = np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.clamp(lo, hi).exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().clamp(lo, hi).exp())


def nll_and_ece(logits, labels, temperature: float = 1.0) -> tuple[float, float]:
    from sentune.evaluation.metrics import expected_calibration_error
    from sentune.inference.classifier import softmax

    probs = softmax(np.asarray(logits), temperature).astype(np.float64)
    y = np.asarray(labels, dtype=np.int64)
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-300, None))))
    return nll, expected_calibration_error(y, probs)


def store_temperature(model_dir: str | Path, temperature: float) -> Path:
    """Write `sentune.temperature` into config.json atomically; a failed write is a WriteError, the file unchanged."""
    return store_setting(model_dir, "temperature", float(temperature))


def store_setting(model_dir: str | Path, key: str, value) -> Path:
    """Write `sentune.<key>` into config.json atomically; a failed write is a WriteError, the file unchanged."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None
    meta = config.get("sentune") or {}
    meta[key] = value
    config["sentune"] = meta
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def calibrate_model(
    model_dir: str,
    validation_file: str | None = None,
    *,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "validation",
    text_column: str = "text",
    label_column: str = "label",
    limit: int | None = None,
    batch_size: int = 32,
    label_separator: str | None = None,
    label_columns: str | None = None,
) -> dict:
    """Fit what the model's task calibrates on held-out data (a file, or a dataset's split) and store it:
    a temperature T on raw logits (one label per text) or decision thresholds (several labels per text)."""
    from sentune.data.splits import load_labelled
    from sentune.evaluation.evaluate import label_form_of, require_file
    from sentune.inference.classifier import Classifier

    if (validation_file is None) == (dataset is None):
        raise ConfigError("give exactly one of --validation-file FILE or --dataset NAME_OR_PATH (with --split)")
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be >= 1")
    if validation_file is not None:
        require_file(validation_file, "--validation-file")
    source = validation_file or dataset
    assert source is not None  # exactly one of the two was checked above
    clf = Classifier.load(model_dir, backend="torch", precision="fp32")  # fitted on exact logits
    if not clf.task.calibration:
        raise ConfigError(f"{model_dir} is a {clf.task} model: there is no temperature or threshold to calibrate")
    rows, names = load_labelled(source, split=split, dataset_config=dataset_config, text_column=text_column,
                                label_column=label_column, label_names=clf.labels, limit=limit, task=clf.task,
                                form=label_form_of(label_separator, label_columns))
    if len(rows) < 2:
        raise DataError(f"{source}: need at least 2 labelled rows to fit a {clf.task.calibration}, got {len(rows)}")
    logits = clf.logits(list(rows["text"]), batch_size=batch_size)  # raw: any stored T is not applied
    result = CALIBRATORS[clf.task.calibration](clf, model_dir, logits, list(rows["label"]), names)
    return result | {"n": int(len(rows)), "data": {"source": str(source), "split": split, "limit": limit}}


def calibrate_temperature(clf, model_dir: str, logits, labels, names) -> dict:
    """T on raw logits, NLL and ECE before (at the stored T) and after."""
    labels = np.asarray(labels, dtype=np.int64)
    previous = clf.settings.temperature or 1.0
    temperature = fit_temperature(logits, labels)
    nll_before, ece_before = nll_and_ece(logits, labels, previous)
    nll_after, ece_after = nll_and_ece(logits, labels, temperature)
    store_temperature(model_dir, temperature)
    return {"temperature": temperature, "previous_temperature": previous, "nll_before": nll_before,
            "nll_after": nll_after, "ece_before": ece_before, "ece_after": ece_after}


def calibrate_thresholds(clf, model_dir: str, logits, labels, names) -> dict:
    """Decision thresholds tuned on held-out data (thresholds.py), macro / micro F1 before and after."""
    from sentune.evaluation.metrics import score
    from sentune.evaluation.thresholds import tune_thresholds

    probs = clf.task.scores(logits, clf.settings.temperature)
    previous = clf.settings.thresholds
    thresholds = tune_thresholds(probs, np.asarray(labels), names)
    before = score(clf.task, labels, probs, names, previous)
    after = score(clf.task, labels, probs, names, thresholds)
    store_setting(model_dir, "thresholds", thresholds)
    return {"task": str(clf.task), "thresholds": thresholds, "previous_thresholds": previous,
            "macro_f1_before": before["macro_f1"], "macro_f1_after": after["macro_f1"],
            "micro_f1_before": before["micro_f1"], "micro_f1_after": after["micro_f1"]}


CALIBRATORS = {"temperature": calibrate_temperature, "thresholds": calibrate_thresholds}
