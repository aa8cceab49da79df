"""Markdown reports: `write_eval_report` serves `sentune evaluate --output-dir`; `write_training_report` turns
a run directory (config.yaml, manifest.json, metrics.jsonl, final_metrics.json) into curves.png and report.md.

Each task has its own metrics table and label-balance cell (tables at the end, keyed by the task type);
the plots they link to are drawn by plots.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sentune import tasks
from sentune.atomic import atomic_write_text
from sentune.evaluation.metrics import selection_key
from sentune.evaluation.plots import plot_curves, write_eval_plots
from sentune.rundir import read_json, read_jsonl


# ---- markdown --------------------------------------------------------------------------------------------
def metrics_markdown(metrics: dict, heading: str = "##") -> list[str]:
    """The task's headline table, per-class / per-label tables and its evaluation plots (relative links)."""
    return MARKDOWN[type(tasks.task_of_metrics(metrics))](metrics, heading)


def _class_markdown(metrics: dict, heading: str) -> list[str]:
    """Headline table, per-class table and the two evaluation plots."""
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


def _value_markdown(metrics: dict, heading: str) -> list[str]:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {metrics[key]:.4f} |" for key, name in
              (("rmse", "RMSE"), ("mae", "MAE"), ("r2", "R²"), ("pearson", "Pearson"), ("spearman", "Spearman"))]
    return lines + [f"| examples | {metrics['n']} |", "", "![predicted vs true](scatter.png)", "",
                    "![residuals](residuals.png)", ""]


def _label_set_markdown(metrics: dict, heading: str) -> list[str]:
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
        balance = BALANCE[type(tasks.task_of_metrics(manifest))](counts)
        lines.append(f"| {split} | {info.get('rows', '')} | {balance} | `{info.get('source', '')}` | "
                     f"`{str(info.get('fingerprint', ''))[:12]}` |")
    return lines + [""]


def _training_section(run_dir: Path, rows: list[dict], best: int | None, cfg: dict) -> list[str]:
    if not rows:
        return ["## Training", "", "No epoch finished (metrics.jsonl is empty).", ""]
    metric_name = (cfg.get("train") or {}).get("select_metric", "accuracy")
    # outside single-label, accuracy means little: the curve and the table show the selection metric
    task = tasks.task_of_metrics(cfg.get("data") or {})
    column = "acc" if "accuracy" in task.select_metrics else metric_name
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


def _class_balance(counts: dict) -> str:
    total = sum(counts.values()) or 1
    return ", ".join(f"{name} {count} ({count / total:.1%})" for name, count in counts.items())


def _value_balance(counts: dict) -> str:
    return f"mean {counts['mean']:.4g}, std {counts['std']:.4g}, {counts['min']:.4g}..{counts['max']:.4g}"


def _label_set_balance(counts: dict) -> str:
    positives = counts.get("positives") or {}
    top = sorted(positives.items(), key=lambda kv: -kv[1])[:5]
    shown = ", ".join(f"{name} {count}" for name, count in top)
    return f"{counts['two_or_more']} with 2+ labels, {counts['no_label']} with none; most frequent: {shown}"


MARKDOWN = {tasks.SingleLabel: _class_markdown, tasks.MultiLabel: _label_set_markdown,
            tasks.Regression: _value_markdown}
BALANCE = {tasks.SingleLabel: _class_balance, tasks.MultiLabel: _label_set_balance, tasks.Regression: _value_balance}
