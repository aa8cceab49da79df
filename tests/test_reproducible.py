"""Reproducibility: the same run twice is bit-identical in fp32 on CPU, and the selection reviews given as
`--validation-file` or as `--test-file --select-on test` train the same weights (issue 12)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sentune import config
from sentune.training.loop import fit


def cfg_for(model_dir, files, out, **flags):
    base = {"model": str(model_dir), "train_file": str(files["train"]), "freeze_layers": 1, "max_length": 32,
            "batch_size": 8, "epochs": 3, "patience": 3, "lr_encoder": 1e-2, "lr_head": 1e-2,
            "precision": "fp32", "progress": False, "output_dir": str(out), "cached_dropout": 0.1}
    return config.resolve(None, None, {**base, **flags})


def history(run_dir, keys=("train_loss", "train_acc")) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [tuple(r[k] for k in keys) for r in rows]


def best_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "best" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("cache", ["off", "memory"])
def test_the_same_fp32_run_twice_is_bit_identical(tiny_bert_dir, toy_files, tmp_path, cache):
    runs = [fit(cfg_for(tiny_bert_dir, toy_files, tmp_path / f"run{i}", test_file=str(toy_files["test"]),
                        select_on="test", cache=cache, cache_dir=str(tmp_path / "cache")))[0].run_dir
            for i in range(2)]
    a, b = (history(r, ("train_loss", "train_acc", "test_loss", "test_acc")) for r in runs)
    assert a == b and len(a) == 3
    assert a[0][0] != a[-1][0]  # it trained: the loss moved
    assert_same_weights(best_weights(runs[0]), best_weights(runs[1]))


@pytest.mark.parametrize("cache", ["off", "memory"])
def test_validation_file_and_select_on_test_train_identically(tiny_model_dir, toy_files, tmp_path, cache):
    common = {"cache": cache, "cache_dir": str(tmp_path / "cache")}
    as_val, _ = fit(cfg_for(tiny_model_dir, toy_files, tmp_path / "val",
                            validation_file=str(toy_files["validation"]), **common))
    as_test, _ = fit(cfg_for(tiny_model_dir, toy_files, tmp_path / "test",
                             test_file=str(toy_files["validation"]), select_on="test", **common))
    val = history(as_val.run_dir, ("train_loss", "train_acc", "val_loss", "val_acc"))
    test = history(as_test.run_dir, ("train_loss", "train_acc", "test_loss", "test_acc"))
    assert val == test
    assert_same_weights(best_weights(as_val.run_dir), best_weights(as_test.run_dir))
