"""sentune: fine-tune, evaluate and serve transformer text classifiers from one command."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sentune.inference.classifier import Classifier
    from sentune.training.audit import audit
    from sentune.training.sweep import sweep


def __getattr__(name: str):
    # Lazy so that `import sentune` (and the CLI's start-up) does not import torch.
    if name == "Classifier":
        from sentune.inference.classifier import Classifier

        return Classifier
    if name == "sweep":  # sentune.sweep(cfg, space, n_trials=...) -> SweepResult (study, best trial, best/)
        from sentune.training.sweep import sweep

        return sweep
    if name == "audit":  # sentune.audit(cfg, folds=5) -> AuditReport (findings; audit.md, issues.jsonl/.csv)
        from sentune.training.audit import audit

        return audit
    raise AttributeError(name)


__all__ = ["Classifier", "__version__", "audit", "sweep"]
