"""The state table: terminal states are final, and only the listed moves are allowed."""

import pytest

from service.contracts.schema import TERMINAL, Status
from service.errors import InvalidTransition
from service.jobs.states import ALLOWED, check_transition


def test_terminal_states_allow_nothing() -> None:
    for status in TERMINAL:
        assert ALLOWED[status] == frozenset()
        with pytest.raises(InvalidTransition):
            check_transition(status, Status.queued)


def test_the_happy_path_is_allowed() -> None:
    path = [Status.validating_files, Status.queued, Status.running, Status.succeeded]
    for a, b in zip(path, path[1:]):
        check_transition(a, b)


def test_queued_cannot_jump_to_succeeded() -> None:
    with pytest.raises(InvalidTransition):
        check_transition(Status.queued, Status.succeeded)


def test_a_deployment_table_covers_every_status_and_unloaded_stays_unloaded() -> None:
    from service.contracts.schema import DeploymentStatus as D
    from service.jobs.states import DEPLOYMENT_ALLOWED, check_deployment_transition

    assert set(DEPLOYMENT_ALLOWED) == set(D)
    for a, b in [(D.pending, D.loading), (D.loading, D.loaded), (D.loaded, D.unloaded),
                 (D.unloaded, D.pending), (D.loaded, D.failed), (D.failed, D.pending),
                 # several replicas: one failed and another loaded it; the one serving it lost it
                 # while another loads it
                 (D.failed, D.loaded), (D.loaded, D.loading)]:
        check_deployment_transition(a, b)
    for a, b in [(D.unloaded, D.loaded), (D.unloaded, D.loading), (D.unloaded, D.failed),
                 (D.loaded, D.pending), (D.loading, D.pending)]:
        with pytest.raises(InvalidTransition):
            check_deployment_transition(a, b)
