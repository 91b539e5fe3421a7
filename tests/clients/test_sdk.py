"""The SDK against the real service over loopback (real SQLite, real S3 server); no mocked HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import tunedock
from tests.conftest import DATASETS
from tests.support.data import chat_rows, jsonl
from tests.support.live import serve
from tests.support.proxy import faulty_proxy


@pytest.fixture
def server(make_settings) -> Iterator[tuple[str, dict[str, str]]]:  # noqa: ANN001
    with serve(make_settings()) as found:
        yield found


@pytest.fixture
def client(server) -> Iterator[tunedock.Client]:  # noqa: ANN001
    url, keys = server
    with tunedock.Client(url, keys["acme"]) as c:
        yield c


def test_files_and_jobs_round_trip(client: tunedock.Client, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "chat.jsonl"
    path.write_bytes(jsonl(chat_rows(12)))
    f = client.files.upload(path)
    assert f.id.startswith("file-") and f.filename == "chat.jsonl"
    assert client.files.get(f.id) == f
    assert [x.id for x in client.files.list()] == [f.id]
    dry = client.jobs.estimate(base_model="tiny", training_file=f.id, hyperparameters={"n_epochs": 1})
    assert isinstance(dry, tunedock.JobEstimate) and dry.dataset.n_examples == 12
    assert dry.estimate.seconds is None and dry.estimate.tokens > 0  # nothing calibrated yet
    assert list(client.jobs.list()) == []  # a dry run creates no job
    job = client.jobs.create(base_model="tiny", training_file=path, suffix="sdk",
                             hyperparameters={"n_epochs": 1}, metadata={"team": "a"})
    assert job.status == "validating_files" and job.hyperparameters["n_epochs"] == 1
    assert job.training_file.startswith("file-")  # the local path was uploaded first
    assert client.jobs.get(job.id).id == job.id
    assert client.jobs.cancel(job.id).status == "cancelled"
    assert client.jobs.cancel(job.id).status == "cancelled"
    assert [j.id for j in client.jobs.list(status="cancelled")] == [job.id]
    events = list(client.jobs.events(job.id))
    assert events[0].data["status"] == "validating_files" and events[-1].data["status"] == "cancelled"
    streamed = list(client.jobs.events(job.id, stream=True))
    assert [e.id for e in streamed] == [e.id for e in events]
    assert client.jobs.checkpoints(job.id) == []
    assert [m.id for m in client.models.list()] == ["tiny"]
    with pytest.raises(tunedock.JobFailed) as failed:
        client.jobs.wait(job.id, progress=False)
    assert failed.value.job.status == "cancelled"


def test_list_follows_pages(client: tunedock.Client, s3) -> None:  # noqa: ANN001
    s3.put_object(Bucket=DATASETS, Key="sdk/p.jsonl", Body=jsonl(chat_rows(10)))
    ids = [client.jobs.create(base_model="tiny", training_file=f"s3://{DATASETS}/sdk/p.jsonl").id
           for _ in range(5)]
    assert [j.id for j in client.jobs.list(limit=2)] == list(reversed(ids))


def test_typed_errors_carry_the_server_code(server, client: tunedock.Client) -> None:  # noqa: ANN001
    with pytest.raises(tunedock.NotFoundError) as missing:
        client.jobs.create(base_model="nope", training_file=f"s3://{DATASETS}/x.jsonl")
    assert missing.value.code == "model_not_found" and missing.value.param == "base_model"
    assert missing.value.request_id
    with pytest.raises(tunedock.BadRequestError) as bad:
        client.jobs.create(base_model="tiny", training_file="http://example.com/x.jsonl")
    assert bad.value.param == "training_file"
    with pytest.raises(tunedock.NotFoundError):
        client.jobs.get("ftjob-missing")
    url, keys = server
    with tunedock.Client(url, "td-wrong") as wrong, pytest.raises(tunedock.AuthenticationError):
        wrong.jobs.get("ftjob-x")
    first = client.files.upload(jsonl(chat_rows(10)))
    job = client.jobs.create(base_model="tiny", training_file=first.id, idempotency_key="same")
    assert client.jobs.create(base_model="tiny", training_file=first.id,
                              idempotency_key="same").id == job.id
    with pytest.raises(tunedock.ConflictError) as conflict:
        client.jobs.create(base_model="tiny", training_file=first.id, suffix="other",
                           idempotency_key="same")
    assert conflict.value.code == "idempotency_key_reused"


def test_retries_an_injected_503_then_succeeds(server) -> None:  # noqa: ANN001
    url, keys = server
    with faulty_proxy(url, ["503", "503"]) as (proxy, log), tunedock.Client(proxy, keys["acme"]) as c:
        assert list(c.jobs.list()) == []
    assert log == ["GET /jobs?limit=100 -> 503"] * 2 + ["GET /jobs?limit=100 -> forward"]
    with faulty_proxy(url, ["503"] * 5) as (proxy, log), \
            tunedock.Client(proxy, keys["acme"], max_retries=2) as c, \
            pytest.raises(tunedock.ServerError):
        c.jobs.get("ftjob-x")
    assert len(log) == 3


def test_create_retried_after_a_dropped_response_makes_one_job(server, client, s3) -> None:  # noqa: ANN001
    s3.put_object(Bucket=DATASETS, Key="sdk/d.jsonl", Body=jsonl(chat_rows(10)))
    url, keys = server
    with faulty_proxy(url, ["drop"]) as (proxy, log), tunedock.Client(proxy, keys["acme"]) as c:
        job = c.jobs.create(base_model="tiny", training_file=f"s3://{DATASETS}/sdk/d.jsonl")
    assert [line.split(" -> ")[1] for line in log] == ["drop", "forward"]
    assert [j.id for j in client.jobs.list()] == [job.id]


def test_connection_error_is_typed() -> None:
    from tests.support.live import free_port

    with tunedock.Client(f"http://127.0.0.1:{free_port()}", "k", max_retries=1) as c, \
            pytest.raises(tunedock.APIConnectionError):
        c.jobs.get("ftjob-x")


def test_env_configuration(server, monkeypatch) -> None:  # noqa: ANN001
    url, keys = server
    monkeypatch.setenv("TUNEDOCK_BASE_URL", url)
    monkeypatch.setenv("TUNEDOCK_API_KEY", keys["globex"])
    with tunedock.Client() as c:
        assert list(c.jobs.list()) == []


def test_async_client_same_surface(server, tmp_path) -> None:  # noqa: ANN001
    url, keys = server
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl(chat_rows(12)))

    async def scenario() -> None:
        async with tunedock.AsyncClient(url, keys["acme"]) as c:
            f = await c.files.upload(path)
            assert (await c.files.get(f.id)).id == f.id
            assert [x.id async for x in c.files.list()] == [f.id]
            job = await c.jobs.create(base_model="tiny", training_file=f.id)
            assert (await c.jobs.get(job.id)).id == job.id
            assert [j.id async for j in c.jobs.list()] == [job.id]
            await c.jobs.cancel(job.id)
            events = [e async for e in c.jobs.events(job.id)]
            assert [e.id async for e in c.jobs.events(job.id, stream=True)] == [e.id for e in events]
            assert await c.jobs.checkpoints(job.id) == []
            assert [m.id for m in await c.models.list()] == ["tiny"]
            with pytest.raises(tunedock.JobFailed):
                await c.jobs.wait(job.id, progress=False)
            with pytest.raises(tunedock.NotFoundError):
                await c.jobs.get("ftjob-nope")

    asyncio.run(scenario())


def test_sync_and_async_clients_have_one_surface() -> None:
    """Both are shells over tunedock/_ops.py: the same resources, methods and parameters."""
    import inspect

    from tunedock import _client

    def surface(obj: type) -> dict[str, list[tuple[str, object, object]]]:
        return {name: [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]
                for name, fn in inspect.getmembers(obj, inspect.isfunction) if not name.startswith("_")}

    pairs = [(_client.Files, _client.AsyncFiles), (_client.Jobs, _client.AsyncJobs),
             (_client.Models, _client.AsyncModels)]
    for sync, asyn in pairs:
        assert surface(sync) == surface(asyn), (sync, asyn)
    client_surface = {k: v for k, v in surface(_client.Client).items() if k not in ("close",)}
    assert client_surface == {k: v for k, v in surface(_client.AsyncClient).items() if k != "close"}
    # Every public call is an op of tunedock/_ops.py; no resource touches HTTP itself.
    for cls in (cls for pair in pairs for cls in pair):
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("_"):
                body = inspect.getsource(fn)
                assert "ops." in body and "http" not in body.replace("httpx.Response", ""), (cls, name)


def test_streamed_events_retry_like_any_call(server, client: tunedock.Client, s3) -> None:  # noqa: ANN001
    s3.put_object(Bucket=DATASETS, Key="sdk/e.jsonl", Body=jsonl(chat_rows(10)))
    job = client.jobs.create(base_model="tiny", training_file=f"s3://{DATASETS}/sdk/e.jsonl")
    client.jobs.cancel(job.id)
    expected = [e.id for e in client.jobs.events(job.id)]
    url, keys = server
    with faulty_proxy(url, ["503", "drop"]) as (proxy, log), tunedock.Client(proxy, keys["acme"]) as c:
        streamed = [e.id for e in c.jobs.events(job.id, stream=True)]
    assert streamed == expected
    assert [line.split(" -> ")[1] for line in log] == ["503", "drop", "forward"], log

    async def streamed_async() -> list[str]:
        with faulty_proxy(url, ["503"]) as (proxy, _):
            async with tunedock.AsyncClient(proxy, keys["acme"]) as c:
                return [e.id async for e in c.jobs.events(job.id, stream=True)]

    assert asyncio.run(streamed_async()) == expected


UPLOAD_CHILD = r"""
import sys, threading, time
import tunedock

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

