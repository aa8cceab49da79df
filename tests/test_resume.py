"""Resume: a run killed (SIGKILL) or interrupted (SIGINT) mid-epoch and resumed ends exactly like one never stopped.

Exact equality holds on CPU in fp32 with one thread: the batch order is a pure function of (seed, epoch), the
dropout generator is restored from the checkpoint, and CPU kernels are deterministic for a fixed thread
count. (bf16 autocast would be deterministic too, but fp32 is the same on every CPU, with or without AVX512-BF16.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sentune import config
from sentune.errors import ConfigError, DataError
from sentune.training import checkpoint
from sentune.training.loop import fit

TIMING = ("epoch_seconds", "train_seconds", "train_samples_per_second")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def flags(model_dir, files, out, **extra) -> dict:
    """A tiny but real run: 8 batches per epoch, 3 epochs, fp32 on CPU."""
    return {"model": str(model_dir), "train_file": str(files["train"]),
            "validation_file": str(files["validation"]), "test_file": str(files["test"]),
            "freeze_layers": 1, "max_length": 32, "batch_size": 8, "epochs": 3, "patience": 3,
            "lr_encoder": 3e-3, "lr_head": 3e-3, "precision": "fp32", "device": "cpu", "cache": "off",
            "progress": False, "output_dir": str(out), **extra}


def cli_args(values: dict) -> list[str]:
    args = ["train"]
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        args += [flag if value else "--no-" + name.replace("_", "-")] if isinstance(value, bool) else [flag, str(value)]
    return args


def fit_one_thread(cfg):
    """In-process runs use one thread, like the subprocesses (OMP_NUM_THREADS=1): same kernels, same bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(cfg)
    finally:
        torch.set_num_threads(threads)


def outcome(run: Path) -> tuple[list[dict], dict[str, torch.Tensor], dict]:
    """What must not depend on interruptions: per-epoch metrics (minus timings), best weights, test metrics."""
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run / "final_metrics.json").read_text())
    return rows, load_file(str(run / "best" / "model.safetensors")), final


def assert_same_outcome(run: Path, reference: Path) -> None:
    rows, weights, final = outcome(run)
    want_rows, want_weights, want_final = outcome(reference)
    assert rows == want_rows
    assert final == want_final
    assert weights.keys() == want_weights.keys()
    for name, tensor in want_weights.items():
        assert torch.equal(weights[name], tensor), name


# A training subprocess that pauses inside one step (after writing a marker file) so the test can signal it there.
PAUSING_TRAIN = """
import sys, time
from pathlib import Path
from sentune.training import loop as train
marker, pause_epoch, pause_step = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
real_step = train.train_step

def train_step(p, batch, sync, epoch, step):
    if (epoch, step) == (pause_epoch, pause_step):
        marker.write_text("paused")
        while not p.stop.requested:  # SIGKILL ends the process here; SIGINT sets the flag and it goes on
            time.sleep(0.05)
    return real_step(p, batch, sync, epoch, step)

train.train_step = train_step
from sentune.cli import main
sys.argv = ["sentune", *sys.argv[4:]]
main()
"""


