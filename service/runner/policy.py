"""What the runner does after a training child exits: succeed, pause, hand the job back, retry
out-of-memory with a smaller micro-batch, retry the attempt elsewhere, or fail it. A pure
function of what the child reported, so each rule is tested alone (tests/unit/test_runner_policy.py)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Literal

from service.contracts import messages as m
from service.contracts.schema import MemoryPlan


@dataclass
class Attempt:
    """What one child process reported, and how it ended."""

    code: int | None = None
    result: m.Result | None = None
    error: m.Failed | None = None
    plan: MemoryPlan | None = None
    lost: bool = False  # cancelled, or the lease went to someone else
    pausing: bool = False  # the user asked for a pause; the child was told to save and stop
    untrained: bool = False  # the child said it stopped before its first step
    unrecorded: bool = False  # a message could not be recorded, so the child was stopped


@dataclass(frozen=True)
class Decision:
    action: Literal["forget", "pause", "release", "succeed", "retry_smaller", "retry_elsewhere", "fail"]
    error: m.Failed | None = None
    micro_batch: int | None = None  # retry_smaller: the cap for the next child
    failed_micro_batch: int | None = None
    checkpointing: bool = False  # retry_smaller: the retry turns gradient checkpointing on
    refund: bool = False  # pause / release: the attempt trained nothing, so it does not count


def decide(attempt: Attempt, *, stopping: bool, oom_retry: int, max_oom_retries: int,
           micro_batch: int | None, job_attempt: int, max_attempts: int) -> Decision:
    code = attempt.code
    if attempt.lost:  # the job is no longer this runner's to write
        return Decision("forget")
    if attempt.unrecorded:  # what it did is not all written: another attempt resumes cleanly
        return Decision("release")
    # The child stops cleanly on SIGTERM from its first line; -SIGTERM is the sliver before that
    # (the interpreter starting): our own signal either way, never a crash.
    stopped = code in (m.EXIT_STOPPED, -signal.SIGTERM)
    refund = stopped and (attempt.untrained or code == -signal.SIGTERM)
    if stopped and attempt.pausing:
        return Decision("pause", refund=refund)
    if stopped or (stopping and code != m.EXIT_OK):
        return Decision("release", refund=refund)  # the runner is stopping: another resumes from the checkpoint
    if code == m.EXIT_OK and attempt.result is not None:
        return Decision("succeed")
    error = attempt.error or m.Failed(code="training_error",
                                      message=f"the training process exited with {code}")
    if code == m.EXIT_OOM and oom_retry < max_oom_retries:
        current = (attempt.plan.micro_batch_size if attempt.plan else None) or micro_batch or 1
        if attempt.plan is not None and not attempt.plan.gradient_checkpointing \
                and attempt.plan.device != "cpu":
            # It trained without checkpointing: the retry checkpoints (a capped plan always
            # does), which frees far more than halving the micro-batch would.
            return Decision("retry_smaller", error, micro_batch=current, failed_micro_batch=current,
                            checkpointing=True)
        if current > 1:
            # A cap, not a size: the retry's plan takes the largest micro-batch under it that
            # fits the memory free when it starts, down to 1.
            return Decision("retry_smaller", error, micro_batch=max(1, current // 2),
                            failed_micro_batch=current)
    if code not in (m.EXIT_BAD_INPUT, m.EXIT_OOM) and job_attempt < max_attempts:
        return Decision("retry_elsewhere", error)
    return Decision("fail", error)
