"""`sentune audit` on small generated data with planted errors: every finding kind finds what was planted,
the files are what `train --exclude` reads back, and bad input is one clear error.

One audit run (module fixture, tiny BERT, 4 folds over one in-memory cache) serves most tests; runs pin fp32.
"""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import NEGATIVE, POSITIVE, save_tiny, sentiment_rows, write_jsonl

from sentune import config
from sentune.cli import main
from sentune.data import splits as data
from sentune.errors import ConfigError, DataError
from sentune.evaluation import audit_findings as found
from sentune.training.audit import audit

FLIPS = [5, 17, 42, 77, 120, 160]  # training rows whose label is planted wrong
DUPLICATE, NEAR, LEAK, OUTLIER = 200, 201, 202, 203  # planted rows appended after the 200 generated ones


def opposite(label: str) -> str:
    return "pos" if label == "neg" else "neg"


def clear_rows(n: int, seed: int) -> list[dict]:
    """Texts of sentiment words only: learnable by a tiny random model in a few epochs."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("neg", "pos")[i % 2]
        words = POSITIVE if label == "pos" else NEGATIVE
        rows.append({"text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 8))), "label": label})
    return rows


def planted(root):
    rows = clear_rows(200, seed=1)
    for i in FLIPS:
        rows[i]["label"] = opposite(rows[i]["label"])
    rows[10]["text"] = "=" + rows[10]["text"]  # a formula-looking text: the CSV must defuse it
    test = clear_rows(40, seed=3)
    rng = random.Random(7)
    rows[30]["text"] = " ".join(rng.choice(NEGATIVE) for _ in range(30))
    words = rows[30]["text"].split()
    rows += [
        {"text": rows[10]["text"].upper() + "!", "label": opposite(rows[10]["label"])},  # same text, other label
        {"text": " ".join([*words[:-1], "worst" if words[-1] != "worst" else "bad"]),
         "label": rows[30]["label"]},  # near: one word of 30 changed
        dict(test[3]),  # a test text in train: leakage
        {"text": " ".join(["\u2603\u2604\u2605 zzqx"] * 30), "label": "pos"},  # nothing like the rest
    ]
    return write_jsonl(root / "train.jsonl", rows), write_jsonl(root / "test.jsonl", test)


def audit_cfg(model, train, test, out, **flags):
    base = {"model": str(model), "train_file": str(train), "test_file": str(test), "freeze_layers": 1,
            "max_length": 32, "batch_size": 16, "epochs": 8, "patience": 3, "lr_encoder": 1e-2, "lr_head": 1e-2,
            "cache": "memory", "progress": False, "precision": "fp32", "output_dir": str(out)}
    return config.resolve(None, None, {**base, **flags})


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    model = save_tiny(root / "bert", "bert", num_layers=2)
    train, test = planted(root)
    report = audit(audit_cfg(model, train, test, root / "out"), folds=4)
    return {"report": report, "out": root / "out", "train": train, "test": test, "model": model, "root": root}


def of_kind(report, kind):
    return [f for f in report.findings if f["kind"] == kind]


def test_planted_label_errors_are_found_and_ranked(audited):
    labels = of_kind(audited["report"], "label")
    found_rows = {f["row"] for f in labels}
    assert len(found_rows & set(FLIPS)) >= 4, (found_rows, FLIPS)
    assert len(labels) <= 30  # flags a few rows, not the data set
    assert [f["score"] for f in labels] == sorted((f["score"] for f in labels), reverse=True)
    flip = next(f for f in labels if f["row"] in FLIPS)
    assert flip["split"] == "train" and flip["given"] != flip["suggested"]
    assert {flip["given"], flip["suggested"]} == {"neg", "pos"}


def test_duplicates_near_duplicates_and_leaks_are_found(audited):
    dups = {f["row"]: f for f in of_kind(audited["report"], "duplicate")}
    assert dups[DUPLICATE]["other"]["row"] == 10 and dups[DUPLICATE]["conflict"] is True
    assert dups[DUPLICATE]["similarity"] == "exact"
    assert dups[NEAR]["other"]["row"] == 30 and dups[NEAR]["similarity"] == "near" and not dups[NEAR]["conflict"]
    leaks = {f["row"]: f for f in of_kind(audited["report"], "leak")}
    assert leaks[LEAK]["other"] == {"split": "test", "row": 3, "given": leaks[LEAK]["given"]}
    first = audited["report"].findings.index(dups[DUPLICATE])
    assert all(not f.get("conflict") for f in of_kind(audited["report"], "duplicate")[1:]), first


def test_outlier_and_class_balance(audited):
    report = audited["report"]
    assert OUTLIER in {f["row"] for f in of_kind(report, "outlier")}
    assert report.balance["train"] == {"neg": 101, "pos": 103}
    assert report.rows == {"train": 204, "test": 40}


def test_files_issues_jsonl_csv_and_markdown(audited):
    out, report = audited["out"], audited["report"]
    lines = [json.loads(line) for line in (out / "issues.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines == report.findings and {f["kind"] for f in lines} == set(found.KINDS)
    assert [found.KINDS.index(f["kind"]) for f in lines] == sorted(found.KINDS.index(f["kind"]) for f in lines)
    for f in lines:
        assert {"kind", "split", "row", "text", "given", "suggested", "score"} <= set(f)
    with open(out / "issues.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(lines) and rows[0]["action"] == "drop"
    dup = next(r for r in rows if r["kind"] == "duplicate" and r["row"] == str(DUPLICATE))
    assert dup["text"].startswith("'=")  # defused: a spreadsheet shows it as text
    assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r.values())
    md = (out / "audit.md").read_text(encoding="utf-8")
    assert "## Top label findings" in md and "balance.png" in md and (out / "findings.png").stat().st_size > 0
    assert (out / "manifest.json").is_file() and (out / "config.yaml").is_file()


def test_folds_share_one_cache(audited, tmp_path, monkeypatch):
    """The frozen prefix runs once per split, not once per fold: every fold reads the same cached states."""
    from sentune.training import cache

    built = []
    original = cache._run_prefix
    monkeypatch.setattr(cache, "_run_prefix", lambda *a, **k: (built.append(a[2].num_examples()), original(*a, **k)))
    audit(audit_cfg(audited["model"], audited["train"], audited["test"], tmp_path / "out", epochs=1), folds=3)
    assert sorted(built) == [40, 204]  # test and train, each built once


def test_each_fold_starts_fresh(audited, tmp_path, monkeypatch):
    """A fold's scores do not depend on which folds trained before it (weights, optimizer moments, schedule
    and dropout all restart): the folds in reverse order give the same out-of-fold scores."""
    from sentune.data import labels as label_lib

    cfg = {"epochs": 2, "scheduler": "linear", "warmup_ratio": 0.1}
    forward = audit(audit_cfg(audited["model"], audited["train"], audited["test"], tmp_path / "a", **cfg), folds=3)
    original = label_lib.folds
    monkeypatch.setattr(label_lib, "folds", lambda *a, **k: original(*a, **k)[::-1])
    backward = audit(audit_cfg(audited["model"], audited["train"], audited["test"], tmp_path / "b", **cfg), folds=3)
    np.testing.assert_allclose(forward.scores, backward.scores, atol=1e-5)


def test_exclude_drops_and_relabels_what_the_audit_names(audited, tmp_path):
    out = audited["out"]
    cfg = audit_cfg(audited["model"], audited["train"], audited["test"], tmp_path / "x",
                    exclude=str(out / "issues.jsonl"))
    splits = data.load_splits(cfg.data, 0, "none")
    flagged = {f["row"] for f in audited["report"].findings}
    assert len(splits.train) == 204 - len(flagged)
    assert {row for _, row in splits.origins["train"]}.isdisjoint(flagged)
    assert splits.edits["dropped"] == len(flagged) and splits.edits["relabelled"] == 0
    # the editable CSV: keep one finding, relabel a flipped row, drop the rest
    with open(out / "issues.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    flip = next(r for r in rows if r["kind"] == "label" and int(r["row"]) in FLIPS)
    for r in rows:
        r["action"] = "relabel" if r is flip else "keep"
    edited = tmp_path / "edited.csv"
    with open(edited, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg.data.exclude = str(edited)
    splits = data.load_splits(cfg.data, 0, "none")
    assert len(splits.train) == 204 and splits.edits["ignored"] == len(rows) - 1
    row = int(flip["row"])
    assert splits.label_names[splits.train["label"][row]] == flip["suggested"]
    assert splits.edits["rows"]["relabelled"] == [{"split": "train", "row": row, "from": flip["given"],
                                                   "to": flip["suggested"]}]


def test_train_manifest_records_the_exclusions(audited, tmp_path):
    from sentune.training.loop import run

    cfg = audit_cfg(audited["model"], audited["train"], audited["test"], tmp_path / "run", epochs=1,
                    cache="off", exclude=str(audited["out"] / "issues.jsonl"))
    manifest = json.loads((run(cfg) / "manifest.json").read_text())
    flagged = sorted({f["row"] for f in audited["report"].findings})
    assert manifest["edits"]["dropped"] == len(flagged)
    assert sorted(r["row"] for r in manifest["edits"]["rows"]["dropped"]) == flagged


@pytest.mark.parametrize("line, message", [
    ("not json", "line 1: not a JSON object"),
    ('{"split": "train", "row": "x"}', "`row` must be a 0-based row number"),
    ('{"split": "elsewhere", "row": 1}', "`split` must be one of"),
    ('{"split": "train", "row": 1, "action": "burn"}', "`action` must be one of"),
    ('{"split": "train", "row": 1, "action": "relabel"}', "needs a `suggested` label"),
    ('{"split": "train", "row": 9999}', "row 9999 is past the end"),
])
def test_bad_exclude_file_is_one_clear_error(audited, tmp_path, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + "\n", encoding="utf-8")
    cfg = audit_cfg(audited["model"], audited["train"], audited["test"], tmp_path / "x", exclude=str(bad))
    with pytest.raises(DataError, match=message):
        data.load_splits(cfg.data, 0, "none")


def test_cli_audit_refuses_bad_settings_in_one_line(audited, tmp_path):
    args = ["audit", str(audited["train"]), "--model", str(audited["model"]), "--output-dir", str(tmp_path / "o")]
    result = CliRunner().invoke(main, [*args, "--folds", "1"])
    assert result.exit_code == 2 and "--folds" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, [*args, "--long-text", "windows", "--max-length", "32", "--stride", "8"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: sentune audit reads one window per text; use --long-text truncate"]


def test_cli_audit_writes_the_files_and_a_one_screen_summary(audited, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, [
        "audit", str(audited["train"]), "--model", str(audited["model"]), "--test-file", str(audited["test"]),
        "--folds", "2", "--epochs", "1", "--freeze-layers", "1", "--max-length", "32", "--batch-size", "32",
        "--precision", "fp32", "--cache", "memory", "--no-progress", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    summary = result.output[result.output.index("Audited 204 training rows"):].splitlines()
    assert len(summary) <= 24 and any("likely label errors" in line for line in summary)
    assert f"issues: {out / 'issues.jsonl'}" in summary and "label findings (single_label):" in result.output
    assert any(line.split()[:2] == ["leak", "train:202"] and "~ test:3" in line for line in summary), summary
    assert (out / "issues.csv").is_file() and (out / "audit.md").is_file()


def test_fold_count_is_checked_and_the_api_is_sentune_audit():
    import sentune

    assert sentune.audit is audit
    with pytest.raises(ConfigError, match="at least 2"):
        sentune.audit(config.resolve(None, None, {}), folds=1)


@pytest.mark.parametrize("task", ["multi_label", "regression"])
def test_audit_runs_for_every_task(task, audited, tmp_path):
    """Multi-label: per-label findings name the labels that differ; regression: cleanlab's residual ranking
    flags a planted target far from what the text says; duplicates and leaks work the same."""
    rows = sentiment_rows(60, seed=4)
    for i, r in enumerate(rows):
        r["label"] = ([r["label"], "movie"] if "movie" in r["text"] else [r["label"]]) if task == "multi_label" \
            else (0.9 if r["label"] == "pos" else 0.1) + 0.01 * (i % 3)
    rows.append(dict(rows[0]))
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", rows[:5])
    cache = "off" if task == "regression" else "memory"  # off: features from the frozen prefix run directly
    report = audit(audit_cfg(audited["model"], train, test, tmp_path / "out", epochs=3, cache=cache), folds=2)
    assert report.task == task and report.scores.shape[0] == 61
    assert 60 in {f["row"] for f in of_kind(report, "duplicate")}
    assert {0, 1, 2, 3, 4} <= {f["row"] for f in of_kind(report, "leak")}
    for f in of_kind(report, "label"):
        assert ("labels" in f) == (task == "multi_label")
    assert np.isfinite(report.scores).all()


def test_duplicate_rules_on_hand_made_features():
    """Exact twins by normalised text (each later copy against the first, and no extra near finding for them);
    near twins by features under 0.13 x the median nearest-neighbour distance; leaks on the training row."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, 16))
    features[5] = features[4] + 1e-4  # near twin of row 4
    features[2] = features[1] + 1e-4  # rows 1, 2 are exact twins anyway: one finding, "exact"
    texts = ["a b", "Same text!", "same  TEXT", "c d", "e f", "g h", "SAME text", "i j"]
    shown = ["x", "x", "y", "x", "x", "x", "x", "x"]
    train = found.Audited(texts, [0] * 8, shown, [("train", i) for i in range(8)], features)
    test = found.Audited(["i j."], [0], ["x"], [("test", 0)], features[7:8] + 0.0)
    items = found.duplicate_findings(train, [test])
    got = {(f["kind"], f["row"], f["other"]["row"], f["similarity"], f["conflict"]) for f in items}
    assert got == {("duplicate", 2, 1, "exact", True), ("duplicate", 6, 1, "exact", False),
                   ("duplicate", 5, 4, "near", False), ("leak", 7, 0, "exact", False)}
    ranked = found.rank_findings(items)
    assert ranked[0]["row"] == 2 and ranked[-1]["kind"] == "leak"  # the conflicting copy first


