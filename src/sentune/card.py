"""The model card: `best/README.md`, written with huggingface_hub's `ModelCard` / `ModelCardData`.

Metadata (YAML, the Hub's schema): base_model, datasets and license where known, pipeline_tag,
library_name, tags and `model-index` results (the selected weights' test metrics, with split and size).
The body says how the weights were made (recipe, data, selection, calibration, long-text mode), how to
use them and their limits. `sentune evaluate --update-card` adds another data set's results; the results
table sits between two markers so it can be redrawn from the metadata without touching the rest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sentune.atomic import atomic_write_text
from sentune.settings import KEY, ModelSettings

CARD = "README.md"
RESULTS_BEGIN, RESULTS_END = "<!-- sentune:results -->", "<!-- /sentune:results -->"
# (key in the metrics dict, model-index metric type, name); each task's metrics dict has its own subset
METRICS = (("accuracy", "accuracy", "Accuracy"), ("macro_f1", "f1", "Macro F1"),
           ("macro_recall", "recall", "Macro recall"), ("micro_f1", "f1", "Micro F1"),
           ("samples_f1", "f1", "Samples F1"), ("ece", "ece", "ECE"), ("rmse", "rmse", "RMSE"),
           ("mae", "mae", "MAE"), ("r2", "r2", "R2"), ("pearson", "pearsonr", "Pearson r"))


def read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def hub_id(spec: str | None) -> str | None:
    """`owner/name` or `name` when `spec` names something on the Hub, not a local path or package."""
    if not spec or spec.startswith("package:") or Path(spec).expanduser().exists() or spec.count("/") > 1:
        return None
    return spec


def public_name(spec) -> str:
    """How a published card names a model or data source: a Hub id or package as given, a local path by its
    last part only (the rest says nothing to a reader and tells the world how this machine is laid out)."""
    spec = str(spec or "")
    if not spec or spec.startswith("package:") or hub_id(spec):
        return spec
    return Path(spec).name or spec


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+!|~])")


def md(text) -> str:
    """Text from the data (label names, file names) as literal markdown: no links, markup, HTML or table cells."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))


def base_card_data(spec: str) -> dict:
    """The base model's own card metadata (license, base_model), when it is a local folder or package."""
    from huggingface_hub import ModelCard

    from sentune.model import resolve_model_path

    try:
        folder = Path(resolve_model_path(spec))
    except Exception:  # a Hub id or an uninstalled package: nothing local to read
        return {}
    card = folder / CARD
    return ModelCard.load(card).data.to_dict() if card.is_file() else {}


def eval_results(metrics: dict, model_name: str, source: str, split: str, n: int) -> list:
    from huggingface_hub import EvalResult

    source = public_name(source)
    return [EvalResult(task_type="text-classification", task_name="Text Classification",
                       dataset_type=hub_id(source) or source, dataset_name=f"{source} ({split}, n={n})",
                       dataset_split=split, metric_type=kind, metric_name=name,
                       metric_value=round(float(metrics[key]), 4))
            for key, kind, name in METRICS if finite(metrics.get(key))]


def finite(value) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def results_table(results: list) -> str:
    rows = ["| data | split | metric | value |", "|---|---|---|---:|"]
    rows += [f"| {md(r.dataset_name)} | {md(r.dataset_split)} | {r.metric_name} | {r.metric_value:.4f} |"
             for r in results]
    return "\n".join([RESULTS_BEGIN, *rows, RESULTS_END])


