"""Bad input tried systematically (hypothesis): every case ends in a result or one clear error.

Classifier: any str (control characters, lone surrogates, empty, whitespace, huge) gives a prediction.
Serve: any body (random bytes, any JSON value, wrong types, huge) gets 200 or a 4xx JSON error, never a 500,
and the server keeps answering. Data loaders: lone-surrogate escapes, ragged CSV rows and labels of any JSON
type give rows or a DataError (tests/test_data.py already covers random bytes and random texts).
"""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sentune.config import DataConfig
from sentune.data import splits as data
from sentune.errors import DataError
from sentune.inference.classifier import Classifier
from sentune.serve import Limits, create_app

# Every code point, lone surrogates (category Cs) and controls included.
ANY_TEXT = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=60)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
                           max_leaves=12)
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def classifier(tiny_bert_dir):
    return Classifier.load(tiny_bert_dir, backend="torch")


@pytest.fixture(scope="module")
def client(classifier):
    limits = Limits(max_body_bytes=64_000, max_texts=16, max_chars=2_000)
    # every body is declared JSON (as a client must): what is inside it is the fuzzed part
    with TestClient(create_app(classifier, max_batch=8, max_wait_ms=1, limits=limits),
                    raise_server_exceptions=False, headers={"Content-Type": "application/json"}) as c:
        yield c


def assert_prediction(pred: dict, labels: list[str]) -> None:
    assert pred["label"] in labels and list(pred["probs"]) == labels
    assert math.isclose(sum(pred["probs"].values()), 1.0, abs_tol=1e-5)
    assert pred["score"] == max(pred["probs"].values())


# ---- Classifier -----------------------------------------------------------------------------------------
@SETTINGS
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=6))
def test_classifier_predicts_any_unicode(classifier, texts):
    preds = classifier.predict(texts, batch_size=4)
    assert len(preds) == len(texts)
    for pred in preds:
        assert_prediction(pred, classifier.labels)


@pytest.mark.parametrize("text", ["", " ", "\t\n\r", "\x00", "\x00\x01\x1b[31m\x7f", "\u200b\ufeff\u2028",
                                  "\ud800", "a\udfffb", "\ud83d\ude00", "\U0001F600" * 50, "é" * 5000])
def test_classifier_edge_texts(classifier, text):
    (pred,) = classifier.predict([text])
    assert_prediction(pred, classifier.labels)


def test_split_surrogate_pair_is_the_character(classifier):
    # JSON "\ud83d\ude00" arrives as two lone code points; it must read as the emoji it encodes.
    assert classifier.encode(["\ud83d\ude00"]) == classifier.encode(["\U0001F600"])


def test_ten_megabyte_text_is_truncated_not_fatal(classifier):
    text = "good movie " * 950_000  # ~10 MB
    (pred,) = classifier.predict([text])
    assert_prediction(pred, classifier.labels)
    assert len(classifier.encode([text[:100_000]])[0]) == classifier.max_length  # cut, not refused


def test_classifier_rejects_non_text_with_a_clear_error(classifier):
    for bad in ("a lone string", [None], [b"bytes"], [3]):
        with pytest.raises(TypeError, match="list of texts|expected str"):
            classifier.predict(bad)


# ---- serve ----------------------------------------------------------------------------------------------
def assert_answer(response, labels: list[str]) -> None:
    assert response.status_code in (200, 400, 413, 422), (response.status_code, response.text[:300])
    body = response.json()  # always JSON, also for errors
    if response.status_code == 200:
        for pred in body["predictions"]:
            assert_prediction(pred, labels)
    else:
        assert isinstance(body["error"], str) and body["error"]


@SETTINGS
@given(payload=JSON_VALUES)
def test_any_json_body_gets_a_result_or_a_4xx(client, classifier, payload):
    assert_answer(client.post("/predict", content=json.dumps(payload).encode()), classifier.labels)


@SETTINGS
@given(texts=st.one_of(JSON_VALUES, st.lists(ANY_TEXT, max_size=20)), single=st.booleans())
def test_any_texts_field_gets_a_result_or_a_4xx(client, classifier, texts, single):
    body = {"text": texts} if single else {"texts": texts}
    assert_answer(client.post("/predict", content=json.dumps(body).encode()), classifier.labels)


@SETTINGS
@given(blob=st.binary(max_size=200))
def test_random_bytes_get_a_4xx(client, classifier, blob):
    assert_answer(client.post("/predict", content=blob), classifier.labels)


