"""The streamed upload's worker never waits for good: a body that stops coming is dropped after
the idle limit, and the local store keeps nothing of it."""

from __future__ import annotations

import asyncio

import pytest

from service.storage import streaming
from service.storage.local import LocalStore
from service.storage.streaming import StreamingUpload, UploadAborted


async def test_an_upload_whose_bytes_stop_coming_is_dropped(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(streaming, "IDLE_SECONDS", 0.3)
    store = LocalStore(tmp_path / "objects")
    upload = StreamingUpload(store, "bucket", "files/a.jsonl")
    await upload.write(b'{"text": "a"}\n')
    await asyncio.sleep(1.0)  # the client went quiet
    assert upload.worker.done()
    with pytest.raises(UploadAborted):
        await upload.finish()
    assert not [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]


async def test_a_finished_upload_is_stored_whole(tmp_path) -> None:  # noqa: ANN001
    store = LocalStore(tmp_path / "objects")
    upload = StreamingUpload(store, "bucket", "files/b.jsonl")
    for i in range(50):
        await upload.write(b"%d\n" % i)
    await upload.finish()
    assert b"".join(store.iter_bytes("bucket", "files/b.jsonl")) == b"".join(b"%d\n" % i for i in range(50))
