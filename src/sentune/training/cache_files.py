"""The frozen-layer cache's files on disk: checked on open, temporaries of dead writers cleaned, listed, pruned.

    <cache_dir>/prefix-<key>.bin    the cached hidden states (.npy), named by the content key (cache.py)
    <cache_dir>/prefix-<key>.json   its metadata: format, examples, tokens, model, depth, dtype, created, sha256

A file is used only when its SHA-256 matches the one recorded when it was written: bit rot, a truncated copy
or a file changed in a shared --cache-dir is rebuilt, never used. (The hash proves the file is the one that
was written; keep a shared --cache-dir writable only by those you trust, as for any model folder.)
A writer holds a shared `flock` on its temporary file, so a temporary that can be locked exclusively and is
older than a minute belongs to a dead writer (SIGKILL, a lost machine) and is removed. The .bin's mtime is
its last use (touched on reuse): `sentune cache prune --older-than DAYS` / `--max-gb N` go by it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sentune.atomic import atomic_file, atomic_write_json

PREFIX = "prefix-"
HASH_CHUNK = 8 << 20
STALE_SECONDS = 60  # a temporary younger than this may be one a writer has just created and not locked yet


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def publish(path: Path, fill: Callable[[Path], None], meta: dict) -> None:
    """Data, then metadata (with the data's hash), each written atomically: readers never see a half cache.
    The temporary is locked while it is written, so a cleaner can tell a live writer from a dead one."""
    digest: list[str] = []

    def write(tmp: Path) -> None:
        import fcntl

        fd = os.open(tmp, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            fill(tmp)
            digest.append(file_sha256(tmp))
        finally:
            os.close(fd)

    atomic_file(path, write)
    atomic_write_json(path.with_suffix(".json"), meta | {"created": time.time(), "sha256": digest[0]})


def read_checked(path: Path) -> dict | None:
    """The metadata of a cache file whose content matches its recorded hash; None when there is none.
    A mismatch warns (naming the file) and returns None: the caller rebuilds and overwrites it."""
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        actual = file_sha256(path)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("sha256") != actual:
        warnings.warn(f"frozen-layer cache {path} does not match its recorded hash (corrupted, truncated or "
                      "changed since it was written); it is rebuilt, not used", stacklevel=3)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # its last use, for `sentune cache prune --older-than`
    return meta


def clean_stale(root: Path) -> list[Path]:
    """Remove temporaries whose writer is gone (no lock held, older than STALE_SECONDS); returns them."""
    import fcntl

    removed = []
    for tmp in sorted(root.glob(f".{PREFIX}*.tmp")) if root.is_dir() else []:
        try:
            if time.time() - tmp.stat().st_mtime < STALE_SECONDS:
                continue
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        except OSError:
            pass  # a live writer holds it
        finally:
            os.close(fd)
    return removed


@dataclass
class Entry:
    """One cached split as `sentune cache list` shows it."""

    path: Path
    size: int  # bytes of the data file
    last_used: float  # its mtime
    model: str
    depth: int | None
    examples: int | None

    def line(self, now: float) -> str:
        days = (now - self.last_used) / 86400
        return (f"{self.size / 1e6:10,.1f} MB  {days:6.1f} d  {self.model}  layers 0-{(self.depth or 0) - 1}, "
                f"{self.examples if self.examples is not None else '?'} examples  {self.path.name}")


def entries(root: Path) -> list[Entry]:
    """Every cache file under `root`, most recently used first (metadata read, hashes not checked)."""
    out = []
    for path in sorted(root.glob(f"{PREFIX}*.bin")) if root.is_dir() else []:
        try:
            meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        stat = path.stat()
        out.append(Entry(path, stat.st_size, stat.st_mtime, str(meta.get("model", "(unknown: an older cache)")),
                         meta.get("depth"), meta.get("examples")))
    return sorted(out, key=lambda e: -e.last_used)


def prune(root: Path, older_than_days: float | None = None, max_bytes: int | None = None,
          dry_run: bool = False) -> list[Entry]:
    """Remove cache files unused for `older_than_days`, then the least recently used ones until the rest
    fit `max_bytes`; and temporaries of dead writers. Returns the removed entries."""
    now, kept, removed = time.time(), [], []  # type: tuple[float, list[Entry], list[Entry]]
    for entry in entries(root):
        old = older_than_days is not None and now - entry.last_used > older_than_days * 86400
        (removed if old else kept).append(entry)
    while max_bytes is not None and kept and sum(e.size for e in kept) > max_bytes:
        removed.append(kept.pop())  # the least recently used
    if not dry_run:
        for entry in removed:
            entry.path.unlink(missing_ok=True)
            entry.path.with_suffix(".json").unlink(missing_ok=True)
        clean_stale(root)
    return removed
