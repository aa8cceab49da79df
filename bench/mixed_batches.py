"""What a served batch of mixed-length reviews costs per review: grouped as a server receives them, against
one review a model call. Run on an idle machine; prints ms/text (wall and CPU).

    python bench/mixed_batches.py MODEL_DIR [--reviews FILE] [--n 160] [--group 8] [--precision fp32]

Reviews are shuffled (seed 0) and cut to 4,000 characters, as `bench/serve_load.py` sends them; each group of
`--group` goes to `Classifier.encoded_logits` in one call, which plans its own batches (data/padding.py's
`bucket_batches`), against the same reviews one call each.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sentune.inference.classifier import Classifier  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imdb" / "test_small.jsonl.gz"


def per_text_ms(clf, ids: list[list[int]], group: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(ids), group):
        clf.encoded_logits(ids[i : i + group], batch_size=max(group, 1))
    n = len(ids)
    return (time.perf_counter() - wall) / n * 1000, (time.process_time() - cpu) / n * 1000


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--reviews", default=str(DATA))
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    with gzip.open(args.reviews, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"][:4000] for line in f if line.strip()]
    random.Random(0).shuffle(texts)
    clf = Classifier.load(args.model_dir, backend="torch", precision=args.precision)
    ids = clf.encode(texts[: args.n])
    print(f"{len(ids)} reviews, mean {sum(map(len, ids)) / len(ids):.0f} tokens, {args.precision}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| model calls | ms/text wall | CPU ms/text |\n|---|---:|---:|")
    for _ in range(args.rounds):
        for group in (1, args.group):
            wall, cpu = per_text_ms(clf, ids, group)
            print(f"| {'one review a call' if group == 1 else f'groups of {group}'} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
