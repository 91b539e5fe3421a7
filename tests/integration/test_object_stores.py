"""Uploads a killed writer leaves open, on both object stores: aborted under the prefix asked for,
and nowhere else."""

from __future__ import annotations

import tempfile
from pathlib import Path

from service.storage import make_store
from service.storage.local import LocalStore
from tests.conftest import ARTIFACTS


def test_s3_abort_uploads_aborts_only_under_the_prefix(make_settings, s3) -> None:  # noqa: ANN001
    store = make_store(make_settings())
    keys = ["jobs/ftjob-a/checkpoints/epoch-1/optimizer.pt", "jobs/ftjob-ab/adapter/adapter_model.safetensors"]
    for key in keys:
        upload = s3.create_multipart_upload(Bucket=ARTIFACTS, Key=key)
        s3.upload_part(Bucket=ARTIFACTS, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 10)
    assert store.abort_uploads(ARTIFACTS, "jobs/ftjob-a/") == 1
    left = [u["Key"] for u in s3.list_multipart_uploads(Bucket=ARTIFACTS, Prefix="jobs/ftjob-a").get("Uploads", [])]
    assert left == [keys[1]]
    assert store.abort_uploads(ARTIFACTS, "jobs/ftjob-ab/") == 1
    assert store.abort_uploads(ARTIFACTS, "jobs/ftjob-ab/") == 0


def test_local_abort_uploads_removes_a_killed_writers_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    store.ping("b")
    whole = tmp_path / "whole.bin"
    whole.write_bytes(b"whole")
    store.put_file("b", "jobs/ftjob-a/adapter/adapter_config.json", whole)
    for prefix in ("jobs/ftjob-a/adapter", "jobs/ftjob-b/adapter"):
        folder = tmp_path / "objects" / "b" / prefix
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.mkstemp(dir=folder, prefix=".part-")  # what put_file leaves when killed mid-write
    assert store.abort_uploads("b", "jobs/ftjob-a/") == 1
    assert store.list_keys("b", "jobs/") == ["jobs/ftjob-a/adapter/adapter_config.json"]
    assert len(list((tmp_path / "objects" / "b" / "jobs/ftjob-b/adapter").glob(".part-*"))) == 1


def test_both_stores_read_the_same_byte_ranges(make_settings, s3, tmp_path: Path) -> None:  # noqa: ANN001
    """What GET /exports/{id}/content streams for a Range: bytes start..end, inclusive."""
    data = bytes(range(256)) * 9000  # 2.3 MB: several chunks
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    local = LocalStore(tmp_path / "objects")
    local.ping(ARTIFACTS)
    for store in (make_store(make_settings()), local):
        store.put_file(ARTIFACTS, "exports/ftexport-x/blob.bin", src)
        for start, end in ((0, 0), (5, 1_500_000), (len(data) - 10, len(data) - 1), (0, len(data) - 1)):
            got = b"".join(store.iter_range(ARTIFACTS, "exports/ftexport-x/blob.bin", start, end,
                                            chunk=1 << 19))
            assert got == data[start:end + 1], (type(store).__name__, start, end)
