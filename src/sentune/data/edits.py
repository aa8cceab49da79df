"""Acting on an audit: `--exclude FILE` drops or relabels flagged rows, `--add-file FILE` adds labelled rows.

The exclude file is `sentune audit`'s issues.jsonl, its editable issues.csv, or any file of that shape: one
record per row to change, naming its `split` (train, validation, or add: the --add-file) and its `row`
(0-based among that file's data rows, as pandas numbers them). `action` says what to do: drop (the default),
relabel (the row takes its `suggested` label) or keep (ignored: a finding a person overruled). Test rows are
never changed (the benchmark stays the benchmark); they are counted as ignored.

Edits apply to the raw splits before a validation split is carved or a sample drawn, so a row means the same
row whatever the run's other settings; the run's manifest records every changed row (`edits`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from sentune.data.readers import RawSplit, file_format, label_name, open_text
from sentune.errors import DataError

ACTIONS = ("drop", "relabel", "keep")
EDITABLE = ("train", "validation", "add")  # splits an edit may change; test rows are only ever reported
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # cells a spreadsheet would run as a formula


@dataclass
class Edit:
    split: str
    row: int
    action: str
    suggested: object = None
    where: str = ""  # the exclude file's line, for error messages


@dataclass
class Applied:
    """What the edits did, for the manifest: which rows, how many."""

    source: str
    dropped: list[dict] = field(default_factory=list)
    relabelled: list[dict] = field(default_factory=list)
    ignored: int = 0
    added: int = 0

    def record(self) -> dict:
        return {"source": self.source, "dropped": len(self.dropped), "relabelled": len(self.relabelled),
                "ignored": self.ignored, "added": self.added,
                "rows": {"dropped": self.dropped, "relabelled": self.relabelled}}


def read_edits(path: str) -> list[Edit]:
    """The records of an exclude/relabel file (jsonl or csv); a malformed one is a DataError naming its line."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"--exclude {path}: no such file")
    with open_text(file) as f:
        if file_format(file) == "csv":
            records = [(f"{path} row {i + 1}", _uncell(r)) for i, r in enumerate(csv.DictReader(f))]
        else:
            records = [(f"{path} line {i + 1}", _json(line, f"{path} line {i + 1}"))
                       for i, line in enumerate(f) if line.strip()]
    return [_edit(record, where) for where, record in records]


def _json(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except ValueError:
        raise DataError(f"{where}: not a JSON object; each line holds one finding as issues.jsonl does") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: not a JSON object; each line holds one finding as issues.jsonl does")
    return record


def safe_cell(value) -> str:
    """A CSV cell a spreadsheet shows as text: lists as JSON, a formula-looking start defused with '."""
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else \
        "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def unguard(text: str) -> str:
    """A cell as it was before safe_cell: the apostrophe in front of a formula-looking start removed."""
    return text[1:] if text.startswith("'") and text[1:2] in FORMULA_START else text


def _uncell(record: dict) -> dict:
    """A CSV row back as the record it was written from: the formula guard removed, lists parsed."""
    out = {}
    for key, value in record.items():
        value = unguard(value) if isinstance(value, str) else value
        if isinstance(value, str) and value.startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return out


def _edit(record: dict, where: str) -> Edit:
    split, row, action = record.get("split"), record.get("row"), record.get("action") or "drop"
    try:
        row = int(row)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{where}: `row` must be a 0-based row number, got {row!r}") from None
    if split not in (*EDITABLE, "test") or row < 0:
        raise DataError(f"{where}: `split` must be one of train, validation, add or test and `row` >= 0, got "
                        f"split {split!r}, row {row}")
    if action not in ACTIONS:
        raise DataError(f"{where}: `action` must be one of {', '.join(ACTIONS)}, got {action!r}")
    suggested = record.get("suggested")
    if action == "relabel" and suggested in (None, ""):
        raise DataError(f"{where}: action relabel needs a `suggested` label")
    return Edit(split, row, action, suggested, where)


def apply_edits(raw: dict[str, RawSplit], edits: list[Edit], source: str) -> tuple[dict[str, RawSplit], Applied]:
    """The raw splits with the edited rows dropped or relabelled; a row past its split's end is a DataError."""
    applied = Applied(source)
    by_split: dict[str, dict[int, Edit]] = {}
    for edit in edits:
        if edit.action == "keep" or edit.split not in EDITABLE:
            applied.ignored += 1
            continue
        if edit.split not in raw:
            raise DataError(f"{edit.where}: this run has no {edit.split} file to change")
        if edit.row >= len(raw[edit.split].texts):
            raise DataError(f"{edit.where}: row {edit.row} is past the end of {raw[edit.split].source} "
                            f"({len(raw[edit.split].texts)} rows); was the file audited a different one?")
        by_split.setdefault(edit.split, {})[edit.row] = edit  # the last record for a row wins
    out = dict(raw)
    for split, changes in by_split.items():
        out[split] = _edited(raw[split], split, changes, applied)
    return out, applied


def _edited(part: RawSplit, split: str, changes: dict[int, Edit], applied: Applied) -> RawSplit:
    """The split without its dropped rows and with its relabelled ones changed; each row keeps its origin."""
    where, labels = origins(part, split), list(part.labels)
    for i, edit in sorted(changes.items()):
        if edit.action == "drop":
            applied.dropped.append({"split": split, "row": where[i][1]})
            continue
        new = _label(edit.suggested)
        applied.relabelled.append({"split": split, "row": where[i][1], "from": _plain(labels[i]), "to": _plain(new)})
        labels[i] = new
    keep = [i for i in range(len(labels)) if changes.get(i) is None or changes[i].action != "drop"]
    positions = part.positions or list(range(1, len(labels) + 1))
    return RawSplit([part.texts[i] for i in keep], [labels[i] for i in keep], part.source, part.class_names,
                    part.unit, [positions[i] for i in keep], [where[i] for i in keep])


def _label(value):
    """A suggested label as the readers give labels: a name, or a tuple of names for a label set."""
    if isinstance(value, list | tuple):
        return tuple(sorted(str(v) for v in value))
    return label_name(value)


def _plain(label):
    return list(label) if isinstance(label, tuple) else label


def add_rows(train: RawSplit, added: RawSplit) -> RawSplit:
    """Training rows followed by the --add-file's rows (each remembering its own file and row)."""
    positions = [*(train.positions or range(1, len(train.texts) + 1)),
                 *(added.positions or range(1, len(added.texts) + 1))]
    return RawSplit([*train.texts, *added.texts], [*train.labels, *added.labels],
                    f"{train.source} + {added.source}", train.class_names, train.unit, positions,
                    [*origins(train, "train"), *origins(added, "add")])


def origins(part: RawSplit, split: str) -> list[tuple[str, int]]:
    """(file split, 0-based row) of each example: where an audit finding points."""
    return part.origin if part.origin is not None else [(split, i) for i in range(len(part.texts))]