@pytest.mark.parametrize("body", [
    b'{"text": "\\ud800"}', b'{"texts": ["a\\udfffb", "\\ud83d\\ude00"]}', b'{"text": "\\u0000\\u001b"}',
    b'{"text": "   "}', b'{"text": ""}', b'{"texts": []}', b'{"texts": [""]}', b'{"text": "\xff\xfe"}',
    b'{"text": "x"', b"", b"[]", b"null", b'"text"', b'{"text": 5}', b'{"texts": "abc"}', b'{"text": null}',
    b'{"texts": [["a"]]}', b'{"text": "a", "texts": ["b"]}', b'{"text": "a", "extra": 1}', b'{"text": true}',
    b'{"texts": [1e999]}', b'{"text": "a"}' + b" " * 70_000, b'{"\\ud800": null}', b'{"texts": [], "\\udfff": 1}',
])
def test_hand_picked_bodies(client, classifier, body):
    assert_answer(client.post("/predict", content=body), classifier.labels)


def test_lone_surrogate_is_answered_like_its_replacement(client):
    got = client.post("/predict", content=b'{"text": "bad \\ud800 film"}').json()
    assert got == client.post("/predict", json={"text": "bad \ufffd film"}).json()


def test_ten_megabyte_body_is_413_and_server_keeps_answering(client, classifier):
    r = client.post("/predict", content=json.dumps({"text": "good " * 2_000_000}).encode())
    assert r.status_code == 413 and "error" in r.json()
    assert client.get("/health").json() == {"status": "ok"}
    assert_answer(client.post("/predict", json={"text": "still here"}), classifier.labels)


def test_text_over_max_chars_is_422(client):
    r = client.post("/predict", json={"text": "x" * 2_001})
    assert r.status_code == 422 and "2001 characters" in r.json()["error"]


# ---- data loaders (cases test_data.py does not try) -----------------------------------------------------
def load(path) -> data.Splits | None:
    try:
        return data.load_splits(DataConfig(dataset=None, train_file=str(path)), 0, "test")
    except DataError:
        return None


def test_lone_surrogate_escapes_in_jsonl_are_mended(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "bad \\ud800 film", "label": "neg"}\n{"text": "\\ud83d\\ude00", "label": "pos"}\n')
    splits = load(path)
    assert list(splits.train["text"]) == ["bad \ufffd film", "\U0001F600"]
    rows = list(data.read_texts(str(path)))
    assert [r["text"] for r in rows] == ["bad \ufffd film", "\U0001F600"]


@SETTINGS
@given(rows=st.lists(st.lists(st.sampled_from(["a", "pos", "neg", "", '"q,x"', "1"]), max_size=4),
                     min_size=1, max_size=6))
@example(rows=[["a", "pos"], [], ['"q,x"', "neg"]])  # always one valid file among the drawn ones
def test_ragged_csv_rows_give_rows_or_a_data_error(tmp_path, rows):
    path = tmp_path / "r.csv"
    path.write_text("text,label\n" + "\n".join(",".join(r) for r in rows) + "\n")
    splits = load(path)
    if splits is not None:  # only rectangular files with two labels get through (blank lines are skipped)
        assert all(len(r) == 2 or ",".join(r) == "" for r in rows)
    try:
        list(data.read_texts(str(path)))
    except DataError:
        pass
    kept = [r for r in rows if ",".join(r) != ""]
    if all(len(r) == 2 and all(r) for r in kept) and len({r[1] for r in kept}) >= 2:  # valid: read back exactly
        unquote = {'"q,x"': "q,x"}
        assert splits is not None
        assert list(splits.train["text"]) == [unquote.get(r[0], r[0]) for r in kept]
        assert [splits.label_names[i] for i in splits.train["label"]] == [unquote.get(r[1], r[1]) for r in kept]
        assert [row["text"] for row in data.read_texts(str(path))] == [unquote.get(r[0], r[0]) for r in kept]


@SETTINGS
@given(labels=st.lists(JSON_VALUES, min_size=1, max_size=6))
def test_labels_of_any_json_type_give_rows_or_a_data_error(tmp_path, labels):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": v}) + "\n" for i, v in enumerate(labels)))
    splits = load(path)
    if splits is not None:
        # classes need two names to learn from; a regression (fractional numbers) has its one target
        assert len(splits.train) == len(labels)
        assert len(splits.label_names) == 1 if splits.task == "regression" else len(splits.label_names) >= 2
        assert all(isinstance(name, str) for name in splits.label_names)
