"""The TrainingSpec the runner hands its child for one attempt: where the data and any parent
adapter are, where to resume from, and the caps that earlier attempts taught."""

from __future__ import annotations

from pathlib import Path

from service.contracts import schema as s
from service.contracts.messages import ObjectRef, TrainingSpec
from service.jobs.locate import Locator
from service.jobs.store import Store
from service.settings import Settings
from service.storage import parse_s3_uri


def object_ref(uri: str) -> ObjectRef:
    """An s3:// URI the service wrote itself (checkpoint, resume point, adapter) as an ObjectRef."""
    bucket, key = parse_s3_uri(uri, "uri")
    return ObjectRef(bucket=bucket, key=key.rstrip("/"))


async def build_spec(settings: Settings, store: Store, where: Locator, job: s.Job,
                     max_micro_batch: int | None, work_dir: Path,
                     memory_budget: int | None = None, cpu_threads: int | None = None,
                     ranks: int = 1) -> TrainingSpec:
    """LookupError when the base model left the registry; NotFound when a file is gone."""
    tenant = await store.job_tenant(job.id)
    bucket, key = await where.locate(tenant, job.training_file, "training_file")
    validation = None
    if job.validation_file:
        vb, vk = await where.locate(tenant, job.validation_file, "validation_file")
        validation = ObjectRef(bucket=vb, key=vk)
    # Resume from whichever is later: the last epoch checkpoint or the last resume point.
    checkpoints = await store.list_checkpoints(None, job.id)
    points = [(c.step, c.uri) for c in checkpoints]
    if (point := await store.resume_point(job.id)) is not None:
        points.append((point["step"], point["uri"]))
    entry = settings.base_model(job.base_model)
    if entry is None:
        raise LookupError(f"base model {job.base_model!r} is no longer in the registry")
    dataset = job.dataset
    return TrainingSpec(
        job_id=job.id, base_model=job.base_model, base_model_source=entry.source,
        hyperparameters=job.hyperparameters, method=job.method,
        train=ObjectRef(bucket=bucket, key=key), validation=validation,
        validation_rows=dataset.n_validation if dataset and dataset.validation_source == "split" else 0,
        # Lengths estimated from bytes (no local tokenizer) could under-plan memory.
        example_lengths=dataset.lengths if dataset and not dataset.tokens_estimated else None,
        artifact_bucket=settings.artifact_bucket, output_prefix=f"jobs/{job.id}",
        resume_from=object_ref(max(points)[1]) if points else None,
        init_adapter=object_ref(job.continued_from.adapter) if job.continued_from else None,
        max_micro_batch_size=max_micro_batch, memory_budget_bytes=memory_budget, cpu_threads=cpu_threads, ranks=ranks, work_dir=str(work_dir / "work"),
        deterministic=settings.deterministic_training,
        eval=job.eval, epoch_scores={c.epoch: c.metrics["eval_score"] for c in checkpoints
                                     if "eval_score" in c.metrics},
        # A reinforcement job is graded by its grader when it has no eval of its own.
        score_base=(job.eval is not None or job.method.type == "reinforcement")
        and job.base_eval_score is None and not points,
    )
