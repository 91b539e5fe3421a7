"""The jobs API against a real app, real SQLite and Postgres, and a real S3 server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from service.db.engine import Database
from service.jobs.store import Store
from tests.conftest import DATASETS, Api, api_client
from tests.support.data import chat_rows, jsonl


@pytest.fixture
async def api(make_settings, database_url: str):  # noqa: ANN001, ANN201
    """Every test here runs on both databases: reads take a driver-level path per backend."""
    async with api_client(make_settings(database_url=database_url)) as client:
        yield client


@pytest.fixture
def dataset(s3) -> str:  # noqa: ANN001
    s3.put_object(Bucket=DATASETS, Key="good/chat.jsonl", Body=jsonl(chat_rows(60)))
    return f"s3://{DATASETS}/good/chat.jsonl"


def job_body(training_file: str, **extra: object) -> dict:
    return {"base_model": "tiny", "training_file": training_file, **extra}


async def test_create_job_resolves_defaults_and_validates_to_queued(api: Api, dataset: str) -> None:
    r = await api.client.post("/jobs", json=job_body(dataset, suffix="sky-v1"), headers=api.auth())
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["id"].startswith("ftjob-")
    assert job["status"] == "validating_files"
    hp = job["hyperparameters"]
    assert hp["n_epochs"] == 3 and hp["learning_rate"] == 2e-4 and hp["lora_r"] == 16
    assert hp["target_modules"][0] == "q_proj" and hp["load_in_4bit"] is True
    assert r.headers["x-request-id"]
    done = await api.wait_status(job["id"], {"queued", "failed"})
    assert done["status"] == "queued", done
    ds = done["dataset"]
    assert ds["format"] == "chat" and ds["n_examples"] == 60
    assert (ds["n_train"], ds["n_validation"], ds["validation_source"]) == (54, 6, "split")
    assert ds["tokens"] > 0 and ds["tokens_estimated"] is True
    events = (await api.client.get(f"/jobs/{job['id']}/events", headers=api.auth())).json()
    assert [e["data"]["status"] for e in events["data"]] == ["validating_files", "queued"]


async def test_uploaded_file_id_trains_and_lists(api: Api) -> None:
    files = {"file": ("chat.jsonl", jsonl(chat_rows(12)), "application/jsonl")}
    up = await api.client.post("/files", files=files, headers=api.auth())
    assert up.status_code == 201, up.text
    f = up.json()
    assert f["id"].startswith("file-") and f["bytes"] == len(jsonl(chat_rows(12)))
    assert (await api.client.get(f"/files/{f['id']}", headers=api.auth())).json() == f
    assert [x["id"] for x in (await api.client.get("/files", headers=api.auth())).json()["data"]] == [f["id"]]
    job = (await api.client.post("/jobs", json=job_body(f["id"]), headers=api.auth())).json()
    done = await api.wait_status(job["id"], {"queued", "failed"})
    assert done["status"] == "queued"
    assert done["dataset"]["validation_source"] == "none"
    events = (await api.client.get(f"/jobs/{job['id']}/events", headers=api.auth())).json()["data"]
    assert any(e["level"] == "warning" and "12 examples" in e["message"] for e in events)


async def test_list_paginates_with_cursor_and_filters_status(api: Api, dataset: str) -> None:
    ids = []
    for _ in range(5):
        ids.append((await api.client.post("/jobs", json=job_body(dataset), headers=api.auth())).json()["id"])
    for job_id in ids:
        await api.wait_status(job_id, {"queued"})
    await api.client.post(f"/jobs/{ids[0]}/cancel", headers=api.auth())
    seen, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = (await api.client.get("/jobs", params=params, headers=api.auth())).json()
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == list(reversed(ids))
    queued = (await api.client.get("/jobs", params={"status": "queued"}, headers=api.auth())).json()
    assert {j["id"] for j in queued["data"]} == set(ids[1:])


async def test_cancel_is_idempotent_and_keeps_history(api: Api, dataset: str) -> None:
    job = (await api.client.post("/jobs", json=job_body(dataset), headers=api.auth())).json()
    await api.wait_status(job["id"], {"queued"})
    for _ in range(2):
        r = await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth())
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    events = (await api.client.get(f"/jobs/{job['id']}/events", headers=api.auth())).json()["data"]
    assert [e["data"]["status"] for e in events] == ["validating_files", "queued", "cancelled"]


async def test_event_stream_follows_until_the_job_ends(api: Api, dataset: str) -> None:
    job = (await api.client.post("/jobs", json=job_body(dataset), headers=api.auth())).json()
    await api.wait_status(job["id"], {"queued"})
    await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth())
    headers = {**api.auth(), "Accept": "text/event-stream"}
    r = await api.client.get(f"/jobs/{job['id']}/events", headers=headers)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.count("data: ") == 3 and '"cancelled"' in r.text


async def test_idempotency_key_returns_first_job_and_rejects_other_body(api: Api, dataset: str) -> None:
    headers = {**api.auth(), "Idempotency-Key": "k-1"}
    first = await api.client.post("/jobs", json=job_body(dataset), headers=headers)
    again = await api.client.post("/jobs", json=job_body(dataset), headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    # The same JSON with its keys in another order and other spacing is the same request.
    reordered = json.dumps(dict(reversed(list(job_body(dataset).items()))), indent=2)
    same = await api.client.post("/jobs", content=reordered, headers={**headers, "Content-Type": "application/json"})
    assert same.status_code == 201 and same.json()["id"] == first.json()["id"], same.text
    other = await api.client.post("/jobs", json=job_body(dataset, suffix="x"), headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    listed = (await api.client.get("/jobs", headers=api.auth())).json()["data"]
    assert len(listed) == 1


async def test_file_upload_idempotency(api: Api) -> None:
    headers = {**api.auth(), "Idempotency-Key": "f-1"}
    body = jsonl(chat_rows(10))
    a = await api.client.post("/files", files={"file": ("a.jsonl", body)}, headers=headers)
    b = await api.client.post("/files", files={"file": ("a.jsonl", body)}, headers=headers)
    assert a.json()["id"] == b.json()["id"]
    c = await api.client.post("/files", files={"file": ("a.jsonl", body + b"\n")}, headers=headers)
    assert c.status_code == 409
    assert len((await api.client.get("/files", headers=api.auth())).json()["data"]) == 1


async def test_tenants_see_only_their_own(api: Api, dataset: str) -> None:
    job = (await api.client.post("/jobs", json=job_body(dataset), headers=api.auth())).json()
    f = (await api.client.post("/files", files={"file": ("a.jsonl", jsonl(chat_rows(10)))},
                               headers=api.auth())).json()
    other = api.auth("globex")
    for path in (f"/jobs/{job['id']}", f"/jobs/{job['id']}/events", f"/jobs/{job['id']}/checkpoints",
                 f"/files/{f['id']}"):
        r = await api.client.get(path, headers=other)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"
    assert (await api.client.post(f"/jobs/{job['id']}/cancel", headers=other)).status_code == 404
    assert (await api.client.get("/jobs", headers=other)).json()["data"] == []
    r = await api.client.post("/jobs", json=job_body(f["id"]), headers=other)
    assert r.status_code == 404 and r.json()["error"]["param"] == "training_file"


async def test_health_ready_metrics_and_openapi(make_settings, database_url: str) -> None:  # noqa: ANN001
    async with api_client(make_settings(database_url=database_url, metrics_api_key="scrape-key")) as api:
        await _health_ready_metrics_and_openapi(api)


async def _health_ready_metrics_and_openapi(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    assert (await api.client.get("/readyz")).json() == {"status": "ready"}
    assert (await api.client.get("/health/dependencies")).json() == {"database": "ok", "object_store": "ok"}
    assert (await api.client.get("/metrics")).status_code == 401
    # A tenant's key never reads the service-wide counts (they include every tenant's jobs).
    r = await api.client.get("/metrics", headers=api.auth())
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_metrics_key"
    m = await api.client.get("/metrics", headers={"Authorization": "Bearer scrape-key"})
    assert 'tunedock_jobs{status="queued"}' in m.text
    assert "tunedock_request_duration_seconds_bucket" in m.text
    assert (await api.client.get("/openapi/openapi.json")).json()["info"]["title"] == "tunedock"
    models = (await api.client.get("/models", headers=api.auth())).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]


async def test_request_id_is_echoed(api: Api) -> None:
    r = await api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"


async def test_auto_hyperparameters_are_resolved_and_recorded(api: Api, s3) -> None:  # noqa: ANN001
    s3.put_object(Bucket=DATASETS, Key="auto/train.jsonl", Body=jsonl(chat_rows(20)))
    r = await api.client.post("/jobs", json={
        "base_model": "tiny", "training_file": f"s3://{DATASETS}/auto/train.jsonl",
        "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "eval_samples": 2}},
        headers=api.auth())
    assert r.status_code == 201, r.text
    assert r.json()["hyperparameters"]["n_epochs"] == "auto"
    done = await api.wait_status(r.json()["id"], {"queued", "failed"})
    assert done["status"] == "queued", done
    # 20 examples: 100 // 20 = 5 epochs (at least 100 examples seen); 0.2% of 20 -> batch 1.
    assert (done["hyperparameters"]["n_epochs"], done["hyperparameters"]["batch_size"]) == (5, 1)
    events = (await api.client.get(f"/jobs/{done['id']}/events", headers=api.auth())).json()["data"]
    queued = next(e for e in events if e["type"] == "status" and e["data"].get("status") == "queued")
    assert queued["data"]["resolved"] == {"n_epochs": 5, "batch_size": 1}
    # 20 examples hold no validation split, so eval_samples has nothing to sample: it says so.
    assert any("no validation examples" in w for w in done["dataset"]["warnings"])


async def test_a_dry_run_takes_its_rate_from_jobs_that_checkpointed_as_it_will(
        make_settings, dataset: str, tiny_model_dir) -> None:  # noqa: ANN001
    """GPU jobs with and without gradient checkpointing train at different speeds; the estimate
    plans the job first, then uses the rows of jobs that trained the same way."""
    import json

    from service.db.engine import Database
    from service.db.tables import ThroughputRow
    from service.jobs.estimate import Throughput, calibration_key
    from service.shapes import Shape

    config = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
              "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
              "vocab_size": 49152, "tie_word_embeddings": True}  # a 1B shape: the plan sizes it
    (tiny_model_dir / "config.json").write_text(json.dumps(config))
    settings = make_settings()
    label = Shape.from_config(config).label
    db = Database(settings.database_url)
    async with api_client(settings) as api:
        gpu = dict(device="NVIDIA H200", backend="unsloth", available_bytes=100 * 2**30,
                   startup_seconds=10.0)
        await Throughput(db).record(ThroughputRow(shape=calibration_key(label, "supervised"),
                                                  job_id="ftjob-a", tokens=1000, train_seconds=10.0, **gpu))
        await Throughput(db).record(ThroughputRow(
            shape=calibration_key(label, "supervised", checkpointing=False), job_id="ftjob-b",
            tokens=1000, train_seconds=5.0, **gpu))
        rates = {}
        for mode in ("auto", "on"):
            r = await api.client.post("/jobs", json=job_body(dataset, dry_run=True, hyperparameters={
                "gradient_checkpointing": mode}), headers=api.auth())
            assert r.status_code == 200, r.text
            rates[mode] = (r.json()["plan"]["gradient_checkpointing"], r.json()["estimate"]["tokens_per_second"])
        # On 2 GPUs the plan is per rank: each takes half of every step's 8 examples.
        r = await api.client.post("/jobs", json={**job_body(dataset, dry_run=True), "gpus": 2}, headers=api.auth())
        assert r.status_code == 200, r.text
        two = r.json()["plan"]
    await db.close()
    assert rates == {"auto": (False, 200.0), "on": (True, 100.0)}
    assert (two["ranks"], two["strategy"]) == (2, "ddp")
    assert two["micro_batch_size"] * two["gradient_accumulation_steps"] == 4, two


@pytest.mark.parametrize(("batch", "micro"), [(8, 3), (4, 8)])
async def test_a_micro_batch_that_does_not_divide_the_batch_is_refused(api: Api, dataset: str, batch: int,
                                                                      micro: int) -> None:
    """8 with micro 3 used to train 9 examples a step; it is refused, saying which would do."""
    r = await api.client.post("/jobs", headers=api.auth(), json=job_body(
        dataset, hyperparameters={"batch_size": batch, "micro_batch_size": micro}))
    assert r.status_code == 422, r.text  # each field is valid; the pair is not
    error = r.json()["error"]
    assert error["param"] == "hyperparameters.micro_batch_size"
    assert f"does not divide batch_size {batch}" in error["message"]
    r = await api.client.post("/v1/fine_tuning/jobs", headers=api.auth(), json={
        "model": "tiny", "training_file": dataset,
        "hyperparameters": {"batch_size": batch}, "micro_batch_size": micro})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "hyperparameters.micro_batch_size"


async def test_event_stream_of_a_quiet_job_sends_keepalives(api: Api, dataset: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A queued job can wait for hours: the stream says it is alive (so a client that has gone is
    noticed when a write fails) and then carries on with the job's events."""
    from service.jobs import routes

    monkeypatch.setattr(routes, "SSE_KEEPALIVE_S", 0.3)
    job = (await api.client.post("/jobs", json=job_body(dataset), headers=api.auth())).json()
    await api.wait_status(job["id"], {"queued"})

    # The test client runs the app on its own loop and blocks this one for the whole request,
    # so the cancel comes from another thread, through its own database handle.
    def cancel_later() -> None:
        async def cancel() -> None:
            time.sleep(1.5)
            db = Database(api.client.app.state.settings.database_url)
            try:
                await Store(db).cancel_job("acme", job["id"])
            finally:
                await db.close()

        asyncio.run(cancel())

    canceller = threading.Thread(target=cancel_later)
    canceller.start()
    headers = {**api.auth(), "Accept": "text/event-stream"}
    r = await api.client.get(f"/jobs/{job['id']}/events", headers=headers)
    canceller.join()
    assert r.text.count(": keep-alive") >= 2, r.text
    assert r.text.count("data: ") == 3 and '"cancelled"' in r.text


