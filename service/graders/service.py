"""What the graders API does: validate a grader (every template, formula, metric and python
source checked before use, each refusal a 422 naming the field: the body is well-formed JSON of
OpenAI's shapes, but not a grader this server can run) and run it on one model sample and
dataset item, with OpenAI's answer: the reward, which part failed, the sub-graders' rewards and
the judge's token usage. A grader that fails scores 0 with the reason; it never fails the call."""

from __future__ import annotations

import ast
import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from service.contracts import graders as w
from service.errors import ServiceError, Unprocessable
from service.graders import embeddings, formula, metrics, sandbox
from service.graders.template import TemplateError, render, sample_namespace, variables
from service.graders.template import item_fields as template_item_fields
from service.settings import Settings

# A judge answers with one number; constraining its decoding to one in range (vLLM's structured
# outputs) makes small served models usable as judges instead of a parse error on every reply.
_NUMBER = r"-?[0-9]{1,6}(\.[0-9]{1,4})?"
_UNIT = r"(0(\.[0-9]{1,4})?|1(\.0{1,4})?)"  # a number in [0, 1], the default range
_FIRST_NUMBER = re.compile(_NUMBER)


class Judges(Protocol):
    """How a score_model grader reaches a model: the gateway's tenant check and model server
    (service/api/gateway.py), handed in by the app so graders never import the API."""

    async def allowed(self, tenant: str, model: str) -> bool: ...

    async def chat(self, tenant: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]: ...


@dataclass
class _Result:
    score: float = 0.0
    errors: w.GraderErrors = field(default_factory=w.GraderErrors)
    scores: dict[str, Any] = field(default_factory=dict)
    sub_rewards: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, w.TokenUsage] = field(default_factory=dict)
    sampled_model: str | None = None


