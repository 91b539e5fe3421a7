"""Bad input: each gets a clear 4xx {error: {code, message, param}}, and nothing is stored."""

from __future__ import annotations

import pytest

from service.jobs.store import Lease
from tests.conftest import ARTIFACTS, DATASETS, FOREIGN, Api
from tests.support.data import chat_rows, jsonl


@pytest.fixture
def dataset(s3) -> str:  # noqa: ANN001
    s3.put_object(Bucket=DATASETS, Key="ok.jsonl", Body=jsonl(chat_rows(20)))
    s3.put_object(Bucket=FOREIGN, Key="ok.jsonl", Body=jsonl(chat_rows(20)))
    return f"s3://{DATASETS}/ok.jsonl"


async def assert_nothing_stored(api: Api) -> None:
    assert (await api.client.get("/jobs", headers=api.auth())).json()["data"] == []
    assert (await api.client.get("/files", headers=api.auth())).json()["data"] == []


def err(r, status: int) -> dict:  # noqa: ANN001
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] and body["message"] and "Traceback" not in r.text
    return body


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": 1000}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"learning_rate": -1e-4}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"lora_r": 0}}, "hyperparameters.lora_r"),
        ({"hyperparameters": {"lora_r": 4096}}, "hyperparameters.lora_r"),
        ({"hyperparameters": {"gradient_checkpointing": True}}, "hyperparameters.gradient_checkpointing"),
        ({"hyperparameters": {"n_epochs": "three"}}, "hyperparameters.n_epochs"),
        ({"suffix": "has spaces"}, "suffix"),
        ({"suffix": "a" * 200}, "suffix"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"deploy": "yes"}, "deploy"),
        ({"surprise": 1}, "surprise"),
        ({"hyperparameters": {"lr": 0.1}}, "lr"),
    ],
)
async def test_invalid_body_is_400_naming_the_field(api: Api, dataset: str, patch: dict, param: str) -> None:
    body = {"base_model": "tiny", "training_file": dataset, **patch}
    e = err(await api.client.post("/jobs", json=body, headers=api.auth()), 400)
    assert param in (e["param"] or "") + e["message"], e
    await assert_nothing_stored(api)


async def test_malformed_json_is_400(api: Api) -> None:
    headers = {**api.auth(), "Content-Type": "application/json"}
    err(await api.client.post("/jobs", content=b'{"base_model": ', headers=headers), 400)
    await assert_nothing_stored(api)


@pytest.mark.parametrize(
    ("training_file", "param", "status"),
    [
        (f"s3://{DATASETS}/missing.jsonl", "training_file", 404),
        (f"s3://{FOREIGN}/ok.jsonl", "training_file", 404),
        (f"s3://{ARTIFACTS}/ok.jsonl", "training_file", 404),
        ("http://example.com/data.jsonl", "training_file", 400),
        ("https://example.com/data.jsonl", "training_file", 400),
        ("file:///etc/passwd", "training_file", 400),
        (f"s3://{DATASETS}/../{FOREIGN}/ok.jsonl", "training_file", 404),
        (f"s3://{DATASETS}/a/./b.jsonl", "training_file", 404),
        ("file-doesnotexist", "training_file", 404),
    ],
)
async def test_unreadable_training_files_are_refused(api: Api, s3, dataset: str, training_file: str,  # noqa: ANN001
                                                     param: str, status: int) -> None:
    s3.put_object(Bucket=ARTIFACTS, Key="ok.jsonl", Body=b'{"text": "hi"}\n')
    body = {"base_model": "tiny", "training_file": training_file}
    e = err(await api.client.post("/jobs", json=body, headers=api.auth()), status)
    assert e["param"] == param
    if status == 404:  # a refusal reads exactly like a missing object
        missing = {"base_model": "tiny", "training_file": f"s3://{DATASETS}/missing.jsonl"}
        other = err(await api.client.post("/jobs", json=missing, headers=api.auth()), 404)
        assert e == {**other, "message": other["message"].replace(missing["training_file"], training_file)}
    await assert_nothing_stored(api)


async def test_unknown_base_model_is_404(api: Api, dataset: str) -> None:
    body = {"base_model": "gpt-17", "training_file": dataset}
    e = err(await api.client.post("/jobs", json=body, headers=api.auth()), 404)
    assert e["param"] == "base_model" and e["code"] == "model_not_found"
    await assert_nothing_stored(api)


async def test_missing_and_wrong_keys_are_401(api: Api, dataset: str) -> None:
    body = {"base_model": "tiny", "training_file": dataset}
    assert err(await api.client.post("/jobs", json=body), 401)["code"] == "missing_api_key"
    wrong = {"Authorization": "Bearer td-not-a-key"}
    assert err(await api.client.post("/jobs", json=body, headers=wrong), 401)["code"] == "invalid_api_key"
    assert err(await api.client.get("/jobs", headers={"Authorization": "Basic abc"}), 401)
    await assert_nothing_stored(api)


