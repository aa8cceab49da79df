"""File readers: labelled splits (.csv .tsv .jsonl .json .parquet, optionally .gz; aclImdb folders) and
the streaming unlabelled reader behind `sentune predict`.

Every problem with a file is one `DataError` that names the file and the row (or line) or column.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sentune.data.limits import lines, open_gzip_text, read_all
from sentune.data.text import encodable
from sentune.errors import DataError

LABELLED_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
_INT = re.compile(r"\s*-?\d+\s*")


@dataclass(frozen=True)
class LabelForm:
    """How a multi-label file spells its label sets when they are not JSON lists."""

    separator: str | None = None  # "joy,love" in one column (--label-separator)
    columns: tuple[str, ...] = ()  # one 0/1 column per label (--label-columns)


@dataclass
class RawSplit:
    """One split as read: texts, label names as strings (a tuple of names for a label set), its source."""

    texts: list[str]
    labels: list  # str, or tuple[str, ...] for a multi-label row
    source: str
    class_names: list[str] | None = None  # a ClassLabel's names: the label order to use
    unit: str = "row"  # how to name a position: "row" (1-based data row) or "line"
    positions: list[int] | None = None  # the row/line number of each example when not i + 1
    origin: list[tuple[str, int]] | None = None  # after edits (data/edits.py): each example's file split and row

    def row_name(self, index: int) -> str:
        position = self.positions[index] if self.positions is not None else index + 1
        return f"{self.source} {self.unit} {position}"


def label_name(value) -> str | None:
    """A label as a string name: 3, 3.0 and "3" are all "3"; None/"" are missing."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        value = value.strip()
        if _INT.fullmatch(value):
            return str(int(value))
        return value or None
    return str(value)


def file_format(path: Path) -> str:
    """The format of a file name, ignoring a trailing .gz: csv, tsv, jsonl, json, parquet, txt or ''."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1][1:] if suffixes else ""


def open_text(path: Path) -> io.TextIOBase:
    """Open (gzip-aware, capped: data/limits.py) as UTF-8 text; a BOM is dropped, a bad byte raises
    UnicodeDecodeError on read."""
    if path.name.lower().endswith(".gz"):
        return open_gzip_text(path)
    return open(path, encoding="utf-8-sig", newline="")


# --- labelled files ---

def read_labelled_file(path: Path, text_column: str = "text", label_column: str = "label",
                       form: LabelForm | None = None) -> RawSplit:
    """Read one labelled file into a RawSplit, validating every row."""
    fmt = file_format(path)
    if fmt not in LABELLED_FORMATS:
        raise DataError(f"{path}: unknown file type {''.join(path.suffixes) or '(no extension)'}; "
                        f"use one of .{', .'.join(LABELLED_FORMATS)} (optionally .gz)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        rows = _RECORD_READERS[fmt](path)
        unit = "row" if fmt in ("csv", "tsv", "parquet") else "line"
        raw = _collect(path, rows, text_column, label_column, unit, form)
        names = parquet_class_names(path, label_column) if fmt == "parquet" else None
        return _apply_class_names(raw, names) if names else raw
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read the file: {e}") from None


def _collect(path: Path, records: Iterator[tuple[int, dict]], text_column: str, label_column: str,
             unit: str, form: LabelForm | None = None) -> RawSplit:
    texts, labels, positions = [], [], []
    form = form or LabelForm()
    for position, record in records:
        where = f"{path} {unit} {position}"
        # {"text", "labels": [...]} files (GoEmotions) need no flag: `labels` stands in for a missing `label`
        column = "labels" if label_column == "label" and "label" not in record and "labels" in record \
            else label_column
        for name in (text_column, *(form.columns or (column,))):
            if name not in record:
                raise _missing_column(path, name, list(record), where)
        text = record[text_column]
        label = _row_label(record, column, form, where)
        if not isinstance(text, str) or not text.strip():
            kind = type(text).__name__
            what = "empty" if text is None or isinstance(text, str) else f"not a string ({kind})"
            raise DataError(f"{where}: text in column {text_column!r} is {what}")
        if label is None:
            raise DataError(f"{where}: missing label in column {column!r}")
        texts.append(text)
        labels.append(label)
        positions.append(position)
    if not texts:
        raise DataError(f"{path}: no rows")
    return RawSplit(texts, labels, str(path), unit=unit, positions=positions)


def _row_label(record: dict, column: str, form: LabelForm, where: str):
    """One row's label: a name, or a tuple of names (JSON list, separator-joined string, 0/1 columns)."""
    if form.columns:
        return tuple(c for c in form.columns if _flag(record[c], c, where))
    value = record[column]
    if isinstance(value, (list, tuple)):
        names = tuple(label_name(v) for v in value)
        if any(n is None for n in names):
            raise DataError(f"{where}: an empty label inside the list in column {column!r}")
        return names
    if form.separator is not None and (value is None or isinstance(value, str)):
        return tuple(p.strip() for p in (value or "").split(form.separator) if p.strip())
    return label_name(value)


