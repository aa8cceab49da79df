"""`sentune distill`: train a smaller student on a trained teacher's outputs, gated on the score it keeps.

    teacher run (config.yaml, best/) + train flags -> student (distill_student.py) -> transfer set: the
    teacher's training texts + optional unlabelled texts -> the teacher's logits on it, computed once and
    cached -> `train`'s own loop (fit) with a DistillationLoss -> teacher and student evaluated and timed on
    the same data (distill_gate.py) -> the table, best/README.md, and the gate.

The student's run directory is an ordinary one (config.yaml, manifest.json, metrics.jsonl, best/,
final_metrics.json) plus `student-init/` (layers:K), `distill.json` and `distill.md`. Everything that differs
by task comes from the task object (tasks.py): the soft loss, the labels' loss, the teacher's labels for
unlabelled text.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sentune import config as config_lib
from sentune import model as model_lib
from sentune import rundir, tasks
from sentune.atomic import atomic_file
from sentune.config import Config
from sentune.errors import ConfigError, DataError, GateError
from sentune.training.distill_gate import compare, gate_message, write_outputs
from sentune.training.distill_student import build_student, parse_student, student_freeze
from sentune.training.prepare import ExampleLoss, Shared

TEACHER_FORMAT = 1  # part of the teacher-output cache key: bump when what is stored changes


@dataclass
class DistillResult:
    run_dir: Path
    best_dir: Path
    rows: list[dict]  # the table: teacher, student
    retained: float  # student / teacher validation score (teacher / student for an error such as RMSE)
    passed: bool


class DistillationLoss(ExampleLoss):
    """alpha x the soft loss against the teacher's outputs (every example) + (1 - alpha) x the task's own loss
    on the labelled examples (the first `labelled` of the transfer set; the rest are unlabelled text)."""

    def __init__(self, task: tasks.Task, label_loss: torch.nn.Module, teacher: torch.Tensor, labelled: int,
                 alpha: float, temperature: float):
        super().__init__()
        self.task, self.label_loss, self.alpha, self.temperature = task, label_loss, alpha, temperature
        self.teacher: torch.Tensor
        self.register_buffer("teacher", teacher.float())  # moves with the loss to the training device
        self.labelled = labelled

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        loss = self.alpha * self.task.soft_loss(logits, self.teacher[index], self.temperature)
        keep = index < self.labelled
        if self.alpha < 1.0 and bool(keep.any()):  # a batch of unlabelled text only has no labels' loss
            loss = loss + (1.0 - self.alpha) * self.label_loss(logits[keep], labels[keep])
        return loss


def distill(teacher_run: str | Path, student: str, *, temperature: float = 2.0, alpha: float = 0.5,
            unlabeled: str | None = None, min_retained: float = 0.98, **flags) -> DistillResult:
    """Distil the teacher run's best/ into `student` (layers:K | layers:0,2,4 | model:PATH); `flags`: any
    train setting by field name (epochs=3, lr_head=1e-3, output_dir=...), overriding the teacher run's config.
    Raises GateError (exit status 3) after writing everything when the student keeps under `min_retained`."""
    check_options(temperature, alpha, min_retained, unlabeled)
    teacher, spec = Path(teacher_run), parse_student(student)
    cfg = student_config(teacher, flags)
    teacher_model = cfg.model.model  # a layers student's frozen bottom is this model's: its cache files serve both
    chosen = set_up_student(cfg, spec, teacher / "best", flags.get("freeze_layers") is None)
    splits, teacher_logits, cache_status = transfer_set(cfg, teacher / "best", unlabeled)
    labelled = len(splits.train) - (splits.sources["train"].get("unlabeled_rows") or 0)
    shared = Shared(splits=splits, checkpoints=False, make_loss=lambda c, s: distillation_loss(
        c, s, teacher_logits, labelled, alpha, temperature), cache_model=teacher_model if chosen else None)
    from sentune.training.loop import fit

    fit(cfg, shared)
    run_dir = Path(cfg.run.output_dir or "")
    rows, retained = compare(teacher / "best", run_dir / "best", splits, cfg)
    record = {"teacher": str(teacher.resolve()), "student": spec.describe(), "teacher_layers": chosen,
              "temperature": temperature, "alpha": alpha, "unlabeled": unlabeled, "transfer_texts": len(splits.train),
              "labelled": labelled, "teacher_outputs": cache_status, "min_retained": min_retained,
              "retained": retained, "passed": retained >= min_retained, "rows": rows}
    write_outputs(run_dir, record)
    result = DistillResult(run_dir, run_dir / "best", rows, retained, record["passed"])
    if not result.passed:
        raise GateError(gate_message(record, run_dir), result)
    return result


def set_up_student(cfg: Config, spec, teacher_best: Path, default_freeze: bool) -> list[int]:
    """Build the student (layers:K: saved in the run directory) and point --model at it; --freeze-layers when
    not given; returns the teacher layers it took (none for model:PATH)."""
    run_dir = Path(cfg.run.output_dir or "")
    # a used folder is refused now (or emptied with --overwrite), not after the teacher's pass; fit locks it later
    rundir.open_run(run_dir, overwrite=cfg.run.overwrite).release()
    scale = rundir.read_json(teacher_best / "config.json").get("sentune", {}).get("label_scale")
    cfg.model.model, chosen = build_student(spec, teacher_best, run_dir, scale)
    if default_freeze:
        cfg.model.freeze_layers = student_freeze(spec, chosen, cfg.model.freeze_layers,
                                                 model_lib.model_depth(cfg.model))
    config_lib.validate(cfg)
    return chosen


def check_options(temperature: float, alpha: float, min_retained: float, unlabeled: str | None) -> None:
    if not temperature > 0:
        raise ConfigError(f"--temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1] (the distillation loss's share), got {alpha}")
    if not 0.0 <= min_retained <= 1.0:
        raise ConfigError(f"--min-retained must be in [0, 1] (a share of the teacher's score), got {min_retained}")
    if unlabeled is not None and not Path(unlabeled).is_file():
        raise DataError(f"--unlabeled {unlabeled}: no such file")
    from sentune.inference.shard import launched_processes

    if launched_processes() > 1:  # the teacher's pass and the timed comparison would run (and race) in each
        raise ConfigError("distill runs as one process (one GPU or the CPU); start it without torchrun / "
                          "accelerate launch")


# ---- the teacher run and the student's config ------------------------------------------------------------
def teacher_config(teacher: Path) -> Config:
    """The config the teacher's best/ was trained with: its config.yaml (train), or a sweep's chosen trial's."""
    if not (teacher / "best" / "config.json").is_file():
        raise ConfigError(f"{teacher} is not a finished run directory of train or sweep (no best/config.json)")
    if (teacher / "config.yaml").is_file():
        return config_lib.load(teacher / "config.yaml")
    final = teacher / "final_metrics.json"
    trial = rundir.read_json(final).get("trial") if final.is_file() else None
    path = teacher / "trials" / f"trial-{int(trial or 0):04d}" / "config.yaml"
    if trial is None or not path.is_file():
        raise ConfigError(f"{teacher}: no config.yaml, and no chosen sweep trial's config ({path}); pass the run "
                          "directory train or sweep wrote")
    return config_lib.load(path)


