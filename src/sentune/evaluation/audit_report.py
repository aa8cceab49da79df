"""`sentune audit`'s files: audit.md (tables, plots, top examples), issues.jsonl (one finding a line, ranked)
and issues.csv (the same findings for a person to edit: an `action` column of drop | relabel | keep that
`sentune train --exclude issues.csv` reads back). CSV cells that a spreadsheet would run as a formula
(= + - @ tab CR first) get a leading apostrophe; `data/edits.py` removes it when reading.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sentune import tasks
from sentune.atomic import atomic_write_text
from sentune.data.edits import safe_cell
from sentune.evaluation.audit_findings import KINDS
from sentune.evaluation.plots import figure, save

CSV_COLUMNS = ("rank", "action", "kind", "split", "row", "text", "given", "suggested", "score", "conflict",
               "other_split", "other_row", "other_given")
TOP = 10  # findings per kind shown in audit.md
SHOWN = 3  # findings per kind in the printed summary (one screen)
WHAT = {"label": "likely label errors (cleanlab, out-of-fold scores)",
        "duplicate": "duplicates within train (normalised text or near features)",
        "leak": "training rows with a twin in validation/test (leakage)",
        "outlier": "outliers (far from every other training text)"}


@dataclass
class AuditReport:
    task: str
    label_names: list[str]
    findings: list[dict]
    balance: dict
    rows: dict
    scores: np.ndarray
    given: list
    sources: dict = field(default_factory=dict)
    folds: int = 0
    files: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # checks that could not run, and why

    def count(self, kind: str) -> int:
        return sum(f["kind"] == kind for f in self.findings)


def write_report(out_dir: Path, report: AuditReport) -> None:
    out_dir = Path(out_dir)
    lines = [json.dumps(f, ensure_ascii=False) for f in report.findings]
    atomic_write_text(out_dir / "issues.jsonl", "".join(line + "\n" for line in lines))
    atomic_write_text(out_dir / "issues.csv", issues_csv(report.findings))
    plots = {"balance": plot_balance(report, out_dir / "balance.png"),
             "findings": plot_findings(report, out_dir / "findings.png")}
    atomic_write_text(out_dir / "audit.md", markdown(report, {k: v for k, v in plots.items() if v}))
    report.files = {"report": str(out_dir / "audit.md"), "issues": str(out_dir / "issues.jsonl"),
                    "csv": str(out_dir / "issues.csv")}


def issues_csv(findings: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for rank, f in enumerate(findings, start=1):
        other = f.get("other") or {}
        row = {**f, "rank": rank, "action": "drop", "other_split": other.get("split"),
               "other_row": other.get("row"), "other_given": other.get("given")}
        writer.writerow([safe_cell(row.get(c)) for c in CSV_COLUMNS])
    return buffer.getvalue()


def summary_lines(report: AuditReport) -> list[str]:
    """One screen: what was audited, how many of each finding, the top ones, where the files are."""
    lines = [f"Audited {report.rows.get('train', 0):,} training rows ({report.task}, {report.folds} folds)"]
    lines += [f"  {report.count(kind):>6,}  {WHAT[kind]}" for kind in KINDS]
    lines.append(f"label findings ({report.task}): {tasks.get_task(report.task).label_audit}")
    lines += [f"note: {note}" for note in report.notes]
    if report.findings:
        lines.append("Top findings (all in issues.jsonl):")
        for kind in KINDS:
            lines += ["  " + _line(f) for f in [f for f in report.findings if f["kind"] == kind][:SHOWN]]
    lines += [f"{name}: {path}" for name, path in report.files.items()]
    return lines


def _line(f: dict) -> str:
    text = " ".join(f["text"].split())
    text = text[:57] + "..." if len(text) > 60 else text
    change = f"{f['given']} -> {f['suggested']}" if f["suggested"] is not None else f"{f['given']}"
    other = f.get("other")
    where = f" ~ {other['split']}:{other['row']}" + (" (labels disagree)" if f.get("conflict") else "") \
        if other else ""
    return f"{f['kind']:<9} {f['split']}:{f['row']:<6} {change}{where}  {f['score']:.3f}  {text!r}"


def markdown(report: AuditReport, plots: dict) -> str:
    out = ["# Data audit", "", f"Task: {report.task}; {report.folds}-fold out-of-fold scores.", "",
           "| split | rows | source |", "|---|---:|---|"]
    out += [f"| {s} | {n:,} | {report.sources.get(s, '')} |" for s, n in report.rows.items()]
    out += ["", "## Findings", "", "| kind | count | what |", "|---|---:|---|"]
    out += [f"| {kind} | {report.count(kind):,} | {WHAT[kind]} |" for kind in KINDS]
    out += ["", f"A `label` finding ({report.task}): {tasks.get_task(report.task).label_audit}."]
    out += [f"\n**Note:** {note}." for note in report.notes]
    out += [""] + [f"![{name}]({Path(path).name})" for name, path in plots.items()]
    out += ["", "## Class balance", "", "```", json.dumps(report.balance, indent=1), "```"]
    for kind in KINDS:
        top = [f for f in report.findings if f["kind"] == kind][:TOP]
        if not top:
            continue
        out += ["", f"## Top {kind} findings", "", "| split:row | given | suggested | score | other | text |",
                "|---|---|---|---:|---|---|"]
        out += [_table_row(f) for f in top]
    out += ["", "Every finding is in issues.jsonl (ranked) and issues.csv (set `action` to drop, relabel or keep, "
            "then `sentune train --exclude issues.csv`)."]
    return "\n".join(out) + "\n"


def _table_row(f: dict) -> str:
    other = f.get("other")
    where = f"{other['split']}:{other['row']}" + (" (disagree)" if f.get("conflict") else "") if other else ""
    text = " ".join(f["text"].split())[:120].replace("|", "\\|")
    return f"| {f['split']}:{f['row']} | {f['given']} | {f['suggested'] or ''} | {f['score']:.3f} | {where} | {text} |"


def plot_balance(report: AuditReport, path: Path) -> Path | None:
    """Rows per class (positives per label for multi-label) in each split; none for regression targets."""
    counts = {s: (b.get("positives") if "positives" in b else b) for s, b in report.balance.items()}
    if not all(isinstance(c, dict) and all(isinstance(v, int) for v in c.values()) for c in counts.values()):
        return None
    fig = figure((7.0, 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(report.label_names))
    width = 0.8 / max(1, len(counts))
    for i, (split, c) in enumerate(counts.items()):
        ax.bar(x + i * width, [c.get(n, 0) for n in report.label_names], width, label=split)
    ax.set_xticks(x + 0.4 - width / 2, labels=report.label_names, rotation=45 if len(x) > 4 else 0)
    ax.set_ylabel("rows")
    ax.set_title("class balance")
    ax.legend()
    return save(fig, path)


def plot_findings(report: AuditReport, path: Path) -> Path:
    fig = figure((6.0, 3.5))
    ax = fig.add_subplot()
    ax.bar(list(KINDS), [report.count(kind) for kind in KINDS], color="tab:red")
    ax.set_ylabel("findings")
    ax.set_title(f"findings in {report.rows.get('train', 0):,} training rows")
    return save(fig, path)
