"""`sentune train`: the reference recipe as an explicit Accelerate loop, readable top to bottom.

    data -> model (freeze the bottom K layers) -> feeds (dynamic padding, length buckets, optional
    frozen-layer cache) -> for each epoch: train, evaluate, keep the best weights, stop on patience
    -> reload the best weights -> evaluate on test once -> run directory.

Accelerate owns device placement and mixed precision, so multi-process training needs no rewrite:
each process trains on its shard of every batch list, counts are summed across processes, and only
the main process prints and writes files.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sentune import model as model_lib
from sentune import rundir
from sentune.config import Config
from sentune.prepare import Prepared, prepare


@dataclass
class TrainState:
    """Everything the loop needs to continue: saved with checkpoints and restored by --resume."""

    epoch: int = 0  # epochs completed
    best_acc: float = -1.0
    best_epoch: int | None = None
    stale: int = 0  # epochs since the last improvement
    history: list[dict] = field(default_factory=list)


def run(cfg: Config) -> Path:
    """Train according to `cfg`; returns the run directory."""
    return fit(cfg)[0].run_dir


def fit(cfg: Config) -> tuple[Prepared, TrainState]:
    """The loop itself; returns the prepared objects (model holding the selected weights) and final state."""
    p = prepare(cfg)
    state = TrainState()
    stopped_early = False
    for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
        row = train_and_evaluate(p, epoch)
        improved = select(state, row, cfg.train.select_on)
        state.epoch, state.history = epoch, [*state.history, row]
        p.log(epoch_line(row))
        if p.is_main:
            rundir.append_jsonl(p.run_dir / "metrics.jsonl", row)
        if improved:
            save_best(p)
        if p.tracker:
            p.tracker.log_epoch(row)
        if state.stale >= cfg.train.patience:
            stopped_early = epoch < cfg.train.epochs
            break
    finish(p, state, stopped_early)
    return p, state


def train_and_evaluate(p: Prepared, epoch: int) -> dict:
    t0 = time.perf_counter()
    tr = train_epoch(p, epoch)
    train_s = time.perf_counter() - t0
    val = evaluate(p, "validation") if p.feeds.get("validation") else None
    test = evaluate(p, "test") if p.feeds.get("test") and p.cfg.train.select_on == "test" else None
    return {
        "epoch": epoch,
        "train_loss": tr["loss"], "train_acc": tr["acc"],
        "val_loss": val and val["loss"], "val_acc": val and val["acc"],
        "test_loss": test and test["loss"], "test_acc": test and test["acc"],
        "epoch_seconds": time.perf_counter() - t0,
        "train_seconds": train_s,
        "train_samples_per_second": tr["n"] / train_s if train_s > 0 else None,
        "lr_head": p.optimizer.param_groups[-1]["lr"],
    }


def train_epoch(p: Prepared, epoch: int) -> dict:
    """One pass over the training feed; returns mean loss, accuracy and count over all processes."""
    acc, model, k = p.accelerator, p.model, p.cfg.model.freeze_layers
    model.train()
    model_lib.set_frozen_eval(acc.unwrap_model(model), k)  # frozen layers never use dropout
    feed = p.feeds["train"]
    sums = torch.zeros(3, device=acc.device)  # loss*n, correct, n
    bar = tqdm(total=len(feed) // acc.num_processes, desc="Training", disable=not (p.is_main and p.cfg.run.progress),
               dynamic_ncols=True)
    for step, batch in enumerate(feed.batches(epoch, rank=acc.process_index, world_size=acc.num_processes)):
        batch = {name: t.to(acc.device) for name, t in batch.items()}
        with acc.accumulate(model), acc.autocast():
            logits = model_lib.forward_logits(model, batch, k)
            loss = p.loss_fn(logits.float(), batch["labels"])
            if not check_finite(p, loss, epoch, step):
                continue
            acc.backward(loss)
            if acc.sync_gradients and p.cfg.train.max_grad_norm:
                acc.clip_grad_norm_(p.trainable, p.cfg.train.max_grad_norm)
            p.optimizer.step()
            if p.scheduler is not None and acc.sync_gradients:
                p.scheduler.step()
            p.optimizer.zero_grad(set_to_none=True)
        n = batch["labels"].numel()
        sums += torch.stack([loss.detach().float() * n, (logits.argmax(-1) == batch["labels"]).sum().float(),
                             torch.tensor(float(n), device=acc.device)])
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", train_acc=f"{(sums[1] / sums[2]).item():.4f}")
    bar.close()
    total = acc.reduce(sums, reduction="sum")
    return {"loss": (total[0] / total[2]).item(), "acc": (total[1] / total[2]).item(), "n": int(total[2].item())}


def check_finite(p: Prepared, loss: torch.Tensor, epoch: int, step: int) -> bool:
    """A non-finite loss stops the run (the last good `best/` stays) or, with --on-nan skip, skips the step."""
    if torch.isfinite(loss).item():
        return True
    if p.cfg.train.on_nan == "skip":
        p.log(f"warning: non-finite loss at epoch {epoch} step {step}; step skipped")
        p.optimizer.zero_grad(set_to_none=True)
        return False
    from sentune.errors import SentuneError

    raise SentuneError(f"non-finite loss at epoch {epoch} step {step}; the last good weights are in "
                       f"{p.run_dir / 'best'}. Try a lower learning rate, --precision bf16/fp32, or --on-nan skip")


@torch.no_grad()
def evaluate(p: Prepared, split: str, with_probs: bool = False) -> dict:
    """Loss and accuracy on one split, sharded across processes; probabilities in input order if asked."""
    acc, k = p.accelerator, p.cfg.model.freeze_layers
    model = acc.unwrap_model(p.model)  # no DDP hooks: ranks may run different numbers of eval batches
    model.eval()
    sums = torch.zeros(3, device=acc.device)
    probs, index = [], []
    for batch in p.feeds[split].batches(0, rank=acc.process_index, world_size=acc.num_processes):
        batch = {name: t.to(acc.device) for name, t in batch.items()}
        with acc.autocast():
            logits = model_lib.forward_logits(model, batch, k).float()
        n = batch["labels"].numel()
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
        sums += torch.stack([loss, (logits.argmax(-1) == batch["labels"]).sum().float(),
                             torch.tensor(float(n), device=acc.device)])
        if with_probs:
            probs.append(logits.softmax(-1).cpu())
            index.append(batch["index"].cpu())
    total = acc.reduce(sums, reduction="sum")
    out = {"loss": (total[0] / total[2]).item(), "acc": (total[1] / total[2]).item(), "n": int(total[2].item())}
    if with_probs:
        out["probs"] = gather_in_order(acc, probs, index)
    return out


def gather_in_order(acc, probs: list[torch.Tensor], index: list[torch.Tensor]) -> torch.Tensor:
    from accelerate.utils import gather_object

    pairs = gather_object([(torch.cat(index), torch.cat(probs))]) if probs else []
    idx = torch.cat([i for i, _ in pairs])
    out = torch.empty(len(idx), pairs[0][1].shape[1])
    out[idx] = torch.cat([pr for _, pr in pairs])
    return out


def select(state: TrainState, row: dict, select_on: str) -> bool:
    """Early-stopping bookkeeping on the selection split's accuracy; True when this epoch is the new best."""
    metric = row["val_acc"] if select_on == "validation" else row["test_acc"]
    if metric is not None and metric > state.best_acc:
        state.best_acc, state.best_epoch, state.stale = metric, row["epoch"], 0
        return True
    state.stale += 1
    return False


