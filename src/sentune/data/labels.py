"""Labels beyond one class per text: multi-hot label sets and regression targets, and how to sample them.

Multi-label: the vocabulary is the Hub's ClassLabel names when there are some, else the sorted names seen
in training; each row becomes a 0/1 float vector (a row with no label is all zeros, which is allowed).
Regression: each row's label must be a number; targets are standardised with the training mean and std
(`--label-scale standard`, the default) and the scale is stored so predictions come back in the original
units (it is folded into the saved head: see `tasks.fold_scale`).

Sampling (`--limit-*`, carving a validation split) stays stratified: iterative stratification
(Sechidis et al. 2011, via the `iterative-stratification` package) for label sets, and quantile bins of
the target for regression, so a sample keeps rare labels and the target's spread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sentune import tasks
from sentune.data.readers import RawSplit
from sentune.errors import DataError

REGRESSION_BINS = 10  # quantile bins a regression target is stratified on


def as_set(label) -> tuple[str, ...]:
    """A row's label set; a plain name counts as a set of one (single-label data trains as multi-label)."""
    return label if isinstance(label, tuple) else (label,)


def multi_label_vocabulary(train: RawSplit) -> list[str]:
    if train.class_names:
        return list(train.class_names)
    names = sorted({name for label in train.labels for name in as_set(label)})
    if len(names) < 2:
        raise DataError(f"{train.source}: only {len(names)} distinct label(s); multi-label needs at least two")
    return names


def multi_hot(part: RawSplit, names: Sequence[str], known_by: str = "training") -> list[list[float]]:
    index = {name: i for i, name in enumerate(names)}
    out = []
    for row, label in enumerate(part.labels):
        vector = [0.0] * len(names)
        for name in as_set(label):
            if name not in index:
                raise DataError(f"{part.row_name(row)}: label {name!r} never appears in {known_by} data "
                                f"(known labels: {', '.join(names)})")
            vector[index[name]] = 1.0
        out.append(vector)
    return out


def regression_targets(part: RawSplit) -> list[float]:
    out = []
    for row, label in enumerate(part.labels):
        try:
            value = float(label) if not isinstance(label, tuple) else None
        except ValueError:
            value = None
        if value is None or not np.isfinite(value):
            raise DataError(f"{part.row_name(row)}: regression target {label!r} is not a number "
                            "(or pass --task single_label / multi_label)")
        out.append(value)
    return out


def encode_label_sets(raw: dict[str, RawSplit], label_column: str,
                      label_scale: str) -> tuple[list[str], dict[str, list], None]:
    """(label names, 0/1 vectors per split, no scale) for a multi-label run."""
    names = multi_label_vocabulary(raw["train"])
    return names, {split: multi_hot(part, names) for split, part in raw.items()}, None


def encode_values(raw: dict[str, RawSplit], label_column: str,
                  label_scale: str) -> tuple[list[str], dict[str, list], dict]:
    """(the column as the one output's name, standardised targets per split, their scale) for regression."""
    values = {split: regression_targets(part) for split, part in raw.items()}
    scale = tasks.standardise(values["train"], label_scale)
    mean, std = scale["mean"], scale["std"]
    return [label_column], {s: [(v - mean) / std for v in vs] for s, vs in values.items()}, scale


# ---- stratified sampling ----------------------------------------------------------------------------------
def pick(labels: list, n_take: int, seed: int, held_out: bool = False) -> tuple[list[int], list[int]]:
    """(taken, rest) row indices: n_take rows stratified on the labels, whatever the task.

    held_out: take them as sklearn's test part (how a validation split is carved), else as its train part
    (how --limit samples), so single-label runs draw exactly the rows they always drew."""
    first = labels[0] if labels else None
    if isinstance(first, list):
        return _iterative(np.asarray(labels), n_take, seed)
    from sklearn.model_selection import train_test_split

    strata = _fits(_bins(labels) if isinstance(first, float) else list(labels), n_take)
    size = {"test_size" if held_out else "train_size": n_take}
    first_part, second_part = train_test_split(list(range(len(labels))), random_state=seed, stratify=strata,
                                               **size)
    taken, rest = (second_part, first_part) if held_out else (first_part, second_part)
    return sorted(taken), sorted(rest)


def _fits(strata: list, n_take: int) -> list | None:
    """The strata when sklearn can split on them (every stratum twice, room for one of each), else None."""
    counts: dict = {}
    for s in strata:
        counts[s] = counts.get(s, 0) + 1
    ok = min(counts.values()) >= 2 and len(counts) <= n_take <= len(strata) - len(counts)
    return strata if ok else None


def _bins(values: list[float]) -> list[int]:
    y = np.asarray(values)
    edges = np.unique(np.quantile(y, np.linspace(0, 1, REGRESSION_BINS + 1)[1:-1]))
    return np.searchsorted(edges, y, side="right").tolist()


def _iterative(y: np.ndarray, n_take: int, seed: int) -> tuple[list[int], list[int]]:
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if n_take >= len(y):
        return list(range(len(y))), []
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_take, random_state=seed)
    rest, taken = next(splitter.split(np.zeros((len(y), 1)), y))
    # the algorithm deals rows out one label at a time, so the sizes come out only close to the asked ones;
    # a few rows picked at random (seeded) make them exact
    rng = np.random.default_rng(seed)
    taken, rest = rng.permutation(taken).tolist(), rng.permutation(rest).tolist()
    while len(taken) > n_take:
        rest.append(taken.pop())
    while len(taken) < n_take:
        taken.append(rest.pop())
    return sorted(taken), sorted(rest)
