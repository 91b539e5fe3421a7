"""Bad training data ends the job `failed` with invalid_training_file and a line number."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DATASETS, Api
from tests.support.data import chat_rows, jsonl

GOOD = jsonl(chat_rows(20))
LINES = GOOD.splitlines(keepends=True)


def _with_line(n: int, raw: bytes) -> bytes:
    lines = list(LINES)
    lines[n - 1] = raw
    return b"".join(lines)


CASES = {
    "invalid-utf8": (_with_line(3, b'{"text": "\xff\xfe"}\n'), 3, "UTF-8"),
    "invalid-json-line-7": (_with_line(7, b'{"messages": [}\n'), 7, "invalid JSON"),
    "ten-mb-line": (_with_line(5, b'{"text": "' + b"a" * (10 << 20) + b'"}\n'), 5, "longer than"),
    "no-assistant": (_with_line(2, json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
                                + b"\n"), 2, "assistant"),
    "mixed-formats": (_with_line(4, b'{"prompt": "a", "completion": "b"}\n'), 4, "one format"),
    "empty": (b"", None, "no examples"),
    "five-examples": (jsonl(chat_rows(5)), None, "at least 10"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_data_fails_with_line_number(api: Api, s3, case: str) -> None:  # noqa: ANN001
    body, line, words = CASES[case]
    s3.put_object(Bucket=DATASETS, Key=f"bad/{case}.jsonl", Body=body)
    job = (await api.client.post("/jobs", json={"base_model": "tiny",
                                                "training_file": f"s3://{DATASETS}/bad/{case}.jsonl"},
                                 headers=api.auth())).json()
    done = await api.wait_status(job["id"], {"failed", "queued"}, timeout=60)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "invalid_training_file"
    assert done["error"].get("line") == line
    assert words in done["error"]["message"]
    events = (await api.client.get(f"/jobs/{job['id']}/events", headers=api.auth())).json()["data"]
    assert events[-1]["level"] == "error"


async def test_bad_validation_file_fails_too(api: Api, s3) -> None:  # noqa: ANN001
    s3.put_object(Bucket=DATASETS, Key="v/train.jsonl", Body=GOOD)
    s3.put_object(Bucket=DATASETS, Key="v/val.jsonl", Body=b'{"text": "plain"}\n' * 12)
    job = (await api.client.post("/jobs", json={
        "base_model": "tiny", "training_file": f"s3://{DATASETS}/v/train.jsonl",
        "validation_file": f"s3://{DATASETS}/v/val.jsonl"}, headers=api.auth())).json()
    done = await api.wait_status(job["id"], {"failed", "queued"})
    assert done["status"] == "failed" and done["error"]["param"] == "validation_file"
