"""The graders' pure parts: a multi grader's formula runs nothing but arithmetic, and templates
resolve OpenAI's namespaces (and only those)."""

from __future__ import annotations

import pytest

from service.graders import formula
from service.graders.template import TemplateError, render, sample_namespace, variables


def test_the_formula_is_arithmetic_over_grader_names() -> None:
    tree = formula.parse("0.5 * sim + 0.5 * max(exact, 0) ^ 2", ["sim", "exact"])
    assert formula.evaluate(tree, {"sim": 0.4, "exact": 1.0}) == pytest.approx(0.7)
    for bad in ('__import__("os").system("true")', "sim.real", "[sim]", "sim if exact else 1",
                "lambda: 1", "other + 1", '"text"', "open('x')", "(sim := 1)"):
        with pytest.raises(formula.FormulaError):
            formula.parse(bad, ["sim", "exact"])
    # Arithmetic that fails is the formula's error (the run reports formula_parse_error), not a crash.
    for text, scores in (("sim / exact", {"sim": 1.0, "exact": 0.0}), ("exp(sim)", {"sim": 1e6})):
        with pytest.raises(formula.FormulaError):
            formula.evaluate(formula.parse(text, ["sim", "exact"]), scores)


def test_templates_resolve_item_and_sample_paths() -> None:
    scope = {"sample": sample_namespace('{"city": "Paris", "n": [1, 2]}'), "item": {"a": {"b": ["x", "y"]}}}
    assert render("{{ item.a.b[1] }}/{{sample.output_json.city}}", scope) == "y/Paris"
    assert render("{{sample.output_json.n}}", scope) == "[1, 2]"
    assert variables("{{item.q}} and {{ sample.output_text }}") == ["item.q", "sample.output_text"]
    for bad in ("{{label}}", "{{ items.q }}", "{{item.q.__class__()}}"):
        with pytest.raises(TemplateError):
            variables(bad)
    with pytest.raises(TemplateError):
        render("{{item.missing}}", scope)
    with pytest.raises(TemplateError):
        render("{{sample.output_json.city}}", {"sample": sample_namespace("not json")})


def test_meteor_without_wordnet_says_it_matched_words_and_stems_only(tmp_path) -> None:  # noqa: ANN001
    from service.graders import metrics

    sample, label = "the automobile is very quick", "the car is very fast"
    with_synonyms, said = metrics.text_similarity(sample, label, "meteor", "/usr/share/wordnet")
    assert said == {"meteor_synonyms": True}
    without, said = metrics.text_similarity(sample, label, "meteor", str(tmp_path))  # an empty folder
    assert said == {"meteor_synonyms": False} and without < with_synonyms
