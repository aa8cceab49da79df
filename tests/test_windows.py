"""Long texts as windows: spans, encoding, batching, pooling, and exactness against truncation and the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_model, build_tokenizer, sentiment_rows, train_steps
from hypothesis import given
from hypothesis import strategies as st

from sentune import model as M
from sentune import pooling
from sentune.data.batches import make_feed
from sentune.data.text import encode_texts
from sentune.data.windows import encode_windows, window_spans
from sentune.errors import ConfigError
from sentune.training import cache as cache_lib


# ---- spans -----------------------------------------------------------------------------------------------
@given(n=st.integers(0, 3000), budget=st.integers(2, 300), data=st.data())
def test_windows_cover_every_token_with_overlap_equal_to_stride(n, budget, data):
    stride = data.draw(st.integers(0, budget - 1))
    spans = window_spans(n, budget, stride)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(0 < b - a <= budget for a, b in spans) or n == 0
    for (a1, b1), (a2, _b2) in zip(spans, spans[1:], strict=False):
        assert b1 - a2 == stride  # consecutive windows share exactly `stride` tokens: no gap, no extra overlap
        assert b1 - a1 == budget  # only the last window may be short
    if len(spans) > 1:
        assert spans[-1][1] - spans[-1][0] > stride  # a last window is never just the overlap


@given(n=st.integers(1, 5000), keep=st.integers(1, 12))
def test_max_windows_spreads_evenly_and_keeps_head_and_tail(n, keep):
    full = window_spans(n, 20, 5)
    capped = window_spans(n, 20, 5, max_windows=keep)
    assert len(capped) == min(keep, len(full))
    assert capped[0] == full[0]
    assert set(capped) <= set(full) and capped == sorted(capped)
    if keep > 1:
        assert capped[-1] == full[-1]
        gaps = np.diff([full.index(s) for s in capped])
        assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1


def test_stride_must_leave_room():
    with pytest.raises(ConfigError, match="--stride"):
        window_spans(100, 10, 10)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_encoded_windows_hold_every_content_token(arch):
    tok = build_tokenizer(arch)
    text = " ".join(r["text"] for r in sentiment_rows(8, seed=4))
    content = tok(text, add_special_tokens=False)["input_ids"]
    [windows] = encode_windows(tok, [text], max_length=16, stride=4, max_windows=100)
    assert len(windows) > 2 and all(len(w) <= 16 for w in windows)
    inner = [w[1:-1] for w in windows]  # both tokenizers wrap one sequence in one token each side
    rebuilt = inner[0] + [t for w in inner[1:] for t in w[4:]]
    assert rebuilt == content


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_short_text_is_one_window_equal_to_its_truncated_encoding(arch):
    tok = build_tokenizer(arch)
    texts = [r["text"] for r in sentiment_rows(10, seed=2)]
    windows = encode_windows(tok, texts, max_length=64, stride=8, max_windows=4)
    assert [w for [w] in windows] == encode_texts(tok, texts, max_length=64)


# ---- batches ---------------------------------------------------------------------------------------------
def window_docs(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return [[list(range(2, 2 + int(rng.integers(3, 9)))) for _ in range(int(rng.integers(1, 6)))]
            for _ in range(n)]


@pytest.mark.parametrize("train", [True, False])
def test_batches_count_windows_against_the_budget_and_hold_whole_documents(train):
    docs = window_docs()
    feed = make_feed(docs, [i % 2 for i in range(len(docs))], batch_size=7, train=train, seed=1, pad_id=0,
                     max_length=16)
    for epoch in range(2):
        seen = []
        for batch in feed.batches(epoch):
            index = batch["index"].tolist()
            counts = [len(docs[i]) for i in index]
            assert sum(counts) <= 7 or len(index) == 1
            assert batch["window_doc"].tolist() == [d for d, c in enumerate(counts) for _ in range(c)]
            rows = [w for i in index for w in docs[i]]
            for row, ids, mask in zip(rows, batch["input_ids"], batch["attention_mask"], strict=True):
                assert ids[: len(row)].tolist() == row and int(mask.sum()) == len(row)
            assert batch["labels"].tolist() == [i % 2 for i in index]
            seen += index
        assert sorted(seen) == list(range(len(docs)))
        assert feed.num_batches(1, epoch) == len(list(feed.batches(epoch)))


# ---- pooling ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["mean", "max", "attention"])
def test_pooling_equals_a_hand_computed_pool(mode):
    torch.manual_seed(0)
    rows = torch.randn(6, 4)
    window_doc = torch.tensor([0, 0, 0, 1, 2, 2])
    attention = pooling.AttentionPool(4)
    torch.nn.init.normal_(attention.score.weight)  # not the zero init, so weights differ per window
    states, mask = pooling.dense(rows, window_doc)
    got = pooling.pool(states, mask, mode, attention)
    expected = []
    for doc in range(3):
        x = rows[window_doc == doc]
        if mode == "mean":
            expected.append(x.mean(0))
        elif mode == "max":
            expected.append(x.max(0).values)
        else:
            w = torch.softmax(x @ attention.score.weight[0] + attention.score.bias, 0)
            expected.append((w[:, None] * x).sum(0))
    torch.testing.assert_close(got, torch.stack(expected))


def test_attention_pool_starts_as_mean():
    rows = torch.randn(5, 8)
    states, mask = pooling.dense(rows, torch.tensor([0, 0, 1, 1, 1]))
    torch.testing.assert_close(pooling.pool(states, mask, "attention", pooling.AttentionPool(8)),
                               pooling.pool(states, mask, "mean"))


# ---- model: windows vs truncate, cache vs no cache -------------------------------------------------------
MAX_LEN = 16


def tiny_windowed(arch, mode, seed=0):
    tok = build_tokenizer(arch)
    model = build_model(arch, num_layers=3, vocab_size=len(tok), seed=seed)
    model.config.sentune = {"long_text": "windows", "pool": mode}
    pooling.attach_pool(model, mode)
    if mode == "attention":
        torch.nn.init.normal_(model.window_pool.score.weight, std=0.5)
    return model, tok


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("mode", ["mean", "max", "attention"])
def test_short_texts_give_exactly_the_truncate_logits(arch, mode):
    model, tok = tiny_windowed(arch, mode)
    model.eval()
    texts = [r["text"] for r in sentiment_rows(12, seed=3)]
    windows = encode_windows(tok, texts, MAX_LEN * 4, 4, 8)
    assert all(len(w) == 1 for w in windows)
    ids = encode_texts(tok, texts, MAX_LEN * 4)
    common = dict(batch_size=5, train=False, seed=0, pad_id=tok.pad_token_id, max_length=MAX_LEN * 4)
    by_doc = {}
    with torch.no_grad():
        for batch in make_feed(windows, [0] * len(texts), **common).batches():
            by_doc.update(zip(batch["index"].tolist(), M.forward_logits(model, batch, 1), strict=True))
        for batch in make_feed(ids, [0] * len(texts), **common).batches():
            for i, row in zip(batch["index"].tolist(), M.forward_logits(model, batch, 1), strict=True):
                assert torch.equal(by_doc[i], row)


def long_feeds(arch, **kw):
    tok = build_tokenizer(arch)
    rows = sentiment_rows(36, seed=5)
    texts = [" ".join(r["text"] for r in rows[i:i + 3]) for i in range(len(rows))]
    windows = encode_windows(tok, texts, MAX_LEN, 4, 5)
    assert sum(len(w) > 1 for w in windows) > len(windows) // 2
    labels = [int(r["label"] == "pos") for r in rows]
    common = dict(seed=3, pad_id=tok.pad_token_id, max_length=MAX_LEN, pad_to_multiple_of=8, **kw)
    return {"train": make_feed(windows[:26], labels[:26], batch_size=12, train=True, **common),
            "test": make_feed(windows[26:], labels[26:], batch_size=12, train=False, **common)}



@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("mode", ["mean", "attention"])
def test_training_over_windows_through_the_cache_equals_training_without_it(arch, mode):
    feeds = long_feeds(arch)
    cached = cache_lib.cache_feeds(tiny_windowed(arch, mode)[0], 1, feeds, mode="memory", cache_dir=None,
                                   fingerprint_parts={}, device="cpu", dtype=torch.float32, log=lambda _: None)
    plain = train_steps(tiny_windowed(arch, mode)[0], feeds["train"], 1)
    fast = train_steps(tiny_windowed(arch, mode)[0], cached["train"], 1)
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], atol=2e-5, rtol=0)
    if mode == "attention":
        start = tiny_windowed(arch, mode)[0].window_pool.score.weight
        assert not torch.equal(plain["window_pool.score.weight"], start)  # the pool is trained


def test_cache_report_counts_windows(tmp_path):
    feeds = long_feeds("bert")
    lines = []
    cache_lib.cache_feeds(tiny_windowed("bert", "mean")[0], 1, feeds, mode="disk", cache_dir=str(tmp_path),
                          fingerprint_parts={}, device="cpu", log=lines.append)
    windows = sum(int(f.groups.counts.sum()) for f in feeds.values())
    assert f"36 texts in {windows} windows" in lines[0]
