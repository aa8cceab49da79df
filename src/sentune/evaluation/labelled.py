"""The labelled rows `evaluate` and `calibrate` score a model on: a file, or a split of a dataset.

Both commands take the same source options (one of a file flag or --dataset with --split, --dataset-config,
--text-column, --label-column, --limit, --label-separator / --label-columns); this is their one reading:
the checks, and the rows mapped onto the model's labels and task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sentune.errors import ConfigError, DataError
from sentune.tasks import Task


@dataclass
class LabelledSource:
    source: str  # a file, a folder, package:NAME or a Hub dataset name
    split: str
    dataset_config: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    limit: int | None = None  # a seeded, label-stratified sample of this many rows
    label_separator: str | None = None  # multi-label: names joined by this in the label column
    label_columns: str | None = None  # multi-label: one 0/1 column per label, comma-separated

    @classmethod
    def pick(cls, file: str | None, file_flag: str, dataset: str | None, **options) -> LabelledSource:
        """Exactly one of FILE (given as `file_flag`) or a dataset; a missing file never reaches the Hub."""
        if (file is None) == (dataset is None):
            raise ConfigError(f"give exactly one of {file_flag} FILE or --dataset NAME_OR_PATH (with --split)")
        if options.get("limit") is not None and options["limit"] < 1:
            raise ConfigError("--limit must be >= 1")
        if file is not None:
            require_file(file, file_flag)
        source = file if file is not None else dataset
        assert source is not None  # exactly one of the two was checked above
        return cls(str(source), **options)

    def load(self, labels: list[str], task: Task, at_least: int = 1, purpose: str = "score"):
        """(rows, label names): the rows mapped onto the model's `labels`, as its `task` reads them."""
        from sentune.data.splits import load_labelled

        rows, names = load_labelled(self.source, split=self.split, dataset_config=self.dataset_config,
                                    text_column=self.text_column, label_column=self.label_column,
                                    label_names=list(labels), limit=self.limit, task=task, form=self.form())
        if len(rows) < at_least:
            raise DataError(f"{self.source}: need at least {at_least} labelled rows to {purpose}, got {len(rows)}")
        return rows, names

    def form(self):
        """--label-separator / --label-columns, as the readers take them."""
        from sentune.data.readers import LabelForm

        names = tuple(c.strip() for c in (self.label_columns or "").split(",") if c.strip())
        return LabelForm(separator=self.label_separator or None, columns=names)

    def describe(self) -> dict:
        """What a result records about its data."""
        return {"source": self.source, "split": self.split, "limit": self.limit}


def require_file(path: str, flag: str) -> None:
    """A missing file must not fall through to a Hub download attempt under the same name."""
    if not Path(path).is_file():
        raise DataError(f"{flag} {path}: no such file")
