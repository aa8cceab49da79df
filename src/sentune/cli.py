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
