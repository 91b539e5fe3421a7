"""A way across for teams leaving OpenAI's fine-tuning (no new jobs there from 2027-01-06).

Everything here talks to both sides through the official `openai` SDK: the source is any
OpenAI-compatible base URL (OpenAI itself, or another tunedock), the target is this tunedock's
/v1. Three steps:

1. `migrate_jobs`: list the source account's succeeded fine-tuning jobs, copy their training and
   validation files, and recreate each job on the base model the user maps its model to
   (`--map gpt-4o-mini-2024-07-18=llama-3.1-8b`): method and hyperparameters as the source
   resolved them, seed, suffix and metadata kept, the source job recorded in the new job's
   metadata (`migrated_from`, `migrated_from_model`). A job migrated before is not created twice.
2. With it, `record_golden`: the old model's answers to a prompt set (the validation file's
   prompts, or a file given) are written into a JSONL file kept by the target service
   (`golden_file` in the new job's metadata), so they outlive the old model.
3. `compare`: once the new job succeeded, the same prompts are answered by the new model and
   scored against the golden answers: exact (after trimming whitespace) and a similarity from
   rapidfuzz (`fuzz.ratio`, 0-1), per prompt and in total.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

MAX_PROMPTS = 20
MAX_TOKENS = 256
# Where the new job records where it came from (its metadata: 16 keys at most, as OpenAI's).
FROM_JOB, FROM_MODEL, GOLDEN = "migrated_from", "migrated_from_model", "golden_file"


@dataclass
class Migrated:
    """One source job: what became of it."""

    source_job: str
    source_model: str
    target_job: str | None = None
    golden_file: str | None = None
    golden_prompts: int = 0
    skipped: str | None = None  # why nothing was created


@dataclass
class Scored:
    messages: list[dict[str, Any]]
    golden: str
    answer: str
    exact: bool
    similarity: float


@dataclass
class Comparison:
    job: str
    model: str
    source_model: str
    rows: list[Scored] = field(default_factory=list)

    @property
    def exact_rate(self) -> float:
        return sum(r.exact for r in self.rows) / len(self.rows) if self.rows else 0.0

    @property
    def mean_similarity(self) -> float:
        return sum(r.similarity for r in self.rows) / len(self.rows) if self.rows else 0.0

    def report(self) -> str:
        lines = [f"{self.model} vs {self.source_model} on {len(self.rows)} golden prompts"]
        for i, row in enumerate(self.rows, 1):
            prompt = next((m["content"] for m in reversed(row.messages) if m.get("role") == "user"), "")
            lines.append(f"{i:>3}. {'exact' if row.exact else 'differs':<7} similarity "
                         f"{row.similarity:.2f}  {str(prompt)[:60]!r}")
        lines.append(f"total: exact {sum(r.exact for r in self.rows)}/{len(self.rows)} "
                     f"({self.exact_rate:.0%}), mean similarity {self.mean_similarity:.2f}")
        return "\n".join(lines)


def parse_map(pairs: list[str]) -> dict[str, str]:
    """`SOURCE=TARGET` pairs (a source model id to a base model alias of this tunedock)."""
    out = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(f"--map {pair!r} is not SOURCE_MODEL=TUNEDOCK_BASE_MODEL")
        out[source.strip()] = target.strip()
    return out


# OpenAI's reinforcement hyperparameters beyond the three every method has.
RFT_HYPERPARAMETERS = ("compute_multiplier", "eval_interval", "eval_samples", "reasoning_effort")


def method_of(job: Any) -> dict[str, Any]:
    """The source job's method, with the hyperparameters it resolved (numbers, not "auto"), in
    OpenAI's create shape, which tunedock's /v1 takes as it is."""
    method = getattr(job, "method", None)
    kind = getattr(method, "type", None) or "supervised"
    if kind not in ("supervised", "dpo", "reinforcement"):
        raise ValueError(f"tunedock does not train {kind!r} jobs yet")
    block = getattr(method, kind, None) if method else None
    source = getattr(block, "hyperparameters", None) or job.hyperparameters
    names = ["n_epochs", "batch_size", "learning_rate_multiplier"] + {
        "dpo": ["beta"], "reinforcement": list(RFT_HYPERPARAMETERS)}.get(kind, [])
    hp = {n: v for n in names if (v := getattr(source, n, None)) is not None}
    out: dict[str, Any] = {"type": kind, kind: {"hyperparameters": hp}}
    if kind == "reinforcement":
        grader = getattr(block, "grader", None)
        if grader is None:
            raise ValueError("its reinforcement method has no grader")
        # The openai SDK's grader objects are pydantic models; tunedock takes OpenAI's shapes.
        out[kind]["grader"] = grader.model_dump(exclude_none=True) if hasattr(grader, "model_dump") else grader
    return out


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def prompts_of(rows: list[dict[str, Any]], limit: int) -> list[list[dict[str, Any]]]:
    """Prompt messages from training-format rows (chat: the messages before the last assistant
    turn; preference pairs: `input.messages`) or from `{"prompt": "..."}` rows."""
    out = []
    for row in rows:
        if isinstance(row.get("prompt"), str):
            messages = [{"role": "user", "content": row["prompt"]}]
        elif isinstance(row.get("input"), dict):
            messages = list(row["input"].get("messages") or [])
        else:
            messages = list(row.get("messages") or [])
            while messages and messages[-1].get("role") == "assistant":
                messages.pop()
        if messages:
            out.append(messages)
        if len(out) >= limit:
            break
    return out


def _answer(client: Any, model: str, messages: list[dict[str, Any]], max_tokens: int) -> str:
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                           max_tokens=max_tokens)
    return reply.choices[0].message.content or ""


def record_golden(source: Any, target: Any, job: Any, prompts: list[list[dict[str, Any]]],
                  max_tokens: int = MAX_TOKENS) -> str:
    """The old model's greedy answers to `prompts`, kept by the target as a JSONL file; its id."""
    lines = [json.dumps({"messages": messages, "golden": _answer(source, job.fine_tuned_model, messages, max_tokens),
                         "source_model": job.fine_tuned_model, "source_job": job.id})
             for messages in prompts]
    upload = target.files.create(file=(f"golden-{job.id}.jsonl", ("\n".join(lines) + "\n").encode()),
                                 purpose="fine-tune")
    return upload.id


