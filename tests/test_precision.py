"""Precision resolution with the machine injected: CPU flags, the SENTUNE_CPU_BF16 override, CUDA bf16."""

from __future__ import annotations

import pytest

from sentune import precision
from sentune.errors import ConfigError
from sentune.precision import cpu_has_bf16, resolve_precision

PLAIN = "fpu vme sse sse2 avx avx2 avx512f avx512bw avx512vl"


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Xeon\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n")
    return str(path)


@pytest.mark.parametrize("flags, native", [
    (PLAIN, False),
    (PLAIN + " avx512_bf16", True),
    (PLAIN + " amx_bf16 amx_tile", True),
    (PLAIN + " avx512_bf16 amx_bf16", True),
    ("", False),
])
def test_cpu_bf16_reads_the_flags(tmp_path, flags, native):
    assert cpu_has_bf16(cpuinfo(tmp_path, flags), environ={}) is native


def test_no_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_has_bf16(str(tmp_path / "missing"), environ={}) is False


@pytest.mark.parametrize("forced, flags, native", [
    ("1", PLAIN, True), ("0", PLAIN + " amx_bf16", False), (" 1 ", PLAIN, True), ("", PLAIN + " avx512_bf16", True),
])
def test_the_environment_variable_overrides_the_flags(tmp_path, forced, flags, native):
    assert cpu_has_bf16(cpuinfo(tmp_path, flags), environ={"SENTUNE_CPU_BF16": forced}) is native


def test_a_bad_override_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="SENTUNE_CPU_BF16='yes' is not 0 or 1"):
        cpu_has_bf16(cpuinfo(tmp_path, PLAIN), environ={"SENTUNE_CPU_BF16": "yes"})


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    assert resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda(monkeypatch, native, expected):
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda *a, **k: native)
    assert resolve_precision("auto", "cuda") == expected


@pytest.mark.parametrize("asked", ["fp32", "bf16", "fp16"])
def test_explicit_precisions_are_kept_on_cuda(monkeypatch, asked):
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(asked, "cuda") == asked


def test_auto_elsewhere_is_fp32():
    assert resolve_precision("auto", "mps") == "fp32"


def test_fp16_on_cpu_and_unknown_names_are_user_errors():
    with pytest.raises(ConfigError, match="needs a GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="fp8"):
        resolve_precision("fp8", "cpu")
