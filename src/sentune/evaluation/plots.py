"""Plots of metrics and training curves: PNG files drawn on matplotlib's Agg canvas (no display needed).

Figures are built with `matplotlib.figure.Figure` rather than pyplot, so nothing global (backend,
current figure) is touched and the pixel size of every PNG is fixed: inches x DPI. `write_eval_plots`
draws a task's evaluation plots: confusion matrix and reliability diagram (one label per text), F1 per
label (several labels), predicted-vs-true scatter and residuals (a score). The markdown is report.py's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sentune import tasks
from sentune.errors import WriteError
from sentune.evaluation.metrics import ece_of_table, reliability_table

DPI = 100
CONFUSION_INCHES = (6.0, 5.0)
RELIABILITY_INCHES = (5.0, 6.0)
CURVES_INCHES = (11.0, 4.0)
BAR_INCHES = (7.0, 7.0)
SCATTER_INCHES = (5.0, 5.0)
RESIDUAL_INCHES = (5.0, 3.5)
SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


def figure(inches: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=inches, dpi=DPI)


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format="png")  # no bbox_inches="tight": it would change the pixel size
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def plot_confusion(cm: Sequence[Sequence[int]], label_names: Sequence[str], path: str | Path) -> Path:
    """Counts with row-normalized shading (rows = true labels), so small classes stay readable."""
    counts = np.asarray(cm, dtype=np.int64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = figure(CONFUSION_INCHES)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class")
    k = len(label_names)
    slanted = k > 4  # long or many names would overlap
    ax.set_xticks(range(k), labels=label_names, rotation=45 if slanted else 0,
                  ha="right" if slanted else "center")
    ax.set_yticks(range(k), labels=label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fontsize = 10 if k <= 6 else max(5, 60 // k)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{counts[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center", fontsize=fontsize,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    return save(fig, path)


def plot_reliability(labels, probs, path: str | Path, bins: int = 15) -> Path:
    """Reliability diagram of top-label confidence (bars: accuracy per bin) over a confidence histogram."""
    return plot_reliability_table(reliability_table(labels, probs, bins), path)


def plot_reliability_table(table: dict, path: str | Path) -> Path:
    """The same diagram from `compute_metrics(...)["reliability"]` (no probabilities needed)."""
    bins = table["bins"]
    centers = (np.arange(bins) + 0.5) / bins
    acc = np.array([np.nan if a is None else a for a in table["accuracy"]])
    conf = np.array([np.nan if c is None else c for c in table["confidence"]])
    fig = figure(RELIABILITY_INCHES)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centers, acc, width=1 / bins, edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(centers, conf - acc, bottom=acc, width=1 / bins, facecolor=(1, 0, 0, 0.15), edgecolor="tab:red",
            hatch="//", label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy", title=f"Reliability (ECE {ece_of_table(table):.4f}, {bins} bins)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, table["count"], width=1 / bins, color="gray", edgecolor="black")
    bottom.set(xlim=(0, 1), xlabel="confidence (top-label probability)", ylabel="examples")
    fig.tight_layout()
    return save(fig, path)


def plot_curves(metrics_rows: list[dict], best_epoch: int | None, path: str | Path,
                metric: tuple[str, str] = ("acc", "Accuracy")) -> Path:
    """Loss (left) and accuracy (right; or `metric`: (field suffix, title)) per epoch for train/validation/test;
    the selected epoch marked."""
    fig = figure(CURVES_INCHES)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [row["epoch"] for row in metrics_rows]
    for ax, suffix, title in ((loss_ax, "loss", "Loss"), (acc_ax, *metric)):
        for split, color in SPLIT_COLORS.items():
            values = [row.get(f"{split}_{suffix}") for row in metrics_rows]
            if all(v is None for v in values):
                continue
            ys = [math.nan if v is None else v for v in values]
            ax.plot(epochs, ys, marker="o", color=color, label=SPLIT_NAMES[split])
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", linestyle="--", label=f"selected (epoch {best_epoch})")
        ax.set(title=title, xlabel="epoch")
        ax.margins(x=0.1)  # keep the selected-epoch line off the frame when it is the last epoch
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def plot_per_label_f1(metrics: dict, path: str | Path) -> Path:
    """Horizontal bars of every label's F1 at its threshold, worst at the bottom, macro-F1 as a line."""
    rows = sorted(metrics["per_label"].items(), key=lambda kv: kv[1]["f1"])
    fig = figure(BAR_INCHES)
    ax = fig.subplots()
    ax.barh(range(len(rows)), [r["f1"] for _, r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels=[f"{name} ({r['support']})" for name, r in rows], fontsize=7)
    ax.axvline(metrics["macro_f1"], color="tab:red", linestyle="--", label=f"macro-F1 {metrics['macro_f1']:.3f}")
    ax.set(xlim=(0, 1), xlabel="F1 (support in brackets)", title="F1 per label")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save(fig, path)


def plot_scatter(metrics: dict, path: str | Path) -> Path:
    y, p = np.asarray(metrics["targets"]), np.asarray(metrics["predictions"])
    fig = figure(SCATTER_INCHES)
    ax = fig.subplots()
    ax.scatter(y, p, s=6, alpha=0.5)
    low, high = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="prediction = truth")
    ax.set(xlabel="true value", ylabel="predicted value",
           title=f"Predicted vs true (RMSE {metrics['rmse']:.3f}, Pearson {metrics['pearson']:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def plot_residuals(metrics: dict, path: str | Path) -> Path:
    residuals = np.asarray(metrics["predictions"]) - np.asarray(metrics["targets"])
    fig = figure(RESIDUAL_INCHES)
    ax = fig.subplots()
    ax.hist(residuals, bins=30, color="tab:blue", edgecolor="black")
    ax.axvline(0, color="k", linestyle="--", linewidth=1)
    ax.set(xlabel="predicted - true", ylabel="examples", title="Residuals")
    fig.tight_layout()
    return save(fig, path)


def write_eval_plots(out_dir: str | Path, metrics: dict) -> None:
    """The task's evaluation plots of a metrics dict, in out_dir (the names report.py links to)."""
    EVAL_PLOTS[type(tasks.task_of_metrics(metrics))](Path(out_dir), metrics)


def _class_plots(out_dir: Path, metrics: dict) -> None:
    plot_confusion(metrics["confusion_matrix"], metrics["label_names"], out_dir / "confusion_matrix.png")
    if metrics.get("reliability"):
        plot_reliability_table(metrics["reliability"], out_dir / "reliability.png")


def _label_set_plots(out_dir: Path, metrics: dict) -> None:
    plot_per_label_f1(metrics, out_dir / "per_label_f1.png")


def _value_plots(out_dir: Path, metrics: dict) -> None:
    plot_scatter(metrics, out_dir / "scatter.png")
    plot_residuals(metrics, out_dir / "residuals.png")


EVAL_PLOTS = {tasks.SingleLabel: _class_plots, tasks.MultiLabel: _label_set_plots, tasks.Regression: _value_plots}
