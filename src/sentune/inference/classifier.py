"""`Classifier`: one inference path (length-sorted, bucketed, token-budgeted batches) for predict, serve, export
and evaluate. The torch backend computes the last layer for the first token only, as training does.

Works on any `save_pretrained` sequence-classification folder and on an ONNX export (`sentune export`).
When `config.json` carries the `sentune` dict written by training (`sentune.settings`: max_length, truncation,
head_tokens, normalize_tweets, temperature, ...), inputs are prepared exactly as in training and logits are
calibrated; the logits themselves come from a runner (`inference/runners.py`: torch or ONNX).
A model trained with `--long-text windows` (long_text, stride, max_windows, pool in that dict) reads every
text in windows and pools them as training did (`inference/windowed.py`); each prediction says how many
windows its text used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sentune import tasks
from sentune.data.padding import bucket_batches, pad_rows
from sentune.errors import ModelError
from sentune.inference.runners import check_texts, inference_precision, load_runner, pick_backend, pick_device
from sentune.settings import ModelSettings, of_config

# Padded tokens per model call: enough rows to fill the cores, few enough that a call's activations stay in
# cache (bench/serve_profile.py measures the time per token against this budget on the machine at hand).
MAX_BATCH_TOKENS = 4096
# Batches of several rows are padded to a multiple of this: a bounded set of shapes (data/padding.py).
PAD_MULTIPLE = 32


def softmax(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    logits = logits.astype(np.float64)
    if temperature:
        logits = logits / temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


class Classifier:
    """A text classifier ready to predict: `Classifier.load(path).predict(["great film"])`."""

    def __init__(self, runner, tokenizer, settings: ModelSettings, *, labels: list[str], task: tasks.Task, backend: str,
                 device: str, name: str, path: str | None = None, precision: str = "fp32",
                 max_batch_tokens: int = MAX_BATCH_TOKENS):
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be >= 1")
        self.max_batch_tokens = max_batch_tokens
        self.runner = runner
        self.labels = list(labels)
        self.task = task  # from config.json's problem_type
        self.path = path
        self._explainer = None
        self.tokenizer = tokenizer
        self.settings = settings
        self.backend = backend
        self.device = device
        self.name = name
        self.precision = precision

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", device: str = "auto", precision: str = "auto",
             bf16: bool = False, max_batch_tokens: int = MAX_BATCH_TOKENS) -> Classifier:
        """Load a save_pretrained folder (backend torch) or a `sentune export` folder (backend onnx).

        backend "auto" picks torch when the folder has PyTorch weights, else onnx. precision (torch backend)
        resolves as in training: auto is bf16 on CUDA with bf16 and on CPUs with native bf16, fp16 on older
        GPUs, else fp32; it is a property of this machine, so nothing stores it. `bf16=True` = "bf16".
        max_batch_tokens: padded tokens per model call (batches of several texts; see `batch_plan`).
        """
        from transformers import AutoConfig, AutoTokenizer

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ModelError(f"{path} is not a model folder (no config.json); pass a run's best/ folder "
                             "or any save_pretrained classification model")
        backend, device = pick_backend(folder, backend), pick_device(device)
        try:
            config = AutoConfig.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load the config or tokenizer from {path}: {e}") from None
        settings = of_config(config).resolve(str(folder), config, tokenizer)
        precision = inference_precision("bf16" if bf16 else precision, backend, device)
        runner = load_runner(folder, backend, device, precision, settings.pool if settings.windows else None)
        labels = [config.id2label[i] for i in range(config.num_labels)]
        return cls(runner, tokenizer, settings, labels=labels, task=tasks.task_of(config), backend=backend,
                   device=device, name=model_name(folder, config), path=str(folder), precision=precision,
                   max_batch_tokens=max_batch_tokens)

    @property
    def thresholds(self) -> np.ndarray:
        """Per-label decision thresholds (multi-label), in `labels` order; 0.5 where none are stored."""
        return tasks.threshold_vector(self.settings.thresholds, self.labels)

    @property
    def max_length(self) -> int:
        assert self.settings.max_length is not None  # `load` resolves it
        return self.settings.max_length

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids exactly as in training: tweet normalization, then head/tail truncation."""
        from sentune.data.text import encode_texts

        s = self.settings
        return encode_texts(self.tokenizer, self.normalized(texts), self.max_length, s.truncation, s.head_tokens)

    def encode_windows(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """Per text its windows, as in training with `--long-text windows` (one window for a short text)."""
        from sentune.data.windows import encode_windows

        s = self.settings
        return encode_windows(self.tokenizer, self.normalized(texts), self.max_length, s.stride, s.max_windows)

    def normalized(self, texts: Sequence[str]) -> list[str]:
        """The texts as the model was trained on them (tweet normalization when its settings say so)."""
        from sentune.data.text import normalize_tweet

        return [normalize_tweet(t) for t in texts] if self.settings.normalize_tweets else list(texts)

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Raw logits (n, num_labels) in input order; batches are sorted by length to waste no padding."""
        return self.logits_and_windows(texts, batch_size)[0]

    def logits_and_windows(self, texts: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, list[int]]:
        """Logits and, per text, the windows it was read in (1 for a model that truncates).

        A windowed model batches windows across texts: `batch_size` then counts windows, not texts.
        """
        return self.prepared_logits(self.prepare(texts), batch_size)

    def prepare(self, texts: Sequence[str]) -> list:
        """Per text what the model reads: its token ids, or its windows (a windowed model). No model call,
        so a server can tokenize on another thread while the model runs (serve/batcher.py)."""
        check_texts(texts)
        return self.encode_windows(texts) if self.settings.windows else self.encode(texts)

    def prepared_logits(self, prepared: list, batch_size: int = 32) -> tuple[np.ndarray, list[int]]:
        """`logits_and_windows` for the output of `prepare`."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.settings.windows:
            return self._window_logits(prepared, batch_size)
        return self.encoded_logits(prepared, batch_size), [1] * len(prepared)

    def _window_logits(self, windows: list[list[list[int]]], batch_size: int) -> tuple[np.ndarray, list[int]]:
        from sentune.data.windows import pad_windows, window_batches

        out = np.zeros((len(windows), len(self.labels)), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for rows in window_batches(windows, batch_size):
            out[rows] = self.runner(*pad_windows([windows[i] for i in rows], pad_id))
        return out, [len(w) for w in windows]

    def encoded_logits(self, ids: list[list[int]], batch_size: int = 32) -> np.ndarray:
        """Logits for token ids (from `encode`) in input order, in bucketed, token-budgeted batches."""
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for rows, width in self.batch_plan([len(row) for row in ids], batch_size):
            out[rows] = self.runner(*pad_rows([ids[i] for i in rows], width, fill=pad_id))
        return out

    def batch_plan(self, lengths: list[int], batch_size: int) -> list[tuple[list[int], int]]:
        """(rows, padded width) per model call: see data/padding.py's bucket_batches."""
        return bucket_batches(lengths, max_rows=batch_size, max_tokens=self.max_batch_tokens,
                              multiple=PAD_MULTIPLE, max_length=self.max_length)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Class probabilities (n, num_labels), columns in `labels` order, temperature applied when present.

        Multi-label: one sigmoid probability per label; regression: the value (n, 1) in the original units."""
        return tasks.to_scores(self.task, self.logits(texts, batch_size), self.settings.temperature)

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[dict]:
        """Per text: {"label": best label, "score": its probability, "probs": {label: probability}}.

        Multi-label: {"labels": [{"label", "score"}, ...] (every label at or above its threshold, best
        first), "probs": {label: probability}}; regression: {"value": number}. A windowed model adds
        "windows": how many windows the text was read in."""
        return self.predict_prepared(self.prepare(texts), batch_size)

    def predict_prepared(self, prepared: list, batch_size: int = 32) -> list[dict]:
        """`predict` for the output of `prepare`."""
        logits, windows = self.prepared_logits(prepared, batch_size)
        predictions = self.to_predictions(tasks.to_scores(self.task, logits, self.settings.temperature))
        if self.settings.windows:  # a truncating model's records keep their shape
            for prediction, count in zip(predictions, windows, strict=True):
                prediction["windows"] = count
        return predictions

    def explain(self, texts: Sequence[str], target: str | None = None, steps: int | None = None) -> list[dict]:
        """Per text: the explained label, its words and a signed integrated-gradients score per word.

        Scores sum to f(text) - f(baseline) for the explained (temperature-scaled) logit, up to `delta`;
        see inference/explain.py. Needs PyTorch weights and `captum` (pip install 'sentune[explain]').
        """
        from sentune.inference import explain as explain_lib

        return explain_lib.explain(self, texts, target, steps or explain_lib.DEFAULT_STEPS)

    def explainer(self):
        """The integrated-gradients engine, built on first use (it holds a float32 torch model)."""
        if self._explainer is None:
            from sentune.inference.explain import Explainer, torch_model_for

            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            # the logit explained is the one predict turns into a score: temperature-scaled, except a regression's
            temperature = None if self.task == "regression" else self.settings.temperature
            pool = self.settings.pool if self.settings.windows else None
            self._explainer = Explainer(torch_model_for(self), pad, temperature, pool)
        return self._explainer

    def to_predictions(self, probs: np.ndarray) -> list[dict]:
        if self.task == "regression":
            return [{"value": float(v)} for v in np.asarray(probs)[:, 0].tolist()]
        if self.task == "multi_label":
            return multi_label_predictions(probs, self.labels, self.thresholds)
        labels = self.labels
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": labels[best], "score": row[best], "probs": dict(zip(labels, row, strict=True))})
        return out


def multi_label_predictions(probs: np.ndarray, labels: list[str], thresholds: np.ndarray) -> list[dict]:
    on = tasks.decide(probs, thresholds)
    out = []
    for row, chosen in zip(np.asarray(probs).tolist(), on.tolist(), strict=True):
        picked = sorted((i for i, c in enumerate(chosen) if c), key=lambda i: -row[i])
        out.append({"labels": [{"label": labels[i], "score": row[i]} for i in picked],
                    "probs": dict(zip(labels, row, strict=True))})
    return out


def model_name(folder: Path, config) -> str:
    """The base model's name when recorded, else the folder's name (the run's name for a run's best/)."""
    name = getattr(config, "_name_or_path", "") or ""
    if name and not Path(name).exists():
        return name  # a Hub id such as cardiffnlp/twitter-roberta-base-sentiment-latest
    folder = folder.resolve()
    return f"{folder.parent.name}/{folder.name}" if folder.name == "best" else folder.name
