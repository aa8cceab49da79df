"""Word attributions on a terminal: each word on a background whose hue is the sign and depth the strength.

Blue supports the explained label, orange opposes it (a pair that colour-blind readers tell apart, and
that does not suggest "positive/negative sentiment" the way green/red would). The strongest words are
also listed with their numbers, so the view reads without colour too.
"""

from __future__ import annotations

import click

# xterm-256 backgrounds from faint to strong; dark text stays readable on all of them
SUPPORT = (189, 153, 117, 75)
OPPOSE = (230, 223, 216, 209)
TOP_WORDS = 3


def shade(score: float, scale: float) -> int | None:
    """The background colour of one word, or None when it is too weak to mark (under 10 % of the strongest)."""
    strength = abs(score) / scale if scale > 0 else 0.0
    if strength < 0.1:
        return None
    palette = SUPPORT if score > 0 else OPPOSE
    return palette[min(int(strength * len(palette)), len(palette) - 1)]


def coloured_text(words: list[str], scores: list[float | None]) -> str:
    scale = max((abs(s) for s in scores if s is not None), default=0.0)
    out = []
    for word, score in zip(words, scores, strict=True):
        if score is None:
            out.append(click.style(word, dim=True))  # cut by truncation: the model never saw it
            continue
        bg = shade(score, scale)
        out.append(click.style(word, bg=bg, fg="black") if bg is not None else word)
    return " ".join(out)


def top_words(words: list[str], scores: list[float | None], sign: int) -> str:
    ranked = sorted(((s * sign, w) for w, s in zip(words, scores, strict=True) if s is not None and s * sign > 0),
                    reverse=True)[:TOP_WORDS]
    return ", ".join(f"{w} {s * sign:+.3f}" for s, w in ranked) or "none"


def colour_lines(record: dict) -> list[str]:
    """The lines `sentune explain` prints on a terminal for one text (each explained label of a multi-label one)."""
    lines = []
    for item in record.get("explanations", [record]):
        head = click.style(item["label"], bold=True)
        if "score" in item:
            head += f" ({100 * item['score']:.1f}%)"
        change = item["value"] - item["baseline_value"]
        lines.append(f"{head}  f(text) - f(baseline) = {change:+.3f}, convergence delta {item['delta']:+.4f}")
        words, scores = record["words"], item["scores"]
        lines.append(coloured_text(words, scores))
        lines.append(click.style(f"  for: {top_words(words, scores, 1)} | against: {top_words(words, scores, -1)}",
                                 dim=True))
    return [*lines, ""]
