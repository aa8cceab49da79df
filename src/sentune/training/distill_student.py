"""The student of `sentune distill`: which model it is, built before training starts.

    layers:K       the teacher's embeddings, K of its encoder layers evenly spaced (every other one of 12 for
                   K = 6, as DistilBERT) and its head, saved as the run's `student-init/` folder
    layers:0,2,4   the same with the layers named
    model:PATH     another encoder (a local folder, package:NAME or a Hub id) with its own tokenizer

Both end as a `save_pretrained` folder (or name) that `train` loads as `--model`, so the student trains on the
one training path. A copied regression head answers in the teacher's original units (its scale is folded in,
tasks.fold_scale): it is unfolded here, since training works in standardised units and folds its own at save.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from sentune import model as model_lib
from sentune import tasks
from sentune.errors import ConfigError, ModelError

INIT_DIR = "student-init"


@dataclass(frozen=True)
class StudentSpec:
    kind: str  # layers | model
    layers: tuple[int, ...] = ()  # explicit teacher layers (kind layers), empty with `count`
    count: int = 0  # K evenly spaced layers
    model: str = ""  # kind model: what --model takes

    def describe(self) -> str:
        if self.kind == "model":
            return f"model:{self.model}"
        return f"layers:{','.join(map(str, self.layers))}" if self.layers else f"layers:{self.count}"


def parse_student(spec: str) -> StudentSpec:
    """`layers:K`, `layers:0,2,4` or `model:PATH` -> a StudentSpec; anything else is a ConfigError."""
    kind, _, rest = spec.partition(":")
    if kind == "model" and rest:
        return StudentSpec("model", model=rest)
    if kind == "layers" and rest:
        parts = [p.strip() for p in rest.split(",")]
        if not all(p.isdigit() for p in parts):
            raise ConfigError(f"--student {spec}: layers must be whole numbers, e.g. layers:3 or layers:0,2,4")
        numbers = [int(p) for p in parts]
        if len(numbers) == 1:
            if numbers[0] < 1:
                raise ConfigError(f"--student {spec}: a student needs at least one layer")
            return StudentSpec("layers", count=numbers[0])
        if sorted(set(numbers)) != numbers:
            raise ConfigError(f"--student {spec}: name each layer once, in increasing order")
        return StudentSpec("layers", layers=tuple(numbers))
    raise ConfigError(f"--student {spec!r}: use layers:K (K evenly spaced teacher layers), layers:0,2,4 "
                      "(those teacher layers) or model:PATH (another encoder)")


def evenly_spaced(depth: int, k: int) -> list[int]:
    """K of `depth` layers, every depth/K-th from the bottom (12 -> 6: 0, 2, 4, 6, 8, 10, as DistilBERT)."""
    if not 1 <= k < depth:
        raise ConfigError(f"--student layers:{k}: the teacher has {depth} encoder layers; a student takes "
                          f"1..{depth - 1} of them")
    return [i * depth // k for i in range(k)]


def chosen_layers(spec: StudentSpec, depth: int) -> list[int]:
    if not spec.layers:
        return evenly_spaced(depth, spec.count)
    if spec.layers[-1] >= depth:
        raise ConfigError(f"--student {spec.describe()}: the teacher has layers 0..{depth - 1}")
    if len(spec.layers) == depth:
        raise ConfigError(f"--student {spec.describe()} is every layer of the teacher; take fewer")
    return list(spec.layers)


def shared_bottom(layers: list[int]) -> int:
    """How many of the student's bottom layers are the teacher's bottom layers, in order (0,1,3 -> 2)."""
    count = 0
    while count < len(layers) and layers[count] == count:
        count += 1
    return count


def build_student(spec: StudentSpec, teacher_best: Path, run_dir: Path, label_scale: dict | None) -> tuple[str, list]:
    """(what --model is for the student, the teacher layers it took: empty for model:PATH)."""
    if spec.kind == "model":
        return spec.model, []
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # training's own output follows; a shard bar for a local copy is noise
    try:
        model = AutoModelForSequenceClassification.from_pretrained(teacher_best)
        tokenizer = AutoTokenizer.from_pretrained(teacher_best)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the teacher from {teacher_best}: {e}") from None
    layers = model_lib.encoder_layers(model)
    chosen = chosen_layers(spec, len(layers))
    model.base_model.encoder.layer = nn.ModuleList([layers[i] for i in chosen])
    model.config.num_hidden_layers = len(chosen)
    tasks.fold_scale(model, label_scale, inverse=True)  # training works in standardised units
    folder = run_dir / INIT_DIR
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), chosen


def student_freeze(spec: StudentSpec, chosen: list[int], teacher_freeze: int, depth: int) -> int:
    """--freeze-layers when not given: a layers student freezes the teacher's frozen bottom layers it kept
    (the same function of the tokens, so they need no training); another encoder keeps the teacher run's
    setting, capped so that at least one layer trains."""
    if spec.kind == "layers":
        return min(teacher_freeze, shared_bottom(chosen))
    return max(0, min(teacher_freeze, depth - 1))
