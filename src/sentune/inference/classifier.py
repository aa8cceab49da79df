"""`Classifier`: one inference path (length-sorted, bucketed, token-budgeted batches) for predict, serve, export
and evaluate. The torch backend computes the last layer for the first token only, as training does.

Works on any `save_pretrained` sequence-classification folder and on an ONNX export (`sentune export`).
When `config.json` carries the `sentune` dict written by training (max_length, truncation, head_tokens,
normalize_tweets, temperature), inputs are prepared exactly as in training and logits are calibrated.
A model trained with `--long-text windows` (long_text, stride, max_windows, pool in that dict) reads every
text in windows and pools them as training did (`inference/windowed.py`); each prediction says how many
windows its text used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sentune import tasks
from sentune.data.padding import bucket_batches, pad_rows
from sentune.errors import ModelError

if TYPE_CHECKING:
    from sentune.inference.windowed import WindowedLogits

ONNX_FILE = "model.onnx"
BACKENDS = ("auto", "torch", "onnx")
# Padded tokens per model call: enough rows to fill the cores, few enough that a call's activations stay in
# cache (bench/batch_budget.py measures ms per token against this budget on the machine at hand).
MAX_BATCH_TOKENS = 4096
# Batches of several rows are padded to a multiple of this: a bounded set of shapes (data/padding.py).
PAD_MULTIPLE = 32


@dataclass
class Settings:
    """How inputs are prepared and logits turned into probabilities (from `config.json`'s `sentune` dict)."""

    labels: list[str]
    max_length: int
    truncation: str = "head"
    head_tokens: int = 128
    normalize_tweets: bool = False
    temperature: float | None = None
    task: str = "single_label"  # from config.json's problem_type
    thresholds: dict | None = None  # multi-label decision thresholds ({"global", "per_label"}), tuned by training
    label_scale: dict | None = None  # regression: the training targets' mean/std (already folded into the head)
    long_text: str = "truncate"
    stride: int = 64
    max_windows: int = 16
    pool: str = "mean"

    @property
    def windows(self) -> bool:
        return self.long_text == "windows"


def read_settings(path: str, config, tokenizer) -> Settings:
    """Training metadata when present, else defaults that fit any plain save_pretrained folder."""
    from sentune.data import splits as data

    meta = dict(getattr(config, "sentune", None) or {})
    labels = [config.id2label[i] for i in range(config.num_labels)]
    if "normalize_tweets" in meta:
        normalize = bool(meta["normalize_tweets"])
    else:
        normalize = data.wants_tweet_normalization(path, "auto")
    return Settings(
        labels=labels,
        max_length=int(meta.get("max_length") or default_max_length(config, tokenizer)),
        truncation=meta.get("truncation", "head"),
        head_tokens=int(meta.get("head_tokens", 128)),
        normalize_tweets=normalize,
        temperature=float(meta["temperature"]) if meta.get("temperature") else None,
        task=tasks.task_of(config),
        thresholds=meta.get("thresholds") or None,
        label_scale=meta.get("label_scale") or None,
        long_text=meta.get("long_text", "truncate"),
        stride=int(meta.get("stride", 64)),
        max_windows=int(meta.get("max_windows", 16)),
        pool=meta.get("pool", "mean"),
    )


def default_max_length(config, tokenizer) -> int:
    """min(tokenizer limit, 512), and never more positions than the model has."""
    limit = min(int(tokenizer.model_max_length), 512)
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-family models number positions from padding_idx + 1, so two positions are unusable.
        offset = 2 if "roberta" in (config.model_type or "") or config.model_type == "camembert" else 0
        limit = min(limit, int(positions) - offset)
    return limit


def softmax(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    logits = logits.astype(np.float64)
    if temperature:
        logits = logits / temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


class TorchRunner:
    """Logits from a PyTorch model under inference_mode; bf16/fp16 cast the weights (no autocast overhead)."""

    def __init__(self, path: str, device: str, precision: str, pool: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification

        from sentune import model as model_lib
        from sentune.precision import torch_dtype

        self.torch = torch
        self.device = torch.device(device)
        dtype = torch_dtype(precision)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load a classification model from {path}: {e}") from None
        self.model = model.to(self.device).eval()
        self.windowed: WindowedLogits | None = None
        if pool is not None:  # a windowed model: pool the windows as training did
            from sentune import pooling
            from sentune.inference.windowed import WindowedLogits

            if pool == "attention":
                pooling.load_pool(self.model, path)
            self.windowed = WindowedLogits(self.model, pool).eval()
        # BERT/RoBERTa family: the last layer for the first token only (all the head reads), as training does
        first_token_only = getattr(model.config, "model_type", None) in model_lib.SUPPORTED_TYPES
        self.forward_logits = model_lib.forward_logits if first_token_only else None

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 window_mask: np.ndarray | None = None) -> np.ndarray:
        torch = self.torch
        ids, mask = torch.from_numpy(input_ids).to(self.device), torch.from_numpy(attention_mask).to(self.device)
        with torch.inference_mode():
            if window_mask is not None:
                assert self.windowed is not None  # window masks come only with a windowed model's settings
                return self.windowed(ids, mask, torch.from_numpy(window_mask).to(self.device)).float().cpu().numpy()
            if self.forward_logits is not None:
                logits = self.forward_logits(self.model, {"input_ids": ids, "attention_mask": mask}, 0)
            else:
                logits = self.model(input_ids=ids, attention_mask=mask).logits
        return logits.float().cpu().numpy()


class OnnxRunner:
    """Logits from an ONNX Runtime session (`sentune export` output); needs no torch at run time."""

    def __init__(self, path: str, device: str):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("the onnx backend needs onnxruntime: pip install 'sentune[export]'") from None
        model_file = Path(path) / ONNX_FILE
        if not model_file.is_file():
            raise ModelError(f"no {ONNX_FILE} in {path}; create one with: sentune export {path} --format onnx")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options, providers=providers)
        self.input_names = {i.name for i in self.session.get_inputs()}

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 window_mask: np.ndarray | None = None) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if window_mask is not None:
            if "window_mask" not in self.input_names:
                raise ModelError("this ONNX export reads one window per text; export the model again")
            feed["window_mask"] = window_mask
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.input_names})[0]


