"""What crosses between the runner and its training child: the TrainingSpec the runner writes
for one attempt (a JSON file), every message back from the child (one JSON line each on the
events pipe, one tagged union on the `type` field), and the child's exit codes. Both sides import
this module: the child encodes these structs, the runner decodes with `decode` and matches on
type, so a renamed field fails in the type checker and the unit tests, not in an e2e run."""

from __future__ import annotations

import os
import sys
import time
from typing import Literal, TextIO

import msgspec

from service.contracts.schema import (
    EarlyStopping,
    EvalSample,
    ExportChecks,
    ExportFormat,
    Hyperparameters,
    JobEval,
    LengthStats,
    MemoryPlan,
    Method,
)


class ObjectRef(msgspec.Struct, kw_only=True, frozen=True):
    bucket: str
    key: str


class TrainingSpec(msgspec.Struct, kw_only=True, frozen=True):
    """What the runner hands the training child (service/training) as a JSON file."""

    job_id: str
    base_model: str  # the alias, for the fine-tuned model's name
    base_model_source: str  # a local folder or a hub id
    hyperparameters: Hyperparameters
    method: Method = Method()
    train: ObjectRef
    validation: ObjectRef | None = None
    validation_rows: int = 0  # how many rows the seeded automatic split holds out
    example_lengths: LengthStats | None = None  # the training file's, from validation
    artifact_bucket: str
    output_prefix: str  # jobs/{id}
    resume_from: ObjectRef | None = None  # a checkpoint prefix (…/checkpoints/epoch-N)
    # Continued training: the parent adapter (a prefix holding adapter_model.safetensors) whose
    # weights the new adapter starts from.
    init_adapter: ObjectRef | None = None
    max_micro_batch_size: int | None = None  # a cap after an out-of-memory retry
    # The memory this job may plan with on a device it shares (runner/placement.py): its share of
    # what the other jobs' plans leave. None: whatever the device has free (CPU: no limit).
    memory_budget_bytes: int | None = None
    # Torch's threads on a CPU shared with other jobs (its share of the cores); None: torch's default.
    cpu_threads: int | None = None
    # Data-parallel ranks, one per device (service/training/ranks.py); batch_size stays the
    # examples per optimizer step, each rank taking its share of the micro-batches.
    ranks: int = 1
    backend: Literal["auto", "unsloth", "peft"] = "auto"
    metrics_every_steps: int = 1
    deterministic: bool = False
    work_dir: str
    # Graded evaluation (schema.JobEval); score_base: the model training starts from is still to
    # be scored (the first attempt, before any checkpoint).
    eval: JobEval | None = None
    # Epochs an earlier attempt already scored (checkpoint metrics' eval_score), for
    # eval.checkpoint_selection "score" on a resumed job.
    epoch_scores: dict[int, float] = {}
    score_base: bool = False


# The child's exit status: 0 done; 2 bad spec, data or plan (no retry helps); 3 out of memory
# (the runner retries with a smaller micro-batch); 4 stopped by SIGTERM between steps (pause,
# cancel or runner shutdown); 1 anything else (retried up to max_attempts).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_OOM, EXIT_STOPPED = 0, 1, 2, 3, 4


class Message(msgspec.Struct, tag_field="type", kw_only=True, frozen=True):
    time: float = msgspec.field(default_factory=time.time)


class Ready(Message, tag="ready", kw_only=True):
    """A warm child has imported the training stack for `backend` and waits for a job."""

    backend: str


class Started(Message, tag="started", kw_only=True):
    backend: str  # unsloth | peft
    device: str  # cuda | cpu
    versions: dict[str, str]
    cpu_threads: int | None = None  # torch's threads on the CPU (its share of a shared CPU)


class Planned(Message, tag="plan", kw_only=True):
    plan: MemoryPlan


class Loaded(Message, tag="loaded", kw_only=True):
    seconds: float


class Continued(Message, tag="continued", kw_only=True):
    """Continued training: the parent adapter's weights were loaded."""

    message: str
    prefix: str


# A reinforcement job's adapter in vLLM while it samples rollouts (service/training/rollouts.py):
# the serving sidecar's reconcile leaves adapters of this prefix alone.
ROLLOUT_ADAPTER_PREFIX = "rollout-"


class Rollouts(Message, tag="rollouts", kw_only=True):
    """A reinforcement job's rollouts come from vLLM (service/training/rollouts.py)."""

    message: str
    adapter: str  # the name vLLM holds this job's adapter under while it trains


class TrainBegin(Message, tag="train_begin", kw_only=True):
    step: int


class Progress(Message, tag="progress", kw_only=True):
    step: int
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None  # None on the first progress of an attempt (step 0)
    learning_rate: float | None = None
    tokens_per_second: float | None = None  # real tokens, since the previous log
    step_seconds: float | None = None
    trained_tokens: int | None = None
    supervised_tokens: int | None = None
    gpu_memory_bytes: int | None = None
    # DPO: chosen, rejected, accuracy, margin; reinforcement: reward mean and std, kl, ...
    rewards: dict[str, float] | None = None  # (callbacks.REWARDS)


