"""Where vLLM cannot sample a reinforcement job's rollouts, the training process does, and the
job's events say why (the vLLM path itself runs in tests/e2e/test_serving.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from service.contracts.messages import Emitter
from service.settings import Settings
from service.training.rollouts import connect
from tests.support.live import free_port


def test_no_rollout_url_or_a_vllm_that_does_not_answer_leaves_the_rollouts_to_the_trainer(tmp_path: Path) -> None:
    out = io.StringIO()
    assert connect(Settings(), "job-1", "smollm2", None, tmp_path, 0, Emitter(out), main=True) is None
    assert out.getvalue() == ""  # nothing configured: nothing to say
    settings = Settings(rollout_url=f"http://127.0.0.1:{free_port()}/v1")  # nothing listens
    assert connect(settings, "job-1", "smollm2", None, tmp_path, 0, Emitter(out), main=True) is None
    [said] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert said["type"] == "warning" and "TUNEDOCK_ROLLOUT_URL" in said["message"], said
    assert "did not answer" in said["message"], said