def build_card(run_dir: Path):
    """The card of a finished run, from its config.yaml, manifest.json, final_metrics.json and best/config.json."""
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = Path(run_dir)
    cfg, manifest = read_yaml(run_dir / "config.yaml"), json.loads((run_dir / "manifest.json").read_text())
    final = json.loads((run_dir / "final_metrics.json").read_text()) if (run_dir / "final_metrics.json").is_file() \
        else None
    model_cfg = json.loads((run_dir / "best" / "config.json").read_text())
    base_spec, data_spec = cfg["model"]["model"], cfg["data"].get("dataset") or cfg["data"].get("train_file")
    base = base_card_data(base_spec)
    name = run_dir.resolve().name
    results = []
    if final is not None:
        results = eval_results(final, name, data_spec, "test", manifest["data"]["test"]["rows"])
    dataset = hub_id(data_spec)
    data = ModelCardData(
        model_name=name, base_model=hub_id(base_spec) or base.get("base_model"),
        datasets=[dataset] if dataset else None, license=base.get("license"),
        language=base.get("language"), pipeline_tag="text-classification", library_name="transformers",
        tags=["sentune", "text-classification"],
        eval_results=results or None)
    body = card_body(name, cfg, manifest, model_cfg, base_spec, base, results)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def card_body(name: str, cfg: dict, manifest: dict, model_cfg: dict, base_spec: str, base: dict,
              results: list) -> str:
    labels = manifest.get("label_names") or list(model_cfg.get("id2label", {}).values())
    parts = [f"# {md(name)}\n\nA text classifier ({', '.join(md(label) for label in labels)}) fine-tuned from "
             f"`{public_name(base_spec).replace('`', '')}` with "
             f"sentune {manifest.get('versions', {}).get('sentune', '')}.",
             "## Results\n\nThe selected weights, scored once on each data set.\n\n" + results_table(results),
             recipe_section(cfg, manifest), data_section(manifest), calibration_section(model_cfg, results),
             long_text_section(model_cfg), usage_section(), limitations_section(cfg, base)]
    return "\n\n".join(parts) + "\n"


def recipe_section(cfg: dict, manifest: dict) -> str:
    m, t = cfg["model"], cfg["train"]
    run = len([h for h in (manifest.get("state") or {}).get("history") or []]) or (manifest.get("state") or {}).get(
        "epoch")
    selection = (f"the epoch with the best {manifest.get('selected_on', t['select_on'])} "
                 f"{manifest.get('select_metric', t['select_metric'])} (epoch {manifest.get('best_epoch')})")
    if manifest.get("selected_on", t["select_on"]) == "test":
        selection += "; **selected on the test set**, so the test score is optimistic"
    rows = [("frozen", f"embeddings + the bottom {m['freeze_layers']} encoder layers"),
            ("learning rates", f"encoder {t['lr_encoder']}, head {t['lr_head']} (AdamW, weight decay "
                               f"{t['weight_decay']}, layer decay {t['layer_decay']}, scheduler {t['scheduler']})"),
            ("precision", precision_name(manifest.get("precision"), t["precision"])),
            ("epochs", f"{run} of at most {t['epochs']} (patience {t['patience']})"),
            ("batch size", f"{t['batch_size']} x {t['grad_accum']} accumulation"),
            ("selection", selection), ("seed", t["seed"])]
    return "## Training recipe\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def precision_name(used: str | None, asked: str) -> str:
    """What the manifest recorded (Accelerate says "no" for fp32), else the flag."""
    if used is None:
        return asked
    return "fp32" if used == "no" else used


def data_section(manifest: dict) -> str:
    rows = ["| split | source | rows | label counts | fingerprint |", "|---|---|---:|---|---|"]
    for split, d in (manifest.get("data") or {}).items():
        counts = ", ".join(f"{md(k)} {v:,}" if isinstance(v, int) else f"{md(k)} {md(v)}"
                           for k, v in (d.get("label_counts") or {}).items())
        rows.append(f"| {split} | {md(public_name(d.get('source')))} | {d.get('rows', 0):,} | {counts} | "
                    f"`{str(d.get('fingerprint', ''))[:16]}` |")
    return "## Data\n\n" + "\n".join(rows)


def calibration_section(model_cfg: dict, results: list) -> str:
    s = ModelSettings.from_dict(model_cfg.get(KEY))
    ece = next((r.metric_value for r in results if r.metric_type == "ece"), None)
    text = "## Calibration and thresholds\n\n"
    if s.temperature:
        text += f"Temperature scaling: logits are divided by T = {s.temperature:.4f} (`sentune calibrate`). "
    else:
        text += "Not calibrated (`sentune calibrate` fits a temperature on validation data). "
    if ece is not None:
        text += f"Test ECE of the weights at the end of training: {ece:.4f}. "
    if model_cfg.get("problem_type") == "regression":
        text += "Regression: the output is the predicted value (no thresholds)."
    elif s.thresholds:  # multi-label models: {"global": t, "per_label": {label: t}}
        per = s.thresholds.get("per_label") or {}
        text += (f"Decision thresholds (tuned on validation): global {s.thresholds.get('global', 0.5):.2f}"
                 + (f"; per label {min(per.values()):.2f}..{max(per.values()):.2f}" if per else "") + ".")
    elif model_cfg.get("problem_type") == "multi_label_classification":
        text += "Decision: every label whose probability reaches 0.5."
    else:
        text += "Decision: the most probable label (no thresholds)."
    return text


