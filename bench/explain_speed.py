"""Seconds per explained text (integrated gradients, `sentune explain`) for tweets and 512-token reviews.

    python bench/explain_speed.py MODEL_DIR --tweets FILE --reviews FILE [--steps 16 32 64] [--n 10]

For every step count it prints seconds per text, explained one request at a time (`alone`: what `POST
/explain` with one text costs, the interactive case) and all texts in one call (`together`: texts batched
into shared integrated-gradients passes, as `sentune explain --input` does), and the convergence delta
relative to the explained change |f(text) - f(baseline)| (median and worst), which is what picks the
default --steps; then one line with s/tweet and s/512-token review at the default steps, alone. Reviews are
explained at max_length 512 whatever the folder was trained at (MiniLM and BERT-base take 512 positions),
so a long review fills the whole window. Timings on a shared machine are contended: say so with them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time

import torch

from sentune.inference.classifier import Classifier
from sentune.inference.explain import DEFAULT_STEPS


def read_texts(path: str, n: int, min_words: int = 0) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if len(text.split()) >= min_words:
                out.append(text)
            if len(out) == n:
                break
    return out


def measure(clf: Classifier, texts: list[str], steps: int, together: bool) -> dict:
    clf.explain(texts[:1], steps=steps)  # warm-up: model copy, first-call allocations
    start = time.perf_counter()
    if together:
        records = clf.explain(texts, steps=steps)
    else:
        records = [clf.explain([text], steps=steps)[0] for text in texts]
    seconds = (time.perf_counter() - start) / len(texts)
    rel = [abs(r["delta"]) / max(abs(r["value"] - r["baseline_value"]), 1e-6) for r in records]
    tokens = statistics.mean(len(ids) for ids in clf.encode(texts))
    return {"steps": steps, "s_per_text": seconds, "tokens": tokens, "rel_delta_median": statistics.median(rel),
            "rel_delta_max": max(rel)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--tweets", required=True)
    ap.add_argument("--reviews", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[DEFAULT_STEPS])
    ap.add_argument("--n", type=int, default=10, help="texts per kind")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clf = Classifier.load(args.model_dir, backend="torch")
    kinds = {"tweet": (read_texts(args.tweets, args.n), clf.max_length),
             "review (512 tokens)": (read_texts(args.reviews, args.n, min_words=450), 512)}
    print(f"model {clf.name}, torch threads {torch.get_num_threads()}, {args.n} texts per kind")
    print("| text | tokens | steps | explained | s / text | delta / change (median) | (worst) |")
    print("|---|---:|---:|---|---:|---:|---:|")
    interactive = {}
    for kind, (texts, max_length) in kinds.items():
        clf.settings.max_length = max_length
        for steps in args.steps:
            for together in (False, True):
                r = measure(clf, texts, steps, together)
                if steps == DEFAULT_STEPS and not together:
                    interactive[kind] = r["s_per_text"]
                print(f"| {kind} | {r['tokens']:.0f} | {steps} | {'together' if together else 'alone'} | "
                      f"{r['s_per_text']:.2f} | {100 * r['rel_delta_median']:.2f} % | "
                      f"{100 * r['rel_delta_max']:.2f} % |", flush=True)
    if len(interactive) == 2:
        tweet, review = interactive.values()
        print(f"\nat the default {DEFAULT_STEPS} steps, one text a call: {tweet:.2f} s/tweet, "
              f"{review:.2f} s/512-token review")


if __name__ == "__main__":
    main()
