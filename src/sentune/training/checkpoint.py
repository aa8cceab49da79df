"""Resumable checkpoints: everything `train` needs to continue an interrupted run exactly where it was.

    <run>/checkpoint/trainable.safetensors  the trainable parameters (the frozen ones are the base model's and
                                            are loaded from --model again)
    <run>/checkpoint/state.pt               optimizer, scheduler, GradScaler and every process's RNG states
                                            (torch.save; read back with weights_only=True: tensors and plain
                                            containers only, never arbitrary objects)
    <run>/checkpoint/state.json             `TrainState`: position (epoch, step), early stopping, metrics history

The folder is written whole to a temporary sibling and swapped in (`rundir.atomic_dir`), at every epoch end
and every `--save-every-steps` optimizer steps. The batch order needs no saving: a `Feed`'s order is a pure
function of (seed, epoch), so (epoch, step) says which batches are done.
"""

from __future__ import annotations

import io
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sentune import config as config_lib
from sentune import rundir
from sentune.config import Config
from sentune.errors import ConfigError, DataError

NAME = "checkpoint"
FORMAT = 1
# Flags that may change on --resume: they do not alter what the finished epochs computed.
RESUMABLE = ("epochs", "patience", "progress", "save_every_steps", "report_to", "on_nan", "cache", "cache_dir")


@dataclass
class TrainState:
    """Everything the loop needs to continue besides tensors: saved with checkpoints, restored by --resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # batches each process has finished in epoch `epoch + 1` (mid-epoch checkpoints)
    partial: list[float] | None = None  # that epoch's running [loss * n, correct, n], summed over processes
    best_score: float = -1.0  # the selection score of the best epoch, times tasks.sign (so higher is better)
    best_epoch: int | None = None
    stale: int = 0  # epochs since the last improvement
    history: list[dict] = field(default_factory=list)

    @classmethod
    def from_dict(cls, saved: dict) -> TrainState:
        """A state.json's state; checkpoints written before the rename hold the same number as best_acc."""
        saved = dict(saved)
        if "best_acc" in saved:
            saved["best_score"] = saved.pop("best_acc")
        return cls(**saved)


# ---- --resume: the run's own config --------------------------------------------------------------------
def resume_config(run_dir: str | Path, flags: dict, *, preset: str | None = None,
                  config_file: str | None = None) -> Config:
    """The config a run was started with (its config.yaml), plus the few flags that may change."""
    run = Path(run_dir)
    for folder in (NAME, "best"):  # what a kill during a save left behind (temporary or renamed-aside folders)
        if run.is_dir():
            rundir.recover(run / folder)
    if preset or config_file:
        raise ConfigError("--resume continues a run with its own config.yaml; drop --preset/--config")
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run} is not a run directory (no config.yaml); pass the folder a training run wrote")
    if not (run / NAME / "state.json").is_file():
        raise ConfigError(f"{run} has no checkpoint yet (it stopped before the first one); start it again")
    changed = [name for name in flags if name not in RESUMABLE]
    if changed:
        allowed = ", ".join("--" + n.replace("_", "-") for n in RESUMABLE)
        raise ConfigError(f"--{changed[0].replace('_', '-')} cannot change when resuming (the finished steps "
                          f"used the run's value); only {allowed} may")
    cfg = config_lib.load(run / "config.yaml")
    config_lib.apply(cfg, config_lib.nest(flags), "flag")
    config_lib.validate(cfg)
    cfg.run.output_dir, cfg.run.resume = str(run), str(run)
    return cfg


# ---- saving --------------------------------------------------------------------------------------------
def save(p, state: TrainState) -> None:
    """Write the checkpoint for `state` (call on every process: RNG states are gathered to the main one)."""
    acc = p.accelerator
    rng = [rng_state()]
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        rng = gather_object(rng)
    if acc.is_main_process:
        rundir.atomic_dir(p.run_dir / NAME, lambda folder: write(folder, p, state, rng))
    acc.wait_for_everyone()


