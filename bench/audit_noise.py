"""Measure `sentune audit` against injected label noise, and `sentune select` in a simulated labelling loop.

    # (a) 10 % of N training rows flipped at random; audit's label findings vs the flips; test accuracy of
    #     training on the original, the noisy and the audited-and-cleaned data
    python bench/audit_noise.py noise --train ../shared/data/imdb/train.jsonl.gz \\
        --test ../shared/data/imdb/test_small.jsonl.gz --n 2000 --rate 0.1 --out runs/noise-imdb -- --preset imdb
    # (c) START labelled rows, then ROUNDS rounds of PER_ROUND chosen by each strategy (the oracle: the
    #     pool's own labels); test macro-recall after each round
    python bench/audit_noise.py loop --train ../shared/data/tweeteval_sentiment/train.jsonl.gz \\
        --test ../shared/data/tweeteval_sentiment/test_dev.jsonl.gz --pool 6000 --start 200 --rounds 5 \\
        --per-round 200 --out runs/loop-tweets -- --select-metric macro_recall

The audit's wall time is printed against one `train` run of the same setting on the same (noisy) rows: the
issue's target is at most 2.5x, which the shared frozen-layer cache is meant to make possible.
Arguments after `--` are `sentune train` flags (as `--name value`), applied to every training and the audit.
Prints markdown tables (docs/results.md takes them as they are) and writes every run under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from sentune import config
from sentune.data.readers import read_labelled_file
from sentune.inference.select import select
from sentune.training.audit import audit
from sentune.training.loop import run


def train_flags(extra: list[str]) -> tuple[str | None, dict]:
    """`--name value` pairs after `--` as config flags (a bare `--flag` is True, `--no-flag` False); --preset
    apart."""
    flags, preset, i = {}, None, 0
    while i < len(extra):
        name = extra[i].lstrip("-").replace("-", "_")
        value: object = not name.startswith("no_")
        name = name.removeprefix("no_")
        if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            value, i = extra[i + 1], i + 1
        if name == "preset":
            preset = str(value)
        else:
            flags[name] = value
        i += 1
    return preset, flags


def write_rows(path: Path, texts: list[str], labels: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for text, label in zip(texts, labels, strict=True):
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    return path


def sample(train: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    part = read_labelled_file(Path(train), "text", "label")
    rows = random.Random(seed).sample(range(len(part.texts)), min(n, len(part.texts)))
    return [part.texts[i] for i in rows], [str(part.labels[i]) for i in rows]


def flip(labels: list[str], rate: float, seed: int) -> tuple[list[str], list[int]]:
    """Labels with round(rate * n) rows moved to another class at random; the flipped rows."""
    rng = random.Random(seed)
    classes = sorted(set(labels))
    rows = sorted(rng.sample(range(len(labels)), round(rate * len(labels))))
    noisy = list(labels)
    for i in rows:
        noisy[i] = rng.choice([c for c in classes if c != labels[i]])
    return noisy, rows


def cfg_for(args, flags: dict, preset: str | None, out: Path, train_file: Path, **more):
    given = {**flags, "train_file": str(train_file), "test_file": args.test, "output_dir": str(out), **more}
    return config.resolve(preset, None, {k: v for k, v in given.items() if v is not None})


def test_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "final_metrics.json").read_text(encoding="utf-8"))


def precision_recall(ranked: list[int], flips: set[int]) -> dict:
    """Of the label findings (most likely first): precision and recall of all, and the precision at the
    first rank where recall reaches 0.5 (None when it never does)."""
    hits = np.cumsum([r in flips for r in ranked]) if ranked else np.zeros(0)
    found = int(hits[-1]) if len(hits) else 0
    half = next((k for k, h in enumerate(hits, start=1) if h >= 0.5 * len(flips)), None)
    return {"flagged": len(ranked), "precision": found / max(1, len(ranked)), "recall": found / max(1, len(flips)),
            "precision_at_recall_0.5": None if half is None else float(hits[half - 1]) / half}


def noise(args, preset, flags) -> None:
    out = Path(args.out)
    texts, labels = sample(args.train, args.n, args.seed)
    noisy, flipped = flip(labels, args.rate, args.seed)
    original = write_rows(out / "original.jsonl", texts, labels)
    noisy_file = write_rows(out / "noisy.jsonl", texts, noisy)
    start = time.perf_counter()
    report = audit(cfg_for(args, flags, preset, out / "audit", noisy_file), folds=args.folds)
    seconds = {"audit": time.perf_counter() - start}
    label_rows = [f["row"] for f in report.findings if f["kind"] == "label"]
    scores = precision_recall(label_rows, set(flipped))
    exclude = out / "label_issues.jsonl"  # the cleaned run drops the label findings only
    exclude.write_text("".join(json.dumps({"split": "train", "row": r}) + "\n" for r in label_rows), encoding="utf-8")
    acc = {}
    for name, file, ex in (("original", original, None), ("noisy", noisy_file, None),
                           ("cleaned", noisy_file, str(exclude))):
        start = time.perf_counter()
        acc[name] = test_metrics(run(cfg_for(args, flags, preset, out / name, file, exclude=ex)))["accuracy"]
        seconds[name] = time.perf_counter() - start
    recovered = (acc["cleaned"] - acc["noisy"]) / (acc["original"] - acc["noisy"]) \
        if acc["original"] != acc["noisy"] else None
    print("| data | rows | flipped | flagged | precision | recall | precision at recall 0.5 | test acc original "
          "| noisy | cleaned | share of the loss recovered | audit s / train s (noisy) |")
    print("|---|" + "---:|" * 11)
    print(
f"| {args.train} | {len(texts):,} | {len(flipped):,} | {scores['flagged']:,} | {scores['precision']:.3f} "
          f"| {scores['recall']:.3f} | {_num(scores['precision_at_recall_0.5'])} | {acc['original']:.4f} "
          f"| {acc['noisy']:.4f} | {acc['cleaned']:.4f} | {_num(recovered)} "
          f"| {seconds['audit']:.0f} / {seconds['noisy']:.0f} ({seconds['audit'] / seconds['noisy']:.2f}x) |")
    (out / "noise.json").write_text(json.dumps({"scores": scores, "accuracy": acc, "seconds": seconds,
                                                "flipped": flipped}, indent=1))


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def loop(args, preset, flags) -> None:
    out = Path(args.out)
    texts, labels = sample(args.train, args.pool, args.seed)
    curves = {}
    for strategy in args.strategies.split(","):
        labelled = list(range(args.start))  # the sample is shuffled already: its first rows are a random start
        curve = []
        for round_ in range(args.rounds + 1):
            where = out / strategy / f"round{round_}"
            train_file = write_rows(where / "labelled.jsonl", [texts[i] for i in labelled],
                                    [labels[i] for i in labelled])
            run_dir = run(cfg_for(args, flags, preset, where / "run", train_file))
            curve.append((len(labelled), test_metrics(run_dir)["macro_recall"]))
            if round_ == args.rounds:
                break
            taken = set(labelled)
            rest = [i for i in range(len(texts)) if i not in taken]
            pool_file = write_rows(where / "pool.jsonl", [texts[i] for i in rest], [labels[i] for i in rest])
            chosen = where / "chosen.csv"
            select(str(run_dir / "best"), str(pool_file), args.per_round, strategy, str(chosen), seed=args.seed)
            with open(chosen, newline="", encoding="utf-8") as f:
                picked = [int(r["row"]) for r in csv.DictReader(f)]
            labelled += [rest[i] for i in picked]
        curves[strategy] = curve
    print(loop_table(curves))
    (out / "loop.json").write_text(json.dumps(curves, indent=1))


def loop_table(curves: dict) -> str:
    """Macro-recall per round and strategy, and the labels each needs to reach random's final score."""
    strategies = list(curves)
    lines = ["| labels | " + " | ".join(strategies) + " |", "|---:|" + "---:|" * len(strategies)]
    for k in range(max(len(c) for c in curves.values())):
        n = next(c[k][0] for c in curves.values() if len(c) > k)
        lines.append(f"| {n:,} | " + " | ".join(f"{c[k][1]:.4f}" if len(c) > k else "" for c in curves.values()) + " |")
    if "random" in curves:
        target = curves["random"][-1][1]
        spent = curves["random"][-1][0]
        need = {s: next((n for n, score in c if score >= target), None) for s, c in curves.items()}
        reached = [f"{s} not reached" if n is None else f"{s} {n:,} ({n / spent:.0%} of random's)"
                   for s, n in need.items()]
        lines += ["", f"labels to reach random's final macro-recall ({target:.4f}): " + ", ".join(reached)]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("noise", "loop"))
    parser.add_argument("--train", required=True, help="labelled training file (text, label)")
    parser.add_argument("--test", required=True, help="labelled test file")
    parser.add_argument("--out", required=True, help="folder for every run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=2000, help="noise: training rows sampled")
    parser.add_argument("--rate", type=float, default=0.1, help="noise: share of labels flipped")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--pool", type=int, default=6000, help="loop: rows the strategies choose from")
    parser.add_argument("--start", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument("--strategies", default="entropy,margin,diverse,random")
    args = parser.parse_args(argv)
    preset, flags = train_flags(extra)
    (noise if args.what == "noise" else loop)(args, preset, flags)


if __name__ == "__main__":
    main(sys.argv[1:])
