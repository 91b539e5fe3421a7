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


def test_cosine_of_embeddings_against_numpy() -> None:
    import numpy as np

    from service.graders.embeddings import EmbeddingsUnavailable, cosine

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=64), rng.normal(size=64)
    assert cosine(list(a), list(b)) == pytest.approx(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    assert cosine([1.0, 2.0], [2.0, 4.0]) == pytest.approx(1.0) and cosine([1.0, 0.0], [-1.0, 0.0]) == -1.0
    assert cosine([0.0, 0.0], [1.0, 2.0]) == 0.0  # an all-zero vector shares nothing, and is no error
    with pytest.raises(EmbeddingsUnavailable, match="vectors of 2 and 3 numbers"):
        cosine([1.0, 2.0], [1.0, 2.0, 3.0])


async def test_cosine_without_an_embedding_server_scores_zero_with_the_reason(tmp_path) -> None:  # noqa: ANN001
    from service.contracts import graders as w
    from service.graders.service import GraderService
    from service.settings import Settings

    grader = w.TextSimilarityGrader(name="c", input="{{sample.output_text}}", reference="a b",
                                    evaluation_metric="cosine")
    found = await GraderService(Settings(data_dir=str(tmp_path)))._run_checked(
        w.RunGraderRequest(grader=grader, model_sample="a b"))
    assert found.reward == 0 and found.metadata.errors.other_error
    assert "TUNEDOCK_EMBEDDING_URL" in found.metadata.scores["error"]
