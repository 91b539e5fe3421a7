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


def test_a_vllm_that_never_answers_costs_the_models_timeout_not_more(tmp_path: Path) -> None:
    """A listener that takes connections and never answers: /models times out (10 s) and the
    training process samples; nothing else is asked of that vLLM (an unload there would wait for
    the rollout client's 600 s timeout before training could start)."""
    import socket
    import threading

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the connections; nobody reads or answers
        settings = Settings(rollout_url=f"http://127.0.0.1:{silent.getsockname()[1]}/v1")
        out, found = io.StringIO(), []
        worker = threading.Thread(daemon=True, target=lambda: found.append(
            connect(settings, "job-1", "smollm2", None, tmp_path, 0, Emitter(out), True)))
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "connect() still waits on a vLLM that never answers"
        assert found == [None]
    [said] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "did not answer (ReadTimeout)" in said["message"], said
