"""Plots (PNG, matplotlib's Agg canvas: no display needed) and markdown reports.

`write_eval_report` serves `sentune evaluate --output-dir`; `write_training_report` turns a run
directory (config.yaml, manifest.json, metrics.jsonl, final_metrics.json) into curves.png and report.md.
Figures are built with `matplotlib.figure.Figure` rather than pyplot, so nothing global (backend,
current figure) is touched and the pixel size of every PNG is fixed: inches x DPI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sentune.atomic import atomic_write_text
from sentune.errors import WriteError
from sentune.evaluation.metrics import ece_of_table, selection_key
from sentune.rundir import read_json, read_jsonl

DPI = 100
CONFUSION_INCHES = (6.0, 5.0)
RELIABILITY_INCHES = (5.0, 6.0)
CURVES_INCHES = (11.0, 4.0)
SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


def _figure(inches: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=inches, dpi=DPI)


def plot_text(name) -> str:
    """A label name as matplotlib text: an unescaped `$` would start mathtext (`price $x^{$` is a parse error)."""
    return str(name).replace("$", r"\$")


def _save(fig, path: str | Path) -> Path:
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
    fig = _figure(CONFUSION_INCHES)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class")
    k = len(label_names)
    slanted = k > 4  # long or many names would overlap
    names = [plot_text(name) for name in label_names]
    ax.set_xticks(range(k), labels=names, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fontsize = 10 if k <= 6 else max(5, 60 // k)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{counts[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center", fontsize=fontsize,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(labels, probs, path: str | Path, bins: int = 15) -> Path:
    """Reliability diagram of top-label confidence (bars: accuracy per bin) over a confidence histogram."""
    from sentune.evaluation.metrics import reliability_table

    return plot_reliability_table(reliability_table(labels, probs, bins), path)


def plot_reliability_table(table: dict, path: str | Path) -> Path:
    """The same diagram from `compute_metrics(...)["reliability"]` (no probabilities needed)."""
    bins = table["bins"]
    centers = (np.arange(bins) + 0.5) / bins
    acc = np.array([np.nan if a is None else a for a in table["accuracy"]])
    conf = np.array([np.nan if c is None else c for c in table["confidence"]])
    fig = _figure(RELIABILITY_INCHES)
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
    return _save(fig, path)


def plot_curves(metrics_rows: list[dict], best_epoch: int | None, path: str | Path,
                metric: tuple[str, str] = ("acc", "Accuracy")) -> Path:
    """Loss (left) and accuracy (right; or `metric`: (field suffix, title)) per epoch for train/validation/test;
    the selected epoch marked."""
    fig = _figure(CURVES_INCHES)
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
    return _save(fig, path)


# ---- markdown --------------------------------------------------------------------------------------------
def metrics_markdown(metrics: dict, heading: str = "##") -> list[str]:
    """Headline table, per-class table and the two evaluation plots (relative links)."""
    if metrics.get("task") in ("multi_label", "regression"):
        from sentune.evaluation.task_report import markdown

        return markdown(metrics, heading)
    lines = [
        "| metric | value |", "|---|---|",
        f"| accuracy | {metrics['accuracy']:.4f} |",
        f"| macro-F1 | {metrics['macro_f1']:.4f} |",
        f"| macro-recall | {metrics['macro_recall']:.4f} |",
        f"| expected calibration error (15 bins) | {metrics['ece']:.4f} |",
        f"| negative log-likelihood | {metrics['nll']:.4f} |",
        f"| examples | {metrics['n']} |",
        "", f"{heading} Per class", "",
        "| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | "
                     f"{row['support']} |")
    lines += ["", f"{heading} Confusion matrix", "", "![confusion matrix](confusion_matrix.png)", ""]
    if metrics.get("reliability"):
        lines += [f"{heading} Reliability", "", "![reliability diagram](reliability.png)", ""]
    return lines


def write_eval_plots(out_dir: str | Path, metrics: dict) -> None:
    out_dir = Path(out_dir)
    if metrics.get("task") in ("multi_label", "regression"):
        from sentune.evaluation.task_report import write_plots

        return write_plots(out_dir, metrics)
    plot_confusion(metrics["confusion_matrix"], metrics["label_names"], out_dir / "confusion_matrix.png")
    if metrics.get("reliability"):
        plot_reliability_table(metrics["reliability"], out_dir / "reliability.png")


def write_eval_report(out_dir: str | Path, metrics: dict, title: str | None = None) -> Path:
    """metrics.json, confusion_matrix.png, reliability.png and report.md (embedding them) in out_dir."""
    from sentune.evaluation.evaluate import write_metrics

    out_dir = Path(out_dir)
    write_metrics(out_dir / "metrics.json", metrics)
    write_eval_plots(out_dir, metrics)
    lines = [f"# {title or 'Evaluation of ' + str(metrics.get('model', 'the model'))}", ""]
    data = metrics.get("data") or {}
    if data:
        limit = f", first {data['limit']} (seeded sample)" if data.get("limit") else ""
        lines += [f"Data: `{data.get('source')}` (split {data.get('split')}{limit}).", ""]
    if metrics.get("temperature") is not None:
        lines.append(f"Probabilities use the stored calibration temperature T = {metrics['temperature']:.4f}.")
        raw = metrics.get("uncalibrated")
        if raw:
            lines.append(f"Without it (T = 1) on the same data: ECE {raw['ece']:.4f} (now {metrics['ece']:.4f}), "
                         f"NLL {raw['nll']:.4f} (now {metrics['nll']:.4f}).")
        lines.append("")
    lines += metrics_markdown(metrics)
    return _write_text(out_dir / "report.md", "\n".join(lines))


def _write_text(path: Path, text: str) -> Path:
    atomic_write_text(path, text.rstrip() + "\n")  # a failed write is a WriteError, the old report stays
    return path


def write_training_report(run_dir: str | Path) -> Path:
    """curves.png (+ the test evaluation plots when final_metrics.json exists) and report.md of a run.

    Reads config.yaml, manifest.json, metrics.jsonl and (optionally) final_metrics.json, a
    `compute_metrics` dict of the selected weights on test. Returns the report's path.
    """
    import yaml

    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) if (
        run_dir / "config.yaml").exists() else {}
    manifest = read_json(run_dir / "manifest.json")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    final = read_json(run_dir / "final_metrics.json")  # {} when the run has no test metrics
    train_cfg = cfg.get("train") or {}
    best = best_epoch(rows, train_cfg.get("select_on", "validation"), manifest, final,
                      train_cfg.get("select_metric", "accuracy"))
    lines = [f"# Training run `{run_dir.name}`", ""]
    lines += _config_section(cfg, manifest) + _data_section(manifest)
    lines += _training_section(run_dir, rows, best, cfg)
    if manifest.get("started"):
        lines += [f"Started {manifest['started']}, ended {manifest.get('ended') or '(not recorded)'}.", ""]
    if final:
        write_eval_plots(run_dir, final)
        lines += ["## Test metrics of the selected weights", ""] + metrics_markdown(final, heading="###")
    return _write_text(run_dir / "report.md", "\n".join(lines))


def best_epoch(rows: list[dict], select_on: str, manifest: dict, final: dict | None,
               select_metric: str = "accuracy") -> int | None:
    """The selected epoch: as recorded by the run if it says, else the first best on the selection split."""
    for source in (manifest, final or {}):
        if source.get("best_epoch") is not None:
            return int(source["best_epoch"])
    key = selection_key(select_on, select_metric)
    scored = [row for row in rows if row.get(key) is not None]
    if not scored:
        return rows[-1]["epoch"] if rows else None
    return max(scored, key=lambda row: (row[key], -row["epoch"]))["epoch"]


SUMMARY_FIELDS = {
    "model": ("model", "freeze_layers"),
    "data": ("dataset", "train_file", "validation_file", "test_file", "max_length", "truncation",
             "limit_train", "limit_eval"),
    "train": ("batch_size", "precision", "lr_encoder", "lr_head", "weight_decay", "layer_decay", "scheduler",
              "warmup_ratio", "epochs", "patience", "select_on", "select_metric", "seed", "cache"),
}


def _config_section(cfg: dict, manifest: dict) -> list[str]:
    import yaml

    lines = ["## Configuration", "", "| setting | value |", "|---|---|"]
    for section, names in SUMMARY_FIELDS.items():
        values = cfg.get(section) or {}
        lines += [f"| {name} | `{values[name]}` |" for name in names if values.get(name) is not None]
    device = manifest.get("device") or {}
    if device:
        precision = f" ({manifest['precision']})" if manifest.get("precision") else ""
        name = " ".join(str(x) for x in (device.get("type"), device.get("name")) if x)
        lines.append(f"| device | {name}{precision} |")
    versions = manifest.get("versions") or {}
    if versions:
        lines.append("| versions | " + ", ".join(f"{k} {v}" for k, v in versions.items()) + " |")
    full = yaml.safe_dump(cfg, sort_keys=False).rstrip()
    return lines + ["", "<details><summary>full config.yaml</summary>", "", "```yaml", full, "```", "",
                    "</details>", ""]


def _data_section(manifest: dict) -> list[str]:
    data = manifest.get("data") or {}
    if not data:
        return []
    lines = ["## Data", "",
             "| split | rows | label balance | source | fingerprint |", "|---|---|---|---|---|"]
    for split, info in data.items():
        info = info or {}
        counts = info.get("label_counts") or {}
        if manifest.get("task", "single_label") != "single_label":
            from sentune.evaluation.task_report import balance_cell

            balance = balance_cell(manifest["task"], counts)
        else:
            total = sum(counts.values()) or 1
            balance = ", ".join(f"{name} {count} ({count / total:.1%})" for name, count in counts.items())
        lines.append(f"| {split} | {info.get('rows', '')} | {balance} | `{info.get('source', '')}` | "
                     f"`{str(info.get('fingerprint', ''))[:12]}` |")
    return lines + [""]


def _training_section(run_dir: Path, rows: list[dict], best: int | None, cfg: dict) -> list[str]:
    if not rows:
        return ["## Training", "", "No epoch finished (metrics.jsonl is empty).", ""]
    metric_name = (cfg.get("train") or {}).get("select_metric", "accuracy")
    task = (cfg.get("data") or {}).get("task", "single_label")
    # outside single-label, accuracy means little: the curve and the table show the selection metric
    column = "acc" if task in ("single_label", "auto") else metric_name
    plot_curves(rows, best, run_dir / "curves.png",
                ("acc", "Accuracy") if column == "acc" else (column, column.replace("_", "-")))
    seconds = [row["epoch_seconds"] for row in rows if row.get("epoch_seconds") is not None]
    speed = [row["train_samples_per_second"] for row in rows if row.get("train_samples_per_second")]
    select_on = (cfg.get("train") or {}).get("select_on", "validation")
    metric = (cfg.get("train") or {}).get("select_metric", "accuracy").replace("_", "-")
    lines = ["## Training", "",
             f"- epochs run: {len(rows)}; selected epoch: {best} (on {select_on} {metric})"]
    if seconds:
        lines.append(f"- time per epoch: {np.mean(seconds):.1f} s on average ({sum(seconds):.0f} s in all)")
    if speed:
        lines.append(f"- training throughput: {np.mean(speed):.1f} samples/s on average")
    lines += ["", "![loss and accuracy per epoch](curves.png)", "",
              f"| epoch | train loss | train {column} | val {column} | test {column} | seconds | samples/s |",
              "|---|---|---|---|---|---|---|"]
    for row in rows:
        mark = " (selected)" if row["epoch"] == best else ""
        cells = [_fmt(row.get(k)) for k in ("train_loss", f"train_{column}", f"val_{column}", f"test_{column}")]
        cells += [_fmt(row.get("epoch_seconds"), 1), _fmt(row.get("train_samples_per_second"), 1)]
        lines.append(f"| {row['epoch']}{mark} | " + " | ".join(cells) + " |")
    return lines + [""]


def _fmt(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
