"""Multi-label and regression on generated data: detection, data forms, bad data, losses, thresholds, sampling.

Regression has no shared real data set; every regression test here uses generated targets.
"""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch
from conftest import NEGATIVE, POSITIVE, WORDS, write_jsonl

from sentune import config, tasks
from sentune.data import labels as label_lib
from sentune.data.readers import LabelForm, RawSplit, read_labelled_file
from sentune.data.splits import load_splits
from sentune.errors import ConfigError, DataError
from sentune.evaluation.metrics import multi_label_metrics, regression_metrics
from sentune.evaluation.thresholds import tune_thresholds

FILLER = WORDS[22:]


def multi_label_rows(n: int, seed: int = 0) -> list[dict]:
    """Texts whose label set is learnable: "pos" for positive words, "neg" for negative, "film" for movie/film,
    some with two labels, some with none."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 4
        words = [rng.choice(FILLER[4:]) for _ in range(3)]
        names = []
        if kind in (0, 2):
            words += [rng.choice(POSITIVE) for _ in range(3)]
            names.append("pos")
        if kind == 1:
            words += [rng.choice(NEGATIVE) for _ in range(3)]
            names.append("neg")
        if kind in (2, 3) and i % 8 < 6:
            words += [rng.choice(["movie", "film"])] * 2
            names.append("film")
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": names})
    return rows


def regression_rows(n: int, seed: int = 0) -> list[dict]:
    """A generated score: 2 per positive word minus 2 per negative word, plus noise, around 5."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pos, neg = rng.randint(0, 3), rng.randint(0, 3)
        words = [rng.choice(POSITIVE) for _ in range(pos)] + [rng.choice(NEGATIVE) for _ in range(neg)]
        words += [rng.choice(FILLER[4:]) for _ in range(3)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": round(5 + 2 * (pos - neg) + rng.uniform(-0.3, 0.3), 3)})
    return rows


def data_cfg(**flags):
    return config.resolve(None, None, {"dataset": None, **flags}).data


# ---- detection -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels, task", [
    ([("a", "b"), ("a",)], "multi_label"),
    (["0.5", "1.25", "3"], "regression"),
    (["1", "2", "3"], "single_label"),
    (["3", "4"], "single_label"),  # 3.0 and 4.0 are read as "3" and "4": class ids
    (["pos", "neg"], "single_label"),
])
def test_auto_task_detection(labels, task):
    assert tasks.detect_task(labels) == task
    assert tasks.resolve_task("auto", labels, "f") == task


def test_a_list_label_in_single_label_mode_is_a_data_error():
    with pytest.raises(DataError, match="row 2 has a list of labels.*--task multi_label"):
        tasks.resolve_task("single_label", ["a", ("a", "b")], "train.jsonl")


# ---- data forms --------------------------------------------------------------------------------------------
def test_json_list_labels_column_needs_no_flag_and_empty_sets_are_counted(tmp_path):
    rows = multi_label_rows(40)
    write_jsonl(tmp_path / "train.jsonl", rows)
    splits = load_splits(data_cfg(train_file=str(tmp_path / "train.jsonl")), seed=0, select_on="validation")
    assert splits.task == "multi_label" and splits.label_names == ["film", "neg", "pos"]
    all_labels = list(splits.train["label"]) + list(splits.validation["label"])
    assert len(all_labels) == 40
    empty = sum(1 for row in rows if not row["labels"])
    assert empty > 0 and sum(1 for v in all_labels if sum(v) == 0) == empty
    from sentune.training.prepare import data_summary

    assert "with no label" in data_summary(splits)


def test_separator_joined_column(tmp_path):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([["good fun", "pos, film"], ["bad", "neg"], ["the a", ""], ["great", "pos"]] * 3)
    raw = read_labelled_file(path, form=LabelForm(separator=","))
    assert raw.labels[:3] == [("pos", "film"), ("neg",), ()]
    splits = load_splits(data_cfg(train_file=str(path), label_separator=","), 0, "test")
    assert splits.task == "multi_label" and splits.train["label"][0] == [1.0, 0.0, 1.0]


