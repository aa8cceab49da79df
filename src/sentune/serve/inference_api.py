"""The Hugging Face Inference API / text-embeddings-inference protocol, beside sentune's own.

`{"inputs": "..."}` or `{"inputs": [...]}` with optional `parameters` (`top_k`, `function_to_apply`) is
answered with one list of `{"label", "score"}` per input, best first; `GET /info` describes the model as
text-embeddings-inference does. So `huggingface_hub.InferenceClient(base_url).text_classification(text)`
(which posts to the root path) works against `sentune serve` unchanged.
"""

from __future__ import annotations

from importlib import metadata

from starlette.exceptions import HTTPException

from sentune import tasks
from sentune.serve.schemas import InferenceParameters


def texts_of(inputs: str | list[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else list(inputs)


def check_parameters(parameters: InferenceParameters | None, task: str) -> None:
    """The scores are the model's own (calibrated) ones: another `function_to_apply` is refused, not faked."""
    own = tasks.get_task(task).score_function
    wanted = parameters.function_to_apply if parameters is not None else None
    if wanted is not None and wanted != own:
        raise HTTPException(422, f"parameters.function_to_apply: this model's scores are {own!r} ({task}); "
                                 f"send {own!r} or leave it out")


def ranked(predictions: list[dict], task: str, labels: list[str],
           parameters: InferenceParameters | None) -> list[list[dict]]:
    """Per prediction its labels and scores, best first, cut to `top_k` when asked."""
    top_k = parameters.top_k if parameters is not None else None
    out = []
    for prediction in predictions:
        scores = tasks.get_task(task).label_scores(prediction, labels)
        best = sorted(scores.items(), key=lambda item: -item[1])[:top_k]
        out.append([{"label": label, "score": score} for label, score in best])
    return out


def server_version() -> str:
    try:
        return metadata.version("sentune")
    except metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


def info(classifier, *, max_texts: int, max_batch_tokens: int | None, max_queue: int | None) -> dict:
    """The fields of text-embeddings-inference's `/info` that apply to a classifier."""
    labels = classifier.labels
    return {
        "model_id": classifier.name,
        "model_dtype": getattr(classifier, "precision", "fp32"),
        "model_type": {"classifier": {"id2label": dict(enumerate(labels)),
                                      "label2id": {label: i for i, label in enumerate(labels)}}},
        "max_input_length": classifier.max_length,
        "max_client_batch_size": max_texts,
        "max_batch_tokens": max_batch_tokens,
        "max_concurrent_requests": max_queue,
        "version": server_version(),
        "backend": classifier.backend,
    }