async def test_gpus_must_share_the_batch_equally_and_are_kept_on_the_job(api: Api, dataset: str) -> None:
    """Each GPU takes an equal share of every step's examples (issue 34): batch 8 on 3 GPUs, or
    on 2 GPUs in whole micro-batches of 3, is refused, saying what would do."""
    for gpus, hp in ((3, {"batch_size": 8}), (2, {"batch_size": 8, "micro_batch_size": 4}),
                     (4, {"batch_size": 8, "micro_batch_size": 4})):
        r = await api.client.post("/jobs", headers=api.auth(), json={**job_body(dataset, hyperparameters=hp),
                                                                      "gpus": gpus})
        if gpus == 2:
            assert r.status_code == 201, r.text
            assert r.json()["gpus"] == 2
            continue
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["param"] == "gpus" and f"gpus {gpus} does not divide batch_size 8" in error["message"]
    for bad in (0, 17, "two"):
        r = await api.client.post("/jobs", headers=api.auth(), json={**job_body(dataset), "gpus": bad})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "gpus", r.text
    r = await api.client.post("/v1/fine_tuning/jobs", headers=api.auth(), json={
        "model": "tiny", "training_file": dataset, "hyperparameters": {"batch_size": 8}, "gpus": 3})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "gpus" and r.json()["error"]["type"] == "invalid_request_error"
    r = await api.client.post("/jobs", headers=api.auth(), json={**job_body(dataset), "gpus": "auto"})
    assert r.status_code == 201, r.text
    job = (await api.client.get(f"/jobs/{r.json()['id']}", headers=api.auth())).json()
    assert job["gpus"] == "auto"


async def test_more_gpus_than_a_tenant_may_hold_is_refused(make_settings, dataset: str) -> None:  # noqa: ANN001
    """With TUNEDOCK_TENANT_MAX_GPUS, a job asking for more could never start: 422, not a job
    that waits for good."""
    async with api_client(make_settings(tenant_max_gpus=2)) as api:
        r = await api.client.post("/jobs", headers=api.auth(), json={**job_body(dataset), "gpus": 4})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["param"] == "gpus" and "more than the 2 GPUs" in r.json()["error"]["message"]
        r = await api.client.post("/jobs", headers=api.auth(), json={**job_body(dataset), "gpus": 2})
        assert r.status_code == 201, r.text
