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
