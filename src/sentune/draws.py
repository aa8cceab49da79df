"""Where the frozen layers' dropout masks come from (`--frozen-dropout`), decided once for both paths.

Live training (no cache) runs the frozen prefix in train mode on every batch; with the cache, the prefix runs
ahead of training over the same batches. Both draw batch b of epoch e from one seed, `draw_seed(run seed, e,
b)`, in a forked random state, so the cache stores exactly the hidden states live training computes and the
trainable layers' own dropout stream is untouched by the prefix in both paths: the cached run trains as the
live one, bit for bit in fp32 (tests/test_levers.py), instead of only in distribution (issue 27).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def draw_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of the frozen layers' masks for batch `batch` (its position in the epoch's plan) of `epoch`."""
    digest = hashlib.blake2b(f"frozen-dropout:{seed}:{epoch}:{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes a non-negative 63-bit integer


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Draw from `seed` inside; the caller's random state (CPU, and `device` if CUDA) is restored after."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
