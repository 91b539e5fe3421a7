"""Every wire type of the jobs and files resources, and the spec handed to the training child."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from service.contracts.graders import Grader
from service.contracts.hyperparameters import (  # noqa: F401 - part of these wire types
    ALL_LINEAR,
    LORA_MODULE_PATTERN,
    Auto,
    Dpo,
    DpoHyperparameters,
    Hyperparameters,
    LoraModule,
    Method,
    Reinforcement,
    ReinforcementHyperparameters,
)


class Status(StrEnum):
    validating_files = "validating_files"
    queued = "queued"
    running = "running"
    paused = "paused"  # checkpointed at a step boundary, GPU freed; resume puts it back in the queue
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({Status.succeeded, Status.failed, Status.cancelled})


class DeploymentStatus(StrEnum):
    """Where an adapter's deployment stands (service/jobs/states.py has the table)."""

    pending = "pending"  # asked for; the serving sidecar has not picked it up yet
    loading = "loading"  # the sidecar is fetching it and loading it into vLLM
    loaded = "loaded"  # vLLM serves it
    failed = "failed"  # it could not be loaded (see error); asking again retries
    unloaded = "unloaded"  # no longer served, at the user's request; the files are kept

class ExportFormat(StrEnum):
    """What an export produces (README: Exports)."""

    merged_16bit = "merged_16bit"  # the adapter merged into the 16-bit base: safetensors in a tar
    gguf_f16 = "gguf_f16"  # one GGUF file, 16-bit weights, for llama.cpp and Ollama
    gguf_q8_0 = "gguf_q8_0"  # 8-bit (about half the f16 size)
    gguf_q4_k_m = "gguf_q4_k_m"  # llama.cpp's 4-bit mix (about a third of the f16 size)


class ExportStatus(StrEnum):
    """Where an export stands (service/jobs/states.py has the table)."""

    queued = "queued"
    running = "running"  # a runner holds it with a lease; it goes back to queued if that lapses
    succeeded = "succeeded"
    failed = "failed"


Suffix = Annotated[str, Meta(max_length=40, pattern=r"^[a-z0-9-]*$")]


Metadata = Annotated[
    dict[Annotated[str, Meta(min_length=1, max_length=64)], Annotated[str, Meta(max_length=512)]],
    Meta(max_length=16),
]


# A file- id, or an s3:// URI into a bucket the tenant has a grant for (never the artifact bucket).
FileRef = Annotated[str, Meta(min_length=1, max_length=1024,
                              pattern=r"^(file-[A-Za-z0-9_-]+|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+)$",
                              description="a file- id from POST /files, or s3://bucket/key in a bucket "
                                          "this tenant may read")]


