"""Fixtures for whole user stories: the test model, and an app sharing its database with runners."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.settings import BaseModelEntry
from tests.conftest import Api
from tests.support import tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama.build(tmp_path_factory.mktemp("tiny-llama") / "model", smollm2_dir)


@pytest.fixture
def e2e_settings(make_settings, smollm2_dir: Path):  # noqa: ANN001, ANN201
    return make_settings(
        base_models=(BaseModelEntry(alias="smollm2", source=str(smollm2_dir)),),
        lease_seconds=4.0, heartbeat_seconds=1.0, poll_seconds=0.3, cancel_grace_seconds=3.0,
    )


@pytest.fixture
async def e2e_api(e2e_settings) -> AsyncIterator[Api]:  # noqa: ANN001
    app = create_app(e2e_settings)
    async with AsyncTestClient(app, timeout=30) as client:
        keys = {t: await app.state.store.create_api_key(t) for t in ("acme", "globex")}
        yield Api(client, keys)
