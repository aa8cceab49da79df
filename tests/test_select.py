"""`sentune select` (strategies, CSV and Label Studio files, bad input) and `train --add-file` reading the
labelled CSV back."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import NEGATIVE, POSITIVE, write_jsonl
from tiny_trained import train_tiny

from sentune import Classifier, config, tasks
from sentune.cli import main
from sentune.data import splits as data
from sentune.errors import ConfigError, DataError
from sentune.inference.select import choose, select

CLEAR = [" ".join([w] * 4) for w in POSITIVE[:5] + NEGATIVE[:5]]  # the model is sure of these
UNSURE = [f"{p} {n} movie" for p, n in zip(POSITIVE[5:10], NEGATIVE[5:10], strict=True)]  # one of each side


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("sel"))


@pytest.fixture
def pool(tmp_path):
    texts = CLEAR + UNSURE + ["=HYPERLINK(\"http://x\") awful good"]
    return write_jsonl(tmp_path / "pool.jsonl", [{"text": t} for t in texts])


def test_uncertainty_orders_by_entropy_and_margin():
    probs = np.array([[0.99, 0.01], [0.5, 0.5], [0.8, 0.2]])
    for strategy in ("entropy", "margin"):
        chosen, worth = choose("single_label", probs, ["a", "b", "c"], 2, strategy)
        assert chosen.tolist() == [1, 2] and worth[1] > worth[2] > worth[0]
    three = np.array([[0.4, 0.4, 0.2], [0.5, 0.25, 0.25]])  # margin and entropy disagree here
    assert choose("single_label", three, ["a", "b"], 1, "margin")[0].tolist() == [0]
    assert choose("single_label", three, ["a", "b"], 1, "entropy")[0].tolist() == [0]
    multi = np.array([[0.9, 0.1], [0.5, 0.9], [0.6, 0.6]])
    assert choose("multi_label", multi, ["a", "b", "c"], 1, "margin")[0].tolist() == [1]


def test_random_is_seeded_and_diverse_spreads_over_clusters():
    texts = ["good film"] * 6 + ["bad plot"] * 6
    probs = np.tile([[0.5, 0.5]], (12, 1))
    a, _ = choose("single_label", probs, texts, 4, "random", seed=1)
    b, _ = choose("single_label", probs, texts, 4, "random", seed=1)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 4
    probs = np.array([[0.5, 0.5]] * 6 + [[0.6, 0.4]] * 6)  # entropy alone would take two "good film" copies
    chosen, _ = choose("single_label", probs, texts, 2, "diverse")
    assert {texts[i] for i in chosen} == {"good film", "bad plot"}


def test_regression_refuses_uncertainty_strategies():
    with pytest.raises(ConfigError, match="regression model gives one number"):
        choose("regression", np.zeros((3, 1)), ["a", "b", "c"], 1, "entropy")
    assert len(choose("regression", np.zeros((3, 1)), ["a", "b", "c"], 2, "random")[0]) == 2
    assert tasks.get_task("regression").uncertainty(np.zeros((3, 1)), "diverse").tolist() == [0.0, 0.0, 0.0]


def test_select_writes_csv_and_label_studio_with_the_unsure_texts_first(model_dir, pool, tmp_path):
    out = tmp_path / "next.csv"
    result = CliRunner().invoke(main, ["select", str(model_dir), "--unlabeled", str(pool), "--budget", "16",
                                       "--output", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 17)] and all(r["label"] == "" for r in rows)
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    texts = [json.loads(line)["text"] for line in pool.read_text(encoding="utf-8").splitlines()]
    probs = Classifier.load(model_dir).predict_proba(texts)
    entropy = -(probs * np.log(probs)).sum(1)
    assert [int(r["row"]) for r in rows] == np.argsort(-entropy, kind="stable").tolist()
    assert [r["text"].removeprefix("'") for r in rows] == [texts[int(r["row"])] for r in rows]
    assert sum(r["text"].startswith("'=HYPERLINK") for r in rows) == 1  # defused for spreadsheets
    studio = json.loads(out.with_suffix(".labelstudio.json").read_text(encoding="utf-8"))
    assert len(studio) == 16 and studio[0]["data"]["text"] == rows[0]["text"].lstrip("'")
    assert studio[0]["predictions"][0]["result"][0]["value"]["choices"][0] in {"neg", "pos"}
    assert "chose 16 of 16 texts (entropy)" in result.output


def test_labelled_selection_extends_training_data(model_dir, pool, tmp_path):
    out = tmp_path / "next.csv"
    select(str(model_dir), str(pool), 3, output=str(out))
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["label"] = "pos"
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": "pos" if i < 5 else "neg"}
                                                   for i, t in enumerate(CLEAR)])
    cfg = config.resolve(None, None, {"train_file": str(train), "add_file": str(out)})
    splits = data.load_splits(cfg.data, 0, "none")
    assert len(splits.train) == 13 and splits.edits["added"] == 3
    assert splits.origins["train"][10:] == [("add", 0), ("add", 1), ("add", 2)]
    texts = list(splits.train["text"])[10:]
    assert all(not t.startswith("'") for t in texts)  # the CSV's formula guard came off again
    assert set(texts) == {r["text"].removeprefix("'") for r in rows} and len(set(texts)) == 3


def test_unlabelled_rows_in_the_add_file_are_one_clear_error(model_dir, pool, tmp_path):
    out = tmp_path / "next.csv"
    select(str(model_dir), str(pool), 2, output=str(out))  # label column left empty
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": "pos" if i < 5 else "neg"}
                                                   for i, t in enumerate(CLEAR)])
    cfg = config.resolve(None, None, {"train_file": str(train), "add_file": str(out)})
    with pytest.raises(DataError, match=r"next.csv row 1: missing label"):
        data.load_splits(cfg.data, 0, "none")


@pytest.mark.parametrize("args, message", [
    (["--budget", "0"], "--budget"),
    (["--budget", "2", "--strategy", "smart"], "--strategy"),
    (["--budget", "2", "--unlabeled", "missing.txt"], "missing.txt: no such file"),
])
def test_select_bad_input_is_one_clear_error(model_dir, pool, args, message):
    base = ["select", str(model_dir)] + ([] if "--unlabeled" in args else ["--unlabeled", str(pool)])
    result = CliRunner().invoke(main, base + args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_default_output_names(model_dir, tmp_path, monkeypatch):
    pool = write_jsonl(tmp_path / "pool.jsonl.gz", [{"text": t} for t in CLEAR])
    monkeypatch.chdir(tmp_path)
    out = select(str(model_dir), str(pool), 2, strategy="margin")
    assert out["csv"] == "pool-selected.csv" and out["labelstudio"] == "pool-selected.labelstudio.json"
    assert (tmp_path / "pool-selected.labelstudio.json").is_file()
