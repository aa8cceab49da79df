"""The one padding collate: rows of different lengths -> one padded array and its attention mask; and the
inference batch plan (which rows go together, padded to which width).

Token ids (training and inference batches) and cached hidden states (`training/cache.py`) are padded by the
same code. numpy only, so ONNX inference never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_rows(rows: Sequence, width: int | None = None, fill: int = 0,
             dtype: np.dtype | type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """[B, width, ...] with row i in its first len(rows[i]) positions and `fill` after, and the [B, width] int64
    mask (1 = real position). Rows are sequences of ids or arrays [n, ...]; width defaults to the longest row."""
    lengths = [len(row) for row in rows]
    width = max(lengths, default=0) if width is None else width
    trailing = np.shape(rows[0])[1:] if len(rows) else ()
    padded = np.full((len(rows), width, *trailing), fill, dtype=dtype)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        padded[i, :n] = row
        mask[i, :n] = 1
    return padded, mask


def padded_length(longest: int, padding: str, max_length: int, multiple: int) -> int:
    """Sequence length of a batch: its longest example rounded up to `multiple`, never above max_length."""
    if padding == "max_length":
        return max_length
    if multiple > 1:
        longest = -(-longest // multiple) * multiple
    return min(longest, max_length)


def bucket_batches(lengths: Sequence[int], *, max_rows: int, max_tokens: int, multiple: int,
                   max_length: int, same_bucket: bool = True) -> list[tuple[list[int], int]]:
    """Inference batches: (row indices, padded width) per model call, longest rows first.

    A batch of several rows is padded to its longest row rounded up to `multiple` (capped at max_length), so
    widths come from a fixed set of about max_length / multiple values and the kernels (and oneDNN's
    per-shape primitive cache) see a bounded set of shapes; it holds at most `max_rows` rows and at most
    `max_tokens` padded tokens (rows x width, at least one row), a budget that keeps a call's activations
    in cache. With `same_bucket`, a row joins a batch only if it rounds up to the batch's width: padding
    a 260-token review to 512 doubled its cost, while batching long rows saves almost nothing (measured in
    docs/benchmarks.md), so rows of other buckets wait for a call of their own. A batch of one row is not
    padded at all: no wasted work, and no attention mask to apply.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[tuple[list[int], int]] = []
    start = 0
    while start < len(order):
        longest = lengths[order[start]]
        cap = max(max_length, longest)
        width = padded_length(longest, "dynamic", cap, multiple)
        end = start + 1
        while end < min(len(order), start + max(1, min(max_rows, max_tokens // width))) and (
                not same_bucket or padded_length(lengths[order[end]], "dynamic", cap, multiple) == width):
            end += 1
        rows = order[start:end]
        batches.append((rows, width if len(rows) > 1 else longest))
        start = end
    return batches


def batch_shapes(*, max_rows: int, max_tokens: int, multiple: int, max_length: int) -> set[tuple[int, int]]:
    """Every (rows, width) `bucket_batches` can produce for inputs of at most max_length tokens: the bound."""
    widths = {padded_length(n, "dynamic", max_length, multiple) for n in range(1, max_length + 1)}
    shapes = {(1, n) for n in range(1, max_length + 1)}
    for width in widths:
        shapes |= {(rows, width) for rows in range(2, max(1, min(max_rows, max_tokens // width)) + 1)}
    return shapes
