"""Uploads go to the object store while they arrive: a multipart S3 upload is under way, parts
stored, before the client has sent the end of its body (nothing spooled to the API's disk first),
and a body cut short by the size limit leaves no object and no open upload behind. A real server
on a socket, a real S3 server, a body streamed by httpx."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx

from tests.conftest import ARTIFACTS
from tests.support.live import serve

BOUNDARY = "tunedockboundary"
ROW = b'{"text": "' + b"x" * 1000 + b'"}\n'


def body(n_rows: int, checkpoint) -> Iterator[bytes]:  # noqa: ANN001
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
           "Content-Type: application/jsonl\r\n\r\n").encode()
    for i in range(0, n_rows, 1000):
        yield ROW * min(1000, n_rows - i)
        checkpoint(i + 1000)
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def open_uploads(s3) -> list[dict]:  # noqa: ANN001
    return s3.list_multipart_uploads(Bucket=ARTIFACTS, Prefix="files/").get("Uploads", [])


def test_an_upload_reaches_the_object_store_before_its_body_ends(make_settings, s3) -> None:  # noqa: ANN001
    seen: dict[str, int] = {}

    def checkpoint(rows: int) -> None:
        if rows == 30_000:  # ~30 MB sent of ~40 MB: the store must have parts already
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                uploads = open_uploads(s3)
                parts = sum(len(s3.list_parts(Bucket=ARTIFACTS, Key=u["Key"], UploadId=u["UploadId"])
                                .get("Parts", [])) for u in uploads)
                if parts:
                    seen["parts"] = parts
                    return
                time.sleep(0.1)

    with serve(make_settings()) as (url, keys):
        r = httpx.post(f"{url}/files", content=body(40_000, checkpoint), timeout=120, headers={
            "Authorization": f"Bearer {keys['acme']}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert r.status_code == 201, r.text
    assert seen.get("parts", 0) >= 1, "no part reached the object store before the body ended"
    stored = s3.head_object(Bucket=ARTIFACTS, Key=f"files/{r.json()['id']}.jsonl")
    assert stored["ContentLength"] == r.json()["bytes"] == 40_000 * len(ROW)
    assert not open_uploads(s3)


def test_an_upload_over_the_limit_leaves_nothing_behind(make_settings, s3) -> None:  # noqa: ANN001
    before = {o["Key"] for o in s3.list_objects_v2(Bucket=ARTIFACTS, Prefix="files/").get("Contents", [])}
    with serve(make_settings(max_upload_bytes=20 << 20)) as (url, keys):
        try:
            r = httpx.post(f"{url}/files", content=body(40_000, lambda _: None), timeout=120, headers={
                "Authorization": f"Bearer {keys['acme']}",
                "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            assert r.status_code == 413, r.text
            assert r.json()["error"]["code"] == "file_too_large"
        except httpx.HTTPError:
            pass  # the server may answer and close before the client has sent it all
    after = {o["Key"] for o in s3.list_objects_v2(Bucket=ARTIFACTS, Prefix="files/").get("Contents", [])}
    assert after == before
    assert not open_uploads(s3)