def _flag(value, column: str, where: str) -> bool:
    name = label_name(value)
    if name in ("1", "True", "true"):
        return True
    if name in (None, "0", "False", "false"):
        return False
    raise DataError(f"{where}: column {column!r} must be 0 or 1 (one column per label), got {value!r}")


def _missing_column(path: Path, column: str, present: list, where: str) -> DataError:
    hint = "; choose the columns with --text-column/--label-column"
    shown = ", ".join(map(str, present)) or "none"
    return DataError(f"{where}: no column {column!r} (columns: {shown}){hint}")


def _csv_records(path: Path, delimiter: str) -> Iterator[tuple[int, dict]]:
    with open_text(path) as f:
        reader = csv.reader(lines(f, path), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file") from None
        except csv.Error as e:
            raise DataError(f"{path} row 0: cannot parse the header: {e}") from None
        row = 0
        while True:
            row += 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(f"{path} row {row}: cannot parse: {e}") from None
            if not values:
                continue  # a blank line
            if len(values) != len(header):
                raise DataError(f"{path} row {row}: {len(values)} fields, but the header has {len(header)}")
            yield row, dict(zip(header, values, strict=True))


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    with open_text(path) as f:
        for line_no, line in enumerate(lines(f, path), start=1):
            if line.strip():
                yield line_no, _json_object(line, f"{path} line {line_no}")


def _json_object(line: str, where: str) -> dict:
    try:
        record = _valid_unicode(json.loads(line), line)
    except ValueError as e:
        raise DataError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _valid_unicode(value, raw: str):
    """JSON may carry lone UTF-16 surrogates ("\\ud800"), which no tokenizer or UTF-8 writer accepts:
    strings are mended (`text.encodable`) when the raw JSON has such an escape (it is the only way in)."""
    if not _SURROGATE_ESCAPE.search(raw):
        return value
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, list):
        return [_valid_unicode(v, raw) for v in value]
    if isinstance(value, dict):
        return {_valid_unicode(k, raw): _valid_unicode(v, raw) for k, v in value.items()}
    return value


def _json_records(path: Path) -> Iterator[tuple[int, dict]]:
    """A .json file: a list of objects, {"data": [...]}, or (often mislabelled) JSON Lines."""
    with open_text(path) as f:
        content = read_all(f, path)
    try:
        document = _valid_unicode(json.loads(content), content)
    except ValueError:
        yield from _jsonl_records(path)
        return
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        raise DataError(f"{path}: expected a JSON list of objects")
    for index, record in enumerate(document, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path} item {index}: expected a JSON object, got {type(record).__name__}")
        yield index, record