def migrate_jobs(source: Any, target: Any, model_map: dict[str, str], *, job_ids: list[str] | None = None,
                 prompts: list[dict[str, Any]] | None = None, max_prompts: int = MAX_PROMPTS,
                 max_tokens: int = MAX_TOKENS, deploy: bool = True) -> list[Migrated]:
    """Recreate the source's succeeded jobs on the target (module docstring). `prompts`: rows of
    a prompt file (else the validation file's prompts are the golden set)."""
    done = {j.metadata[FROM_JOB]: j.id for j in target.fine_tuning.jobs.list(limit=100)
            if j.metadata and FROM_JOB in j.metadata}
    copied: dict[str, str] = {}

    def copy(file_id: str) -> str:
        if file_id not in copied:
            meta = source.files.retrieve(file_id)
            content = source.files.content(file_id).read()
            copied[file_id] = target.files.create(file=(meta.filename, content), purpose="fine-tune").id
        return copied[file_id]

    out = []
    for job in source.fine_tuning.jobs.list(limit=100):
        if job_ids and job.id not in job_ids:
            continue
        item = Migrated(source_job=job.id, source_model=job.fine_tuned_model or job.model)
        out.append(item)
        if job.status != "succeeded":
            item.skipped = f"its status is {job.status}: only succeeded jobs are migrated"
            continue
        if job.model not in model_map:
            item.skipped = f"no --map for its model {job.model!r}"
            continue
        if job.id in done:
            item.target_job, item.skipped = done[job.id], f"migrated before, as {done[job.id]}"
            continue
        try:
            method = method_of(job)
        except ValueError as exc:
            item.skipped = str(exc)
            continue
        if len(job.metadata or {}) > 16 - 3:
            item.skipped = (f"its metadata has {len(job.metadata)} keys; with the 3 the migration adds "
                            "that is over the 16 allowed")
            continue
        metadata = dict(job.metadata or {})
        metadata.update({FROM_JOB: job.id, FROM_MODEL: job.fine_tuned_model or ""})
        training = copy(job.training_file)
        validation = copy(job.validation_file) if job.validation_file else None
        rows = prompts
        if rows is None and job.validation_file:
            rows = _jsonl(source.files.content(job.validation_file).read().decode())
        golden = prompts_of(rows or [], max_prompts)
        if golden and job.fine_tuned_model:
            item.golden_file = record_golden(source, target, job, golden, max_tokens)
            item.golden_prompts = len(golden)
            metadata[GOLDEN] = item.golden_file
        created = target.fine_tuning.jobs.create(
            model=model_map[job.model], training_file=training, validation_file=validation,
            suffix=job.user_provided_suffix, seed=job.seed, method=method, metadata=metadata,
            extra_body={"deploy": deploy})
        item.target_job = created.id
    return out


def _served(target: Any, model: str, timeout: float) -> None:
    """Wait until the target serves `model` (a deployment loads seconds after the job succeeds)."""
    deadline = time.monotonic() + timeout
    while True:
        found = {m.id: getattr(m, "status", None) for m in target.models.list()}
        if found.get(model) == "loaded":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{model} is not served (status {found.get(model)}); deploy it first")
        time.sleep(1)


def compare(target: Any, job_id: str, *, max_tokens: int = MAX_TOKENS, wait_served: float = 120) -> Comparison:
    """The new model's answers to the golden prompts, scored against the golden answers."""
    from rapidfuzz import fuzz

    job = target.fine_tuning.jobs.retrieve(job_id)
    if job.status != "succeeded":
        raise RuntimeError(f"{job_id} is {job.status}; compare once it has succeeded")
    golden_file = (job.metadata or {}).get(GOLDEN)
    if not golden_file:
        raise RuntimeError(f"{job_id} has no golden answers (metadata {GOLDEN}): it was not migrated "
                           "with prompts")
    _served(target, job.fine_tuned_model, wait_served)
    rows = _jsonl(target.files.content(golden_file).read().decode())
    result = Comparison(job=job_id, model=job.fine_tuned_model,
                        source_model=(job.metadata or {}).get(FROM_MODEL, "the source model"))
    for row in rows:
        answer = _answer(target, job.fine_tuned_model, row["messages"], max_tokens)
        result.rows.append(Scored(messages=row["messages"], golden=row["golden"], answer=answer,
                                  exact=answer.strip() == row["golden"].strip(),
                                  similarity=fuzz.ratio(answer.strip(), row["golden"].strip()) / 100))
    return result


def read_prompts(path: str) -> list[dict[str, Any]]:
    with io.open(path, encoding="utf-8") as f:
        return _jsonl(f.read())
