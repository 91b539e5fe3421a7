"""Response types. Unknown fields are ignored, so newer servers work with this client."""

from __future__ import annotations

from typing import Any

import msgspec


class ErrorInfo(msgspec.Struct, kw_only=True):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class Progress(msgspec.Struct, kw_only=True):
    epoch: float = 0.0
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None


class Deployment(msgspec.Struct, kw_only=True):
    status: str
    loaded_at: int | None = None
    error: str | None = None


class LengthStats(msgspec.Struct, kw_only=True):
    mean: float
    p50: int
    p95: int
    max: int


class DatasetSummary(msgspec.Struct, kw_only=True):
    """What validation found in the data, and what training does with it."""

    format: str
    n_examples: int
    n_train: int
    n_validation: int
    validation_source: str
    tokens: int
    tokens_estimated: bool
    supervised_tokens: int | None = None
    context_tokens: int | None = None
    n_blank_lines: int = 0
    n_overlong: int = 0
    overlong_policy: str = "truncate"
    n_duplicates: int = 0
    n_validation_in_train: int = 0
    lengths: LengthStats | None = None
    warnings: list[str] = []


class EarlyStopping(msgspec.Struct, kw_only=True):
    """Why a job ended before its last epoch, and which epoch's adapter it kept."""

    reason: str
    stopped_after_epoch: int
    n_epochs: int
    chosen_epoch: int
    step: int = 0
    watched: str = "valid_loss"  # or "eval_score"
    best_valid_loss: float | None = None
    valid_losses: list[float] = []
    best_score: float | None = None
    scores: list[float] = []


class ContinuedFrom(msgspec.Struct, kw_only=True):
    """The fine-tuned model a job continues (base_model "ft:…"), and the models it descends from."""

    model: str
    job_id: str
    adapter: str
    lineage: list[str]  # the base model first, `model` last
    checkpoint_epoch: int | None = None


class Estimate(msgspec.Struct, kw_only=True):
    """How long training should take on the calibrated device (and, when done, how long it did)."""

    shape: str
    tokens: int
    device: str | None = None
    tokens_per_second: float | None = None
    startup_seconds: float | None = None
    seconds: float | None = None
    calibration_jobs: int = 0
    message: str | None = None
    actual_seconds: float | None = None


class JobEstimate(msgspec.Struct, kw_only=True):
    """A dry run: the data checked, a memory plan and an estimated duration; no job created."""

    base_model: str
    dataset: DatasetSummary
    hyperparameters: dict[str, Any]
    estimate: Estimate
    plan: dict[str, Any] | None = None
    method: dict[str, Any] | None = None
    continued_from: ContinuedFrom | None = None


class Job(msgspec.Struct, kw_only=True):
    id: str
    status: str
    base_model: str
    training_file: str
    created_at: int
    hyperparameters: dict[str, Any]
    validation_file: str | None = None
    suffix: str | None = None
    metadata: dict[str, str] = {}
    deploy: bool = True
    started_at: int | None = None
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    error: ErrorInfo | None = None
    attempt: int = 0
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    progress: Progress | None = None
    dataset: DatasetSummary | None = None
    plan: dict[str, Any] | None = None
    deployment: Deployment | None = None
    early_stopping: EarlyStopping | None = None
    continued_from: ContinuedFrom | None = None
    estimate: Estimate | None = None
    method: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "supervised"})
    priority: int = 0
    gpus: int | str = 1  # devices asked for (a count, or "auto"); plan["ranks"]: what it got
    eval: dict[str, Any] | None = None  # {grader, items}: graded before training and every epoch
    base_eval_score: float | None = None  # the eval's score of the model training started from

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class Event(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None = None


class EvalSample(msgspec.Struct, kw_only=True):
    prompt: str
    answer: str
    score: float | None = None  # the job's eval grader on this answer
    error: str | None = None


class Checkpoint(msgspec.Struct, kw_only=True):
    id: str
    job_id: str
    epoch: int
    step: int
    uri: str
    metrics: dict[str, float]
    created_at: int
    samples: list[EvalSample] | None = None  # the epoch's greedy answers to the eval prompts


class File(msgspec.Struct, kw_only=True):
    id: str
    bytes: int
    filename: str
    uri: str
    created_at: int


class PreviewSegment(msgspec.Struct, kw_only=True):
    text: str
    trained: bool  # loss-bearing: the model learns to write this
    tokens: int


class PreviewRow(msgspec.Struct, kw_only=True):
    line: int
    tokens: int
    trained_tokens: int
    truncated: bool
    segments: list[PreviewSegment]
    rejected_segments: list[PreviewSegment] | None = None

    def marked(self, start: str = "[[", end: str = "]]") -> str:
        """The rendered row with trained text between `start` and `end`."""
        return "".join(f"{start}{s.text}{end}" if s.trained else s.text for s in self.segments)


class FilePreview(msgspec.Struct, kw_only=True):
    """A file checked for a base model, and its first rows as that model will be trained on them."""

    file_id: str
    base_model: str
    valid: bool
    format: str | None
    n_examples: int
    n_errors: int
    errors: list[ErrorInfo]
    message: str | None = None
    warnings: list[str] = []
    rows: list[PreviewRow] = []


class Model(msgspec.Struct, kw_only=True):
    """A base model, or a fine-tuned adapter with its deployment status."""

    id: str
    kind: str = "base"
    served: bool = False
    status: str | None = None
    base_model: str | None = None
    job_id: str | None = None
    error: str | None = None
    loaded_at: int | None = None


class ExportChecks(msgspec.Struct, kw_only=True):
    """What the export verified before it was stored."""

    merged_max_logit_diff: float | None = None
    merged_same_greedy: bool | None = None
    # base + adapter computed in the 16-bit dtype vs float32: the noise floor of 16 bits
    served_16bit_max_logit_diff: float | None = None
    gguf_tokens_match: bool | None = None
    gguf_eos: str | None = None
    modelfile_template_matches: bool | None = None


class Export(msgspec.Struct, kw_only=True):
    """A job's adapter merged into its base (merged_16bit) or converted to GGUF."""

    id: str
    job_id: str
    model: str
    format: str
    status: str  # queued, running, succeeded, failed
    attempt: int
    created_at: int
    checkpoint: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    stage: str | None = None
    filename: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    seconds: float | None = None
    checks: ExportChecks | None = None
    error: ErrorInfo | None = None
    download_url: str | None = None


class Page(msgspec.Struct, kw_only=True):
    data: list[Any]
    has_more: bool
    last_id: str | None = None


class Serving(msgspec.Struct, kw_only=True):
    base_url: str | None
    api_key: str | None = None
    max_lora_rank: int | None = None  # the largest LoRA rank the model server loads


class RunGraderResponse(msgspec.Struct, kw_only=True):
    """A grader's verdict on one sample (OpenAI's shape): `reward`, and in `metadata` which part
    failed (`errors`), the scores and the time it took."""

    reward: float
    metadata: dict[str, Any]
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, Any]
