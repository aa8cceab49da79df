"""Word attributions: completeness, word merging (WordPiece, byte-level BPE), truncation, task types, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import build_model, build_tokenizer
from tiny_trained import train_tiny

from sentune import Classifier
from sentune.cli import main
from sentune.errors import ConfigError
from sentune.inference.explain import encode_for_explain, explain, word_of_tokens

pytest.importorskip("captum", reason="pip install 'sentune[explain]'")

def load_fp32(path) -> Classifier:
    """fp32 like the attributions: `auto` is bf16 on a native-bf16 CPU, and values are compared to 1e-4 here."""
    return Classifier.load(path, precision="fp32")


STEPS = 256  # tiny models are cheap; many steps make the completeness check tight
TEXTS = ["the film was great", "awful boring plot, really dull!", "it was fine", "brilliant"]


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory) -> Path:
    # 15 steps, not the usual 30: trained longer, the toy model's logit jumps like a step function along
    # the path from the baseline (a=0.58 in one measurement), and no practical step count integrates that
    return train_tiny(tmp_path_factory.mktemp("sharp"), steps=15)


@pytest.fixture(scope="module")
def sharp(sharp_dir) -> Classifier:
    return load_fp32(sharp_dir)


def assert_complete(record: dict) -> None:
    """Completeness of IG, checked against our own forward passes: sum of word scores = f(text) - f(baseline)."""
    change = record["value"] - record["baseline_value"]
    total = sum(s for s in record["scores"] if s is not None)
    assert total == pytest.approx(change, abs=1e-3 + 0.01 * abs(change))
    # the reported delta is exactly that gap (Captum's convergence delta)
    assert record["delta"] == pytest.approx(total - change, abs=1e-4)


@pytest.mark.parametrize("model", ["trained", "bert", "roberta"])
def test_scores_sum_to_the_change_of_the_explained_logit(model, sharp, tiny_bert_dir, tiny_roberta_dir):
    clf = sharp if model == "trained" else load_fp32(tiny_bert_dir if model == "bert" else tiny_roberta_dir)
    records = clf.explain(TEXTS, steps=STEPS)
    predicted = clf.predict(TEXTS)
    for record, text, pred in zip(records, TEXTS, predicted, strict=True):
        assert record["words"] == text.split()
        assert len(record["scores"]) == len(record["words"])
        assert record["label"] == pred["label"] and record["score"] == pytest.approx(pred["score"], abs=1e-5)
        assert record["value"] == pytest.approx(float(clf.logits([text])[0][clf.labels.index(pred["label"])]),
                                                abs=1e-4)
        assert_complete(record)


def test_few_steps_show_a_larger_delta_than_many(sharp):
    """The delta measures the integral's error: it is not zero by construction."""
    text = "awful boring plot, really dull!"
    few, many = sharp.explain([text], steps=2)[0], sharp.explain([text], steps=STEPS)[0]
    assert abs(few["delta"]) > 10 * abs(many["delta"]) and abs(few["delta"]) > 1e-3


FLIP_CANDIDATES = ["the film was awful", "the plot was boring", "it was a bad movie", "the worst acting",
                   "the film was great", "a brilliant story"]


