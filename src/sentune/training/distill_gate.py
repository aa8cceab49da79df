"""The end of `sentune distill`: teacher and student side by side, and the gate.

Both are loaded as `sentune predict` loads them (Classifier, this machine's precision unless --precision says
otherwise), score the same validation and test texts in whole batches of predict's size, and are timed doing
it (wall clock and process CPU time). The table (task metric, retained, texts/s, CPU s per text, parameters,
size on disk) is printed, saved as distill.md and distill.json, and added to best/README.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sentune import rundir, tasks
from sentune.atomic import atomic_write_text

PREDICT_BATCH = 32  # sentune predict's default --batch-size: the speed a user of predict gets
WARMUP_TEXTS = 8  # one small batch first, so neither model is charged its one-off start-up
SPLITS = (("validation", "val"), ("test", "test"))
SPLIT_NAMES = {"val": "validation", "test": "test"}


def compare(teacher_best: Path, student_best: Path, splits, cfg) -> tuple[list[dict], float]:
    """(the table's rows: teacher, student; the share of the teacher's validation score the student keeps, or
    of its test score for a teacher run that selected on test and so has no validation split)."""
    metric = cfg.train.select_metric
    rows = [measure("teacher", teacher_best, splits, cfg, metric), measure("student", student_best, splits, cfg,
                                                                             metric)]
    teacher, student = rows
    for tag in ("val", "test"):
        if teacher[tag] is not None:
            student[f"retained_{tag}"] = retention(teacher[tag], student[tag], metric)
            teacher[f"retained_{tag}"] = 1.0
    student["speedup"] = student["texts_per_s"] / teacher["texts_per_s"] if teacher["texts_per_s"] else None
    return rows, student[f"retained_{gate_split(rows)}"]


def gate_split(rows: list[dict]) -> str:
    return "val" if rows[0]["val"] is not None else "test"


def retention(teacher: float, student: float, metric: str) -> float:
    """student / teacher for a score; teacher / student for an error such as RMSE (lower is better)."""
    better, worse = (student, teacher) if tasks.sign(metric) > 0 else (teacher, student)
    if worse <= 0:
        return 1.0 if better >= worse else 0.0
    return float(better / worse)


def measure(role: str, folder: Path, splits, cfg, metric: str) -> dict:
    from sentune import model as model_lib
    from sentune.inference.classifier import Classifier

    clf = Classifier.load(folder, backend="torch", device=cfg.run.device, precision=cfg.train.precision)
    model = clf.runner.model
    row = {"model": role, "path": str(folder), "layers": model_lib.num_layers(model), "metric": metric,
           "precision": clf.precision, "parameters": sum(p.numel() for p in model.parameters()),
           "size_mb": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6}
    present = [(name, tag, getattr(splits, name)) for name, tag in SPLITS if getattr(splits, name) is not None]
    clf.predict_proba(list(present[0][2]["text"][:WARMUP_TEXTS]), batch_size=PREDICT_BATCH)
    texts, wall, cpu = 0, 0.0, 0.0
    for _, tag, split in present:
        start, start_cpu = time.perf_counter(), time.process_time()
        scores = clf.predict_proba(list(split["text"]), batch_size=PREDICT_BATCH)
        wall, cpu = wall + time.perf_counter() - start, cpu + time.process_time() - start_cpu
        texts += len(split)
        row[tag] = split_score(clf, metric, split, scores, splits)
    for _, tag in SPLITS:
        row.setdefault(tag, None)
    row.update(texts_timed=texts, texts_per_s=texts / wall if wall > 0 else None,
               cpu_s_per_text=cpu / texts if texts else None)
    return row


def split_score(clf, metric: str, split, scores: np.ndarray, splits) -> float:
    """The selection metric on one split: labels back in the data's units (a regression's are standardised in
    the splits), the model's scores as predict gives them, multi-label at the model's own thresholds."""
    from sentune.evaluation.metrics import score

    labels = tasks.unscale(list(split["label"]), splits.label_scale)
    return float(score(clf.task, labels, scores, clf.labels, clf.settings.thresholds)[metric])


# ---- what is written -------------------------------------------------------------------------------------
COLUMNS = (("model", "{}"), ("layers", "{}"), ("val", "{:.4f}"), ("test", "{:.4f}"), ("retained_val", "{:.1%}"),
           ("retained_test", "{:.1%}"), ("texts_per_s", "{:.1f}"), ("cpu_s_per_text", "{:.4f}"),
           ("parameters", "{:,}"), ("size_mb", "{:.1f}"))


def table(record: dict) -> str:
    metric = record["rows"][0]["metric"]
    names = {"val": f"val {metric}", "test": f"test {metric}", "retained_val": "retained (val)",
             "retained_test": "retained (test)", "texts_per_s": "texts/s", "cpu_s_per_text": "CPU s/text",
             "size_mb": "size MB"}
    head = [names.get(key, key) for key, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in record["rows"]:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-" for key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(record: dict) -> str:
    student = record["rows"][1]
    speed = f"{student['speedup']:.2f}x the teacher's texts/s" if student.get("speedup") else "speed not measured"
    verdict = "passes" if record["passed"] else "FAILS"
    return (f"Student {record['student']} keeps {record['retained']:.1%} of the teacher's "
            f"{SPLIT_NAMES[gate_split(record['rows'])]} "
            f"{student['metric']} ({verdict} --min-retained {record['min_retained']:.0%}); {speed} "
            f"({student['precision']}, whole batches of {PREDICT_BATCH})")


def gate_message(record: dict, run_dir: Path) -> str:
    teacher, student = record["rows"]
    tag = gate_split(record["rows"])
    return (f"the student keeps {record['retained']:.1%} of the teacher's {SPLIT_NAMES[tag]} {student['metric']} "
            f"({student[tag]:.4f} vs {teacher[tag]:.4f}), below --min-retained {record['min_retained']}; "
            f"it is in {run_dir} (table: {run_dir / 'distill.md'}). Train it longer (--epochs), keep more "
            "layers, add unlabelled transfer text (--unlabeled), or lower --min-retained")


def write_outputs(run_dir: Path, record: dict) -> None:
    text = table(record)
    print(text + "\n" + summary(record), flush=True)
    rundir.atomic_write_json(run_dir / "distill.json", record)
    atomic_write_text(run_dir / "distill.md", f"# Distillation\n\n{summary(record)}\n\n{text}\n")
    card = run_dir / "best" / "README.md"
    if card.is_file():
        atomic_write_text(card, card.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + card_section(record))


def card_section(record: dict) -> str:
    return (f"## Distillation\n\nDistilled from the teacher `{record['teacher']}` (student {record['student']}, "
            f"temperature {record['temperature']}, alpha {record['alpha']}, {record['transfer_texts']:,} transfer "
            f"texts of which {record['labelled']:,} labelled). {summary(record)}.\n\n{table(record)}\n")
