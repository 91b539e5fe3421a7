"""/v1 against OpenAI's own published schemas (tests/support/openai_schema.py): a whole life
driven through the official `openai` SDK, with real training by a real runner on a tiny Llama,
and every response body checked against the schema OpenAI's document gives its operation.
Chat (plain and streamed) is checked the same way where vLLM runs: tests/e2e/test_serving.py."""

from __future__ import annotations

import csv
import io
import json
import time

import msgspec
import openai
import pytest

from service.settings import BaseModelEntry
from tests.e2e.test_dpo import pairs
from tests.support.data import jsonl
from tests.support.live import serve
from tests.support.openai_schema import Conformance, document
from tests.support.processes import start_runner
from tests.support.receiver import Receiver
from tests.support.stack import rows

pytestmark = pytest.mark.slow


def _ended(oai: openai.OpenAI, job_id: str, timeout: float = 300):  # noqa: ANN202
    deadline = time.monotonic() + timeout
    while (job := oai.fine_tuning.jobs.retrieve(job_id)).status not in {"succeeded", "failed", "cancelled"}:
        assert time.monotonic() < deadline, f"{job_id} did not end: {job.status}"
        time.sleep(0.5)
    return job


def test_the_vendored_document_is_openais_pinned_commit() -> None:
    assert document()["openapi"].startswith("3.1")
    assert "FineTuningJob" in document()["components"]["schemas"]


