"""`sentune export`: a model folder -> ONNX (optionally int8), checked against PyTorch before it is kept.

The export folder holds `model.onnx`, the tokenizer, `config.json` (labels and the resolved `sentune`
preprocessing settings, so the ONNX model sees exactly the inputs PyTorch saw) and `export.json` (the
parity numbers). It is written to a temporary sibling and renamed into place only when the parity check
passes (`atomic.atomic_dir`): int8 dynamic quantization is known to collapse some models, and a collapsed
export never lands.

A model trained with `--long-text windows` exports as its windowed form (`inference/windowed.py`): the graph
takes [texts, windows, tokens] ids and mask plus a [texts, windows] window mask and pools inside, so the
ONNX runner splits and pools exactly as PyTorch; the parity texts include ones many windows long.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sentune.atomic import atomic_dir
from sentune.errors import ConfigError, ModelError
from sentune.inference.classifier import Classifier
from sentune.inference.runners import ONNX_FILE
from sentune.settings import KEY

CHECK_LIMIT = 1000  # rows of --check-file used for the parity check
# Regression: an exported value agrees when within this share of the targets' std (or absolutely, unscaled)
REGRESSION_TOLERANCE = 0.01
EXPORT_RECORD = "export.json"  # written last into every export: the mark --overwrite looks for

BUILTIN_TEXTS = [
    "I loved this movie, the acting was superb and the story kept me hooked.",
    "Absolutely terrible. I want my two hours back.",
    "It was fine, nothing special, but not bad either.",
    "The plot made no sense and the dialogue was painfully bad.",
    "What a wonderful surprise! Best film I have seen this year.",
    "Boring, slow and far too long.",
    "The soundtrack was great but the characters were flat.",
    "I can't believe how good this was, I laughed and cried.",
    "Worst customer service ever, never ordering again.",
    "The package arrived on time and works as described.",
    "@friend you have to watch this, it's amazing http://t.co/xyz",
    "ugh monday again... why is everything so hard",
    "Not bad at all, I would recommend it to my friends.",
    "I hated every minute of it.",
    "A masterpiece of modern cinema.",
    "Meh.",
    "The food was cold and the waiter was rude.",
    "Great value for money, five stars!",
    "I'm not sure how I feel about this ending.",
    "This is the best day of my life!",
    "Disappointing sequel that ruins the original.",
    "The book is better, but the movie is still enjoyable.",
    "Honestly one of the most beautiful things I've ever seen.",
    "Stay away from this product, it broke after a day.",
    "The weather is nice today.",
    "I guess it was okay for a rainy afternoon.",
    "Such a waste of talent, the cast deserved a better script.",
    "Brilliant performances all around, especially the lead.",
    "I fell asleep halfway through.",
    "Thank you so much for your help, you made my day!",
    "The update broke everything, what were they thinking?",
    "It's a movie. It has actors. Things happen.",
    "Fantastic! Can't wait for the next one.",
    "Painfully predictable from start to finish.",
    "A charming little film with a lot of heart.",
    "The special effects looked cheap and dated.",
    "I would watch it again without hesitation.",
    "Not my cup of tea, but others may like it.",
    "Horrible acting, horrible plot, horrible everything.",
    "The kids loved it and so did we.",
]


@dataclass
class Parity:
    """How closely the exported model follows PyTorch fp32 on the check texts."""

    n: int
    agreement: float  # share of texts with the same label (multi-label: label set; regression: value within tolerance)
    max_prob_diff: float  # largest absolute difference of any class probability (regression: of the value)
    reference_labels: dict  # label -> count under PyTorch
    export_labels: dict  # label -> count under the export
    task: str = "single_label"

    def summary(self) -> str:
        what = {"single_label": "label", "multi_label": "label-set (at the thresholds)",
                "regression": "value (within tolerance)"}[self.task]
        diff = "value" if self.task == "regression" else "probability"
        return (f"parity on {self.n} texts: {what} agreement {self.agreement:.2%}, "
                f"max {diff} difference {self.max_prob_diff:.4f}")


def default_output(model_dir: Path, quantize: str | None) -> Path:
    suffix = "-onnx-int8" if quantize else "-onnx"
    return model_dir.parent / (model_dir.resolve().name + suffix)


def check_texts_from(path: str | None, text_column: str = "text") -> list[str]:
    if path is None:
        # Long texts too: truncation and long-sequence attention must survive the export.
        long = [" ".join(BUILTIN_TEXTS[i : i + 12]) for i in range(0, len(BUILTIN_TEXTS), 4)]
        # and far past any max_length, so a windowed export is checked on texts of many windows
        longer = [" ".join((BUILTIN_TEXTS[i:] + BUILTIN_TEXTS[:i]) * 3) for i in range(0, len(BUILTIN_TEXTS), 10)]
        return BUILTIN_TEXTS + long + longer
    from sentune.data import splits as data

    texts = []
    for row in data.read_texts(path, text_column):
        texts.append(row["text"])
        if len(texts) >= CHECK_LIMIT:
            break
    if not texts:
        raise ConfigError(f"--check-file {path} has no texts")
    return texts


def export_onnx(model_dir: Path, onnx_path: Path, pool: str | None = None) -> None:
    """torch.onnx.export (dynamo exporter: the legacy tracer bakes the attention mask in as a constant).

    `pool` (a windowed model's pooling) exports the windowed form instead of the plain classifier.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    if pool is not None:
        return export_windowed(model, model_dir, onnx_path, pool)

    from sentune import model as model_lib

    first_token = getattr(model.config, "model_type", None) in model_lib.SUPPORTED_TYPES

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            if first_token:  # the last layer for the first token only, as the torch backend runs it
                return model_lib.forward_logits(self.inner, {"input_ids": input_ids, "attention_mask": attention_mask},
                                                0)
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    ids = torch.full((2, 16), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    dynamic = {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}  # batch and sequence axes
    try:
        with quiet(), torch.no_grad():
            torch.onnx.export(
                Logits(model), (ids, mask), str(onnx_path), dynamo=True, external_data=False,
                input_names=["input_ids", "attention_mask"], output_names=["logits"],
                dynamic_shapes=(dynamic, dynamic),
            )
    except Exception as e:  # an architecture the exporter cannot handle: say which, keep the cause chained
        raise ModelError(f"cannot export {type(model).__name__} from {model_dir} to ONNX: {e}") from e


def export_windowed(model, model_dir: Path, onnx_path: Path, pool: str) -> None:
    import torch

    from sentune import pooling
    from sentune.inference.windowed import WindowedLogits

    if pool == "attention":
        pooling.load_pool(model, model_dir)
    ids = torch.full((2, 3, 16), 5, dtype=torch.long)
    mask, window_mask = torch.ones_like(ids), torch.ones((2, 3), dtype=torch.long)
    auto = torch.export.Dim.AUTO
    dynamic = ({0: auto, 1: auto, 2: auto}, {0: auto, 1: auto, 2: auto}, {0: auto, 1: auto})
    try:
        with quiet(), torch.no_grad():
            torch.onnx.export(
                WindowedLogits(model, pool).eval(), (ids, mask, window_mask), str(onnx_path), dynamo=True,
                external_data=False, input_names=["input_ids", "attention_mask", "window_mask"],
                output_names=["logits"], dynamic_shapes=dynamic,
            )
    except Exception as e:
        raise ModelError(f"cannot export the windowed {type(model).__name__} from {model_dir} to ONNX: {e}") from e


@contextlib.contextmanager
def quiet():
    """The exporter and quantizer talk on stdout, through warnings and loggers; their errors still raise."""
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)
            root.setLevel(level)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of the weights (activations quantized on the fly) with onnxruntime.

    Per-channel 7-bit weights: on MiniLM they halved the probability error of per-tensor 8-bit
    (max difference 0.0017 vs 0.0030) at the same speed, and 7 bits cannot saturate the u8*s8
    products on CPUs without VNNI, where the export may end up being served.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)


