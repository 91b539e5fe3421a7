"""string_check and text_similarity, each a score in [0, 1], computed by the libraries that
define the metrics: rapidfuzz (fuzzy_match), sacrebleu (bleu), nltk (gleu, meteor),
rouge-score (rouge_1…rouge_5, rouge_l).

METEOR's synonym stage reads WordNet, which nltk does not ship and this air-gapped server cannot
download: with WordNet data installed (NLTK_DATA) it is used; without it METEOR matches exact
words and stems only, and the run's `scores` say so (`meteor_synonyms: false`). `cosine` needs an
embedding model, which this server does not configure: validating a grader with it is refused."""

from __future__ import annotations

import functools
from typing import Any

from service.contracts.graders import SimilarityMetric, StringOperation

UNSUPPORTED: dict[str, str] = {
    "cosine": "evaluation_metric 'cosine' needs an embedding model, and this server has none "
              "configured; use fuzzy_match, bleu, gleu, meteor or rouge_*",
}


def string_check(value: str, reference: str, operation: StringOperation) -> float:
    if operation == "eq":
        return float(value == reference)
    if operation == "ne":
        return float(value != reference)
    if operation == "like":
        return float(reference in value)
    return float(reference.lower() in value.lower())  # ilike


def _words(text: str) -> list[str]:
    return text.split()


class _NoWordNet:
    """What nltk's METEOR asks of WordNet, answering that no word has synonyms."""

    @staticmethod
    def synsets(*_args: Any, **_kwargs: Any) -> list:
        return []


@functools.cache
def _wordnet() -> Any:
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet
    except LookupError:
        return None


@functools.cache
def _rouge(metric: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([metric], use_stemmer=False)


def text_similarity(value: str, reference: str, metric: SimilarityMetric) -> tuple[float, dict[str, Any]]:
    """The score and what else the run should report about how it was made."""
    if metric in UNSUPPORTED:
        raise ValueError(UNSUPPORTED[metric])
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.ratio(value, reference) / 100.0, {}
    if metric == "bleu":
        import sacrebleu

        return min(1.0, sacrebleu.sentence_bleu(value, [reference]).score / 100.0), {}
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([_words(reference)], _words(value))), {}
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        wordnet = _wordnet()
        score = meteor_score([_words(reference)], _words(value), wordnet=wordnet or _NoWordNet())
        return float(score), {"meteor_synonyms": wordnet is not None}
    name = "rougeL" if metric == "rouge_l" else "rouge" + metric.removeprefix("rouge_")
    return float(_rouge(name).score(reference, value)[name].fmeasure), {}
