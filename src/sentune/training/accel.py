"""The Accelerator of one training run, re-entrant: any number of runs, any settings, in one process.

Accelerate keeps its state (device, mixed precision, process group, gradient-accumulation flags) in
per-process singletons and refuses a second Accelerator with another precision. Between single-process
runs we clear those singletons the way Accelerate's own test base class (`AccelerateTestCase.tearDown`)
does, so run N starts exactly as a fresh process would. Under torchrun the process group belongs to the
launcher, so one configuration per process: a later run with the same settings reuses it, another one is
a ConfigError instead of Accelerate's "restart your runtime".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sentune.config import Config
from sentune.errors import ConfigError
from sentune.inference.runners import pick_device
from sentune.precision import resolve_precision
from sentune.training import tracking

ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def make_accelerator(cfg: Config, choose_run_dir: Callable[[Any], Path]) -> tuple[Any, Path]:
    """The run's Accelerator and run directory. The directory comes first (`choose_run_dir(PartialState)`,
    agreed on by every process) because the trackers of --report-to are configured to write into it."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import ProjectConfiguration

    device_type = pick_device(cfg.run.device).split(":")[0]
    cpu = device_type == "cpu"  # Accelerate's flag; on a GPU machine it picks the process's own GPU itself
    precision = ACCELERATE_PRECISION[resolve_precision(cfg.train.precision, device_type)]
    trackers = tracking.tracker_names(cfg.run.report_to)  # a missing package fails before any work
    fresh_state(precision, cpu)
    run_dir = choose_run_dir(PartialState(cpu=cpu))
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))
    acc = Accelerator(mixed_precision=precision, cpu=cpu, gradient_accumulation_steps=cfg.train.grad_accum,
                      log_with=trackers or None, project_config=project)
    return acc, run_dir


def fresh_state(precision: str, cpu: bool) -> None:
    """Leave Accelerate as a new process has it, before an Accelerator with these settings is built."""
    from accelerate.state import AcceleratorState, GradientState, is_initialized

    GradientState._reset_state()  # sync flags and dataloader refs of the previous run; no process-group tie
    if not is_initialized():
        return
    state = AcceleratorState()
    if state.num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        return
    before, asked = (state.mixed_precision, state.device.type == "cpu"), (precision, cpu)
    if before != asked:
        raise ConfigError(
            f"this process already trained with {describe(*before)}; under torchrun every run in one process "
            f"needs the same --precision and --device (asked: {describe(*asked)}); "
            "start another torchrun for the other settings")


def describe(precision: str, cpu: bool) -> str:
    return f"precision {'fp32' if precision == 'no' else precision} on {'CPU' if cpu else 'GPU'}"
