"""The `sentune` command line (also `python -m sentune`).

`train`'s flags are generated from the config dataclass tree (config.py), so every knob is a flag
with the same name as its field. User mistakes (`SentuneError`) print one line and exit 2.
"""

from __future__ import annotations

import os
import sys

import click
from click.core import ParameterSource

from sentune import config as config_lib
from sentune.errors import SentuneError
from sentune.inference.runners import BACKENDS

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class SentuneGroup(click.Group):
    """Turns a user mistake into `error: <message>` and exit code 2, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
        except SentuneError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        end_launched_worker()
        return result


def end_launched_worker() -> None:
    """A torchrun / accelerate-launch worker whose command succeeded ends here, without the interpreter's
    teardown: in the fresh-clone suite a finished rank 1 sometimes died in it with "terminate called without an
    active exception" (SIGABRT; a C++ thread of the process group destroyed while joinable), and torchrun then
    killed rank 0 while it was still writing the run, although every file of the run is written by then
    (destroying the process group first did not prevent it). Outside a launched worker this does nothing."""
    dist = sys.modules.get("torch.distributed")  # imported only if a command used it: no torch import here
    if not os.environ.get("TORCHELASTIC_RUN_ID") or dist is None or not dist.is_initialized():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# Inference follows the machine as training does (sentune/precision.py); nothing stores the choice.
PRECISION_OPTION = click.option(
    "--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
    help="torch backend: auto = bf16 on CUDA with bf16 and CPUs with native bf16 (SENTUNE_CPU_BF16=0|1 "
         "forces the CPU answer), fp16 on older GPUs, else fp32")


BACKEND_OPTION = click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                              help="auto: torch when MODEL_DIR has PyTorch weights, else onnx")


def options(*decorators):
    """Several click options as one decorator, in the order given (so commands share one spelling of them)."""
    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply


def labelled_source_options(file_option, split: str):
    """evaluate's and calibrate's data options (evaluation/labelled.py reads them): a file or a dataset split."""
    return options(
        file_option,
        click.option("--dataset", type=str, default=None,
                     help="Hub dataset name, local file or folder, or package:NAME (with --split)"),
        click.option("--split", type=str, default=split, show_default=True, help="split of --dataset to use"),
        click.option("--dataset-config", type=str, default=None, help="Hub dataset configuration name"),
        click.option("--text-column", type=str, default="text", show_default=True),
        click.option("--label-column", type=str, default="label", show_default=True),
        click.option("--limit", type=int, default=None, help="a seeded, label-stratified sample of N rows"),
        click.option("--batch-size", type=int, default=32, show_default=True),
        click.option("--label-separator", type=str, default=None,
                     help="multi-label: names joined by this in the label column"),
        click.option("--label-columns", type=str, default=None,
                     help="multi-label: one 0/1 column per label, comma-separated"))


TEXTS_OR_INPUT = options(
    click.argument("texts", nargs=-1),
    click.option("--input", "input_path", type=str, default=None,
                 help="txt (one text per line), csv, tsv or jsonl(.gz) file; - reads stdin"),
    click.option("--text-column", type=str, default="text", show_default=True))


def input_rows(texts: tuple[str, ...], input_path: str | None, text_column: str):
    """Rows ({"text": ...} and the file's other columns) of the TEXT arguments or of --input, never both."""
    from sentune.data.splits import read_texts
    from sentune.errors import ConfigError

    if bool(texts) == bool(input_path):
        raise ConfigError("give either TEXT arguments or --input FILE (--input - reads stdin)")
    if input_path is None:
        return ({"text": t} for t in texts)
    return read_texts(input_path, text_column)


@click.group(cls=SentuneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sentune")
def main() -> None:
    """Fine-tune, evaluate and serve transformer text classifiers."""


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def config_options(command):
    """Add one click option per config field: `lr_head` -> `--lr-head`; booleans get `--x/--no-x`."""
    for _section, f, tp in reversed(config_lib.iter_fields()):
        if f.name in ("preset", "resume"):
            continue  # declared explicitly on the command
        base = config_lib.base_type(tp)
        default = f.default
        help_text = f"{f.metadata.get('help', '')} [default: {default}]"
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


def run_config_options(preset_help: str):
    """train's and sweep's run configuration: --preset, --config FILE, then one flag per config field."""
    return options(
        click.option("--preset", type=str, default=None, help=preset_help),
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="YAML file with model/data/train/run sections; flags override it"),
        config_options)


# ---- train -------------------------------------------------------------------------------------------
@main.command()
@run_config_options("imdb (the reference recipe, default) | demo (offline) | goemotions")
@click.option("--resume", type=click.Path(file_okay=False), default=None, help="continue an interrupted run directory")
def train(preset: str | None, config_file: str | None, resume: str | None, **flags) -> None:
    """Fine-tune a classifier (defaults: the reference IMDB recipe)."""
    from sentune import api

    # with --resume: the run's own config.yaml; only harmless flags (--epochs, --patience, ...) may change
    api.train(preset=preset, config_file=config_file, resume=resume, **flags)


# ---- audit -----------------------------------------------------------------------------------------
@main.command()
@click.argument("data_path", required=False, type=str)
@click.option("--preset", type=str, default=None, help="as for train (default: imdb)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file with model/data/train/run sections; flags override it")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="k of the k-fold training that scores every training row out of fold")
@config_options
def audit(data_path: str | None, preset: str | None, config_file: str | None, folds: int, **flags) -> None:
    """Find likely label errors, duplicates, leakage and outliers in DATA (a file or folder, else --dataset).

    Takes train's flags; trains the top layers k times over one frozen-layer cache for out-of-fold scores,
    then runs cleanlab on them. Writes audit.md, issues.jsonl and issues.csv into --output-dir.
    """
    from sentune.evaluation.audit_report import summary_lines
    from sentune.training.audit import audit as run_audit

    given = {k: v for k, v in flags.items() if v is not None}
    if data_path:
        given["dataset"] = data_path
    report = run_audit(config_lib.resolve(preset or "imdb", config_file, given), folds)
    for line in summary_lines(report):
        click.echo(line)


