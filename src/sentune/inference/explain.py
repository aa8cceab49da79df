"""Word attributions: integrated gradients (Captum's `LayerIntegratedGradients`) on the word embeddings.

For one text and one explained output (a label's logit, or the regression value), IG integrates the
gradient along the straight path from a baseline to the text in embedding space. The baseline is the
same sequence with every content token replaced by the pad token (special tokens and the attention
mask kept), so special tokens get exactly zero and the word scores sum to f(text) - f(baseline): the
completeness property. Captum reports how far the numeric integral is from it (the convergence delta).

Inputs are prepared exactly as for `predict` (tweet normalization, the same head/tail truncation, the
calibration temperature); sub-word tokens are merged into the whitespace-separated words of the
(normalized) text, so a word carries the sum of its tokens' attributions. A word that truncation cut
out has score None: the model never saw it.

Steps are batched: one forward/backward pass takes as many interpolation steps as fit in
`tokens_per_pass` tokens, so a tweet's 32 steps are one pass and a 512-token review's a few.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sentune.errors import ConfigError, ModelError

DEFAULT_STEPS = 32  # measured: see bench/explain_speed.py and the README's "Explanations" section
TOKENS_PER_PASS = 4096
WORD = re.compile(r"\S+")


@dataclass
class Encoded:
    """One text as the model sees it, with the word each token belongs to (None for special tokens)."""

    text: str  # after tweet normalization
    ids: list[int]
    token_word: list[int | None]
    spans: list[tuple[int, int]]  # character span of every word in `text`

    @property
    def words(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]


def word_of_tokens(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int | None]:
    """The word each token belongs to: the first word not ending before the token starts.

    A byte-level BPE token may start on the space before its word ("Ġgreat"), or be only spaces (a double
    space): it goes to the word that follows, as BPE itself attaches the space to it; trailing spaces
    go to the last word.
    """
    if not spans:
        return [None] * len(offsets)
    out: list[int | None] = []
    w = 0
    for start, _end in offsets:
        while w < len(spans) - 1 and spans[w][1] <= start:
            w += 1
        out.append(w)
    return out


def encode_for_explain(clf, texts: Sequence[str]) -> list[Encoded]:
    """The classifier's own ids (same normalization and truncation) plus each token's word."""
    from sentune.data.text import _special_template, encodable, normalize_tweet, truncate_ids

    s, tok = clf.settings, clf.tokenizer
    texts = [encodable(normalize_tweet(t) if s.normalize_tweets else t) for t in texts]
    prefix, suffix = _special_template(tok)
    budget = s.max_length - len(prefix) - len(suffix)
    enc = tok(list(texts), add_special_tokens=False, truncation=False, verbose=False, return_offsets_mapping=True)
    out = []
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
        kept = truncate_ids(list(range(len(ids))), budget, s.truncation, s.head_tokens)
        spans = [m.span() for m in WORD.finditer(text)]
        words = word_of_tokens([offsets[k] for k in kept], spans)
        out.append(Encoded(text, prefix + [ids[k] for k in kept] + suffix,
                           [None] * len(prefix) + words + [None] * len(suffix), spans))
    return out


def merge_to_words(token_scores: np.ndarray, enc: Encoded) -> list[float | None]:
    """Sum of token scores per word; None for a word with no token in the model's input (truncated)."""
    scores: list[float | None] = [None] * len(enc.spans)
    for score, w in zip(token_scores.tolist(), enc.token_word, strict=True):
        if w is not None:
            scores[w] = (scores[w] or 0.0) + score
    return scores


def explained_outputs(task: str, scores: np.ndarray, labels: list[str], target: str | None,
                      thresholds: np.ndarray | None = None) -> list[int]:
    """Which outputs to explain for one text, from its predict scores (`tasks.to_scores`).

    single_label: the predicted label (or `target`); multi_label: every label at or above its decision
    threshold, best first (the most probable when none is), or `target`; regression: the one value.
    """
    if task == "regression":
        return [0]
    if target is not None:
        return [labels.index(target)]
    if task == "multi_label":
        cut = thresholds if thresholds is not None else np.full(len(scores), 0.5)
        chosen = [int(i) for i in np.argsort(-scores) if scores[i] >= cut[i]]
        return chosen or [int(scores.argmax())]
    return [int(scores.argmax())]


