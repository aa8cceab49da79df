"""The end of a multi-label or regression run, after the selected weights are reloaded.

Multi-label: decision thresholds are tuned on the validation split (evaluation/thresholds.py) and stored
in best/config.json; the test split is then scored once at 0.5 and once at the tuned thresholds, side by
side in final_metrics.json (the tuned numbers at the top level, the 0.5 ones under "at_0.5").
Regression: the test split is scored in the target's original units.
"""

from __future__ import annotations

import numpy as np

from sentune import rundir
from sentune.training.prepare import Prepared


def finish_task(p: Prepared) -> dict | None:
    """Thresholds (multi-label) and the final test metrics; every process calls it (evaluation is sharded)."""
    from sentune.training.loop import evaluate

    thresholds = tune_on_validation(p) if p.splits.task == "multi_label" else None
    if not p.feeds.get("test"):
        return None
    scores = evaluate(p, "test", with_probs=True)["probs"].numpy()
    if not p.is_main:
        return None
    final = test_metrics(p, scores, thresholds)
    rundir.atomic_write_json(p.run_dir / "final_metrics.json", final)
    return final


def tune_on_validation(p: Prepared) -> dict | None:
    from sentune.evaluation.thresholds import store_thresholds, tune_thresholds
    from sentune.training.loop import evaluate

    if not p.feeds.get("validation"):
        p.log("No validation split: thresholds stay at 0.5 (tune them with `sentune calibrate`).")
        return None
    probs = evaluate(p, "validation", with_probs=True)["probs"].numpy()
    labels = np.asarray(list(p.splits.validation["label"]))
    thresholds = tune_thresholds(probs, labels, p.splits.label_names)
    if p.is_main:
        store_thresholds(p.run_dir / "best", thresholds)
        fell_back = len(thresholds["fallback"])
        p.log(f"Thresholds tuned on validation (n={thresholds['n']}): global {thresholds['global']:.2f}; "
              f"per label {min(thresholds['per_label'].values()):.2f}..{max(thresholds['per_label'].values()):.2f}"
              f" ({fell_back} labels with under {thresholds['min_positives']} positives use the global one)")
    return thresholds


def test_metrics(p: Prepared, scores: np.ndarray, thresholds: dict | None) -> dict:
    from sentune.evaluation.task_metrics import task_metrics

    labels, names = list(p.splits.test["label"]), p.splits.label_names
    if p.splits.task == "regression":
        final = task_metrics("regression", labels, scores, names, scale=p.splits.label_scale)
        p.log(f"Test of the selected weights: RMSE {final['rmse']:.4f}, MAE {final['mae']:.4f}, "
              f"Pearson {final['pearson']:.4f}, Spearman {final['spearman']:.4f} (n={final['n']})")
        return final
    at_half = task_metrics("multi_label", labels, scores, names)
    final = task_metrics("multi_label", labels, scores, names, thresholds) if thresholds else dict(at_half)
    final["at_0.5"] = {k: at_half[k] for k in ("micro_f1", "macro_f1", "samples_f1", "hamming_loss",
                                               "subset_accuracy")}
    p.log(f"Test of the selected weights (n={final['n']}): macro-F1 {final['macro_f1']:.4f}, "
          f"micro-F1 {final['micro_f1']:.4f} at the tuned thresholds; at 0.5: macro-F1 "
          f"{at_half['macro_f1']:.4f}, micro-F1 {at_half['micro_f1']:.4f}")
    return final
