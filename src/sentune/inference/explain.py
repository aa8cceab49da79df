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

A model trained with `--long-text windows` is explained through the pooled document output predict
computes (`inference/windowed.py`): Captum integrates over all of the text's windows at once (inputs
[1, W, T]; the embedding layer sees [W, T] rows, so one step is W rows), and a token that overlapping
windows share gets the sum of its scores in every window, so the word scores still sum to
f(text) - f(baseline).

Texts and steps are batched: texts of similar length are explained together (one forward gives f(text)
and f(baseline) for all of them, and the scores `predict` would give), and one forward/backward pass takes
as many interpolation steps of all of them as fit in `tokens_per_pass` tokens, so a tweet's 32 steps are one
pass and a 512-token review's a few. Weights need no gradient, so the backward pass computes only the
activations' gradients, and the last layer runs for the first token only, as in `predict`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
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
    windows: list[list[int]]  # ids the model reads: one sequence, or a windowed model's windows
    window_words: list[list[int | None]]  # per window, per token
    spans: list[tuple[int, int]]  # character span of every word in `text`

    @property
    def words(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]

    @property
    def ids(self) -> list[int]:
        return [i for window in self.windows for i in window]

    @property
    def token_word(self) -> list[int | None]:
        return [w for words in self.window_words for w in words]


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


def kept_positions(settings, n: int, budget: int) -> list[list[int]]:
    """Token positions of each sequence the model reads: its windows, or the one truncated sequence.

    The same rules as `Classifier.encode_windows` / `Classifier.encode` (a test checks the ids match)."""
    if settings.windows:
        from sentune.data.windows import window_spans

        return [list(range(a, b)) for a, b in window_spans(n, budget, settings.stride, settings.max_windows)]
    from sentune.data.text import truncate_ids

    return [truncate_ids(list(range(n)), budget, settings.truncation, settings.head_tokens)]


def encode_for_explain(clf, texts: Sequence[str]) -> list[Encoded]:
    """The classifier's own ids (same normalization, truncation or windows) plus each token's word."""
    from sentune.data.text import encodable, normalize_tweet, tokenize_content

    s = clf.settings
    texts = [encodable(normalize_tweet(t) if s.normalize_tweets else t) for t in texts]
    content = tokenize_content(clf.tokenizer, list(texts), clf.max_length, offsets=True)
    prefix: list[int | None] = [None] * len(content.prefix)  # special tokens belong to no word
    suffix: list[int | None] = [None] * len(content.suffix)
    out = []
    for text, ids, offsets in zip(texts, content.ids, content.offsets or [], strict=True):
        spans = [m.span() for m in WORD.finditer(text)]
        windows, words = [], []
        for kept in kept_positions(s, len(ids), content.budget):
            windows.append(content.wrap([ids[k] for k in kept]))
            words.append(prefix + word_of_tokens([offsets[k] for k in kept], spans) + suffix)
        out.append(Encoded(text, windows, words, spans))
    return out


