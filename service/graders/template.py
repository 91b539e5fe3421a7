"""OpenAI's grader templates: `{{ namespace.path }}` with namespace `item` (the dataset row) or
`sample` (`output_text`, and `output_json` when the model's answer is JSON), the path in JSON-path
style (`item.answer`, `item.choices[0].text`). A string value renders as itself, anything else as
JSON. A variable that does not resolve is an `invalid_variable_error` (the reward is then 0)."""

from __future__ import annotations

import json
import re
from typing import Any

_VAR = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_PATH = re.compile(r"^(item|sample)((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\])*)$")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


class TemplateError(ValueError):
    """A template names a variable it cannot have (validation) or that is not there (a run)."""


def variables(template: str) -> list[str]:
    """The variables a template names; TemplateError for one that is not item.… or sample.…"""
    found = []
    for raw in _VAR.findall(template):
        if not _PATH.match(raw):
            raise TemplateError(f"{{{{{raw}}}}} is not a variable: write {{{{item.field}}}} or "
                                "{{sample.output_text}} (namespaces: item, sample)")
        found.append(raw)
    return found


def sample_namespace(model_sample: str) -> dict[str, Any]:
    sample: dict[str, Any] = {"output_text": model_sample}
    try:
        sample["output_json"] = json.loads(model_sample)
    except ValueError:
        pass
    return sample


def lookup(path: str, scope: dict[str, Any]) -> Any:
    m = _PATH.match(path)
    if m is None:
        raise TemplateError(f"{{{{{path}}}}} is not a variable")
    value: Any = scope.get(m.group(1))
    for key, index in _STEP.findall(m.group(2)):
        if key and isinstance(value, dict) and key in value:
            value = value[key]
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            raise TemplateError(f"{{{{{path}}}}} is not in the {m.group(1)}")
    if value is None and m.group(1) == "item" and "item" not in scope:
        raise TemplateError(f"{{{{{path}}}}}: the run has no item")
    return value


def render(template: str, scope: dict[str, Any]) -> str:
    def one(m: re.Match[str]) -> str:
        value = lookup(m.group(1), scope)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _VAR.sub(one, template)


def item_fields(templates: list[str]) -> tuple[str, ...]:
    """The top-level item fields the templates read (`{{item.answer.text}}` reads `answer`)."""
    found: list[str] = []
    for template in templates:
        for path in variables(template):
            m = _PATH.match(path)
            step = _STEP.match(m.group(2)) if m and m.group(1) == "item" else None
            if step and step.group(1) and step.group(1) not in found:
                found.append(step.group(1))
    return tuple(found)