async def test_cancel_of_a_finished_job_is_409(api: Api, dataset: str) -> None:
    job = (await api.client.post("/jobs", json={"base_model": "tiny", "training_file": dataset},
                                 headers=api.auth())).json()
    await api.wait_status(job["id"], {"queued"})
    store = api.client.app.state.store
    await store.claim("r1", 60)
    await store.set_status(job["id"], "succeeded", "done", lease=Lease("r1", 1))
    e = err(await api.client.post(f"/jobs/{job['id']}/cancel", headers=api.auth()), 409)
    assert e["code"] == "invalid_transition"
    assert (await api.client.get(f"/jobs/{job['id']}", headers=api.auth())).json()["status"] == "succeeded"


def test_upload_over_the_limit_is_413_and_streamed(make_settings) -> None:  # noqa: ANN001
    """A chunked upload over a real socket is refused while it streams, not after buffering."""
    import socket

    import httpx

    from tests.support.live import serve

    with serve(make_settings(max_upload_bytes=64 * 1024)) as (base, keys):
        host, port = base.removeprefix("http://").split(":")
        auth = b"Authorization: Bearer " + keys["acme"].encode() + b"\r\n"

        def chunk(data: bytes) -> bytes:
            return b"%x\r\n" % len(data) + data + b"\r\n"

        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /files HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + auth
                         + b"Content-Type: multipart/form-data; boundary=B\r\n\r\n")
            sock.sendall(chunk(b'--B\r\nContent-Disposition: form-data; name="file"; '
                               b'filename="big.jsonl"\r\n\r\n'))
            sock.settimeout(0.02)
            response, sent = b"", 0
            for sent in range(1, 1001):  # up to 16 MB; the limit is 64 KiB
                try:
                    sock.sendall(chunk(b'{"text": "' + b"x" * 16000 + b'"}\n'))
                    response = sock.recv(4096)
                except (TimeoutError, socket.timeout):
                    continue
                except OSError:  # the server closed the connection after answering
                    sock.settimeout(5)
                    response = response or sock.recv(4096)
                if response:
                    break
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert b"file_too_large" in response
        assert sent < 100
        headers = {"Authorization": f"Bearer {keys['acme']}"}
        assert httpx.get(f"{base}/files", headers=headers).json()["data"] == []
        # A Content-Length over the limit is refused before any of the body is read.
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n" + auth
                         + b"Content-Type: multipart/form-data; boundary=B\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 413")


async def test_upload_without_a_file_part_is_400(api: Api) -> None:
    err(await api.client.post("/files", data={"other": "x"}, files={"nope": ("a", b"1")},
                              headers=api.auth()), 400)
    err(await api.client.post("/files", content=b"{}", headers={**api.auth(),
                              "Content-Type": "application/json"}), 400)
    await assert_nothing_stored(api)


async def test_unknown_route_and_method_use_the_error_shape(api: Api) -> None:
    assert err(await api.client.get("/nope", headers=api.auth()), 404)
    assert err(await api.client.delete("/jobs", headers=api.auth()), 405)


async def test_bad_query_parameters_are_400(api: Api) -> None:
    assert err(await api.client.get("/jobs", params={"limit": 1000}, headers=api.auth()), 400)
    assert err(await api.client.get("/jobs", params={"status": "bogus"}, headers=api.auth()), 400)
    assert err(await api.client.get("/jobs", params={"after": "ftjob-nope"}, headers=api.auth()), 404)


async def test_base_model_no_serving_instance_serves_is_refused_unless_deploy_false(
        make_settings, s3) -> None:  # noqa: ANN001
    from litestar.testing import AsyncTestClient

    from service.app import create_app

    s3.put_object(Bucket=DATASETS, Key="serve.jsonl", Body=jsonl(chat_rows(10)))
    settings = make_settings(serving_url="http://127.0.0.1:9/v1", served_models=("other",), max_lora_rank=16)
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        headers = {"Authorization": f"Bearer {await app.state.store.create_api_key('acme')}"}
        body = {"base_model": "tiny", "training_file": f"s3://{DATASETS}/serve.jsonl"}
        e = err(await client.post("/jobs", json=body, headers=headers), 422)
        assert e["code"] == "model_not_served" and "deploy: false" in e["message"]
        assert (await client.post("/jobs", json={**body, "deploy": False}, headers=headers)).status_code == 201
        big = {**body, "deploy": False, "hyperparameters": {"lora_r": 64}}
        assert (await client.post("/jobs", json=big, headers=headers)).status_code == 201


