"""sentune: fine-tune, evaluate and serve transformer text classifiers from one command."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sentune.inference.classifier import Classifier
    from sentune.training.distill import distill
    from sentune.training.sweep import sweep


def __getattr__(name: str):
    # Lazy so that `import sentune` (and the CLI's start-up) does not import torch.
    if name == "Classifier":
        from sentune.inference.classifier import Classifier

        return Classifier
    if name == "sweep":  # sentune.sweep(cfg, space, n_trials=...) -> SweepResult (study, best trial, best/)
        from sentune.training.sweep import sweep

        return sweep
    if name == "distill":  # sentune.distill(teacher_run, "layers:3", ...) -> DistillResult (table, retention)
        from sentune.training.distill import distill

        return distill
    raise AttributeError(name)


__all__ = ["Classifier", "__version__", "distill", "sweep"]
