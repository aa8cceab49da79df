"""The README's flag table must list every train flag, with its current default."""

from __future__ import annotations

from pathlib import Path

from sentune import config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lists_every_flag_with_its_default():
    text = README.read_text(encoding="utf-8")
    for _, f, _ in config.iter_fields():
        if f.name in ("preset", "resume"):
            continue
        flag = f"`--{f.name.replace('_', '-')}"
        assert flag in text, f"README flag table lacks {flag}"
        row = next(line for line in text.splitlines() if line.startswith(f"| {flag}"))
        assert f"`{f.default}`" in row, f"README default of {flag} is stale"
