"""A hyperparameter is declared once (service/contracts/hyperparameters.py, Hyperparameters): the README's
table, the /v1 create body's extra fields and `GET /hyperparameters` are derived from it, so a
knob added there appears in all of them with the same bounds, default and meaning."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec
import pytest

from service import openai_types as o
from service.contracts import schema as s
from service.contracts.docs import hyperparameters_markdown, reinforcement_markdown
from service.jobs.routes import HYPERPARAMETERS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
NATIVE = [f.name for f in msgspec.structs.fields(s.Hyperparameters)]


@pytest.mark.parametrize(("marker", "written"), [("hyperparameters", hyperparameters_markdown),
                                                 ("rft-hyperparameters", reinforcement_markdown)])
def test_the_readme_tables_are_written_from_the_declaration(marker: str, written) -> None:  # noqa: ANN001
    found = re.search(rf"<!-- {marker}:begin -->\n(.*?)<!-- {marker}:end -->", README, re.S)
    assert found, f"the README has no {marker}:begin/end markers"
    assert found.group(1) == written(), \
        "run `python -m service.contracts.docs` and paste it into the README"


def test_every_hyperparameter_says_what_it_means() -> None:
    assert list(HYPERPARAMETERS["properties"]) == NATIVE
    missing = [n for n, p in HYPERPARAMETERS["properties"].items() if not p.get("description")]
    assert missing == []


def test_v1_takes_every_native_hyperparameter_with_the_same_bounds() -> None:
    v1 = {f.name for f in msgspec.structs.fields(o.FineTuningJobCreate)}
    assert set(NATIVE) - {"n_epochs", "batch_size"} <= v1  # those two ride in OpenAI's own hyperparameters
    native = typing.get_type_hints(s.Hyperparameters, include_extras=True)
    extra = typing.get_type_hints(o.FineTuningJobCreate, include_extras=True)
    for name in o.EXTRA_HYPERPARAMETERS:
        assert extra[name] == native[name] | None, name
    body = {"model": "base", "training_file": "file-a", "max_grad_norm": 0.5, "lora_r": 8}
    hp = msgspec.convert(body, o.FineTuningJobCreate).to_native().hyperparameters
    assert (hp.max_grad_norm, hp.lora_r) == (0.5, 8)
    with pytest.raises(msgspec.ValidationError, match="max_grad_norm"):
        msgspec.convert({**body, "max_grad_norm": 0}, o.FineTuningJobCreate)