def pick_backend(path: Path, backend: str) -> str:
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    has_torch = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
    return "torch" if has_torch or not (path / ONNX_FILE).is_file() else "onnx"


def inference_precision(precision: str, backend: str, device: str) -> str:
    """fp32 | bf16 | fp16 for this backend on this device (the ONNX backend computes in its export's types)."""
    if backend == "onnx":
        if precision not in ("auto", "fp32"):
            raise ModelError(f"--precision {precision} is for the torch backend; an ONNX export runs as exported "
                             "(fp32, or int8 with sentune export --quantize int8)")
        return "fp32"
    from sentune.precision import resolve_precision

    return resolve_precision(precision, device.split(":")[0])


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


class Classifier:
    """A text classifier ready to predict: `Classifier.load(path).predict(["great film"])`."""

    def __init__(self, runner, tokenizer, settings: Settings, *, backend: str, device: str, name: str,
                 path: str | None = None, precision: str = "fp32", max_batch_tokens: int = MAX_BATCH_TOKENS):
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be >= 1")
        self.max_batch_tokens = max_batch_tokens
        self.runner = runner
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
        settings = read_settings(str(folder), config, tokenizer)
        precision = inference_precision("bf16" if bf16 else precision, backend, device)
        runner: OnnxRunner | TorchRunner
        if backend == "onnx":
            runner = OnnxRunner(str(folder), device)
        else:
            runner = TorchRunner(str(folder), device, precision, pool=settings.pool if settings.windows else None)
        return cls(runner, tokenizer, settings, backend=backend, device=device, name=model_name(folder, config),
                   path=str(folder), precision=precision, max_batch_tokens=max_batch_tokens)

    @property
    def labels(self) -> list[str]:
        return list(self.settings.labels)

    @property
    def task(self) -> str:
        return self.settings.task

    @property
    def thresholds(self) -> np.ndarray:
        """Per-label decision thresholds (multi-label), in `labels` order; 0.5 where none are stored."""
        return tasks.threshold_vector(self.settings.thresholds, self.settings.labels)

    @property
    def max_length(self) -> int:
        return self.settings.max_length

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids exactly as in training: tweet normalization, then head/tail truncation."""
        from sentune.data import splits as data

        s = self.settings
        if s.normalize_tweets:
            texts = [data.normalize_tweet(t) for t in texts]
        return data.encode_texts(self.tokenizer, list(texts), s.max_length, s.truncation, s.head_tokens)

    def encode_windows(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """Per text its windows, as in training with `--long-text windows` (one window for a short text)."""
        from sentune.data import splits as data
        from sentune.data.windows import encode_windows

        s = self.settings
        if s.normalize_tweets:
            texts = [data.normalize_tweet(t) for t in texts]
        return encode_windows(self.tokenizer, list(texts), s.max_length, s.stride, s.max_windows)

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

        out = np.zeros((len(windows), len(self.settings.labels)), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for rows in window_batches(windows, batch_size):
            out[rows] = self.runner(*pad_windows([windows[i] for i in rows], pad_id))
        return out, [len(w) for w in windows]

    def encoded_logits(self, ids: list[list[int]], batch_size: int = 32) -> np.ndarray:
        """Logits for token ids (from `encode`) in input order, in bucketed, token-budgeted batches."""
        out = np.zeros((len(ids), len(self.settings.labels)), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for rows, width in self.batch_plan([len(row) for row in ids], batch_size):
            out[rows] = self.runner(*pad_rows([ids[i] for i in rows], width, fill=pad_id))
        return out

    def batch_plan(self, lengths: list[int], batch_size: int) -> list[tuple[list[int], int]]:
        """(rows, padded width) per model call: see data/padding.py's bucket_batches."""
        return bucket_batches(lengths, max_rows=batch_size, max_tokens=self.max_batch_tokens,
                              multiple=PAD_MULTIPLE, max_length=self.settings.max_length)

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
            return multi_label_predictions(probs, self.settings.labels, self.thresholds)
        labels = self.settings.labels
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


def check_texts(texts) -> None:
    # A lone string would otherwise be classified character by character.
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, e.g. clf.predict([text])")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, expected str")


def model_name(folder: Path, config) -> str:
    """The base model's name when recorded, else the folder's name (the run's name for a run's best/)."""
    name = getattr(config, "_name_or_path", "") or ""
    if name and not Path(name).exists():
        return name  # a Hub id such as cardiffnlp/twitter-roberta-base-sentiment-latest
    folder = folder.resolve()
    return f"{folder.parent.name}/{folder.name}" if folder.name == "best" else folder.name
