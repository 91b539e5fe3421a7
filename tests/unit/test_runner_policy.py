"""The runner's rules after a training child exits (service/runner/policy.py), and the typed
messages between child and runner (service/contracts/messages.py), each tested alone."""

from __future__ import annotations

import msgspec
import pytest

from service.contracts import messages as m
from service.contracts.messages import Emitter
from service.contracts.schema import EarlyStopping, MemoryPlan
from service.runner.policy import Attempt, decide

PLAN = MemoryPlan(device="cuda", micro_batch_size=8, gradient_accumulation_steps=1,
                  estimated_peak_bytes=1, available_bytes=2)
RESULT = m.Result(bucket="b", prefix="jobs/x/adapter", trained_tokens=10, supervised_tokens=5,
                  train_loss=1.0, global_step=3, train_seconds=2.0, shape="llama", device_name="cpu",
                  backend="peft")
OOM = m.Failed(code="out_of_memory", message="CUDA out of memory. Tried to allocate 2 GiB")


def run(attempt: Attempt, **kw: object):  # noqa: ANN201
    args = {"stopping": False, "oom_retry": 0, "max_oom_retries": 2, "micro_batch": None,
            "job_attempt": 1, "max_attempts": 3, **kw}
    return decide(attempt, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("attempt", "kw", "action"), [
    (Attempt(code=0, result=RESULT), {}, "succeed"),
    (Attempt(code=0), {}, "retry_elsewhere"),  # exited 0 without a result: not a success
    (Attempt(code=m.EXIT_STOPPED, pausing=True), {}, "pause"),
    (Attempt(code=m.EXIT_STOPPED), {}, "release"),
    (Attempt(code=1), {"stopping": True}, "release"),  # killed by the runner's own shutdown
    (Attempt(code=1, lost=True), {}, "forget"),
    (Attempt(code=m.EXIT_OOM, error=OOM, plan=PLAN), {}, "retry_smaller"),
    (Attempt(code=m.EXIT_OOM, error=OOM, plan=PLAN), {"oom_retry": 2}, "fail"),
    (Attempt(code=m.EXIT_OOM, error=OOM, plan=msgspec.structs.replace(PLAN, micro_batch_size=1)), {}, "fail"),
    (Attempt(code=m.EXIT_BAD_INPUT), {}, "fail"),
    (Attempt(code=1), {}, "retry_elsewhere"),
    (Attempt(code=1), {"job_attempt": 3}, "fail"),
])
def test_each_ending_has_one_action(attempt: Attempt, kw: dict, action: str) -> None:
    assert run(attempt, **kw).action == action


@pytest.mark.parametrize("code", [m.EXIT_STOPPED, -15])
def test_a_pause_that_stops_the_child_before_training_pauses_and_costs_no_attempt(code: int) -> None:
    """A SIGTERM that lands while the child imports or loads is a pause, never a crash retried
    elsewhere until max_attempts fails the job."""
    decision = run(Attempt(code=code, pausing=True, untrained=True), job_attempt=3)
    assert (decision.action, decision.refund) == ("pause", True)
    decision = run(Attempt(code=code, untrained=True), stopping=True, job_attempt=3)
    assert (decision.action, decision.refund) == ("release", True)


def test_a_pause_after_steps_costs_its_attempt() -> None:
    decision = run(Attempt(code=m.EXIT_STOPPED, pausing=True))
    assert (decision.action, decision.refund) == ("pause", False)


def test_out_of_memory_halves_the_micro_batch_the_plan_chose() -> None:
    decision = run(Attempt(code=m.EXIT_OOM, error=OOM, plan=PLAN))
    assert (decision.micro_batch, decision.failed_micro_batch) == (4, 8)
    assert decision.error == OOM  # the allocator's words reach the event and the job


def test_a_crash_without_a_message_says_how_it_exited() -> None:
    decision = run(Attempt(code=-9), job_attempt=3)
    assert decision.action == "fail" and decision.error.message == "the training process exited with -9"


def test_messages_round_trip_through_the_pipe_format(tmp_path) -> None:  # noqa: ANN001
    sent = [m.Started(backend="peft", device="cpu", versions={"torch": "2"}), m.Planned(plan=PLAN),
            m.Progress(step=2, total_steps=4, loss=0.5, rewards={"reward_accuracy": 1.0}),
            m.CheckpointSaved(epoch=1, step=2, bucket="b", prefix="p", metrics={"train_loss": 0.5}),
            msgspec.structs.replace(RESULT, early_stop=EarlyStopping(
                reason="r", stopped_after_epoch=2, n_epochs=3, chosen_epoch=1, best_valid_loss=0.1,
                valid_losses=[0.1, 0.2], step=4)),
            OOM]
    path = tmp_path / "pipe"
    with path.open("w") as f:
        emitter = Emitter(f)
        for msg in sent:
            emitter.emit(msg)
    received = [m.decode(line) for line in path.read_bytes().splitlines()]
    assert received == sent
    with pytest.raises(msgspec.DecodeError):
        m.decode(b'{"type": "progress", "step": "three"}')  # a renamed or mistyped field fails here


def test_out_of_memory_without_checkpointing_retries_the_same_micro_batch_checkpointed() -> None:
    plan = msgspec.structs.replace(PLAN, gradient_checkpointing=False)
    decision = run(Attempt(code=m.EXIT_OOM, error=OOM, plan=plan))
    assert decision.action == "retry_smaller" and decision.checkpointing
    assert (decision.micro_batch, decision.failed_micro_batch) == (8, 8)
    one = msgspec.structs.replace(plan, micro_batch_size=1)  # checkpointing can still save it
    assert run(Attempt(code=m.EXIT_OOM, error=OOM, plan=one)).action == "retry_smaller"
