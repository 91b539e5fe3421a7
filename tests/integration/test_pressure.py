"""Pressure on the API process: eight concurrent 200 MB uploads stream through it (its resident
memory stays under a stated bound), one byte over the limit is a 413, and a 50 MB JSONL line
is refused with its line number. The API runs as its own process so its memory is its own."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec

from tests.conftest import ARTIFACTS, Api
from tests.support.live import free_port
from tests.support.processes import ROOT, die_with_sigterm, settings_env

MB = 1 << 20
UPLOAD = 200 * MB
# Stated bound on the API's peak resident memory while eight 200 MB uploads stream through it:
# each holds at most an 8 MiB spool in memory plus 4 x 8 MiB multipart chunks in flight
# (service/storage/s3.py), ~320 MiB over a ~150 MiB process.
RSS_BOUND = 600 * MB
LINE = b'{"text": "a short row that repeats"}\n'


def multipart(size: int, fill: bytes) -> tuple[str, object, int]:
    """A streamed multipart body with one `file` part of `size` bytes (never all in memory)."""
    boundary = "tunedockpressure"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = fill * (MB // len(fill)) + fill[: MB % len(fill)]

    def body():  # noqa: ANN202
        yield head
        left = size
        while left:
            n = min(left, len(block))
            yield block[:n]
            left -= n
        yield tail

    return f"multipart/form-data; boundary={boundary}", body(), len(head) + size + len(tail)


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_eight_concurrent_200mb_uploads_stay_under_the_memory_bound(make_settings, s3, tmp_path: Path) -> None:  # noqa: ANN001
    port = free_port()
    settings = make_settings(port=port, max_upload_bytes=UPLOAD)

    env = settings_env(settings)
    token = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "acme"], cwd=ROOT,
                           env=env, capture_output=True, text=True, check=True).stdout.split()[-1]
    api = subprocess.Popen([sys.executable, "-m", "service", "api"], cwd=ROOT, env=env,
                           stdout=(tmp_path / "api.log").open("wb"), stderr=subprocess.STDOUT,
                           preexec_fn=die_with_sigterm)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and api.poll() is None, (tmp_path / "api.log").read_text()
            time.sleep(0.2)
        idle = peak_rss(api.pid)

        def upload(size: int) -> httpx.Response:
            ctype, body, length = multipart(size, LINE)
            return httpx.post(f"{base}/files", content=body, timeout=600, headers={
                "Authorization": f"Bearer {token}", "Content-Type": ctype, "Content-Length": str(length)})

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(upload, [UPLOAD] * 8))
        elapsed = time.monotonic() - started
        peak = peak_rss(api.pid)
        over = upload(UPLOAD + 1)
    finally:
        api.terminate()
        api.wait(30)
    print(f"\n8 x 200 MB uploads in {elapsed:.1f} s; API peak RSS {peak / MB:.0f} MiB "
          f"(idle {idle / MB:.0f} MiB, bound {RSS_BOUND / MB:.0f} MiB)")
    assert [r.status_code for r in responses] == [201] * 8, [r.text for r in responses]
    files = [msgspec.json.decode(r.content) for r in responses]
    assert all(f["bytes"] == UPLOAD for f in files)
    stored = s3.head_object(Bucket=ARTIFACTS, Key=f"files/{files[0]['id']}.jsonl")
    assert stored["ContentLength"] == UPLOAD
    assert peak < RSS_BOUND, f"peak RSS {peak / MB:.0f} MiB"
    assert over.status_code == 413 and over.json()["error"]["code"] == "file_too_large"
    # (the bucket is the session's: other tests' jobs have keys of their own under jobs/)
    assert not s3.list_multipart_uploads(Bucket=ARTIFACTS, Prefix="files/").get("Uploads")


async def test_a_50mb_jsonl_line_is_refused_with_its_line_number(api: Api) -> None:
    big = b'{"text": "' + b"x" * (50 * MB) + b'"}\n'
    body = LINE * 2 + big + LINE
    r = await api.client.post("/files", files={"file": ("big-line.jsonl", body)}, headers=api.auth())
    assert r.status_code == 201, r.text
    job = await api.client.post("/jobs", headers=api.auth(), json={
        "base_model": "tiny", "training_file": r.json()["id"]})
    assert job.status_code == 201, job.text
    failed = await api.wait_status(job.json()["id"], {"failed"}, timeout=120)
    assert failed["error"]["code"] == "invalid_training_file"
    assert failed["error"]["line"] == 3 and "line 3" in failed["error"]["message"], failed["error"]
