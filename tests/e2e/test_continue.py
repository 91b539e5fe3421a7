"""Continued training: a job started from a fine-tuned model, or from one of its checkpoints,
trains on from that adapter's weights, records where it came from, and keeps other tenants out."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.conftest import DATASETS, Api
from tests.e2e.test_resume import WORDS, tiny_api, tiny_settings  # noqa: F401 - fixtures
from tests.e2e.test_training_runner import events, wait_for
from tests.support.data import jsonl
from tests.support.processes import start_runner

pytestmark = pytest.mark.slow


async def submit(api: Api, s3, base_model: str, n_epochs: int, tenant: str = "acme",
                 **hp: object) -> tuple[int, dict]:  # noqa: ANN001
    rng = random.Random(5)  # the same rows every time: a continued job sees what its parent saw
    rows = [{"text": " ".join(rng.choice(WORDS[:5]) for _ in range(12))} for _ in range(40)]
    key = f"continue/{time.monotonic_ns()}.jsonl"
    s3.put_object(Bucket=DATASETS, Key=key, Body=jsonl(rows))
    r = await api.client.post("/jobs", headers=api.auth(tenant), json={
        "base_model": base_model, "training_file": f"s3://{DATASETS}/{key}", "deploy": False,
        "hyperparameters": {"n_epochs": n_epochs, "batch_size": 4, "max_seq_length": 32,
                            "learning_rate": 1e-2, "seed": 3, **hp}})
    return r.status_code, r.json()


async def losses(api: Api, job_id: str) -> list[float]:
    return [e["data"]["loss"] for e in await events(api, job_id) if e["type"] == "metrics"]


async def finish(api: Api, job_id: str) -> dict:
    async def ended() -> dict | None:
        job = (await api.client.get(f"/jobs/{job_id}", headers=api.auth())).json()
        return job if job["status"] in {"succeeded", "failed", "cancelled"} else None

    job = await wait_for(ended, 300, f"job {job_id} to end")
    assert job["status"] == "succeeded", job
    return job


async def test_continued_jobs_start_from_the_parent_adapter_and_record_their_lineage(
        tiny_api: Api, tiny_settings, s3, tmp_path: Path) -> None:  # noqa: ANN001, F811
    api = tiny_api
    runner = start_runner(tiny_settings, tmp_path / "runner.log")
    try:
        code, parent = await submit(api, s3, "tiny", n_epochs=2, lora_r=8, lora_alpha=16)
        assert code == 201, parent
        # Its final adapter is not there yet: a clear refusal, not a job that would fail later.
        code, body = await submit(api, s3, f"ft:tiny::{parent['id']}", n_epochs=1)
        assert code == 422 and body["error"]["code"] == "model_not_ready", body
        parent = await finish(api, parent["id"])
        name = parent["fine_tuned_model"]

        # Another tenant's model is a 404 like a model that does not exist; a LoRA shape that
        # differs from the parent's is refused with the parent's value.
        code, body = await submit(api, s3, name, n_epochs=1, tenant="globex")
        assert code == 404 and body["error"]["code"] == "model_not_found", body
        code, body = await submit(api, s3, f"{name}:ckpt-9", n_epochs=1)
        assert code == 404, body
        code, body = await submit(api, s3, name, n_epochs=1, lora_r=32)
        assert code == 422 and body["error"]["param"] == "hyperparameters.lora_r", body
        assert "8" in body["error"]["message"], body

        code, child = await submit(api, s3, name, n_epochs=1)
        assert code == 201, child
        child = await finish(api, child["id"])
        code, grandchild = await submit(api, s3, f"{child['fine_tuned_model']}:ckpt-1", n_epochs=1)
        assert code == 201, grandchild
        grandchild = await finish(api, grandchild["id"])
    finally:
        runner.terminate()
        runner.wait(30)

    # Lineage, base model first; the LoRA shape came from the parent.
    assert child["base_model"] == "tiny"
    assert child["continued_from"]["lineage"] == ["tiny", name]
    assert child["continued_from"]["adapter"].endswith(f"jobs/{parent['id']}/adapter")
    assert child["hyperparameters"]["lora_r"] == 8
    assert grandchild["continued_from"]["lineage"] == [
        "tiny", name, f"{child['fine_tuned_model']}:ckpt-1"]
    assert grandchild["continued_from"]["checkpoint_epoch"] == 1
    assert any(e["type"] == "continued" for e in await events(api, child["id"]))

    # The weights: a continued job starts where its parent ended, not where its parent started
    # (the same data, seed and first batch: a fresh adapter would begin at the parent's first loss).
    first, then, after = [await losses(api, j["id"]) for j in (parent, child, grandchild)]
    print(f"\ncontinued training: parent loss {first[0]:.3f} -> {first[-1]:.3f}; child starts at "
          f"{then[0]:.3f}, ends {then[-1]:.3f}; grandchild (from the child's epoch 1) starts at {after[0]:.3f}")
    learned = first[0] - first[-1]
    assert learned > 0.2, first
    assert then[0] < first[0] - 0.5 * learned, (first, then)
    assert after[0] < first[0] - 0.5 * learned, (first, after)
