"""`sentune audit`: out-of-fold scores for every training example from k trainings over ONE frozen-layer cache.

    data (no carving: every training row is audited) -> prepare (model, frozen prefix, cache of every split,
    built once) -> for each of k folds: the trainable layers back to their starting weights, trained on the
    other folds (epochs picked on a slice of them, as `train` picks on validation), then scored on the fold
    -> features (the cached layer-K states, mean-pooled) -> findings (evaluation/audit_findings.py)
    -> audit.md, issues.jsonl, issues.csv (evaluation/audit_report.py).

The training steps are `train`'s own (loop.train_epoch / scored_evaluate / select); only the data each fold
sees differs, through subset feeds over the same cached states, so k folds cost k trainings of the top layers
plus one pass of the frozen prefix.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed

from sentune import model as model_lib
from sentune import rundir, tasks
from sentune.config import Config
from sentune.data import labels as label_lib
from sentune.data import splits as data
from sentune.errors import ConfigError
from sentune.evaluation import audit_findings as found
from sentune.evaluation.audit_report import AuditReport, write_report
from sentune.evaluation.metrics import selection_key
from sentune.training import loop, tracking
from sentune.training.checkpoint import TrainState
from sentune.training.eval_pass import evaluate, scored_evaluate
from sentune.training.prepare import Prepared, Shared, label_counts, make_loss, make_scheduler, prepare


def audit(cfg: Config, folds: int = 5) -> AuditReport:
    """Audit the training data `cfg` names; writes the report into cfg.run.output_dir (default
    runs/audit-<name>-<time>) and returns what it found."""
    check(cfg, folds)
    splits = data.load_splits(cfg.data, cfg.train.seed, "none")
    if cfg.run.output_dir is None:
        cfg.run.output_dir = str(rundir.default_dir("audit-" + (cfg.run.preset or Path(cfg.model.model).name)))
    p = prepare(cfg, Shared(splits=splits, checkpoints=False))
    try:
        if p.accelerator.num_processes > 1:
            raise ConfigError("sentune audit runs in one process; start it without torchrun / accelerate launch")
        scores = out_of_fold(p, folds)
        report = findings(p, scores)
        report.folds = folds
    finally:
        tracking.end(p.accelerator)
    write_report(p.run_dir, report)
    return report


def check(cfg: Config, folds: int) -> None:
    if folds < 2:
        raise ConfigError("--folds must be at least 2")
    if cfg.data.long_text == "windows":
        raise ConfigError("sentune audit reads one window per text; use --long-text truncate")
    cfg.train.select_on = "validation"  # each fold picks its epoch on a slice of its own training rows
    cfg.train.save_every_steps = None  # folds are not resumable runs


def out_of_fold(p: Prepared, folds: int) -> np.ndarray:
    """Scores [n, L] for every training row from the fold that held it out."""
    labels = list(p.splits.train["label"])
    full, base, feeds = p.feeds["train"], p.splits, dict(p.feeds)
    start = trainable_state(p.model)
    scores = None
    p.stop = types.SimpleNamespace(requested=False)  # Ctrl-C simply ends an audit: nothing to resume
    for fold, (fit, held) in enumerate(label_lib.folds(labels, folds, p.cfg.train.seed), start=1):
        p.log(f"Fold {fold} of {folds}: training on {len(fit):,} rows, scoring {len(held):,}")
        load_trainable(p.model, start)
        set_seed(p.cfg.train.seed)  # every fold starts as the first: same weights, moments, dropout draws
        out = train_fold(p, base, full, fit, held)
        scores = np.zeros((len(labels), out.shape[1]), dtype=np.float32) if scores is None else scores
        scores[held] = out
    p.splits, p.feeds = base, feeds
    assert scores is not None
    return scores


def train_fold(p: Prepared, base, full, fit: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Train on `fit` (epochs picked on a stratified slice of it), return the scores of `held`."""
    cfg = p.cfg
    inner, keep = label_lib.pick([base.train["label"][int(i)] for i in fit],
                                 max(1, round(len(fit) * cfg.data.validation_split)), cfg.train.seed, held_out=True)
    tune, pick_on = fit[keep], fit[inner]
    p.splits = dataclasses.replace(base, train=base.train.select(tune), validation=base.train.select(pick_on))
    eval_bs = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
    p.feeds = {**p.feeds, "train": full.subset(tune, cfg.train.batch_size, True),
               "validation": full.subset(pick_on, eval_bs, False), "held": full.subset(held, eval_bs, False)}
    p.loss_fn = make_loss(cfg, p.splits).to(p.accelerator.device)  # class weights follow the fold's rows
    restart_optimizer(p)
    load_trainable(p.model, best_epochs(p))
    return evaluate(p, "held", with_probs=True)["probs"].numpy()


