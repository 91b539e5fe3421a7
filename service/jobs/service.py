"""What the jobs API does: check and store a job, then validate its files in the background."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import structlog

from service.contracts import schema as s
from service.datasets.checked import CheckedFiles
from service.datasets.template import local_tokens
from service.datasets.validate import Options, Report, validate_jsonl
from service.db.tables import JobRow
from service.errors import InvalidTransition, NotFound, Unprocessable
from service.graders.service import GraderService, item_fields
from service.ids import model_name, new_id, parse_model_name
from service.jobs.estimate import Throughput, calibration_key, estimate_duration, training_tokens
from service.jobs.locate import Locator
from service.jobs.resolve import first_invalid, inherit_lora_shape, resolve_auto, summarize
from service.jobs.results import result_file, results_csv
from service.jobs.store import Store, event_row
from service.settings import Settings
from service.shapes import local_shape
from service.storage import ObjectStore
from service.training.plan import PlanError, make_plan, resolve_packing, row_tokens

log = structlog.get_logger()


@dataclass
class JobService:
    settings: Settings
    store: Store
    objects: ObjectStore
    _tasks: set[asyncio.Task] = field(default_factory=set)
    # This process's name as the holder of validation leases, and the jobs it validates now.
    owner: str = field(default_factory=lambda: f"api-{socket.gethostname()}-{os.getpid()}-{new_id('v')[2:10]}")
    _validating: set[str] = field(default_factory=set)
    # Shared with the FileService: a dry run and a preview reuse each other's file checks.
    checked: CheckedFiles = field(default_factory=CheckedFiles)
    # The app's, with the gateway's judges: a score_model grader's model must be one this tenant
    # may chat with. Without judges (a service with no gateway) score_model graders are refused.
    graders: GraderService = None  # type: ignore[assignment]
    where: Locator = field(init=False)

    def __post_init__(self) -> None:
        self.where = Locator(self.settings, self.store, self.objects)
        if self.graders is None:
            self.graders = GraderService(self.settings)

    # -- what the routes read and change: the store's SQL and transitions, named for the routes --
    async def get_job(self, tenant: str, job_id: str) -> s.Job:
        return await self.store.get_job(tenant, job_id)

    async def list_jobs(self, tenant: str, after: str | None, limit: int, status: s.Status | None = None,
                   metadata: dict[str, str] | None = None) -> s.Page:
        return await self.store.list_jobs(tenant, after, limit, status, metadata=metadata)

    async def cancel_job(self, tenant: str, job_id: str) -> s.Job:
        return await self.store.cancel_job(tenant, job_id)

    async def pause_job(self, tenant: str, job_id: str) -> s.Job:
        return await self.store.pause_job(tenant, job_id)

    async def resume_job(self, tenant: str, job_id: str) -> s.Job:
        return await self.store.resume_job(tenant, job_id)

    async def list_events(self, tenant: str, job_id: str, after: str | None, limit: int,
                     newest_first: bool = False) -> s.Page:
        return await self.store.list_events(tenant, job_id, after, limit, newest_first=newest_first)

    async def list_checkpoints(self, tenant: str, job_id: str) -> list[s.Checkpoint]:
        return await self.store.list_checkpoints(tenant, job_id)

    async def results_csv(self, tenant: str, job_id: str) -> str:
        return await results_csv(self.store, tenant, job_id)

    async def result_file(self, tenant: str, file_id: str) -> tuple[s.Job, bytes]:
        return await result_file(self.store, tenant, file_id)

    async def check(self, tenant: str, req: s.JobCreate) -> tuple[s.JobCreate, s.ContinuedFrom | None]:
        """`req` as it will train (a continued job: the root base model, the parent's LoRA
        shape), or the 4xx that says why it cannot."""
        await _check_method(self.graders, tenant, req)
        hp = req.hyperparameters
        # A reinforcement job trains group_size completions of each prompt: its micro-batches
        # and each GPU's share are counted in those sequences.
        rollouts = req.method.rollouts
        sequences = hp.batch_size * rollouts if hp.batch_size != "auto" else "auto"
        if hp.micro_batch_size and sequences != "auto" and sequences % hp.micro_batch_size:
            # Accumulation makes up batch_size in whole micro-batches: any other micro-batch
            # would train a different number of examples per step than was asked for. 422: each
            # field is valid alone (the schema cannot say "divides"), only the pair is not.
            raise Unprocessable(
                f"micro_batch_size {hp.micro_batch_size} does not divide "
                + (f"batch_size {hp.batch_size}" if rollouts == 1 else
                   f"the {sequences} completions per step (batch_size {hp.batch_size} x {rollouts})")
                + ", so a step could not take exactly batch_size examples; pick a micro_batch_size that "
                f"divides it (e.g. {max(d for d in range(1, hp.micro_batch_size + 1) if sequences % d == 0)}) "
                "or leave it out and the memory plan picks one",
                param="hyperparameters.micro_batch_size")
        limit = self.settings.tenant_max_gpus
        if isinstance(req.gpus, int) and limit is not None and req.gpus > limit:
            # Its tenant could never hold that many at once: the job would wait for good.
            raise Unprocessable(f"gpus {req.gpus} is more than the {limit} GPUs a tenant's jobs may "
                                "hold at once here; ask for fewer, or \"auto\"", param="gpus")
        if isinstance(req.gpus, int) and req.gpus > 1 and sequences != "auto":
            step = req.gpus * (hp.micro_batch_size or 1)
            if sequences % step:
                # Each rank takes an equal share of every step's examples, in whole micro-batches.
                raise Unprocessable(
                    f"gpus {req.gpus} does not divide "
                    + (f"batch_size {hp.batch_size}" if rollouts == 1 else
                       f"the {sequences} completions per step (batch_size {hp.batch_size} x {rollouts})")
                    + (f" into whole micro-batches of {hp.micro_batch_size}" if hp.micro_batch_size else "")
                    + f": each GPU takes an equal share of every step's examples; use a batch_size "
                    f"that is a multiple of {step}, or fewer gpus", param="gpus")
        if req.eval is not None:
            await _check_eval(self.graders, tenant, req)
        continued = None
        if req.base_model.startswith("ft:"):
            continued, hp = await self._parent(tenant, req.base_model, req.hyperparameters)
            req = msgspec.structs.replace(req, base_model=continued.lineage[0], hyperparameters=hp)
        elif self.settings.base_model(req.base_model) is None:
            known = ", ".join(m.alias for m in self.settings.base_models) or "none configured"
            raise NotFound(f"base_model {req.base_model!r} is not in the registry ({known}), "
                           "nor a fine-tuned model (ft:…)", param="base_model", code="model_not_found")
        if (req.deploy and self.settings.serving_url
                and req.base_model not in self.settings.served_models):
            raise Unprocessable(
                f"no serving instance serves {req.base_model!r}; set deploy: false to train anyway",
                param="deploy", code="model_not_served")
        if req.deploy and req.hyperparameters.lora_r > self.settings.max_lora_rank:
            raise Unprocessable(
                f"lora_r {req.hyperparameters.lora_r} is above the {self.settings.max_lora_rank} "
                "that serving accepts; lower it or set deploy: false",
                param="hyperparameters.lora_r")
        await self.where.check_readable(tenant, req.training_file, "training_file")
        if req.validation_file:
            await self.where.check_readable(tenant, req.validation_file, "validation_file")
        return req, continued

    async def _parent(self, tenant: str, name: str,
                      hp: s.Hyperparameters) -> tuple[s.ContinuedFrom, s.Hyperparameters]:
        """The fine-tuned model a job continues, and `hp` with the parent adapter's LoRA shape.
        Another tenant's model is answered like one that does not exist."""
        missing = NotFound(f"base_model {name!r}: no fine-tuned model or checkpoint of that name "
                           "for this API key", param="base_model", code="model_not_found")
        parsed = parse_model_name(name)
        if parsed is None:
            raise missing
        _, job_id, epoch = parsed
        try:
            parent = await self.store.get_job(tenant, job_id)
        except NotFound:
            raise missing from None
        if name != model_name(parent.base_model, parent.suffix, parent.id, epoch):
            raise missing
        if epoch is None:
            if parent.status is not s.Status.succeeded:
                raise Unprocessable(
                    f"base_model {name!r}: job {job_id} is {parent.status.value}, so it has no final "
                    "adapter yet; continue from one of its checkpoints (…:ckpt-<epoch>) or wait",
                    param="base_model", code="model_not_ready")
        adapter = await self.where.adapter_uri(tenant, job_id, epoch)
        if adapter is None:
            raise missing
        if self.settings.base_model(parent.base_model) is None:
            raise NotFound(f"base_model {name!r} was trained on {parent.base_model!r}, which is no "
                           "longer in the registry", param="base_model", code="model_not_found")
        lineage = parent.continued_from.lineage if parent.continued_from else [parent.base_model]
        return (s.ContinuedFrom(model=name, job_id=job_id, checkpoint_epoch=epoch, adapter=adapter,
                                lineage=[*lineage, name]),
                inherit_lora_shape(hp, parent.hyperparameters))

    async def create(self, tenant: str, req: s.JobCreate, req_hash: str,
                     idempotency_key: str | None) -> tuple[s.Job, bool]:
        req, continued = await self.check(tenant, req)
        row = JobRow(
            id=new_id("ftjob"), tenant=tenant, status=s.Status.validating_files.value,
            base_model=req.base_model, training_file=req.training_file,
            validation_file=req.validation_file, suffix=req.suffix,
            hyperparameters=msgspec.to_builtins(req.hyperparameters),
            metadata_=dict(req.metadata), deploy=req.deploy, attempt=0,
            continued_from=msgspec.to_builtins(continued) if continued else None,
            method=msgspec.to_builtins(req.method), priority=req.priority, gpus=str(req.gpus),
            eval=msgspec.to_builtins(req.eval) if req.eval else None,
        )
        job, created = await self.store.create_job(row, idempotency_key, req_hash)
        if created:
            self.validate_in_background(job.id)
        return job, created

    # -- background validation ------------------------------------------------------------
    def validate_in_background(self, job_id: str) -> None:
        if job_id in self._validating:
            return
        self._validating.add(job_id)
        task = asyncio.get_running_loop().create_task(self._validate_owned(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._validating.discard(job_id))

    async def _validate_owned(self, job_id: str) -> None:
        """Validate with the job's validation lease held and renewed; without it, leave the job
        to the process that holds it."""
        if not await self.store.hold_validation(job_id, self.owner, self.settings.lease_seconds):
            return
        renew = asyncio.get_running_loop().create_task(self._renew_validation(job_id))
        try:
            await self.validate(job_id)
        finally:
            renew.cancel()

    async def _renew_validation(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                if not await self.store.hold_validation(job_id, self.owner, self.settings.lease_seconds):
                    return  # the job moved on (validated, cancelled)
            except Exception:  # noqa: BLE001 - a database blip; the lease has slack
                log.warning("validation lease not renewed", job_id=job_id, exc_info=True)

    async def resume_pending(self) -> None:
        """Validation runs in API processes, one at a time per job (a lease): pick up what no
        live process holds (left by a restart or a crash). Every replica calls this at start
        and at each lease sweep; only the jobs whose lease is free or expired are taken."""
        for job_id in await self.store.jobs_in_status(s.Status.validating_files):
            self.validate_in_background(job_id)

    def sweep_leases_in_background(self, *also: Callable[[int], Awaitable[list[str]]]) -> None:
        """Requeue jobs whose lease ran out every `sweep_seconds`, so a job whose runner died
        goes back to the queue even when no live runner is left to notice (runners sweep too);
        `also` sweeps other leased work the same way (exports)."""
        task = asyncio.get_running_loop().create_task(self._sweep_leases(also))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep_leases(self, also: tuple[Callable[[int], Awaitable[list[str]]], ...]) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_seconds)
            try:
                moved = await self.store.requeue_expired(self.settings.max_attempts)
                for sweep in also:
                    moved += await sweep(self.settings.max_attempts)
                await self.resume_pending()  # validation whose process died
            except Exception:  # noqa: BLE001 - the database may come back; sweep again later
                log.warning("lease sweep failed", exc_info=True)
                continue
            if moved:
                log.warning("expired leases requeued", ids=moved)

    async def drain(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _validate_object(self, bucket: str, key: str, fmt: str | None, base_model: str,
                         hp: s.Hyperparameters, method: s.Method, reuse: bool = False) -> Report:
        entry = self.settings.base_model(base_model)
        options = Options(max_seq_length=hp.max_seq_length, train_on_inputs=hp.train_on_inputs,
                          overlong_examples=hp.overlong_examples, method=method.type,
                          item_fields=item_fields(method.reinforcement.grader)
                          if method.reinforcement is not None else ())

        def check() -> Report:
            tokens = local_tokens(entry.local_path if entry else None)
            chunks = self.objects.iter_bytes(bucket, key)
            return validate_jsonl(chunks, tokens, self.settings.max_line_bytes, options, fmt)

        if reuse and bucket == self.settings.artifact_bucket:  # an upload: it never changes
            return self.checked.report((bucket, key, base_model, fmt, options), check)
        return check()

    async def _read_files(self, tenant: str, job: s.Job | s.JobCreate,
                          reuse: bool = False) -> tuple[Report, Report | None]:
        """Stream and check the training file, then the validation file (in its format); with
        `reuse`, an upload's check made earlier for the same settings is taken as it is."""
        bucket, key = await self.where.locate(tenant, job.training_file, "training_file")
        train = await anyio.to_thread.run_sync(self._validate_object, bucket, key, None,
                                               job.base_model, job.hyperparameters, job.method, reuse)
        val = None
        if train.ok and job.validation_file:
            vb, vk = await self.where.locate(tenant, job.validation_file, "validation_file")
            val = await anyio.to_thread.run_sync(self._validate_object, vb, vk, train.format,
                                                 job.base_model, job.hyperparameters, job.method, reuse)
        return train, val

    async def estimate(self, base_model: str, hp: s.Hyperparameters, method: s.Method,
                       summary: s.DatasetSummary, ranks: int = 1) -> tuple[s.Estimate, s.MemoryPlan | None]:
        """The duration on the device this model shape last trained on, and the memory plan
        there, per rank on `ranks` devices (None before any job has calibrated it). Raises
        PlanError if it cannot fit. The duration is one device's: no scaling over several
        devices has been measured to divide it by."""
        entry = self.settings.base_model(base_model)
        shape = local_shape(entry.local_path if entry else None)
        name = shape.label if shape else f"model:{base_model}"
        throughput = Throughput(self.store.db)
        # Any calibration gives the device and its free memory to plan on; the plan says whether
        # the job will checkpoint, and the rate is then taken from jobs that trained the same way
        # when there are any (calibration_key).
        rows = (await throughput.latest(calibration_key(name, method.type))
                or await throughput.latest(calibration_key(name, method.type, checkpointing=False)))
        plan = None
        if shape is not None and rows:
            packing = resolve_packing(hp.packing)
            calibrated = rows[0]
            device = "cpu" if calibrated.device == "cpu" else "cuda"
            plan = make_plan(shape, hp, calibrated.available_bytes, calibrated.backend, device,
                             row_tokens=row_tokens(summary.lengths if not summary.tokens_estimated
                                                   else None, hp.max_seq_length, packing),
                             packing=packing, method=method, ranks=ranks)
            same_way = calibration_key(name, method.type, device, plan.gradient_checkpointing)
            if same_way != calibrated.shape:
                rows = await throughput.latest(same_way) or rows
        label = rows[0].shape if rows else calibration_key(name, method.type)
        found = estimate_duration(label, training_tokens(summary, int(hp.n_epochs)), rows)
        return found, plan

    async def dry_run(self, tenant: str, req: s.JobCreate) -> s.JobEstimate:
        """What POST /jobs would train, checked now and answered without creating a job."""
        req, continued = await self.check(tenant, req)
        train, val = await self._read_files(tenant, req, reuse=True)
        if (bad := first_invalid(train, val)) is not None:
            name, report = bad
            raise Unprocessable(f"{name}: {report.failure_message()}", param=name,
                                code="invalid_training_file")
        summary = summarize(train, val, req.hyperparameters)
        hp = resolve_auto(req.hyperparameters, summary.n_train, req.gpus, req.method.rollouts)
        try:
            found, plan = await self.estimate(req.base_model, hp, req.method, summary,
                                              req.gpus if isinstance(req.gpus, int) else 1)
        except PlanError as exc:
            raise Unprocessable(str(exc), param="hyperparameters", code="does_not_fit") from None
        return s.JobEstimate(base_model=req.base_model, dataset=summary, hyperparameters=hp,
                             method=req.method, plan=plan, estimate=found, continued_from=continued)

    async def validate(self, job_id: str) -> None:
        bound = log.bind(job_id=job_id)
        job = await self.store.get_job(None, job_id)
        if job.status is not s.Status.validating_files:
            return
        tenant = await self.store.job_tenant(job_id)
        try:
            train, val = await self._read_files(tenant, job)
        except Exception as exc:  # noqa: BLE001 - the job records the failure, the API stays up
            bound.exception("validation crashed")
            await self._fail(job_id, "file_unreadable", f"could not read the data: {exc}", None, {})
            return
        if (bad := first_invalid(train, val)) is not None:
            name, report = bad
            first = report.errors[0].line if report.errors else None
            await self._fail(job_id, "invalid_training_file",
                             f"{name}: {report.failure_message()}", first,
                             {"file": name, "n_errors": report.n_errors,
                              "errors": msgspec.to_builtins(report.errors)}, param=name)
            return
        summary = summarize(train, val, job.hyperparameters)
        data = msgspec.to_builtins(summary)
        fields: dict[str, Any] = {}
        event_data = data
        resolved = resolve_auto(job.hyperparameters, summary.n_train, job.gpus, job.method.rollouts)
        if resolved != job.hyperparameters:
            fields["hyperparameters"] = msgspec.to_builtins(resolved)
            event_data = {**data, "resolved": {k: fields["hyperparameters"][k]
                                               for k in ("n_epochs", "batch_size")
                                               if getattr(job.hyperparameters, k) == "auto"}}
        try:
            found, _ = await self.estimate(job.base_model, resolved, job.method, summary)
            fields["estimate"] = msgspec.to_builtins(found)
        except Exception:  # noqa: BLE001 - an estimate is a courtesy: never strand the job here
            # (PlanError included: the runner's own plan says so, with the memory it really has)
            bound.warning("no duration estimate", exc_info=True)
        try:
            await self.store.set_status(
                job_id, s.Status.queued,
                f"files validated ({train.format}): {summary.n_train} training and "
                f"{summary.n_validation} validation examples, {train.supervised_tokens} trained and "
                f"{train.context_tokens} context tokens per epoch"
                f"{' (estimated)' if train.tokens_estimated else ''}",
                data=event_data, dataset=data,
                extra_rows=tuple(event_row(job_id, "warning", w, "warning") for w in summary.warnings),
                **fields)
        except (InvalidTransition, NotFound):  # cancelled while validating: nothing to do
            bound.info("job changed during validation")
            return
        bound.info("files validated", examples=train.n_examples, tokens=train.tokens)

    async def _fail(self, job_id: str, code: str, message: str, line: int | None,
                    data: dict, param: str | None = None) -> None:
        error = msgspec.to_builtins(s.ErrorInfo(code=code, message=message, param=param, line=line))
        try:
            await self.store.set_status(job_id, s.Status.failed, message, level="error",
                                        data={"error": error, **data}, error=error)
        except (InvalidTransition, NotFound):  # cancelled meanwhile
            log.info("job changed during validation", job_id=job_id)


async def _check_method(graders: GraderService, tenant: str, req: s.JobCreate) -> None:
    """The method block matches method.type, and a reinforcement job's grader can run in the
    training child (a score_model's judge: a model served here to this tenant). 422s: each field
    is well-formed alone (the schema cannot tie a block to the type), only the combination is not."""
    method = req.method
    for block in ("dpo", "reinforcement"):
        if getattr(method, block) is not None and method.type != block:
            raise Unprocessable(f"method.{block} is given but method.type is {method.type!r}; set "
                                f"method.type to {block!r} or leave method.{block} out",
                                param="method.type")
    if method.type == "supervised":
        return
    if req.hyperparameters.packing == "padding_free":
        raise Unprocessable(f"packing 'padding_free' is for supervised jobs; a {method.type} job pads "
                            "each micro-batch's sequences (use auto, length_grouped or off)",
                            param="hyperparameters.packing")
    if method.type != "reinforcement":
        return
    if method.reinforcement is None:
        raise Unprocessable("a reinforcement job needs method.reinforcement.grader: the grader that "
                            "scores each sampled completion (its reward)", param="method.reinforcement")
    await graders.validate(tenant, method.reinforcement.grader, "method.reinforcement.grader")


async def _check_eval(graders: GraderService, tenant: str, req: s.JobCreate) -> None:
    """A graded evaluation the training child can run: a grader (a score_model's judge served here
    to this tenant), items it can prompt, and not beside eval_prompts (one set of answers per epoch)."""
    assert req.eval is not None
    if req.hyperparameters.eval_prompts:
        raise Unprocessable("give eval.items or hyperparameters.eval_prompts, not both: eval.items are "
                            "prompted and graded every epoch", param="eval")
    if req.eval.early_stopping_patience and req.hyperparameters.early_stopping_patience:
        raise Unprocessable("early stopping watches one thing: the eval score "
                            "(eval.early_stopping_patience) or the validation loss "
                            "(hyperparameters.early_stopping_patience), not both",
                            param="eval.early_stopping_patience")
    await graders.validate(tenant, req.eval.grader, "eval.grader")
    for i, item in enumerate(req.eval.items):
        prompt, messages = item.get("prompt"), item.get("messages")
        # The child renders these with the chat template: text turns only, ending with the user's.
        chat_ok = (isinstance(messages, list) and messages
                   and all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                           and isinstance(m.get("content"), str) for m in messages)
                   and messages[-1]["role"] == "user")
        if not (isinstance(prompt, str) and prompt) and not chat_ok:
            raise Unprocessable("each eval item needs `prompt` (a string) or `messages` (system, user and "
                                "assistant turns with text content, ending with the user's)",
                                param=f"eval.items[{i}]")

