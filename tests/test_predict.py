"""Classifier API (order, probabilities, labels, metadata, temperature) and `sentune predict` I/O."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_trained import train_tiny

from sentune import Classifier
from sentune.cli import main
from sentune.errors import ModelError
from sentune.inference.classifier import softmax
from sentune.inference.files import predict_rows
from sentune.settings import default_max_length

TEXTS = ["good great film", "awful", "the plot was boring and the acting was bad " * 6, "ok fine", "love it",
         "not quite the worst movie of this year but very dull", "meh"]


def edit_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of a model folder with config.json entries replaced (e.g. id2label, sentune)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory) -> Path:
    """Tiny BERT trained on toy sentiment: confident, varied predictions, labels neg/pos."""
    return train_tiny(tmp_path_factory.mktemp("sharp"))


@pytest.fixture(scope="module")
def sharp(sharp_dir) -> Classifier:
    return Classifier.load(sharp_dir, precision="fp32")  # the reference the bf16 test compares against


def test_predict_api_on_bert_and_roberta(tiny_model_dir):
    clf = Classifier.load(tiny_model_dir)
    preds = clf.predict(TEXTS, batch_size=3)
    assert len(preds) == len(TEXTS) and clf.labels == ["LABEL_0", "LABEL_1"]
    for p in preds:
        assert list(p["probs"]) == clf.labels
        assert sum(p["probs"].values()) == pytest.approx(1.0, abs=1e-6)
        assert p["score"] == max(p["probs"].values()) and p["probs"][p["label"]] == p["score"]


def test_labels_come_from_id2label(sharp):
    assert sharp.labels == ["neg", "pos"]
    labels = {p["label"] for p in sharp.predict(TEXTS)}
    assert labels == {"neg", "pos"}  # the sharp head gives both classes on these texts


def test_original_order_is_restored_whatever_the_batching(sharp):
    alone = np.concatenate([sharp.predict_proba([t]) for t in TEXTS])
    for batch_size in (1, 2, 3, 32):
        batched = sharp.predict_proba(TEXTS, batch_size=batch_size)
        np.testing.assert_allclose(batched, alone, atol=1e-4)
    reversed_probs = sharp.predict_proba(TEXTS[::-1], batch_size=4)
    np.testing.assert_allclose(reversed_probs[::-1], alone, atol=1e-4)


def test_temperature_divides_the_logits(sharp_dir, tmp_path):
    hot = Classifier.load(edit_config(sharp_dir, tmp_path / "t", sentune={"temperature": 3.0}))
    logits = hot.logits(TEXTS)
    np.testing.assert_allclose(hot.predict_proba(TEXTS), softmax(logits / 3.0), atol=1e-6)
    plain = Classifier.load(sharp_dir).predict_proba(TEXTS)
    assert np.abs(hot.predict_proba(TEXTS) - plain).max() > 0.01  # it does change the probabilities
    assert (hot.predict_proba(TEXTS).argmax(1) == plain.argmax(1)).all()  # but never the labels


def test_sentune_metadata_sets_length_truncation_and_tweet_normalization(tiny_bert_dir, tmp_path):
    meta = {"max_length": 10, "truncation": "tail", "head_tokens": 2, "normalize_tweets": True}
    clf = Classifier.load(edit_config(tiny_bert_dir, tmp_path / "m", sentune=meta))
    s = clf.settings
    assert (s.max_length, s.truncation, s.head_tokens, s.normalize_tweets) == (10, "tail", 2, True)
    long_ids = clf.encode(["good " * 5 + "bad " * 20])[0]
    assert len(long_ids) == 10 and clf.tokenizer.decode(long_ids[1:-1]).split() == ["bad"] * 8
    assert clf.encode(["@bob loved it http://x.y/z"]) == clf.encode(["@user loved it http"])


def test_plain_folder_defaults(tiny_roberta_dir):
    clf = Classifier.load(tiny_roberta_dir)
    s = clf.settings
    assert (s.max_length, s.truncation, s.normalize_tweets, s.temperature) == (128, "head", False, None)


class FakeConfig:
    def __init__(self, model_type, positions):
        self.model_type, self.max_position_embeddings = model_type, positions


class FakeTokenizer:
    def __init__(self, model_max_length):
        self.model_max_length = model_max_length


@pytest.mark.parametrize("model_type, positions, tok_max, want", [
    ("bert", 512, int(1e30), 512),  # tokenizer without a limit
    ("roberta", 514, 512, 512),
    ("roberta", 130, int(1e30), 128),  # RoBERTa loses two positions to its padding offset
    ("bert", 2048, 4096, 512),  # never more than 512 by default
])
def test_default_max_length(model_type, positions, tok_max, want):
    assert default_max_length(FakeConfig(model_type, positions), FakeTokenizer(tok_max)) == want


def test_bf16_weights_keep_the_labels(sharp_dir, sharp):
    bf16 = Classifier.load(sharp_dir, bf16=True)
    np.testing.assert_allclose(bf16.predict_proba(TEXTS), sharp.predict_proba(TEXTS), atol=0.05)
    assert [p["label"] for p in bf16.predict(TEXTS)] == [p["label"] for p in sharp.predict(TEXTS)]


def test_empty_input_and_wrong_types(sharp):
    assert sharp.predict([]) == [] and sharp.predict_proba([]).shape == (0, 2)
    with pytest.raises(TypeError, match="list of texts"):
        sharp.predict("a lone string")
    with pytest.raises(TypeError, match="text 1"):
        sharp.predict(["ok", 3])


def test_load_errors_are_model_errors(tmp_path, tiny_bert_dir):
    with pytest.raises(ModelError, match="no config.json"):
        Classifier.load(tmp_path / "missing")
    with pytest.raises(ModelError, match="sentune export"):
        Classifier.load(tiny_bert_dir, backend="onnx")
    with pytest.raises(ModelError, match="unknown backend"):
        Classifier.load(tiny_bert_dir, backend="tensorflow")


# ---- sentune predict ---------------------------------------------------------------------------------
def run(*args, input=None):
    result = CliRunner().invoke(main, [str(a) for a in args], input=input)
    return result


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_cli_texts_give_jsonl_with_ids(sharp_dir, sharp):
    result = run("predict", sharp_dir, "good great film", "awful", "--precision", "fp32")  # as `sharp`
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    want = sharp.predict(["good great film", "awful"])
    assert [r["id"] for r in records] == [0, 1]
    assert [r["label"] for r in records] == [w["label"] for w in want]
    assert records[0]["probs"] == pytest.approx(want[0]["probs"], abs=1e-6)


def test_cli_plain_text_file_and_stdin(sharp_dir, sharp, tmp_path):
    (tmp_path / "in.txt").write_text("good great film\n\nawful\nmeh\n")
    from_file = jsonl(run("predict", sharp_dir, "--input", tmp_path / "in.txt").stdout)
    from_stdin = jsonl(run("predict", sharp_dir, "--input", "-", input="good great film\n\nawful\nmeh\n").stdout)
    assert [r["id"] for r in from_file] == [0, 1, 2]  # blank lines skipped
    assert [r["label"] for r in from_file] == [p["label"] for p in sharp.predict(["good great film", "awful", "meh"])]
    assert from_stdin == from_file


def labelled_rows(sharp) -> tuple[list[dict], float]:
    texts = TEXTS
    predicted = [p["label"] for p in sharp.predict(texts)]
    gold = [lab if i % 3 else ("pos" if lab == "neg" else "neg") for i, lab in enumerate(predicted)]
    rows = [{"text": t, "label": g, "source": f"s{i}"} for i, (t, g) in enumerate(zip(texts, gold, strict=True))]
    return rows, sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(texts)


def test_cli_csv_input_carries_columns_and_prints_accuracy(sharp_dir, sharp, tmp_path):
    rows, accuracy = labelled_rows(sharp)
    path = tmp_path / "in.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["source", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    result = run("predict", sharp_dir, "--input", path)
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    assert [r["source"] for r in records] == [r["source"] for r in rows]
    assert [r["input_label"] for r in records] == [r["label"] for r in rows]
    assert "id" not in records[0] and "text" not in records[0]
    assert f"accuracy {accuracy:.4f} ({round(accuracy * len(rows))}/{len(rows)} labelled rows)" in result.stderr


def test_cli_jsonl_gz_with_integer_labels_and_custom_text_column(sharp_dir, sharp, tmp_path):
    rows, accuracy = labelled_rows(sharp)
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write(json.dumps({"review": r["text"], "label": ["neg", "pos"].index(r["label"])}) + "\n")
    result = run("predict", sharp_dir, "--input", path, "--text-column", "review")
    assert result.exit_code == 0, result.output
    assert f"accuracy {accuracy:.4f}" in result.stderr


def test_cli_csv_output_to_file(sharp_dir, sharp, tmp_path):
    out = tmp_path / "out.csv"
    result = run("predict", sharp_dir, "good great film", "awful", "--format", "csv", "--output", out)
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(table[0]) == ["id", "label", "score", "prob_neg", "prob_pos"]
    want = sharp.predict(["good great film", "awful"])
    assert [r["label"] for r in table] == [w["label"] for w in want]
    assert float(table[0]["prob_neg"]) + float(table[0]["prob_pos"]) == pytest.approx(1.0, abs=1e-6)


def test_cli_user_mistakes(sharp_dir, tmp_path):
    both = run("predict", sharp_dir, "text", "--input", "x.txt")
    assert both.exit_code == 2 and "either TEXT" in both.stderr
    missing = run("predict", sharp_dir, "--input", tmp_path / "nope.txt")
    assert missing.exit_code == 2 and "nope.txt" in missing.stderr
    bad_model = run("predict", tmp_path, "text")
    assert bad_model.exit_code == 2 and "not a model folder" in bad_model.stderr


def test_prediction_streams_chunk_by_chunk(sharp):
    """An endless input still yields results: nothing waits for (or holds) the whole file."""
    endless = ({"text": f"good film {i}"} for i in itertools.count())
    first = list(itertools.islice(predict_rows(sharp, endless, batch_size=4, chunk_rows=8), 20))
    assert [row["text"] for row, _ in first] == [f"good film {i}" for i in range(20)]
