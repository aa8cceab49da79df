from __future__ import annotations

import pytest
import yaml

from sentune import config
from sentune.errors import ConfigError


def test_defaults_are_the_reference_recipe():
    cfg = config.Config()
    assert (cfg.data.max_length, cfg.train.batch_size, cfg.model.freeze_layers) == (512, 64, 9)
    assert (cfg.train.lr_encoder, cfg.train.lr_head, cfg.train.weight_decay) == (2e-5, 1e-4, 0.01)
    assert (cfg.train.patience, cfg.train.select_on) == (4, "validation")


def test_presets_ship_inside_the_package():
    assert {"imdb", "demo"} <= set(config.available_presets())
    for name in config.available_presets():
        cfg = config.resolve(name)
        assert cfg.run.preset == name


def test_precedence_defaults_preset_file_flags(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump({"train": {"batch_size": 7, "epochs": 3}, "data": {"max_length": 64}}))
    cfg = config.resolve("demo", str(file), {"epochs": 5})
    demo = config.resolve("demo")
    assert cfg.train.batch_size == 7  # file beats preset
    assert cfg.train.epochs == 5  # flag beats file
    assert cfg.data.max_length == 64
    assert cfg.model.model == demo.model.model  # preset beats defaults, untouched by file/flags


def test_round_trip_through_yaml(tmp_path):
    cfg = config.resolve("demo", flags={"lr_head": 3e-3, "limit_train": 10})
    config.save(cfg, tmp_path / "config.yaml")
    assert config.load(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("overrides, words", [
    ({"train": {"batch_sise": 3}}, "train.batch_sise"),
    ({"trian": {}}, "trian"),
    ({"train": {"batch_size": "many"}}, "int"),
    ({"train": {"precision": "fp8"}}, "fp16"),
    ({"train": {"epochs": 1.5}}, "epochs"),
])
def test_bad_config_values_name_the_field(tmp_path, overrides, words):
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(overrides))
    with pytest.raises(ConfigError, match=words):
        config.resolve(None, str(file))


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="--validation-split"):
        config.resolve(flags={"validation_split": 1.5})
    with pytest.raises(ConfigError, match="unknown preset"):
        config.resolve("nope")


def test_unreadable_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.resolve(None, str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.resolve(None, str(tmp_path / "list.yaml"))
