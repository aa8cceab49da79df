"""The Python API: `sentune.train(...)` and `sentune.evaluate(...)`, what `sentune train` / `sentune evaluate` do.

`train` takes the same options as the command line: any field of the config tree (config.py) by its name,
the flag without its dashes (`lr_head=3e-3` is `--lr-head 3e-3`), over a preset, a YAML file or a `Config`;
it returns a `TrainResult` (run directory, validation and test metrics, the trained `Classifier`).
`evaluate` scores a model folder on a labelled split and returns an `EvaluationResult`. The CLI commands
are thin wrappers of these two, so both paths stay one.

Importing this module does not import torch (`import sentune` stays fast); training does, when it starts.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentune import config as config_lib
from sentune.config import Config
from sentune.errors import ConfigError

if TYPE_CHECKING:
    from sentune.inference.classifier import Classifier


@dataclass
class TrainResult:
    """What a training run left: its directory, the selected epoch's validation metrics, the test metrics
    of the selected weights (None without a test split) and, loaded on first use, its `Classifier`."""

    run_dir: Path
    config: Config
    validation: dict = field(default_factory=dict)
    test: dict | None = None
    best_epoch: int | None = None

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "best"

    @cached_property
    def classifier(self) -> Classifier:
        from sentune.inference.classifier import Classifier

        return Classifier.load(self.best_dir, device=self.config.run.device)

    @classmethod
    def read(cls, run_dir: str | Path) -> TrainResult:
        """The result of a finished run directory (config.yaml, manifest.json, metrics.jsonl, final_metrics.json)."""
        from sentune import rundir

        run_dir = Path(run_dir)
        manifest = rundir.read_json(run_dir / "manifest.json")
        best_epoch = manifest.get("best_epoch")
        test_file = run_dir / "final_metrics.json"
        return cls(run_dir=run_dir, config=config_lib.load(run_dir / "config.yaml"),
                   validation=selected_validation(run_dir / "metrics.jsonl", best_epoch),
                   test=rundir.read_json(test_file) if test_file.is_file() else None, best_epoch=best_epoch)


def selected_validation(metrics_file: Path, epoch: int | None) -> dict:
    """The validation numbers the loop recorded for the selected epoch ("val_acc" -> "accuracy")."""
    import json

    if epoch is None or not metrics_file.is_file():
        return {}
    rows = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    row: dict = next((r for r in reversed(rows) if r.get("epoch") == epoch), {})
    out = {k[len("val_"):]: v for k, v in row.items() if k.startswith("val_") and v is not None}
    if "acc" in out:
        out["accuracy"] = out.pop("acc")
    return out


def train(config: Config | None = None, *, preset: str | None = None, config_file: str | Path | None = None,
          resume: str | Path | None = None, **options: Any) -> TrainResult:
    """Fine-tune a classifier as `sentune train` does; returns its `TrainResult`.

    `options`: config fields by name, e.g. `train(preset="demo", limit_train=200, epochs=1)`. Precedence
    as on the command line: defaults < preset (imdb when neither a preset nor `config` is given) < config
    file < options; a `Config` replaces the preset and file. `resume`: a run directory to continue (only
    harmless options such as epochs may change, as with --resume)."""
    from sentune.training import loop

    cfg = make_config(config, preset=preset, config_file=config_file, resume=resume, options=options)
    prepared, _ = loop.fit(cfg)
    if not prepared.is_main:  # under torchrun the main process writes the run directory; the others stop here
        return TrainResult(run_dir=prepared.run_dir, config=cfg)
    return TrainResult.read(prepared.run_dir)


def make_config(config: Config | None = None, *, preset: str | None = None, config_file: str | Path | None = None,
                resume: str | Path | None = None, options: dict | None = None) -> Config:
    """The run's config, resolved as the CLI resolves its flags (unknown option names are a ConfigError)."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    check_option_names(given)
    if resume is not None:
        if config is not None:
            raise ConfigError("resume continues a run with its own config.yaml; pass options, not a Config")
        from sentune.training.checkpoint import resume_config

        return resume_config(str(resume), given, preset=preset, config_file=str(config_file) if config_file else None)
    if config is None:
        return config_lib.resolve(preset or "imdb", str(config_file) if config_file else None, given)
    if preset or config_file:
        raise ConfigError("give a Config or a preset / config file, not both")
    cfg = config_lib.apply(copy.deepcopy(config), config_lib.nest(given), "option")
    config_lib.validate(cfg)
    return cfg


def check_option_names(options: dict) -> None:
    known = [f.name for _, f, _ in config_lib.iter_fields() if f.name not in ("preset", "resume")]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see sentune train --help for the options"
            raise ConfigError(f"unknown option {name!r}{hint}")


@dataclass
class EvaluationResult:
    """The scores of one evaluation (`metrics`: what `sentune evaluate` prints as JSON) and the files written."""

    metrics: dict
    report: Path | None = None  # output_dir/report.md
    card: Path | None = None  # the model card the results were added to

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]


def evaluate(model_dir: str | Path, *, output: str | Path | None = None, output_dir: str | Path | None = None,
             update_card: bool = False, **options: Any) -> EvaluationResult:
    """Score MODEL_DIR on a labelled split as `sentune evaluate` does: `dataset=` (with `split=`) or
    `test_file=`, and its other options by name (limit, batch_size, backend, precision, text_column, ...).
    `output`: also write the JSON there; `output_dir`: metrics.json, plots and report.md; `update_card`: add
    the results to MODEL_DIR/README.md."""
    from sentune.evaluation import evaluate as evaluate_lib

    accepted = set(inspect.signature(evaluate_lib.evaluate_model).parameters) - {"model_dir"}
    for name in options:
        if name not in accepted:
            close = difflib.get_close_matches(name, sorted(accepted), n=1)
            raise ConfigError(f"unknown evaluate option {name!r}" + (f"; did you mean {close[0]}?" if close else ""))
    metrics = evaluate_lib.evaluate_model(str(model_dir), **options)
    result = EvaluationResult(metrics)
    if output_dir is not None:
        from sentune.evaluation.report import write_eval_report

        result.report = Path(write_eval_report(output_dir, metrics))
    if output is not None:
        evaluate_lib.write_metrics(output, metrics)
    if update_card:
        from sentune.card import update_card as add_to_card

        result.card = Path(add_to_card(model_dir, metrics))
    return result