def student_config(teacher: Path, flags: dict) -> Config:
    """The teacher run's config with the given train flags on top; a new run directory."""
    cfg = teacher_config(teacher)
    given = {k: v for k, v in flags.items() if v is not None}
    if "model" in given:
        raise ConfigError("distill takes the student as --student model:PATH (or layers:K), not --model")
    config_lib.apply(cfg, config_lib.nest(given), "flag")
    cfg.run.resume = None
    if "head_init" not in given:  # a layers student keeps the teacher's trained head, whatever the teacher drew
        cfg.train.head_init = "model"
    cfg.run.output_dir = given.get("output_dir") or str(rundir.default_dir(f"distill-{teacher.resolve().name}"))
    return cfg


# ---- the transfer set and the teacher's outputs on it ----------------------------------------------------
def transfer_set(cfg: Config, teacher_best: Path, unlabeled: str | None):
    """(splits whose train split is the transfer set, the teacher's logits on it, the cache's status)."""
    from sentune.data import splits as data

    splits = data.load_splits(cfg.data, cfg.train.seed, cfg.train.select_on)
    assert splits.train is not None  # load_splits fails without training data
    extra = unlabeled_texts(unlabeled, cfg.data.text_column)
    texts = list(splits.train["text"]) + extra
    logits, status = teacher_outputs(teacher_best, texts, cfg)
    if unlabeled is not None:
        splits = with_unlabeled(splits, extra, logits[len(texts) - len(extra):], teacher_best, unlabeled)
    return splits, tasks.rescale(logits, splits.label_scale), status


