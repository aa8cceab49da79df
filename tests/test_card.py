"""The model card in best/ (content, round trip, evaluate --update-card) and `sentune push` up to the network."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard

from sentune import config
from sentune.cli import main
from sentune.training.loop import fit


@pytest.fixture(scope="module")
def run_dir(tiny_bert_dir, module_toy_files, tmp_path_factory) -> Path:
    files, out = module_toy_files, tmp_path_factory.mktemp("card") / "run"
    cfg = config.resolve(None, None, {
        "model": str(tiny_bert_dir), "train_file": str(files["train"]), "validation_file": str(files["validation"]),
        "test_file": str(files["test"]), "freeze_layers": 1, "max_length": 32, "batch_size": 16, "epochs": 2,
        "patience": 2, "lr_encoder": 3e-3, "lr_head": 3e-3, "cache": "off", "progress": False, "precision": "fp32",
        "truncation": "head+tail", "head_tokens": 8, "output_dir": str(out)})
    return fit(cfg)[0].run_dir


def test_training_writes_a_card_whose_metadata_round_trips(run_dir):
    path = run_dir / "best" / "README.md"
    card = ModelCard.load(path)
    data = card.data
    assert data.pipeline_tag == "text-classification" and data.library_name == "transformers"
    assert "sentune" in data.tags
    assert data.base_model is None  # a local folder has no Hub id to name
    final = json.loads((run_dir / "final_metrics.json").read_text())
    results = {r.metric_type: r for r in data.eval_results}
    assert results["accuracy"].metric_value == pytest.approx(final["accuracy"], abs=1e-4)
    assert results["accuracy"].dataset_split == "test" and "n=24" in results["accuracy"].dataset_name
    again = ModelCard(str(card))  # rendered and parsed back: the same metadata
    assert again.data.to_dict() == data.to_dict()


def test_card_body_tells_the_recipe_data_and_use(run_dir):
    text = ModelCard.load(run_dir / "best" / "README.md").text
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "embeddings + the bottom 1 encoder layers" in text
    assert "encoder 0.003, head 0.003" in text and "| precision | fp32 |" in text
    assert "best validation accuracy" in text
    for split in ("train", "validation", "test"):
        d = manifest["data"][split]
        # a local file by its name only: the card is published, the machine's paths are not
        assert f"| {split} | {Path(d['source']).name} | {d['rows']:,} |" in text and d["fingerprint"][:16] in text
        assert str(Path(d["source"]).parent) not in text
    assert "first 8 and the last remaining tokens (`--truncation head+tail`)" in text
    assert "Not calibrated" in text and 'pipeline("text-classification"' in text and "## Limitations" in text


def test_best_stays_a_pipeline_folder_with_the_card(run_dir):
    from transformers import pipeline

    assert pipeline("text-classification", model=str(run_dir / "best"), device="cpu")("great film")[0]["label"]


def test_evaluate_update_card_adds_a_data_set(run_dir, module_toy_files, tmp_path):
    best = tmp_path / "best"
    shutil.copytree(run_dir / "best", best)
    before = ModelCard.load(best / "README.md")
    args = ["evaluate", str(best), "--test-file", str(module_toy_files["validation"]), "--update-card"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.splitlines()[-1])
    card = ModelCard.load(best / "README.md")
    # named by its file name only: the card is published, the machine's paths are not
    added = [r for r in card.data.eval_results if r.dataset_type == module_toy_files["validation"].name]
    assert {r.metric_type for r in added} == {"accuracy", "f1", "recall", "ece"}
    assert next(r for r in added if r.metric_type == "accuracy").metric_value == pytest.approx(metrics["accuracy"],
                                                                                               abs=1e-4)
    assert len(card.data.eval_results) == len(before.data.eval_results) + 4  # the test results are kept
    assert card.text.count("<!-- sentune:results -->") == 1 and module_toy_files["validation"].name in card.text
    assert str(module_toy_files["validation"].parent) not in card.text
    assert card.text.split("## Training recipe")[1] == before.text.split("## Training recipe")[1]
    CliRunner().invoke(main, args)  # the same data again replaces, never duplicates
    assert len(ModelCard.load(best / "README.md").data.eval_results) == len(card.data.eval_results)


def test_update_card_starts_a_card_for_a_plain_folder(run_dir, module_toy_files, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(run_dir / "best", plain)
    (plain / "README.md").unlink()
    result = CliRunner().invoke(main, ["evaluate", str(plain), "--test-file", str(module_toy_files["test"]),
                                       "--update-card"])
    assert result.exit_code == 0, result.output
    card = ModelCard.load(plain / "README.md")
    assert card.data.pipeline_tag == "text-classification" and len(card.data.eval_results) == 4


def test_push_plans_one_commit_of_the_whole_folder(run_dir, monkeypatch):
    from sentune.push import plan_upload, push

    plan = plan_upload(run_dir, "someone/tiny", private=True)
    assert set(plan.files) == {p.name for p in (run_dir / "best").iterdir()} and "README.md" in plan.files
    calls = []

    class FakeApi:  # the network boundary: what would be sent
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw["private"]))

        def create_commit(self, repo_id, operations, **kw):
            calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations)))
            return type("Info", (), {"commit_url": "https://hub.example/commit/1"})()

    assert push(plan, api=FakeApi()) == "https://hub.example/commit/1"
    assert calls == [("create_repo", "someone/tiny", True), ("create_commit", "someone/tiny", sorted(plan.files))]


def test_push_offline_is_one_line_and_changes_nothing(run_dir, monkeypatch):
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "best").iterdir()}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(main, ["push", str(run_dir), "--repo-id", "someone/tiny"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: cannot reach the Hub") and "nothing was uploaded" in line
    assert "ready to push" in line and str(run_dir / "best") in line
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "best").iterdir()} == before


def test_push_unreachable_endpoint_is_the_same_clear_line(run_dir, monkeypatch):
    from huggingface_hub import constants

    from sentune.push import plan_upload, push

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    from huggingface_hub import HfApi

    with pytest.raises(Exception) as info:
        push(plan_upload(run_dir, "someone/tiny"), api=HfApi(endpoint="http://127.0.0.1:9"))
    assert "cannot reach the Hub" in str(info.value) and "nothing was uploaded" in str(info.value)


def test_push_dry_run_lists_files_and_onnx_needs_an_export(run_dir):
    out = CliRunner().invoke(main, ["push", str(run_dir), "--repo-id", "someone/tiny", "--dry-run"])
    assert out.exit_code == 0 and "README.md  <-  " in out.output and "model.safetensors" in out.output
    onnx = CliRunner().invoke(main, ["push", str(run_dir), "--repo-id", "someone/tiny", "--include-onnx"])
    assert onnx.exit_code == 2 and "sentune export" in onnx.output
    bad = CliRunner().invoke(main, ["push", str(run_dir), "--repo-id", "nope"])
    assert bad.exit_code == 2 and "OWNER/NAME" in bad.output


def test_push_with_onnx_puts_the_export_under_onnx(run_dir, tmp_path):
    from sentune.push import plan_upload

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    export = run / "best-onnx"
    export.mkdir()
    (export / "model.onnx").write_bytes(b"onnx")
    (export / "config.json").write_text("{}")
    plan = plan_upload(run, "someone/tiny", include_onnx=True)
    assert plan.files["onnx/model.onnx"] == export / "model.onnx" and "config.json" in plan.files
    assert os.fspath(plan.files["onnx/config.json"]).endswith("best-onnx/config.json")


def test_card_results_follow_the_task_and_skip_non_finite_numbers():
    from sentune.card import calibration_section, eval_results

    regression = eval_results({"rmse": 0.5, "mae": 0.4, "r2": float("nan"), "pearson": 0.9}, "m", "f.jsonl", "test", 9)
    assert [r.metric_name for r in regression] == ["RMSE", "MAE", "Pearson r"]  # R2 of one row is NaN: left out
    multi = eval_results({"micro_f1": 0.7, "macro_f1": 0.6, "samples_f1": 0.65}, "m", "f.jsonl", "test", 9)
    assert [r.metric_name for r in multi] == ["Macro F1", "Micro F1", "Samples F1"]
    tuned = {"problem_type": "multi_label_classification",
             "sentune": {"thresholds": {"global": 0.36, "per_label": {"a": 0.27, "b": 0.47}}}}
    assert "global 0.36; per label 0.27..0.47" in calibration_section(tuned, [])
    assert "no thresholds" in calibration_section({"problem_type": "regression"}, [])
