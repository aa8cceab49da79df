"""A model's inference settings: the `sentune` dict of its `config.json`, defined, built, read and stored here.

Training writes it into `best/config.json` (`for_run`), `calibrate` and training's finish store changes to it
(`store`: temperature, multi-label thresholds), and `Classifier`, export, serve and the model card read it
(`of_config`, `from_dict`). Its defaults are the config tree's (config.py), so one value is spelt
once. A folder saved before a key existed (or any plain save_pretrained folder, with no dict at all) reads
with the defaults for the missing keys, so old model folders still load.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sentune.atomic import atomic_write_text
from sentune.config import DataConfig
from sentune.errors import ModelError

KEY = "sentune"  # the attribute of transformers' PretrainedConfig, and the key in config.json
TWITTER_MARKERS = ("twitter-roberta", "twitter-xlm-roberta", "bertweet", "cardiffnlp")
WINDOW_KEYS = ("long_text", "stride", "max_windows", "pool")  # written by windowed runs only


@dataclass
class ModelSettings:
    """How inputs are prepared and outputs read for one model; None: not recorded (see `resolve`)."""

    max_length: int | None = None  # None: what the model and tokenizer allow (`default_max_length`)
    truncation: str = DataConfig.truncation
    head_tokens: int = DataConfig.head_tokens
    normalize_tweets: bool | None = None  # None: decided by the model's name (`wants_tweet_normalization`)
    long_text: str = DataConfig.long_text
    stride: int = DataConfig.stride
    max_windows: int = DataConfig.max_windows
    pool: str = DataConfig.pool
    temperature: float | None = None  # calibration (`sentune calibrate`); None: softmax of the raw logits
    thresholds: dict | None = None  # multi-label decision thresholds ({"global", "per_label", ...})
    label_scale: dict | None = None  # regression: the training targets' mean/std (already folded into the head)

    @property
    def windows(self) -> bool:
        return self.long_text == "windows"

    def to_dict(self) -> dict:
        """What config.json holds: recorded values only, the window keys only for a windowed model (so a
        truncating run's best/ stays what it always was)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if not self.windows:
            out = {k: v for k, v in out.items() if k not in WINDOW_KEYS}
        return out

    @classmethod
    def from_dict(cls, meta: dict | None) -> ModelSettings:
        """From a stored dict of any age: missing keys take the defaults, unknown keys are ignored."""
        meta = meta or {}
        known = {f.name: f for f in fields(cls)}
        values = {k: _coerce(k, v) for k, v in meta.items() if k in known and v is not None}
        return cls(**values)

    def resolve(self, model_name_or_path: str, config, tokenizer) -> ModelSettings:
        """These settings with what was not recorded filled in for this model (a plain save_pretrained folder)."""
        normalize = self.normalize_tweets
        if normalize is None:
            normalize = wants_tweet_normalization(model_name_or_path, "auto")
        return dataclasses.replace(self, max_length=self.max_length or default_max_length(config, tokenizer),
                                   normalize_tweets=normalize)


def _coerce(key: str, value: Any) -> Any:
    """Stored JSON as the field's type (an int written as 128.0, a temperature of 0 meaning none)."""
    if key in ("max_length", "head_tokens", "stride", "max_windows"):
        return int(value)
    if key == "temperature":
        return float(value) or None
    if key == "normalize_tweets":
        return bool(value)
    if key in ("thresholds", "label_scale"):
        return value or None
    return value


def for_run(cfg, label_scale: dict | None = None) -> ModelSettings:
    """What a training run's best/ must remember so predict/serve/export preprocess exactly as training did.
    `cfg` is the run's config.Config."""
    data = cfg.data
    return ModelSettings(max_length=data.max_length, truncation=data.truncation, head_tokens=data.head_tokens,
                         normalize_tweets=wants_tweet_normalization(cfg.model.model, data.normalize_tweets),
                         long_text=data.long_text, stride=data.stride, max_windows=data.max_windows,
                         pool=data.pool, label_scale=label_scale or None)


def of_config(config) -> ModelSettings:
    """The settings of a loaded transformers config (its `sentune` attribute; none on a plain model)."""
    return ModelSettings.from_dict(getattr(config, KEY, None))


def store(model_dir: str | Path, **changes: Any) -> Path:
    """Write changed settings (temperature=..., thresholds=...) into config.json atomically; the other keys
    of the dict, even ones this version does not know, stay as they were. A failed write is a WriteError."""
    known = {f.name for f in fields(ModelSettings)}
    unknown = set(changes) - known
    if unknown:
        raise ValueError(f"not a model setting: {', '.join(sorted(unknown))}")
    path = Path(model_dir) / "config.json"
    config = _read_config(path)
    config[KEY] = {**(config.get(KEY) or {}), **changes}
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None


def wants_tweet_normalization(model_name_or_path: str, setting: str) -> bool:
    """on/off are explicit; auto is True for Twitter-pretrained models or a folder saved with it on."""
    if setting in ("on", "off"):
        return setting == "on"
    config = Path(model_name_or_path) / "config.json"
    names = [str(model_name_or_path)]
    if config.is_file():
        try:
            meta = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        saved = (meta.get(KEY) or {}).get("normalize_tweets")
        if isinstance(saved, bool):
            return saved
        names.append(str(meta.get("_name_or_path", "")))
    return any(marker in name.lower() for name in names for marker in TWITTER_MARKERS)


def default_max_length(config, tokenizer) -> int:
    """min(tokenizer limit, 512), and never more positions than the model has."""
    limit = min(int(tokenizer.model_max_length), 512)
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-family models number positions from padding_idx + 1, so two positions are unusable.
        offset = 2 if "roberta" in (config.model_type or "") or config.model_type == "camembert" else 0
        limit = min(limit, int(positions) - offset)
    return limit
