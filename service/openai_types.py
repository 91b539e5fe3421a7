"""The /v1 wire types: OpenAI's documented shapes for files, fine-tuning jobs, their events and
checkpoints, and models, and the one mapping each way between them and tunedock's own types.
There is no second implementation of jobs or files: /v1 requests become `JobCreate`, and the
answers are tunedock's jobs seen through OpenAI's field names (ids keep tunedock's prefixes)."""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from service.contracts import schema as s
from service.errors import Unprocessable
from service.ids import model_name, result_file_id

# OpenAI's learning_rate_multiplier scales this (the native API's default learning rate).
BASE_LEARNING_RATE = 2e-4

Auto = Literal["auto"]


class OpenAIHyperparameters(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """`"auto"` n_epochs and batch_size are resolved from the training set's size (README:
    Hyperparameters); an "auto" multiplier is 1 (learning rate 2e-4)."""

    n_epochs: Annotated[int, Meta(ge=1, le=50)] | Auto = "auto"
    batch_size: Annotated[int, Meta(ge=1, le=1024)] | Auto = "auto"
    learning_rate_multiplier: Annotated[float, Meta(gt=0, le=100)] | Auto = "auto"


class Supervised(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    hyperparameters: OpenAIHyperparameters = OpenAIHyperparameters()


class OpenAIDpoHyperparameters(OpenAIHyperparameters, kw_only=True, forbid_unknown_fields=True,
                               frozen=True):
    beta: Annotated[float, Meta(gt=0, le=10)] | Auto = "auto"  # "auto": 0.1


class DpoOpenAI(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    hyperparameters: OpenAIDpoHyperparameters = OpenAIDpoHyperparameters()


class _OpenAIReinforcementHyperparameters(OpenAIHyperparameters, kw_only=True, forbid_unknown_fields=True,
                                          frozen=True):
    """OpenAI's FineTuneReinforcementHyperparameters; tunedock's own GRPO knobs (group_size,
    max_completion_tokens, temperature, beta) may ride beside them (OpenAIReinforcementHyperparameters)."""

    compute_multiplier: Annotated[float, Meta(gt=0, le=10)] | Auto = "auto"  # "auto": 1
    eval_interval: Annotated[int, Meta(ge=1)] | Auto = "auto"
    eval_samples: Annotated[int, Meta(ge=1, le=64)] | Auto = "auto"
    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"


_OPENAI_RFT = tuple(f.name for f in msgspec.structs.fields(_OpenAIReinforcementHyperparameters))
_NATIVE_RFT = typing.get_type_hints(s.ReinforcementHyperparameters, include_extras=True)
# Declared once, in s.ReinforcementHyperparameters: its knobs OpenAI's block has no field for.
RFT_OWN = tuple(f.name for f in msgspec.structs.fields(s.ReinforcementHyperparameters)
                if f.name not in _OPENAI_RFT)
OpenAIReinforcementHyperparameters = msgspec.defstruct(
    "OpenAIReinforcementHyperparameters", [(name, _NATIVE_RFT[name] | None, None) for name in RFT_OWN],
    bases=(_OpenAIReinforcementHyperparameters,), kw_only=True, forbid_unknown_fields=True,
    frozen=True, module=__name__)


class ReinforcementOpenAI(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    grader: s.Grader
    hyperparameters: OpenAIReinforcementHyperparameters = OpenAIReinforcementHyperparameters()  # type: ignore[valid-type]


class FineTuneMethod(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """OpenAI's name for it; a second `Method` beside the native one would make the OpenAPI
    document's component names ambiguous."""

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: DpoOpenAI | None = None
    reinforcement: ReinforcementOpenAI | None = None

    def blocks_match(self) -> None:
        """Unprocessable (422) for a method block that is not method.type's."""
        for block in ("supervised", "dpo", "reinforcement"):
            if getattr(self, block) is not None and block != self.type:
                raise Unprocessable(f"method.{block} is given but method.type is {self.type!r}",
                                    param="method.type")
        if self.type == "reinforcement" and self.reinforcement is None:
            raise Unprocessable("a reinforcement job needs method.reinforcement.grader: the grader "
                                "that scores each sampled completion (its reward)",
                                param="method.reinforcement")


def _reinforcement(block: ReinforcementOpenAI) -> s.Reinforcement:
    """OpenAI's reinforcement block as tunedock's: "auto" is the native default."""
    given = block.hyperparameters
    native: dict[str, Any] = {name: getattr(given, name) for name in RFT_OWN
                              if getattr(given, name) is not None}
    if given.compute_multiplier != "auto":
        native["compute_multiplier"] = given.compute_multiplier
    for name in ("eval_interval", "eval_samples"):
        if getattr(given, name) != "auto":
            native[name] = getattr(given, name)
    native["reasoning_effort"] = given.reasoning_effort
    return s.Reinforcement(grader=block.grader,
                           hyperparameters=msgspec.convert(native, s.ReinforcementHyperparameters))


# tunedock's own knobs that ride as extra top-level fields of OpenAI's create body (the OpenAI
# SDK's `extra_body`): every native hyperparameter OpenAI's body has no field for, with its type,
# bounds and meaning taken from s.Hyperparameters, so a knob is declared once.
OPENAI_OWN = ("n_epochs", "batch_size", "seed")  # in OpenAI's hyperparameters / body already
EXTRA_HYPERPARAMETERS = tuple(f.name for f in msgspec.structs.fields(s.Hyperparameters)
                              if f.name not in OPENAI_OWN)


class _FineTuningJobCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """OpenAI's create body; tunedock's own knobs come as extra top-level fields (`extra_body`)."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    training_file: s.FileRef
    validation_file: s.FileRef | None = None
    suffix: s.Suffix | None = None
    seed: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None
    metadata: s.Metadata | None = None
    hyperparameters: OpenAIHyperparameters | None = None
    method: FineTuneMethod | None = None
    # tunedock's extras: deploy, dry_run, and each of EXTRA_HYPERPARAMETERS (FineTuningJobCreate)
    deploy: bool = True
    # Check the data and answer with the dataset summary, plan and duration; create nothing.
    dry_run: bool = False
    # Graded evaluation before training and every epoch, as on POST /jobs.
    eval: s.JobEval | None = None
    # Devices to train on, one data-parallel rank each, as on POST /jobs.
    gpus: s.Gpus = 1

    def to_native(self) -> s.JobCreate:
        """The same job on the native API. Unprocessable (422) where the body is well-formed but
        its fields contradict each other (a method block that is not method.type's, a learning
        rate above 1): the schema cannot state those, so they are not a 400."""
        oai: OpenAIHyperparameters = self.hyperparameters or OpenAIHyperparameters()
        method = s.Method()
        if self.method is not None:
            self.method.blocks_match()
        if self.method is not None and self.method.type == "dpo":
            dpo = (self.method.dpo or DpoOpenAI()).hyperparameters
            oai = dpo
            beta = s.DpoHyperparameters().beta if dpo.beta == "auto" else dpo.beta
            method = s.Method(type="dpo", dpo=s.Dpo(hyperparameters=s.DpoHyperparameters(beta=beta)))
        elif self.method is not None and self.method.type == "reinforcement":
            assert self.method.reinforcement is not None
            oai = self.method.reinforcement.hyperparameters
            try:
                method = s.Method(type="reinforcement", reinforcement=_reinforcement(self.method.reinforcement))
            except msgspec.ValidationError as exc:
                raise Unprocessable(f"method.reinforcement.hyperparameters: {exc}",
                                    param="method.reinforcement.hyperparameters") from None
        elif self.method is not None and self.method.supervised is not None:
            oai = self.method.supervised.hyperparameters
        hp: dict[str, Any] = {
            "n_epochs": oai.n_epochs,  # "auto" is resolved from the data once it is validated
            "batch_size": oai.batch_size,
            "learning_rate": BASE_LEARNING_RATE * (1.0 if oai.learning_rate_multiplier == "auto"
                                                   else oai.learning_rate_multiplier),
        }
        if hp["learning_rate"] > 1:
            raise Unprocessable("learning_rate_multiplier gives a learning rate above 1; lower it",
                                 param="hyperparameters.learning_rate_multiplier")
        if self.seed is not None:
            hp["seed"] = self.seed
        for name in EXTRA_HYPERPARAMETERS:
            if (value := getattr(self, name)) is not None:
                hp[name] = value
        try:
            hyperparameters = msgspec.convert(hp, s.Hyperparameters)
        except msgspec.ValidationError as exc:  # a combination the native API refuses
            raise Unprocessable(f"the resolved hyperparameters are not valid: {exc}",
                                 param="hyperparameters") from None
        return s.JobCreate(base_model=self.model, training_file=self.training_file,
                           validation_file=self.validation_file, suffix=self.suffix,
                           hyperparameters=hyperparameters, method=method,
                           metadata=self.metadata or {}, deploy=self.deploy, dry_run=self.dry_run,
                           eval=self.eval, gpus=self.gpus)


_NATIVE = typing.get_type_hints(s.Hyperparameters, include_extras=True)
FineTuningJobCreate = msgspec.defstruct(
    "FineTuningJobCreate", [(name, _NATIVE[name] | None, None) for name in EXTRA_HYPERPARAMETERS],
    bases=(_FineTuningJobCreate,), kw_only=True, forbid_unknown_fields=True, frozen=True,
    module=__name__)
FineTuningJobCreate.__doc__ = _FineTuningJobCreate.__doc__


class ResolvedHyperparameters(msgspec.Struct, kw_only=True):
    n_epochs: int | Auto  # "auto" until the training file is validated
    batch_size: int | Auto
    learning_rate_multiplier: float


class SupervisedResolved(msgspec.Struct, kw_only=True):
    hyperparameters: ResolvedHyperparameters


class DpoResolvedHyperparameters(ResolvedHyperparameters, kw_only=True):
    beta: float


class DpoResolved(msgspec.Struct, kw_only=True):
    hyperparameters: DpoResolvedHyperparameters


class ReinforcementResolvedHyperparameters(ResolvedHyperparameters, kw_only=True):
    compute_multiplier: float
    eval_interval: int | Auto  # "auto": once per epoch
    eval_samples: int | Auto
    reasoning_effort: str


class ReinforcementResolved(msgspec.Struct, kw_only=True):
    grader: s.Grader
    hyperparameters: ReinforcementResolvedHyperparameters


class MethodResolved(msgspec.Struct, kw_only=True, omit_defaults=True):
    # Required, so it is always sent (OpenAI's FineTuneMethod requires it); omit_defaults drops
    # the method object that does not apply, which OpenAI's schema has no null for.
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedResolved | None = None
    dpo: DpoResolved | None = None
    reinforcement: ReinforcementResolved | None = None


def _method_out(method: s.Method, resolved: ResolvedHyperparameters) -> MethodResolved:
    common = msgspec.structs.asdict(resolved)
    if method.type == "dpo":
        return MethodResolved(type="dpo", dpo=DpoResolved(
            hyperparameters=DpoResolvedHyperparameters(**common, beta=method.beta)))
    if method.type == "reinforcement" and method.reinforcement is not None:
        rft = method.reinforcement.hyperparameters
        return MethodResolved(type="reinforcement", reinforcement=ReinforcementResolved(
            grader=method.reinforcement.grader,
            hyperparameters=ReinforcementResolvedHyperparameters(
                **common, compute_multiplier=rft.compute_multiplier,
                eval_interval=rft.eval_interval or "auto", eval_samples=rft.eval_samples or "auto",
                reasoning_effort=rft.reasoning_effort)))
    return MethodResolved(type="supervised", supervised=SupervisedResolved(hyperparameters=resolved))


class JobError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(msgspec.Struct, kw_only=True):
    """OpenAI's fine-tuning job object, plus tunedock's view (`tunedock`: the native job)."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: ResolvedHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Any]
    metadata: dict[str, str] | None
    method: MethodResolved
    user_provided_suffix: str | None
    tunedock: s.Job


def job_out(job: s.Job, tenant: str) -> FineTuningJob:
    hp = job.hyperparameters
    resolved = ResolvedHyperparameters(n_epochs=hp.n_epochs, batch_size=hp.batch_size,
                                       learning_rate_multiplier=hp.learning_rate / BASE_LEARNING_RATE)
    error = (JobError(code=job.error.code, message=job.error.message, param=job.error.param)
             if job.error else None)
    return FineTuningJob(
        id=job.id, created_at=job.created_at, error=error, fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at, hyperparameters=resolved,
        model=job.continued_from.model if job.continued_from else job.base_model,
        organization_id=tenant,
        result_files=[result_file_id(job.id)] if job.status is s.Status.succeeded else [], seed=hp.seed, status=job.status.value,
        trained_tokens=job.trained_tokens, training_file=job.training_file,
        validation_file=job.validation_file, estimated_finish=job.estimated_finish, integrations=[],
        metadata=job.metadata or None,
        method=_method_out(job.method, resolved),
        user_provided_suffix=job.suffix, tunedock=job)


class JobEvent(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None
    type: Literal["message", "metrics"]


# OpenAI's event levels are info | warn | error; tunedock's "warning" is OpenAI's "warn".
_LEVELS = {"info": "info", "warning": "warn", "error": "error"}


def event_out(event: s.Event) -> JobEvent:
    return JobEvent(id=event.id, created_at=event.created_at, level=_LEVELS[event.level],
                    message=event.message,
                    data={"tunedock_type": event.type, **(event.data or {})},
                    type="metrics" if event.type == "metrics" else "message")


class CheckpointMetrics(msgspec.Struct, kw_only=True, omit_defaults=True):
    step: float
    train_loss: float | None = None
    valid_loss: float | None = None


class JobCheckpoint(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int
    epoch: int


def checkpoint_out(job: s.Job, ckpt: s.Checkpoint) -> JobCheckpoint:
    # The name it is (or would be) served under: POST /jobs/{id}/checkpoints/{epoch}/deploy.
    name = model_name(job.base_model, job.suffix, job.id, ckpt.epoch)
    return JobCheckpoint(
        id=ckpt.id, created_at=ckpt.created_at, fine_tuned_model_checkpoint=name,
        fine_tuning_job_id=job.id, step_number=ckpt.step, epoch=ckpt.epoch,
        metrics=CheckpointMetrics(step=ckpt.step, train_loss=ckpt.metrics.get("train_loss"),
                                  valid_loss=ckpt.metrics.get("valid_loss")))


class OpenAIFile(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str = "fine-tune"
    status: str = "processed"


def file_out(file: s.File) -> OpenAIFile:
    return OpenAIFile(id=file.id, bytes=file.bytes, created_at=file.created_at, filename=file.filename)


def result_file_out(job: s.Job, size: int, filename: str) -> OpenAIFile:
    return OpenAIFile(id=result_file_id(job.id), bytes=size, created_at=job.finished_at or job.created_at,
                      filename=filename, purpose="fine-tune-results")


class Deleted(msgspec.Struct, kw_only=True):
    id: str
    object: str
    deleted: bool = True


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    parent: str | None = None
    status: str | None = None


class ListPage(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def page(items: list[Any], has_more: bool = False) -> ListPage:
    return ListPage(data=items, has_more=has_more, first_id=items[0].id if items else None,
                    last_id=items[-1].id if items else None)
