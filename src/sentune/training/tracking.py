"""`--report-to`: per-epoch metrics to experiment trackers, through Accelerate's tracker integrations.

TensorBoard writes into the run directory (<run>/tensorboard/sentune/); MLflow, Weights & Biases and Comet
go wherever their own settings point (MLFLOW_TRACKING_URI, WANDB_PROJECT / `wandb login`, COMET_API_KEY).
Accelerate silently drops a tracker whose package is missing, so the check here turns that into one error.
"""

from __future__ import annotations

from pathlib import Path

from sentune.errors import ConfigError

TRACKERS = ("tensorboard", "mlflow", "wandb", "comet_ml")
PROJECT = "sentune"


def tracker_names(report_to: str) -> list[str]:
    """The Accelerate `log_with` names for --report-to; a tracker whose package is missing is a ConfigError."""
    if report_to == "none":
        return []
    installed = [name for name in TRACKERS if is_installed(name)]
    if report_to == "all":
        if not installed:
            raise ConfigError("--report-to all found no tracker installed (tensorboard, mlflow, wandb, comet_ml); "
                              "pip install tensorboard, or use --report-to none")
        return installed
    if report_to not in TRACKERS:
        raise ConfigError(f"--report-to {report_to!r} is not one of none, {', '.join(TRACKERS)}, all")
    if report_to not in installed:
        extra = " (or 'sentune[tensorboard]')" if report_to == "tensorboard" else ""
        raise ConfigError(f"--report-to {report_to} needs the {report_to} package: pip install {report_to}{extra}, "
                          "or use --report-to none")
    return [report_to]


def is_installed(name: str) -> bool:
    from accelerate.utils import imports

    return bool(getattr(imports, f"is_{name}_available")())


def start(acc, config: dict, run_dir: Path) -> None:
    """Open the run in every tracker (on the main process: Accelerate's init_trackers is main-only)."""
    if not acc.log_with:
        return
    names = {"wandb": {"name": run_dir.name}, "mlflow": {"run_name": run_dir.name}}
    acc.init_trackers(PROJECT, config=hyperparameters(config), init_kwargs=names)


def hyperparameters(config: dict) -> dict:
    """The config tree flattened to `section.name` scalars (TensorBoard's hparams take no None or lists)."""
    flat = {}
    for section, values in config.items():
        for name, value in values.items():
            flat[f"{section}.{name}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def log_epoch(acc, row: dict) -> None:
    """One metrics.jsonl row as scalars at step = epoch; absent splits (None) are left out."""
    if acc.log_with:
        acc.log({k: v for k, v in row.items() if k != "epoch" and is_number(v)}, step=int(row["epoch"]))


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def end(acc) -> None:
    """Close the trackers. end_training() also destroys the process group, which under torchrun belongs to
    the launcher (and to a later run in the same processes), so with several processes only the trackers end."""
    if not acc.log_with:
        return
    if acc.num_processes == 1:
        acc.end_training()
        return
    for tracker in acc.trackers:
        tracker.finish()
