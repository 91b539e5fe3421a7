"""The README's hyperparameter tables, written from their own declarations (type, bounds,
default, meaning): s.Hyperparameters and s.ReinforcementHyperparameters. `python -m
service.contracts.docs` prints them, and tests/unit/test_hyperparameter_docs.py checks the README
against them."""

from __future__ import annotations

import msgspec

from service.contracts.schema import Hyperparameters, ReinforcementHyperparameters

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


def table(struct: type, heading: str = "hyperparameter") -> str:
    props = msgspec.json.schema(struct)["$defs"][struct.__name__]["properties"]
    rows = [f"| `{name}` | {_default(p.get('default'))} | {_values(p)} | {p.get('description', '')} |"
            for name, p in props.items()]
    return "\n".join([f"| {heading} | default | takes | meaning |", "|---|---|---|---|", *rows]) + "\n"


def hyperparameters_markdown() -> str:
    return table(Hyperparameters)


def reinforcement_markdown() -> str:
    return table(ReinforcementHyperparameters, "method.reinforcement.hyperparameters")


if __name__ == "__main__":
    print(hyperparameters_markdown())
    print(reinforcement_markdown(), end="")