async def test_lora_rank_above_what_serving_accepts_is_refused_when_deploying(api: Api, dataset: str) -> None:
    body = {"base_model": "tiny", "training_file": dataset, "hyperparameters": {"lora_r": 128}}
    e = err(await api.client.post("/jobs", json=body, headers=api.auth()), 422)
    assert e["param"] == "hyperparameters.lora_r"


async def test_object_store_down_is_a_503_with_the_request_id_and_no_traceback(make_settings) -> None:  # noqa: ANN001
    """The object store is down: the client gets a clean 503 (retry later) quoting the request id."""
    from litestar.testing import AsyncTestClient

    from service.app import create_app
    from tests.support.live import free_port

    app = create_app(make_settings(s3_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    async with AsyncTestClient(app) as client:
        headers = {"Authorization": f"Bearer {await app.state.store.create_api_key('acme')}",
                   "X-Request-ID": "req-500-test"}
        r = await client.post("/files", files={"file": ("a.jsonl", jsonl(chat_rows(10)))}, headers=headers)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "object_store_unavailable"
        assert "req-500-test" in r.json()["error"]["message"] and "retry" in r.json()["error"]["message"]
        assert r.headers["x-request-id"] == "req-500-test"
        assert "Traceback" not in r.text and "botocore" not in r.text
        # Ready all the same: an object-store outage must not take every replica out of service;
        # the dependencies say what is down.
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        r = await client.get("/health/dependencies")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "dependency_unavailable"
        assert "object_store unreachable" in r.json()["error"]["message"]
        assert "database" not in r.json()["error"]["message"]


@pytest.mark.parametrize(("status", "code", "answer", "ours"), [
    (403, "AccessDenied", 403, "object_store_denied"),
    (404, "NoSuchBucket", 404, "object_not_found"),
    (503, "SlowDown", 503, "object_store_unavailable"),
])
async def test_object_store_errors_are_classed_permanent_or_retryable(make_settings, s3_endpoint: str, status: int,
                                                                      code: str, answer: int, ours: str) -> None:  # noqa: ANN001
    """A permanent refusal (AccessDenied) used to be answered "503, retry in a few seconds"."""
    from litestar.testing import AsyncTestClient

    from service.app import create_app
    from tests.support.s3_faults import s3_fault_proxy

    with s3_fault_proxy(s3_endpoint) as (proxy, faults):
        app = create_app(make_settings(s3_endpoint_url=proxy, s3_max_attempts=2))
        async with AsyncTestClient(app) as client:
            headers = {"Authorization": f"Bearer {await app.state.store.create_api_key('acme')}"}
            faults.reset(fail_from=1, burst=100, status=status, code=code)
            r = await client.post("/files", files={"file": ("a.jsonl", jsonl(chat_rows(10)))}, headers=headers)
    assert r.status_code == answer, r.text
    error = r.json()["error"]
    assert error["code"] == ours
    assert ("retry in a few seconds" in error["message"]) == (answer == 503)
    assert code not in r.text and "botocore" not in r.text and "injected" not in r.text


def test_a_training_child_words_storage_errors_for_users() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    from service.training.child import storage_failure

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
    missing = ClientError({"Error": {"Code": "NoSuchKey", "Message": "The key does not exist"}}, "GetObject")
    down = EndpointConnectionError(endpoint_url="http://10.0.0.7:9000/datasets/secret.jsonl")
    disk = OSError(28, "No space left on device", "/var/lib/tunedock/runs/ftjob-x/train.jsonl")
    assert storage_failure(denied).code == "object_store_denied"
    assert storage_failure(missing).code == "object_not_found"
    assert storage_failure(down).code == "object_store_unavailable"
    assert storage_failure(disk).code == "runner_storage_error"
    assert "No space left on device" in storage_failure(disk).message
    for exc in (denied, missing, down, disk):
        message = storage_failure(exc).message
        assert "10.0.0.7" not in message and "/var/lib" not in message and "GetObject" not in message
    assert storage_failure(ValueError("the chat template has no assistant turn")) is None


async def test_the_gateway_takes_chats_up_to_its_own_body_limit(api: Api) -> None:
    """The gateway's 4 MiB limit applies to chat (the app-wide 1 MiB limit used to answer first)."""
    from service.api.gateway import MAX_BODY

    def chat(n_bytes: int) -> dict:
        return {"model": "tiny", "messages": [{"role": "user", "content": "a" * n_bytes}]}

    r = await api.client.post("/v1/chat/completions", json=chat(2 << 20), headers=api.auth())
    # Past the body limit, the gateway itself answers (no serving here serves 'tiny').
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    r = await api.client.post("/v1/chat/completions", json=chat(MAX_BODY + 1), headers=api.auth())
    assert r.status_code == 413, r.text
