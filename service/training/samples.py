"""Eval samples: each epoch's adapter answers a few prompts greedily, inside the training child,
before its checkpoint is recorded, so a user sees the answers change epoch by epoch. And the
serving-contract record written next to each adapter's files (service/contracts/adapter_check.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from service.contracts.adapter_check import FILE, MAX_TOKENS, AdapterCheck, CheckSequence
from service.contracts.messages import TrainingSpec
from service.contracts.schema import JobEval
from service.datasets.formats import Chat, Pair, Preference, detect_format, parse_example
from service.datasets.template import HFTokens

MAX_NEW_TOKENS = 64
# Answers graded at once: python graders run one sandbox process each.
GRADE_CONCURRENCY = 8


def eval_prompts(spec: TrainingSpec, tokens: HFTokens, validation_rows: list[dict]
                 ) -> list[tuple[str, list[int]]]:
    """(what the user sees as the prompt, the ids the model is given) for each eval prompt."""
    hp = spec.hyperparameters
    out = []
    if spec.eval is not None:  # graded evaluation: its items, each prompted as the chat it gives
        for item in spec.eval.items:
            messages = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
            shown = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
            out.append((str(shown), tokens.encode(tokens.render(messages, None, True))))
        return out
    if hp.eval_prompts:
        for prompt in hp.eval_prompts:
            messages = [{"role": "user", "content": prompt}]
            out.append((prompt, tokens.encode(tokens.render(messages, None, True))))
        return out
    for row in validation_rows:
        if len(out) == hp.eval_samples:
            break
        example = parse_example(row, detect_format(row))
        if isinstance(example, Chat):
            last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
            context = example.messages[:last]
            if not context:
                continue
            shown = next((m["content"] for m in reversed(context) if m["role"] == "user"), "")
            ids = tokens.encode(tokens.render(context, example.tools, True))
            out.append((shown, ids))
        elif isinstance(example, Pair):
            out.append((example.prompt, tokens.encode(example.prompt)))
        elif isinstance(example, Preference):  # DPO: the prompt both answers follow
            if isinstance(example.prompt, str):
                out.append((example.prompt, tokens.encode(example.prompt)))
            else:
                chat = example.prompt
                shown = next((m["content"] for m in reversed(chat.messages) if m["role"] == "user"), "")
                out.append((shown, tokens.encode(tokens.render(chat.messages, chat.tools, True))))
    return out


@contextlib.contextmanager
def inference(model: Any, backend: str) -> Iterator[None]:
    """The model in eval mode without gradients (Unsloth's inference mode, which also makes its
    forward return logits), back to training afterwards."""
    import torch

    if backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if backend == "unsloth":
            from unsloth import FastLanguageModel

            FastLanguageModel.for_training(model)
        if was_training:
            model.train()


class Sampler:
    def __init__(self, prompts: list[tuple[str, list[int]]], tokenizer: Any, backend: str,
                 graded: JobEval | None = None, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        self.prompts = prompts
        self.max_new_tokens = max_new_tokens
        self.tokenizer = tokenizer
        self.backend = backend
        self.graded = graded  # the job's eval: its items are the prompts, in order
        self.sequences: list[tuple[str, list[int]]] = []  # the last call's prompts with their answers

    def answer(self, model: Any) -> list[dict[str, str]]:
        import torch

        answers, sequences = [], []
        with inference(model, self.backend):
            for shown, ids in self.prompts:
                x = torch.tensor([ids], device=model.device)
                y = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                   max_new_tokens=self.max_new_tokens, do_sample=False,
                                   pad_token_id=self.tokenizer.pad_token_id)
                text = self.tokenizer.decode(y[0, len(ids):], skip_special_tokens=True)
                answers.append({"prompt": shown, "answer": text.strip()})
                sequences.append((shown, y[0].tolist()))
        self.sequences = sequences
        if self.graded is not None:
            scored = grade_all(self.graded.grader, [a["answer"] for a in answers], list(self.graded.items))
            for answer, (score, error) in zip(answers, scored, strict=True):
                answer["score"] = score
                if error:
                    answer["error"] = error
        return answers


def mean_score(answers: list[dict[str, Any]] | None) -> float | None:
    scores = [a["score"] for a in answers or () if "score" in a]
    return sum(scores) / len(scores) if scores else None


def grade_all(grader: Any, answers: list[str], items: list[dict[str, Any]]) -> list[tuple[float, str | None]]:
    """Every answer's score by the grader, as POST /graders/run gives it (the same code:
    service/graders), graded concurrently (a python grader's sandbox is a process each, a judge
    or an embedding model a request each); 0 with the reason where grading failed."""
    import asyncio

    async def run() -> list[tuple[float, str | None]]:
        gate = asyncio.Semaphore(GRADE_CONCURRENCY)

        async def one(answer: str, item: dict[str, Any]) -> tuple[float, str | None]:
            async with gate:
                return await graded(grader, answer, item)

        return await asyncio.gather(*(one(a, i) for a, i in zip(answers, items, strict=True)))

    return asyncio.run(run())


async def graded(grader: Any, answer: str, item: dict[str, Any]) -> tuple[float, str | None]:
    from service.contracts.graders import RunGraderRequest
    from service.graders.judges import ModelServerJudges
    from service.graders.service import GraderService
    from service.settings import load_settings

    # The runner's settings (its environment): a score_model grader asks the model server.
    settings = load_settings()
    found = await GraderService(settings, ModelServerJudges(settings))._run_checked(
        RunGraderRequest(grader=grader, model_sample=answer, item=item))
    errors = found.metadata.errors
    failed = {k: v for k, v in msgspec.structs.asdict(found.metadata.errors).items() if v}
    if not failed:
        return found.reward, None
    detail = (errors.python_grader_runtime_error_details or errors.model_grader_server_error_details
              or found.metadata.scores.get("error")
              or (f"the judge answered {found.metadata.scores.get('judge_output')!r}"
                  if errors.model_grader_parse_error else None))
    return 0.0, f"{', '.join(k for k, v in failed.items() if v is True)}: {detail}"[:500]


def example_sequences(train_ds: Any, tokens: HFTokens, n: int = 2) -> list[tuple[str, list[int]]]:
    """The first training examples' token ids (a DPO pair's prompt and chosen answer; a
    reinforcement prompt as generation starts from it): the check's sequences when a job has no
    eval prompts. The adapter was trained on them, so they are where it differs most from the base."""
    out = []
    for i in range(min(n, len(train_ds))):
        row = train_ds[i]
        if "prompt" in row and "item" in row:
            ids = tokens.encode(tokens.render(row["prompt"], None, True))
        else:
            ids = row["input_ids"] if "input_ids" in row else row["prompt_ids"] + row["chosen_ids"]
        out.append((f"training example {i + 1}", list(ids)))
    return out


class CheckRecorder:
    """Writes the serving-contract record into an adapter folder before it is uploaded: the eval
    prompts with this adapter's greedy answers when the job has eval prompts (the Sampler ran
    just before), else the first training examples; for the final adapter the last sequences
    again, scored by the final weights."""

    def __init__(self, sampler: Sampler | None, examples: list[tuple[str, list[int]]], backend: str,
                 quantized: bool) -> None:
        self.sampler = sampler
        self.sequences = examples
        self.backend = backend
        self.quantized = quantized

    def write(self, model: Any, folder: Path) -> None:
        import torch

        if self.sampler is not None and self.sampler.sequences:
            self.sequences = self.sampler.sequences
        records = []
        with inference(model, self.backend):
            for label, ids in self.sequences:
                ids = ids[:MAX_TOKENS]
                if len(ids) < 2:
                    continue
                x = torch.tensor([ids], device=model.device)
                logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, :-1].float()
                lp = torch.log_softmax(logits, dim=-1).gather(1, x[0, 1:, None])[:, 0]
                records.append(CheckSequence(label=label[:200], ids=ids, logprobs=[round(v, 5) for v in lp.tolist()]))
        if records:  # none (no sequence of two tokens): no record, and the deployment says "not checked"
            (folder / FILE).write_bytes(msgspec.json.encode(AdapterCheck(quantized=self.quantized,
                                                                         sequences=records)))
