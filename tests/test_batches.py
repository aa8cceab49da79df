from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sentune.data.batches import make_feed, padded_length


def toy_ids(n: int, seed: int = 0, max_len: int = 40) -> list[list[int]]:
    rng = random.Random(seed)
    return [[2] + [rng.randint(5, 99) for _ in range(rng.randint(1, max_len - 2))] + [3] for _ in range(n)]


def feed_of(n=203, batch_size=8, train=True, seed=0, **kw):
    ids = toy_ids(n)
    labels = [i % 3 for i in range(n)]
    kw.setdefault("max_length", 40)
    return ids, labels, make_feed(ids, labels, batch_size=batch_size, train=train, seed=seed, pad_id=0, **kw)


def all_indices(batches) -> list[int]:
    return [int(i) for b in batches for i in b["index"]]


@pytest.mark.parametrize("train", [True, False])
def test_every_example_exactly_once_per_epoch(train):
    _, _, feed = feed_of(train=train)
    for epoch in range(3):
        batches = list(feed.batches(epoch))
        assert len(batches) == len(feed) == 26
        assert sorted(all_indices(batches)) == list(range(203))
        assert all(len(b["labels"]) == 8 for b in batches if len(b["labels"]) != 203 % 8)


def test_batches_hold_the_right_rows_with_dynamic_padding():
    ids, labels, feed = feed_of(pad_to_multiple_of=8)
    for b in feed.batches(0):
        width = b["input_ids"].shape[1]
        lengths = [len(ids[i]) for i in b["index"]]
        assert width == min(-(-max(lengths) // 8) * 8, 40)
        for row, i in enumerate(b["index"].tolist()):
            n = len(ids[i])
            assert b["input_ids"][row, :n].tolist() == ids[i]
            assert b["input_ids"][row, n:].eq(0).all() and b["attention_mask"][row, n:].eq(0).all()
            assert b["attention_mask"][row, :n].eq(1).all()
            assert b["labels"][row].item() == labels[i]
        assert b["input_ids"].dtype == b["attention_mask"].dtype == b["labels"].dtype == torch.long


def test_max_length_padding_is_the_reference_compute():
    _, _, feed = feed_of(padding="max_length")
    assert {b["input_ids"].shape[1] for b in feed.batches(0)} == {40}


def test_padded_length_rules():
    assert padded_length(13, "dynamic", 512, 8) == 16
    assert padded_length(16, "dynamic", 512, 8) == 16
    assert padded_length(13, "dynamic", 512, 1) == 13
    assert padded_length(509, "dynamic", 510, 8) == 510  # capped at max_length
    assert padded_length(5, "max_length", 64, 8) == 64


def test_training_order_is_seeded_and_changes_per_epoch():
    _, _, a = feed_of(seed=1)
    _, _, b = feed_of(seed=1)
    _, _, c = feed_of(seed=2)
    assert all_indices(a.batches(0)) == all_indices(b.batches(0))
    assert all_indices(a.batches(0)) != all_indices(a.batches(1))
    assert all_indices(a.batches(0)) != all_indices(c.batches(0))


def test_length_grouping_cuts_padding():
    ids, _, feed = feed_of(n=800, batch_size=16)
    padded = sum(b["input_ids"].numel() for b in feed.batches(0))
    rng = np.random.default_rng(0)
    perm = rng.permutation(800)
    random_padded = sum(16 * max(len(ids[i]) for i in perm[s:s + 16]) for s in range(0, 800, 16))
    assert padded < 0.75 * random_padded


def test_length_chunk_1_is_plain_shuffled_batches():
    """--length-chunk 1: batches are consecutive slices of the epoch's seeded permutation (the reference's
    shuffled DataLoader), so their lengths are no closer than chance; 50 sorts them (spread within a batch)."""
    ids, _, plain = feed_of(n=800, batch_size=16, length_chunk=1)
    _, _, grouped = feed_of(n=800, batch_size=16)
    for epoch in range(2):
        batches = [np.sort(b["index"].numpy()) for b in plain.batches(epoch)]
        perm = np.random.default_rng([0, epoch]).permutation(800)
        assert sorted(map(tuple, batches)) == sorted(tuple(np.sort(perm[s:s + 16])) for s in range(0, 800, 16))

    def spread(feed):  # mean range of lengths inside a batch
        return np.mean([np.ptp([len(ids[i]) for i in b["index"]]) for b in feed.batches(0)])

    assert spread(plain) > 3 * spread(grouped)


def test_eval_batches_sorted_by_length():
    ids, _, feed = feed_of(train=False)
    lengths = [len(ids[i]) for i in all_indices(feed.batches(0))]
    assert lengths == sorted(lengths, reverse=True)
    assert all_indices(feed.batches(0)) == all_indices(feed.batches(5))


@pytest.mark.parametrize("train", [True, False])
def test_sharding_splits_batches_between_processes(train):
    _, _, feed = feed_of(train=train)
    shards = [list(feed.batches(1, rank=r, world_size=3)) for r in range(3)]
    seen = [i for s in shards for i in all_indices(s)]
    assert len(seen) == len(set(seen))
    if train:
        assert [len(s) for s in shards] == [feed.num_batches(3)] * 3 == [8, 8, 8]
    else:
        assert sorted(seen) == list(range(203))


@pytest.mark.parametrize("world_size", [1, 3])
def test_a_batch_knows_its_position_in_the_epochs_plan_whatever_the_process_count(world_size):
    """The frozen layers' dropout of a batch is seeded by this position (sentune.draws), so it must name the
    same batch in one process, in several, and after a mid-epoch resume (`start`)."""
    _, _, feed = feed_of()
    whole = {int(b["batch"]): b for b in feed.batches(2)}
    assert sorted(whole) == list(range(len(feed)))
    plan = list(feed.plan_rows(2))  # what the cache builds an epoch's dropout over: the same rows and widths
    for position, (rows, width) in enumerate(plan):
        assert rows.tolist() == whole[position]["index"].tolist() and width == whole[position]["input_ids"].shape[1]
    for rank in range(world_size):
        for start in (0, 2):
            for b in feed.batches(2, rank=rank, world_size=world_size, start=start):
                assert torch.equal(b["index"], whole[int(b["batch"])]["index"])


def test_too_long_sequence_is_a_bug_not_silently_cut():
    with pytest.raises(ValueError, match="max_length"):
        make_feed([[1] * 50], [0], batch_size=2, train=False, seed=0, pad_id=0, max_length=40)


def test_pad_rows_pads_ids_and_hidden_rows_alike():
    from sentune.data.padding import pad_rows

    ids, mask = pad_rows([[5, 6, 7], [8]], fill=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    hidden, mask = pad_rows([np.ones((1, 2)), np.full((2, 2), 3.0)], width=4, dtype=np.float32)
    assert hidden.shape == (2, 4, 2) and hidden.dtype == np.float32 and mask.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0]]
    assert hidden[0, 0].tolist() == [1, 1] and hidden[1, :2].tolist() == [[3, 3], [3, 3]] and not hidden[0, 1:].any()
