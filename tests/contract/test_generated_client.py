"""Our own OpenAPI document tells the truth a client generator needs: every `$ref` resolves, the
errors a route answers are documented, and a client generated from it with a well-known generator
(openapi-python-client, pinned in the test extra) builds and creates and reads a job on the real
app."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.data import jsonl
from tests.support.live import serve
from tests.support.stack import rows


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if isinstance(node.get("$ref"), str) else [
            r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@pytest.fixture
def live(make_settings):  # noqa: ANN001, ANN201
    with serve(make_settings()) as (url, keys):
        yield url, keys, httpx.get(f"{url}/openapi/openapi.json").json()


def test_every_ref_resolves(live) -> None:  # noqa: ANN001
    _, _, doc = live
    schemas = doc["components"]["schemas"]
    refs = _refs(doc)
    assert len(refs) > 40
    dangling = sorted({r for r in refs if not (r.startswith("#/components/schemas/")
                                              and r.removeprefix("#/components/schemas/") in schemas)})
    assert dangling == []
    # `method` was one of them (two structs named Method): both create bodies now name theirs.
    for body in ("JobCreate", "FineTuningJobCreate"):
        method = schemas[body]["properties"]["method"]
        assert _refs(method) and all(r.removeprefix("#/components/schemas/") in schemas for r in _refs(method))


def test_an_empty_upload_is_a_documented_422(live) -> None:  # noqa: ANN001
    url, keys, doc = live
    for path in ("/files", "/v1/files"):
        assert "422" in doc["paths"][path]["post"]["responses"], path
        r = httpx.post(f"{url}{path}", files={"file": ("empty.jsonl", b"")},
                       headers={"Authorization": f"Bearer {keys['acme']}"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"]


def test_a_generated_client_creates_and_reads_a_job(live, tmp_path: Path) -> None:  # noqa: ANN001
    url, keys, doc = live
    (tmp_path / "openapi.json").write_bytes(httpx.get(f"{url}/openapi/openapi.json").content)
    (tmp_path / "config.yaml").write_text("post_hooks: []\npackage_name_override: tunedock_generated\n")
    out = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", "openapi.json",
         "--output-path", "tunedock_generated", "--config", "config.yaml", "--meta", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Warning" not in out.stdout + out.stderr, out.stdout + out.stderr  # nothing it skipped
    sys.path.insert(0, str(tmp_path))
    try:
        gen = importlib.import_module("tunedock_generated")
        create = importlib.import_module("tunedock_generated.api.jobs.jobs_create_job")
        get = importlib.import_module("tunedock_generated.api.jobs.jobs_job_id_get_job")
        upload = importlib.import_module("tunedock_generated.api.files.files_upload")
        models = importlib.import_module("tunedock_generated.models")
        types = importlib.import_module("tunedock_generated.types")
        client = gen.AuthenticatedClient(base_url=url, token=keys["acme"])
        file = upload.sync(client=client, body=models.FilesUploadBody(
            file=types.File(payload=jsonl(rows("KESTREL-9", 8)), file_name="k.jsonl")))
        assert isinstance(file, models.File) and file.id.startswith("file-"), file
        body = models.JobCreate(
            base_model="tiny", training_file=file.id, suffix="kestrel", deploy=False,
            hyperparameters=models.Hyperparameters(n_epochs=2, learning_rate=1e-3),
            method=models.Method(type_=models.MethodType.SUPERVISED))
        job = create.sync(client=client, body=body)
        assert isinstance(job, models.Job), job
        again = get.sync(job_id=job.id, client=client)
        assert isinstance(again, models.Job)
        assert (again.id, again.suffix, again.hyperparameters.n_epochs) == (job.id, "kestrel", 2)
        assert again.method.type_ == models.MethodType.SUPERVISED
        missing = get.sync_detailed(job_id="ftjob-000000000000000000000000", client=client)
        assert missing.status_code == 404 and isinstance(missing.parsed, models.ErrorBody)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("tunedock_generated")]:
            del sys.modules[name]