def restart_optimizer(p: Prepared) -> None:
    """The run's own (prepared) optimizer with no moments left from the previous fold, and a new schedule."""
    p.optimizer.state.clear()
    p.optimizer.zero_grad(set_to_none=True)
    p.scheduler = make_scheduler(p.cfg, p.optimizer, len(p.feeds["train"]))


def best_epochs(p: Prepared) -> dict[str, torch.Tensor]:
    """train's epochs, selection and patience on the fold's feeds; the trainable weights of the best epoch."""
    cfg, state, best = p.cfg, TrainState(), trainable_state(p.model)
    key = selection_key("validation", cfg.train.select_metric)
    for epoch in range(1, cfg.train.epochs + 1):
        if state.stale >= cfg.train.patience:
            break
        loop.train_epoch(p, state, epoch)
        val = scored_evaluate(p, "validation")
        row = {"epoch": epoch, "val_acc": val["acc"], key: val.get(cfg.train.select_metric, val["acc"])}
        if loop.select(state, row, key):
            best = trainable_state(p.model)
    return best


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.named_parameters() if t.requires_grad}


@torch.no_grad()
def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, t in model.named_parameters():
        if name in state:
            t.copy_(state[name])


@torch.no_grad()
def features(p: Prepared, split: str) -> np.ndarray:
    """Mean-pooled layer-K states per example: straight from the cache, or the frozen prefix run once."""
    model: Any = p.model
    k, feed = p.cfg.model.freeze_layers, p.feeds[split]
    model.eval()
    out = np.zeros((feed.num_examples(), model.config.hidden_size), dtype=np.float32)
    for batch in feed.batches(0):
        mask = batch["attention_mask"].to(p.accelerator.device)
        hidden = batch.get("hidden")
        if hidden is None:
            hidden = model_lib.forward_prefix(model, k, batch["input_ids"].to(p.accelerator.device), mask)
        weights = mask[..., None].float()
        pooled = (hidden.to(p.accelerator.device).float() * weights).sum(1) / weights.sum(1).clamp(min=1)
        out[batch["index"].numpy()] = pooled.cpu().numpy()
    return out


def audited(p: Prepared, split: str) -> found.Audited:
    part, task = getattr(p.splits, split), tasks.get_task(p.splits.task)
    labels = list(part["label"])
    shown = [task.label_text(v, p.splits.label_names, p.splits.label_scale) for v in labels]
    return found.Audited(list(part["text"]), labels, shown, p.splits.origins[split], features(p, split))


def findings(p: Prepared, scores: np.ndarray) -> AuditReport:
    task, names, scale = p.splits.task, p.splits.label_names, p.splits.label_scale
    train = audited(p, "train")
    others = [audited(p, s) for s in ("validation", "test") if getattr(p.splits, s) is not None]
    items, note = found.label_findings(task, train, scores, names, scale)
    items += found.duplicate_findings(train, others) + found.outlier_findings(task, train)
    balance = {s: label_counts(p.splits, s) for s in ("train", "validation", "test") if getattr(p.splits, s)}
    return AuditReport(task=task, label_names=names, findings=found.rank_findings(items), balance=balance,
                       rows={s: len(getattr(p.splits, s)) for s in balance}, scores=scores,
                       given=train.shown, sources={s: v["source"] for s, v in p.splits.sources.items()},
                       notes=[note] if note else [])
