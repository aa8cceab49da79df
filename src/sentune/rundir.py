"""The run directory layout, the only way other commands read a run.

    <run>/config.yaml      resolved config (read back by --resume)
    <run>/manifest.json    versions, device, data sources (rows, label counts, fingerprint), times
    <run>/metrics.jsonl    one JSON object per epoch
    <run>/best/            save_pretrained folder of the selected weights (safetensors + tokenizer)
    <run>/final_metrics.json  test metrics of the selected weights

Every file is written through `sentune.atomic` (a temporary sibling renamed into place), so a crash never
leaves a half-written file where a good one was.

One run owns its directory: a default name that exists already gets a suffix (-2, -3, ...), a non-empty
directory is refused unless resumed (--resume) or replaced (--overwrite, a run directory only), and the run
holds an exclusive lock (`fcntl.flock` on <run>/run.lock) for its whole life, so a second run or a second
--resume of the same directory is refused while the first process lives; the kernel drops the lock when
the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Re-exported: the run's files are written through these (rundir.atomic_dir(run / "best", ...)).
from sentune.atomic import atomic_dir, atomic_write_json, atomic_write_text, recover
from sentune.errors import ConfigError, WriteError

__all__ = ["RunLock", "append_jsonl", "atomic_dir", "atomic_write_json", "atomic_write_text",
           "check_unlocked", "default_dir", "device_info", "new_dir", "open_run", "read_json", "read_jsonl", "recover",
           "versions"]

LOCK_NAME = "run.lock"  # visible on purpose: temporary files are the hidden ones
RUN_MARKS = ("config.yaml", "manifest.json")  # what makes a folder a run directory (--overwrite replaces only those)


def default_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class RunLock:
    """This process's hold on a run directory; `release` when the run ends (the kernel does it at exit)."""

    path: Path
    fd: int
    created: list[Path] = field(default_factory=list)  # folders this run made, deepest first

    def release(self) -> None:
        """Unlock; a run that wrote nothing takes back the folders it made (a failed start leaves none)."""
        if self.fd < 0:
            return
        os.close(self.fd)  # closing drops the flock
        self.fd = -1
        if os.listdir(self.path) == [LOCK_NAME]:
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            for folder in self.created:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def open_run(path: Path, *, existing: bool = False, overwrite: bool = False, new_name: bool = False) -> RunLock:
    """Create (or, `existing`: continue) the run directory `path` and lock it for this process.

    `new_name`: `path` is a default, timestamped name: taken exclusively, with -2, -3, ... when it exists.
    Otherwise an existing non-empty folder is refused unless `existing` (resume, a sweep's trial) or
    `overwrite` (which empties it, when it is a run directory)."""
    path, created = _create(Path(path), new_name)
    lock = RunLock(path, _lock_fd(path), created)
    try:
        contents = sorted(name for name in os.listdir(path) if name != LOCK_NAME)
        if contents and not existing:
            _replace_contents(path, contents, overwrite)
        os.ftruncate(lock.fd, 0)
        os.write(lock.fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
    except BaseException:
        lock.release()
        raise
    return lock


def check_unlocked(path: Path) -> None:
    """Refuse, in seconds, a run directory that another live process holds (a second --resume)."""
    if (Path(path) / LOCK_NAME).is_file():
        RunLock(Path(path), _lock_fd(Path(path))).release()


def new_dir(path: Path) -> Path:
    """A fresh folder at the default, timestamped `path`, or with -2, -3, ... when another run has that name."""
    return _create(Path(path), new_name=True)[0]


def _create(path: Path, new_name: bool) -> tuple[Path, list[Path]]:
    candidates = [path] if not new_name else [path, *(path.with_name(f"{path.name}-{i}") for i in range(2, 1000))]
    for candidate in candidates:
        missing = [folder for folder in (candidate, *candidate.parents) if not folder.exists()]  # deepest first
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            candidate.mkdir(exist_ok=not new_name)
        except FileExistsError:
            if new_name:
                continue  # another run took this name first
            raise WriteError(f"cannot create the run directory {candidate}: a file has that name") from None
        except OSError as e:
            raise WriteError(f"cannot create the run directory {candidate}: {e.strerror or e}") from None
        return candidate, missing
    raise WriteError(f"cannot find a free run directory name next to {path}; pass --output-dir")


def _lock_fd(path: Path) -> int:
    import fcntl

    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise WriteError(f"cannot lock the run directory {path} ({LOCK_NAME}): {e.strerror or e}; a run needs "
                         "a folder it may write to") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 200, 0).decode(errors="replace").split()
        os.close(fd)
        who = f"process {owner[1]} on {owner[0]}" if len(owner) == 2 else "another process"
        raise ConfigError(f"{path} is in use by a running sentune ({who}); wait for it to end (a second "
                          "--resume would corrupt it) or choose another --output-dir") from None
    return fd


def _replace_contents(path: Path, contents: list[str], overwrite: bool) -> None:
    if not overwrite:
        raise ConfigError(f"{path} is not empty ({', '.join(contents[:4])}{', ...' if len(contents) > 4 else ''}); "
                          f"continue it with `sentune train --resume {path}`, replace it with --overwrite, or "
                          "choose another --output-dir")
    if not any(name in contents for name in RUN_MARKS):
        raise ConfigError(f"{path} is not a run directory (no {' or '.join(RUN_MARKS)}); --overwrite replaces "
                          "only an earlier run, so nothing was deleted: choose another --output-dir")
    for name in contents:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()


def append_jsonl(path: Path, row: dict) -> None:
    """Rewrite the whole file atomically: metrics files are small and must never be half a line."""
    old = Path(path).read_text(encoding="utf-8") if Path(path).exists() else ""
    atomic_write_text(path, old + json.dumps(row, default=str) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).exists() else {}


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def versions() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    import sentune

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "accelerate": accelerate.__version__, "sentune": sentune.__version__}


def device_info(device) -> dict[str, Any]:
    import torch

    info = {"type": device.type, "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    return info