# ---- sweep ------------------------------------------------------------------------------------------
@main.command()
@run_config_options("the fixed part, as for train (default: imdb)")
@click.option("--search", type=str, default=None,
              help="search space YAML (field: {low, high, log} | [choices]); default: the packaged space")
@click.option("--n-trials", type=click.IntRange(min=1), default=None, help="trials in the whole study [default: 20]")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="start no trial after S seconds")
@click.option("--sampler", type=click.Choice(["tpe", "random", "grid"]), default=None, help="[default: tpe]")
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default=None,
              help="stops poor trials after an epoch [default: median]")
@click.option("--storage", type=str, default=None,
              help="Optuna RDB URL shared by several processes/machines, or $SENTUNE_STORAGE (keeps a password out "
                   "of ps) [default: sqlite in the sweep directory]; its password is never saved: give it again "
                   "on --resume")
@click.option("--study-name", type=str, default=None, help="[default: the sweep directory's name]")
@click.option("--keep-trial-weights", is_flag=True, default=None, help="keep every trial's best/ weights")
@click.option("--resume", type=click.Path(file_okay=False), default=None, help="continue a sweep directory")
def sweep(preset: str | None, config_file: str | None, search: str | None, n_trials: int | None,
          resume: str | None, **flags) -> None:
    """Search hyperparameters with Optuna; every trial reuses the frozen-layer caches of the others.

    Takes everything train takes as the fixed part. Leaves a sweep directory: study.db, trials.jsonl,
    best/ (the chosen trial), final_metrics.json (test, once), report.md and plots/.
    """
    from sentune.training.sweep import SweepOptions
    from sentune.training.sweep import sweep as run_sweep

    option_names = set(SweepOptions.__dataclass_fields__) - {"n_trials"}
    options = {k: flags.pop(k) for k in list(flags) if k in option_names and flags[k] is not None}
    for k in option_names:
        flags.pop(k, None)
    given = {k: v for k, v in flags.items() if v is not None}
    if resume:
        trust = given.pop("trust_remote_code", False)
        if preset or config_file or search or given:
            raise SentuneError("--resume continues a sweep with its own settings; only --n-trials, --timeout, "
                               "--storage (its password) and --trust-remote-code may be given")
        run_sweep(None, n_trials=n_trials, resume=resume, trust_remote_code=trust, **options)
        return
    cfg = config_lib.resolve(preset or "imdb", config_file, given)
    run_sweep(cfg, search, n_trials, **options)


