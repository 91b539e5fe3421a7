"""The New-job page asks for a dry run on every edit and a preview on every change of model,
method or length. Checking an uploaded file is the expensive part (the whole file read from S3
and tokenized), and a file never changes: each check is done once per file and per setting that
changes its outcome, then reused by the dry run and the preview. Counted at a loopback proxy in
front of the real S3 server. Before: every dry run read the whole file again."""

from __future__ import annotations

from pathlib import Path

from service.settings import BaseModelEntry
from tests.conftest import api_client
from tests.support.data import chat_rows, jsonl
from tests.support.s3_faults import s3_fault_proxy


async def test_edits_that_do_not_change_the_check_do_not_read_the_file_again(
        make_settings, s3_endpoint: str, smollm2_dir: Path) -> None:  # noqa: ANN001
    with s3_fault_proxy(s3_endpoint) as (proxy, faults):
        settings = make_settings(s3_endpoint_url=proxy, base_models=(
            BaseModelEntry(alias="smollm2", source=str(smollm2_dir)),))
        async with api_client(settings) as api:
            r = await api.client.post("/files", files={"file": ("a.jsonl", jsonl(chat_rows(40)))},
                                      headers=api.auth())
            assert r.status_code == 201, r.text
            file_id = r.json()["id"]

            async def dry_run(**hp: object) -> int:
                faults.reset()
                r = await api.client.post("/jobs", headers=api.auth(), json={
                    "base_model": "smollm2", "training_file": file_id, "hyperparameters": hp, "dry_run": True})
                assert r.status_code == 200, r.text
                assert r.json()["dataset"]["n_train"] + r.json()["dataset"]["n_validation"] == 40
                return faults.calls

            # A dry run asks S3 whether the object is there (HEAD), then reads it (GET).
            assert await dry_run(n_epochs=1) == 2
            # The page's edits: epochs, batch size, learning rate, rank. None reads the file.
            assert [await dry_run(n_epochs=2), await dry_run(n_epochs=2, batch_size=4),
                    await dry_run(learning_rate=1e-4, lora_r=8)] == [1, 1, 1]
            # A setting the check depends on is a new check.
            assert await dry_run(max_seq_length=64) == 2
            # The preview reuses the check it shares with the dry run: it reads only the first rows.
            faults.reset()
            r = await api.client.post(f"/files/{file_id}/preview", headers=api.auth(),
                                      json={"base_model": "smollm2", "max_seq_length": 64})
            assert r.status_code == 200 and r.json()["valid"], r.text
            assert faults.calls == 1, faults.calls
            # Another tenant's request never sees it: the file is not theirs.
            r = await api.client.post("/jobs", headers=api.auth("globex"), json={
                "base_model": "smollm2", "training_file": file_id, "dry_run": True})
            assert r.status_code == 404