class Explainer:
    """Integrated gradients for a loaded torch sequence-classification model (fp32: gradients need it)."""

    def __init__(self, model, pad_id: int, temperature: float | None):
        import copy
        import threading

        import torch
        from captum.attr import LayerIntegratedGradients

        self.torch = torch
        # A private copy: Captum hooks the embedding layer while it attributes, which would corrupt a
        # predict running on the same module at that moment (serve runs both); the lock keeps two
        # explanations from sharing the hook.
        self.model = copy.deepcopy(model).float().eval()
        self.lock = threading.Lock()
        self.device = next(model.parameters()).device
        self.pad_id = pad_id
        self.temperature = temperature
        self.ig = LayerIntegratedGradients(self.forward, self.model.get_input_embeddings())

    def forward(self, input_ids, attention_mask):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits / self.temperature if self.temperature else logits

    def attribute(self, enc: Encoded, outputs: list[int], steps: int,
                  tokens_per_pass: int = TOKENS_PER_PASS) -> list[dict]:
        """Per explained output: token scores, f(text), f(baseline) and Captum's convergence delta."""
        torch = self.torch
        ids = torch.tensor([enc.ids], device=self.device)
        content = torch.tensor([[w is not None for w in enc.token_word]], device=self.device)
        baseline = torch.where(content, torch.full_like(ids, self.pad_id), ids)
        mask = torch.ones_like(ids)
        per_pass = max(1, min(steps, tokens_per_pass // len(enc.ids)))
        out = []
        with self.lock:
            with torch.no_grad():
                ends = self.forward(torch.cat([ids, baseline]), torch.cat([mask, mask])).float()
            for k in outputs:
                out.append(self.one_output(ids, baseline, mask, k, steps, per_pass))
        for part in out:
            part.update(value=float(ends[0, part["output"]]), baseline_value=float(ends[1, part["output"]]))
        return out

    def one_output(self, ids, baseline, mask, k: int, steps: int, per_pass: int) -> dict:
        """IG toward output k, `per_pass` interpolation steps per forward/backward pass."""
        attr, delta = self.ig.attribute(ids, baselines=baseline, target=k, additional_forward_args=(mask,),
                                        n_steps=steps, internal_batch_size=per_pass, return_convergence_delta=True)
        return {"output": k, "tokens": attr.sum(-1)[0].detach().float().cpu().numpy(), "delta": float(delta[0])}


def torch_model_for(clf):
    """The classifier's torch model, or one loaded from its folder when it serves an ONNX export."""
    import torch

    from sentune.inference.classifier import TorchRunner

    model = getattr(clf.runner, "model", None)
    if model is not None and next(model.parameters()).dtype == torch.float32:
        return model  # shared with predict; a bf16 one is not converted under its feet

    try:
        return TorchRunner(clf.path, clf.device, "fp32").model
    except ModelError:
        raise ModelError(f"explain needs PyTorch weights (integrated gradients take gradients); {clf.path} "
                         "has only an ONNX export: explain the folder it was exported from") from None


def explain(clf, texts: Sequence[str], target: str | None = None, steps: int = DEFAULT_STEPS,
            tokens_per_pass: int = TOKENS_PER_PASS) -> list[dict]:
    """One record per text: the explained label, words, a signed score per word, the convergence delta."""
    from sentune.inference.classifier import check_texts

    check_texts(texts)
    if getattr(clf.settings, "long_text", "truncate") == "windows":
        # the seam for issue 15's windowed models: their logits pool several windows, which the attribution
        # would have to integrate through together; explaining one window would misstate the model
        raise ModelError(f"{clf.path or clf.name} reads long texts in windows (--long-text windows); explain "
                         "does not follow windows yet, only truncated models (--long-text truncate)")
    if steps < 1:
        raise ConfigError("--steps must be >= 1")
    if target is not None and target not in clf.labels:
        raise ConfigError(f"--target {target!r} is not a label of this model; its labels: {', '.join(clf.labels)}")
    explainer = clf.explainer()
    task = clf.task
    from sentune import tasks

    logits = clf.logits(texts) if texts else np.zeros((0, len(clf.labels)), dtype=np.float32)
    scores = tasks.to_scores(task, logits, clf.settings.temperature)
    thresholds = clf.thresholds if task == "multi_label" else None
    records = []
    for i, enc in enumerate(encode_for_explain(clf, texts)):
        outputs = explained_outputs(task, scores[i], clf.labels, target, thresholds)
        parts = explainer.attribute(enc, outputs, steps, tokens_per_pass)
        records.append(to_record(enc, parts, clf.labels, task, scores[i]))
    return records


def to_record(enc: Encoded, parts: list[dict], labels: list[str], task: str, scores: np.ndarray) -> dict:
    """`score` is the label's probability (softmax, or its own sigmoid for multi-label); none for regression."""
    explained = []
    for part in parts:
        item = {"label": labels[part["output"]] if task != "regression" else "value",
                "scores": merge_to_words(part["tokens"], enc), "value": part["value"],
                "baseline_value": part["baseline_value"], "delta": part["delta"]}
        if task != "regression":
            item["score"] = float(scores[part["output"]])
        explained.append(item)
    record = {"words": enc.words, **explained[0]}
    if task == "multi_label":
        record["explanations"] = explained
    return record
