"""Temperature scaling (Guo et al. 2017): one scalar T so that softmax(logits / T) is calibrated.

`fit_temperature` minimizes the negative log-likelihood of validation logits over log T (so T stays
positive) with L-BFGS; `calibrate_model` stores T in the model folder's config.json, under the
`sentune` dict that `inference.classifier.Classifier` reads, so predict, serve and evaluate apply it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sentune import settings as settings_lib
from sentune.errors import ConfigError
from sentune.evaluation.labelled import LabelledSource

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
    return settings_lib.store(model_dir, temperature=float(temperature))


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
    from sentune.inference.classifier import Classifier

    source = LabelledSource.pick(validation_file, "--validation-file", dataset, split=split,
                                 dataset_config=dataset_config, text_column=text_column, label_column=label_column,
                                 limit=limit, label_separator=label_separator, label_columns=label_columns)
    clf = Classifier.load(model_dir, backend="torch", precision="fp32")  # fitted on exact logits
    if not clf.task.calibration:
        raise ConfigError(f"{model_dir} is a {clf.task} model: there is no temperature or threshold to calibrate")
    rows, names = source.load(clf.labels, clf.task, at_least=2, purpose=f"fit a {clf.task.calibration}")
    logits = clf.logits(list(rows["text"]), batch_size=batch_size)  # raw: any stored T is not applied
    result = CALIBRATORS[clf.task.calibration](clf, model_dir, logits, list(rows["label"]), names)
    return result | {"n": int(len(rows)), "data": source.describe()}


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
    from sentune.evaluation.thresholds import store_thresholds, tune_thresholds

    probs = clf.task.scores(logits, clf.settings.temperature)
    previous = clf.settings.thresholds
    thresholds = tune_thresholds(probs, np.asarray(labels), names)
    before = score(clf.task, labels, probs, names, previous)
    after = score(clf.task, labels, probs, names, thresholds)
    store_thresholds(model_dir, thresholds)
    return {"task": str(clf.task), "thresholds": thresholds, "previous_thresholds": previous,
            "macro_f1_before": before["macro_f1"], "macro_f1_after": after["macro_f1"],
            "micro_f1_before": before["micro_f1"], "micro_f1_after": after["micro_f1"]}


CALIBRATORS = {"temperature": calibrate_temperature, "thresholds": calibrate_thresholds}
