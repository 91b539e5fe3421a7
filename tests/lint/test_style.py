"""Unused and undefined names, and import order, across the code (ruff, configured in
pyproject.toml: pyflakes' F rules and isort's I001; nothing about formatting)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_unused_or_undefined_names_and_imports_in_order() -> None:
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,I001", "--output-format",
                        "concise", "service", "serving", "tests", "clients", "bench"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\nfix with: ruff check --select F,I001 --fix ."