def save_best(p: Prepared) -> None:
    p.accelerator.wait_for_everyone()
    if p.is_main:
        model = p.accelerator.unwrap_model(p.model)
        rundir.atomic_dir(p.run_dir / "best", lambda d: (model.save_pretrained(d), p.tokenizer.save_pretrained(d)))
    p.accelerator.wait_for_everyone()


def reload_best(p: Prepared) -> None:
    from safetensors.torch import load_file

    state = load_file(str(p.run_dir / "best" / "model.safetensors"), device=str(p.accelerator.device))
    p.accelerator.unwrap_model(p.model).load_state_dict(state, strict=False)


def finish(p: Prepared, state: TrainState, stopped_early: bool) -> None:
    tag = "val" if p.cfg.train.select_on == "validation" else "test"
    if stopped_early:
        p.log("Early stopping.")
    p.log(f"Best {tag} acc: {state.best_acc:.4f} (epoch {state.best_epoch})")
    p.log("Applying optimal model weights.")
    p.accelerator.wait_for_everyone()
    reload_best(p)
    final = final_test_metrics(p)
    if final is not None:
        p.log(f"Test acc of the selected weights: {final['accuracy']:.4f} (n={final['n']})")
    if p.is_main:
        write_summary(p, state, final, stopped_early)
    p.log(f"Run directory: {p.run_dir}")


def final_test_metrics(p: Prepared) -> dict | None:
    if not p.feeds.get("test"):
        return None
    out = evaluate(p, "test", with_probs=True)
    if not p.is_main:
        return None
    from sentune.evaluate import compute_metrics

    labels = torch.tensor(p.splits.test["label"])
    metrics = compute_metrics(labels.numpy(), out["probs"].numpy(), p.splits.label_names)
    if p.is_main:
        rundir.atomic_write_json(p.run_dir / "final_metrics.json", metrics)
    return metrics


def write_summary(p: Prepared, state: TrainState, final: dict | None, stopped_early: bool) -> None:
    manifest = rundir.read_json(p.run_dir / "manifest.json")
    manifest.update(ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), best_epoch=state.best_epoch,
                    best_acc=state.best_acc, selected_on=p.cfg.train.select_on, stopped_early=stopped_early,
                    test_acc=final and final["accuracy"], state=asdict(state) | {"history": None})
    rundir.atomic_write_json(p.run_dir / "manifest.json", manifest)
    if p.tracker:
        p.tracker.close()
    try:
        from sentune.report import write_training_report

        write_training_report(p.run_dir)
    except ImportError:  # report module not available
        pass


def epoch_line(row: dict) -> str:
    parts = [f"Epoch {row['epoch']} summary - avg loss: {row['train_loss']:.4f}", f"Train acc: {row['train_acc']:.4f}"]
    if row["val_acc"] is not None:
        parts.append(f"Val acc: {row['val_acc']:.4f}")
    if row["test_acc"] is not None:
        parts.append(f"Test acc: {row['test_acc']:.4f}")
    return ", ".join(parts)

