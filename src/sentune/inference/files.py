"""`sentune predict` on many texts: stream rows in, predictions out, in constant memory.

Rows come from `data.read_texts` (txt/csv/tsv/jsonl(.gz) or stdin) and are classified one chunk at a
time, so a file of a million lines never sits in memory. Each output record is the prediction
(label, score, probs) plus either the input's other columns or, when there are none, an `id` (the
row's position). An input column named like an output key (label, score, probs) is kept as
`input_<name>`; an input `label` column is also the gold label for the accuracy printed at the end.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from sentune.inference.classifier import Classifier

CHUNK_ROWS = 1024  # rows classified per chunk: large enough for good length-sorted batches
OUTPUT_KEYS = ("label", "score", "probs", "labels", "value")  # single-label; multi-label; regression
GOLD_COLUMN = "label"


def chunked(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def predict_rows(clf: Classifier, rows: Iterable[dict], batch_size: int = 32,
                 chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[dict, dict]]:
    """(input row, prediction) pairs in input order, computed chunk by chunk (lazy)."""
    for chunk in chunked(rows, chunk_rows):
        yield from zip(chunk, clf.predict([row["text"] for row in chunk], batch_size), strict=True)


def output_record(row: dict, prediction: dict, index: int) -> dict:
    carried = {(f"input_{k}" if k in OUTPUT_KEYS else k): v for k, v in row.items() if k != "text"}
    return {**(carried or {"id": index}), **prediction}


@dataclass
class Accuracy:
    """Accuracy against an input `label` column: label names, or class indices into the model's labels."""

    labels: list[str]
    rows: int = 0  # every row seen, labelled or not
    correct: int = 0
    counted: int = 0
    unknown: int = 0

    def add(self, gold, predicted: str) -> None:
        self.rows += 1
        if gold is None or gold == "":
            return
        name = str(gold)
        if name not in self.labels and str(gold).lstrip("-").isdigit() and 0 <= int(gold) < len(self.labels):
            name = self.labels[int(gold)]
        if name not in self.labels:
            self.unknown += 1
            return
        self.counted += 1
        self.correct += name == predicted

    def summary(self) -> str | None:
        if not self.counted and not self.unknown:
            return None
        parts = []
        if self.counted:
            parts.append(f"accuracy {self.correct / self.counted:.4f} ({self.correct}/{self.counted} labelled rows)")
        if self.unknown:
            parts.append(f"{self.unknown} rows with a label the model does not have ({', '.join(self.labels)})")
        return "; ".join(parts)


class JsonlWriter:
    def __init__(self, out: IO[str]):
        self.out = out

    def write(self, record: dict) -> None:
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")


class CsvWriter:
    """CSV with one `prob_<label>` column per class; the header comes from the first record.

    Multi-label: `labels` holds the chosen names joined by ","; regression: one `value` column. Text cells that a
    spreadsheet would run as a formula (starting with = + - @, tab or CR) get a leading ' (OWASP's advice)."""

    def __init__(self, out: IO[str], labels: list[str]):
        self.out = out
        self.labels = labels
        self.writer: Any = None  # csv.writer, made with the header from the first record
        self.columns: list[str] = []

    def write(self, record: dict) -> None:
        flat = {k: v for k, v in record.items() if k != "probs"}
        if isinstance(record.get("labels"), list):
            flat["labels"] = ",".join(item["label"] for item in record["labels"])
        flat.update({f"prob_{label}": p for label, p in (record.get("probs") or {}).items()})
        if self.writer is None:
            self.writer = csv.writer(self.out)
            self.writer.writerow([spreadsheet_safe(name) for name in flat])
            self.columns = list(flat)
        self.writer.writerow([spreadsheet_safe(flat.get(name, "")) for name in self.columns])


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A CSV cell that no spreadsheet evaluates: text starting like a formula is prefixed with '."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_predictions(clf: Classifier, rows: Iterable[dict], out: IO[str], *, fmt: str = "jsonl",
                      batch_size: int = 32, progress: bool = False) -> Accuracy:
    """Classify `rows` and write one record per row to `out`; returns the accuracy counters."""
    from tqdm.auto import tqdm

    writer = CsvWriter(out, clf.labels) if fmt == "csv" else JsonlWriter(out)
    accuracy = Accuracy(clf.labels)
    bar = tqdm(unit=" texts", disable=None if progress else True, file=sys.stderr, dynamic_ncols=True)
    for index, (row, prediction) in enumerate(predict_rows(clf, rows, batch_size)):
        writer.write(output_record(row, prediction, index))
        if "label" in prediction:  # accuracy against a gold column means one label per text
            accuracy.add(row.get(GOLD_COLUMN), prediction["label"])
        bar.update(1)
    bar.close()
    return accuracy