def test_a_word_that_flips_the_label_outweighs_one_that_changes_nothing(sharp):
    checked = 0
    for text in FLIP_CANDIDATES:
        words = text.split()
        base = sharp.predict([text])[0]
        without = sharp.predict([" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))])
        flips = [i for i, p in enumerate(without) if p["label"] != base["label"]]
        inert = [i for i, p in enumerate(without) if abs(p["probs"][base["label"]] - base["score"]) < 0.01]
        if not (flips and inert):
            continue
        scores = sharp.explain([text], steps=STEPS)[0]["scores"]
        assert min(scores[i] for i in flips) > max(abs(scores[i]) for i in inert), text
        checked += 1
    assert checked, "the toy model should have texts with both kinds of word"


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_sub_word_tokens_merge_into_their_words(arch):
    tok = build_tokenizer(arch)
    text = "Unbelievably  dull!! plot, xylophone-ish ACTING of 2024 — meh"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", text)]
    owners = word_of_tokens(enc["offset_mapping"], spans)
    assert None not in owners and owners == sorted(owners)  # every token has a word, in order
    assert len(set(owners)) == len(spans)  # every word has a token
    for w, (a, b) in enumerate(spans):
        pieces = [t for t, o in zip(enc["input_ids"], owners, strict=True) if o == w]
        decoded = tok.decode(pieces).replace(" ", "").replace("[UNK]", "?")
        if "?" not in decoded:
            assert decoded.lower() == text[a:b].lower()
    assert len(enc["input_ids"]) > len(spans)  # the test really has sub-word splits


def test_truncated_words_have_no_score_and_ids_match_predict(tmp_path, sharp_dir):
    short = edit(sharp_dir, tmp_path / "short", max_length=8, truncation="head+tail", head_tokens=3)
    clf = load_fp32(short)
    text = "great film but the plot was boring and dull and awful to the end"
    [enc] = encode_for_explain(clf, [text])
    assert enc.ids == clf.encode([text])[0]  # the model sees exactly what predict sees
    record = clf.explain([text], steps=STEPS)[0]
    seen = [s is not None for s in record["scores"]]
    cut = seen.index(False)
    assert all(seen[:cut]) and not any(seen[cut : cut + 3]) and seen[-1]  # head and tail kept, the middle cut
    assert sum(w is not None for w in enc.token_word) == 6  # max_length 8 minus [CLS] and [SEP]
    assert_complete(record)


def edit(src: Path, dst: Path, **sentune) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["sentune"] = {**(config.get("sentune") or {}), **sentune}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_tweets_are_explained_as_normalized(tmp_path, sharp_dir):
    clf = load_fp32(edit(sharp_dir, tmp_path / "tw", normalize_tweets=True))
    record = clf.explain(["@someone great film https://x.y"], steps=16)[0]
    assert record["words"] == ["@user", "great", "film", "http"]


def test_target_explains_the_label_asked_for(sharp):
    record = sharp.explain(["the film was great"], target="neg", steps=STEPS)[0]
    assert record["label"] == "neg"
    assert_complete(record)
    with pytest.raises(ConfigError, match="labels: neg, pos"):
        sharp.explain(["x"], target="nope")


def save_task_model(path: Path, problem_type: str, num_labels: int) -> Path:
    tokenizer = build_tokenizer("bert")
    model = build_model("bert", num_labels=num_labels, vocab_size=len(tokenizer), seed=3)
    model.config.problem_type = problem_type
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_multi_label_explains_each_predicted_label(tmp_path):
    clf = load_fp32(save_task_model(tmp_path / "ml", "multi_label_classification", 3))
    assert clf.task == "multi_label"
    for record, pred in zip(clf.explain(TEXTS, steps=64), clf.predict(TEXTS), strict=True):
        chosen = [c["label"] for c in pred["labels"]] or [max(pred["probs"], key=pred["probs"].get)]
        assert [e["label"] for e in record["explanations"]] == chosen  # what predict chose, best first
        for item in record["explanations"]:
            assert item["score"] == pytest.approx(pred["probs"][item["label"]], abs=1e-5)
            assert_complete({**item, "words": record["words"]})


def test_regression_explains_the_value(tmp_path):
    clf = load_fp32(save_task_model(tmp_path / "reg", "regression", 1))
    assert clf.task == "regression"
    for record, pred in zip(clf.explain(TEXTS, steps=64), clf.predict(TEXTS), strict=True):
        assert record["label"] == "value" and "score" not in record
        assert record["value"] == pytest.approx(pred["value"], abs=1e-4)  # the value predict reports
        assert_complete(record)


def test_cli_prints_one_json_line_per_text_off_a_terminal(sharp_dir, tmp_path):
    texts = tmp_path / "in.jsonl"
    texts.write_text('{"text": "the film was great", "id": "a"}\n{"text": "awful", "id": "b"}\n')
    result = CliRunner().invoke(main, ["explain", str(sharp_dir), "--input", str(texts), "--steps", "8"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert [r["id"] for r in records] == ["a", "b"] and records[1]["words"] == ["awful"]
    assert {"label", "words", "scores", "delta"} <= set(records[0])


def test_cli_colours_words_on_request_and_names_a_bad_target(sharp_dir):
    result = CliRunner().invoke(main, ["explain", str(sharp_dir), "the film was great", "--format", "color",
                                       "--steps", "8"], color=True)
    assert result.exit_code == 0 and "\x1b[48;5;" in result.output and "convergence delta" in result.output
    bad = CliRunner().invoke(main, ["explain", str(sharp_dir), "x", "--target", "nope"])
    assert bad.exit_code == 2 and "not a label of this model" in bad.output
    both = CliRunner().invoke(main, ["explain", str(sharp_dir)])
    assert both.exit_code == 2 and "either TEXT" in both.output


LONG = "great film but the plot was boring and dull and awful to the end, though the cast was brilliant"


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_a_windowed_model_explains_its_pooled_output_over_every_window(tmp_path, sharp_dir, pool):
    pytest.importorskip("sentune.data.windows", reason="windowed models arrive with issue 15")
    # 6 content tokens a window, 2 shared: the text is several windows long, and tokens sit in two windows
    clf = load_fp32(edit(sharp_dir, tmp_path / "win", long_text="windows", max_length=8, stride=2,
                         max_windows=16, pool=pool))
    [enc] = encode_for_explain(clf, [LONG])
    assert enc.windows == clf.encode_windows([LONG])[0] and len(enc.windows) > 3  # what predict reads
    [record], [pred] = clf.explain([LONG], steps=STEPS), clf.predict([LONG])
    assert record["words"] == LONG.split() and None not in record["scores"]  # the whole text, not window 1
    assert record["label"] == pred["label"] and record["score"] == pytest.approx(pred["score"], abs=1e-5)
    assert record["value"] == pytest.approx(float(clf.logits([LONG])[0][clf.labels.index(pred["label"])]),
                                            abs=1e-4)  # the pooled document logit
    assert_complete(record)
    # Captum batches embedding rows (W per step): one step a pass gives the scores of all steps in one
    one_step, all_steps = (explain(clf, [LONG], steps=16, tokens_per_pass=n)[0] for n in (1, 10**6))
    assert one_step["scores"] == pytest.approx(all_steps["scores"], abs=1e-5)


def test_windows_beyond_max_windows_leave_their_words_unscored(tmp_path, sharp_dir):
    pytest.importorskip("sentune.data.windows", reason="windowed models arrive with issue 15")
    clf = load_fp32(edit(sharp_dir, tmp_path / "cap", long_text="windows", max_length=8, stride=2,
                         max_windows=2, pool="mean"))
    record = clf.explain([LONG], steps=STEPS)[0]
    seen = [s is not None for s in record["scores"]]
    assert seen[0] and seen[-1] and not all(seen)  # head and tail windows kept, the middle not read
    assert_complete(record)


# ---- batching: texts, outputs and steps together give the attributions of each text alone ---------------
def assert_same_explanations(together: list[dict], alone: list[dict]) -> None:
    for t, a in zip(together, alone, strict=True):
        assert t["label"] == a["label"] and t.get("words") == a.get("words")
        assert [s is None for s in t["scores"]] == [s is None for s in a["scores"]]
        assert [s for s in t["scores"] if s is not None] == pytest.approx(
            [s for s in a["scores"] if s is not None], abs=1e-5)
        assert (t["value"], t["baseline_value"], t["delta"]) == pytest.approx(
            (a["value"], a["baseline_value"], a["delta"]), abs=1e-5)


def count_ig_calls(clf, monkeypatch) -> list:
    calls: list = []
    explainer = clf.explainer()
    attribute = explainer.ig.attribute
    monkeypatch.setattr(explainer.ig, "attribute", lambda *a, **k: calls.append(a[0].shape) or attribute(*a, **k))
    return calls


def test_texts_explained_in_one_batch_equal_each_explained_alone(tiny_model_dir, monkeypatch):
    clf = load_fp32(tiny_model_dir)
    alone = [explain(clf, [text], steps=16)[0] for text in TEXTS]
    calls = count_ig_calls(clf, monkeypatch)
    together = explain(clf, TEXTS, steps=16)
    assert len(calls) == 1 and calls[0][0] == len(TEXTS)  # one integrated-gradients call for all four
    assert_same_explanations(together, alone)
    # one step a pass (many passes) gives the same numbers as every step of every text in one pass
    assert_same_explanations(explain(clf, TEXTS, steps=16, tokens_per_pass=1), alone)
    assert not any(p.requires_grad for p in clf.explainer().model.parameters())  # no weight gradients


def test_windowed_long_texts_explained_together_equal_each_alone(tmp_path, sharp_dir, monkeypatch):
    clf = load_fp32(edit(sharp_dir, tmp_path / "win", long_text="windows", max_length=8, stride=2,
                         max_windows=16, pool="mean"))
    texts = [LONG, "the film was great", " ".join(reversed(LONG.split()))]
    alone = [explain(clf, [text], steps=16)[0] for text in texts]
    calls = count_ig_calls(clf, monkeypatch)
    together = explain(clf, texts, steps=16)
    assert len(calls) == 1 and calls[0][0] == len(texts)
    assert_same_explanations(together, alone)


def test_multi_label_outputs_are_integrated_together(tmp_path, monkeypatch):
    clf = load_fp32(save_task_model(tmp_path / "ml", "multi_label_classification", 3))
    alone = [explain(clf, [text], steps=16)[0] for text in TEXTS]
    calls = count_ig_calls(clf, monkeypatch)
    together = explain(clf, TEXTS, steps=16)
    assert len(calls) == 1
    for t, a in zip(together, alone, strict=True):
        assert_same_explanations(t["explanations"], a["explanations"])
