"""Batches with little padding: dynamic padding, seeded length-grouped training order, sorted evaluation.

A `Feed` is one split's epoch-aware batch source. It separates *which* examples go together (`BatchPlan`,
depending only on lengths, seed and epoch) from *what* a batch holds (a collate function: token ids, or cached
hidden states from `cache.py`), so a cached feed yields exactly the same batches in the same order.

`padding="max_length"` pads every batch to max_length: the reference recipe's compute, kept for comparison.

With `--long-text windows` a feed's examples are documents made of several rows (windows, `data/windows.py`):
the plan orders documents by their total tokens and fills each batch with whole documents up to `batch_size`
windows (the token budget), the collate function works on rows, and each batch says which document every row
belongs to (`window_doc`), so the model pools a document's rows into one output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sentune.data.padding import pad_rows, padded_length
from sentune.data.windows import Groups, flatten

# Training batches are formed inside mega-chunks of this many batches (as transformers' LengthGroupedSampler):
# big enough that lengths inside a batch are close, small enough that batches still mix the data.
CHUNK_BATCHES = 50
# Lengths are jittered by up to this fraction before sorting, so which examples share a batch changes from
# epoch to epoch even when the whole split fits in one chunk (costs a little padding, keeps SGD noise).
LENGTH_JITTER = 0.1


@dataclass
class BatchPlan:
    """Which example indices form each batch, per epoch; depends only on lengths, seed and epoch."""

    lengths: np.ndarray
    batch_size: int
    train: bool
    seed: int
    sizes: np.ndarray | None = None  # rows (windows) per example: batches then hold <= batch_size rows
    chunk_batches: int = CHUNK_BATCHES  # 1: no length grouping, plain shuffled batches

    def __len__(self) -> int:
        if self.sizes is not None:
            return len(self.batches(0))
        return math.ceil(len(self.lengths) / self.batch_size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        if not self.train:
            # longest first: a batch that does not fit in memory fails at once, not at the end
            order = np.argsort(-self.lengths, kind="stable")
            return self._cut(order)
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.lengths))
        keys = self.lengths[perm] * (1.0 + LENGTH_JITTER * rng.random(len(perm)))
        chunk = self.batch_size * self.chunk_batches
        batches = []
        for start in range(0, len(perm), chunk):
            part = perm[start:start + chunk]
            batches += self._cut(part[np.argsort(-keys[start:start + chunk], kind="stable")])
        return [batches[i] for i in rng.permutation(len(batches))]

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        if self.sizes is not None:
            return self._fill(order)
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _fill(self, order: np.ndarray) -> list[np.ndarray]:
        """Whole examples in `order`, a new batch when the next would pass batch_size rows (a bigger example
        alone is one batch: it cannot be split, `--max-windows` bounds it)."""
        assert self.sizes is not None  # _cut calls this only for row-sized examples
        cuts, rows = [], 0
        for pos, size in enumerate(self.sizes[order]):
            if rows and rows + size > self.batch_size:
                cuts.append(pos)
                rows = 0
            rows += size
        return np.split(order, cuts) if len(order) else []


class Feed:
    """One split's batches: `len(feed)` per epoch; `feed.batches(epoch)` yields dicts of CPU tensors."""

    def __init__(self, plan: BatchPlan, labels: np.ndarray, collate: Callable[[np.ndarray, int], dict],
                 *, padding: str, max_length: int, pad_to_multiple_of: int,
                 input_ids: list[list[int]] | None, groups: Groups | None = None):
        self.plan = plan
        self.groups = groups  # documents of several rows (windows); None: one row per example
        self.labels = labels
        self.collate = collate  # (example indices, padded length) -> dict without labels/index
        self.padding = padding
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.input_ids = input_ids  # per row; kept so the cache can run the prefix; None for cached feeds

    @property
    def lengths(self) -> np.ndarray:
        return self.plan.lengths

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def row_lengths(self) -> np.ndarray:
        """Tokens per row: what the collate function pads and the frozen-layer cache stores."""
        return self.plan.lengths if self.groups is None else self.groups.row_lengths

    def num_examples(self) -> int:
        return len(self.plan.lengths)

    def num_batches(self, world_size: int = 1, epoch: int = 0) -> int:
        """Batches each process sees in `epoch` (training drops the few that do not divide evenly); only
        window feeds can differ from epoch to epoch (whole documents fill each batch)."""
        count = len(self) if self.groups is None else len(self.plan.batches(epoch))
        if world_size == 1:
            return count
        if self.plan.train:
            return count // world_size
        return math.ceil(count / world_size)

    def batches(self, epoch: int = 0, rank: int = 0, world_size: int = 1,
                start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's batches for process `rank` of `world_size`, with `labels` and `index` (example ids).

        With several processes, training batches are dealt round-robin and cut to an equal count per process
        (so every process takes the same number of optimizer steps); evaluation batches are dealt round-robin
        and cover every example exactly once across processes. `start` skips this process's first batches
        without building them (resuming mid-epoch).
        """
        plan = self.plan.batches(epoch)
        if world_size > 1 and self.plan.train:
            plan = plan[: len(plan) // world_size * world_size]
        for position in range(rank + start * world_size, len(plan), world_size):
            idx = plan[position]
            batch = self._rows(idx) if self.groups is not None else self.collate(idx, self._width(idx))
            batch["labels"] = torch.from_numpy(self.labels[idx])
            batch["index"] = torch.from_numpy(idx.astype(np.int64))
            batch["batch"] = torch.tensor(position)  # in the epoch's plan, whatever the process count
            yield batch

    def plan_rows(self, epoch: int) -> Iterator[tuple[np.ndarray, int]]:
        """(rows, padded width) of every batch of `epoch`'s plan, in order, as `batches` pads them: what the
        frozen-layer cache runs to draw an epoch's dropout exactly as live training draws it."""
        for idx in self.plan.batches(epoch):
            rows = self.groups.rows(idx) if self.groups is not None else idx
            yield rows, self._width(rows)

    def subset(self, idx: np.ndarray, batch_size: int, train: bool) -> Feed:
        """A feed of examples `idx` of this one (same contents: token ids or cached states), with its own plan;
        its `index` counts within the subset (how an audit's folds share one cache)."""
        if self.groups is not None:
            raise ValueError("a subset of a windowed feed is not supported")
        idx = np.asarray(idx, dtype=np.int64)
        plan = BatchPlan(self.lengths[idx], batch_size, train, self.plan.seed, chunk_batches=self.plan.chunk_batches)
        outer = self.collate
        return Feed(plan, self.labels[idx], lambda rows, width: outer(idx[rows], width), padding=self.padding,
                    max_length=self.max_length, pad_to_multiple_of=self.pad_to_multiple_of, input_ids=None)

    def _width(self, rows: np.ndarray) -> int:
        longest = int(self.row_lengths[rows].max())
        return padded_length(longest, self.padding, self.max_length, self.pad_to_multiple_of)

    def _rows(self, docs: np.ndarray) -> dict:
        """The rows (windows) of documents `docs`, and `window_doc`: each row's document within the batch."""
        assert self.groups is not None  # __iter__ calls this only for windowed data
        rows = self.groups.rows(docs)
        batch = self.collate(rows, self._width(rows))
        batch["window_doc"] = torch.from_numpy(np.repeat(np.arange(len(docs)), self.groups.counts[docs]))
        return batch


def label_array(labels) -> np.ndarray:
    """Class ids as int64; multi-hot rows [N, L] and regression targets as float32 (what the losses take)."""
    array = np.asarray(labels)
    return array.astype(np.float32) if array.dtype.kind == "f" else array.astype(np.int64)


class SampledFeed(Feed):
    """Feeds with one batch plan and different contents (cached runs of the frozen layers with dropout on):
    sample j holds the draws of epoch j + 1 (epochs count from 1), and epoch e reads sample (e - 1) mod N, so
    N epochs each read fresh dropout, the very draws live training would make in them."""

    def __init__(self, samples: list[Feed]):
        first = samples[0]
        super().__init__(first.plan, first.labels, first.collate, padding=first.padding, max_length=first.max_length,
                         pad_to_multiple_of=first.pad_to_multiple_of, input_ids=None, groups=first.groups)
        self.samples = samples

    def batches(self, epoch: int = 0, rank: int = 0, world_size: int = 1,
                start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        return self.samples[(epoch - 1) % len(self.samples)].batches(epoch, rank, world_size, start)

    def subset(self, idx: np.ndarray, batch_size: int, train: bool) -> Feed:
        return SampledFeed([sample.subset(idx, batch_size, train) for sample in self.samples])


def make_feed(input_ids: list[list[int]], labels: list[int], *, batch_size: int, train: bool, seed: int,
              pad_id: int, padding: str = "dynamic", max_length: int, pad_to_multiple_of: int = 8,
              length_chunk: int = CHUNK_BATCHES) -> Feed:
    """Token batches: `input_ids` [B, T] (padded with pad_id), `attention_mask` [B, T], `labels`, `index`.

    `input_ids` may hold one list of windows per example (`data/windows.py`): batches then carry every window
    of their documents as rows ([W, T]) and `window_doc` [W].
    """
    if input_ids and input_ids[0] and isinstance(input_ids[0][0], list):
        return _window_feed(input_ids, labels, batch_size=batch_size, train=train, seed=seed, pad_id=pad_id,
                            padding=padding, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of,
                            length_chunk=length_chunk)
    if len(input_ids) != len(labels):
        raise ValueError(f"{len(input_ids)} sequences but {len(labels)} labels")
    lengths = np.fromiter((len(s) for s in input_ids), dtype=np.int64, count=len(input_ids))
    if len(lengths) and lengths.max() > max_length:
        raise ValueError(f"a sequence has {lengths.max()} tokens, more than max_length={max_length}")
    plan = BatchPlan(lengths, batch_size, train, seed, chunk_batches=length_chunk)

    def collate(idx: np.ndarray, width: int) -> dict:
        ids, mask = pad_rows([input_ids[i] for i in idx], width, fill=pad_id)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    return Feed(plan, label_array(labels), collate, padding=padding, max_length=max_length,
                pad_to_multiple_of=pad_to_multiple_of, input_ids=input_ids)


def _window_feed(windows: list[list[list[int]]], labels: list[int], *, batch_size: int, train: bool, seed: int,
                 pad_id: int, padding: str, max_length: int, pad_to_multiple_of: int,
                 length_chunk: int = CHUNK_BATCHES) -> Feed:
    """A feed of documents made of windows: rows are windows, plans and labels are per document."""
    if len(windows) != len(labels):
        raise ValueError(f"{len(windows)} documents but {len(labels)} labels")
    groups = Groups.of(windows)
    rows = make_feed(flatten(windows), [0] * len(groups.row_lengths), batch_size=batch_size, train=False,
                     seed=seed, pad_id=pad_id, padding=padding, max_length=max_length,
                     pad_to_multiple_of=pad_to_multiple_of)
    plan = BatchPlan(groups.doc_tokens(), batch_size, train, seed, sizes=groups.counts,
                     chunk_batches=length_chunk)
    return Feed(plan, label_array(labels), rows.collate, padding=padding, max_length=max_length,
                pad_to_multiple_of=pad_to_multiple_of, input_ids=rows.input_ids, groups=groups)
