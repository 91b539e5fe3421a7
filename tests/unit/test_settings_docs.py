"""The README documents exactly the settings there are: its configuration tables are what
`python -m service.settings` writes from the docs on each field, and every TUNEDOCK_ variable the
README names anywhere is a field."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec

from service.settings import ROLES, Settings, markdown

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_configuration_tables_are_generated_from_the_settings() -> None:
    found = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", README, re.S)
    assert found, "the README has no settings:begin/end markers"
    assert found.group(1) == markdown(), "run `python -m service.settings` and paste it into the README"


def test_every_setting_is_documented_where_it_is_declared() -> None:
    hints = typing.get_type_hints(Settings, include_extras=True)
    for field in msgspec.structs.fields(Settings):
        meta = [m for m in typing.get_args(hints[field.name])[1:] if isinstance(m, msgspec.Meta)]
        assert meta and meta[0].description and meta[0].extra["role"] in ROLES, field.name


def test_readme_names_no_variable_that_no_setting_reads() -> None:
    fields = {f.name for f in msgspec.structs.fields(Settings)}
    named = set(re.findall(r"TUNEDOCK_([A-Z0-9_]+)", README))
    unknown = sorted(n for n in named if n.lower() not in fields)
    assert unknown == [], f"the README names variables no setting reads: {unknown}"
