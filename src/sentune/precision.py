"""Which number format a run uses on this machine: one rule for training and inference alike.

`auto` is bf16 where the hardware computes it natively (CUDA with bf16, CPUs with AMX or AVX512-BF16),
fp16 on older GPUs (training adds a GradScaler), else fp32. The CPU detection reads /proc/cpuinfo and
honours SENTUNE_CPU_BF16=0|1, so the test suite (and a user) can pin the answer whatever the host is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from sentune.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CPU_BF16_ENV = "SENTUNE_CPU_BF16"
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_precision(precision: str, device_type: str) -> str:
    """fp32 | bf16 | fp16 for `precision` on a device of `device_type` (cpu, cuda, mps)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device_type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU; on CPU use --precision bf16 or fp32")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device_type == "cpu":
        return "bf16" if cpu_has_bf16() else "fp32"
    return "fp32"


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo", environ: Mapping[str, str] | None = None) -> bool:
    """True only for native bf16 (AMX or AVX512-BF16), or as SENTUNE_CPU_BF16 says. oneDNN also emulates
    bf16 on plain AVX512, but measured on such a CPU (Xeon, avx512f without bf16) bf16 autocast trained
    3.6x slower than fp32, so emulation does not count."""
    forced = (os.environ if environ is None else environ).get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ConfigError(f"{CPU_BF16_ENV}={forced!r} is not 0 or 1; unset it to detect the CPU's bf16")
    return any(flag in NATIVE_BF16_FLAGS for flag in cpu_flags(cpuinfo))


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The first `flags` line of a /proc/cpuinfo-format file; [] where there is none (macOS, Windows)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            return next((line for line in f if line.startswith("flags")), "").partition(":")[2].split()
    except OSError:
        return []


def torch_dtype(precision: str) -> torch.dtype:
    """The weight dtype of a resolved precision (inference casts the weights instead of autocasting)."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
