"""The one padding collate: rows of different lengths -> one padded array and its attention mask.

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
