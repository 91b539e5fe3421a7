"""`python -m service up` (what `make up` runs) keeps its children alive: a runner killed with
kill -9 is restarted, and its job resumes from its last checkpoint with no hand action."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.conftest import DATASETS
from tests.e2e.test_training_runner import code_word_rows
from tests.support.data import jsonl
from tests.support.live import free_port
from tests.support.processes import ROOT, cmdline, descendants, die_with_sigterm, settings_env

pytestmark = pytest.mark.slow


def wait_until(predicate, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def runners(up: subprocess.Popen) -> list[int]:
    return [p for p in descendants(up.pid) if "-m service runner" in cmdline(p)]


def test_killed_runner_under_up_is_restarted_and_its_job_succeeds(e2e_settings, s3, tmp_path: Path) -> None:  # noqa: ANN001
    port = free_port()
    settings = msgspec.structs.replace(e2e_settings, port=port, sweep_seconds=1.0)
    up = subprocess.Popen([sys.executable, "-m", "service", "up"], cwd=ROOT, env=settings_env(settings),
                          stdout=(tmp_path / "up.log").open("wb"), stderr=subprocess.STDOUT,
                          preexec_fn=die_with_sigterm)
    try:
        key_file = Path(settings.data_dir) / "dev-key"
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: key_file.is_file() and _ok(f"{url}/healthz"), 120, "service up to start")
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key_file.read_text().strip()}"},
                            timeout=30)
        s3.put_object(Bucket=DATASETS, Key="up/rows.jsonl", Body=jsonl(code_word_rows(24)))
        r = http.post("/jobs", json={"base_model": "smollm2", "training_file": f"s3://{DATASETS}/up/rows.jsonl",
                                     "deploy": False, "hyperparameters": {
                                         "n_epochs": 2, "learning_rate": 2e-3, "batch_size": 4,
                                         "max_seq_length": 128}})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        wait_until(lambda: http.get(f"/jobs/{job_id}/checkpoints").json()["data"], 300, "the first checkpoint")
        [runner] = runners(up)
        os.kill(runner, signal.SIGKILL)
        restarted = wait_until(lambda: [p for p in runners(up) if p != runner], 30, "a new runner")
        assert restarted
        done = wait_until(lambda: (j := http.get(f"/jobs/{job_id}").json())["status"] in
                          {"succeeded", "failed", "cancelled"} and j, 600, "the job to end")
        assert done["status"] == "succeeded", (done, (tmp_path / "up.log").read_text()[-3000:])
        assert done["attempt"] == 2
        events = http.get(f"/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
        statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
        assert statuses == ["validating_files", "queued", "running", "queued", "running", "succeeded"]
        epochs = [c["epoch"] for c in http.get(f"/jobs/{job_id}/checkpoints").json()["data"]]
        assert epochs == [1, 2]
    finally:
        up.terminate()
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
