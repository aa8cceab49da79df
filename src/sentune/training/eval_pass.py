"""Training's evaluation pass: loss, running accuracy and (when asked) every score of one split, sharded
across processes; the same pass serves the per-epoch selection and the finish (thresholds, final test)."""

from __future__ import annotations

import torch

from sentune import model as model_lib
from sentune.evaluation.metrics import selection_score
from sentune.training.prepare import Prepared

METRIC_NAMES = {"accuracy": "acc", "macro_recall": "macro-recall", "macro_f1": "macro-F1", "micro_f1": "micro-F1",
                "samples_f1": "samples-F1", "rmse": "RMSE", "pearson": "Pearson", "spearman": "Spearman"}


def scored_evaluate(p: Prepared, split: str) -> dict:
    """evaluate() plus the --select-metric score when it is not accuracy (that one needs every prediction)."""
    metric, task = p.cfg.train.select_metric, p.splits.task
    if metric == "accuracy":
        return evaluate(p, split)
    out = evaluate(p, split, with_probs=True)  # gathered on every process, so all agree on the score
    labels, scores = list(getattr(p.splits, split)["label"]), out.pop("probs").numpy()
    out[metric] = selection_score(task, metric, labels, scores, p.splits.label_scale)
    if not task.has_accuracy:
        out["acc"] = None
    return out


@torch.no_grad()
def evaluate(p: Prepared, split: str, with_probs: bool = False) -> dict:
    """Loss and accuracy on one split, sharded across processes; scores in input order if asked."""
    acc, k, task = p.accelerator, p.cfg.model.freeze_layers, p.splits.task
    model = acc.unwrap_model(p.model)  # no DDP hooks: ranks may run different numbers of eval batches
    model.eval()
    sums = torch.zeros(3, device=acc.device)
    probs, index = [], []
    for batch in p.feeds[split].batches(0, rank=acc.process_index, world_size=acc.num_processes):
        batch = {name: t.to(acc.device) for name, t in batch.items()}
        with acc.autocast():
            logits = model_lib.forward_logits(model, batch, k).float()
        n = batch["labels"].shape[0]
        loss = task.eval_loss_sum(logits, batch["labels"])
        sums += torch.stack([loss, task.hits(logits, batch["labels"]), torch.tensor(float(n), device=acc.device)])
        if with_probs:
            probs.append(task.torch_scores(logits).cpu())
            index.append(batch["index"].cpu())
    total = acc.reduce(sums, reduction="sum")
    out = {"loss": (total[0] / total[2]).item(), "acc": (total[1] / total[2]).item(), "n": int(total[2].item())}
    if with_probs:
        out["probs"] = gather_in_order(acc, probs, index, model.config.num_labels)
    return out


def gather_in_order(acc, probs: list[torch.Tensor], index: list[torch.Tensor], num_labels: int) -> torch.Tensor:
    """Every process's probabilities, rows put back in example order.

    A process may have had no batch at all (a split with fewer batches than processes): it still joins the
    gather with empty tensors, since a process that skips a collective leaves the others waiting for ever.
    """
    from accelerate.utils import gather_object

    mine = (torch.cat(index) if index else torch.empty(0, dtype=torch.long),
            torch.cat(probs) if probs else torch.empty(0, num_labels))
    pairs = gather_object([mine]) if acc.num_processes > 1 else [mine]
    idx = torch.cat([i for i, _ in pairs])
    out = torch.empty(len(idx), num_labels)
    out[idx] = torch.cat([pr for _, pr in pairs])
    return out
