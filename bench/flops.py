"""FLOPs an encoder classifier really needs, and the rate this machine's GEMM reaches: the yardstick for
`predict_speed.py` (achieved GFLOP/s and its fraction of the ceiling) and `serve_profile.py`.

Per text of n tokens (no padding counted: the work the model needs, not what a padded batch does), per
layer: Q, K, V and output projections 8nH^2, feed-forward 4nHI, attention scores and context 4n^2H (a
multiply-add is 2 FLOPs). With the first-token-only last layer (what sentune's torch backend runs: the head
reads position 0), that layer costs K and V for every position (4nH^2), the attention of one query (4nH)
and the rest for one token (4H^2 + 4HI). Embedding lookups, layer norms, softmax and the head are left out
(under 1 % for these models).
"""

from __future__ import annotations

import time
from collections.abc import Sequence


def layer_flops(n: int, hidden: int, inner: int) -> float:
    return n * (8 * hidden * hidden + 4 * hidden * inner) + 4 * n * n * hidden


def first_token_layer_flops(n: int, hidden: int, inner: int) -> float:
    return 4 * n * hidden * hidden + 4 * n * hidden + 4 * hidden * hidden + 4 * hidden * inner


def encoder_flops(config, lengths: Sequence[int], first_token_last_layer: bool) -> float:
    """FLOPs of the encoder for texts of these token lengths (after truncation, special tokens included)."""
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    total = 0.0
    for n in lengths:
        full = layers - 1 if first_token_last_layer else layers
        total += full * layer_flops(n, hidden, inner)
        if first_token_last_layer:
            total += first_token_layer_flops(n, hidden, inner)
    return total


def gemm_gflops(size: int, dtype_name: str = "fp32", seconds: float = 2.0) -> float:
    """GFLOP/s of a square torch.matmul of `size` on torch's current threads (best of a few timed runs)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up: kernel choice, page faults
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        torch.matmul(a, b)
        elapsed = time.perf_counter() - start
        spent += elapsed
        best = max(best, 2 * size**3 / elapsed / 1e9)
    return best


def ceiling(dtypes: Sequence[str] = ("fp32",), sizes: Sequence[int] = (2048, 4096),
            seconds: float = 2.0) -> dict[str, float]:
    """The practical ceiling per dtype: the best large-GEMM rate over `sizes`."""
    return {d: max(gemm_gflops(s, d, seconds) for s in sizes) for d in dtypes}