def test_one_zero_one_column_per_label(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,joy,anger\nhappy day,1,0\nso mad,0,1\nboth,1,1\nneither,0,0\n")
    splits = load_splits(data_cfg(train_file=str(path), label_columns="joy,anger"), 0, "test")
    assert splits.task == "multi_label" and splits.label_names == ["anger", "joy"]
    assert splits.train["label"] == [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    path.write_text("text,joy,anger\nhappy day,1,0\nso mad,0,maybe\n")
    with pytest.raises(DataError, match=r"train.csv row 2: column 'anger' must be 0 or 1"):
        read_labelled_file(path, form=LabelForm(columns=("joy", "anger")))


def test_hub_sequence_of_class_labels():
    from datasets import ClassLabel, Dataset, Features, List, Value

    from sentune.data.sources import _hub_raw

    features = Features({"text": Value("string"), "labels": List(ClassLabel(names=["joy", "anger", "fear"]))})
    part = Dataset.from_dict({"text": ["a", "b", "c"], "labels": [[0, 2], [1], []]}, features=features)
    raw = _hub_raw("go_emotions", "train", part, "text", "label")
    assert raw.labels == [("joy", "fear"), ("anger",), ()] and raw.class_names == ["joy", "anger", "fear"]
    assert label_lib.multi_label_vocabulary(raw) == ["joy", "anger", "fear"]


def test_regression_targets_are_standardised_and_recorded(tmp_path):
    rows = regression_rows(60)
    write_jsonl(tmp_path / "train.jsonl", rows)
    splits = load_splits(data_cfg(train_file=str(tmp_path / "train.jsonl"), label_column="score"), 0, "test")
    assert splits.task == "regression" and splits.label_names == ["score"]
    y = np.array([r["score"] for r in rows])
    assert splits.label_scale["mean"] == pytest.approx(y.mean()) and splits.label_scale["std"] == pytest.approx(y.std())
    assert np.mean(splits.train["label"]) == pytest.approx(0, abs=1e-5)
    back = tasks.unscale(splits.train["label"], splits.label_scale)
    assert back == pytest.approx(y, abs=1e-4)


# ---- bad data ----------------------------------------------------------------------------------------------
def test_label_outside_the_vocabulary_names_file_and_row(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", multi_label_rows(20))
    write_jsonl(tmp_path / "val.jsonl", [{"text": "x y", "labels": ["pos"]}, {"text": "z", "labels": ["joy"]}])
    cfg = data_cfg(train_file=str(tmp_path / "train.jsonl"), validation_file=str(tmp_path / "val.jsonl"))
    with pytest.raises(DataError, match=r"val.jsonl line 2: label 'joy' never appears in training data"):
        load_splits(cfg, 0, "validation")


def test_non_numeric_regression_target_names_file_and_row(tmp_path):
    rows = regression_rows(10)
    rows[6]["score"] = "high"
    write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = data_cfg(train_file=str(tmp_path / "train.jsonl"), label_column="score", task="regression")
    with pytest.raises(DataError, match=r"train.jsonl line 7: regression target 'high' is not a number"):
        load_splits(cfg, 0, "test")


def test_list_in_single_label_mode_names_the_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", multi_label_rows(12))
    cfg = data_cfg(train_file=str(tmp_path / "train.jsonl"), task="single_label")
    with pytest.raises(DataError, match="train.jsonl: row 1 has a list of labels"):
        load_splits(cfg, 0, "test")


def test_select_metric_must_fit_the_task():
    assert tasks.get_task("multi_label").select_metric("accuracy") == "macro_f1"
    assert tasks.get_task("regression").select_metric("accuracy") == "rmse"
    with pytest.raises(ConfigError, match="rmse does not apply to multi_label"):
        tasks.get_task("multi_label").select_metric("rmse")


# ---- sampling ----------------------------------------------------------------------------------------------
def test_limit_sampling_is_exact_and_keeps_rare_labels(tmp_path):
    rows = multi_label_rows(400)
    for i in range(0, 400, 40):  # a rare label on 10 rows
        rows[i]["labels"] = [*rows[i]["labels"], "rare"]
    write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = data_cfg(train_file=str(tmp_path / "train.jsonl"), limit_train=100, validation_split=0.2)
    splits = load_splits(cfg, 0, "validation")
    assert len(splits.train) == 100 and len(splits.validation) == 80
    rare = splits.label_names.index("rare")
    assert sum(v[rare] for v in splits.validation["label"]) == 2  # 20 % of 10, by iterative stratification
    again = load_splits(cfg, 0, "validation")
    assert again.train["text"] == splits.train["text"]


def test_regression_sampling_is_stratified_on_quantiles():
    values = [float(v) for v in range(100)]
    taken, rest = label_lib.pick(values, 20, seed=0)
    assert len(taken) == 20 and len(rest) == 80
    assert sorted(np.digitize([values[i] for i in taken], np.arange(10, 100, 10)).tolist()) == sorted(
        [b for b in range(10) for _ in range(2)])


# ---- losses --------------------------------------------------------------------------------------------------
def test_losses_per_task():
    train = config.resolve(None, None, {"dataset": None}).train
    y = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    plain = tasks.get_task("multi_label").loss(train, y, 3)
    assert isinstance(plain, torch.nn.BCEWithLogitsLoss) and plain.pos_weight is None
    train.class_weights = "balanced"
    weighted = tasks.get_task("multi_label").loss(train, y, 3)
    assert weighted.pos_weight.tolist() == pytest.approx([1 / 3, 3.0, 4.0])  # negatives / positives (0 -> 4/1)
    logits = torch.zeros(4, 3)
    assert plain(logits, y).item() == pytest.approx(np.log(2))
    train.class_weights, train.loss = "none", "huber"
    huber = tasks.get_task("regression").loss(train, torch.zeros(4), 1)
    assert huber(torch.full((4, 1), 3.0), torch.zeros(4)).item() == pytest.approx(2.5)  # |3| - 0.5
    train.loss = "auto"
    mse = tasks.get_task("regression").loss(train, torch.zeros(4), 1)
    assert mse(torch.full((4, 1), 3.0), torch.zeros(4)).item() == 9
    train.loss = "huber"
    with pytest.raises(ConfigError, match="--loss huber does not apply to multi_label"):
        tasks.get_task("multi_label").loss(train, y, 3)


def test_fold_scale_makes_the_head_answer_in_original_units():
    from conftest import build_model

    model = build_model("bert", num_labels=1).eval()
    ids = torch.randint(5, 100, (3, 8))
    logits = torch.no_grad()(lambda: model(input_ids=ids).logits.numpy())
    before = logits()
    scale = {"method": "standard", "mean": 5.0, "std": 2.0}
    tasks.fold_scale(model, scale)
    assert logits() == pytest.approx(before * 2 + 5, abs=1e-5)
    tasks.fold_scale(model, scale, inverse=True)
    assert logits() == pytest.approx(before, abs=1e-5)


# ---- thresholds and metrics -------------------------------------------------------------------------------
def test_thresholds_per_label_with_fallback_for_rare_labels():
    rng = np.random.default_rng(0)
    n = 400
    y = np.zeros((n, 3))
    y[:, 0] = rng.random(n) < 0.3
    y[:, 1] = rng.random(n) < 0.3
    y[:5, 2] = 1  # too few positives for a threshold of its own
    probs = np.zeros((n, 3))
    probs[:, 0] = np.where(y[:, 0] > 0, 0.30, 0.10) + rng.normal(0, 0.02, n)  # an under-confident label
    probs[:, 1] = np.where(y[:, 1] > 0, 0.90, 0.60) + rng.normal(0, 0.02, n)  # an over-confident one
    probs[:, 2] = 0.2
    t = tune_thresholds(probs, y, ["low", "high", "rare"], min_positives=10)
    assert 0.12 < t["per_label"]["low"] < 0.3 and 0.6 < t["per_label"]["high"] < 0.9
    assert t["fallback"] == ["rare"] and t["per_label"]["rare"] == t["global"]
    at_half = multi_label_metrics(y, probs, ["low", "high", "rare"])
    tuned = multi_label_metrics(y, probs, ["low", "high", "rare"], t)
    assert tuned["per_label"]["low"]["f1"] == 1.0 and at_half["per_label"]["low"]["f1"] == 0.0
    assert tuned["macro_f1"] > at_half["macro_f1"]
    assert tuned["per_label"]["low"]["tp"] == int(y[:, 0].sum())


def test_regression_metrics():
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0])
    assert m["rmse"] == pytest.approx(0.5) and m["mae"] == pytest.approx(0.25)
    assert m["spearman"] == pytest.approx(1.0) and 0.9 < m["pearson"] < 1.0


def test_raw_split_tuple_labels_fingerprint_like_names():
    from sentune.data.splits import fingerprint

    a = fingerprint(["x"], [[1.0, 0.0]], ["a", "b"])
    assert a == fingerprint(["x"], [[1.0, 0.0]], ["a", "b"]) and a != fingerprint(["x"], [[0.0, 1.0]], ["a", "b"])
    assert RawSplit(["t"], [("a",)], "s").row_name(0) == "s row 1"
    assert json.dumps(tasks.PROBLEM_TYPES["multi_label"]) == '"multi_label_classification"'


def test_a_task_is_its_name_and_travels_as_one():
    import copy
    import pickle

    from transformers import BertConfig

    for name in tasks.TASKS:
        task = tasks.get_task(name)
        assert task == name and json.dumps(task) == json.dumps(name)  # configs, manifests and JSON keep the name
        assert pickle.loads(pickle.dumps(task)) is task and copy.deepcopy(task) is task
        assert tasks.task_of(BertConfig(problem_type=task.problem_type)) is task
    assert tasks.task_of(BertConfig()) is tasks.get_task("single_label")  # a plain model: one label per text
    with pytest.raises(ConfigError, match="--task must be auto or one of"):
        tasks.get_task("ranking")
