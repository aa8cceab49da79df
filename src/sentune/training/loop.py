"""`sentune train`: the reference recipe as an explicit Accelerate loop, readable top to bottom.

    data -> model (freeze the bottom K layers) -> feeds (dynamic padding, length buckets, optional
    frozen-layer cache) -> for each epoch: train, evaluate, keep the best weights, stop on patience
    -> reload the best weights -> evaluate on test once -> run directory.

Accelerate owns device placement and mixed precision, so multi-process training needs no rewrite:
each process trains on its shard of every batch list, counts are summed across processes, and only
the main process prints and writes files. Every epoch (and every --save-every-steps batches) ends with
a resumable checkpoint (checkpoint.py, `--resume`); Ctrl-C stops at a step boundary with one (guards.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sentune import draws, rundir, tasks
from sentune import model as model_lib
from sentune.config import Config
from sentune.evaluation.metrics import selection_key
from sentune.training import checkpoint, guards, tracking
from sentune.training.checkpoint import TrainState
from sentune.training.eval_pass import METRIC_NAMES, evaluate, scored_evaluate
from sentune.training.finish import finish, save_best
from sentune.training.prepare import ExampleLoss, Prepared, Shared, prepare

__all__ = ["TrainState", "evaluate", "fit", "run"]


def run(cfg: Config) -> Path:
    """Train according to `cfg` (continuing `cfg.run.resume` when set); returns the run directory."""
    return fit(cfg)[0].run_dir


def fit(cfg: Config, shared: Shared | None = None) -> tuple[Prepared, TrainState]:
    """The loop itself; returns the prepared objects (model holding the selected weights) and final state.
    `shared`: set by a sweep for each trial (data and caches loaded once, a per-epoch hook)."""
    with guards.out_of_memory_hint(cfg.train.batch_size, cfg.train.grad_accum, cfg.data.max_length):
        p = prepare(cfg, shared)
        try:
            state = checkpoint.restore(p) if cfg.run.resume else TrainState()
            with guards.StopRequest() as p.stop:
                stopped_early = train_epochs(p, state)
            finish(p, state, stopped_early)
        finally:  # an interrupted or failed run keeps what its trackers logged so far
            tracking.end(p.accelerator)
            p.release()
    return p, state


def train_epochs(p: Prepared, state: TrainState) -> bool:
    """Epochs until the last one or until patience runs out (then True); a checkpoint after each."""
    cfg = p.cfg
    for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
        if state.stale >= cfg.train.patience:
            return True
        row = train_and_evaluate(p, state, epoch)
        improved = select(state, row, selection_key(cfg.train.select_on, cfg.train.select_metric))
        state.epoch, state.step, state.partial, state.history = epoch, 0, None, [*state.history, row]
        p.log(epoch_line(row))
        if p.is_main:
            rundir.append_jsonl(p.run_dir / "metrics.jsonl", row)
        if improved:
            save_best(p)
        tracking.log_epoch(p.accelerator, row)
        if p.shared and p.shared.on_epoch:
            p.shared.on_epoch(row)  # a sweep's pruner may stop the trial here
        if p.shared is None or p.shared.checkpoints:
            checkpoint.save(p, state)
        if guards.agreed(p.stop.requested, p.accelerator):
            guards.interrupted(p, state)
    return False


def train_and_evaluate(p: Prepared, state: TrainState, epoch: int) -> dict:
    t0 = time.perf_counter()
    tr = train_epoch(p, state, epoch)
    train_s = time.perf_counter() - t0
    val = scored_evaluate(p, "validation") if p.feeds.get("validation") else None
    test = scored_evaluate(p, "test") if p.feeds.get("test") and p.cfg.train.select_on == "test" else None
    metric = p.cfg.train.select_metric
    extra = {} if metric == "accuracy" else {
        f"val_{metric}": val and val[metric], f"test_{metric}": test and test[metric]}
    return extra | {
        "epoch": epoch,
        "train_loss": tr["loss"], "train_acc": tr["acc"] if p.splits.task.has_accuracy else None,
        "val_loss": val and val["loss"], "val_acc": val and val["acc"],
        "test_loss": test and test["loss"], "test_acc": test and test["acc"],
        "epoch_seconds": time.perf_counter() - t0,
        "train_seconds": train_s,
        "train_samples_per_second": tr["n"] / train_s if train_s > 0 else None,
        "lr_head": p.optimizer.param_groups[-1]["lr"],
    }


def train_epoch(p: Prepared, state: TrainState, epoch: int) -> dict:
    """One pass over the training feed, from batch `state.step` when resuming mid-epoch.

    Returns mean loss, accuracy and count over all processes. Every `--save-every-steps` batches (at the
    next optimizer step) a checkpoint is saved; a stop request (Ctrl-C) saves one and ends the run.
    """
    acc, cfg = p.accelerator, p.cfg
    p.net.train()
    if not cfg.train.frozen_dropout:  # by default frozen layers never use dropout: what makes the cache exact
        model_lib.set_frozen_eval(p.model, cfg.model.freeze_layers)
    feed = p.feeds["train"]
    total = feed.num_batches(acc.num_processes, epoch)
    sums = torch.zeros(3, device=acc.device)  # loss*n, correct, n
    if state.partial is not None and acc.is_main_process:  # the restored epoch's running sums
        sums += torch.tensor(state.partial, device=acc.device)
    bar = tqdm(total=total, initial=state.step, desc="Training", dynamic_ncols=True,
               disable=not (p.is_main and cfg.run.progress))
    last_saved = state.step
    batches = feed.batches(epoch, rank=acc.process_index, world_size=acc.num_processes, start=state.step)
    for step, batch in enumerate(batches, start=state.step):
        # each epoch ends with an optimizer step, so no gradients are pending at an epoch-end checkpoint
        sync = (step + 1) % cfg.train.grad_accum == 0 or step + 1 == total
        done = train_step(p, batch, sync, epoch, step)
        sums += done
        bar.update(1)
        bar.set_postfix(loss=f"{(done[0] / done[2].clamp(min=1)).item():.4f}",
                        train_acc=f"{(sums[1] / sums[2].clamp(min=1)).item():.4f}")
        if not sync or step + 1 == total:
            continue
        due = bool(cfg.train.save_every_steps) and step + 1 - last_saved >= (cfg.train.save_every_steps or 0)
        stop = guards.agreed(p.stop.requested, acc)
        if due or stop:
            save_mid_epoch(p, state, step + 1, sums)
            last_saved = step + 1
        if stop:
            bar.close()
            guards.interrupted(p, state)
    bar.close()
    total_sums = acc.reduce(sums, reduction="sum")
    return {"loss": (total_sums[0] / total_sums[2]).item(), "acc": (total_sums[1] / total_sums[2]).item(),
            "n": int(total_sums[2].item())}


def train_step(p: Prepared, batch: dict, sync: bool, epoch: int, step: int) -> torch.Tensor:
    """Forward and backward on one batch, an optimizer step when `sync`; returns [loss*n, correct, n]."""
    acc = p.accelerator
    batch = {name: t.to(acc.device) for name, t in batch.items()}
    if p.cfg.train.frozen_dropout and "input_ids" in batch:  # live frozen dropout: the cache's draws (draws.py)
        batch["draw_seed"] = torch.tensor(draws.draw_seed(p.cfg.train.seed, epoch, int(batch["batch"])))
    n = batch["labels"].shape[0]
    # accumulate() counts batches itself (and sees no DataLoader end here): set its counter so that it syncs
    # exactly on `sync`, which also holds on an epoch's last batch and after a mid-epoch resume. Without
    # sync, DDP keeps this batch's gradients local and the prepared optimizer's step/zero_grad do nothing.
    acc.step = acc.gradient_accumulation_steps - 1 if sync else 0
    with acc.accumulate(p.net), acc.autocast():
        logits = p.net(batch)
        loss = batch_loss(p, logits.float(), batch)
        if not guards.finite_or_skip(p, loss, epoch, step):
            return torch.zeros(3, device=acc.device)
        acc.backward(loss)  # divided by --grad-accum
    if sync:
        if p.cfg.train.max_grad_norm:
            acc.clip_grad_norm_(p.trainable, p.cfg.train.max_grad_norm)
        p.optimizer.step()
        if p.scheduler is not None:
            p.scheduler.step()
        p.optimizer.zero_grad(set_to_none=True)
    correct = p.splits.task.hits(logits, batch["labels"])
    return torch.stack([loss.detach().float() * n, correct, torch.tensor(float(n), device=acc.device)])


def batch_loss(p: Prepared, logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """The training loss of one batch: the task's loss on its labels, or an `ExampleLoss` that also reads
    which examples these are (distillation: the teacher's outputs for them)."""
    if isinstance(p.loss_fn, ExampleLoss):
        return p.loss_fn(logits, batch["labels"], batch["index"])
    return p.loss_fn(logits, batch["labels"])


def save_mid_epoch(p: Prepared, state: TrainState, done: int, sums: torch.Tensor) -> None:
    state.step = done
    state.partial = p.accelerator.reduce(sums.clone(), reduction="sum").tolist()
    checkpoint.save(p, state)


def select(state: TrainState, row: dict, key: str) -> bool:
    """Early-stopping bookkeeping on the selection score (`state.best_score` holds it, whichever metric it is,
    negated for errors such as RMSE, so higher is always better); True when this epoch is the new best."""
    sign = tasks.sign(key.split("_", 1)[1])  # val_rmse -> rmse
    metric = row.get(key)
    if metric is not None and (state.best_epoch is None or sign * metric > state.best_score):
        state.best_score, state.best_epoch, state.stale = sign * metric, row["epoch"], 0
        return True
    state.stale += 1
    return False


def epoch_line(row: dict) -> str:
    parts = [f"Epoch {row['epoch']} summary - avg loss: {row['train_loss']:.4f}"]
    if row["train_acc"] is not None:
        parts.append(f"Train acc: {row['train_acc']:.4f}")
    if row["val_acc"] is not None:
        parts.append(f"Val acc: {row['val_acc']:.4f}")
    if row["test_acc"] is not None:
        parts.append(f"Test acc: {row['test_acc']:.4f}")
    for split in ("val", "test"):
        for metric in ("macro_recall", "macro_f1", "micro_f1", "samples_f1", "rmse", "pearson", "spearman"):
            if row.get(f"{split}_{metric}") is not None:
                parts.append(f"{split.capitalize()} {METRIC_NAMES[metric]}: {row[f'{split}_{metric}']:.4f}")
    return ", ".join(parts)

