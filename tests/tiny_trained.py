"""A tiny BERT trained for a few seconds on the toy sentiment data: confident, varied predictions.

Random tiny models give near-ties (every text ~50/50), which cannot show label order, temperature or
quantization damage; this one separates `conftest.POSITIVE` from `conftest.NEGATIVE` words.
"""

from __future__ import annotations

from pathlib import Path

from conftest import build_model, build_tokenizer, sentiment_rows


def train_tiny(path: Path, steps: int = 30, seed: int = 0) -> Path:
    import torch

    threads = torch.get_num_threads()
    # One thread: on a shared 2-core machine, two contended threads made this 13x slower (1.6 s vs 21 s).
    torch.set_num_threads(1)
    try:
        return _train(path, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(path: Path, steps: int, seed: int) -> Path:
    import torch

    tokenizer = build_tokenizer("bert")
    model = build_model("bert", vocab_size=len(tokenizer), seed=seed)
    rows = sentiment_rows(256, seed=1)
    enc = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([int(r["label"] == "pos") for r in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(rows), (32,), generator=generator)
        loss = model(input_ids=enc["input_ids"][batch], attention_mask=enc["attention_mask"][batch],
                     labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
