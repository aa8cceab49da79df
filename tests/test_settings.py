"""A model's inference settings (sentune/settings.py): one definition, read from folders of any age."""

from __future__ import annotations

import json
import shutil

import pytest

from sentune import config as config_lib
from sentune import settings
from sentune.settings import ModelSettings


def test_defaults_are_the_config_trees():
    data = config_lib.DataConfig()
    s = ModelSettings()
    assert (s.truncation, s.head_tokens, s.long_text, s.stride, s.max_windows, s.pool) == (
        data.truncation, data.head_tokens, data.long_text, data.stride, data.max_windows, data.pool)


def test_for_run_writes_windows_only_for_a_windowed_run():
    cfg = config_lib.resolve("demo", flags={"max_length": 64, "truncation": "head+tail"})
    written = settings.for_run(cfg).to_dict()
    assert written == {"max_length": 64, "truncation": "head+tail", "head_tokens": 128, "normalize_tweets": False}
    cfg.data.long_text, cfg.data.pool = "windows", "max"
    windowed = settings.for_run(cfg, {"method": "standard", "mean": 1.0, "std": 2.0}).to_dict()
    assert windowed["long_text"] == "windows" and windowed["pool"] == "max" and windowed["stride"] == 64
    assert windowed["label_scale"]["std"] == 2.0
    assert ModelSettings.from_dict(windowed) == settings.for_run(cfg, windowed["label_scale"])  # a round trip


def test_an_old_style_dict_reads_with_defaults_and_ignores_unknown_keys():
    # as training wrote it before windows, thresholds and label scales existed (floats where ints belong too)
    old = {"max_length": 96.0, "truncation": "tail", "head_tokens": 32, "normalize_tweets": 1, "temperature": 0,
           "written_by": "a later version"}
    s = ModelSettings.from_dict(old)
    assert (s.max_length, s.truncation, s.head_tokens, s.normalize_tweets) == (96, "tail", 32, True)
    assert s.temperature is None and s.thresholds is None and not s.windows and s.pool == "mean"
    assert ModelSettings.from_dict(None) == ModelSettings()


def test_store_changes_one_key_and_keeps_the_rest(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "sentune": {
        "max_length": 64, "future_key": [1, 2]}}))
    settings.store(tmp_path, temperature=0.5)
    settings.store(tmp_path, thresholds={"global": 0.3, "per_label": {}})
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["model_type"] == "bert"
    assert on_disk["sentune"] == {"max_length": 64, "future_key": [1, 2], "temperature": 0.5,
                                  "thresholds": {"global": 0.3, "per_label": {}}}
    assert ModelSettings.from_dict(on_disk["sentune"]).temperature == 0.5
    with pytest.raises(ValueError, match="not a model setting"):
        settings.store(tmp_path, temprature=0.5)


def test_an_old_model_folder_loads_and_a_plain_one_gets_resolved_defaults(tiny_bert_dir, tmp_path):
    from sentune.inference.classifier import Classifier

    plain = Classifier.load(tiny_bert_dir, backend="torch", device="cpu", precision="fp32")
    assert plain.settings.max_length == 128 and plain.settings.normalize_tweets is False  # the tokenizer's limit
    old = tmp_path / "old"
    shutil.copytree(tiny_bert_dir, old)
    config = json.loads((old / "config.json").read_text())
    config["sentune"] = {"max_length": 16, "truncation": "tail", "head_tokens": 4, "normalize_tweets": True,
                         "temperature": 2.0}
    (old / "config.json").write_text(json.dumps(config))
    clf = Classifier.load(old, backend="torch", device="cpu", precision="fp32")
    assert clf.settings.temperature == 2.0 and clf.max_length == 16 and not clf.settings.windows
    long_text = "@someone " + " ".join(f"w{i}" for i in range(40))
    tok = plain.tokenizer
    content = tok("@user " + long_text.split(" ", 1)[1], add_special_tokens=False)["input_ids"]
    # tweet normalization and tail truncation, as the old dict says: the last 14 content tokens in [CLS] ... [SEP]
    assert clf.encode([long_text]) == [[tok.cls_token_id, *content[-14:], tok.sep_token_id]]
