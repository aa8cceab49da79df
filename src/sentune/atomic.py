"""Atomic writes: a file or a folder is replaced whole or not at all.

Everything is written to a temporary sibling, flushed to disk and renamed into place, so a crash, a kill or
a full disk never leaves a half-written file where a good one was; the folder holding it is flushed after the
rename, so the new name survives a power loss too. A failed write is a `WriteError` that names the path and
says the previous copy is unchanged. Files and folders get the modes an ordinary `open`/`mkdir` would give
(0666 / 0777 less the umask), not mkstemp's private 0600 / 0700, so a model trained by one user can be
served by another where the umask allows it.
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
        tmp.chmod(0o666 & ~umask())
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
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
        tmp.chmod(0o777 & ~umask())
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
        fsync_dir(target.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # it now holds the old folder
        return
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_dir(target.parent)
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
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(path)
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """A rename lives in its folder's entries: flush them, else a power loss can undo a finished rename.
    Systems that cannot open or flush a folder (Windows, some network file systems) skip it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else set back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
