"""The selected weights and the end of a run, one path for every task:

    save best/ when an epoch improves -> reload it -> tune the decision thresholds on validation (when the
    task decides with thresholds) -> test once -> final_metrics.json, test_probs.json, manifest, card, report.

The test split is scored with `metrics.score` (the task's metrics, in a regression target's own units);
test_probs.json holds per test text its label and scores (probabilities, or the value), so a subset (e.g.
texts longer than one window: bench/long_text.py) can be scored later.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from sentune import rundir, tasks
from sentune.evaluation.metrics import score
from sentune.training.checkpoint import TrainState
from sentune.training.eval_pass import METRIC_NAMES, evaluate
from sentune.training.prepare import Prepared


def finish(p: Prepared, state: TrainState, stopped_early: bool) -> None:
    """Every process calls it (the evaluations are sharded); only the main one writes."""
    tag = "val" if p.cfg.train.select_on == "validation" else "test"
    if stopped_early:
        p.log("Early stopping.")
    best = tasks.sign(p.cfg.train.select_metric) * state.best_score
    p.log(f"Best {tag} {METRIC_NAMES[p.cfg.train.select_metric]}: {best:.4f} (epoch {state.best_epoch})")
    p.log("Applying optimal model weights.")
    p.accelerator.wait_for_everyone()
    reload_best(p)
    thresholds = tune_on_validation(p) if p.splits.task.calibration == "thresholds" else None
    final = final_test(p, thresholds)
    if p.is_main:
        write_summary(p, state, final, stopped_early)
    p.log(f"Run directory: {p.run_dir}")


# ---- best/ ----------------------------------------------------------------------------------------------
def save_best(p: Prepared) -> None:
    p.accelerator.wait_for_everyone()
    if p.is_main:
        model = p.accelerator.unwrap_model(p.model)
        rundir.atomic_dir(p.run_dir / "best", lambda d: save_model(p, model, d))
    p.accelerator.wait_for_everyone()


def save_model(p: Prepared, model, folder) -> None:
    """save_pretrained, with a regression target's scale folded into the head for the saved copy only
    (best/ answers in the original units; training goes on in standardised ones)."""
    tasks.fold_scale(model, p.splits.label_scale)
    try:
        model.save_pretrained(folder)
    finally:
        tasks.fold_scale(model, p.splits.label_scale, inverse=True)
    p.tokenizer.save_pretrained(folder)


def reload_best(p: Prepared) -> None:
    from safetensors.torch import load_file

    # read on the CPU ("cpu:0", a multi-process CPU device, is not a device safetensors knows); copied in place
    state = load_file(str(p.run_dir / "best" / "model.safetensors"))
    model = p.accelerator.unwrap_model(p.model)
    model.load_state_dict(state, strict=False)
    tasks.fold_scale(model, p.splits.label_scale, inverse=True)  # back to the units the feeds hold


# ---- thresholds and the test ------------------------------------------------------------------------------
def tune_on_validation(p: Prepared) -> dict | None:
    """Decision thresholds tuned on the validation split and stored in best/config.json (never on test)."""
    from sentune.evaluation.calibrate import store_setting
    from sentune.evaluation.thresholds import tune_thresholds

    if not p.feeds.get("validation"):
        p.log("No validation split: thresholds stay at 0.5 (tune them with `sentune calibrate`).")
        return None
    probs = evaluate(p, "validation", with_probs=True)["probs"].numpy()
    labels = np.asarray(list(p.splits.validation["label"]))
    thresholds = tune_thresholds(probs, labels, p.splits.label_names)
    if p.is_main:
        store_setting(p.run_dir / "best", "thresholds", thresholds)
        fell_back = len(thresholds["fallback"])
        p.log(f"Thresholds tuned on validation (n={thresholds['n']}): global {thresholds['global']:.2f}; "
              f"per label {min(thresholds['per_label'].values()):.2f}..{max(thresholds['per_label'].values()):.2f}"
              f" ({fell_back} labels with under {thresholds['min_positives']} positives use the global one)")
    return thresholds


def final_test(p: Prepared, thresholds: dict | None) -> dict | None:
    """The selected weights on the test split, once: final_metrics.json and test_probs.json."""
    if not p.feeds.get("test"):
        return None
    scores = evaluate(p, "test", with_probs=True)["probs"].numpy()
    if not p.is_main:
        return None
    labels, scale = list(p.splits.test["label"]), p.splits.label_scale
    final = score(p.splits.task, labels, scores, p.splits.label_names, thresholds, scale)
    rundir.atomic_write_json(p.run_dir / "final_metrics.json", final)
    rundir.atomic_write_json(p.run_dir / "test_probs.json", {"label": tasks.unscale(labels, scale).tolist(),
                                                             "probs": tasks.unscale(scores, scale).tolist()})
    p.log(p.splits.task.final_line(final))
    return final


def write_summary(p: Prepared, state: TrainState, final: dict | None, stopped_early: bool) -> None:
    manifest = rundir.read_json(p.run_dir / "manifest.json")
    manifest.update(ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), best_epoch=state.best_epoch,
                    best_score=tasks.sign(p.cfg.train.select_metric) * state.best_score,
                    selected_on=p.cfg.train.select_on, select_metric=p.cfg.train.select_metric,
                    stopped_early=stopped_early, test_acc=final and final.get("accuracy"), task=str(p.splits.task),
                    state=asdict(state) | {"history": None})
    rundir.atomic_write_json(p.run_dir / "manifest.json", manifest)
    from sentune.card import write_card
    from sentune.evaluation.report import write_training_report

    write_card(p.run_dir)  # best/README.md: the model card travels with the weights (and to the Hub)
    write_training_report(p.run_dir)
