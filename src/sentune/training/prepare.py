"""Everything `train` does before the first step: accelerator, data, model, feeds, optimizer, run dir."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sentune import config as config_lib
from sentune import model as model_lib
from sentune import pooling, rundir
from sentune import settings as settings_lib
from sentune.config import Config
from sentune.data import splits as data
from sentune.data import windows as windows_lib
from sentune.errors import ConfigError
from sentune.training import tracking
from sentune.training.accel import make_accelerator


@dataclass
class Shared:
    """What a caller of `fit` hands it: a sweep, to each of its trials so that they share work and report as
    they go; `distill`, its transfer set and loss.

    `splits`: loaded once, without the test split (a trial never sees it); `cache_store`: frozen-layer caches
    kept in memory across trials; `on_epoch(row)`: called after every epoch's metrics (the pruner's hook; it
    may raise to stop the trial); `checkpoints`: off for trials, which are retried whole rather than resumed;
    `make_loss(cfg, splits)`: the training loss instead of the task's own (distillation); `cache_model`: the
    model the frozen layers come from, when not --model (a distilled student's bottom layers are its teacher's,
    so their cache files serve both).
    """

    splits: Any = None
    cache_store: Any = None
    on_epoch: Any = None
    checkpoints: bool = True
    make_loss: Any = None
    cache_model: str | None = None


class ExampleLoss(torch.nn.Module):
    """A training loss that also reads which examples a batch holds, `forward(logits, labels, index)` (a
    distillation loss looks up the teacher's outputs for them); a task's own loss reads the labels only."""


@dataclass
class Prepared:
    cfg: Config
    accelerator: Any
    splits: Any
    model: torch.nn.Module
    tokenizer: Any
    feeds: dict
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: torch.nn.Module
    run_dir: Path
    trainable: list = field(default_factory=list)
    net: Any = None  # what a training step calls: model.SplitModel, wrapped by DDP with several processes
    stop: Any = None  # guards.StopRequest while the epochs run
    shared: Shared | None = None  # set when the run is one trial of a sweep
    run_lock: Any = None  # rundir.RunLock on the main process: the run owns its directory until release()

    def release(self) -> None:
        if self.run_lock is not None:
            self.run_lock.release()

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)


def prepare(cfg: Config, shared: Shared | None = None) -> Prepared:
    """Everything before the first step; the run directory stays locked until the returned `release()`
    (a failure here releases it, and takes it back when nothing was written yet)."""
    locks: list = []
    try:
        p = _prepare(cfg, shared, locks)
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    p.run_lock = locks[0] if locks else None
    return p


def _prepare(cfg: Config, shared: Shared | None, locks: list) -> Prepared:
    import transformers
    from accelerate.utils import set_seed

    transformers.utils.logging.disable_progress_bar()  # one bar per epoch is the only bar we want
    transformers.utils.logging.set_verbosity_error()  # the new head's "MISSING weights" report is expected
    existing = bool(cfg.run.resume) or shared is not None  # a resume, or a trial of a sweep (which made its dir)
    acc, run_dir = make_accelerator(cfg, lambda processes: resolve_run_dir(cfg, processes, locks, existing))

    set_seed(cfg.train.seed)  # before the head is created: its random init depends on it
    say = print if acc.is_main_process else (lambda *a, **k: None)
    splits = shared.splits if shared and shared.splits else data.load_splits(cfg.data, cfg.train.seed,
                                                                             cfg.train.select_on)
    say(settle_task(cfg, splits))
    say(data_summary(splits))
    model, tokenizer = model_lib.load_model(cfg.model, splits.label_names, splits.task.problem_type)
    run_settings = settings_lib.for_run(cfg, splits.label_scale)
    setattr(model.config, settings_lib.KEY, run_settings.to_dict())  # best/config.json: predict reads it back
    if cfg.data.long_text == "windows":
        pooling.attach_pool(model, cfg.data.pool)  # before freezing and the optimizer: the pool trains
    shape_head(cfg, model)
    trainable, total = model_lib.count_parameters(model)
    say(f"Parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.1f}%); "
        f"frozen: embeddings + {cfg.model.freeze_layers} of {model_lib.num_layers(model)} layers")
    feeds = build_feeds(cfg, splits, tokenizer, bool(run_settings.normalize_tweets), say)
    check_train_batches(feeds["train"], acc.num_processes, cfg.train.batch_size)
    feeds = maybe_cache(cfg, model, feeds, acc, shared.cache_store if shared else None,
                        shared.cache_model if shared else None)
    groups = model_lib.param_groups(model, cfg.train.lr_encoder, cfg.train.lr_head, cfg.train.weight_decay,
                                    cfg.train.layer_decay, cfg.train.pooler, cfg.train.decay_norm_bias)
    optimizer = model_lib.make_optimizer(groups, acc.device.type)
    scheduler = make_scheduler(cfg, optimizer, len(feeds["train"]) // acc.num_processes)
    net, optimizer = acc.prepare(model_lib.SplitModel(model, cfg.model.freeze_layers, cfg.train.cached_dropout),
                                 optimizer)
    p = Prepared(cfg=cfg, accelerator=acc, splits=splits, model=model, tokenizer=tokenizer, feeds=feeds,
                 optimizer=optimizer, scheduler=scheduler, loss_fn=loss_maker(shared)(cfg, splits).to(acc.device),
                 run_dir=run_dir, trainable=[q for q in model.parameters() if q.requires_grad], net=net,
                 shared=shared)
    if acc.is_main_process:
        write_start(p)
    tracking.start(acc, config_lib.to_dict(cfg), run_dir)
    return p


def shape_head(cfg: Config, model) -> None:
    """Freeze the bottom K layers (and the pooler with --pooler frozen); --head-init linear re-draws the
    classifier (right after the model's own init, so the seed still decides it)."""
    model_lib.freeze_layers(model, cfg.model.freeze_layers)
    if cfg.train.pooler == "frozen":
        model_lib.freeze_pooler(model)
    if cfg.train.head_init == "linear":
        model_lib.init_head_as_linear(model)


def resolve_run_dir(cfg: Config, processes, locks: list, existing: bool = False) -> Path:
    """The run directory every process agrees on; `processes` is Accelerate's PartialState. The main process
    creates and locks it (`rundir.open_run`; the lock goes into `locks`) before the others learn its name."""
    from accelerate.utils import broadcast_object_list

    name = cfg.run.preset or Path(cfg.model.model).name
    path = Path(cfg.run.output_dir or rundir.default_dir(name))
    if processes.is_main_process:
        locks.append(rundir.open_run(path, existing=existing, overwrite=cfg.run.overwrite,
                                     new_name=not cfg.run.output_dir))
        path = locks[-1].path  # a default name that was taken gets a suffix
    chosen = [str(path)]
    if processes.num_processes > 1:
        broadcast_object_list(chosen)  # every rank must agree on one timestamped directory
    return Path(chosen[0])


def settle_task(cfg: Config, splits) -> str:
    """Store the detected task (and the select metric that fits it) in the config, so config.yaml and
    --resume keep them; returns the line that says what was chosen."""
    detected = cfg.data.task == "auto"
    cfg.data.task = str(splits.task)  # the plain name: config.yaml is written with yaml.safe_dump
    cfg.train.select_metric = splits.task.select_metric(cfg.train.select_metric)
    how = "detected from the labels" if detected else "from --task"
    return f"Task: {splits.task} ({how}); selecting on {cfg.train.select_metric}"


def build_feeds(cfg: Config, splits, tokenizer, normalize: bool, say=print) -> dict:
    feeds = {}
    for name in ("train", "validation", "test"):
        split = getattr(splits, name)
        if split is None:
            continue
        texts = [data.normalize_tweet(t) for t in split["text"]] if normalize else list(split["text"])
        ids = encode_split(cfg, tokenizer, texts)
        if cfg.data.long_text == "windows":
            say(windows_lib.summary(name, ids, cfg.data.max_windows))
        bs = cfg.train.batch_size if name == "train" else (cfg.train.eval_batch_size or 2 * cfg.train.batch_size)
        feeds[name] = make_split_feed(ids, list(split["label"]), bs, name == "train", cfg, tokenizer.pad_token_id)
    return feeds


def check_train_batches(feed, processes: int, batch_size: int) -> None:
    """Every process needs at least one training batch (they all step together); say so before any work."""
    if feed.num_batches(processes) == 0:
        raise ConfigError(f"{feed.num_examples()} training examples make {len(feed)} batches of --batch-size "
                          f"{batch_size}, fewer than the {processes} processes; use a smaller --batch-size "
                          "or fewer processes")


def encode_split(cfg: Config, tokenizer, texts: list[str]) -> list:
    """Per text its ids (truncate) or its list of windows (`--long-text windows`)."""
    if cfg.data.long_text == "windows":
        return windows_lib.encode_windows(tokenizer, texts, cfg.data.max_length, cfg.data.stride,
                                          cfg.data.max_windows)
    return data.encode_texts(tokenizer, texts, cfg.data.max_length, cfg.data.truncation, cfg.data.head_tokens)


def make_split_feed(ids, labels, batch_size, train, cfg: Config, pad_id):
    from sentune.data.batches import make_feed

    return make_feed(ids, labels, batch_size=batch_size, train=train, seed=cfg.train.seed, pad_id=pad_id,
                     padding=cfg.train.padding, max_length=cfg.data.max_length,
                     pad_to_multiple_of=cfg.train.pad_to_multiple_of, length_chunk=cfg.train.length_chunk)


def maybe_cache(cfg: Config, model, feeds: dict, acc, store=None, source: str | None = None) -> dict:
    k = cfg.model.freeze_layers
    if cfg.train.cache == "off" or k == 0:
        return feeds
    from sentune.training.cache import cache_feeds

    # The cache hashes each split's exact token ids and the prefix weights itself, so another seed, LR or
    # epoch count over the same examples reuses it; only what is not in those ids needs naming here.
    parts = {"model": source or cfg.model.model}
    log = print if acc.is_local_main_process else (lambda line: None)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[cfg.train.cache_dtype]
    cache = functools.partial(cache_feeds, model, k, mode=cfg.train.cache, cache_dir=cfg.train.cache_dir,
                              fingerprint_parts=parts, device=acc.device, store=store, dtype=dtype)
    # One process per machine builds the cache file, the others then find it and reuse it; with --cache
    # memory there is no file, so each process builds its own copy. The prefix runs under the run's autocast,
    # as it does live (training and evaluation), so the cache holds what the live path computes.
    with acc.local_main_process_first(), acc.autocast():
        if not cfg.train.frozen_dropout:
            return cache(feeds, log=log)
        return dropout_cache(cfg, cache, feeds, log)


def dropout_cache(cfg: Config, cache, feeds: dict, log) -> dict:
    """--frozen-dropout with the cache: evaluation splits as usual (eval mode), the training split as the frozen
    layers' output with dropout on in epochs 1..N, drawn as live training draws it (sentune.draws); epoch e
    reads run (e - 1) mod N (`SampledFeed`), so with N >= --epochs the run trains as a live one."""
    from sentune.data.batches import SampledFeed

    out = cache({s: f for s, f in feeds.items() if s != "train"}, log=log) if len(feeds) > 1 else {}
    n = cfg.train.dropout_samples
    samples = [cache({"train": feeds["train"]}, draws=(cfg.train.seed, epoch),
                     log=lambda line, e=epoch: log(f"{line} (dropout of epoch {e}, {e} of {n})"))["train"]
               for epoch in range(1, n + 1)]
    return out | {"train": SampledFeed(samples)}


def loss_maker(shared: Shared | None):
    return shared.make_loss if shared is not None and shared.make_loss is not None else make_loss


def make_loss(cfg: Config, splits) -> torch.nn.Module:
    """The task's loss: cross-entropy, BCE with logits, or MSE / Huber."""
    return splits.task.loss(cfg.train, torch.tensor(list(splits.train["label"])), len(splits.label_names))


def make_scheduler(cfg: Config, optimizer, batches_per_epoch: int):
    if cfg.train.scheduler == "none":
        return None
    from transformers import get_scheduler

    total = cfg.train.epochs * math.ceil(batches_per_epoch / cfg.train.grad_accum)
    return get_scheduler(cfg.train.scheduler, optimizer, num_warmup_steps=int(cfg.train.warmup_ratio * total),
                         num_training_steps=total)


def data_summary(splits) -> str:
    sizes = ", ".join(f"{name} {v['rows']:,}" for name, v in splits.sources.items())
    line = f"Data: {sizes}; labels: {', '.join(splits.label_names)}"
    counts = {name: label_counts(splits, name) for name in splits.sources}
    return line + splits.task.data_note(counts, splits.label_scale)


def label_counts(splits, name: str) -> dict:
    """Per split: rows per class, positives per label (plus empty / 2+ rows), or the target's spread."""
    return splits.task.label_counts(list(getattr(splits, name)["label"]), splits.label_names, splits.label_scale)


def write_start(p: Prepared) -> None:
    import yaml

    rundir.atomic_write_text(p.run_dir / "config.yaml", yaml.safe_dump(config_lib.to_dict(p.cfg), sort_keys=False))
    if p.cfg.run.resume:  # keep what the run started with (data fingerprints are checked against it)
        manifest = rundir.read_json(p.run_dir / "manifest.json")
        manifest.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        rundir.atomic_write_json(p.run_dir / "manifest.json", manifest)
        return
    sources = {}
    for name, info in p.splits.sources.items():
        sources[name] = {**info, "label_counts": label_counts(p.splits, name)}
    rundir.atomic_write_json(p.run_dir / "manifest.json", {
        "versions": rundir.versions(), "device": rundir.device_info(p.accelerator.device),
        "precision": p.accelerator.mixed_precision, "num_processes": p.accelerator.num_processes,
        "data": sources, "label_names": p.splits.label_names, "task": p.splits.task,
        **({"edits": p.splits.edits} if p.splits.edits else {}),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
