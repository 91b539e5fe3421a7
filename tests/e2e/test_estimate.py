"""An estimate before start: a dry run checks the data and answers with the dataset summary, the
memory plan and a duration calibrated from jobs that finished on the runner's device; a finished
job shows its estimate beside the actual duration."""

from __future__ import annotations

import time

import pytest

from tests.conftest import DATASETS, Api
from tests.e2e.test_training_runner import code_word_rows, train_to_the_end
from tests.support.data import jsonl

pytestmark = pytest.mark.slow
HP = {"n_epochs": 2, "learning_rate": 2e-3, "batch_size": 4, "max_seq_length": 128}


def body(s3, rows: list[dict], **extra: object) -> dict:  # noqa: ANN001
    key = f"estimate/{time.monotonic_ns()}.jsonl"
    s3.put_object(Bucket=DATASETS, Key=key, Body=jsonl(rows))
    return {"base_model": "smollm2", "training_file": f"s3://{DATASETS}/{key}", "deploy": False,
            "hyperparameters": HP, **extra}


async def test_dry_run_estimates_within_30_percent_after_one_calibrating_job(
        e2e_api: Api, e2e_settings, s3, tmp_path) -> None:  # noqa: ANN001
    api = e2e_api
    # A bad file: the dry run says which line, as validation would, and creates nothing.
    bad = body(s3, [*code_word_rows(3), {"messages": [{"role": "user", "content": "hi"}]}], dry_run=True)
    r = await api.client.post("/jobs", json=bad, headers=api.auth())
    assert r.status_code == 422 and r.json()["error"]["param"] == "training_file", r.text
    assert "line 4" in r.json()["error"]["message"], r.text

    # Before any job has finished there is nothing to calibrate from, and the answer says so.
    first = body(s3, code_word_rows(24))
    r = await api.client.post("/jobs", json={**first, "dry_run": True}, headers=api.auth())
    assert r.status_code == 200, r.text
    dry = r.json()
    assert dry["object"] == "fine_tuning.job.estimate" and dry["dataset"]["n_examples"] == 24
    assert dry["estimate"]["seconds"] is None and "first one" in dry["estimate"]["message"]
    assert dry["plan"] is None and dry["estimate"]["tokens"] > 0
    listed = (await api.client.get("/jobs", headers=api.auth())).json()["data"]
    assert listed == [], "a dry run created a job"

    r = await api.client.post("/jobs", json=first, headers=api.auth())
    assert r.status_code == 201, r.text
    calibrating = await train_to_the_end(api, e2e_settings, r.json()["id"], tmp_path / "runner-1.log")
    assert calibrating["estimate"]["seconds"] is None and calibrating["estimate"]["actual_seconds"] > 0

    # Twice the data: the estimate now comes from the first job's throughput on this CPU.
    second = body(s3, code_word_rows(48))
    r = await api.client.post("/v1/fine_tuning/jobs", headers=api.auth(), json={
        "model": "smollm2", "training_file": second["training_file"], "deploy": False,
        "hyperparameters": {"n_epochs": 2, "batch_size": 4}, "learning_rate": 2e-3,
        "max_seq_length": 128, "dry_run": True})
    assert r.status_code == 200 and r.json()["object"] == "fine_tuning.job.estimate", r.text
    r = await api.client.post("/jobs", json={**second, "dry_run": True}, headers=api.auth())
    dry = r.json()
    estimate = dry["estimate"]
    assert estimate["device"] == "cpu" and estimate["calibration_jobs"] == 1, estimate
    assert estimate["seconds"] > 0 and dry["plan"]["device"] == "cpu", dry

    r = await api.client.post("/jobs", json=second, headers=api.auth())
    assert r.status_code == 201, r.text
    job = await train_to_the_end(api, e2e_settings, r.json()["id"], tmp_path / "runner-2.log")
    shown = job["estimate"]
    assert shown["seconds"] == estimate["seconds"], (shown, estimate)
    error = abs(shown["actual_seconds"] - shown["seconds"]) / shown["actual_seconds"]
    print(f"\nestimate: {shown['tokens']} tokens at {shown['tokens_per_second']} tokens/s + "
          f"{shown['startup_seconds']} s startup = {shown['seconds']} s; actual "
          f"{shown['actual_seconds']} s ({error:.0%} off; calibrated on {calibrating['estimate']['tokens']} "
          f"tokens in {calibrating['estimate']['actual_seconds']} s)")
    assert error <= 0.30, shown
