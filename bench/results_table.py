"""Print the markdown results table of docs/results.md from finished `sentune train` run directories.

    python bench/results_table.py runs/A=reference runs/C="+ layer decay" ...

Each argument is RUN_DIR or RUN_DIR=LABEL. Accuracy and macro-recall come from the run's own files
(final_metrics.json: the selected weights on test, evaluated once; metrics.jsonl: the per-epoch
validation scores). Wall and CPU time are read from `RUN_DIR.log` when it holds the output of
`/usr/bin/time -v sentune train ...` (the whole command: loading, cache build, epochs, test); without it
the table falls back to the manifest's start/end, which leaves out loading and the cache build. The cache
column says whether the run built its frozen-layer cache or reused one an earlier run had built (same
frozen layers and token ids), and how long that took: reuse is part of the speed-up, so it is shown.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

import yaml

TIME_FIELDS = {"wall": r"Elapsed \(wall clock\) time.*: (.+)", "user": r"User time \(seconds\): (.+)",
               "sys": r"System time \(seconds\): (.+)", "rss": r"Maximum resident set size \(kbytes\): (.+)"}


def parse_clock(text: str) -> float:
    """`h:mm:ss` or `m:ss.ss` (GNU time's format) in seconds."""
    seconds = 0.0
    for part in text.strip().split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def command_times(log: Path) -> dict | None:
    if not log.exists():
        return None
    text = log.read_text(encoding="utf-8", errors="replace")
    found = {k: re.search(p, text) for k, p in TIME_FIELDS.items()}
    if not all(found.values()):
        return None
    values = {k: m.group(1) for k, m in found.items()}
    return {"wall": parse_clock(values["wall"]), "cpu": float(values["user"]) + float(values["sys"]),
            "rss_gb": int(values["rss"]) / 2**20}


def cache_note(log: Path) -> str:
    """`built 193.6 s` / `reused 3.0 s` from the run's frozen-layer cache line; `–` when it had none."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    found = re.search(r"frozen-layer cache: .*?(built|reused) [\w+]+ in ([\d.]+) s", text)
    return f"{found.group(1)} {float(found.group(2)):.0f} s" if found else "–"


def manifest_wall(manifest: dict) -> float | None:
    if not (manifest.get("started") and manifest.get("ended")):
        return None
    fmt = "%Y-%m-%dT%H:%M:%S%z"
    return (datetime.strptime(manifest["ended"], fmt) - datetime.strptime(manifest["started"], fmt)).total_seconds()


def summarize(run_dir: Path, label: str) -> dict:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    final = json.loads((run_dir / "final_metrics.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    log = run_dir.with_name(run_dir.name + ".log")
    times = command_times(log) or {"wall": manifest_wall(manifest)}
    best = manifest.get("best_epoch")
    return {
        "label": label, "train": manifest["data"]["train"]["rows"], "freeze": cfg["model"]["freeze_layers"],
        "epochs": len(rows), "best": best, "acc": final["accuracy"],
        # accuracy of the selected epoch (manifest["best_score"], "best_acc" in older runs, is the selection
        # score, maybe macro-recall)
        "val": next((r["val_acc"] for r in rows if r["epoch"] == best), None),
        "val_selected": manifest.get("best_score", manifest.get("best_acc")),
        "select_metric": manifest.get("select_metric", "accuracy"),
        "macro_recall": final["macro_recall"], "macro_f1": final["macro_f1"], "n_test": final["n"],
        "cache": cache_note(log), **times,
        "data": tuple(manifest["data"].get(split, {}).get("fingerprint") for split in ("train", "validation", "test")),
    }


def fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None else format(value, pattern)


def markdown(rows: list[dict]) -> str:
    head = ("| setting | train n | frozen | epochs (best) | val acc | test acc | test macro-F1 | test macro-recall "
            "| cache | wall s | CPU s |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        if r["select_metric"] != "accuracy":
            r["label"] += f" (selected on val {r['select_metric'].replace('_', '-')} {r['val_selected']:.4f})"
        lines.append(
            f"| {r['label']} | {r['train']:,} | {r['freeze']} | {r['epochs']} ({r['best']}) | {fmt(r['val'], '.4f')} "
            f"| **{r['acc']:.4f}** | {r['macro_f1']:.4f} | {r['macro_recall']:.4f} | {r['cache']} "
            f"| {fmt(r.get('wall'), '.0f')} | {fmt(r.get('cpu'), '.0f')} |")
    return "\n".join(lines)


def read_runs(specs: list[str], read_one) -> list[dict]:
    """`RUN_DIR` or `RUN_DIR=LABEL` arguments, each read into a table row by `read_one(path, label)`."""
    rows = []
    for spec in specs:
        path, _, label = spec.partition("=")
        rows.append(read_one(Path(path), label or Path(path).name))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=LABEL")
    args = ap.parse_args()
    rows = read_runs(args.runs, summarize)
    print(markdown(rows))
    if len(rows) > 1:
        splits = ("train", "validation", "test")
        same = [split for i, split in enumerate(splits) if len({r["data"][i] for r in rows}) == 1]
        differ = [split for split in splits if split not in same]
        print(f"\nSame examples in every row (data fingerprints equal): {', '.join(same) or 'none'}"
              + (f"; different: {', '.join(differ)}." if differ else "."))


if __name__ == "__main__":
    main()
