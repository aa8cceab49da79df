"""Long texts, whole: split a text's tokens into overlapping windows (`--long-text windows`).

Each window holds at most `max_length` tokens with the special tokens, so it is an ordinary model input;
consecutive windows share exactly `stride` content tokens, and together they cover every token of the text.
A text that fits one window becomes exactly the one sequence `encode_texts` gives it (so a short text gets
the `truncate` result). With more than `max_windows` windows, `max_windows` of them are kept, spread evenly
over the text, the first (head) and the last (tail) always among them.

`Groups` says which windows (rows) belong to which document: batches, the frozen-layer cache and the model
see windows as rows and pool each document's rows into one output (`sentune.pooling`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from sentune.data.text import tokenize_content
from sentune.errors import ConfigError


def window_spans(n: int, budget: int, stride: int, max_windows: int | None = None) -> list[tuple[int, int]]:
    """[start, end) content-token spans of windows over `n` tokens: `budget` tokens each, `stride` shared.

    Windows start every `budget - stride` tokens until one reaches the end; the last may be shorter (it
    still holds more than `stride` tokens). An empty text is one empty window.
    """
    if not 0 <= stride < budget:
        raise ConfigError(f"--stride {stride} must be smaller than the {budget} content tokens of a window; "
                          "lower --stride or raise --max-length")
    step = budget - stride
    spans = [(0, min(budget, n))]
    while spans[-1][1] < n:
        start = spans[-1][0] + step
        spans.append((start, min(start + budget, n)))
    if max_windows is not None and len(spans) > max_windows:
        spans = [spans[i] for i in spread(len(spans), max_windows)]
    return spans


def spread(count: int, keep: int) -> list[int]:
    """`keep` indices of 0..count-1, evenly spaced, always with the first and the last."""
    if keep == 1:
        return [0]
    return sorted({round(i * (count - 1) / (keep - 1)) for i in range(keep)})


def encode_windows(tokenizer, texts: list[str], max_length: int, stride: int,
                   max_windows: int) -> list[list[list[int]]]:
    """Per text, its windows as unpadded ids with special tokens (each at most `max_length` long)."""
    content = tokenize_content(tokenizer, texts, max_length)
    return [[content.wrap(ids[a:b]) for a, b in window_spans(len(ids), content.budget, stride, max_windows)]
            for ids in content.ids]


@dataclass
class Groups:
    """Documents as runs of consecutive rows: document d is rows starts[d] : starts[d] + counts[d]."""

    counts: np.ndarray  # windows per document
    row_lengths: np.ndarray  # tokens per row (window)

    def __post_init__(self) -> None:
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    @classmethod
    def of(cls, windows: list[list[list[int]]]) -> Groups:
        counts = np.fromiter((len(w) for w in windows), dtype=np.int64, count=len(windows))
        lengths = np.fromiter((len(x) for w in windows for x in w), dtype=np.int64, count=int(counts.sum()))
        return cls(counts, lengths)

    def rows(self, docs: np.ndarray) -> np.ndarray:
        """Row indices of `docs`, in order."""
        if not len(docs):
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(self.starts[d], self.starts[d] + self.counts[d]) for d in docs])

    def doc_tokens(self) -> np.ndarray:
        """Tokens per document over all its windows (the length-grouping key)."""
        return np.add.reduceat(self.row_lengths, self.starts) if len(self.counts) else self.counts.copy()

    def longest_row(self) -> np.ndarray:
        """Longest window per document (the padded width a batch needs)."""
        return np.maximum.reduceat(self.row_lengths, self.starts) if len(self.counts) else self.counts.copy()


def flatten(windows: list[list[list[int]]]) -> list[list[int]]:
    return [w for doc in windows for w in doc]


def summary(name: str, windows: list[list[list[int]]], max_windows: int) -> str:
    """One line for the start of `train`: what reading whole texts costs on this split."""
    counts = [len(w) for w in windows]
    long = sum(c > 1 for c in counts)
    capped = sum(c == max_windows for c in counts) if max_windows > 1 else 0
    return (f"Windows: {name} {len(counts):,} texts -> {sum(counts):,} windows; {long:,} longer than one "
            f"window, {capped:,} at --max-windows {max_windows}, most {max(counts, default=0)}")


# ---- inference: dense window batches (numpy only, so the ONNX backend needs no torch) ----------------
def window_batches(windows: Sequence[list[list[int]]], budget: int) -> Iterator[list[int]]:
    """Document indices per batch: most windows first (little padding), at most `budget` windows a batch
    (a document with more is a batch alone)."""
    order = sorted(range(len(windows)), key=lambda i: (len(windows[i]), max(map(len, windows[i]))), reverse=True)
    batch: list[int] = []
    used = 0
    for i in order:
        if batch and used + len(windows[i]) > budget:
            yield batch
            batch, used = [], 0
        batch.append(i)
        used += len(windows[i])
    if batch:
        yield batch


def pad_windows(docs: Sequence[list[list[int]]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[B, M, T] ids and mask, [B, M] window mask. An empty slot attends to one pad token, so no row of
    the encoder is wholly masked (that can give NaN); the window mask keeps it out of the pool."""
    slots = max(len(d) for d in docs)
    width = max(len(w) for d in docs for w in d)
    ids = np.full((len(docs), slots, width), pad_id, dtype=np.int64)
    mask = np.zeros((len(docs), slots, width), dtype=np.int64)
    mask[:, :, 0] = 1
    window_mask = np.zeros((len(docs), slots), dtype=np.int64)
    for b, doc in enumerate(docs):
        for m, window in enumerate(doc):
            ids[b, m, : len(window)] = window
            mask[b, m, : len(window)] = 1
            window_mask[b, m] = 1
    return ids, mask, window_mask