def write_companions(model_dir: Path, out: Path, reference: Classifier) -> None:
    """Tokenizer + config with the resolved preprocessing, so the export prepares inputs like PyTorch did."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    # the resolved settings (max_length and tweet normalization filled in), over any key this version does not know
    setattr(config, KEY, {**(getattr(config, KEY, None) or {}), **reference.settings.to_dict()})
    config.save_pretrained(out)
    reference.tokenizer.save_pretrained(out)


def parity(reference: Classifier, exported: Classifier, texts: list[str], batch_size: int = 32) -> Parity:
    ref, got = reference.predict_proba(texts, batch_size), exported.predict_proba(texts, batch_size)
    labels = reference.labels
    if reference.task != "single_label":
        return task_parity(reference, ref, got)

    def counts(probs: np.ndarray) -> dict:
        return {labels[i]: int(c) for i, c in zip(*np.unique(probs.argmax(1), return_counts=True), strict=True)}

    return Parity(
        n=len(texts),
        agreement=float((ref.argmax(1) == got.argmax(1)).mean()),
        max_prob_diff=float(np.abs(ref - got).max()),
        reference_labels=counts(ref),
        export_labels=counts(got),
    )


def task_parity(reference: Classifier, ref: np.ndarray, got: np.ndarray) -> Parity:
    """Multi-label: the label sets decided at the stored thresholds must match; regression: the values
    within REGRESSION_TOLERANCE of the targets' std."""
    if reference.task == "regression":
        scale = reference.settings.label_scale or {}
        tolerance = REGRESSION_TOLERANCE * float(scale.get("std", 1.0))
        diff = np.abs(ref[:, 0] - got[:, 0])
        return Parity(n=len(ref), agreement=float((diff <= tolerance).mean()), max_prob_diff=float(diff.max()),
                      reference_labels={}, export_labels={}, task="regression")
    cut = reference.thresholds
    on_ref, on_got = ref >= cut, got >= cut

    def counts(on: np.ndarray) -> dict:
        return {name: int(c) for name, c in zip(reference.labels, on.sum(0).tolist(), strict=True) if c}

    return Parity(n=len(ref), agreement=float((on_ref == on_got).all(1).mean()),
                  max_prob_diff=float(np.abs(ref - got).max()), reference_labels=counts(on_ref),
                  export_labels=counts(on_got), task="multi_label")