def write(folder: Path, p, state: TrainState, rng: list[dict]) -> None:
    """Serialized in memory, then written as plain files: a full disk is an ordinary OSError."""
    from safetensors.torch import save

    weights = save(trainable_tensors(p.model), metadata={"format": str(FORMAT)})
    (folder / "trainable.safetensors").write_bytes(weights)
    scaler, buffer = p.accelerator.scaler, io.BytesIO()
    torch.save({"optimizer": p.optimizer.state_dict(),
                "scheduler": p.scheduler.state_dict() if p.scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng}, buffer)
    (folder / "state.pt").write_bytes(buffer.getvalue())
    meta = {"format": FORMAT, "num_processes": p.accelerator.num_processes,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "state": asdict(state)}
    (folder / "state.json").write_text(json.dumps(meta, indent=1, default=str) + "\n", encoding="utf-8")


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: q.detach().contiguous().cpu() for name, q in model.named_parameters() if q.requires_grad}


def rng_state() -> dict:
    """This process's random generators as tensors and plain values (loadable with weights_only=True)."""
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"python": random.getstate(),
            "numpy": [kind, torch.from_numpy(np.asarray(key, dtype=np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


# ---- restoring -----------------------------------------------------------------------------------------
def restore(p) -> TrainState:
    """Load the run's checkpoint into the prepared model, optimizer, scheduler, scaler and RNGs."""
    from safetensors.torch import load_file

    folder, acc = p.run_dir / NAME, p.accelerator
    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    if meta["num_processes"] != acc.num_processes:
        raise ConfigError(f"{p.run_dir} was trained with {meta['num_processes']} processes; resume it with "
                          f"the same number (this launch has {acc.num_processes})")
    check_same_data(p)
    load_trainable(p.model, load_file(str(folder / "trainable.safetensors")), folder)  # copied onto the device
    blob = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    p.optimizer.load_state_dict(blob["optimizer"])
    if p.scheduler is not None and blob["scheduler"] is not None:
        p.scheduler.load_state_dict(blob["scheduler"])
    if acc.scaler is not None and blob["scaler"] is not None:
        acc.scaler.load_state_dict(blob["scaler"])
    state = TrainState.from_dict(meta["state"])
    if acc.is_main_process:  # the checkpoint's history is the truth: drop rows of epochs it did not reach
        lines = "".join(json.dumps(row, default=str) + "\n" for row in state.history)
        rundir.atomic_write_text(p.run_dir / "metrics.jsonl", lines)
    set_rng_state(blob["rng"][acc.process_index])  # last: nothing may draw random numbers after this
    p.log(f"Resuming {p.run_dir} after epoch {state.epoch}"
          + (f", step {state.step} of epoch {state.epoch + 1}" if state.step else ""))
    return state


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    wanted = {name for name, q in model.named_parameters() if q.requires_grad}
    if set(tensors) != wanted:
        raise ConfigError(f"{folder} does not hold this model's trainable parameters "
                          f"({len(set(tensors) ^ wanted)} names differ); was --model or --freeze-layers changed?")
    model.load_state_dict(tensors, strict=False)


def check_same_data(p) -> None:
    """The data must be what the run started with, else the finished epochs would not fit the rest."""
    started = rundir.read_json(p.run_dir / "manifest.json").get("data", {})
    for split, info in p.splits.sources.items():
        was = started.get(split, {}).get("fingerprint")
        if was is not None and was != info["fingerprint"]:
            raise DataError(f"the {split} data ({info['source']}) changed since {p.run_dir} started; "
                            "resume needs the same data, or start a new run")


def set_rng_state(saved: dict) -> None:
    random.setstate(_tuples(saved["python"]))
    kind, key, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def _tuples(value):
    """random.setstate wants the tuples it gave out (torch.load may hand lists back)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value
