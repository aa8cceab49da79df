"""The service's request and response bodies (pydantic), apart from the routes that use them.

Two request shapes reach the model: sentune's own `{"text": ...}` / `{"texts": [...]}`, answered with
`{"predictions": [...]}`, and the Hugging Face Inference API / text-embeddings-inference shape
`{"inputs": "..." | [...], "parameters": {...}}`, answered with one list of `{"label", "score"}` per input,
best first (what `huggingface_hub.InferenceClient.text_classification` reads).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, StrictStr


class TextsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["What a great film!"]}]})
    texts: list[StrictStr] | None = Field(None, description="texts to classify")
    text: StrictStr | None = Field(None, description="a single text (instead of texts)")


class InferenceParameters(BaseModel):
    """The Inference API parameters a fine-tuned classifier can honour; any other is refused (422)."""

    model_config = ConfigDict(extra="forbid")
    top_k: StrictInt | None = Field(None, ge=1, description="only the k best labels (default: every label)")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None, description="must be the model's own (softmax: one label, sigmoid: several, none: regression)")


class InferenceRequest(BaseModel):
    """The Hugging Face Inference API / text-embeddings-inference body (`POST /`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": "What a great film!"}]})
    inputs: StrictStr | list[StrictStr] = Field(description="one text, or a list of texts")
    parameters: InferenceParameters | None = None


class PredictRequest(TextsRequest):
    """sentune's own body, or the Inference API one (`inputs`, optional `parameters`)."""

    inputs: StrictStr | list[StrictStr] | None = Field(None, description="Inference API form: text or texts")
    parameters: InferenceParameters | None = Field(None, description="Inference API form: with inputs only")


class LabelScore(BaseModel):
    label: str
    score: float


class InferenceResponse(RootModel[list[list[LabelScore]]]):
    """Per input, its labels and scores, best first (`top_k` of them when asked)."""


# Every task's prediction says how many windows its text was read in (a `--long-text windows` model).
WINDOWS = Field(1, description="windows the text was read in (more than 1: a long text, whole)")


class Prediction(BaseModel):
    label: str
    score: float = Field(description="probability of the predicted label")
    probs: dict[str, float] = Field(description="probability of every label")
    windows: int = WINDOWS


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class ExplainRequest(TextsRequest):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "What a great film!"}]})
    target: StrictStr | None = Field(None, description="label to explain (default: the predicted one)")


class Explanation(BaseModel):
    label: str = Field(description="the label explained (`value` for a regression)")
    score: float | None = Field(None, description="its probability (single-label models)")
    words: list[str] = Field(description="the text's whitespace-separated words, as the model read them")
    scores: list[float | None] = Field(
        description="per word: its integrated-gradients share of value - baseline_value; > 0 supports the label, "
                    "null for a word cut by truncation")
    value: float = Field(description="the explained (temperature-scaled) logit for the text")
    baseline_value: float = Field(description="the same logit for the all-padding baseline")
    delta: float = Field(description="convergence delta: sum(scores) - (value - baseline_value)")
    explanations: list[dict] | None = Field(None, description="multi-label: one entry per predicted label")


class ExplainResponse(BaseModel):
    explanations: list[Explanation]


class ChosenLabel(BaseModel):
    label: str
    score: float = Field(description="sigmoid probability of the label (at or above its threshold)")


class MultiLabelPrediction(BaseModel):
    labels: list[ChosenLabel] = Field(description="every label at or above its decision threshold, best first")
    probs: dict[str, float] = Field(description="sigmoid probability of every label")
    windows: int = WINDOWS


class MultiLabelResponse(BaseModel):
    predictions: list[MultiLabelPrediction]


class RegressionPrediction(BaseModel):
    value: float = Field(description="the predicted value, in the training targets' units")
    windows: int = WINDOWS


class RegressionResponse(BaseModel):
    predictions: list[RegressionPrediction]


# The OpenAPI schema of /predict follows the model's task (config.json problem_type).
RESPONSES = {"single_label": PredictResponse, "multi_label": MultiLabelResponse, "regression": RegressionResponse}