class CheckpointSaved(Message, tag="checkpoint", kw_only=True):
    """An epoch's checkpoint, already uploaded under `prefix`."""

    epoch: int
    step: int
    bucket: str
    prefix: str
    metrics: dict[str, float]
    samples: list[EvalSample] | None = None


class ResumePointSaved(Message, tag="resume_point", kw_only=True):
    step: int
    epoch: float
    bucket: str
    prefix: str


class BaseScored(Message, tag="base_scored", kw_only=True):
    """The eval's score of the model training starts from, before the first step."""

    score: float
    samples: list[EvalSample]


class Evaluated(Message, tag="evaluated", kw_only=True):
    """The graded eval between epochs (a reinforcement job's eval_interval): the adapter as it is
    after `step`, scored on the eval items."""

    step: int
    epoch: float
    score: float
    samples: list[EvalSample]


class Selected(Message, tag="selected", kw_only=True):
    """eval.checkpoint_selection "score": the epoch whose adapter is the job's final one."""

    epoch: int
    score: float
    scores: dict[int, float]  # every scored epoch's mean score


class Resumed(Message, tag="resumed", kw_only=True):
    prefix: str
    checkpoint: str


class Warned(Message, tag="warning", kw_only=True):
    message: str


class Stopped(Message, tag="stopped", kw_only=True):
    """The child stopped on SIGTERM, cleanly (exit EXIT_STOPPED)."""

    message: str
    trained: bool = True  # False: stopped before its first step, so the attempt cost nothing


class Result(Message, tag="result", kw_only=True):
    """Training finished and the final adapter is uploaded under `prefix`."""

    bucket: str
    prefix: str
    trained_tokens: int
    supervised_tokens: int
    train_loss: float
    global_step: int
    best_checkpoint: str | None = None
    early_stop: EarlyStopping | None = None
    # What duration estimates are calibrated from (service/jobs/estimate.py).
    train_seconds: float
    steady_tokens_per_second: float | None = None
    shape: str
    device_name: str
    available_bytes: int | None = None
    backend: str
    gradient_checkpointing: bool = True  # the plan's choice: ~1.4x apart on a GPU


class ExportSpec(msgspec.Struct, kw_only=True, frozen=True):
    """What the runner hands an export child (`python -m service.exports SPEC.json`)."""

    export_id: str
    job_id: str
    model: str  # the fine-tuned model's name: the file's name and the Modelfile's comment
    format: ExportFormat
    base_model_source: str  # a local folder or a hub id
    adapter: ObjectRef  # a prefix holding adapter_model.safetensors and adapter_config.json
    artifact_bucket: str
    output_prefix: str  # exports/{id}
    check_prompts: list[str] = []  # the job's eval prompts; the export adds its own
    work_dir: str


class ExportStage(Message, tag="export_stage", kw_only=True):
    stage: str  # fetching, merging, converting, quantizing, checking, uploading


class ExportDone(Message, tag="export_done", kw_only=True):
    """The export is uploaded at `key` and passed its checks."""

    bucket: str
    key: str
    filename: str
    bytes: int
    sha256: str
    checks: ExportChecks
    modelfile: str | None = None


class Failed(Message, tag="error", kw_only=True):
    code: str  # invalid_spec, insufficient_gpu_memory, invalid_hyperparameters, out_of_memory, training_error
    message: str


ChildMessage = (Ready | Started | Planned | Loaded | Continued | Rollouts | TrainBegin | Progress
                | CheckpointSaved | BaseScored | Evaluated | Selected | ResumePointSaved | Resumed | Warned | Stopped | Result | Failed
                | ExportStage | ExportDone)
_decoder = msgspec.json.Decoder(ChildMessage)


def decode(line: bytes) -> ChildMessage:
    """One line of the events pipe; msgspec.DecodeError (ValidationError included) if it is not
    a message of this union."""
    return _decoder.decode(line)


# The fork server (service/training/template.py) and the runner: a request to fork a warm child
# travels on a Unix socket with the child's two pipe ends attached; the answers are JSON lines
# on the template's stdout.
class ForkRequest(msgspec.Struct, kw_only=True, frozen=True):
    log: str  # where the child writes until it is handed a job
    memory_limit_bytes: int | None = None


class Imported(msgspec.Struct, tag="imported", kw_only=True, frozen=True):
    """The template has imported the training stack: a fork from now on takes milliseconds."""

    backend: str


class Forked(msgspec.Struct, tag="forked", kw_only=True, frozen=True):
    pid: int


class Exited(msgspec.Struct, tag="exited", kw_only=True, frozen=True):
    pid: int
    code: int  # as asyncio reports it: the exit status, or -N for signal N


TemplateMessage = Imported | Forked | Exited


class Emitter:
    """The child's end of the events pipe: one JSON line per message."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Emitter:
        fd = env.get("TUNEDOCK_EVENTS_FD")
        # Libraries print to stdout; events get their own pipe when the runner gives one.
        return cls(os.fdopen(int(fd), "w", buffering=1) if fd else sys.stdout)

    def emit(self, message: Message) -> None:
        self.stream.write(msgspec.json.encode(message).decode() + "\n")
        self.stream.flush()
