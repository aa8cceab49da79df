"""How a model folder computes logits: the torch and ONNX runners, and the choice of backend, device and precision.

`Classifier` (classifier.py) prepares the inputs and reads the outputs; a runner only maps padded ids to
logits. The explainer (explain.py) builds its float32 torch model from the same `TorchRunner`, so
classifier and explain both depend on this module and not on each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sentune.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from sentune.inference.windowed import WindowedLogits

ONNX_FILE = "model.onnx"
BACKENDS = ("auto", "torch", "onnx")


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
    """The device a run uses, for training and inference alike: auto is CUDA, else Apple's MPS, else the CPU.

    An asked-for GPU that is not there is a ConfigError before any work. Without torch (an ONNX-only
    install) there is only the CPU."""
    try:
        import torch
    except ImportError:
        if device not in ("auto", "cpu"):
            raise ConfigError(f"--device {device} needs PyTorch; the onnx backend without it runs on the CPU") from None
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but MPS is not available; use --device cpu")
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def load_runner(folder: Path, backend: str, device: str, precision: str, pool: str | None):
    """The runner of a resolved backend; `pool`: a windowed model's pooling (the torch runner pools)."""
    if backend == "onnx":
        return OnnxRunner(str(folder), device)
    return TorchRunner(str(folder), device, precision, pool=pool)


def check_texts(texts) -> None:
    """What every runner's caller is given: a list of strings."""
    # A lone string would otherwise be classified character by character.
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, e.g. clf.predict([text])")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, expected str")
