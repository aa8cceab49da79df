from __future__ import annotations

import pytest
import torch
from conftest import build_model, build_tokenizer, sentiment_rows, train_steps

from sentune import model as M
from sentune.data.batches import make_feed
from sentune.training import cache as cache_lib

DEPTH = 3
MAX_LEN = 24  # short enough that some examples are truncated, so batches mix full and padded rows


@pytest.fixture(scope="module")
def tokenized():
    out = {}
    for arch in ("bert", "roberta"):
        tok = build_tokenizer(arch)
        rows = sentiment_rows(40, seed=5)
        ids = tok([r["text"] for r in rows], truncation=True, max_length=MAX_LEN)["input_ids"]
        labels = [int(r["label"] == "pos") for r in rows]
        out[arch] = (ids, labels, tok.pad_token_id, len(tok))
    return out


def feeds_for(tokenized, arch, **kw):
    ids, labels, pad_id, _ = tokenized[arch]
    common = dict(seed=3, pad_id=pad_id, max_length=MAX_LEN, pad_to_multiple_of=8)
    return {"train": make_feed(ids[:28], labels[:28], batch_size=6, train=True, **common, **kw),
            "test": make_feed(ids[28:], labels[28:], batch_size=5, train=False, **common, **kw)}


def tiny(tokenized, arch):
    return build_model(arch, num_layers=DEPTH, vocab_size=tokenized[arch][3])


def logits_by_index(model, feed, k, epoch=0) -> dict[int, torch.Tensor]:
    out = {}
    with torch.no_grad():
        for batch in feed.batches(epoch):
            for i, row in zip(batch["index"].tolist(), M.forward_logits(model, batch, k), strict=True):
                out[i] = row
    return out


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("k", [1, DEPTH])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_cached_logits_equal_full_model(tokenized, arch, k, dtype, atol):
    model = tiny(tokenized, arch).eval()
    feeds = feeds_for(tokenized, arch)
    cached = cache_lib.cache_feeds(model, k, feeds, mode="memory", cache_dir=None, fingerprint_parts={},
                                   device="cpu", dtype=dtype, log=lambda _: None)
    for split in feeds:
        full, fast = logits_by_index(model, feeds[split], k, 1), logits_by_index(model, cached[split], k, 1)
        assert full.keys() == fast.keys() == set(range(feeds[split].num_examples()))
        for i in full:
            torch.testing.assert_close(fast[i], full[i], atol=atol, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_cached_feed_yields_the_same_batches(tokenized, arch, tmp_path):
    feeds = feeds_for(tokenized, arch)
    cached = cache_lib.cache_feeds(tiny(tokenized, arch), 2, feeds, mode="disk", cache_dir=str(tmp_path),
                                   fingerprint_parts={}, device="cpu", log=lambda _: None)
    for split in feeds:
        for a, b in zip(feeds[split].batches(2), cached[split].batches(2), strict=True):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["labels"], b["labels"])
            assert torch.equal(a["attention_mask"], b["attention_mask"])
            assert b["hidden"].shape == (*a["input_ids"].shape, 32) and b["hidden"].dtype == torch.bfloat16
            assert "input_ids" not in b



@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_training_with_cache_gives_the_same_weights(tokenized, arch):
    k = 2
    feeds = feeds_for(tokenized, arch)
    plain = train_steps(tiny(tokenized, arch), feeds["train"], k)
    model = tiny(tokenized, arch)
    cached = cache_lib.cache_feeds(model, k, feeds, mode="memory", cache_dir=None, fingerprint_parts={},
                                   device="cpu", dtype=torch.float32, log=lambda _: None)
    fast = train_steps(model, cached["train"], k)
    assert plain.keys() == fast.keys() and plain
    before = dict(tiny(tokenized, arch).named_parameters())
    assert any(not torch.allclose(before[n], plain[n]) for n in plain)  # training did move the weights
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], atol=1e-5, rtol=0)


class PrefixCounter:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = M.forward_prefix

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(M, "forward_prefix", counted)


