"""The README documents exactly the settings there are: every field of service.settings.Settings
is named as its TUNEDOCK_ variable, and every TUNEDOCK_ variable the README names is a field."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from service.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_names_every_setting_and_no_other() -> None:
    fields = {f.name for f in msgspec.structs.fields(Settings)}
    undocumented = sorted(f for f in fields if f"TUNEDOCK_{f.upper()}" not in README)
    assert undocumented == [], f"settings missing from the README: {undocumented}"
    named = set(re.findall(r"TUNEDOCK_([A-Z0-9_]+)", README))
    unknown = sorted(n for n in named if n.lower() not in fields)
    assert unknown == [], f"the README names variables no setting reads: {unknown}"
