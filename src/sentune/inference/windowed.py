"""Inference over windows: documents as dense window batches, one module for PyTorch and the ONNX graph.

A batch of B documents is `input_ids` / `attention_mask` [B, M, T] (document b's windows in slots
0..n_b-1, padded to the most windows M and the longest window T) and `window_mask` [B, M]. `WindowedLogits`
runs every window through the encoder, pools each document's first-token states exactly as training does
(`sentune.pooling.pool`) and applies the classification head: the same numbers in `Classifier.predict`,
`sentune evaluate`, `serve` and the exported ONNX model, which takes these three inputs.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from sentune import model as model_lib
from sentune import pooling


class WindowedLogits(nn.Module):
    def __init__(self, model: nn.Module, mode: str):
        super().__init__()
        self.model, self.mode = model, mode

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                window_mask: torch.Tensor) -> torch.Tensor:
        docs, slots, length = input_ids.shape
        base = cast(nn.Module, self.model.base_model)
        out = base(input_ids=input_ids.reshape(docs * slots, length),
                   attention_mask=attention_mask.reshape(docs * slots, length))
        states = out.last_hidden_state[:, 0].reshape(docs, slots, -1)
        pooled = pooling.pool(states, window_mask.bool(), self.mode, getattr(self.model, pooling.ATTRIBUTE, None))
        return model_lib.head(self.model, pooled)