# ---- distill ----------------------------------------------------------------------------------------
@main.command()
@click.argument("teacher_run", type=click.Path(file_okay=False, exists=True))
@click.option("--student", required=True,
              help="layers:K (K evenly spaced teacher layers) | layers:0,2,4 (those) | model:PATH (another encoder)")
@click.option("--temperature", type=float, default=2.0, show_default=True,
              help="softens the teacher's and student's outputs in the distillation loss")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="the distillation loss's share; 1 - alpha goes to the labels' own loss")
@click.option("--unlabeled", type=click.Path(dir_okay=False), default=None,
              help="more transfer text without labels (txt/csv/tsv/jsonl, as predict reads)")
@click.option("--min-retained", type=float, default=0.98, show_default=True,
              help="exit 3 unless the student keeps this share of the teacher's validation score")
@config_options
def distill(teacher_run: str, student: str, **flags) -> None:
    """Distil TEACHER_RUN (a train or sweep run directory) into a smaller student that trains on its outputs.

    The teacher run's config supplies data and settings; every train flag overrides them. Writes a normal run
    directory (best/ works with predict, evaluate, serve, export, push), prints and saves a table of teacher
    and student (metric, retained, texts/s, CPU s/text, parameters, size), and exits 3 when the student keeps
    less than --min-retained of the teacher's validation score.
    """
    from sentune.training.distill import distill as run_distill

    run_distill(teacher_run, student, **flags)


# ---- evaluate (owner: evaluation engineer) -----------------------------------------------------------
@main.command()
@click.argument("model_dir", type=click.Path())
@labelled_source_options(click.option("--test-file", type=click.Path(dir_okay=False), default=None,
                                      help="labelled file to score"), split="test")
@BACKEND_OPTION
@PRECISION_OPTION
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="also write the JSON here")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="write metrics.json, confusion_matrix.png, reliability.png and report.md here")
@click.option("--update-card", is_flag=True,
              help="add these results to MODEL_DIR/README.md (the model card; created when missing)")
def evaluate(model_dir: str, output: str | None, output_dir: str | None, update_card: bool, **options) -> None:
    """Score MODEL_DIR on a labelled split: accuracy, macro-F1, per-class scores, calibration.

    The last stdout line is one JSON object with every number (accuracy, macro_f1, n, ...).
    """
    import json

    from sentune import api
    from sentune.evaluation.evaluate import summary_lines

    quiet_transformers()
    result = api.evaluate(model_dir, output=output, output_dir=output_dir, update_card=update_card, **options)
    for line in summary_lines(result.metrics):
        click.echo(line)
    if result.report:
        click.echo(f"report: {result.report}")
    if result.card:
        click.echo(f"model card: {result.card}")
    click.echo(json.dumps(result.metrics))


# ---- calibrate (owner: evaluation engineer) ----------------------------------------------------------
@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@labelled_source_options(click.option("--validation-file", type=click.Path(dir_okay=False), default=None,
                                      help="labelled held-out data (never the test set) to fit on"),
                         split="validation")