def test_v1_life_conforms_to_openais_schemas(e2e_settings, tiny_llama_dir, tmp_path) -> None:  # noqa: ANN001
    settings = msgspec.structs.replace(
        e2e_settings, base_models=(BaseModelEntry(alias="tiny", source=str(tiny_llama_dir)),),
        webhook_allow_private_urls=True, webhook_poll_seconds=0.2)
    conformance = Conformance()
    receiver = Receiver().up()
    with serve(settings) as (url, keys), conformance.client(timeout=30) as http:
        oai = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["acme"], max_retries=0, http_client=http)
        hook = oai.webhooks.create(name="ci", url=receiver.url, event_types=[
            "fine_tuning.job.succeeded", "fine_tuning.job.checkpoint.created"])
        train = oai.files.create(file=("codes.jsonl", jsonl(rows("OSPREY-3", 24))), purpose="fine-tune")
        prefs = oai.files.create(file=("prefs.jsonl", jsonl(pairs(range(16)))), purpose="fine-tune")
        assert oai.files.retrieve(train.id).bytes == train.bytes
        assert {f.id for f in oai.files.list()} >= {train.id, prefs.id}
        hp = {"n_epochs": 2, "batch_size": 4}
        sft = oai.fine_tuning.jobs.create(model="tiny", training_file=train.id, suffix="osprey",
                                          metadata={"team": "birds"}, hyperparameters=hp,
                                          extra_body={"max_seq_length": 64})
        dpo = oai.fine_tuning.jobs.create(
            model="tiny", training_file=prefs.id, seed=3,
            method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, **hp}}},
            extra_body={"deploy": False, "max_seq_length": 64})
        assert sft.method.type == "supervised" and dpo.method.type == "dpo"
        # A queued job paused, resumed and cancelled before any runner sees it.
        third = oai.fine_tuning.jobs.create(model="tiny", training_file=train.id)
        deadline = time.monotonic() + 30
        while oai.fine_tuning.jobs.retrieve(third.id).status != "queued":  # its files checked
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert oai.fine_tuning.jobs.pause(third.id).status == "paused"
        assert oai.fine_tuning.jobs.retrieve(third.id).status == "paused"
        assert [j.id for j in oai.fine_tuning.jobs.list(metadata={"team": "birds"})] == [sft.id]
        assert oai.fine_tuning.jobs.resume(third.id).status in {"queued", "validating_files"}
        assert oai.fine_tuning.jobs.cancel(third.id).status == "cancelled"

        runner = start_runner(settings, tmp_path / "runner.log")
        try:
            for job in (sft, dpo):
                done = _ended(oai, job.id)
                assert done.status == "succeeded", (done.error, (tmp_path / "runner.log").read_text()[-3000:])
        finally:
            runner.terminate()
            runner.wait(30)

        # Each success came as OpenAI's webhook event, signed; each epoch's checkpoint as tunedock's.
        got = receiver.wait_for(lambda r: sum(b"succeeded" in body for _, body in r) == 2)
        events = [oai.webhooks.unwrap(body, headers, secret=hook.signing_secret) for headers, body in got
                  if b"succeeded" in body]
        assert {(type(e).__name__, e.data.id) for e in events} == {
            ("FineTuningJobSucceededWebhookEvent", sft.id), ("FineTuningJobSucceededWebhookEvent", dpo.id)}
        saved = [json.loads(body)["data"] for _, body in got if b"checkpoint.created" in body]
        assert sorted((d["id"], d["epoch"]) for d in saved) == sorted(
            (j.id, epoch) for j in (sft, dpo) for epoch in (1, 2))
        receiver.down()

        for job in (sft, dpo):
            done = oai.fine_tuning.jobs.retrieve(job.id)
            events = oai.fine_tuning.jobs.list_events(job.id, limit=100).data
            assert any(e.type == "metrics" for e in events) and events[0].created_at >= events[-1].created_at
            assert len(oai.fine_tuning.jobs.checkpoints.list(job.id).data) == 2
            # The result file: the per-step CSV, a file of purpose fine-tune-results.
            assert len(done.result_files) == 1
            result = oai.files.retrieve(done.result_files[0])
            assert result.purpose == "fine-tune-results" and result.bytes > 0
            table = list(csv.DictReader(io.StringIO(oai.files.content(result.id).text)))
            assert [int(r["step"]) for r in table] == list(range(1, len(table) + 1)), table
            assert all(float(r["train_loss"]) > 0 for r in table)
        assert [f.id for f in oai.files.list(purpose="fine-tune-results")] == [
            oai.fine_tuning.jobs.retrieve(j.id).result_files[0] for j in (dpo, sft)]
        assert [j.id for j in oai.fine_tuning.jobs.list(limit=2).data] == [third.id, dpo.id]
        with pytest.raises(openai.NotFoundError):  # a cursor that is no result file is refused, not ignored
            oai.files.list(purpose="fine-tune-results", after=train.id)

        served = oai.fine_tuning.jobs.retrieve(sft.id).fine_tuned_model
        assert served in {m.id for m in oai.models.list()}
        assert oai.models.retrieve("tiny").id == "tiny"
        assert oai.models.delete(served).deleted

        # Each error, in OpenAI's error shape.
        with pytest.raises(openai.NotFoundError):
            oai.fine_tuning.jobs.retrieve("ftjob-nosuchjob")
        with pytest.raises(openai.NotFoundError):
            oai.models.retrieve("nosuchmodel")
        with pytest.raises(openai.BadRequestError):
            oai.fine_tuning.jobs.create(model="tiny", training_file=train.id,
                                        hyperparameters={"n_epochs": 0})
        with pytest.raises(openai.BadRequestError):
            oai.fine_tuning.jobs.create(model="tiny", training_file=train.id, extra_body={"color": "red"})
        with pytest.raises(openai.ConflictError):
            oai.fine_tuning.jobs.cancel(sft.id)
        with pytest.raises(openai.UnprocessableEntityError):
            oai.files.create(file=("empty.jsonl", b""), purpose="fine-tune")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="td-wrong", max_retries=0,
                          http_client=http).models.list()
        assert oai.files.delete(train.id).deleted

    # Every operation was checked, and none broke OpenAI's schema.
    refs = {r.rsplit("/", 1)[-1] for r in conformance.seen}
    assert refs >= {"OpenAIFile", "ListFilesResponse", "FineTuningJob", "ListPaginatedFineTuningJobsResponse",
                    "ListFineTuningJobEventsResponse", "ListFineTuningJobCheckpointsResponse",
                    "ListModelsResponse", "Model", "DeleteModelResponse", "ErrorResponse"}, refs
    assert conformance.failures == [], "\n".join(conformance.failures)
