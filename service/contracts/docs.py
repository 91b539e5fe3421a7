"""The README's hyperparameter table, written from s.Hyperparameters' own declaration (type,
bounds, default, meaning): `python -m service.contracts.docs` prints it, and
tests/unit/test_hyperparameter_docs.py checks the README against it."""

from __future__ import annotations

import msgspec

from service.contracts.schema import Hyperparameters

_BOUNDS = (("minimum", "≥ {}"), ("exclusiveMinimum", "> {}"), ("maximum", "≤ {}"),
           ("exclusiveMaximum", "< {}"), ("minItems", "at least {} items"),
           ("maxItems", "at most {} items"))


def _values(prop: dict) -> str:
    """What a field takes, in a few words: its bounds, its choices, "auto" or null."""
    words: list[str] = []
    for branch in prop.get("anyOf", [prop]):
        if "enum" in branch:
            words += [f'`"{v}"`' for v in branch["enum"]]
        elif branch.get("type") == "null":
            words.append("null")
        else:
            kind = branch.get("type", "")
            bounds = [fmt.format(_num(branch[k])) for k, fmt in _BOUNDS if k in branch]
            words.append(" ".join([kind.replace("array", "list") if kind else "", ", ".join(bounds)]).strip())
    return "; ".join(w for w in words if w)


def _num(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value) or "none"
    if value is None:
        return "null"
    return f"`{msgspec.json.encode(value).decode()}`" if not isinstance(value, float) else f"`{value:g}`"


def hyperparameters_markdown() -> str:
    props = msgspec.json.schema(Hyperparameters)["$defs"]["Hyperparameters"]["properties"]
    rows = [f"| `{name}` | {_default(p.get('default'))} | {_values(p)} | {p.get('description', '')} |"
            for name, p in props.items()]
    return "\n".join(["| hyperparameter | default | takes | meaning |", "|---|---|---|---|", *rows]) + "\n"


if __name__ == "__main__":
    print(hyperparameters_markdown(), end="")