def test_disk_cache_is_reused_without_prefix_work(tokenized, tmp_path, monkeypatch):
    counter = PrefixCounter(monkeypatch)
    model, lines = tiny(tokenized, "bert"), []
    kw = dict(mode="disk", cache_dir=str(tmp_path), fingerprint_parts={"model": "tiny"}, device="cpu",
              log=lines.append)
    first = cache_lib.cache_feeds(model, 2, feeds_for(tokenized, "bert"), **kw)
    built_calls = counter.calls
    assert built_calls > 0 and "built train+test" in lines[-1] and "disk" in lines[-1]
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".bin", ".bin", ".json", ".json"]
    for mode in ("disk", "auto", "memory"):
        again = cache_lib.cache_feeds(model, 2, feeds_for(tokenized, "bert"), **dict(kw, mode=mode))
        assert counter.calls == built_calls and "reused train+test" in lines[-1]
        a, b = next(first["test"].batches(0)), next(again["test"].batches(0))
        assert torch.equal(a["hidden"], b["hidden"])


def test_changed_weights_or_k_rebuild(tokenized, tmp_path, monkeypatch):
    counter = PrefixCounter(monkeypatch)
    model = tiny(tokenized, "bert")
    kw = dict(mode="disk", cache_dir=str(tmp_path), fingerprint_parts={}, device="cpu", log=lambda _: None)
    cache_lib.cache_feeds(model, 2, feeds_for(tokenized, "bert"), **kw)
    calls = counter.calls
    cache_lib.cache_feeds(model, 1, feeds_for(tokenized, "bert"), **kw)
    assert counter.calls > calls
    calls = counter.calls
    with torch.no_grad():
        M.encoder_layers(model)[0].output.dense.bias.add_(0.1)
    cache_lib.cache_feeds(model, 1, feeds_for(tokenized, "bert"), **kw)
    assert counter.calls > calls


def test_half_written_cache_is_not_reused(tokenized, tmp_path, monkeypatch):
    model = tiny(tokenized, "bert")
    kw = dict(mode="disk", cache_dir=str(tmp_path), fingerprint_parts={}, device="cpu", log=lambda _: None)
    cache_lib.cache_feeds(model, 2, feeds_for(tokenized, "bert"), **kw)
    for meta in tmp_path.glob("*.json"):  # as if the process died between writing data and metadata
        meta.unlink()
    counter = PrefixCounter(monkeypatch)
    cache_lib.cache_feeds(model, 2, feeds_for(tokenized, "bert"), **kw)
    assert counter.calls > 0
    assert not list(tmp_path.glob("*.tmp-*"))


def test_no_cache_for_k0_or_off(tokenized, tmp_path):
    feeds = feeds_for(tokenized, "bert")
    model = tiny(tokenized, "bert")
    for k, mode in ((0, "auto"), (2, "off")):
        out = cache_lib.cache_feeds(model, k, feeds, mode=mode, cache_dir=str(tmp_path), fingerprint_parts={},
                                    device="cpu")
        assert all(out[s] is feeds[s] for s in feeds)
    assert not list(tmp_path.iterdir())


def test_building_leaves_the_model_mode_alone(tokenized):
    model = tiny(tokenized, "roberta").train()
    cache_lib.cache_feeds(model, 1, feeds_for(tokenized, "roberta"), mode="memory", cache_dir=None,
                          fingerprint_parts={}, device="cpu", log=lambda _: None)
    assert all(m.training for m in model.modules())


def test_unwritable_cache_dir(tokenized, tmp_path):
    """Memory caches only keep a disk copy for later runs: failing to write it warns and trains on;
    a disk cache that cannot be written is one clear error naming the way out."""
    from sentune.errors import WriteError

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    kw = dict(cache_dir=str(blocker), fingerprint_parts={"model": "tiny"}, device="cpu", log=lambda line: None)
    model = tiny(tokenized, "bert")
    with pytest.warns(UserWarning, match="goes on from memory"):
        feeds = cache_lib.cache_feeds(model, 2, feeds_for(tokenized, "bert"), mode="auto", **kw)
    assert next(feeds["train"].batches(0))["hidden"].shape[-1] == model.config.hidden_size
    with pytest.raises(WriteError, match="--cache-dir"):
        cache_lib.cache_feeds(model, 2, feeds_for(tokenized, "bert"), mode="disk", **kw)