@dataclass
class GraderService:
    settings: Settings
    judges: Judges | None = None

    # -- validate ------------------------------------------------------------------------------
    async def validate(self, tenant: str, grader: w.Grader, param: str = "grader") -> w.Grader:
        if isinstance(grader, w.MultiGrader):
            for name, sub in grader.graders.items():
                await self.validate(tenant, sub, f"{param}.graders.{name}")
            try:
                formula.parse(grader.calculate_output, grader.graders)
            except formula.FormulaError as exc:
                raise Unprocessable(str(exc), param=f"{param}.calculate_output") from None
            return grader
        for field_name, text in _templates(grader):
            try:
                variables(text)
            except TemplateError as exc:
                raise Unprocessable(str(exc), param=f"{param}.{field_name}") from None
        if (isinstance(grader, w.TextSimilarityGrader) and grader.evaluation_metric == "cosine"
                and not embeddings.configured(self.settings)):
            raise Unprocessable("evaluation_metric 'cosine' needs an embedding model, and this server has none "
                                 "configured (TUNEDOCK_EMBEDDING_URL); use fuzzy_match, bleu, gleu, meteor or "
                                 "rouge_*", param=f"{param}.evaluation_metric")
        if isinstance(grader, w.PythonGrader):
            _check_source(grader.source, f"{param}.source")
        if isinstance(grader, w.ScoreModelGrader):
            lo, hi = grader.range or (0.0, 1.0)
            if not lo < hi:
                raise Unprocessable(f"range must be [low, high] with low < high, not {[lo, hi]}",
                                     param=f"{param}.range")
            if self.judges is None or not await self.judges.allowed(tenant, grader.model):
                raise Unprocessable(f"score_model's model {grader.model!r} is not a model this server "
                                     "serves to this key (GET /v1/models lists them)", param=f"{param}.model",
                                     code="model_not_found")
        return grader

    # -- run -------------------------------------------------------------------------------------
    async def run(self, tenant: str, req: w.RunGraderRequest) -> w.RunGraderResponse:
        await self.validate(tenant, req.grader)
        return await self._run_checked(req, tenant)

    async def _run_checked(self, req: w.RunGraderRequest, tenant: str = "") -> w.RunGraderResponse:
        """A grader already validated (the API's /run above; a job's eval when the job was created,
        graded again in the training child)."""
        started = time.monotonic()
        scope: dict[str, Any] = {"sample": sample_namespace(req.model_sample)}
        if req.item is not None:
            scope["item"] = req.item
        result = await self._grade(tenant, req.grader, scope)
        return w.RunGraderResponse(
            reward=result.score if not result.errors.any() else 0.0,
            metadata=w.RunMetadata(
                name=req.grader.name, type=type(req.grader).__struct_config__.tag,  # type: ignore[arg-type]
                errors=result.errors, execution_time=time.monotonic() - started, scores=result.scores,
                token_usage=sum(u.total_tokens for u in result.usage.values()) if result.usage else None,
                sampled_model_name=result.sampled_model),
            sub_rewards=result.sub_rewards, model_grader_token_usage_per_model=result.usage)

    async def _grade(self, tenant: str, grader: w.Grader, scope: dict[str, Any]) -> _Result:
        out = _Result()
        try:
            if isinstance(grader, w.StringCheckGrader):
                out.score = metrics.string_check(render(grader.input, scope), render(grader.reference, scope),
                                                 grader.operation)
            elif isinstance(grader, w.TextSimilarityGrader) and grader.evaluation_metric == "cosine":
                await self._cosine(grader, scope, out)
            elif isinstance(grader, w.TextSimilarityGrader):
                # In a thread: METEOR's first call reads WordNet (~1 s), which must not stall the loop.
                out.score, out.scores = await asyncio.to_thread(
                    metrics.text_similarity, render(grader.input, scope), render(grader.reference, scope),
                    grader.evaluation_metric, self.settings.wordnet_dir)
            elif isinstance(grader, w.PythonGrader):
                await self._python(grader, scope, out)
            elif isinstance(grader, w.ScoreModelGrader):
                await self._score_model(tenant, grader, scope, out)
            else:
                await self._multi(tenant, grader, scope, out)
        except TemplateError as exc:
            out.errors.invalid_variable_error = True
            out.scores["error"] = str(exc)
        return out

    async def _cosine(self, grader: w.TextSimilarityGrader, scope: dict[str, Any], out: _Result) -> None:
        try:
            out.score, model = await embeddings.Embeddings(self.settings).similarity(
                render(grader.input, scope), render(grader.reference, scope))
        except embeddings.EmbeddingsUnavailable as exc:
            out.errors.other_error = True
            out.scores["error"] = str(exc)
            return
        out.scores["embedding_model"] = model

    async def _python(self, grader: w.PythonGrader, scope: dict[str, Any], out: _Result) -> None:
        s = self.settings
        limits = sandbox.Limits(wall_s=s.python_grader_wall_seconds, cpu_s=s.python_grader_cpu_seconds,
                                memory_bytes=s.python_grader_memory_mb << 20,
                                output_bytes=s.python_grader_output_kb << 10)
        found = await sandbox.run_python(grader.source, scope["sample"], scope.get("item"), limits)
        if found.network:
            out.scores["sandbox_network"] = found.network
        if found.score is not None:
            out.score = found.score
        elif found.kind == "server":
            out.errors.python_grader_server_error = True
            out.errors.python_grader_server_error_type = "sandbox_start"
            out.scores["error"] = found.error
        else:
            out.errors.python_grader_runtime_error = True
            out.errors.python_grader_runtime_error_details = found.error

    async def _score_model(self, tenant: str, grader: w.ScoreModelGrader, scope: dict[str, Any],
                           out: _Result) -> None:
        assert self.judges is not None  # validate() refused the grader otherwise
        lo, hi = grader.range or (0.0, 1.0)
        p = grader.sampling_params or w.SamplingParams()
        body: dict[str, Any] = {
            "model": grader.model, "messages": [{"role": m.role, "content": render(_text(m), scope)}
                                                for m in grader.input],
            "max_tokens": p.max_completions_tokens or 16, "temperature": p.temperature or 0.0,
            "structured_outputs": {"regex": _UNIT if 0 <= lo and hi <= 1 else _NUMBER}}
        if p.top_p is not None:
            body["top_p"] = p.top_p
        if p.seed is not None:
            body["seed"] = p.seed
        try:
            answer = await self.judges.chat(tenant, body, self.settings.score_model_timeout_seconds)
        except ServiceError as exc:
            out.errors.model_grader_server_error = True
            out.errors.model_grader_server_error_details = str(exc)[:2000]
            return
        out.sampled_model = answer.get("model") or grader.model
        usage = answer.get("usage") or {}
        out.usage[out.sampled_model] = w.TokenUsage(
            prompt_tokens=usage.get("prompt_tokens") or 0, completion_tokens=usage.get("completion_tokens") or 0,
            total_tokens=usage.get("total_tokens") or 0)
        choice = (answer.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        text = message.get("content") or ""
        out.scores["judge_output"] = text[:2000]
        if message.get("refusal"):
            out.errors.model_grader_refusal_error = True
            return
        m = _FIRST_NUMBER.search(text)
        if m is None or not lo <= float(m.group(0)) <= hi:
            out.errors.model_grader_parse_error = True
            return
        out.score = float(m.group(0))

    async def _multi(self, tenant: str, grader: w.MultiGrader, scope: dict[str, Any], out: _Result) -> None:
        values: dict[str, float] = {}
        for name, sub in grader.graders.items():
            found = await self._grade(tenant, sub, scope)
            for k, v in msgspec.structs.asdict(found.errors).items():
                if v and not getattr(out.errors, k):
                    setattr(out.errors, k, v)
            out.usage.update(found.usage)
            out.sampled_model = out.sampled_model or found.sampled_model
            values[name] = found.score if not found.errors.any() else 0.0
            out.sub_rewards[name] = values[name]
        out.scores.update(out.sub_rewards)
        try:
            out.score = formula.evaluate(formula.parse(grader.calculate_output, grader.graders), values)
        except formula.FormulaError as exc:
            out.errors.formula_parse_error = True
            out.scores["error"] = str(exc)


def _text(message: w.EvalMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(p.text for p in parts)


def item_fields(grader: w.Grader) -> tuple[str, ...]:
    """The dataset fields a grader's templates read: every row it grades must have them."""
    if isinstance(grader, w.MultiGrader):
        return tuple(dict.fromkeys(f for g in grader.graders.values() for f in item_fields(g)))
    return template_item_fields([text for _, text in _templates(grader)])


def _templates(grader: w.Grader) -> list[tuple[str, str]]:
    if isinstance(grader, w.StringCheckGrader | w.TextSimilarityGrader):
        return [("input", grader.input), ("reference", grader.reference)]
    if isinstance(grader, w.ScoreModelGrader):
        return [(f"input[{i}].content", _text(m)) for i, m in enumerate(grader.input)]
    return []


def _check_source(source: str, param: str) -> None:
    """The source parses and defines grade(sample, item) at its top level (nothing runs here)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise Unprocessable(f"the python grader does not parse: {exc.msg} (line {exc.lineno})",
                             param=param) from None
    grade = next((n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                  and n.name == "grade"), None)
    if grade is None or isinstance(grade, ast.AsyncFunctionDef):
        raise Unprocessable("the python grader must define `def grade(sample, item) -> float` at its top level",
                             param=param)
    if len(grade.args.args) + len(grade.args.posonlyargs) < 2 and grade.args.vararg is None:
        raise Unprocessable("grade() must take two arguments: grade(sample, item)", param=param)
