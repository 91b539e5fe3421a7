"""Shared fixtures: a real S3-compatible server (moto's server mode) and a real Postgres on
loopback, both started once per session; a real app on SQLite per test."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import boto3
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.db.engine import Database
from service.jobs.store import Store
from service.settings import BaseModelEntry, Settings

ARTIFACTS, DATASETS, FOREIGN = "tunedock", "datasets", "someone-else"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    for bucket in (ARTIFACTS, DATASETS, FOREIGN):
        client.create_bucket(Bucket=bucket)
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def s3(s3_endpoint: str):  # noqa: ANN201
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway Postgres cluster on loopback (Debian's postgresql; `make test` installs it)."""
    if url := os.environ.get("TUNEDOCK_TEST_POSTGRES_URL"):
        yield url
        return
    bindir = _pg_bin()
    if bindir is None:
        pytest.fail("Postgres is not installed: apt-get install postgresql (`make test` installs it: scripts/system-deps.sh)")
    root = Path(tempfile.mkdtemp(prefix="tunedock-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"),
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The test model (built once per machine; `make model`)."""
    from tests.support import test_model

    return test_model.build()


@pytest.fixture
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base-model folder with only config.json: token counts fall back to the estimate."""
    path = tmp_path_factory.mktemp("tiny-base")
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def make_settings(tmp_path: Path, s3_endpoint: str, tiny_model_dir: Path):  # noqa: ANN201
    def make(**overrides: object) -> Settings:
        values: dict = dict(
            database_url=f"sqlite+aiosqlite:///{tmp_path}/tunedock.db",
            data_dir=str(tmp_path / "data"),
            s3_endpoint_url=s3_endpoint,
            s3_access_key_id="test",
            s3_secret_access_key="test",
            artifact_bucket=ARTIFACTS,
            readable_buckets=(DATASETS,),
            base_models=(BaseModelEntry(alias="tiny", source=str(tiny_model_dir)),),
            log_json=False,
            log_level="warning",
        )
        values.update(overrides)
        return Settings(**values)

    return make


class Api:
    """A test client with a key per tenant."""

    def __init__(self, client: AsyncTestClient, keys: dict[str, str]) -> None:
        self.client = client
        self.keys = keys

    def auth(self, tenant: str = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    async def wait_status(self, job_id: str, statuses: set[str], timeout: float = 30,
                          tenant: str = "acme") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = (await self.client.get(f"/jobs/{job_id}", headers=self.auth(tenant))).json()
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job stayed {job['status']}: {job}")
            import asyncio

            await asyncio.sleep(0.05)


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend: a SQLite file, or a new database in the session's
    Postgres cluster."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/tunedock.db"
    return await new_postgres_database(request.getfixturevalue("postgres_url"))


async def new_postgres_database(base: str) -> str:
    """A new, empty database in the session's Postgres cluster; its URL."""
    from service.ids import new_id

    name = f"t_{new_id('x').split('-')[1]}"
    admin = Database(base)
    async with admin.engine.connect() as conn:
        await (await conn.execution_options(isolation_level="AUTOCOMMIT")).exec_driver_sql(
            f"CREATE DATABASE {name}")
    await admin.close()
    return base.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
async def api(make_settings) -> AsyncIterator[Api]:  # noqa: ANN001
    async with api_client(make_settings()) as client:
        yield client


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        # The app runs on the test client's own event loop; asyncpg connections belong to one
        # loop, so the keys are made through a database handle of this loop.
        db = Database(settings.database_url)
        keys = {t: await Store(db).create_api_key(t) for t in ("acme", "globex")}
        await db.close()
        yield Api(client, keys)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the session's serving stack (vLLM, its sidecar and a runner: ~2 GB and some
    CPU even when idle) run last and together, so nothing else runs beside it. The sort is
    stable: their own order, and everyone else's, stays as collected."""
    items.sort(key=lambda item: "stack" in getattr(item, "fixturenames", ()))


# The session's serving stack (API, runner, vLLM) as a fixture; imported last, as it reads this module.
from tests.support.stack import stack  # noqa: E402, F401
