"""sentune: fine-tune, evaluate and serve transformer text classifiers from one command.

    import sentune
    result = sentune.train(preset="demo", limit_train=200, epochs=1)   # sentune.api: the CLI's options by name
    result.classifier.predict(["what a great day"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sentune.api import EvaluationResult, TrainResult, evaluate, train
    from sentune.config import Config
    from sentune.inference.classifier import Classifier
    from sentune.training.audit import audit
    from sentune.training.distill import distill
    from sentune.training.sweep import sweep

# name -> module; lazy so that `import sentune` (and the CLI's start-up) does not import torch
LAZY = {"train": "sentune.api", "evaluate": "sentune.api", "TrainResult": "sentune.api",
        "EvaluationResult": "sentune.api", "Config": "sentune.config", "Classifier": "sentune.inference.classifier",
        "sweep": "sentune.training.sweep",  # sweep(cfg, space, n_trials=...) -> SweepResult (study, best/)
        "audit": "sentune.training.audit",  # audit(cfg, folds=5) -> AuditReport (audit.md, issues.jsonl/.csv)
        "distill": "sentune.training.distill"}  # distill(teacher_run, "layers:3", ...) -> DistillResult


def __getattr__(name: str):
    if name not in LAZY:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(LAZY[name]), name)


__all__ = ["Classifier", "Config", "EvaluationResult", "TrainResult", "__version__", "audit", "distill", "evaluate",
           "sweep", "train"]