def _parquet_records(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read as Parquet (after row {row}): {e}") from None


def parquet_class_names(path: Path, label_column: str) -> list[str] | None:
    """ClassLabel names stored by `datasets` in a Parquet file's schema metadata, if any."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    try:
        features = json.loads(metadata[b"huggingface"])["info"]["features"]
        names = features[label_column]["names"]
    except (KeyError, TypeError, ValueError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def _apply_class_names(raw: RawSplit, names: list[str]) -> RawSplit:
    """Integer ids of a ClassLabel column -> their names (so label order and mapping follow the names)."""
    for row, label in enumerate(raw.labels):
        if not (_INT.fullmatch(label) and 0 <= int(label) < len(names)):
            raise DataError(f"{raw.row_name(row)}: label {label!r} is not a class id of {', '.join(names)}")
    raw.labels = [names[int(label)] for label in raw.labels]
    raw.class_names = names
    return raw


_RECORD_READERS = {
    "csv": lambda p: _csv_records(p, ","),
    "tsv": lambda p: _csv_records(p, "\t"),
    "jsonl": _jsonl_records,
    "json": _json_records,
    "parquet": _parquet_records,
}


# --- folders ---

# The names a file, a folder or a Hub dataset may give each of the three splits (any case).
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "dev", "valid"), "test": ("test",)}


def split_of(name: str) -> str | None:
    """train / validation / test for a split, file stem or folder name; None for any other (e.g. unsup)."""
    return next((split for split, aliases in SPLIT_ALIASES.items() if name.lower() in aliases), None)


def find_split_files(folder: Path) -> dict[str, Path]:
    """train/validation/test files in a folder, by file stem (val, dev, valid count as validation)."""
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        split = split_of(file.name.split(".")[0])
        if split is not None and file_format(file) in LABELLED_FORMATS and file.is_file():
            if split in found:
                names = f"{found[split].name}, {file.name}"
                raise DataError(f"{folder}: two {split} files ({names}); keep one")
            found[split] = file
    return found


def read_aclimdb(folder: Path) -> dict[str, RawSplit | None]:
    """An aclImdb-style folder: `<split>/<label>/*.txt`, one review per file; `unsup` is ignored."""
    out: dict[str, RawSplit | None] = {}
    for split_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        split = split_of(split_dir.name)
        if split is None:
            continue
        texts, labels = [], []
        for label_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name != "unsup"):
            for file in sorted(label_dir.glob("*.txt"), key=_natural_key):
                texts.append(_read_review(file))
                labels.append(label_dir.name)
        if not texts:
            raise DataError(f"{split_dir}: no <label>/*.txt files")
        out[split] = RawSplit(texts, labels, str(split_dir), unit="file")
    return out


def _natural_key(path: Path) -> tuple:
    """12_7.txt after 2_3.txt: sort by the numbers in the name."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _read_review(file: Path) -> str:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{file}: not valid UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise DataError(f"{file}: empty review")
    return text


# --- unlabelled, streaming (sentune predict) ---

def read_texts(path: str, text_column: str = "text") -> Iterator[dict]:
    """Stream rows to predict on: dicts with "text" plus the other columns; constant memory.

    Plain text (.txt or any other extension) is one text per line, blank lines skipped; "-" reads
    stdin as plain text, or as JSON Lines when the first line is a JSON object.
    """
    if path == "-":
        yield from _stdin_texts(sys.stdin, text_column)
        return
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: no such file")
    fmt = file_format(file)
    try:
        with open_text(file) as f:
            if fmt in ("csv", "tsv"):
                yield from _csv_texts(lines(f, path), path, "," if fmt == "csv" else "\t", text_column)
            elif fmt in ("jsonl", "json"):
                yield from _jsonl_texts(lines(f, path), path, text_column)
            else:
                yield from _plain_texts(lines(f, path))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the file: {e}") from None


def _plain_texts(lines) -> Iterator[dict]:
    for line in lines:
        text = line.rstrip("\r\n")
        if text.strip():
            yield {"text": text}


def _stdin_texts(stream, text_column: str) -> Iterator[dict]:
    import itertools

    rows = lines(stream, "stdin")
    first = next(rows, "")
    if first.lstrip().startswith("{"):
        yield from _jsonl_texts(itertools.chain([first], rows), "stdin", text_column)
    elif first:
        yield from _plain_texts(itertools.chain([first], rows))


def _text_row(record: dict, where: str, text_column: str, path: str) -> dict:
    if text_column not in record:
        raise _missing_column(Path(path), text_column, list(record), where)
    text = record[text_column]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: text in column {text_column!r} is empty or not a string")
    out = {k: v for k, v in record.items() if k != text_column}
    out["text"] = text
    return out


def _csv_texts(f, path: str, delimiter: str, text_column: str) -> Iterator[dict]:
    reader = csv.reader(f, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        if text_column not in header:
            raise _missing_column(Path(path), text_column, header, f"{path}")
        for values in reader:
            if not values:
                continue
            where = f"{path} row {reader.line_num - 1}"
            if len(values) != len(header):
                raise DataError(f"{where}: {len(values)} fields, but the header has {len(header)}")
            yield _text_row(dict(zip(header, values, strict=True)), where, text_column, path)
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: cannot parse: {e}") from None


def _jsonl_texts(lines, path: str, text_column: str) -> Iterator[dict]:
    for line_no, line in enumerate(lines, start=1):
        if line.strip():
            where = f"{path} line {line_no}"
            yield _text_row(_json_object(line, where), where, text_column, path)
