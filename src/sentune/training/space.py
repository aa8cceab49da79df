"""The search space of `sentune sweep`: which config fields vary, over what, checked before any work.

A space is YAML mapping field names (as in config.py, e.g. `lr_encoder`) to one of

    lr_encoder: {low: 1.0e-5, high: 1.0e-3, log: true}   # float range (log or linear; optional step)
    freeze_layers: {low: 3, high: 5}                     # int range on an int field (optional step)
    scheduler: [none, linear, cosine]                    # a list of choices

Only fields that leave the data alone may vary: the trials share one tokenization and one frozen-layer
cache per depth, and are compared on the same validation examples. A packaged default ships in
`sentune/spaces/default.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sentune import config as config_lib
from sentune.errors import ConfigError

# Fields a trial may not change, and why (the message of the error naming the field).
FIXED = {
    "model": "another model is another search (tokenizer and cache change)",
    "trust_remote_code": "not a hyperparameter",
    "seed": "it changes the carved validation split and the samples the trials are compared on",
    "select_on": "trials are selected on validation; the test split is evaluated once, at the end",
    "select_metric": "it is the score the trials are compared on; set it once with --select-metric",
    "cache": "not a hyperparameter", "cache_dir": "not a hyperparameter",
    "save_every_steps": "trials are retried whole, not resumed", "on_nan": "not a hyperparameter",
}
DEFAULT_NAME = "default"


@dataclass
class Param:
    name: str
    section: str
    kind: str  # float | int | choice
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list:
        """The values a grid search walks: choices, every int, or a float range cut by its step."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            raise ConfigError(f"search space: {self.name} is a float range without step; --sampler grid needs "
                              "a step (or a list of choices)")
        count = int(round((self.high - self.low) / self.step)) + 1
        return [self.low + i * self.step for i in range(count)]


def available_spaces() -> list[str]:
    files = resources.files("sentune").joinpath("spaces").iterdir()
    return sorted(p.name[: -len(".yaml")] for p in files if p.name.endswith(".yaml"))


def read_space(spec: str | None) -> dict:
    """A space from a YAML file, or by packaged name (None: the default space)."""
    name = spec or DEFAULT_NAME
    if name in available_spaces() and not Path(name).exists():
        with resources.as_file(resources.files("sentune") / "spaces" / f"{name}.yaml") as p:
            return config_lib.read_yaml(p, "search space")
    return config_lib.read_yaml(name, "search space")


def parse_space(raw: dict, where: str = "search space") -> list[Param]:
    """Check every field and range; one `ConfigError` naming the field for the first problem found."""
    if not raw:
        raise ConfigError(f"{where} is empty; give at least one field to search over")
    types = {f.name: (section, config_lib.base_type(tp)) for section, f, tp in config_lib.iter_fields()}
    return [_param(name, spec, types, where) for name, spec in raw.items()]


def _param(name: str, spec: Any, types: dict, where: str) -> Param:
    if name not in types:
        raise ConfigError(f"{where}: unknown field {name!r} (fields are the model/train settings of config.py, "
                          "e.g. lr_encoder, lr_head, layer_decay, freeze_layers)")
    section, tp = types[name]
    if section == "data":
        raise ConfigError(f"{where}: {name} changes the data (tokenization, examples or splits), so it cannot vary "
                          "between trials that share one cache; fix it with --" + name.replace("_", "-"))
    if section == "run" or name in FIXED:
        raise ConfigError(f"{where}: {name} cannot vary between trials: {FIXED.get(name, 'not a hyperparameter')}")
    field = f"{where}: {section}.{name}"  # coerce checks choices by the part after the dot
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{field} has an empty list of choices")
        return Param(name, section, "choice", choices=tuple(config_lib.coerce(v, tp, field) for v in spec))
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log", "step"}:
        raise ConfigError(f"{field} must be a list of choices or {{low, high[, log, step]}}, got {spec!r}")
    if tp not in (int, float):
        raise ConfigError(f"{field} is a {tp.__name__} field: give a list of choices, not a range")
    low, high = (config_lib.coerce(spec[k], tp, field) for k in ("low", "high"))
    log = bool(spec.get("log", False))
    step = None if spec.get("step") is None else config_lib.coerce(spec["step"], tp, field)
    if low > high or (tp is float and low == high):
        raise ConfigError(f"{field}: empty range, low {low} must be below high {high}")
    if log and low <= 0:
        raise ConfigError(f"{field}: a log range needs low > 0, got {low}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{field}: step must be > 0 and cannot be combined with log")
    return Param(name, section, "int" if tp is int else "float", low, high, log, step)


def check_against(params: list[Param], depth: int) -> None:
    """Bounds only the model knows: freeze_layers in 0..depth."""
    for p in params:
        if p.name != "freeze_layers":
            continue
        values = p.choices if p.kind == "choice" else (p.low, p.high)
        if min(values) < 0 or max(values) > depth:
            raise ConfigError(f"search space: freeze_layers must stay within 0..{depth} (the model has {depth} "
                              f"encoder layers), got {min(values)}..{max(values)}")


def overrides(params: list[Param], values: dict) -> dict:
    """{section: {field: value}}, the shape `config.apply` takes."""
    nested: dict[str, dict] = {}
    for p in params:
        nested.setdefault(p.section, {})[p.name] = values[p.name]
    return nested