url, key, path = sys.argv[1:4]
with tunedock.Client(url, key) as client:
    client.files.list()  # the connection and the code paths warm
    highest, done = [0], threading.Event()
    def sample():
        while not done.is_set():
            highest[0] = max(highest[0], rss())
            time.sleep(0.01)
    before = rss()
    threading.Thread(target=sample, daemon=True).start()
    f = client.files.upload(path)
    done.set()
    print(f.bytes, max(highest[0], rss()) - before)
"""


def test_the_sdk_streams_an_upload_from_disk(server, tmp_path) -> None:  # noqa: ANN001
    """A 64 MB file is sent from disk in chunks: the SDK process grows by a few MB, not the file."""
    import subprocess
    import sys

    from tests.support.processes import ROOT

    url, keys = server
    path = tmp_path / "big.jsonl"
    row = b'{"text": "' + b"y" * 1000 + b'"}\n'
    with path.open("wb") as out:
        for _ in range(64):
            out.write(row * 1000)
    done = subprocess.run([sys.executable, "-c", UPLOAD_CHILD, url, keys["acme"], str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    size, grew = map(int, done.stdout.split())
    assert size == path.stat().st_size
    assert grew < 16 << 20, f"the SDK grew {grew / 2**20:.0f} MiB sending a {size / 2**20:.0f} MiB file"
