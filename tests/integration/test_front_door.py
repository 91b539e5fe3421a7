"""The /v1 front door with the official `openai` SDK (files, fine-tuning jobs, models, and the
chat gateway's refusals), and the tenant isolation matrix: another tenant's ids, model names and
s3:// URIs answer exactly like ones that do not exist, on every native and /v1 route."""

from __future__ import annotations

import json
import re

import openai
import pytest

from service.deployments.service import deployment_request
from tests.conftest import ARTIFACTS, Api, api_client
from tests.support.data import chat_rows, jsonl
from tests.support.live import serve


def test_openai_sdk_files_and_fine_tuning_jobs(make_settings) -> None:  # noqa: ANN001
    with serve(make_settings(serving_url="http://127.0.0.1:9/v1", served_models=("tiny",))) as (url, keys):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["acme"], max_retries=0)
        other = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["globex"], max_retries=0)
        f = client.files.create(file=("train.jsonl", jsonl(chat_rows(12))), purpose="fine-tune")
        assert f.id.startswith("file-") and f.bytes == len(jsonl(chat_rows(12))) and f.purpose == "fine-tune"
        assert client.files.retrieve(f.id).filename == "train.jsonl"
        assert client.files.content(f.id).read() == jsonl(chat_rows(12))
        assert [x.id for x in client.files.list()] == [f.id]

        job = client.fine_tuning.jobs.create(
            model="tiny", training_file=f.id, suffix="sdk", seed=5, metadata={"team": "red"},
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 2}}},
            extra_body={"lora_r": 8, "max_seq_length": 128, "gradient_checkpointing": "on"})
        assert job.id.startswith("ftjob-") and job.status == "validating_files" and job.model == "tiny"
        hp = job.method.supervised.hyperparameters
        # "auto" stays "auto" until the data is validated (then: README, Hyperparameters)
        assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (2, "auto", 2.0)
        assert job.seed == 5 and job.user_provided_suffix == "sdk"
        native = client.get(f"/fine_tuning/jobs/{job.id}", cast_to=object)["tunedock"]
        assert native["hyperparameters"]["lora_r"] == 8 and native["hyperparameters"]["learning_rate"] == 4e-4
        assert native["hyperparameters"]["gradient_checkpointing"] == "on"
        blue = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, metadata={"team": "blue"},
                                              hyperparameters={"n_epochs": 1})
        assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "red"})] == [job.id]
        assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "blue"})] == [blue.id]
        assert {j.id for j in client.fine_tuning.jobs.list()} == {job.id, blue.id}
        assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
        assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []
        # Cancelled, its events come newest first as OpenAI lists them; `after` pages to older.
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        # (created and cancelled at least; "files validated" between them if validation won the race)
        events = client.fine_tuning.jobs.list_events(job.id, limit=1)
        assert events.data[0].message == "job cancelled by the user" and events.has_more
        older = client.fine_tuning.jobs.list_events(job.id, limit=100, after=events.data[-1].id).data
        assert "validating files" in older[-1].message
        everything = [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=1)]  # every page
        assert everything == [e.id for e in events.data] + [e.id for e in older]
        assert [int(i.split("-")[1]) for i in everything] == sorted(
            (int(i.split("-")[1]) for i in everything), reverse=True)

        with pytest.raises(openai.ConflictError) as in_use:
            client.files.delete(f.id)
        assert in_use.value.body["code"] == "file_in_use"
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        assert client.fine_tuning.jobs.cancel(blue.id).status == "cancelled"
        assert client.files.delete(f.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(f.id)

        with pytest.raises(openai.UnprocessableEntityError) as no_grader:
            client.fine_tuning.jobs.create(model="tiny", training_file="file-x",
                                           method={"type": "reinforcement"})
        assert no_grader.value.body["param"] == "method.reinforcement"
        with pytest.raises(openai.BadRequestError) as unknown_method:
            client.fine_tuning.jobs.create(model="tiny", training_file="file-x",
                                           method={"type": "distillation"})  # type: ignore[typeddict-item]
        assert unknown_method.value.body["param"] == "method.type"
        assert [m.id for m in client.models.list()] == ["tiny"]
        assert other.fine_tuning.jobs.list().data == []
        # The gateway: a served base model reaches for vLLM (none here: 503 at once); unknown
        # models are 404.
        with pytest.raises(openai.InternalServerError) as down:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        assert down.value.status_code == 503 and down.value.body["code"] == "model_server_unavailable"
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="ft:tiny::ftjob-x", messages=[{"role": "user", "content": "hi"}])


async def test_async_openai_creates_and_retrieves(make_settings) -> None:  # noqa: ANN001
    import asyncio

    def run() -> None:
        with serve(make_settings()) as (url, keys):
            async def go() -> None:
                client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=keys["acme"], max_retries=0)
                f = await client.files.create(file=("t.jsonl", jsonl(chat_rows(12))), purpose="fine-tune")
                job = await client.fine_tuning.jobs.create(model="tiny", training_file=f.id)
                assert (await client.fine_tuning.jobs.retrieve(job.id)).training_file == f.id
                await client.close()

            asyncio.run(go())

    await asyncio.to_thread(run)


