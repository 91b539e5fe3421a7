"""The job, deployment and export lifecycles: one table of allowed transitions each.
store_jobs.transition(), deployments.transition() and exports/store.transition() are their only
users."""

from __future__ import annotations

from service.contracts.schema import DeploymentStatus, ExportStatus, Status
from service.errors import InvalidTransition

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


D = DeploymentStatus
DEPLOYMENT_ALLOWED: dict[DeploymentStatus, frozenset[DeploymentStatus]] = {
    # pending -> loaded: a sidecar may report the load without reporting loading first.
    D.pending: frozenset({D.loading, D.loaded, D.failed, D.unloaded}),
    D.loading: frozenset({D.loaded, D.failed, D.unloaded}),
    # loaded -> failed: vLLM restarted and the re-load failed (on every replica that had it);
    # loaded -> loading: the replica that served it lost it while another is loading it.
    D.loaded: frozenset({D.loading, D.failed, D.unloaded}),
    # failed / unloaded -> pending: the user asked for it again. failed -> loading | loaded:
    # one replica failed to load it and another is loading it or did (deployments.follow_replicas).
    D.failed: frozenset({D.pending, D.loading, D.loaded, D.unloaded}),
    D.unloaded: frozenset({D.pending}),
}


def check_deployment_transition(current: DeploymentStatus, to: DeploymentStatus) -> None:
    """Raise InvalidTransition unless `current -> to` is in the deployment table: e.g. a load
    reported after the user unloaded the model must not bring it back."""
    if to not in DEPLOYMENT_ALLOWED[current]:
        raise InvalidTransition(f"a {current.value} deployment cannot become {to.value}",
                                param="status")


E = ExportStatus
EXPORT_ALLOWED: dict[ExportStatus, frozenset[ExportStatus]] = {
    E.queued: frozenset({E.running, E.failed}),
    # running -> queued: the runner's lease lapsed or it let go; another runner starts it again.
    E.running: frozenset({E.queued, E.succeeded, E.failed}),
    E.succeeded: frozenset(),
    E.failed: frozenset(),
}


def check_export_transition(current: ExportStatus, to: ExportStatus) -> None:
    if to not in EXPORT_ALLOWED[current]:
        raise InvalidTransition(f"a {current.value} export cannot become {to.value}", param="status")
