"""`sentune select`: the unlabelled texts most worth labelling next (active learning, one round).

Strategies: `entropy` and `margin` take the texts the model is least sure of (tasks.uncertainty); `random`
a seeded random sample (the baseline every strategy must beat); `diverse` clusters the 5 x budget most
uncertain texts (TF-IDF + k-means, scikit-learn) and takes the most uncertain of each cluster, so one batch
does not spend its budget on near-copies of one hard text.

Writes FILE.csv (rank, row in the unlabelled file, text, score, the model's guess, an empty `label` column to
fill in: `sentune train --add-file FILE.csv` reads it back) and FILE.labelstudio.json beside it (Label Studio's
task import format, with the model's guess as a pre-annotation).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from sentune import tasks
from sentune.atomic import atomic_write_text
from sentune.data.edits import safe_cell
from sentune.data.readers import read_texts
from sentune.errors import ConfigError, DataError

STRATEGIES = ("entropy", "margin", "random", "diverse")
CANDIDATES = 5  # diverse: clusters are drawn from this many times the budget of the most uncertain texts


def choose(task: str, scores: np.ndarray, texts: list[str], budget: int, strategy: str,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(chosen row indices, most worth first; every row's worth) for one labelling round."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    worth = tasks.get_task(task).uncertainty(scores, strategy)
    budget = min(budget, len(texts))
    if strategy == "random":
        return np.random.default_rng(seed).choice(len(texts), size=budget, replace=False), worth
    order = np.argsort(-worth, kind="stable")
    if strategy != "diverse":
        return order[:budget], worth
    return _diverse(order[:CANDIDATES * budget], worth, texts, budget, seed), worth


def _diverse(candidates: np.ndarray, worth: np.ndarray, texts: list[str], budget: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(candidates) <= budget:
        return candidates
    vectors = TfidfVectorizer().fit_transform([texts[i] for i in candidates])
    clusters = KMeans(n_clusters=budget, n_init=3, random_state=seed).fit_predict(vectors)
    picked = [max(candidates[clusters == c], key=lambda i: worth[i]) for c in range(budget)
              if (clusters == c).any()]
    return np.array(sorted(picked, key=lambda i: -worth[i]), dtype=np.int64)


def select(model_dir: str, unlabeled: str, budget: int, strategy: str = "entropy", output: str | None = None,
           text_column: str = "text", seed: int = 0, batch_size: int = 32) -> dict:
    """Choose `budget` texts of `unlabeled` for `model_dir` and write the CSV and the Label Studio file."""
    from sentune.inference.classifier import Classifier

    if budget < 1:
        raise ConfigError("--budget must be at least 1")
    rows = list(read_texts(unlabeled, text_column))
    if not rows:
        raise DataError(f"{unlabeled}: no texts to choose from")
    clf = Classifier.load(model_dir)
    texts = [row["text"] for row in rows]
    scores = clf.predict_proba(texts, batch_size=batch_size)
    chosen, worth = choose(clf.task, scores, texts, budget, strategy, seed)
    guesses = [_guess(p) for p in clf.to_predictions(scores[chosen])]
    picked = [{"rank": r, "row": int(i), "text": texts[i], "score": round(float(worth[i]), 6), "predicted": g}
              for r, (i, g) in enumerate(zip(chosen, guesses, strict=True), start=1)]
    out = Path(output or f"{Path(unlabeled).name.split('.')[0]}-selected.csv")  # pool.jsonl.gz -> pool-selected.csv
    studio = out.with_suffix(".labelstudio.json")
    atomic_write_text(out, selection_csv(picked))
    atomic_write_text(studio, json.dumps(label_studio_tasks(picked), ensure_ascii=False, indent=1))
    return {"csv": str(out), "labelstudio": str(studio), "chosen": len(picked), "of": len(texts),
            "strategy": strategy}


def _guess(prediction: dict):
    """The model's answer as a label column holds it: a name, names, or a value."""
    if "labels" in prediction:
        return [item["label"] for item in prediction["labels"]]
    return prediction.get("label", prediction.get("value"))


def selection_csv(picked: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", "row", "text", "score", "predicted", "label"])
    for p in picked:
        writer.writerow([safe_cell(p[c]) for c in ("rank", "row", "text", "score", "predicted")] + [""])
    return buffer.getvalue()


def label_studio_tasks(picked: list[dict]) -> list[dict]:
    """Label Studio's JSON task import: `data` per task (text, row, score), the model's guess as a prediction
    for a <Choices name="label" toName="text"> labelling config."""
    out = []
    for p in picked:
        choices = p["predicted"] if isinstance(p["predicted"], list) else [str(p["predicted"])]
        out.append({"data": {"text": p["text"], "row": p["row"], "score": p["score"]},
                    "predictions": [{"model_version": "sentune", "score": p["score"], "result": [
                        {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": choices}}]}]})
    return out