# -- isolation ----------------------------------------------------------------------------

def _same_shape(real_id: str) -> str:
    """An id of the same prefix and length that does not exist."""
    prefix, _, rest = real_id.rpartition("-")
    return f"{prefix}-{'0' * len(rest)}"


async def _a_tenant_with_everything(api: Api, s3) -> dict[str, str]:  # noqa: ANN001
    r = await api.client.post("/files", files={"file": ("a.jsonl", jsonl(chat_rows(12)))}, headers=api.auth())
    file_id = r.json()["id"]
    job = (await api.client.post("/jobs", json={"base_model": "tiny", "training_file": file_id},
                                 headers=api.auth())).json()
    await api.wait_status(job["id"], {"queued"})
    store, deployments = api.client.app.state.store, api.client.app.state.deployments
    prefix = f"jobs/{job['id']}/checkpoints/epoch-1"
    s3.put_object(Bucket=ARTIFACTS, Key=f"{prefix}/adapter_config.json", Body=b"{}")
    s3.put_object(Bucket=ARTIFACTS, Key=f"jobs/{job['id']}/adapter/adapter_config.json", Body=b"{}")
    await store.record_checkpoint(job["id"], 1, 3, f"s3://{ARTIFACTS}/{prefix}/", {"train_loss": 1.0})
    model = f"ft:tiny::{job['id']}"
    await deployments.request(deployment_request(await store.get_job(None, job["id"]), "acme", model,
                                                 ARTIFACTS, f"jobs/{job['id']}/adapter", "final", job["id"]))
    return {"file": file_id, "job": job["id"], "model": model}


def _requests(file_id: str, job_id: str, model: str) -> list[tuple[str, str, dict | None]]:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    return [
        ("GET", f"/files/{file_id}", None), ("GET", f"/v1/files/{file_id}", None),
        ("GET", f"/v1/files/{file_id}/content", None), ("DELETE", f"/v1/files/{file_id}", None),
        ("GET", f"/files?after={file_id}", None),
        ("GET", f"/jobs/{job_id}", None), ("POST", f"/jobs/{job_id}/cancel", None),
        ("GET", f"/jobs/{job_id}/events", None), ("GET", f"/jobs/{job_id}/checkpoints", None),
        ("POST", f"/jobs/{job_id}/checkpoints/1/deploy", None), ("GET", f"/jobs?after={job_id}", None),
        ("GET", f"/v1/fine_tuning/jobs/{job_id}", None), ("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel", None),
        ("GET", f"/v1/fine_tuning/jobs/{job_id}/events", None),
        ("GET", f"/v1/fine_tuning/jobs/{job_id}/checkpoints", None),
        ("DELETE", f"/models/{model}", None), ("GET", f"/v1/models/{model}", None),
        ("DELETE", f"/v1/models/{model}", None),
        ("POST", "/v1/chat/completions", {"model": model, **chat}),
        ("POST", "/v1/completions", {"model": model, "prompt": "hi"}),
        ("POST", "/jobs", {"base_model": "tiny", "training_file": file_id}),
        ("POST", "/v1/fine_tuning/jobs", {"model": "tiny", "training_file": file_id}),
        ("POST", "/v1/fine_tuning/jobs", {"model": "tiny", "training_file": f"s3://{ARTIFACTS}/files/x.jsonl",
                                          "validation_file": file_id}),
    ]


def _uris(file_id: str, job_id: str) -> list[str]:
    return [f"s3://{ARTIFACTS}/files/{file_id}.jsonl",
            f"s3://{ARTIFACTS}/jobs/{job_id}/checkpoints/epoch-1/adapter_config.json",
            f"s3://{ARTIFACTS}/jobs/{job_id}/adapter/adapter_config.json"]


