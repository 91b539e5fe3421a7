"""A score_model grader in the training child: a judge that does not answer scores 0 with the
reason, which the job's events carry (the reward's grader_error_ratio, a warning)."""

from __future__ import annotations

import asyncio

import pytest

from service.contracts.graders import RunGraderRequest
from service.graders.judges import ModelServerJudges
from service.graders.service import GraderService
from service.settings import Settings
from service.training.samples import graded
from tests.support.live import free_port

JUDGE = {"type": "score_model", "name": "judge", "model": "base", "input": [
    {"role": "user", "content": "Score {{sample.output_text}} against {{item.topic}}"}]}


def test_a_judge_that_does_not_answer_scores_0_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import msgspec

    from service.contracts.graders import Grader

    grader = msgspec.convert(JUDGE, Grader)
    monkeypatch.setenv("TUNEDOCK_SERVING_URL", f"http://127.0.0.1:{free_port()}/v1")  # nothing listens
    score, why = asyncio.run(graded(grader, "a red apple", {"topic": "a fruit"}))
    assert score == 0.0 and "model_grader_server_error" in why and "did not answer" in why, why
    # without a model server configured for the runner, the reason says which setting
    monkeypatch.delenv("TUNEDOCK_SERVING_URL")
    found = asyncio.run(GraderService(Settings(), ModelServerJudges(Settings()))._run_checked(
        RunGraderRequest(grader=grader, model_sample="x", item={"topic": "t"})))
    assert found.reward == 0.0
    assert "TUNEDOCK_SERVING_URL" in found.metadata.errors.model_grader_server_error_details
