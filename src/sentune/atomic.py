"""Atomic writes: a file or a folder is replaced whole or not at all.

Everything is written to a temporary sibling, flushed to disk and renamed into place, so a crash, a kill or
a full disk never leaves a half-written file where a good one was. A failed write is a `WriteError` that
names the path and says the previous copy is unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sentune.errors import WriteError


def atomic_file(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) to fill a temporary sibling file, flush it to disk, then rename it to `path`.

    A failed write (OSError) is a WriteError; any failure, a Ctrl-C included, removes the temporary file.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise WriteError(f"cannot write {path}: {e.strerror or e}; the previous file is unchanged") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_dir(target: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp_dir) on a temporary sibling, flush it to disk, then swap it in for `target`.

    On Linux the swap is one atomic `renameat2(RENAME_EXCHANGE)`: a kill at any moment leaves either the
    old or the new complete folder under `target`. Elsewhere the old folder is renamed aside first
    (`.<name>.old`, put back by `recover`), then the new one takes its name. A failed or killed write
    leaves the previous folder untouched; its temporary sibling is removed by the next write.
    """
    target = Path(target)
    tmp = None
    try:
        recover(target)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        write(tmp)
        _fsync_tree(tmp)
        _swap_in(tmp, target)
    except BaseException as e:  # also KeyboardInterrupt: never leave a half folder behind
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        recover(target)
        if isinstance(e, OSError) or "os error" in str(e):  # safetensors' writer wraps the OSError
            reason = getattr(e, "strerror", None) or str(e)
            raise WriteError(f"cannot write {target}: {reason}; the previous copy is unchanged") from None
        raise


def recover(target: Path) -> None:
    """Put back a folder that a kill left renamed aside, and remove temporary siblings of killed writes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    if old.is_dir() and not target.exists():
        try:
            os.replace(old, target)
        except FileNotFoundError:  # another process (rank) put it back first
            pass
    for name in os.listdir(target.parent):
        if name.startswith(f".{target.name}.") and name.endswith(".tmp"):
            shutil.rmtree(target.parent / name, ignore_errors=True)


def _swap_in(tmp: Path, target: Path) -> None:
    if target.exists() and _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # it now holds the old folder
        return
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system lacks it."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # e.g. a file system without exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(folder: Path) -> None:
    """Data on disk before the rename, so a power loss cannot leave a renamed but empty file."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
