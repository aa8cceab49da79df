"""The project's no-cycles import contract (pyproject.toml, run by `make lint`) fails on a deliberate cycle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def no_cycles_contract() -> dict:
    """The contract exactly as the project declares it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["id"] == "no-cycles")


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / "cyclepkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def lint(tmp_path: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contract type and settings, pointed at the temporary package."""
    contract = no_cycles_contract()
    lines = ["[importlinter]", "root_package = cyclepkg", "", "[importlinter:contract:no-cycles]",
             f"name = {contract['name']}", f"type = {contract['type']}", "ancestors = cyclepkg"]
    (tmp_path / "lint.ini").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = os.environ | {"PYTHONPATH": str(tmp_path)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(tmp_path / "lint.ini"), "--no-cache"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_cycle_across_subpackages_fails_the_check(tmp_path):
    # train.loop -> train.finish -> evaluation.score -> train.loop: a cycle through two sibling packages,
    # with a lazy (function-level) import, the kind the removed loop <-> finish_tasks cycle used
    write_package(tmp_path, {
        "__init__.py": "",
        "train/__init__.py": "",
        "train/loop.py": "from cyclepkg.train import finish\n",
        "train/finish.py": "def f():\n    from cyclepkg.evaluation import score\n",
        "evaluation/__init__.py": "",
        "evaluation/score.py": "import cyclepkg.train.loop\n",
    })
    broken = lint(tmp_path)
    assert broken.returncode != 0, broken.stdout
    assert "BROKEN" in broken.stdout and "No cycles are allowed in cyclepkg" in broken.stdout

    (tmp_path / "cyclepkg" / "evaluation" / "score.py").write_text("", encoding="utf-8")  # break it
    kept = lint(tmp_path)
    assert kept.returncode == 0, kept.stdout


def test_a_cycle_between_sibling_modules_fails_the_check(tmp_path):
    write_package(tmp_path, {"__init__.py": "", "report.py": "from cyclepkg import plots\n",
                             "plots.py": "def f():\n    from cyclepkg.report import x\n"})
    broken = lint(tmp_path)
    assert broken.returncode != 0 and "No cycles are allowed in cyclepkg" in broken.stdout, broken.stdout
