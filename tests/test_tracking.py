"""--report-to through Accelerate's trackers: a missing package is one clear error; TensorBoard gets every epoch."""

from __future__ import annotations

import pytest
from test_train import tiny_cfg

from sentune import rundir
from sentune.errors import ConfigError
from sentune.training import tracking
from sentune.training.loop import fit


def test_none_asks_for_nothing():
    assert tracking.tracker_names("none") == []


@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb", "comet_ml"])
def test_a_missing_tracker_package_names_the_install_command(monkeypatch, name):
    monkeypatch.setattr(tracking, "is_installed", lambda tracker: False)
    with pytest.raises(ConfigError, match=f"pip install {name}.*--report-to none"):
        tracking.tracker_names(name)


def test_all_means_the_installed_ones(monkeypatch):
    monkeypatch.setattr(tracking, "is_installed", lambda tracker: tracker in ("tensorboard", "wandb"))
    assert tracking.tracker_names("all") == ["tensorboard", "wandb"]
    monkeypatch.setattr(tracking, "is_installed", lambda tracker: False)
    with pytest.raises(ConfigError, match="no tracker installed"):
        tracking.tracker_names("all")


def test_missing_package_fails_before_the_run_directory_exists(monkeypatch, tiny_bert_dir, toy_files, tmp_path):
    monkeypatch.setattr(tracking, "is_installed", lambda tracker: False)
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        fit(tiny_cfg(tiny_bert_dir, toy_files, tmp_path, epochs=1, report_to="tensorboard"))
    assert not (tmp_path / "run").exists()


def test_hyperparameters_are_flat_scalars():
    flat = tracking.hyperparameters({"train": {"lr_head": 1e-4, "max_grad_norm": None}, "run": {"progress": True}})
    assert flat == {"train.lr_head": 1e-4, "train.max_grad_norm": "None", "run.progress": True}


def test_tensorboard_gets_every_epoch(tiny_bert_dir, toy_files, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    p, _ = fit(tiny_cfg(tiny_bert_dir, toy_files, tmp_path, epochs=2, report_to="tensorboard",
                        validation_file=str(toy_files["validation"])))
    logs = p.run_dir / "tensorboard" / tracking.PROJECT
    events = EventAccumulator(str(logs))
    events.Reload()
    assert {"train_loss", "train_acc", "val_acc", "val_loss", "lr_head"} <= set(events.Tags()["scalars"])
    assert "test_acc" not in events.Tags()["scalars"]  # None (no per-epoch test) is not a scalar
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2]
    rows = [r["val_acc"] for r in rundir.read_jsonl(p.run_dir / "metrics.jsonl")]
    assert [e.value for e in events.Scalars("val_acc")] == pytest.approx(rows)
    assert any(logs.glob("*/hparams.yml"))  # the configuration, flattened