def failure_message(p: Parity, min_agreement: float, quantize: str | None) -> str:
    what = {"single_label": "labels", "multi_label": "label sets", "regression": "values"}[p.task]
    msg = (f"the exported model agrees with PyTorch on only {p.agreement:.2%} of {p.n} {what} "
           f"(minimum {min_agreement:.2%}; max probability difference {p.max_prob_diff:.4f})")
    if len(p.export_labels) < len(p.reference_labels):
        msg += f"; it collapsed onto {', '.join(p.export_labels)} (PyTorch: {p.reference_labels})"
    if quantize:
        msg += "; int8 quantization does not suit this model: export without --quantize"
    return msg + ", or lower --min-agreement to accept it anyway. Nothing was written."


def export(model_dir: str | Path, output: str | Path | None = None, *, fmt: str = "onnx",
           quantize: str | None = None, check_file: str | None = None, text_column: str = "text",
           min_agreement: float = 0.99, overwrite: bool = False) -> tuple[Path, Parity]:
    """Export, check parity, and move the result into `output` atomically. Returns (output, parity)."""
    if fmt != "onnx":
        raise ConfigError(f"unknown export format {fmt!r}; only onnx is supported")
    if quantize not in (None, "int8"):
        raise ConfigError(f"unknown --quantize {quantize!r}; only int8 is supported")
    if not 0.0 <= min_agreement <= 1.0:
        raise ConfigError("--min-agreement must be between 0 and 1")
    model_dir = Path(model_dir)
    out = Path(output) if output else default_output(model_dir, quantize)
    check_replaceable(out, overwrite)
    texts = check_texts_from(check_file, text_column)
    reference = Classifier.load(model_dir, backend="torch", device="cpu", precision="fp32")  # as the ONNX graph
    checked: list[Parity] = []

    def write(folder: Path) -> None:  # a temporary sibling of `out`, swapped in only when it passes
        build(model_dir, folder, reference, quantize)
        result = parity(reference, Classifier.load(folder, backend="onnx", device="cpu"), texts)
        if result.agreement < min_agreement:
            raise ModelError(failure_message(result, min_agreement, quantize))
        info = {"format": fmt, "quantize": quantize, "source": str(model_dir.resolve()), **asdict(result)}
        (folder / EXPORT_RECORD).write_text(json.dumps(info, indent=2) + "\n")
        checked.append(result)

    atomic_dir(out, write)
    return out, checked[0]


def check_replaceable(out: Path, overwrite: bool) -> None:
    """--overwrite replaces an earlier export only: a folder without the export.json an export writes (a model,
    a home folder, a typo in --output) is never deleted."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it or choose --output")
    if out.is_symlink() or not out.is_dir() or not (out / EXPORT_RECORD).is_file():
        raise ConfigError(f"{out} is not a sentune export (no {EXPORT_RECORD}); --overwrite replaces only an "
                          "earlier export, so nothing was deleted: choose another --output")


def build(model_dir: Path, tmp: Path, reference: Classifier, quantize: str | None) -> None:
    write_companions(model_dir, tmp, reference)
    pool = reference.settings.pool if reference.settings.windows else None
    if quantize:
        fp32 = tmp / "model-fp32.onnx"
        export_onnx(model_dir, fp32, pool)
        quantize_int8(fp32, tmp / ONNX_FILE)
        fp32.unlink()
    else:
        export_onnx(model_dir, tmp / ONNX_FILE, pool)

