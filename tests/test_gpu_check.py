"""bench/gpu_check.sh --dry-run: the GPU check's every step on the CPU at toy sizes, so the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_prints_one_table_and_writes_one_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    tests = out["cuda_tests"]
    assert tests["tests"] >= 4 and tests["failures"] == tests["errors"] == 0
    if out["device"] == "CPU (dry run)":
        assert tests["skipped"] == tests["tests"]  # no CUDA here: every CUDA test skips, none fails
    modes = {r["mode"]: r for r in out["train"]}
    assert {"naive", "fast"} <= set(modes)
    assert all(r["train_seq_s"] > 0 and r["tflops"] > 0 for r in modes.values())
    assert [r["variant"] for r in out["predict"]] == ["pipeline", "torch", "auto"]
    assert all(r["texts_per_s"] > 0 for r in out["predict"])
    table = result.stdout
    assert "| cuda tests |" in table and "| train naive |" in table and "| predict auto |" in table


def test_reference_flops_of_roberta_base():
    sys.path.insert(0, str(REPO / "bench"))
    from gpu_check import peak_tflops, reference_flops_per_sequence

    dims = {"hidden_size": 768, "num_hidden_layers": 12, "intermediate_size": 3072}
    # per token and layer: 2 * (4 h^2 + 2 h * 4h) + 4 L h = 24 h^2 + 4 L h; 12 forward + 2 x 3 backward layers
    per_layer = 24 * 768**2 + 4 * 512 * 768
    assert reference_flops_per_sequence(dims, 512, 9) == 512 * per_layer * 18
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("Quadro K620") is None
