"""Webhooks, with a real HTTP receiver on loopback (tests/support/receiver.py) and the official
`openai` SDK on both sides: it manages the endpoints (`client.webhooks`, OpenAI's
/v1/webhook_endpoints) and verifies every delivery's Standard Webhooks signature
(`client.webhooks.unwrap` / `verify_signature`). Deliveries come from a durable outbox: a receiver
that is down gets them later, an API stopped between a status change and its delivery sends it
after its restart, and each attempt is logged (GET /webhooks/{id}/deliveries)."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.support.data import chat_rows, jsonl
from tests.support.live import serve
from tests.support.receiver import Receiver

EVENTS = ["fine_tuning.job.cancelled", "fine_tuning.job.paused", "fine_tuning.job.resumed"]


def _settings(make_settings, **overrides):  # noqa: ANN001, ANN202
    values = dict(webhook_allow_private_urls=True, webhook_backoff_seconds=0.3, webhook_poll_seconds=0.1)
    return make_settings(**{**values, **overrides})


def _queued(oai: openai.OpenAI, file_id: str) -> str:
    job = oai.fine_tuning.jobs.create(model="tiny", training_file=file_id)
    deadline = time.monotonic() + 30
    while (status := oai.fine_tuning.jobs.retrieve(job.id).status) != "queued":
        assert time.monotonic() < deadline and status == "validating_files", status
        time.sleep(0.05)
    return job.id


def _events(received: list[tuple[dict[str, str], bytes]]) -> list[tuple[str, str]]:
    return [(json.loads(body)["type"], json.loads(body)["data"]["id"]) for _, body in received]


def test_job_events_are_delivered_signed_and_retried_until_the_receiver_is_back(make_settings) -> None:  # noqa: ANN001
    receiver = Receiver().up()
    settings = _settings(make_settings)
    try:
        with serve(settings) as (url, keys):
            oai = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["acme"], max_retries=0)
            endpoint = oai.webhooks.create(name="ci", url=receiver.url, event_types=EVENTS)
            secret = endpoint.signing_secret
            assert secret.startswith("whsec_") and endpoint.signing_secret_hint.endswith(secret[-4:])
            assert [e.id for e in oai.webhooks.list()] == [endpoint.id]
            other = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["globex"], max_retries=0)
            with pytest.raises(openai.NotFoundError):
                other.webhooks.retrieve(endpoint.id)
            assert other.webhooks.list().data == []

            file_id = oai.files.create(file=("t.jsonl", jsonl(chat_rows(12))), purpose="fine-tune").id
            job = _queued(oai, file_id)
            oai.fine_tuning.jobs.pause(job)
            oai.fine_tuning.jobs.resume(job)
            oai.fine_tuning.jobs.cancel(job)
            got = receiver.wait_for(lambda r: len(r) >= 3)
            assert _events(got) == [("fine_tuning.job.paused", job), ("fine_tuning.job.resumed", job),
                                    ("fine_tuning.job.cancelled", job)]
            for headers, body in got:
                oai.webhooks.verify_signature(body, headers, secret=secret)
            cancelled = oai.webhooks.unwrap(got[2][1], got[2][0], secret=secret)
            assert cancelled.type == "fine_tuning.job.cancelled" and cancelled.data.id == job
            with pytest.raises(openai.InvalidWebhookSignatureError):
                oai.webhooks.verify_signature(got[2][1] + b" ", got[2][0], secret=secret)

            # The receiver goes down: the delivery is attempted, logged, and kept for later.
            receiver.down()
            second = _queued(oai, file_id)
            oai.fine_tuning.jobs.cancel(second)
            auth = {"Authorization": f"Bearer {keys['acme']}"}
            deadline = time.monotonic() + 20
            while True:
                log = httpx.get(f"{url}/webhooks/{endpoint.id}/deliveries", headers=auth).json()["data"]
                if log and log[0]["job_id"] == second and len(log[0]["attempts"]) >= 2:
                    break
                assert time.monotonic() < deadline, log
                time.sleep(0.1)
            assert log[0]["status"] == "pending" and log[0]["attempts"][0]["status_code"] is None
            assert "Connect" in log[0]["attempts"][0]["error"] and log[0]["next_attempt_at"]
            assert [d["status"] for d in log[1:]] == ["delivered"] * 3

        # The API stops with that delivery pending; it restarts, the receiver comes back: delivered.
        with serve(settings) as (url, keys):
            receiver.up()
            got = receiver.wait_for(lambda r: ("fine_tuning.job.cancelled", second) in _events(r))
            headers, body = got[-1]
            oai = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["acme"], max_retries=0)
            oai.webhooks.verify_signature(body, headers, secret=secret)
            log = httpx.get(f"{url}/v1/webhook_endpoints/{endpoint.id}/deliveries",
                            headers={"Authorization": f"Bearer {keys['acme']}"}).json()["data"]
            assert log[0]["status"] == "delivered" and log[0]["attempts"][-1]["status_code"] == 200
            # Every retry carried the same webhook-id, so a receiver can drop duplicates.
            assert headers["webhook-id"] == log[0]["event_id"]
    finally:
        receiver.down()


def test_a_status_change_is_delivered_after_the_api_stopped_before_sending_it(make_settings) -> None:  # noqa: ANN001
    """The outbox is the job's own event, written with the status change: an API that stops (or
    dies) before its dispatcher sends anything loses nothing."""
    receiver = Receiver().up()
    try:
        with serve(_settings(make_settings, webhook_poll_seconds=3600)) as (url, keys):
            oai = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["acme"], max_retries=0)
            endpoint = oai.webhooks.create(name="ci", url=receiver.url, event_types=EVENTS)
            file_id = oai.files.create(file=("t.jsonl", jsonl(chat_rows(12))), purpose="fine-tune").id
            job = _queued(oai, file_id)
            oai.fine_tuning.jobs.cancel(job)
            time.sleep(0.5)
            assert receiver.received == []  # its dispatcher sleeps for an hour
        with serve(_settings(make_settings)):
            got = receiver.wait_for(lambda r: len(r) >= 1)
        assert _events(got) == [("fine_tuning.job.cancelled", job)]
        openai.OpenAI(api_key="x").webhooks.verify_signature(got[0][1], got[0][0], secret=endpoint.signing_secret)
    finally:
        receiver.down()


def test_rotation_keeps_the_old_secret_a_day_when_asked_and_update_and_delete(make_settings) -> None:  # noqa: ANN001
    receiver = Receiver().up()
    try:
        with serve(_settings(make_settings)) as (url, keys):
            oai = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["acme"], max_retries=0)
            endpoint = oai.webhooks.create(name="ci", url=receiver.url, event_types=EVENTS)
            old = endpoint.signing_secret
            rotated = oai.webhooks.rotate_secret(endpoint.id, keep_old_secret_active_for_24_hours=True)
            assert rotated.signing_secret != old
            tested = oai.webhooks.test(endpoint.id, event_type="fine_tuning.job.cancelled")
            assert tested.status_code == 200 and tested.webhook_endpoint_id == endpoint.id
            headers, body = receiver.received[-1]
            for secret in (old, rotated.signing_secret):  # both sign while the old one is kept
                oai.webhooks.verify_signature(body, headers, secret=secret)
            fresh = oai.webhooks.rotate_secret(endpoint.id)  # the previous one stops at once
            oai.webhooks.test(endpoint.id, event_type="fine_tuning.job.succeeded")
            headers, body = receiver.received[-1]
            oai.webhooks.verify_signature(body, headers, secret=fresh.signing_secret)
            for secret in (old, rotated.signing_secret):
                with pytest.raises(openai.InvalidWebhookSignatureError):
                    oai.webhooks.verify_signature(body, headers, secret=secret)

            updated = oai.webhooks.update(endpoint.id, name="renamed", event_types=["fine_tuning.job.paused"])
            assert (updated.name, updated.event_types) == ("renamed", ["fine_tuning.job.paused"])
            file_id = oai.files.create(file=("t.jsonl", jsonl(chat_rows(12))), purpose="fine-tune").id
            before = len(receiver.received)
            job = _queued(oai, file_id)
            oai.fine_tuning.jobs.pause(job)
            oai.fine_tuning.jobs.cancel(job)  # not subscribed any more
            receiver.wait_for(lambda r: len(r) > before)
            time.sleep(0.5)
            assert _events(receiver.received[before:]) == [("fine_tuning.job.paused", job)]
            assert oai.webhooks.delete(endpoint.id).deleted
            with pytest.raises(openai.NotFoundError):
                oai.webhooks.retrieve(endpoint.id)
    finally:
        receiver.down()


# Well-formed URLs this service must not call answer 422 (webhook_url_refused); malformed ones 400.
REFUSED = [
    ("http://127.0.0.1:8080/hook", 422),  # http at all, and loopback
    ("https://127.0.0.1/hook", 422), ("https://localhost/hook", 422), ("https://[::1]/hook", 422),
    ("https://10.1.2.3/hook", 422), ("https://192.168.0.10/hook", 422), ("https://172.16.5.4/hook", 422),
    ("https://169.254.169.254/latest/meta-data", 422),  # cloud metadata
    ("https://[::ffff:127.0.0.1]/hook", 422), ("https://0.0.0.0/hook", 422),
    ("https://user:pw@example.com/hook", 400), ("ftp://example.com/hook", 400), ("not a url", 400),
]


def test_endpoints_that_reach_inside_the_network_are_refused(make_settings) -> None:  # noqa: ANN001
    with serve(make_settings()) as (url, keys):
        auth = {"Authorization": f"Bearer {keys['acme']}"}
        for target, status in REFUSED:
            r = httpx.post(f"{url}/v1/webhook_endpoints", headers=auth,
                           json={"name": "x", "url": target, "event_types": EVENTS})
            assert r.status_code == status, (target, r.text)
            error = r.json()["error"]
            assert error["param"] == "url" and error["type"] == "invalid_request_error", error
            assert status == 400 or error["code"] == "webhook_url_refused", error
        r = httpx.post(f"{url}/webhooks", headers=auth,
                       json={"url": "https://127.0.0.1/hook", "event_types": EVENTS})
        assert r.status_code == 422 and "type" not in r.json()["error"]
        assert httpx.get(f"{url}/webhooks", headers=auth).json()["data"] == []  # nothing was kept


def test_unknown_event_types_are_refused_with_what_is_sent(make_settings) -> None:  # noqa: ANN001
    with serve(make_settings()) as (url, keys):
        r = httpx.post(f"{url}/v1/webhook_endpoints", headers={"Authorization": f"Bearer {keys['acme']}"},
                       json={"name": "x", "url": "https://example.com/hook", "event_types": ["batch.completed"]})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("event_types"), r.text
        assert "fine_tuning.job.succeeded" in r.json()["error"]["message"], r.text
