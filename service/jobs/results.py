"""A job's result file: one CSV row per optimizer step, built from what the job recorded
(its metrics events and its checkpoints), like OpenAI's step_metrics.csv result file.

Columns: step, epoch, train_loss, valid_loss (on the step that ends an epoch), learning_rate,
trained_tokens (real, cumulative), supervised_tokens (loss-bearing, this attempt), tokens_per_second.
A step that was trained twice (a resumed attempt redoes the steps after its resume point) keeps
its last row.
"""

from __future__ import annotations

import csv
import io

from service.contracts import schema as s
from service.errors import Conflict, NotFound
from service.ids import result_file_job
from service.jobs.store import Store

# Events read per query: a 100k-step job is 20 queries, not the 1,000 of the API's page size.
READ_BATCH = 5000
COLUMNS = ("step", "epoch", "train_loss", "valid_loss", "learning_rate", "trained_tokens",
           "supervised_tokens", "tokens_per_second")


async def results_csv(store: Store, tenant: str, job_id: str) -> str:
    steps: dict[int, dict] = {}
    after = None
    while True:
        page = await store.list_events(tenant, job_id, after, READ_BATCH)
        for event in page.data:
            if event.type == "metrics" and event.data.get("step") is not None:
                steps[event.data["step"]] = event.data
        if not page.has_more:
            break
        after = page.last_id
    valid = {c.step: c.metrics.get("valid_loss") for c in await store.list_checkpoints(tenant, job_id)}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for step in sorted(steps):
        m = steps[step]
        writer.writerow([step, m.get("epoch"), m.get("loss"), valid.get(step), m.get("learning_rate"),
                         m.get("trained_tokens"), m.get("supervised_tokens"),
                         m.get("tokens_per_second")])
    return out.getvalue()


FILENAME = "step_metrics.csv"  # OpenAI's name for a job's result file


async def result_file(store: Store, tenant: str, file_id: str) -> tuple[s.Job, bytes]:
    """A succeeded job's result file (ids.result_file_id) and its content. Any other job's, or
    another tenant's, is not found, in the same words as a file that does not exist."""
    job_id = result_file_job(file_id)
    missing = NotFound(f"no file {file_id!r}", param="file_id")
    if job_id is None:
        raise missing
    try:
        job = await store.get_job(tenant, job_id)
    except NotFound:
        raise missing from None
    if job.status is not s.Status.succeeded:
        raise missing
    return job, (await results_csv(store, tenant, job_id)).encode()


def refuse_delete(file_id: str) -> Conflict:
    return Conflict(f"{file_id} is a job's result file: it is made from what the job recorded and "
                    "is kept as long as the job (GET /jobs/{id}/results gives the same CSV)",
                    param="file_id")
