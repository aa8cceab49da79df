"""Where a served batch of long reviews spends its time: tokenization, padding, attention, linear layers.

    python bench/serve_profile.py MODEL_DIR [--reviews FILE] [--n 32] [--budgets 1024 2048 4096 8192]
    python bench/serve_profile.py /tmp/model --n 4 --budgets 256 --max-length 128   # a smoke run

It runs what the model thread of `sentune serve` runs for one micro-batch of `--n` reviews (the
Classifier's prepare, then its bucketed, token-budgeted model calls) under torch.profiler, once per padded
token budget (`--max-batch-tokens`), and, for comparison, the plain path a pipeline server takes with a
batch: every review padded to the batch's longest, the full model. Per run it prints milliseconds in
tokenization, padding, attention (the fused scaled_dot_product_attention kernel, or the matmul/softmax ops
of an unfused one), linear layers (GEMMs) and the rest of the model, the padded tokens computed against the
real ones, and ms per real token: the budget with the lowest is the one to serve with on this machine.
Run it on an idle machine: on a shared one the split is still informative, the absolute times are not.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imdb" / "test_small.jsonl.gz"
ATTENTION = ("scaled_dot_product", "flash_attention", "efficient_attention", "bmm", "softmax")
LINEAR = ("aten::addmm", "aten::mm", "aten::matmul", "aten::linear", "mkldnn", "onednn")
PHASES = ("tokenize", "pad")


def read_reviews(path: str, n: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path) as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    return sorted(texts, key=len, reverse=True)[:n]  # long reviews: the case the issue is about


def sentune_batch(clf, texts: list[str], batch_size: int) -> tuple[int, int]:
    """The model thread's work for one micro-batch; (padded tokens, real tokens)."""
    from sentune.data.padding import pad_rows

    with record_function("tokenize"):
        ids = clf.prepare(texts)
    padded = 0
    pad_id = clf.tokenizer.pad_token_id or 0
    for rows, width in clf.batch_plan([len(row) for row in ids], batch_size):
        with record_function("pad"):
            arrays = pad_rows([ids[i] for i in rows], width, fill=pad_id)
        with record_function("model"):
            clf.runner(*arrays)
        padded += len(rows) * width
    return padded, sum(map(len, ids))


def pipeline_batch(clf, texts: list[str], batch_size: int) -> tuple[int, int]:
    """What a plain server does with a batch: pad to the longest, run the full model."""
    with record_function("tokenize"):
        enc = clf.tokenizer(texts, truncation=True, max_length=clf.max_length, padding=True, return_tensors="pt")
    model = clf.runner.model
    for start in range(0, len(texts), batch_size):
        with record_function("model"), torch.inference_mode():
            model(input_ids=enc["input_ids"][start:start + batch_size],
                  attention_mask=enc["attention_mask"][start:start + batch_size])
    return int(enc["input_ids"].numel()), int(enc["attention_mask"].sum())


def split(prof) -> dict[str, float]:
    """Milliseconds per phase: the annotated ones (total time), then ops inside the model (self time)."""
    out = dict.fromkeys((*PHASES, "attention", "linear", "other model"), 0.0)
    for event in prof.key_averages():
        if event.key in PHASES:
            out[event.key] += event.cpu_time_total / 1000
        elif event.key == "model":
            out["other model"] += event.cpu_time_total / 1000
    for event in prof.key_averages():
        if not event.key.startswith("aten::") and not any(k in event.key for k in LINEAR):
            continue
        self_ms = event.self_cpu_time_total / 1000
        if any(k in event.key for k in ATTENTION):
            out["attention"] += self_ms
        elif any(k in event.key for k in LINEAR):
            out["linear"] += self_ms
        else:
            continue
        out["other model"] -= self_ms
    return out


def run(label: str, work, clf, texts: list[str], batch_size: int) -> None:
    work(clf, texts, batch_size)  # warm-up: kernels, allocations
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        padded, real = work(clf, texts, batch_size)
    ms = split(prof)
    total = sum(ms.values())
    cells = " | ".join(f"{ms[k]:.0f}" for k in ms)
    print(f"| {label} | {cells} | {total:.0f} | {padded} / {real} | {total / real:.3f} |", flush=True)


def main(argv=None) -> None:
    from sentune.inference.classifier import Classifier

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--reviews", default=str(DATA))
    ap.add_argument("--n", type=int, default=32, help="reviews in the served batch")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64, help="--max-batch of sentune serve")
    ap.add_argument("--budgets", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clf = Classifier.load(args.model_dir, backend="torch", precision=args.precision)
    clf.settings.max_length = args.max_length
    texts = read_reviews(args.reviews, args.n)
    print(f"{len(texts)} reviews, max length {args.max_length}, {clf.precision}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, attention {clf.runner.model.config._attn_implementation}, "
          f"ONEDNN_PRIMITIVE_CACHE_CAPACITY={os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY', 'default')}, "
          f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    print("| path | tokenize ms | pad ms | attention ms | linear ms | other model ms | total ms "
          "| padded / real tokens | ms / real token |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    run(f"pipeline-style (batch {args.batch_size}, pad to longest, full model)", pipeline_batch, clf, texts,
        args.batch_size)
    for budget in args.budgets:
        clf.max_batch_tokens = budget
        run(f"sentune, budget {budget}", sentune_batch, clf, texts, args.batch_size)


if __name__ == "__main__":
    main()
