"""Graders as OpenAI's API takes them (components/schemas Grader* of its published document) and
the run/validate bodies and answers (RunGraderRequest/Response, ValidateGraderRequest/Response).
Unknown fields are refused, so a misspelt key is a 400 that names it, not a silent default."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

Name = Annotated[str, Meta(min_length=1, max_length=256)]
Text = Annotated[str, Meta(max_length=256 * 1024)]
# OpenAI's published limit for a python grader's source.
MAX_SOURCE = 256 * 1024

StringOperation = Literal["eq", "ne", "like", "ilike"]
SimilarityMetric = Literal["cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2",
                           "rouge_3", "rouge_4", "rouge_5", "rouge_l"]


class _Grader(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    name: Name


class StringCheckGrader(_Grader, tag="string_check"):
    """1.0 when the check holds, else 0.0: eq, ne, like (contains), ilike (contains, any case)."""

    input: Text
    reference: Text
    operation: StringOperation


class TextSimilarityGrader(_Grader, tag="text_similarity"):
    """A similarity in [0, 1] of the rendered input to the rendered reference."""

    input: Text
    reference: Text
    evaluation_metric: SimilarityMetric


class PythonGrader(_Grader, tag="python"):
    """`def grade(sample: dict, item: dict) -> float`, run in a sandbox (service/graders/sandbox.py)."""

    source: Annotated[str, Meta(max_length=MAX_SOURCE)]
    image_tag: str | None = None  # accepted as OpenAI takes it; one runtime here (this Python)


class InputText(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="input_text"):
    text: Text


class OutputText(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type", tag="output_text"):
    text: Text


class EvalMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenAI's EvalItem: a role and text content (a string or text parts; images and audio are
    not taken: the judge models served here read text)."""

    role: Literal["user", "assistant", "system", "developer"]
    content: Text | InputText | OutputText | list[InputText | OutputText]
    type: Literal["message"] | None = None


class SamplingParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    seed: int | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    max_completions_tokens: Annotated[int, Meta(ge=1, le=32768)] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None


class ScoreModelGrader(_Grader, tag="score_model"):
    """A judge model served by this tunedock (a base model or one of this tenant's fine-tuned
    models) reads the rendered messages and answers a number in `range`."""

    model: Name
    input: Annotated[list[EvalMessage], Meta(min_length=1, max_length=64)]
    range: Annotated[list[float], Meta(min_length=2, max_length=2)] | None = None
    sampling_params: SamplingParams | None = None


SingleGrader = StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader


class MultiGrader(_Grader, tag="multi"):
    """Named graders combined by `calculate_output`, a formula over their names (+ - * / ^,
    parentheses, min, max, abs, floor, ceil, exp, sqrt, log)."""

    graders: Annotated[dict[Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], SingleGrader],
                       Meta(min_length=1, max_length=32)]
    calculate_output: Annotated[str, Meta(min_length=1, max_length=4096)]


Grader = StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | MultiGrader


class ValidateGraderRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    grader: Grader


class ValidateGraderResponse(msgspec.Struct, kw_only=True):
    grader: Grader


class RunGraderRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    grader: Grader
    model_sample: Text
    item: dict[str, Any] | None = None


class GraderErrors(msgspec.Struct, kw_only=True):
    """OpenAI's error flags: which part of grading failed (the reward is then 0)."""

    formula_parse_error: bool = False
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False
    invalid_variable_error: bool = False
    other_error: bool = False
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    model_grader_server_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_server_error_details: str | None = None

    def any(self) -> bool:
        return any(v is True for v in msgspec.structs.asdict(self).values())


class TokenUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class RunMetadata(msgspec.Struct, kw_only=True):
    name: str
    type: str
    errors: GraderErrors
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None = None
    sampled_model_name: str | None = None


class RunGraderResponse(msgspec.Struct, kw_only=True):
    reward: float
    metadata: RunMetadata
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, TokenUsage]