def start_paused(tmp_path: Path, values: dict, epoch: int, step: int) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / "paused"
    script = tmp_path / "pausing_train.py"
    script.write_text(PAUSING_TRAIN)
    proc = subprocess.Popen([sys.executable, str(script), str(marker), str(epoch), str(step), *cli_args(values)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the training subprocess never reached the pause point:\n{out}\n{err}")
        time.sleep(0.1)
    return proc, marker


@pytest.fixture(scope="module")
def files(module_toy_files):
    return module_toy_files


@pytest.fixture(scope="module")
def reference(tiny_bert_dir, files, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    fit_one_thread(config.resolve("imdb", None, flags(tiny_bert_dir, files, out)))
    return out


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tiny_bert_dir, files, reference, tmp_path):
    run = tmp_path / "run"
    # Checkpoints every 2 steps; killed while in step index 5 of epoch 2, i.e. after the checkpoint at step 4.
    proc, _ = start_paused(tmp_path, flags(tiny_bert_dir, files, run, save_every_steps=2), epoch=2, step=5)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = json.loads((run / "checkpoint" / "state.json").read_text())["state"]
    assert (saved["epoch"], saved["step"]) == (1, 4)
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1]
    # as a checkpoint written before best_acc became best_score: it resumes all the same
    meta = json.loads((run / "checkpoint" / "state.json").read_text())
    meta["state"]["best_acc"] = meta["state"].pop("best_score")
    (run / "checkpoint" / "state.json").write_text(json.dumps(meta))

    p, state = fit_one_thread(checkpoint.resume_config(run, {}))
    assert state.epoch == 3
    assert_same_outcome(run, reference)


def test_ctrl_c_saves_a_checkpoint_says_how_to_resume_and_resume_is_exact(tiny_bert_dir, files, reference,
                                                                           tmp_path):
    run = tmp_path / "run"
    values = flags(tiny_bert_dir, files, run, progress=True)  # the bar must end cleanly too
    proc, _ = start_paused(tmp_path, values, epoch=1, step=2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"Resume with: sentune train --resume {run}" in out
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    saved = json.loads((run / "checkpoint" / "state.json").read_text())["state"]
    assert (saved["epoch"], saved["step"]) == (0, 3)  # the step in flight finished, then it stopped

    result = subprocess.run([sys.executable, "-m", "sentune", "train", "--resume", str(run), "--no-progress"],
                            env=ENV, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert f"Resuming {run} after epoch 0, step 3 of epoch 1" in result.stdout
    assert_same_outcome(run, reference)


def test_crash_between_metrics_and_checkpoint_leaves_no_duplicate_rows(tiny_bert_dir, files, reference,
                                                                       tmp_path, monkeypatch):
    # The epoch-2 row is in metrics.jsonl but the crash comes before its checkpoint: resume redoes epoch 2.
    real_save = checkpoint.save

    def crash_at_epoch_2(p, state):
        if state.epoch == 2 and state.step == 0:
            raise RuntimeError("simulated crash")
        real_save(p, state)

    monkeypatch.setattr(checkpoint, "save", crash_at_epoch_2)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_one_thread(config.resolve("imdb", None, flags(tiny_bert_dir, files, run)))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(checkpoint, "save", real_save)
    fit_one_thread(checkpoint.resume_config(run, {}))
    assert_same_outcome(run, reference)


def test_resume_can_extend_epochs_and_patience(tiny_bert_dir, files, tmp_path):
    run = tmp_path / "run"
    fit_one_thread(config.resolve("imdb", None, flags(tiny_bert_dir, files, run, epochs=1)))
    p, state = fit_one_thread(checkpoint.resume_config(run, {"epochs": 2, "patience": 5}))
    assert state.epoch == 2 and p.cfg.train.patience == 5
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    assert config.load(run / "config.yaml").train.epochs == 2
    assert len(json.loads((run / "manifest.json").read_text())["resumed"]) == 1


def test_resume_refuses_what_would_not_continue_the_same_run(tiny_bert_dir, files, tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        checkpoint.resume_config(tmp_path, {})
    run = tmp_path / "run"
    fit_one_thread(config.resolve("imdb", None, flags(tiny_bert_dir, files, run, epochs=1)))
    with pytest.raises(ConfigError, match="--lr-head cannot change when resuming"):
        checkpoint.resume_config(run, {"lr_head": 1.0})
    with pytest.raises(ConfigError, match="drop --preset"):
        checkpoint.resume_config(run, {}, preset="demo")
    state_file = run / "checkpoint" / "state.json"
    saved = state_file.read_text()
    state_file.write_text(saved.replace('"num_processes": 1', '"num_processes": 2'))
    with pytest.raises(ConfigError, match="trained with 2 processes; resume it with the same number"):
        fit_one_thread(checkpoint.resume_config(run, {"epochs": 2}))
    state_file.write_text(saved)
    # The training data changed since the run started: its fingerprint no longer matches.
    from conftest import sentiment_rows, write_jsonl

    write_jsonl(Path(files["train"]), sentiment_rows(64, seed=99))
    try:
        with pytest.raises(DataError, match="train data .* changed"):
            fit_one_thread(checkpoint.resume_config(run, {"epochs": 2}))
    finally:
        write_jsonl(Path(files["train"]), sentiment_rows(64, seed=1))


def test_resume_without_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / "config.yaml").write_text("model: {}\n")
    result = subprocess.run([sys.executable, "-m", "sentune", "train", "--resume", str(tmp_path)], env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "no checkpoint" in result.stderr


def test_checkpoint_holds_only_safe_formats(tiny_bert_dir, files, tmp_path):
    run = tmp_path / "run"
    p, _ = fit_one_thread(config.resolve("imdb", None, flags(tiny_bert_dir, files, run, epochs=1)))
    folder = run / "checkpoint"
    assert sorted(f.name for f in folder.iterdir()) == ["state.json", "state.pt", "trainable.safetensors"]
    weights = load_file(str(folder / "trainable.safetensors"))
    assert set(weights) == {n for n, q in p.model.named_parameters() if q.requires_grad}
    blob = torch.load(folder / "state.pt", weights_only=True)  # no pickled code needed to read it
    assert set(blob) == {"optimizer", "scheduler", "scaler", "rng"} and len(blob["rng"]) == 1
    assert not [f for f in run.iterdir() if f.name.startswith(".")]  # no temporary leftovers


def test_crash_with_accumulation_scheduler_and_cache_resumes_exactly(tiny_bert_dir, files, tmp_path, monkeypatch,
                                                                     capsys):
    """In-process variant: LR schedule and gradient accumulation state, and the cache reused on resume."""
    from sentune.training import loop as train

    extra = {"grad_accum": 2, "scheduler": "linear", "warmup_ratio": 0.2, "save_every_steps": 3,
             "cache": "disk", "cache_dir": str(tmp_path / "cache")}
    reference_run = tmp_path / "reference"
    fit_one_thread(config.resolve("imdb", None, flags(tiny_bert_dir, files, reference_run, **extra)))
    real_step = train.train_step

    def crash(p, batch, sync, epoch, step):
        if (epoch, step) == (2, 5):
            raise RuntimeError("simulated crash")
        return real_step(p, batch, sync, epoch, step)

    monkeypatch.setattr(train, "train_step", crash)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_one_thread(config.resolve("imdb", None, flags(tiny_bert_dir, files, run, **extra)))
    saved = json.loads((run / "checkpoint" / "state.json").read_text())["state"]
    assert (saved["epoch"], saved["step"]) == (1, 4)  # every 3 batches, at the next optimizer step: 4
    monkeypatch.setattr(train, "train_step", real_step)
    capsys.readouterr()
    fit_one_thread(checkpoint.resume_config(run, {}))
    assert "reused train+validation+test" in capsys.readouterr().out
    assert_same_outcome(run, reference_run)
