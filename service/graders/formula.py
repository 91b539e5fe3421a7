"""A multi grader's `calculate_output`: arithmetic over the named graders' scores, parsed with
Python's own parser and evaluated from an allow-list of nodes, so nothing else can run."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil,
    "exp": math.exp, "sqrt": math.sqrt, "log": math.log,
}

_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Load, *_BINARY, *_UNARY)


class FormulaError(ValueError):
    pass


def parse(formula: str, names: Iterable[str]) -> ast.Expression:
    """The formula's tree, or FormulaError naming what is wrong (an unknown name, a construct
    that is not arithmetic)."""
    try:
        # OpenAI writes powers with ^; as Python's ^ (xor) it would bind looser than + and *.
        tree = ast.parse(formula.strip().replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"calculate_output is not a formula: {exc.msg} at column {exc.offset}") from None
    known = set(names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in known and node.id not in _FUNCTIONS:
                raise FormulaError(f"calculate_output names {node.id!r}, which is not one of the graders "
                                   f"({', '.join(sorted(known))})")
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS) or node.keywords:
                raise FormulaError("calculate_output may call only " + ", ".join(_FUNCTIONS))
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float) or isinstance(node.value, bool):
                raise FormulaError(f"calculate_output has a constant that is not a number: {node.value!r}")
        elif not isinstance(node, _ALLOWED):
            raise FormulaError(f"calculate_output may hold numbers, grader names, + - * / ^ and "
                               f"function calls, not {type(node).__name__}")
    return tree


def evaluate(tree: ast.Expression, scores: dict[str, float]) -> float:
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return float(scores[node.id])
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.Call):
            return float(_FUNCTIONS[node.func.id](*(ev(a) for a in node.args)))  # type: ignore[union-attr]
        raise FormulaError(type(node).__name__)

    try:
        value = ev(tree)
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise FormulaError(f"calculate_output failed: {exc}") from None
    if math.isnan(value) or math.isinf(value):
        raise FormulaError("calculate_output is not a finite number for these scores")
    return value
