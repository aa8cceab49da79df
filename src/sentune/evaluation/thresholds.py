"""Decision thresholds of a multi-label model, tuned on validation data (never on test).

A sigmoid output of 0.5 is a poor cut for rare labels: a model trained on 43k comments where "grief"
appears 77 times rarely pushes it past 0.5. `tune_thresholds` searches a grid for
- one global threshold that maximises macro-F1 over all labels, and
- one threshold per label that maximises that label's F1, where the label has at least `min_positives`
  validation positives; labels with fewer fall back to the global one (a threshold fitted on three
  examples is noise).
The result is stored as `sentune.thresholds` in the model folder's config.json (by the caller: training's
finish and `sentune calibrate`; this module is only the search); `Classifier`, `predict`,
`serve`, the web page and the ONNX runner all decide label sets with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GRID = np.round(np.arange(0.02, 0.98, 0.01), 2)
MIN_POSITIVES = 10


def f1_per_label(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 of every label (columns), 0 where a label has neither positives nor predictions."""
    tp = (y & pred).sum(0)
    denominator = y.sum(0) + pred.sum(0)
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def tune_thresholds(probs, labels, label_names: Sequence[str], min_positives: int = MIN_POSITIVES) -> dict:
    """{"global", "per_label", "fallback", "min_positives", "n"}; see the module docstring."""
    p = np.asarray(probs, dtype=np.float32)
    y = np.asarray(labels) > 0.5
    if p.shape != y.shape or p.shape[1] != len(label_names) or len(y) == 0:
        raise ValueError(f"need probs and labels of shape (n > 0, {len(label_names)}), got {p.shape}, {y.shape}")
    f1 = np.stack([f1_per_label(y, p >= t) for t in GRID])  # [grid, labels]
    best_global = float(GRID[int(np.argmax(f1.mean(1)))])
    per_label, fallback = {}, []
    positives = y.sum(0)
    for i, name in enumerate(label_names):
        if positives[i] >= min_positives:
            per_label[name] = float(GRID[int(np.argmax(f1[:, i]))])
        else:
            per_label[name] = best_global
            fallback.append(name)
    return {"global": best_global, "per_label": per_label, "fallback": fallback,
            "min_positives": int(min_positives), "n": int(len(y))}