def unlabeled_texts(path: str | None, text_column: str) -> list[str]:
    from sentune.data.splits import read_texts

    if path is None:
        return []
    texts = [row["text"] for row in read_texts(path, text_column)]
    if not texts:
        raise DataError(f"--unlabeled {path}: no texts in the file")
    return texts


def with_unlabeled(splits, texts: list[str], logits: np.ndarray, teacher_best: Path, source: str):
    """The train split with the unlabelled texts appended; their label column holds the teacher's labels,
    which only the manifest's counts read (the labels' loss skips these rows)."""
    from datasets import concatenate_datasets

    from sentune.data.splits import to_dataset

    meta = rundir.read_json(teacher_best / "config.json").get("sentune", {})
    thresholds = tasks.threshold_vector(meta.get("thresholds"), splits.label_names)
    labels = splits.task.teacher_labels(tasks.rescale(logits, splits.label_scale), thresholds)
    splits.train = concatenate_datasets([splits.train, to_dataset(texts, labels, task=splits.task)])
    info = dict(splits.sources["train"])
    info.update(source=f"{info['source']} + {len(texts):,} unlabelled texts from {source} (the teacher's labels)",
                rows=len(splits.train), unlabeled_rows=len(texts))
    splits.sources["train"] = info
    return splits


def teacher_outputs(teacher_best: Path, texts: list[str], cfg: Config) -> tuple[np.ndarray, dict]:
    """The teacher's logits on `texts` (original units), from the cache when this teacher has read these texts
    at this precision before; one file per (teacher weights, texts, precision), beside the frozen-layer cache
    (so the next student of this teacher reuses it), or in the run directory with --cache off."""
    from sentune.inference.classifier import Classifier, inference_precision, pick_device
    from sentune.training.cache import default_cache_dir

    device = pick_device(cfg.run.device)
    precision = inference_precision(cfg.train.precision, "torch", device)
    key = teacher_key(teacher_best, texts, precision)
    root = Path(cfg.run.output_dir or "") if cfg.train.cache == "off" else Path(cfg.train.cache_dir or
                                                                                default_cache_dir())
    path = root / f"teacher-{key}.npy"
    if path.is_file():
        print(f"Teacher outputs: {len(texts):,} texts, reused from {path}", flush=True)
        return np.load(path), {"status": "reused", "file": str(path), "precision": precision}
    start = time.perf_counter()
    clf = Classifier.load(teacher_best, backend="torch", device=device, precision=precision)
    logits = clf.logits(texts, batch_size=cfg.train.eval_batch_size or 2 * cfg.train.batch_size)
    seconds = time.perf_counter() - start
    print(f"Teacher outputs: {len(texts):,} texts in {seconds:.1f} s ({precision})", flush=True)
    atomic_file(path, lambda tmp: save_array(tmp, logits))
    return logits, {"status": "computed", "file": str(path), "seconds": round(seconds, 3), "precision": precision}


def save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add .npy to the temporary file's name
        np.save(f, array, allow_pickle=False)


def teacher_key(teacher_best: Path, texts: list[str], precision: str) -> str:
    digest = hashlib.sha256(f"sentune-teacher-v{TEACHER_FORMAT}\0{precision}\0".encode())
    for file in sorted(teacher_best.glob("*.safetensors")) + [teacher_best / "config.json"]:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):  # weights of any size, 1 MiB at a time
                digest.update(chunk)
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:32]


def distillation_loss(cfg: Config, splits, teacher_logits: np.ndarray, labelled: int, alpha: float,
                      temperature: float) -> DistillationLoss:
    label_rows = torch.tensor(list(splits.train["label"][:labelled]))
    label_loss = splits.task.loss(cfg.train, label_rows, len(splits.label_names))
    return DistillationLoss(splits.task, label_loss, torch.from_numpy(np.asarray(teacher_logits, np.float32)),
                            labelled, alpha, temperature)
