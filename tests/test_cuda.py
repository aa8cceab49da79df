"""CUDA-only checks (`pytest -m cuda`; bench/gpu_check.sh runs them): fp16 + GradScaler with a resume that
restores the scaler, bf16 training, the frozen-layer cache on the GPU, and Classifier on the GPU.
Every test skips on a machine without CUDA; none of them has run on a GPU yet (no GPU was available)."""

from __future__ import annotations

import pytest
import torch
from test_resume import flags
from tiny_trained import train_tiny

from sentune import Classifier, config, rundir
from sentune.training import checkpoint
from sentune.training import loop as train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def cuda_flags(model_dir, files, out, **extra) -> dict:
    return flags(model_dir, files, out, **{"device": "cuda", **extra})


@pytest.fixture
def files(toy_files):
    return toy_files


def test_fp16_trains_with_a_grad_scaler_and_resume_restores_it(tiny_bert_dir, files, tmp_path, monkeypatch):
    run = tmp_path / "run"
    p, _ = train.fit(config.resolve("imdb", None, cuda_flags(tiny_bert_dir, files, run, precision="fp16", epochs=1)))
    assert p.accelerator.mixed_precision == "fp16" and p.accelerator.scaler is not None
    saved = torch.load(run / "checkpoint" / "state.pt", weights_only=True)["scaler"]
    assert saved is not None and saved["scale"] > 0
    restored = {}
    real_restore = checkpoint.restore

    def restore(p):
        state = real_restore(p)
        restored.update(p.accelerator.scaler.state_dict())
        return state

    monkeypatch.setattr(checkpoint, "restore", restore)
    _, state = train.fit(checkpoint.resume_config(run, {"epochs": 2}))
    assert state.epoch == 2
    assert restored["scale"] == saved["scale"] and restored["_growth_tracker"] == saved["_growth_tracker"]


def test_bf16_trains_on_the_gpu(tiny_bert_dir, files, tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    p, state = train.fit(config.resolve("imdb", None, cuda_flags(tiny_bert_dir, files, tmp_path / "r",
                                                                 precision="bf16", epochs=1)))
    assert p.accelerator.mixed_precision == "bf16" and p.accelerator.device.type == "cuda"
    assert all(torch.isfinite(q).all() for q in p.model.parameters())
    assert state.epoch == 1


def test_the_cache_on_cuda_matches_no_cache(tiny_bert_dir, files, tmp_path):
    rows = {}
    for mode in ("off", "memory", "disk"):
        p, _ = train.fit(config.resolve("imdb", None, cuda_flags(
            tiny_bert_dir, files, tmp_path / mode, precision="fp32", epochs=2, cache=mode,
            cache_dir=str(tmp_path / "cache"))))
        rows[mode] = [r["val_loss"] for r in rundir.read_jsonl(p.run_dir / "metrics.jsonl")]
    assert rows["memory"] == pytest.approx(rows["off"], abs=1e-4)
    assert rows["disk"] == pytest.approx(rows["off"], abs=1e-4)
    assert list((tmp_path / "cache").glob("prefix-*.bin"))


def test_classifier_on_cuda_agrees_with_the_cpu(tmp_path):
    folder = train_tiny(tmp_path / "sharp")
    texts = ["good great film", "awful boring", "love it", "the worst plot"]
    cpu = Classifier.load(folder, device="cpu", precision="fp32")
    gpu = Classifier.load(folder, device="cuda", precision="fp32")
    assert gpu.runner.device.type == "cuda"
    assert gpu.predict_proba(texts) == pytest.approx(cpu.predict_proba(texts), abs=1e-4)
    auto = Classifier.load(folder, device="cuda")
    assert auto.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert [p["label"] for p in auto.predict(texts)] == [p["label"] for p in cpu.predict(texts)]
