"""Inference batching: bucketed widths, a padded-token budget, unpadded batch-1 calls and the first-token-only
last layer give the same logits as one unpadded full-model forward per text, in input order."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sentune.data.padding import batch_shapes, bucket_batches
from sentune.inference.classifier import PAD_MULTIPLE, Classifier

WORDS = "good great film awful boring plot love hate fine ok the a was very not".split()


def texts(n: int, seed: int = 0, longest: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, longest))) for _ in range(n)]


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 128), max_size=60), max_rows=st.integers(1, 16),
       max_tokens=st.integers(1, 2048), multiple=st.sampled_from([1, 8, 32]))
def test_bucket_batches_cover_every_row_once_within_the_budget_and_the_shape_bound(lengths, max_rows, max_tokens,
                                                                                   multiple):
    plan = bucket_batches(lengths, max_rows=max_rows, max_tokens=max_tokens, multiple=multiple, max_length=128)
    assert sorted(i for rows, _ in plan for i in rows) == list(range(len(lengths)))
    bound = batch_shapes(max_rows=max_rows, max_tokens=max_tokens, multiple=multiple, max_length=128)
    for rows, width in plan:
        assert max(lengths[i] for i in rows) <= width and len(rows) <= max_rows
        assert (len(rows), width) in bound
        if len(rows) > 1:
            assert len(rows) * width <= max_tokens and (width % multiple == 0 or width == 128)
            # every row of a padded batch is in the batch's bucket: at most multiple - 1 padded positions each
            assert all(width - lengths[i] < multiple for i in rows)
        else:
            assert width == lengths[rows[0]]  # one row: no padding at all


def test_rows_of_other_buckets_are_not_padded_into_a_long_batch():
    # a 260-token review padded to 512 would cost twice its work; it runs on its own instead
    plan = bucket_batches([500, 260, 490, 30, 20], max_rows=64, max_tokens=4096, multiple=32, max_length=512)
    assert plan == [([0, 2], 512), ([1], 260), ([3, 4], 32)]
    mixed = bucket_batches([500, 260], max_rows=64, max_tokens=4096, multiple=32, max_length=512,
                           same_bucket=False)
    assert mixed == [([0, 1], 512)]


def test_the_shape_bound_is_small():
    # 512 one-row lengths plus, per bucket width, the row counts the budget allows
    shapes = batch_shapes(max_rows=64, max_tokens=4096, multiple=32, max_length=512)
    assert len({w for r, w in shapes if r > 1}) == 512 // 32
    assert len(shapes) < 512 + 700


@pytest.fixture(params=["bert", "roberta"])
def clf(request, tiny_bert_dir, tiny_roberta_dir):
    path = tiny_bert_dir if request.param == "bert" else tiny_roberta_dir
    return Classifier.load(path, backend="torch", precision="fp32", max_batch_tokens=256)


def unpadded_full_model_logits(clf: Classifier, batch: list[str]) -> np.ndarray:
    model = clf.runner.model
    out = []
    with torch.inference_mode():
        for ids in clf.encode(batch):
            t = torch.tensor([ids])
            out.append(model(input_ids=t, attention_mask=torch.ones_like(t)).logits[0].numpy())
    return np.stack(out)


def test_bucketed_budgeted_logits_equal_unpadded_single_text_logits_in_input_order(clf):
    batch = texts(40, seed=1)
    want = unpadded_full_model_logits(clf, batch)
    for batch_size in (1, 3, 64):
        np.testing.assert_allclose(clf.logits(batch, batch_size=batch_size), want, atol=1e-5, rtol=1e-4)


class Recorder:
    def __init__(self, runner):
        self.runner, self.shapes = runner, []

    def __call__(self, input_ids, attention_mask, window_mask=None):
        self.shapes.append(input_ids.shape)
        return self.runner(input_ids, attention_mask)


def test_model_calls_see_a_bounded_set_of_shapes_within_the_token_budget(clf):
    recorder = Recorder(clf.runner)
    clf.runner = recorder
    try:
        for seed in range(6):
            clf.predict(texts(50, seed=seed, longest=100), batch_size=16)
    finally:
        clf.runner = recorder.runner
    bound = batch_shapes(max_rows=16, max_tokens=256, multiple=PAD_MULTIPLE, max_length=clf.max_length)
    assert set(recorder.shapes) <= bound
    several = {(rows, width) for rows, width in recorder.shapes if rows > 1}
    assert several and all(rows * width <= 256 and width % PAD_MULTIPLE == 0 for rows, width in several)
    assert len({width for _, width in several}) <= clf.max_length // PAD_MULTIPLE


def test_the_last_layer_runs_for_the_first_token_only(clf):
    seen = []
    last = clf.runner.model.base_model.encoder.layer[-1]
    hook = last.intermediate.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape))
    try:
        clf.predict(texts(5), batch_size=5)
    finally:
        hook.remove()
    assert seen and all(shape[1] == 1 for shape in seen)