def calibrate(model_dir: str, validation_file: str | None, **options) -> None:
    """Fit temperature scaling on validation data and store T in MODEL_DIR/config.json.

    predict, serve and evaluate then apply it. Prints NLL and ECE before and after. A multi-label model
    gets its decision thresholds tuned instead (sentune.thresholds: one global, one per label).
    """
    import json

    from sentune.evaluation.calibrate import calibrate_model

    quiet_transformers()
    result = calibrate_model(model_dir, validation_file, **options)
    if "thresholds" in result:  # a multi-label model's calibration
        t = result["thresholds"]
        click.echo(f"thresholds tuned on {result['n']} rows of {result['data']['source']}: global {t['global']:.2f}, "
                   f"{len(t['per_label']) - len(t['fallback'])} per-label (the rest use the global one)")
        click.echo(f"macro-F1: {result['macro_f1_before']:.4f} -> {result['macro_f1_after']:.4f}; "
                   f"micro-F1: {result['micro_f1_before']:.4f} -> {result['micro_f1_after']:.4f}")
        click.echo(f"stored in {model_dir}/config.json (sentune.thresholds)")
        click.echo(json.dumps(result))
        return
    click.echo(f"temperature: {result['previous_temperature']:.4f} -> {result['temperature']:.4f} "
               f"(fitted on {result['n']} rows of {result['data']['source']})")
    click.echo(f"NLL: {result['nll_before']:.4f} -> {result['nll_after']:.4f}")
    click.echo(f"ECE: {result['ece_before']:.4f} -> {result['ece_after']:.4f}")
    click.echo(f"stored in {model_dir}/config.json (sentune.temperature)")
    click.echo(json.dumps(result))