def merge_to_words(token_scores: np.ndarray, enc: Encoded) -> list[float | None]:
    """Sum of token scores per word (over every window that holds it); None for a word with no token in
    the model's input (truncated). `token_scores` follows `enc.token_word`: the windows one after another."""
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

    def __init__(self, model, pad_id: int, temperature: float | None, pool: str | None = None):
        import copy
        import threading

        import torch
        from captum.attr import LayerIntegratedGradients

        from sentune import model as model_lib

        self.torch = torch
        # A private copy: Captum hooks the embedding layer while it attributes, which would corrupt a
        # predict running on the same module at that moment (serve runs both); the lock keeps two
        # explanations from sharing the hook. No weight needs a gradient: only the embeddings' do, so the
        # backward pass skips every weight-gradient product (a third of a training step's work).
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.lock = threading.Lock()
        self.device = next(model.parameters()).device
        self.pad_id = pad_id
        self.temperature = temperature
        self.windowed = None
        if pool is not None:  # a windowed model: explain the pooled output predict computes
            from sentune.inference.windowed import WindowedLogits

            self.windowed = WindowedLogits(self.model, pool).eval()
        # BERT/RoBERTa family: the last layer for the first token only, as predict computes it
        supported = getattr(self.model.config, "model_type", None) in model_lib.SUPPORTED_TYPES
        self.forward_logits = model_lib.forward_logits if supported else None
        self.ig = LayerIntegratedGradients(self.forward, self.model.get_input_embeddings())

    def forward(self, input_ids, attention_mask, window_mask=None):
        if window_mask is not None:  # [docs, windows, tokens]
            logits = self.windowed(input_ids, attention_mask, window_mask)
        elif self.forward_logits is not None:
            logits = self.forward_logits(self.model, {"input_ids": input_ids, "attention_mask": attention_mask}, 0)
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits / self.temperature if self.temperature else logits

    def inputs(self, encs: Sequence[Encoded]) -> tuple:
        """(ids, baseline, forward args) for several texts: [B, T] for single sequences, [B, W, T] plus the
        window mask for windows (padded to the longest; padding is the same in text and baseline, so it
        gets no score).

        The baseline swaps every content token of every window for the pad token; specials, padding and
        the masks stay."""
        torch = self.torch
        from sentune.data.windows import pad_windows

        arrays = pad_windows([enc.windows for enc in encs], self.pad_id)
        ids, mask, window_mask = (torch.from_numpy(a).to(self.device) for a in arrays)
        content = torch.zeros_like(ids, dtype=torch.bool)
        for b, enc in enumerate(encs):
            for m, words in enumerate(enc.window_words):
                content[b, m, : len(words)] = torch.tensor([w is not None for w in words], dtype=torch.bool)
        baseline = torch.where(content, torch.full_like(ids, self.pad_id), ids)
        if self.windowed is None:  # the plain model reads the one sequence
            return ids[:, 0], baseline[:, 0], (mask[:, 0],)
        return ids, baseline, (mask, window_mask)

    def attribute(self, encs: Sequence[Encoded], pick: Callable[[int, np.ndarray], list[int]], steps: int,
                  tokens_per_pass: int = TOKENS_PER_PASS) -> list[list[dict]]:
        """Per text, per explained output: token scores, f(text), f(baseline) and the convergence delta.

        One forward computes f(text) and f(baseline) for every text (`pick(i, f(text_i))` then chooses the
        outputs to explain); one integrated-gradients call then covers every (text, output) pair, steps
        batched `tokens_per_pass` tokens a pass."""
        torch = self.torch
        ids, baseline, args = self.inputs(encs)
        with self.lock:
            with torch.no_grad():
                ends = self.forward(torch.cat([ids, baseline]), *(torch.cat([a, a]) for a in args)).float()
            ends = ends.reshape(2, len(encs), -1).cpu().numpy()
            pairs = [(i, k) for i in range(len(encs)) for k in pick(i, ends[0, i])]
            rows = torch.tensor([i for i, _ in pairs], device=ids.device)
            tokens = self.integrate(ids[rows], baseline[rows], tuple(a[rows] for a in args), [k for _, k in pairs],
                                    steps, tokens_per_pass)
        out: list[list[dict]] = [[] for _ in encs]
        for (i, k), scores in zip(pairs, tokens, strict=True):
            value, base = float(ends[0, i, k]), float(ends[1, i, k])
            kept = self.unpad(scores, encs[i])
            out[i].append({"output": k, "tokens": kept, "value": value, "baseline_value": base,
                           "delta": float(kept.sum()) - (value - base)})
        return out

    def integrate(self, ids, baseline, args: tuple, targets: list[int], steps: int,
                  tokens_per_pass: int) -> np.ndarray:
        """IG of each row toward its target output: per-token scores [rows, W, T].

        Captum batches rows of the embedding layer's output, which for [R, W, T] inputs are the R x W
        windows: `internal_batch_size` counts those, so one step is R x W of them. Its own convergence
        delta assumes input and layer rows match, so the delta is computed from the end points instead
        (same formula)."""
        windows = ids.shape[1] if ids.dim() == 3 else 1
        per_pass = max(1, min(steps, tokens_per_pass // ids.numel()))
        attr = self.ig.attribute(ids, baselines=baseline, target=targets, additional_forward_args=args,
                                 n_steps=steps, internal_batch_size=per_pass * len(ids) * windows)
        return attr.sum(-1).reshape(len(ids), windows, -1).detach().float().cpu().numpy()

    @staticmethod
    def unpad(tokens: np.ndarray, enc: Encoded) -> np.ndarray:
        """Scores of the real tokens, the windows one after another (as `enc.token_word`)."""
        return np.concatenate([tokens[m, : len(window)] for m, window in enumerate(enc.windows)])


def torch_model_for(clf):
    """The classifier's torch model, or one loaded from its folder when it serves an ONNX export."""
    import torch

    from sentune.inference.runners import TorchRunner

    model = getattr(clf.runner, "model", None)
    if model is not None and next(model.parameters()).dtype == torch.float32:
        return model  # shared with predict; a bf16 one is not converted under its feet

    try:
        s = clf.settings  # a windowed model's attention pool is loaded with it
        return TorchRunner(clf.path, clf.device, "fp32", pool=s.pool if s.windows else None).model
    except ModelError:
        raise ModelError(f"explain needs PyTorch weights (integrated gradients take gradients); {clf.path} "
                         "has only an ONNX export: explain the folder it was exported from") from None


def explain(clf, texts: Sequence[str], target: str | None = None, steps: int = DEFAULT_STEPS,
            tokens_per_pass: int = TOKENS_PER_PASS) -> list[dict]:
    """One record per text: the explained label, words, a signed score per word, the convergence delta."""
    from sentune.inference.runners import check_texts

    check_texts(texts)
    if steps < 1:
        raise ConfigError("--steps must be >= 1")
    if target is not None and target not in clf.labels:
        raise ConfigError(f"--target {target!r} is not a label of this model; its labels: {', '.join(clf.labels)}")
    from sentune import tasks

    explainer = clf.explainer()
    task = clf.task
    encs = encode_for_explain(clf, texts)
    thresholds = clf.thresholds if task == "multi_label" else None
    records: list[dict] = [{} for _ in encs]
    for chunk in chunks(encs, tokens_per_pass):
        scores: dict[int, np.ndarray] = {}  # per text, as predict computes them

        def pick(j: int, values: np.ndarray, chunk=chunk, scores=scores) -> list[int]:
            # values: the explained logits f(text), temperature-scaled already
            scores[chunk[j]] = tasks.to_scores(task, values[None], None)[0]
            return explained_outputs(task, scores[chunk[j]], clf.labels, target, thresholds)

        parts = explainer.attribute([encs[i] for i in chunk], pick, steps, tokens_per_pass)
        for i, text_parts in zip(chunk, parts, strict=True):
            records[i] = to_record(encs[i], text_parts, clf.labels, task, scores[i])
    return records


def chunks(encs: Sequence[Encoded], tokens_per_pass: int) -> list[list[int]]:
    """Texts explained together: similar lengths, one step of all of them within `tokens_per_pass` tokens."""
    from sentune.data.padding import bucket_batches

    lengths = [len(enc.windows) * max(map(len, enc.windows)) for enc in encs]
    plan = bucket_batches(lengths, max_rows=len(encs) or 1, max_tokens=tokens_per_pass, multiple=1,
                          max_length=max(lengths, default=1), same_bucket=False)
    return [rows for rows, _ in plan]


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
