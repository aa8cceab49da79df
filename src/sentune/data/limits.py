"""Bounds on what a data file may make sentune read: one line, and what a .gz file decompresses to.

A 100 KB .jsonl.gz can decompress to a single 100 MB line; read whole, it costs memory and minutes before
any check runs. Lines are read at most `MAX_LINE_CHARS` at a time, and a .gz file is cut off past
`max(MIN_DECOMPRESSED, MAX_EXPANSION x its size)`: each is one `DataError` naming the file and line.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

from sentune.errors import DataError

MAX_LINE_CHARS = 10_000_000  # one record (a JSON line, a CSV row's line, a text) longer than this is refused
MAX_EXPANSION = 200  # real text compresses 3-10x; 200x is a decompression bomb ...
MIN_DECOMPRESSED = 256 << 20  # ... unless the whole file stays this small


class TooLarge(Exception):
    """Raised inside the decompressing stream; `lines` turns it into a DataError naming the line."""


class _Capped(io.RawIOBase):
    """A binary stream that stops with `TooLarge` once more than `cap` bytes came out of `inner`."""

    def __init__(self, inner, cap: int):
        self.inner, self.cap, self.total = inner, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.inner.readinto(buffer)
        self.total += n or 0
        if self.total > self.cap:
            raise TooLarge(self.cap)
        return n

    def close(self) -> None:
        self.inner.close()
        super().close()


def open_gzip_text(path: Path) -> io.TextIOBase:
    """A .gz file as UTF-8 text (BOM dropped) that refuses to decompress past its cap."""
    cap = max(MIN_DECOMPRESSED, MAX_EXPANSION * path.stat().st_size)
    capped = _Capped(gzip.open(path, "rb"), cap)
    return io.TextIOWrapper(io.BufferedReader(capped), encoding="utf-8-sig", newline="")


def too_large(where: str, e: TooLarge) -> DataError:
    return DataError(f"{where}: decompresses to more than {e.args[0]:,} bytes (over {MAX_EXPANSION}x "
                     "its compressed size): refused as a likely decompression bomb; if the data is genuine, "
                     "decompress it first and pass the plain file")


def lines(f, path: str | Path) -> Iterator[str]:
    """The lines of `f` (newlines kept), each at most MAX_LINE_CHARS long, never read whole when longer."""
    number = 0
    while True:
        try:
            line = f.readline(MAX_LINE_CHARS + 1)
        except TooLarge as e:
            raise too_large(f"{path} line {number + 1}", e) from None
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_CHARS and line[-1] not in "\r\n":
            raise DataError(f"{path} line {number}: longer than {MAX_LINE_CHARS:,} characters; split the "
                            "record, or check that the file is what you meant to pass")
        yield line


def read_all(f, path: str | Path) -> str:
    """The whole (bounded) content of a file that is one document (.json)."""
    try:
        return f.read()
    except TooLarge as e:
        raise too_large(str(path), e) from None