# ---- predict / export / serve (owner: inference engineer) --------------------------------------------
def quiet_transformers() -> None:
    """No weight-loading progress bars on the terminal for inference commands."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@main.command()
@click.argument("model_dir", type=click.Path())
@TEXTS_OR_INPUT
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="write here instead of stdout")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=4096, show_default=True,
              help="padded tokens per model call (texts are batched by length, padded to multiples of 32)")
@BACKEND_OPTION
@PRECISION_OPTION
@click.option("--bf16/--no-bf16", default=False, hidden=True, help="the same as --precision bf16")
def predict(model_dir: str, texts: tuple[str, ...], input_path: str | None, output: str | None, fmt: str,
            text_column: str, batch_size: int, max_batch_tokens: int, backend: str, precision: str,
            bf16: bool) -> None:
    """Classify TEXTs or a file: one JSON line (or CSV row) per text with label, score and probs.

    Records carry the input's other columns, else an `id`. With a `label` column in the input, the
    accuracy is printed at the end (stderr).
    """
    import time

    from sentune.errors import ConfigError
    from sentune.inference.classifier import Classifier
    from sentune.inference.files import write_predictions
    from sentune.inference.shard import load_for_launch

    rows = input_rows(texts, input_path, text_column)
    if batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    quiet_transformers()
    # under torchrun / accelerate launch each process classifies a share; the main one writes (inference/shard.py)
    clf, writes = load_for_launch(lambda device: Classifier.load(model_dir, backend=backend, device=device,
                                                                 precision="bf16" if bf16 else precision,
                                                                 max_batch_tokens=max_batch_tokens),
                                  input_path)
    start = time.perf_counter()
    with click.open_file((output or "-") if writes else os.devnull, "w", encoding="utf-8", lazy=False) as out:
        accuracy = write_predictions(clf, rows, out, fmt=fmt, batch_size=batch_size,
                                     progress=writes and input_path not in (None, "-"))
    if not writes:
        return
    if input_path not in (None, "-"):
        click.echo(f"{input_path}: {accuracy.rows} texts in {time.perf_counter() - start:.1f} s", err=True)
    if accuracy.summary():
        click.echo(accuracy.summary(), err=True)


@main.command()
@click.argument("model_dir", type=click.Path())
@TEXTS_OR_INPUT
@click.option("--target", type=str, default=None, help="explain this label instead of the predicted one")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="integration steps (more: smaller convergence delta, slower)  [default: 32]")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "color"]), default="auto", show_default=True,
              help="auto: coloured text on a terminal, else one JSON line per text")
def explain(model_dir: str, texts: tuple[str, ...], input_path: str | None, text_column: str,
            target: str | None, steps: int | None, fmt: str) -> None:
    """Why each text got its label: a signed integrated-gradients score per word.

    Positive words push toward the explained label, negative ones away from it; the scores sum to the
    change of its logit from an all-padding baseline, up to the printed convergence delta.
    """
    import itertools
    import json

    from sentune.inference.classifier import Classifier
    from sentune.inference.explain_view import colour_lines
    from sentune.inference.files import output_record

    rows = input_rows(texts, input_path, text_column)
    quiet_transformers()
    clf = Classifier.load(model_dir)
    colour = fmt == "color" or (fmt == "auto" and sys.stdout.isatty())
    # a few texts at a time: explained together (one batched pass), still streamed as they are done
    rows, index = iter(rows), 0
    while chunk := list(itertools.islice(rows, 16)):
        for row, record in zip(chunk, clf.explain([r["text"] for r in chunk], target=target, steps=steps),
                               strict=True):
            if colour:
                for line in colour_lines(record):
                    click.echo(line, color=True)
            else:
                click.echo(json.dumps(output_record(row, record, index)))
            index += 1


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--unlabeled", required=True, type=str, help="txt (one text per line), csv, tsv or jsonl(.gz) file")
@click.option("--budget", required=True, type=click.IntRange(min=1), help="how many texts to choose")
@click.option("--strategy", type=click.Choice(["entropy", "margin", "random", "diverse"]), default="entropy",
              show_default=True, help="least sure first (entropy, margin), a random sample, or uncertain and "
              "spread out (diverse)")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="the CSV to write [default: <unlabeled>-selected.csv]; the Label Studio JSON goes beside it")
@click.option("--text-column", type=str, default="text", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="random and diverse draw with it")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
def select(model_dir: str, unlabeled: str, budget: int, **options) -> None:
    """Choose the BUDGET texts of --unlabeled most worth labelling next for MODEL_DIR.

    Writes a CSV (one row per text, with its score and an empty label column; label it, then
    `sentune train --add-file FILE.csv`) and a Label Studio import file beside it.
    """
    from sentune.inference.select import select as run_select

    quiet_transformers()
    out = run_select(model_dir, unlabeled, budget, **options)
    click.echo(f"chose {out['chosen']} of {out['of']} texts ({out['strategy']}): {out['csv']}")
    click.echo(f"Label Studio import: {out['labelstudio']}")


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--quantize", type=click.Choice(["int8"]), default=None, help="dynamic int8 quantization")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="export folder (default: MODEL_DIR-onnx, or MODEL_DIR-onnx-int8)")
@click.option("--check-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="texts (txt/csv/jsonl) for the parity check; default: built-in sentences")
@click.option("--text-column", type=str, default="text", show_default=True)
@click.option("--min-agreement", type=float, default=0.99, show_default=True,
              help="fail when fewer labels than this agree with PyTorch")
@click.option("--overwrite", is_flag=True, help="replace an existing export folder")
def export(model_dir: str, fmt: str, quantize: str | None, output: str | None, check_file: str | None,
           text_column: str, min_agreement: float, overwrite: bool) -> None:
    """Export MODEL_DIR to ONNX (dynamic batch and sequence axes), checked against PyTorch.

    The folder also holds the tokenizer and config, so `predict`/`serve --backend onnx` use it directly.
    """
    from sentune.inference.export import export as export_model

    quiet_transformers()
    out, parity = export_model(model_dir, output, fmt=fmt, quantize=quantize, check_file=check_file,
                               text_column=text_column, min_agreement=min_agreement, overwrite=overwrite)
    click.echo(parity.summary())
    click.echo(f"exported to {out}")


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--host", type=str, default="127.0.0.1", show_default=True, help="0.0.0.0 exposes it to the network")
@click.option("--port", type=int, default=8000, show_default=True)
@BACKEND_OPTION
@click.option("--api-key", "api_keys", multiple=True, envvar="SENTUNE_API_KEY", show_envvar=True,
              help="require 'Authorization: Bearer KEY' on every route but /health, /ready, /metrics, the page "
                   "and the API docs (repeatable; on the command line it shows in `ps`: prefer the variable, "
                   "read once and removed, or a keys file)")
@click.option("--api-keys-file", "--api-key-file", "api_keys_file", type=click.Path(dir_okay=False), default=None,
              help="more keys, one per line (keep it chmod 600)")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="worker processes, each with its own model and cores/N threads")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads per worker [default: all "
              "cores with one worker, cores/N with N]")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="texts per model call when requests are micro-batched")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=4096, show_default=True,
              help="tokens per model call (estimated when collecting requests, padded in the call); "
                   "a larger request is split and takes turns")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="how long the first request waits for others to join its batch (0: the model starts at once "
                   "when idle; requests arriving during a call form the next batch)")
@click.option("--max-queue", type=click.IntRange(min=1), default=512, show_default=True,
              help="texts waiting for the model (per worker); past it, 429 with Retry-After")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="seconds a request may wait for its predictions; past it, 503")
@click.option("--graceful-timeout", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="seconds from SIGTERM to exit: in-flight requests finish or get 503")
@click.option("--max-texts", type=click.IntRange(min=1), default=256, show_default=True, help="texts per request")
@click.option("--max-chars", type=click.IntRange(min=1), default=20_000, show_default=True, help="characters per text")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1 << 20, show_default=True)
@click.option("--read-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="seconds a client has to send its request head, and again its body; past it, 408")
@click.option("--max-connections", type=click.IntRange(min=1), default=256, show_default=True,
              help="connections served at once per worker; past it, 503")
@click.option("--explain-max-queue", type=click.IntRange(min=1), default=16, show_default=True,
              help="texts waiting for POST /explain (per worker); past it, 429 with Retry-After")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="access log on stderr: one line per request with its X-Request-ID")
@click.option("--explain-max-texts", type=click.IntRange(min=1), default=4, show_default=True,
              help="texts per POST /explain (each costs --explain-steps forward and backward passes)")
@click.option("--explain-max-chars", type=click.IntRange(min=1), default=5_000, show_default=True,
              help="characters per text for POST /explain")
@click.option("--explain-steps", type=click.IntRange(min=1), default=None,
              help="integration steps of POST /explain  [default: 32]")
@PRECISION_OPTION
def serve(model_dir: str, host: str, port: int, workers: int, api_keys: tuple[str, ...],
          api_keys_file: str | None, max_texts: int, max_chars: int, max_body_bytes: int, max_queue: int,
          request_timeout: float, max_batch_tokens: int, graceful_timeout: float, explain_max_texts: int,
          explain_max_chars: int, read_timeout: float, max_connections: int, explain_max_queue: int,
          **options) -> None:
    """Serve MODEL_DIR over HTTP: POST /predict, /explain; GET /health, /ready, /metrics, /metadata; a page at /."""
    from sentune.serve import Deployment, Limits, Policy
    from sentune.serve import serve as serve_model
    from sentune.serve.auth import KEY_ENV, load_api_keys

    quiet_transformers()
    log = lambda line: click.echo(line, err=True)  # noqa: E731
    if api_keys and click.get_current_context().get_parameter_source("api_keys") == ParameterSource.COMMANDLINE:
        log(f"warning: --api-key on the command line shows in `ps` to every user of this machine; "
            f"use {KEY_ENV} or --api-keys-file instead")
    os.environ.pop(KEY_ENV, None)  # read once: worker processes and helpers do not inherit it
    deployment = Deployment(
        model_dir=model_dir, api_keys=load_api_keys(api_keys, api_keys_file, warn=log), **options,
        limits=Limits(max_body_bytes=max_body_bytes, max_texts=max_texts, max_chars=max_chars,
                      explain_max_texts=explain_max_texts, explain_max_chars=explain_max_chars),
        policy=Policy(max_queue=max_queue, request_timeout=request_timeout, max_batch_tokens=max_batch_tokens,
                      graceful_timeout=graceful_timeout, read_timeout=read_timeout, max_connections=max_connections,
                      explain_max_queue=explain_max_queue))
    serve_model(deployment, host=host, port=port, workers=workers, log=log)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--repo-id", required=True, help="OWNER/NAME of the Hub model repository (created when missing)")
@click.option("--private", is_flag=True, help="create the repository private")
@click.option("--include-onnx", is_flag=True, help="also upload the `sentune export` folder (under onnx/)")
@click.option("--dry-run", is_flag=True, help="list what would be uploaded and stop")
def push(run_dir: str, repo_id: str, private: bool, include_onnx: bool, dry_run: bool) -> None:
    """Upload RUN_DIR/best (weights, tokenizer, model card) to the Hugging Face Hub in one commit.

    Needs a Hub token (`hf auth login` or HF_TOKEN). Offline, nothing is uploaded and nothing changes.
    """
    from sentune.push import plan_upload
    from sentune.push import push as push_plan

    plan = plan_upload(run_dir, repo_id, private=private, include_onnx=include_onnx)
    if dry_run:
        for line in plan.lines():
            click.echo(line)
        return
    click.echo(f"pushed {len(plan.files)} files to {repo_id}: {push_plan(plan)}")


# ---- cache: the frozen-layer cache files -------------------------------------------------------------
CACHE_DIR_OPTION = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                                help="the folder train's --cache-dir wrote to [default: the user cache folder]")


@main.group()
def cache() -> None:
    """Inspect and bound the frozen-layer cache (train --cache disk|auto keeps one file per split)."""


def cache_root(cache_dir: str | None):
    from pathlib import Path

    from sentune.training.cache import default_cache_dir

    return Path(cache_dir or default_cache_dir())


@cache.command("list")
@CACHE_DIR_OPTION
def cache_list(cache_dir: str | None) -> None:
    """One line per cached split (size, days since last use, model, depth), most recent first; totals per model."""
    import time

    from sentune.training.cache_files import entries

    root, now = cache_root(cache_dir), time.time()
    found = entries(root)
    for entry in found:
        click.echo(entry.line(now))
    per_model: dict[str, int] = {}
    for entry in found:
        per_model[entry.model] = per_model.get(entry.model, 0) + entry.size
    for model, size in sorted(per_model.items(), key=lambda kv: -kv[1]):
        click.echo(f"{size / 1e6:10,.1f} MB  total for {model}")
    click.echo(f"{sum(e.size for e in found) / 1e6:,.1f} MB in {len(found)} files under {root}")


@cache.command("prune")
@CACHE_DIR_OPTION
@click.option("--older-than", type=click.FloatRange(min=0), default=None, help="remove files unused for DAYS")
@click.option("--max-gb", type=click.FloatRange(min=0), default=None,
              help="then remove the least recently used files until the rest fit in N GB")
@click.option("--dry-run", is_flag=True, help="list what would be removed and stop")
def cache_prune(cache_dir: str | None, older_than: float | None, max_gb: float | None, dry_run: bool) -> None:
    """Remove cache files by age and size, and temporaries left by killed builds (always)."""
    import time

    from sentune.training.cache_files import prune

    root = cache_root(cache_dir)
    removed = prune(root, older_than, None if max_gb is None else int(max_gb * 1e9), dry_run=dry_run)
    now = time.time()
    for entry in removed:
        click.echo(("would remove " if dry_run else "removed ") + entry.line(now))
    click.echo(f"{'would free' if dry_run else 'freed'} {sum(e.size for e in removed) / 1e6:,.1f} MB under {root}")
