"""Print the long-text table of docs/results.md: accuracy overall and on texts longer than one window.

    python bench/long_text.py runs/r256/A_head="truncate (head)" runs/r256/W_mean="windows, mean" ...

Each argument is RUN_DIR or RUN_DIR=LABEL, a finished `sentune train` run. Overall numbers come from the
run's own files as in `results_table.py` (the selected weights on test, evaluated once; wall and CPU time
from RUN_DIR.log). The long subset is the test texts whose tokens do not fit one window of the run's
--max-length: the run's test split is read again from its config.yaml (the same seeded sample) and
tokenized with its best/ tokenizer; each text's probabilities come from the run's test_probs.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_table import read_runs, summarize  # noqa: E402


def long_mask(run_dir: Path) -> tuple[np.ndarray, list[int]]:
    """Per test text: longer than one window? And its window count (1 for truncating runs)."""
    from transformers import AutoTokenizer

    from sentune import config
    from sentune.data import splits as data
    from sentune.data.text import _special_template
    from sentune.data.windows import window_spans

    cfg = config.load(run_dir / "config.yaml")
    test = data.load_splits(cfg.data, cfg.train.seed, cfg.train.select_on).test
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "best")
    prefix, suffix = _special_template(tokenizer)
    budget = cfg.data.max_length - len(prefix) - len(suffix)
    lengths = [len(ids) for ids in tokenizer(list(test["text"]), add_special_tokens=False,
                                              verbose=False)["input_ids"]]
    windows = [len(window_spans(n, budget, cfg.data.stride, cfg.data.max_windows))
               if cfg.data.long_text == "windows" else 1 for n in lengths]
    return np.asarray(lengths) > budget, windows


def row(run_dir: Path, label: str) -> dict:
    out = summarize(run_dir, label)
    saved = json.loads((run_dir / "test_probs.json").read_text(encoding="utf-8"))
    labels, probs = np.asarray(saved["label"]), np.asarray(saved["probs"])
    long, windows = long_mask(run_dir)
    correct = probs.argmax(1) == labels
    out.update(long_n=int(long.sum()), long_acc=float(correct[long].mean()),
               short_acc=float(correct[~long].mean()), windows=sum(windows))
    return out


def table(rows: list[dict]) -> str:
    head = ("| setting | epochs (best) | val acc | test acc | long-text acc (n) | short-text acc | test windows "
            "| cache | wall s | CPU s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in rows:
        cpu = f"{r['cpu']:.0f}" if r.get("cpu") is not None else "–"
        lines.append(f"| {r['label']} | {r['epochs']} ({r['best']}) | {r['val']:.4f} | **{r['acc']:.4f}** | "
                     f"{r['long_acc']:.4f} ({r['long_n']:,}) | {r['short_acc']:.4f} | {r['windows']:,} | "
                     f"{r['cache']} | {r['wall']:.0f} | {cpu} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=LABEL")
    args = parser.parse_args()
    rows = read_runs(args.runs, row)
    if len({r["data"] for r in rows}) > 1:
        print("warning: the runs did not all use the same data (fingerprints differ)", file=sys.stderr)
    print(table(rows))


if __name__ == "__main__":
    main()