class JobEval(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Graded evaluation: before training the base model (or the parent, when continuing) answers
    each item once, and each epoch's adapter again before its checkpoint is recorded; the grader
    scores every answer (`{{sample.output_text}}`) against its item (`{{item.…}}`)."""

    grader: Annotated[Grader, Meta(description="one of OpenAI's graders except score_model")]
    items: Annotated[list[dict[str, Any]], Meta(
        min_length=1, max_length=64,
        description="each with `prompt` (a string) or `messages` (the chat up to the question), "
                    "plus the fields the grader reads (e.g. `label`)")]
    checkpoint_selection: Annotated[Literal["last", "score"], Meta(
        description="which epoch's adapter the job ends with: the last one trained, or the one whose "
                    "eval scored highest (the earliest of equals)")] = "last"
    early_stopping_patience: Annotated[int, Meta(
        ge=1, le=50, description="stop once the eval score has not improved for this many epochs, "
                                 "keeping the best-scoring epoch's adapter")] | None = None


Gpus = Annotated[Annotated[int, Meta(ge=1, le=16)] | Literal["auto"], Meta(
    description="devices the job trains on, one data-parallel rank each, all on one runner: a "
                "count that divides batch_size (batch_size stays the examples per optimizer step), "
                "or \"auto\": several when the job is large enough to gain from them and the runner "
                "has them free, else 1 (the job's placement event says which and why)")]


class JobCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    base_model: Annotated[str, Meta(
        min_length=1, max_length=256,
        description="a base model's alias (GET /models), or a fine-tuned model to continue "
                    "training from: ft:<base>:<suffix>:<job id>, or a checkpoint's …:ckpt-<epoch>")]
    training_file: FileRef
    validation_file: FileRef | None = None
    suffix: Suffix | None = None
    hyperparameters: Hyperparameters = Hyperparameters()
    method: Method = Method()
    metadata: Metadata = {}
    deploy: bool = True
    priority: Annotated[int, Meta(
        ge=-100, le=100,
        description="higher runs first among this tenant's queued jobs; other tenants' jobs are "
                    "not affected (runners are shared fairly between tenants first)")] = 0
    eval: JobEval | None = None
    gpus: Gpus = 1
    # Check the data and answer with the dataset summary, memory plan and estimated duration
    # (JobEstimate, status 200) instead of creating a job.
    dry_run: bool = False


class ErrorInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class LengthStats(msgspec.Struct, kw_only=True):
    mean: float
    p50: int
    p95: int
    max: int


class DatasetSummary(msgspec.Struct, kw_only=True):
    """What validation found, and what training will do with it (README: Training data)."""

    format: str  # chat, sharegpt, instruction, prompt_completion, text; preference, chosen_rejected
    n_examples: int
    n_train: int
    n_validation: int
    # file: the validation_file as given; split: held out of the training file (10%, at most
    # 1,000 rows); none: fewer than 50 examples and no validation file.
    validation_source: Literal["file", "split", "none"]
    tokens: int  # every token of the training file's examples, before truncation
    tokens_estimated: bool  # true when the base model's tokenizer is not local (bytes / 4)
    supervised_tokens: int | None = None  # loss-bearing tokens per epoch, as trained
    # tokens seen but not trained on (prompts, weight 0, ...); a preference pair's prompt twice
    context_tokens: int | None = None
    n_blank_lines: int = 0
    n_overlong: int = 0  # examples over max_seq_length
    overlong_policy: Literal["truncate", "drop"] = "truncate"
    n_duplicates: int = 0  # examples identical to an earlier one in the training file
    n_validation_in_train: int = 0  # validation examples that also appear in the training data
    lengths: LengthStats | None = None  # tokens per example as trained
    warnings: list[str] = []


class Progress(msgspec.Struct, kw_only=True):
    epoch: float = 0.0
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None


class MemoryPlan(msgspec.Struct, kw_only=True):
    device: str
    micro_batch_size: int
    gradient_accumulation_steps: int
    estimated_peak_bytes: int
    available_bytes: int | None
    breakdown: dict[str, int] = {}
    packing: str | None = None  # the packing mode the job trains with (auto resolved)
    # Tokens per example the estimate assumes: the dataset's p95 length when padding-free, its
    # longest (the padded width) otherwise, max_seq_length when the lengths are unknown.
    row_tokens: int | None = None
    # Whether the job trains with gradient checkpointing (Hyperparameters.gradient_checkpointing
    # resolved against the estimate and the free memory).
    gradient_checkpointing: bool = True
    # Data-parallel ranks (one per GPU) and how they share the model: "ddp", a whole copy on each
    # (the estimate is per rank); 1 and "single" for a job on one device.
    ranks: int = 1
    strategy: Literal["single", "ddp"] = "single"


class Deployment(msgspec.Struct, kw_only=True):
    status: DeploymentStatus
    loaded_at: int | None = None
    error: str | None = None


class EarlyStopping(msgspec.Struct, kw_only=True):
    """Why a job ended before its last epoch, and which epoch's adapter it kept."""

    reason: str  # in words, e.g. "validation loss did not improve for 1 epoch (patience 1)"
    stopped_after_epoch: int
    n_epochs: int  # as asked
    chosen_epoch: int  # the best epoch by what was watched: its adapter is the job's final one
    step: int  # the optimizer step training stopped at
    # What was watched: hyperparameters.early_stopping_patience the validation loss, or
    # eval.early_stopping_patience the eval score.
    watched: Literal["valid_loss", "eval_score"] = "valid_loss"
    best_valid_loss: float | None = None
    valid_losses: list[float] = []  # per epoch, as evaluated
    best_score: float | None = None
    scores: list[float] = []  # per epoch, as graded


class Estimate(msgspec.Struct, kw_only=True):
    """How long a job should take on a runner's device: its real tokens over the throughput that
    jobs of the same model shape measured there (README: Duration estimates)."""

    shape: str  # the base model's shape, e.g. llama-h576-i1536-l30-kv3-v49152
    tokens: int  # real tokens to train: (supervised + context) per epoch x epochs
    device: str | None = None  # where the calibration was measured; None: nowhere yet
    tokens_per_second: float | None = None
    startup_seconds: float | None = None  # claim to first step, plus saving at the end
    seconds: float | None = None  # startup + tokens / tokens_per_second
    calibration_jobs: int = 0  # finished jobs the figures come from
    message: str | None = None  # why there is no estimate, when there is none
    actual_seconds: float | None = None  # on a succeeded job: its last attempt, start to end


class JobEstimate(msgspec.Struct, kw_only=True):
    """What POST /jobs answers with dry_run: the data checked, no job created."""

    object: Literal["fine_tuning.job.estimate"] = "fine_tuning.job.estimate"
    base_model: str
    dataset: DatasetSummary
    hyperparameters: Hyperparameters  # "auto" resolved, LoRA shape inherited when continuing
    method: Method = Method()
    plan: MemoryPlan | None  # on the calibrated device; None before any job has run there
    estimate: Estimate
    continued_from: ContinuedFrom | None = None


class ContinuedFrom(msgspec.Struct, kw_only=True):
    """The fine-tuned model a job continues: training starts from its adapter's weights."""

    model: str  # as asked: ft:<base>:<suffix>:<job id>, or a checkpoint's …:ckpt-<epoch>
    job_id: str
    checkpoint_epoch: int | None = None  # None: that job's final adapter
    adapter: str  # s3:// prefix of the adapter the weights come from
    # The models this one descends from, the base model first and `model` last.
    lineage: list[str]


class Job(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    status: Status
    base_model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    hyperparameters: Hyperparameters
    metadata: dict[str, str]
    deploy: bool
    created_at: int
    started_at: int | None
    finished_at: int | None
    fine_tuned_model: str | None
    error: ErrorInfo | None
    attempt: int
    trained_tokens: int | None
    estimated_finish: int | None
    progress: Progress | None
    dataset: DatasetSummary | None
    plan: MemoryPlan | None
    deployment: Deployment | None
    early_stopping: EarlyStopping | None = None
    # Set when the job was created from a fine-tuned model (base_model: "ft:…"); base_model is
    # then the base model at the root of its lineage.
    continued_from: ContinuedFrom | None = None
    estimate: Estimate | None = None
    method: Method = Method()
    priority: int = 0  # among this tenant's queued jobs, higher first
    gpus: Gpus = 1  # as asked; the plan's `ranks` is what the running attempt got
    eval: JobEval | None = None
    # The eval's mean score of the model training started from (base or parent), once scored.
    base_eval_score: float | None = None


class Event(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warning", "error"]
    type: str
    message: str
    data: dict[str, Any] | None = None


class EvalSample(msgspec.Struct, kw_only=True):
    prompt: str
    answer: str  # the epoch's adapter, greedy
    score: float | None = None  # the job's eval grader on this answer (0 when grading failed)
    error: str | None = None  # why grading failed


class Checkpoint(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    job_id: str
    epoch: int
    step: int
    uri: str
    metrics: dict[str, float]
    created_at: int
    samples: list[EvalSample] | None = None  # answers to the eval prompts at this epoch


class File(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    filename: str
    uri: str
    created_at: int


class PreviewRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """POST /files/{id}/preview: check a file for a base model and render its first rows."""

    base_model: Annotated[str, Meta(min_length=1, max_length=256,
                                    description="a base model's alias (GET /models)")]
    n_rows: Annotated[int, Meta(ge=1, le=20)] = 3
    method: Literal["supervised", "dpo"] = "supervised"
    train_on_inputs: bool = False
    max_seq_length: Annotated[int, Meta(ge=16, le=131072)] = 2048


class PreviewSegment(msgspec.Struct, kw_only=True):
    text: str
    trained: bool  # loss-bearing: the model learns to write this
    tokens: int


class PreviewRow(msgspec.Struct, kw_only=True):
    line: int
    tokens: int  # before truncation
    trained_tokens: int  # as trained (after truncation)
    truncated: bool  # longer than max_seq_length
    segments: list[PreviewSegment]  # the example as rendered; a preference pair: prompt + chosen
    rejected_segments: list[PreviewSegment] | None = None  # a preference pair: prompt + rejected


class FilePreview(msgspec.Struct, kw_only=True):
    """The whole file checked as a job would check it, and its first rows as trained."""

    object: Literal["file.preview"] = "file.preview"
    file_id: str
    base_model: str
    valid: bool  # a job on this file would pass validation
    format: str | None
    n_examples: int
    n_errors: int
    errors: list[ErrorInfo]  # the first errors, each with its line
    message: str | None = None  # why the file would fail, in words; None when valid
    warnings: list[str] = []
    rows: list[PreviewRow] = []


class Page(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool
    last_id: str | None = None


class ModelInfo(msgspec.Struct, kw_only=True):
    """A base model, or a fine-tuned adapter with its deployment status."""

    id: str
    object: Literal["model"] = "model"
    kind: Literal["base", "adapter"]
    base_model: str | None = None
    job_id: str | None = None
    served: bool = False
    status: str | None = None
    error: str | None = None
    loaded_at: int | None = None


class DeploymentSpec(msgspec.Struct, kw_only=True, frozen=True):
    """What the serving sidecar needs to serve one adapter (GET /internal/deployments)."""

    name: str
    job_id: str
    base_model: str
    bucket: str
    prefix: str
    folder: str
    kind: Literal["final", "checkpoint"]
    status: DeploymentStatus
    job_finished_at: float | None = None  # Unix seconds, for "servable N s after success"
    # The asking replica's own state (GET /internal/deployments?replica=…): None until it reports.
    replica_status: DeploymentStatus | None = None


class DeploymentReport(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What the serving sidecar reports back (POST /internal/deployments/{name})."""

    status: Literal["loading", "loaded", "failed"]
    # Which replica reports: its URL as the gateway lists it (TUNEDOCK_SERVING_REPLICA).
    replica: Annotated[str, Meta(min_length=1, max_length=256)]
    error: Annotated[str, Meta(max_length=4000)] | None = None
    load_seconds: float | None = None
    message: Annotated[str, Meta(max_length=4000)] | None = None


class Serving(msgspec.Struct, kw_only=True):
    base_url: str | None
    api_key: str | None = None
    # The largest LoRA rank the model server loads: a job with `deploy: true` and a larger
    # `lora_r` is refused (train it with `deploy: false`, or ask for a smaller rank).
    max_lora_rank: int | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorInfo


class ExportCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    format: ExportFormat
    # An epoch checkpoint instead of the job's final adapter.
    checkpoint: Annotated[int, Meta(ge=1, le=1000, description="an epoch whose checkpoint to "
                                    "export instead of the final adapter")] | None = None


class ExportChecks(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the export verified before it was stored (README: Exports)."""

    merged_max_logit_diff: float | None = None  # merged vs base + adapter on the check prompts
    merged_same_greedy: bool | None = None
    # base + adapter computed in the 16-bit dtype vs float32: the noise floor of 16 bits
    served_16bit_max_logit_diff: float | None = None
    gguf_tokens_match: bool | None = None  # the GGUF's tokenizer (llama.cpp's) vs the base's
    gguf_eos: str | None = None  # the token generation stops at, as the GGUF says
    modelfile_template_matches: bool | None = None  # vs the base's chat template, rendered


class Export(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["fine_tuning.export"] = "fine_tuning.export"
    job_id: str
    model: str  # the fine-tuned model (or checkpoint) exported
    format: ExportFormat
    checkpoint: int | None = None
    status: ExportStatus
    attempt: int
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    stage: str | None = None  # while running: merging, converting, quantizing, checking, uploading
    filename: str | None = None  # what the download is saved as
    bytes: int | None = None
    sha256: str | None = None
    seconds: float | None = None  # the successful attempt's duration
    checks: ExportChecks | None = None
    error: ErrorInfo | None = None
    download_url: str | None = None  # GET it (Range supported) once succeeded