def test_label_findings_per_task_on_hand_made_scores():
    """cleanlab on out-of-fold scores, for each task: the planted row is found, given/suggested read as people
    read labels (names, name lists, values in the data's units)."""
    n = 60
    rng = np.random.default_rng(1)
    y = [i % 2 for i in range(n)]
    probs = np.array([[0.95, 0.05] if v == 0 else [0.05, 0.95] for v in y])
    y[3] = 0  # row 3 says neg, every score says pos

    def part(labels):
        return found.Audited([f"t{i}" for i in range(n)], labels, [None] * n, [("train", i) for i in range(n)],
                             np.zeros((n, 2)))

    single, note = found.label_findings("single_label", part(y), probs, ["neg", "pos"], None)
    assert [(f["row"], f["given"], f["suggested"]) for f in single] == [(3, "neg", "pos")]
    assert note is None
    multi_y = [[float(i % 3 == 0), float(i % 2)] for i in range(n)]
    multi_p = np.array([[0.95 if a else 0.05, 0.95 if b else 0.05] for a, b in multi_y])
    multi_y[4] = [0.0, 1.0]  # "b" given, every score says not
    multi, _ = found.label_findings("multi_label", part(multi_y), multi_p, ["a", "b"], None)
    assert [(f["row"], f["given"], f["suggested"], f["labels"]) for f in multi] == [(4, ["b"], [], ["b"])]
    always_a = [[1.0, float(i % 2)] for i in range(n)]  # a label on in every row: cleanlab cannot check
    none, note = found.label_findings("multi_label", part(always_a), multi_p, ["a", "b"], None)
    assert none == [] and "could not check the labels" in note
    target = rng.normal(size=n)
    preds = (target + rng.normal(scale=0.05, size=n))[:, None]
    target[7] += 6.0  # a target far from what the model predicts
    scale = {"method": "standard", "mean": 10.0, "std": 2.0}
    reg, _ = found.label_findings("regression", part(list(target)), preds, ["label"], scale)
    assert 7 in [f["row"] for f in reg] and len(reg) <= 3
    f7 = next(f for f in reg if f["row"] == 7)
    assert f7["given"] == pytest.approx(10.0 + 2.0 * target[7]) and f7["suggested"] == pytest.approx(
        10.0 + 2.0 * preds[7, 0], abs=1e-5)