def long_text_section(model_cfg: dict) -> str:
    s = ModelSettings.from_dict(model_cfg.get(KEY))
    length = s.max_length or "?"
    if s.windows:
        return (f"## Long texts\n\nLong texts are read in windows of {length} tokens (stride "
                f"{s.stride}, at most {s.max_windows} windows), pooled by `{s.pool}` "
                "(`--long-text windows`), in training, predict and serve alike.")
    kept = {"head": "the first tokens", "tail": "the last tokens",
            "head+tail": f"the first {s.head_tokens} and the last remaining tokens"}.get(s.truncation, s.truncation)
    return (f"## Long texts\n\nInputs are cut to {length} tokens (special tokens included), "
            f"keeping {kept} (`--truncation {s.truncation}`); predict, serve and explain do the same."
            + (" Tweets are normalized (`@user`, `http`) first." if s.normalize_tweets else ""))


def usage_section() -> str:
    return ("## How to use\n\n```python\nfrom transformers import pipeline\n\n"
            "clf = pipeline(\"text-classification\", model=\"PATH_OR_REPO\")\nclf(\"what a great day\")\n```\n\n"
            "```bash\nsentune predict PATH \"what a great day\"        # JSON lines; --input FILE for many\n"
            "sentune explain PATH \"what a great day\"        # which words made the label\n"
            "sentune serve PATH                             # web page, POST /predict, /explain\n```")


def limitations_section(cfg: dict, base: dict) -> str:
    languages = base.get("language")
    language = ", ".join(languages) if isinstance(languages, list) else languages
    source = public_name(cfg["data"].get("dataset") or cfg["data"].get("train_file")).replace("`", "")
    other_languages = f", and on languages other than {language}" if language else ""
    return (f"## Limitations\n\nTrained on `{source}` only: expect lower accuracy on other kinds of text "
            f"(other domains, lengths or time periods){other_languages}. "
            "Scores are the model's confidence, not certainty; check the calibration above before thresholding "
            "them. Labels inherit the biases of the training annotations.")


def write_card(run_dir: Path) -> Path:
    """Render the card into `run_dir/best/README.md` (atomic: the old card stays until the new one is whole)."""
    path = Path(run_dir) / "best" / CARD
    atomic_write_text(path, str(build_card(run_dir)))
    return path


def update_card(model_dir: str | Path, metrics: dict) -> Path:
    """Add (or replace) one evaluation's results in MODEL_DIR/README.md: metadata and the results table."""
    from huggingface_hub import ModelCard, ModelCardData

    path = Path(model_dir) / CARD
    if path.is_file():
        card = ModelCard.load(path)
    else:  # any save_pretrained folder: start a card holding only what is known
        data = ModelCardData(pipeline_tag="text-classification", library_name="transformers",
                             tags=["sentune", "text-classification"], model_name=Path(model_dir).resolve().name)
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {data.model_name}\n\n## Results\n\n{results_table([])}\n")
    source, split = metrics["data"]["source"], metrics["data"]["split"]
    new = eval_results(metrics, card.data.model_name or Path(model_dir).name, source, split, metrics["n"])
    names = {(r.dataset_name, r.dataset_split) for r in new}
    kept = [r for r in card.data.eval_results or [] if (r.dataset_name, r.dataset_split) not in names]
    card.data.eval_results = kept + new
    card.data.model_name = card.data.model_name or Path(model_dir).resolve().name
    card.text = redraw_results(card.text, card.data.eval_results)
    atomic_write_text(path, str(card))
    return path


def redraw_results(text: str, results: list) -> str:
    table = results_table(results)
    if RESULTS_BEGIN in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_BEGIN, 1)
        return head + table + rest.split(RESULTS_END, 1)[1]
    return text.rstrip() + "\n\n## Results\n\n" + table + "\n"
