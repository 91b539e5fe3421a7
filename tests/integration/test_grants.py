"""Per-tenant bucket grants (TUNEDOCK_TENANT_BUCKETS) against a real app and a real S3 server:
a grant names a folder, so it never reaches a sibling whose name merely starts the same way."""

from __future__ import annotations

import pytest

from service.settings import TenantBucket, load_settings
from tests.conftest import FOREIGN, Api, api_client
from tests.support.data import chat_rows, jsonl


@pytest.fixture
async def api(make_settings, s3):  # noqa: ANN001, ANN201
    # No bucket is readable by everyone here: only the grants decide.
    settings = make_settings(readable_buckets=(),
                             tenant_buckets=load_settings({"TUNEDOCK_TENANT_BUCKETS":
                                                           f"acme={FOREIGN}/teams/acme"}).tenant_buckets)
    body = jsonl(chat_rows(30))
    for key in ("teams/acme/train.jsonl", "teams/acme/deeper/train.jsonl", "teams/acme2/train.jsonl",
                "teams/acme-corp/train.jsonl", "teams/acme.jsonl"):
        s3.put_object(Bucket=FOREIGN, Key=key, Body=body)
    async with api_client(settings) as client:
        yield client


def test_a_grant_is_parsed_as_a_folder() -> None:
    grants = load_settings({"TUNEDOCK_TENANT_BUCKETS": "acme=data/teams/acme/,globex=data"}).tenant_buckets
    assert grants == (TenantBucket(tenant="acme", bucket="data", prefix="teams/acme"),
                      TenantBucket(tenant="globex", bucket="data", prefix=""))


@pytest.mark.parametrize(("tenant", "key", "allowed"), [
    ("acme", "teams/acme/train.jsonl", True),
    ("acme", "teams/acme/deeper/train.jsonl", True),
    ("acme", "teams/acme2/train.jsonl", False),
    ("acme", "teams/acme-corp/train.jsonl", False),
    ("acme", "teams/acme.jsonl", False),
    ("acme", "teams/acme/../acme2/train.jsonl", False),
    ("globex", "teams/acme/train.jsonl", False),
])
async def test_a_grant_covers_its_folder_and_nothing_beside_it(api: Api, tenant: str, key: str,
                                                               allowed: bool) -> None:
    r = await api.client.post("/jobs", headers=api.auth(tenant), json={
        "base_model": "tiny", "training_file": f"s3://{FOREIGN}/{key}", "deploy": False})
    if allowed:
        assert r.status_code == 201, r.text
    else:
        assert r.status_code == 404, r.text
        assert r.json()["error"]["param"] == "training_file"
