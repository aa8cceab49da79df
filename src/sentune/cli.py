"""The `sentune` command line (also `python -m sentune`).

`train`'s flags are generated from the config dataclass tree (config.py), so every knob is a flag
with the same name as its field. User mistakes (`SentuneError`) print one line and exit 2.
"""

from __future__ import annotations

import os
import sys

import click

from sentune import config as config_lib
from sentune.errors import SentuneError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class SentuneGroup(click.Group):
    """Turns a user mistake into `error: <message>` and exit code 2, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SentuneError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=SentuneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sentune")
def main() -> None:
    """Fine-tune, evaluate and serve transformer text classifiers."""


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def config_options(command):
    """Add one click option per config field: `lr_head` -> `--lr-head`; booleans get `--x/--no-x`."""
    for section, f, tp in reversed(config_lib.iter_fields()):
        if f.name in ("preset", "resume"):
            continue  # declared explicitly on the command
        base = config_lib.base_type(tp)
        default = f.default
        help_text = f"[{section}] default: {default!r}"
        if f.name in config_lib.CHOICES:
            kind = click.Choice(config_lib.CHOICES[f.name])
        else:
            kind = {int: int, float: float, str: str, bool: bool}[base]
        if base is bool:
            opt = click.option(f"{flag_name(f.name)}/--no-{f.name.replace('_', '-')}", f.name,
                               default=None, help=help_text)
        else:
            opt = click.option(flag_name(f.name), f.name, type=kind, default=None, help=help_text)
        command = opt(command)
    return command


# ---- train -------------------------------------------------------------------------------------------
@main.command()
@click.option("--preset", type=str, default=None, help="imdb (the reference recipe, default) | demo (offline)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file with model/data/train/run sections; flags override it")
@click.option("--resume", type=click.Path(file_okay=False), default=None, help="continue an interrupted run directory")
@config_options
def train(preset: str | None, config_file: str | None, resume: str | None, **flags) -> None:
    """Fine-tune a classifier (defaults: the reference IMDB recipe)."""
    from sentune import train as train_lib

    given = {k: v for k, v in flags.items() if v is not None}
    cfg = config_lib.resolve(preset or "imdb", config_file, given)
    cfg.run.resume = resume
    train_lib.run(cfg)


# ---- evaluate (owner: evaluation engineer) -----------------------------------------------------------
@main.command()
@click.argument("model_dir", type=click.Path())
@click.option("--dataset", type=str, default=None, help="Hub dataset name or local path (file or folder)")
@click.option("--test-file", type=click.Path(dir_okay=False), default=None, help="labelled file to score")
@click.option("--dataset-config", type=str, default=None, help="Hub dataset configuration name")
@click.option("--split", type=str, default="test", show_default=True, help="split of --dataset to score")
@click.option("--text-column", type=str, default="text", show_default=True)
@click.option("--label-column", type=str, default="label", show_default=True)
@click.option("--limit", type=int, default=None, help="score a seeded, label-stratified sample of N rows")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "torch", "onnx"]), default="auto", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="also write the JSON here")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="write metrics.json, confusion_matrix.png, reliability.png and report.md here")
def evaluate(model_dir: str, output: str | None, output_dir: str | None, **options) -> None:
    """Score MODEL_DIR on a labelled split: accuracy, macro-F1, per-class scores, calibration.

    The last stdout line is one JSON object with every number (accuracy, macro_f1, n, ...).
    """
    import json

    from sentune import evaluate as evaluate_lib

    metrics = evaluate_lib.evaluate_model(model_dir, **options)
    for line in evaluate_lib.summary_lines(metrics):
        click.echo(line)
    if output_dir:
        from sentune.report import write_eval_report

        click.echo(f"report: {write_eval_report(output_dir, metrics)}")
    if output:
        evaluate_lib.write_metrics(output, metrics)
    click.echo(json.dumps(metrics))


# ---- calibrate (owner: evaluation engineer) ----------------------------------------------------------
@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--validation-file", type=click.Path(dir_okay=False), required=True,
              help="labelled held-out data (never the test set) to fit the temperature on")
@click.option("--text-column", type=str, default="text", show_default=True)
@click.option("--label-column", type=str, default="label", show_default=True)
@click.option("--limit", type=int, default=None, help="use a seeded, label-stratified sample of N rows")
@click.option("--batch-size", type=int, default=32, show_default=True)
def calibrate(model_dir: str, validation_file: str, **options) -> None:
    """Fit temperature scaling on validation data and store T in MODEL_DIR/config.json.

    predict, serve and evaluate then apply it. Prints NLL and ECE before and after.
    """
    import json

    from sentune.calibrate import calibrate_model

    result = calibrate_model(model_dir, validation_file, **options)
    click.echo(f"temperature: {result['previous_temperature']:.4f} -> {result['temperature']:.4f} "
               f"(fitted on {result['n']} rows of {validation_file})")
    click.echo(f"NLL: {result['nll_before']:.4f} -> {result['nll_after']:.4f}")
    click.echo(f"ECE: {result['ece_before']:.4f} -> {result['ece_after']:.4f}")
    click.echo(f"stored in {model_dir}/config.json (sentune.temperature)")
    click.echo(json.dumps(result))
