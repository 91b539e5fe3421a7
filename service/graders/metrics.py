"""string_check and text_similarity, each a score in [0, 1], computed by the libraries that
define the metrics: rapidfuzz (fuzzy_match), sacrebleu (bleu), nltk (gleu, meteor),
rouge-score (rouge_1…rouge_5, rouge_l).

METEOR's synonym stage reads WordNet, which nltk does not ship and an air-gapped server cannot
download. It reads the WordNet 3.0 database folder `TUNEDOCK_WORDNET_DIR` (Debian/Ubuntu's
`wordnet-base`: /usr/share/wordnet, which `make test` and the images install; an nltk_data
`corpora/wordnet` folder works too). Without it METEOR matches exact words and stems only, and
the run's `scores` say so (`meteor_synonyms: false`). `cosine` is not here: it compares two
embeddings from an embedding model (embeddings.py)."""

from __future__ import annotations

import functools
import io
import os
import warnings
from typing import Any

from service.contracts.graders import SimilarityMetric, StringOperation


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


# WordNet 3.0's lexicographer files in their numbered order (WordNet's lexnames(5WN)). nltk's
# reader opens this table from the database folder; Debian's wordnet-base does not ship it.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl").split()
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _folder_wordnet(folder: str) -> Any:
    """nltk's WordNet reader on a WordNet 3.0 database folder (data.*, index.*, *.exc)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class FolderWordNet(WordNetCorpusReader):
        def open(self, file: str) -> Any:
            if file == "lexnames":
                return io.StringIO("".join(f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n"
                                           for i, name in enumerate(_LEXNAMES)))
            return super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            return None  # the mapping to nltk's own WordNet is for its multilingual data, unused here

    if folder not in nltk.data.path:
        nltk.data.path.append(folder)  # nltk reads corpora only under its data paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed
        return FolderWordNet(folder, None)


@functools.cache
def _wordnet(folder: str | None) -> Any:
    if folder and os.path.isfile(os.path.join(folder, "data.noun")):
        return _folder_wordnet(folder)
    return None


@functools.cache
def _rouge(metric: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([metric], use_stemmer=False)


def text_similarity(value: str, reference: str, metric: SimilarityMetric,
                    wordnet_dir: str | None = None) -> tuple[float, dict[str, Any]]:
    """The score and what else the run should report about how it was made (not `cosine`)."""
    if metric == "cosine":
        raise ValueError("cosine needs an embedding model: service/graders/embeddings.py")
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

        wordnet = _wordnet(wordnet_dir)
        score = meteor_score([_words(reference)], _words(value), wordnet=wordnet or _NoWordNet())
        return float(score), {"meteor_synonyms": wordnet is not None}
    name = "rougeL" if metric == "rouge_l" else "rouge" + metric.removeprefix("rouge_")
    return float(_rouge(name).score(reference, value)[name].fmeasure), {}
