"""The run directory layout, the only way other commands read a run.

    <run>/config.yaml      resolved config (read back by --resume)
    <run>/manifest.json    versions, device, data sources (rows, label counts, fingerprint), times
    <run>/metrics.jsonl    one JSON object per epoch
    <run>/best/            save_pretrained folder of the selected weights (safetensors + tokenizer)
    <run>/final_metrics.json  test metrics of the selected weights

Every file is written through `sentune.atomic` (a temporary sibling renamed into place), so a crash never
leaves a half-written file where a good one was.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

# Re-exported: the run's files are written through these (rundir.atomic_dir(run / "best", ...)).
from sentune.atomic import atomic_dir, atomic_write_json, atomic_write_text, recover
from sentune.errors import WriteError

__all__ = ["append_jsonl", "atomic_dir", "atomic_write_json", "atomic_write_text", "check_creatable", "default_dir",
           "device_info",
           "read_json", "read_jsonl", "recover", "versions"]


def default_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_creatable(path: Path) -> None:
    """Fail in seconds, not after loading data and model, when the run directory cannot be made; but leave
    nothing behind: a train that fails before its first write must not leave an empty run directory."""
    path = Path(path)
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create the run directory {path}: {e.strerror or e}") from None
    finally:
        for folder in missing:
            with contextlib.suppress(OSError):
                folder.rmdir()


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
