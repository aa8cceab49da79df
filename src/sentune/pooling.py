"""Pooling a document's windows into one representation (`--pool mean|max|attention`).

The head of a windowed model reads one first-token state per document: the pool of its windows' first-token
states after the last encoder layer. Every path pools the same function over the same dense layout,
`states` [B, M, H] with `mask` [B, M] (document b's windows in slots 0..n_b-1): training turns its rows into
that layout (`dense`), inference and the ONNX graph are fed it directly. A document of one window pools to
exactly its window's state, so a short text gets the `truncate` result.

`attention` learns one score per window (a linear map of its state), softmaxed over the document's windows:
`window_pool.score` in the model's state dict, so `save_pretrained` keeps it in `model.safetensors`. It
starts at zero, i.e. as mean pooling. `transformers.pipeline` ignores it (and reads one window).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from sentune.config import DataConfig

POOLS = ("mean", "max", "attention")
ATTRIBUTE = "window_pool"  # the attention pool's name on the model, so its weights are saved with it


class AttentionPool(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Window weights [B, M]: softmax of the scores over each document's windows (0 at empty slots)."""
        scores = self.score(states).squeeze(-1).float()
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return scores.softmax(-1).to(states.dtype)


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str, attention: nn.Module | None = None) -> torch.Tensor:
    """[B, M, H] window states, [B, M] bool mask -> [B, H] document states."""
    keep = mask.unsqueeze(-1)
    if mode == "mean":
        total = torch.where(keep, states, torch.zeros_like(states)).sum(1)
        return total / mask.sum(1, keepdim=True).to(states.dtype)
    if mode == "max":
        return torch.where(keep, states, torch.full_like(states, torch.finfo(states.dtype).min)).amax(1)
    if mode == "attention":
        if attention is None:
            raise ValueError("pool 'attention' needs the model's window_pool (attach_pool)")
        weights = attention(states, mask).unsqueeze(-1)
        return (weights * torch.where(keep, states, torch.zeros_like(states))).sum(1)
    raise ValueError(f"unknown pool {mode!r}; use one of {', '.join(POOLS)}")


def dense(rows: torch.Tensor, window_doc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[W, H] rows (each document's windows consecutive, documents 0..B-1) -> [B, M, H] states, [B, M] mask."""
    docs = int(window_doc.max()) + 1
    counts = torch.bincount(window_doc, minlength=docs)
    width = int(counts.max())
    slot = torch.arange(len(window_doc), device=rows.device) - (counts.cumsum(0) - counts)[window_doc]
    flat_slot = window_doc * width + slot
    states = rows.new_zeros(docs * width, rows.shape[-1]).index_copy(0, flat_slot, rows)
    mask = torch.zeros(docs * width, dtype=torch.bool, device=rows.device)
    mask[flat_slot] = True
    return states.view(docs, width, -1), mask.view(docs, width)


def pool_rows(model: nn.Module, rows: torch.Tensor, window_doc: torch.Tensor) -> torch.Tensor:
    """[W, H] window states of a batch -> [B, H] document states, pooled as the model's settings say."""
    states, mask = dense(rows, window_doc)
    return pool(states, mask, pool_mode(model), getattr(model, ATTRIBUTE, None))


def pool_mode(model: nn.Module) -> str:
    # the `sentune` dict of the model's config (sentune/settings.py owns it; this leaf only reads one key)
    return (getattr(model.config, "sentune", None) or {}).get("pool", DataConfig.pool)


def attach_pool(model: nn.Module, mode: str) -> None:
    """Give the model its attention pool (for `attention`; mean and max have no weights)."""
    if mode == "attention" and not hasattr(model, ATTRIBUTE):
        first = next(model.parameters())
        setattr(model, ATTRIBUTE, AttentionPool(cast(Any, model.config).hidden_size).to(first.device, first.dtype))


def load_pool(model: nn.Module, folder: str | Path) -> None:
    """Attach the saved attention pool of a `save_pretrained` folder (from_pretrained drops unknown keys)."""
    from safetensors import safe_open

    attach_pool(model, "attention")
    prefix = ATTRIBUTE + "."
    found = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            found.update({k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    if not found:
        from sentune.errors import ModelError

        raise ModelError(f"{folder} was trained with --pool attention but its weights hold no {ATTRIBUTE}; "
                         "save it again from the run (best/ is written by train)")
    pool_module = getattr(model, ATTRIBUTE)
    first = next(pool_module.parameters())
    pool_module.load_state_dict({k: v.to(first.device, first.dtype) for k, v in found.items()})
