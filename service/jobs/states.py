"""The job lifecycle: one table of allowed transitions. store_jobs.transition() is its only user."""

from __future__ import annotations

from service.errors import InvalidTransition
from service.jobs.schema import Status

ALLOWED: dict[Status, frozenset[Status]] = {
    Status.validating_files: frozenset({Status.queued, Status.failed, Status.cancelled}),
    Status.queued: frozenset({Status.running, Status.paused, Status.failed, Status.cancelled}),
    # running -> queued: the lease expired or the runner let go; the job resumes from a checkpoint.
    # running -> paused: the runner stopped the child at a step boundary after saving a resume point.
    Status.running: frozenset({Status.queued, Status.paused, Status.succeeded, Status.failed,
                               Status.cancelled}),
    Status.paused: frozenset({Status.queued, Status.cancelled}),
    Status.succeeded: frozenset(),
    Status.failed: frozenset(),
    Status.cancelled: frozenset(),
}


def check_transition(current: Status, to: Status) -> None:
    """Raise InvalidTransition unless `current -> to` is in the table."""
    if to not in ALLOWED[current]:
        raise InvalidTransition(f"a {current.value} job cannot become {to.value}", param="status")
