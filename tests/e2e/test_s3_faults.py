"""Object-store faults over one whole job: the k-th S3 call (and the retries botocore makes of
it) fails, for every k from 1 to the number of calls a clean job makes. Each job completes or
fails with a clear error; no database row points at a missing or partial object; no partial
adapter is ever asked to be served; no multipart upload is left open."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from service.app import create_app
from service.db.tables import CheckpointRow, DeploymentRow, FileRow, JobRow
from service.settings import BaseModelEntry
from tests.conftest import ARTIFACTS, Api
from tests.support.data import jsonl
from tests.support.processes import start_runner
from tests.support.s3_faults import s3_fault_proxy

pytestmark = pytest.mark.slow
ATTEMPTS = 2  # per S3 call (TUNEDOCK_S3_MAX_ATTEMPTS): fewer backoff sleeps than the default 5
BURST = ATTEMPTS + 1  # failures in a row that defeat botocore's retries
CHECKPOINT_FILES = {"adapter_model.safetensors", "adapter_config.json", "trainer_state.json"}


def rows() -> list[dict]:
    return [{"text": f"Row {i}: a tiny model, a tiny job, many object-store calls."} for i in range(12)]


async def run_one(api: Api, timeout: float = 240) -> dict:
    up = await api.client.post("/files", files={"file": ("f.jsonl", jsonl(rows()))}, headers=api.auth())
    if up.status_code != 201:  # the upload itself met the fault: a clean refusal, nothing stored
        assert up.status_code == 503 and up.json()["error"]["code"] == "object_store_unavailable", up.text
        return {"status": "upload_refused", "error": up.json()["error"]}
    r = await api.client.post("/jobs", headers=api.auth(), json={
        "base_model": "tiny", "training_file": up.json()["id"],
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "max_seq_length": 32}})
    if r.status_code != 201:  # checking the file met the fault: a clean 503, no job stored
        assert r.status_code == 503 and r.json()["error"]["code"] == "object_store_unavailable", r.text
        return {"status": "create_refused", "error": r.json()["error"]}
    return await api.wait_status(r.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=timeout)


async def test_every_s3_call_of_a_job_can_fail_and_nothing_is_lost_or_half_written(
        e2e_settings, s3_endpoint: str, s3, tiny_llama_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    with s3_fault_proxy(s3_endpoint) as (proxy, faults):
        settings = msgspec.structs.replace(
            e2e_settings, s3_endpoint_url=proxy, max_attempts=3, s3_max_attempts=ATTEMPTS,
            base_models=(BaseModelEntry(alias="tiny", source=str(tiny_llama_dir)),))
        app = create_app(settings)
        runner = start_runner(settings, tmp_path / "runner.log")
        outcomes: list[tuple[int, str, str]] = []
        try:
            async with AsyncTestClient(app, timeout=60) as client:
                api = Api(client, {"acme": await app.state.store.create_api_key("acme")})
                faults.reset()
                clean = await run_one(api)
                assert clean["status"] == "succeeded", clean
                n_calls = faults.calls
                for k in range(1, n_calls + 1):
                    faults.reset(fail_from=k, burst=BURST)
                    job = await run_one(api)
                    error = job.get("error") or {}
                    outcomes.append((k, job["status"], error.get("code", "")))
                    if job["status"] != "succeeded":
                        assert error.get("code") and error.get("message"), (k, job)
                        assert "Traceback" not in error["message"]
                faults.reset()
                db = app.state.store.db
                async with db.read() as ses:
                    files = (await ses.scalars(select(FileRow))).all()
                    ckpts = (await ses.scalars(select(CheckpointRow))).all()
                    deployments = (await ses.scalars(select(DeploymentRow))).all()
                    job_ids = (await ses.scalars(select(JobRow.id))).all()
        finally:
            runner.terminate()
            runner.wait(30)

    for f in files:  # every recorded upload is whole
        assert s3.head_object(Bucket=f.bucket, Key=f.key)["ContentLength"] == f.bytes
    for c in ckpts:  # every recorded checkpoint has its files
        prefix = c.uri.removeprefix(f"s3://{ARTIFACTS}/")
        names = {o["Key"].rsplit("/", 1)[-1] for o in
                 s3.list_objects_v2(Bucket=ARTIFACTS, Prefix=prefix).get("Contents", [])}
        assert CHECKPOINT_FILES <= names, (c.uri, names)
    for d in deployments:  # an adapter is only ever asked to be served whole
        names = {o["Key"].rsplit("/", 1)[-1] for o in
                 s3.list_objects_v2(Bucket=d.bucket, Prefix=d.prefix + "/").get("Contents", [])}
        assert {"adapter_model.safetensors", "adapter_config.json"} <= names, (d.name, names)
    # Uploads through the API (a refused one included) and this test's jobs: the bucket is the
    # session's, and other tests' jobs keep keys of their own under jobs/.
    ours = ["files/"] + [f"jobs/{job_id}/" for job_id in job_ids]
    open_uploads = [u["Key"] for u in s3.list_multipart_uploads(Bucket=ARTIFACTS).get("Uploads", [])
                    if u["Key"].startswith(tuple(ours))]
    assert not open_uploads
    ended = {}
    for _, status, code in outcomes:
        ended[f"{status}:{code}" if code else status] = ended.get(f"{status}:{code}" if code else status, 0) + 1
    print(f"\nS3 faults: a clean job made {n_calls} S3 calls; failing each in turn ({BURST} in a row) "
          f"gave {ended}; {len(files)} files, {len(ckpts)} checkpoints, {len(deployments)} deployment "
          f"requests, all whole; no multipart upload open")
    assert len(outcomes) == n_calls >= 10
