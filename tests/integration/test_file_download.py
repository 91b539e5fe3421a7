"""Downloading an upload (`GET /v1/files/{id}/content`) while the object store fails: a body
cut mid-stream is resumed from where it broke (a ranged GET of the same object version), so
the client gets every byte; a store that keeps failing ends the download as an error, never as
a clean 200 with a short body; one that fails before the first byte is a 503 in the one error
shape. Real S3 server behind a loopback proxy that cuts bodies and fails calls. Before: a cut
ended the answer early, and a failure at the start was a 200 with no body."""

from __future__ import annotations

import os

from tests.conftest import api_client
from tests.support.s3_faults import s3_fault_proxy

SIZE = 3 << 20


async def test_a_download_survives_a_cut_and_never_ends_short(make_settings, s3_endpoint: str) -> None:  # noqa: ANN001
    body = b"".join(b'{"text": "%s"}\n' % os.urandom(24).hex().encode() for _ in range(SIZE // 64))
    with s3_fault_proxy(s3_endpoint) as (proxy, faults):
        settings = make_settings(s3_endpoint_url=proxy)
        async with api_client(settings) as api:
            r = await api.client.post("/v1/files", files={"file": ("a.jsonl", body)}, data={"purpose": "fine-tune"},
                                      headers=api.auth())
            assert r.status_code == 200, r.text
            url = f"/v1/files/{r.json()['id']}/content"

            faults.cut_gets(1_000_000, 2_500)  # two cuts: the first read and its first resume
            r = await api.client.get(url, headers=api.auth())
            assert r.status_code == 200 and r.content == body
            assert faults.cuts == []

            # It breaks, and then every resumed read breaks before a byte: the download must fail.
            faults.cut_gets(1_000_000, 0, 0, 0, 0)
            try:
                r = await api.client.get(url, headers=api.auth())
            except Exception:  # noqa: BLE001 - whatever the transport raises for a broken body
                short_200 = False
            else:
                short_200 = True
            assert not short_200, f"a broken download ended as a {r.status_code} with {len(r.content)} bytes"
            faults.cut_gets()

            faults.reset(fail_from=1, burst=50)  # down before the first byte
            r = await api.client.get(url, headers=api.auth())
            assert r.status_code == 503, (r.status_code, r.content[:200])
            assert r.json()["error"]["code"] == "object_store_unavailable"