async def test_another_tenants_ids_names_and_uris_answer_exactly_like_missing_ones(api: Api, s3) -> None:  # noqa: ANN001
    a = await _a_tenant_with_everything(api, s3)
    fake = {k: _same_shape(v) for k, v in a.items()}
    fake["model"] = f"ft:tiny::{fake['job']}"
    b = api.auth("globex")

    async def call(method: str, path: str, body: dict | None) -> tuple[int, str]:
        r = await api.client.request(method, path, json=body, headers=b)
        return r.status_code, r.text

    checked = 0
    for real, missing in zip(_requests(a["file"], a["job"], a["model"]),
                             _requests(fake["file"], fake["job"], fake["model"]), strict=True):
        got, expected = await call(*real), await call(*missing)
        for key in ("file", "job", "model"):  # the message names what was asked for
            expected = (expected[0], expected[1].replace(fake[key], a[key]))
        assert got[0] == 404 and got == expected, (real, got, expected)
        checked += 1
    for uri in _uris(a["file"], a["job"]):
        for path, body in (("/jobs", {"base_model": "tiny", "training_file": uri}),
                           ("/v1/fine_tuning/jobs", {"model": "tiny", "training_file": uri})):
            missing_uri = uri.replace(a["job"], fake["job"]).replace(a["file"], fake["file"])
            got, expected = await call("POST", path, body), await call("POST", path,
                                                                         {**body, "training_file": missing_uri})
            assert got[0] == 404 and got == (expected[0], expected[1].replace(missing_uri, uri)), (uri, got)
            # The owner is refused too: uploads are reached by file- ids only.
            mine = await api.client.post(path, json=body, headers=api.auth())
            assert mine.status_code == 404
            checked += 1
    listed = (await api.client.get("/v1/models", headers=b)).json()["data"]
    assert a["model"] not in {m["id"] for m in listed}
    assert (await api.client.get("/jobs", headers=b)).json()["data"] == []
    assert (await api.client.get("/v1/files", headers=b)).json()["data"] == []
    # A's things are all still there and A's own requests still work.
    assert (await api.client.get(f"/v1/fine_tuning/jobs/{a['job']}", headers=api.auth())).status_code == 200
    mine = (await api.client.get("/v1/models", headers=api.auth())).json()["data"]
    assert a["model"] in {m["id"] for m in mine}
    print(f"\nisolation: {checked} requests by another tenant, each the same 404 as a missing id")
    assert checked >= 29
    assert re.search(r"ft:tiny::ftjob-", json.dumps(mine))


async def test_internal_endpoint_takes_only_the_internal_key(make_settings, s3) -> None:  # noqa: ANN001
    """What the serving side reads and reports, behind its own key: tenant keys get 401."""
    settings = make_settings(internal_api_key="internal-key")
    async with api_client(settings) as api:
        a = await _a_tenant_with_everything(api, s3)
        internal = {"Authorization": "Bearer internal-key"}
        for headers in (api.auth(), {}, {"Authorization": "Bearer wrong"}):
            r = await api.client.get("/internal/deployments", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_internal_key"
        [spec] = (await api.client.get("/internal/deployments?status=pending", headers=internal)).json()
        assert spec["name"] == a["model"] and spec["prefix"] == f"jobs/{a['job']}/adapter"
        r = await api.client.post(f"/internal/deployments/{a['model']}", headers=internal,
                                  json={"status": "loaded", "replica": "r1", "load_seconds": 0.5,
                                        "message": "served"})
        assert r.status_code == 204
        assert (await api.client.get("/internal/deployments?status=pending", headers=internal)).json() == []
        model = (await api.client.get(f"/v1/models/{a['model']}", headers=api.auth())).json()
        assert model["status"] == "loaded"
        r = await api.client.post(f"/internal/deployments/{a['model']}", headers=api.auth(),
                                  json={"status": "failed", "replica": "r1"})
        assert r.status_code == 401


async def test_deployment_moves_follow_their_table_and_each_writes_an_event(make_settings, s3) -> None:  # noqa: ANN001
    """A load reported after the user unloaded the model is refused (409) and the model stays
    unloaded; asking again starts over at pending. The job's mirror follows every move."""
    settings = make_settings(internal_api_key="internal-key")
    async with api_client(settings) as api:
        a = await _a_tenant_with_everything(api, s3)
        internal = {"Authorization": "Bearer internal-key"}

        async def report(status: str) -> int:
            r = await api.client.post(f"/internal/deployments/{a['model']}", headers=internal,
                                      json={"status": status, "replica": "r1"})
            return r.status_code

        assert await report("loading") == 204
        job = (await api.client.get(f"/jobs/{a['job']}", headers=api.auth())).json()
        assert job["deployment"]["status"] == "loading"
        r = await api.client.delete(f"/models/{a['model']}", headers=api.auth())
        assert r.status_code == 200 and r.json()["status"] == "unloaded"
        late = await api.client.post(f"/internal/deployments/{a['model']}", headers=internal,
                                     json={"status": "loaded", "replica": "r1", "load_seconds": 1.0})
        assert late.status_code == 409 and late.json()["error"]["code"] == "invalid_transition"
        assert "unloaded deployment cannot become loaded" in late.json()["error"]["message"]
        job = (await api.client.get(f"/jobs/{a['job']}", headers=api.auth())).json()
        assert job["deployment"]["status"] == "unloaded"
        store, deployments = api.client.app.state.store, api.client.app.state.deployments
        again = await deployments.request(deployment_request(
            await store.get_job(None, a["job"]), "acme", a["model"], ARTIFACTS,
            f"jobs/{a['job']}/adapter", "final", a["job"]))
        assert again.status == "pending"
        assert await report("loaded") == 204
        events = (await api.client.get(f"/jobs/{a['job']}/events", headers=api.auth())).json()["data"]
        moves = [e["data"]["status"] for e in events if e["type"] == "deployment"]
        assert moves == ["pending", "loading", "unloaded", "pending", "loaded"], moves
        job = (await api.client.get(f"/jobs/{a['job']}", headers=api.auth())).json()
        assert job["deployment"]["status"] == "loaded"
