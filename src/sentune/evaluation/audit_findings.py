"""What `sentune audit` finds, from out-of-fold scores and frozen-layer features: one list of findings.

- `label`: cleanlab's Datalab on the out-of-fold scores (confident learning; for multi-label per label, for
  regression a residual-based quality score), ranked by how unlikely the given label is.
- `duplicate`: training rows whose normalised text (`data.text.dedupe_key`) equals an earlier one's, or whose
  features are nearer than `near` times the median nearest-neighbour distance (cleanlab's near-duplicate rule;
  sklearn NearestNeighbors, cosine); `conflict` when their labels disagree.
- `leak`: training rows with such a twin in validation or test.
- `outlier`: Datalab's outlier check on the training features.

Each finding names its row as `split` + `row` (0-based in its file) and carries `given`, `suggested`, `score`
(higher: more likely a real issue); `rank_findings` orders them for issues.jsonl.
"""

from __future__ import annotations

import warnings

import numpy as np

from sentune import tasks
from sentune.data.text import dedupe_key

KINDS = ("label", "duplicate", "leak", "outlier")
NEAR = 0.13  # cleanlab Datalab's near-duplicate threshold: a fraction of the median nearest-neighbour distance


class Audited:
    """One split as the audit sees it: texts, encoded labels, labels as people read them (`shown`), each
    example's origin (file split, 0-based row) and its frozen-layer features."""

    def __init__(self, texts: list[str], labels: list, shown: list, origins: list, features: np.ndarray):
        self.texts, self.labels, self.shown, self.origins, self.features = texts, labels, shown, origins, features


def finding(kind: str, part: Audited, i: int, *, suggested, score: float, given=None, **extra) -> dict:
    split, row = part.origins[i]
    given = part.shown[i] if given is None else given
    return {"kind": kind, "split": split, "row": int(row), "text": part.texts[i], "given": given,
            "suggested": suggested, "score": round(float(score), 6), **extra}


def _datalab(task: str, labels: list):
    from cleanlab import Datalab

    return Datalab(data={"label": labels}, label_name="label", task=tasks.get_task(task).cleanlab_task,
                   verbosity=0)


def label_findings(task: str, train: Audited, scores: np.ndarray, names: list[str],
                   scale: dict | None) -> tuple[list, str | None]:
    """Likely label errors: Datalab's label issues, given vs the label the out-of-fold scores suggest; and why
    there are none when cleanlab could not check the labels at all (said in the report, not a crash)."""
    kind = tasks.get_task(task)
    labels, preds = kind.cleanlab_inputs(train.labels, scores)
    lab = _datalab(task, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about classes it finds rare; the report shows balance
        lab.find_issues(pred_probs=preds, issue_types={"label": {}})
    try:
        issues = lab.get_issues("label")
    except ValueError:
        return [], ("cleanlab could not check the labels: it needs every class (multi-label: every label) both "
                    "present and absent among the training rows; duplicates, leaks and outliers are still checked")
    out = []
    for i in np.flatnonzero(issues["is_label_issue"].to_numpy()):
        given = kind.label_text(_plain(issues["given_label"].iloc[i]), names, scale)
        suggested = kind.label_text(_plain(issues["predicted_label"].iloc[i]), names, scale)
        extra = {"labels": sorted(set(given) ^ set(suggested))} if isinstance(given, list) else {}
        out.append(finding("label", train, int(i), given=given, suggested=suggested,
                           score=1.0 - float(issues["label_score"].iloc[i]), **extra))
    return out, None


def _plain(value):
    if isinstance(value, list | tuple | np.ndarray):
        return [int(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def outlier_findings(task: str, train: Audited) -> list:
    """Training rows far from the rest in feature space (Datalab's kNN outlier score on the features)."""
    if len(train.texts) < 3:
        return []
    lab = _datalab(task, tasks.get_task(task).cleanlab_inputs(train.labels, np.zeros((len(train.labels), 1)))[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab.find_issues(features=train.features, issue_types={"outlier": {}})
    issues = lab.get_issues("outlier")
    return [finding("outlier", train, int(i), suggested=None,
                    score=1.0 - float(issues["outlier_score"].iloc[i]))
            for i in np.flatnonzero(issues["is_outlier_issue"].to_numpy())]


def duplicate_findings(train: Audited, others: list[Audited]) -> list:
    """Exact (normalised text) and near (features) twins: within train (`duplicate`, each later copy against
    the first) and between train and each other split (`leak`, on the training row)."""
    radius = _radius(train.features)
    out = [finding("duplicate", train, j, suggested=None, score=score, other=_where(train, i),
                   conflict=train.shown[i] != train.shown[j], similarity=kind)
           for i, j, score, kind in _pairs(train, train, radius)]
    for part in others:
        out += [finding("leak", train, i, suggested=None, score=score, other=_where(part, j),
                        conflict=train.shown[i] != part.shown[j], similarity=kind)
                for i, j, score, kind in _pairs(train, part, radius)]
    return out


def _where(part: Audited, i: int) -> dict:
    split, row = part.origins[i]
    return {"split": split, "row": int(row), "given": part.shown[i]}


def _radius(features: np.ndarray) -> float:
    """Cosine distance below which two texts count as near duplicates: NEAR x the median nearest-neighbour
    distance among training texts (so the bar follows how spread out this model's features are)."""
    from sklearn.neighbors import NearestNeighbors

    if len(features) < 3:
        return 0.0
    nn = NearestNeighbors(n_neighbors=2, metric="cosine").fit(features)
    dist, _ = nn.kneighbors(features)
    return NEAR * float(np.median(dist[:, 1]))


def _pairs(train: Audited, part: Audited, radius: float):
    """(train index, part index, score, exact|near) for each twin; within train only later copies (j > i)."""
    same = train is part
    first: dict[str, int] = {}
    for i, text in enumerate(train.texts):
        first.setdefault(dedupe_key(text), i)
    named = set()  # rows of `part` with an exact twin: they need no near one
    for j, text in enumerate(part.texts):
        i = first.get(dedupe_key(text), -1)
        if i >= 0 and (not same or i < j):
            named.add(j)
            yield i, j, 1.0, "exact"
    yield from _near(train, part, radius, named, same)


def _near(train: Audited, part: Audited, radius: float, named: set, same: bool):
    from sklearn.neighbors import NearestNeighbors

    if radius <= 0 or not len(part.texts):
        return
    nn = NearestNeighbors(radius=radius, metric="cosine").fit(train.features)
    dist, idx = nn.radius_neighbors(part.features)
    for j, (ds, ids) in enumerate(zip(dist, idx, strict=True)):
        if j in named:
            continue
        twins = [(d, int(i)) for d, i in zip(ds, ids, strict=True) if not (same and i >= j)]
        if twins:  # the nearest one is enough to name the row
            d, i = min(twins)
            yield i, j, 1.0 - float(d), "near"


def rank_findings(findings: list[dict]) -> list[dict]:
    """Kinds in KINDS order; within a kind conflicting labels first, then by score, most likely first."""
    return sorted(findings, key=lambda f: (KINDS.index(f["kind"]), not f.get("conflict", False), -f["score"]))
