"""The run directory layout, the only way other commands read a run.

    <run>/config.yaml      resolved config (read back by --resume)
    <run>/manifest.json    versions, device, data sources (rows, label counts, fingerprint), times
    <run>/metrics.jsonl    one JSON object per epoch
    <run>/best/            save_pretrained folder of the selected weights (safetensors + tokenizer)
    <run>/final_metrics.json  test metrics of the selected weights

Every file is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sentune.errors import SentuneError


class WriteError(SentuneError):
    """A file could not be written (disk full, permissions); the previous file is left intact."""


def default_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _cleanup(locals().get("tmp"))
        raise WriteError(f"cannot write {path}: {e.strerror or e}; the previous file is unchanged") from None


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


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


def atomic_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_dir) on a temporary sibling, then swap it in for `target`.

    The old folder is renamed aside before the new one takes its name, and removed only after, so
    at every moment either the old or the new complete folder exists under a known name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    old = target.with_name(f".{target.name}.old")
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise WriteError(f"cannot write {target}: {e.strerror or e}; the previous copy is unchanged") from None
    shutil.rmtree(old, ignore_errors=True)


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


def _cleanup(tmp: str | None) -> None:
    if tmp and os.path.exists(tmp):
        os.remove(tmp)
