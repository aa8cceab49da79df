"""End-to-end training on tiny random models: selection, early stopping, best-weight reload, run directory.

Every run pins its precision (fp32 unless the test is about bf16): `auto` would follow the host CPU.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sentune import config
from sentune.training import finish as finish_lib
from sentune.training import loop as train
from sentune.training.loop import fit


def tiny_cfg(model_dir, files, tmp_path, **flags):
    base = {"model": str(model_dir), "train_file": str(files["train"]), "test_file": str(files["test"]),
            "freeze_layers": 1, "max_length": 32, "batch_size": 16, "epochs": 2, "patience": 2,
            "lr_encoder": 3e-3, "lr_head": 3e-3, "cache": "off", "progress": False, "precision": "fp32",
            "output_dir": str(tmp_path / "run")}
    return config.resolve(None, None, {**base, **flags})


def test_run_directory_is_complete_and_loads_in_a_pipeline(tiny_model_dir, toy_files, tmp_path):
    from transformers import pipeline

    p, state = fit(tiny_cfg(tiny_model_dir, toy_files, tmp_path, validation_file=str(toy_files["validation"])))
    run = p.run_dir
    assert config.load(run / "config.yaml") == p.cfg
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("epoch", "train_loss", "train_acc", "val_acc", "test_acc", "epoch_seconds",
                "train_samples_per_second"):
        assert all(key in r for r in rows)
    assert all(r["test_acc"] is None for r in rows)  # selection on validation never looks at test per epoch
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"versions", "device", "data", "started", "ended"} <= set(manifest)
    assert manifest["data"]["train"]["rows"] == 64 and len(manifest["data"]["train"]["fingerprint"]) == 64
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["n"] == 24
    clf = pipeline("text-classification", model=str(run / "best"), device="cpu")
    assert clf("great excellent movie")[0]["label"] in {"neg", "pos"}
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["id2label"] == {"0": "neg", "1": "pos"} and saved["sentune"]["max_length"] == 32


def test_final_weights_are_the_best_epochs(tiny_bert_dir, toy_files, tmp_path, monkeypatch):
    # Pretend only epoch 1 improved, so the last epoch's weights differ from the selected ones.
    original_select = train.select
    monkeypatch.setattr(train, "select", lambda state, row, on: original_select(state, row, on) if row["epoch"] == 1
                        else bool(setattr(state, "stale", state.stale + 1)))
    before_reload = {}
    original_reload = finish_lib.reload_best
    monkeypatch.setattr(finish_lib, "reload_best", lambda p: (before_reload.update(
        {k: v.clone() for k, v in p.model.state_dict().items()}), original_reload(p)))
    p, state = fit(tiny_cfg(tiny_bert_dir, toy_files, tmp_path, epochs=3, patience=5, select_on="test"))
    assert state.best_epoch == 1 and state.epoch == 3
    best = load_file(str(p.run_dir / "best" / "model.safetensors"))
    current = p.accelerator.unwrap_model(p.model).state_dict()
    for name, tensor in best.items():
        torch.testing.assert_close(current[name], tensor, rtol=0, atol=0)
    assert any(not torch.equal(before_reload[n], best[n]) for n in best)  # training moved on after epoch 1


def test_best_is_the_highest_accuracy(tiny_bert_dir, toy_files, tmp_path):
    p, state = fit(tiny_cfg(tiny_bert_dir, toy_files, tmp_path, epochs=3, patience=3, select_on="test"))
    rows = [json.loads(line) for line in (p.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert state.best_score == max(r["test_acc"] for r in rows)
    assert state.best_epoch == 1 + [r["test_acc"] for r in rows].index(state.best_score)


def test_early_stopping_after_patience(tiny_bert_dir, toy_files, tmp_path):
    # With LR 0 nothing changes, so accuracy never improves after epoch 1: stop after 1 + patience epochs.
    p, state = fit(tiny_cfg(tiny_bert_dir, toy_files, tmp_path, epochs=10, patience=2, lr_encoder=0.0,
                            lr_head=0.0, select_on="test"))
    assert state.epoch == 3 and state.best_epoch == 1


def test_select_on_test_has_no_validation_split(tiny_bert_dir, toy_files, tmp_path):
    p, _ = fit(tiny_cfg(tiny_bert_dir, toy_files, tmp_path, epochs=1, select_on="test"))
    assert p.splits.validation is None
    row = json.loads((p.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert row["val_acc"] is None and row["test_acc"] is not None


def test_select_on_validation_carves_from_train(tiny_bert_dir, toy_files, tmp_path):
    p, _ = fit(tiny_cfg(tiny_bert_dir, toy_files, tmp_path, epochs=1, validation_split=0.25))
    assert len(p.splits.validation) == 16 and len(p.splits.train) == 48
    assert set(p.splits.validation["text"]).isdisjoint(p.splits.train["text"])


def test_optimizer_has_the_two_learning_rates(tiny_roberta_dir, toy_files, tmp_path):
    p, _ = fit(tiny_cfg(tiny_roberta_dir, toy_files, tmp_path, epochs=1, lr_encoder=1e-5, lr_head=2e-4,
                        weight_decay=0.05))
    lrs = sorted({g["lr"] for g in p.optimizer.param_groups})
    assert lrs == [1e-5, 2e-4]
    assert all(g["weight_decay"] == 0.05 for g in p.optimizer.param_groups)
    in_optimizer = {id(q) for g in p.optimizer.param_groups for q in g["params"]}
    trainable = {id(q) for q in p.model.parameters() if q.requires_grad}
    assert in_optimizer == trainable


@pytest.mark.parametrize("flags", [
    {"scheduler": "linear", "warmup_ratio": 0.5, "grad_accum": 2, "max_grad_norm": 1.0},
    {"label_smoothing": 0.1, "class_weights": "balanced", "padding": "max_length"},
])
def test_recipe_options_take_effect(tiny_bert_dir, toy_files, tmp_path, flags, monkeypatch):
    from accelerate import Accelerator

    clipped, real_clip = [], Accelerator.clip_grad_norm_

    def clip(self, params, norm, *args, **kwargs):
        clipped.append(norm)
        return real_clip(self, params, norm, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", clip)
    p, state = fit(tiny_cfg(tiny_bert_dir, toy_files, tmp_path, epochs=1, **flags))
    assert state.epoch == 1
    saved = yaml.safe_load((p.run_dir / "config.yaml").read_text())
    assert all(saved["train"][k] == v for k, v in flags.items())
    batches = len(p.feeds["train"])
    widths = {b["input_ids"].shape[1] for b in p.feeds["train"].batches(0)}
    logits, labels = torch.tensor([[2.0, -1.0], [0.5, 1.5], [1.0, 0.0]]), torch.tensor([0, 1, 1])
    plain = torch.nn.functional.cross_entropy(logits, labels)
    if "scheduler" in flags:  # linear warm-up from 0 (half the steps), then decay to 0 at the last optimizer step
        steps = -(-batches // 2)
        assert p.scheduler is not None and p.scheduler.last_epoch == steps  # one scheduler step per 2 batches
        assert p.scheduler.lr_lambdas[0](0) == 0.0 and p.scheduler.get_last_lr()[0] == pytest.approx(0.0)
        assert clipped == [1.0] * steps
        assert p.loss_fn(logits, labels) == pytest.approx(plain.item())
        assert max(widths) < 32  # dynamic padding: no batch is padded to max_length
    else:
        assert p.scheduler is None and clipped == []
        assert p.loss_fn.label_smoothing == 0.1 and p.loss_fn.weight is not None
        counts = torch.bincount(torch.tensor(p.splits.train["label"]), minlength=2).float()
        torch.testing.assert_close(p.loss_fn.weight.cpu(), counts.sum() / (2 * counts))
        assert p.loss_fn(logits, labels) != pytest.approx(plain.item())
        assert widths == {32}  # padding max_length: every batch as wide as --max-length


def test_select_uses_the_named_score_not_accuracy():
    from sentune.evaluation.metrics import selection_key
    from sentune.training.loop import TrainState, select

    key = selection_key("validation", "macro_recall")
    assert key == "val_macro_recall" and selection_key("test", "accuracy") == "test_acc"
    state = TrainState()
    rows = [{"epoch": 1, "val_acc": 0.80, key: 0.50}, {"epoch": 2, "val_acc": 0.70, key: 0.65},
            {"epoch": 3, "val_acc": 0.90, key: 0.60}]
    improved = [select(state, row, key) for row in rows]
    assert improved == [True, True, False] and state.best_epoch == 2 and state.best_score == 0.65


def test_select_metric_macro_recall_end_to_end(tiny_bert_dir, toy_files, tmp_path, capsys):
    from sentune.evaluation.metrics import selection_score

    p, state = fit(tiny_cfg(tiny_bert_dir, toy_files, tmp_path, epochs=2, patience=5,
                            validation_file=str(toy_files["validation"]), select_metric="macro_recall"))
    rows = [json.loads(line) for line in (p.run_dir / "metrics.jsonl").read_text().splitlines()]
    scores = [r["val_macro_recall"] for r in rows]
    assert state.best_score == max(scores) and state.best_epoch == scores.index(max(scores)) + 1
    # the selected weights, now loaded, score exactly what selection recorded for them
    out = train.evaluate(p, "validation", with_probs=True)
    labels = p.splits.validation["label"]
    recorded = selection_score(p.splits.task, "macro_recall", labels, out["probs"].numpy())
    assert recorded == pytest.approx(state.best_score)
    assert "Best val macro-recall: " in capsys.readouterr().out
    manifest = json.loads((p.run_dir / "manifest.json").read_text())
    assert manifest["select_metric"] == "macro_recall"
    assert "on validation macro-recall" in (p.run_dir / "report.md").read_text()


# ---- re-entrant training: several runs in one process ------------------------------------------------
FRESH_PROCESS = """
import json, sys
import torch
torch.set_num_threads(1)
from sentune import config
from sentune.training.loop import fit
p, _ = fit(config.resolve(None, None, json.loads(sys.argv[1])))
torch.save({k: v.detach().clone() for k, v in p.model.state_dict().items()}, sys.argv[2])
"""


def weights(p) -> dict:
    return {k: v.detach().clone() for k, v in p.accelerator.unwrap_model(p.model).state_dict().items()}


def fresh_process_weights(flags: dict, out) -> dict:
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps(flags), str(out)],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return torch.load(out)


def test_three_precisions_in_one_process_match_fresh_processes(tiny_bert_dir, toy_files, tmp_path):
    base = {"model": str(tiny_bert_dir), "train_file": str(toy_files["train"]), "test_file": str(toy_files["test"]),
            "freeze_layers": 1, "max_length": 32, "batch_size": 16, "epochs": 1, "select_on": "test",
            "lr_encoder": 3e-3, "lr_head": 3e-3, "cache": "off", "progress": False, "device": "cpu"}
    runs = [{"precision": "fp32"}, {"precision": "bf16", "grad_accum": 2}, {"precision": "fp32"}]
    inline = []
    for i, extra in enumerate(runs):
        p, _ = fit(config.resolve(None, None, {**base, **extra, "output_dir": str(tmp_path / f"in-{i}")}))
        assert p.accelerator.mixed_precision == {"fp32": "no"}.get(extra["precision"], extra["precision"])
        assert p.accelerator.gradient_accumulation_steps == extra.get("grad_accum", 1)
        inline.append(weights(p))
    for i in (0, 1):
        fresh = fresh_process_weights({**base, **runs[i], "output_dir": str(tmp_path / f"fresh-{i}")},
                                      tmp_path / f"fresh-{i}.pt")
        for name, tensor in fresh.items():
            torch.testing.assert_close(inline[i][name], tensor, rtol=0, atol=1e-6, msg=name)
    for name, tensor in inline[0].items():  # the third run (fp32 after bf16) is the first one again
        torch.testing.assert_close(inline[2][name], tensor, rtol=0, atol=1e-6, msg=name)
    assert any(not torch.equal(inline[0][n], inline[1][n]) for n in inline[0])  # bf16 really ran in bf16


def test_auto_precision_follows_the_cpu_detection(tiny_bert_dir, toy_files, tmp_path):
    from sentune.precision import cpu_has_bf16

    p, _ = fit(tiny_cfg(tiny_bert_dir, toy_files, tmp_path, epochs=1, select_on="test", precision="auto",
                        device="cpu"))
    assert p.accelerator.mixed_precision == ("bf16" if cpu_has_bf16() else "no")
    assert json.loads((p.run_dir / "manifest.json").read_text())["precision"] == p.accelerator.mixed_precision
