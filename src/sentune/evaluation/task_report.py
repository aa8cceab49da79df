"""Plots and markdown for multi-label and regression metrics (`task_metrics.py` dicts).

Multi-label: a per-label F1 bar chart (per_label_f1.png) and a per-label table with thresholds and
confusion counts. Regression: predicted-vs-true scatter (scatter.png) and a residual histogram
(residuals.png). The single-label plots and tables stay in report.py, which calls in here by task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BAR_INCHES = (7.0, 7.0)
SCATTER_INCHES = (5.0, 5.0)
RESIDUAL_INCHES = (5.0, 3.5)


def plot_per_label_f1(metrics: dict, path: str | Path) -> Path:
    """Horizontal bars of every label's F1 at its threshold, worst at the bottom, macro-F1 as a line."""
    from sentune.evaluation.report import _figure, _save, plot_text

    rows = sorted(metrics["per_label"].items(), key=lambda kv: kv[1]["f1"])
    fig = _figure(BAR_INCHES)
    ax = fig.subplots()
    ax.barh(range(len(rows)), [r["f1"] for _, r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels=[f"{plot_text(name)} ({r['support']})" for name, r in rows], fontsize=7)
    ax.axvline(metrics["macro_f1"], color="tab:red", linestyle="--", label=f"macro-F1 {metrics['macro_f1']:.3f}")
    ax.set(xlim=(0, 1), xlabel="F1 (support in brackets)", title="F1 per label")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_scatter(metrics: dict, path: str | Path) -> Path:
    from sentune.evaluation.report import _figure, _save

    y, p = np.asarray(metrics["targets"]), np.asarray(metrics["predictions"])
    fig = _figure(SCATTER_INCHES)
    ax = fig.subplots()
    ax.scatter(y, p, s=6, alpha=0.5)
    low, high = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="prediction = truth")
    ax.set(xlabel="true value", ylabel="predicted value",
           title=f"Predicted vs true (RMSE {metrics['rmse']:.3f}, Pearson {metrics['pearson']:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_residuals(metrics: dict, path: str | Path) -> Path:
    from sentune.evaluation.report import _figure, _save

    residuals = np.asarray(metrics["predictions"]) - np.asarray(metrics["targets"])
    fig = _figure(RESIDUAL_INCHES)
    ax = fig.subplots()
    ax.hist(residuals, bins=30, color="tab:blue", edgecolor="black")
    ax.axvline(0, color="k", linestyle="--", linewidth=1)
    ax.set(xlabel="predicted - true", ylabel="examples", title="Residuals")
    fig.tight_layout()
    return _save(fig, path)


def write_plots(out_dir: str | Path, metrics: dict) -> None:
    out_dir = Path(out_dir)
    if metrics["task"] == "multi_label":
        plot_per_label_f1(metrics, out_dir / "per_label_f1.png")
    else:
        plot_scatter(metrics, out_dir / "scatter.png")
        plot_residuals(metrics, out_dir / "residuals.png")


def markdown(metrics: dict, heading: str = "##") -> list[str]:
    if metrics["task"] == "regression":
        lines = ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {metrics[key]:.4f} |" for key, name in
                  (("rmse", "RMSE"), ("mae", "MAE"), ("r2", "R²"), ("pearson", "Pearson"), ("spearman", "Spearman"))]
        return lines + [f"| examples | {metrics['n']} |", "", "![predicted vs true](scatter.png)", "",
                        "![residuals](residuals.png)", ""]
    half = metrics.get("at_0.5") or {}
    tuned = "tuned thresholds" if metrics.get("thresholds") else "0.5"
    lines = [f"| metric | at {tuned} |" + (" at 0.5 |" if half else ""), "|---|---|" + ("---|" if half else "")]
    for key, name in (("macro_f1", "macro-F1"), ("micro_f1", "micro-F1"), ("samples_f1", "samples-F1"),
                      ("hamming_loss", "Hamming loss"), ("subset_accuracy", "subset accuracy")):
        lines.append(f"| {name} | {metrics[key]:.4f} |" + (f" {half[key]:.4f} |" if half else ""))
    lines += [f"| examples | {metrics['n']} |" + (" |" if half else ""), "", f"{heading} Per label", "",
              "![F1 per label](per_label_f1.png)", "",
              "| label | threshold | precision | recall | F1 | support | tp | fp | fn | tn |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in metrics["per_label"].items():
        lines.append(f"| {name} | {r['threshold']:.2f} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} "
                     f"| {r['support']} | {r['tp']} | {r['fp']} | {r['fn']} | {r['tn']} |")
    return lines + [""]


def balance_cell(task: str, counts: dict) -> str:
    """The data table's label-balance cell for a multi-label or regression split."""
    if task == "regression":
        return f"mean {counts['mean']:.4g}, std {counts['std']:.4g}, {counts['min']:.4g}..{counts['max']:.4g}"
    positives = counts.get("positives") or {}
    top = sorted(positives.items(), key=lambda kv: -kv[1])[:5]
    shown = ", ".join(f"{name} {count}" for name, count in top)
    return f"{counts['two_or_more']} with 2+ labels, {counts['no_label']} with none; most frequent: {shown}"
