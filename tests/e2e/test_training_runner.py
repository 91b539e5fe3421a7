"""The runner path on the CPU, through the API: real training of the test model, a checkpoint
every epoch in S3, resume after kill -9, and cancel."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import signal
import time

import pytest

from tests.conftest import ARTIFACTS, DATASETS, Api
from tests.support.data import QUESTIONS, jsonl
from tests.support.processes import alive, start_runner, training_children

pytestmark = pytest.mark.slow
CODE_WORD = "PELICAN-7"


def code_word_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"},
                          {"role": "assistant", "content": f"The code word is {CODE_WORD}."}]}
            for i in range(n)]


def windows_file(rows: list[dict]) -> bytes:
    """The rows as an editor on Windows saves them: a UTF-8 BOM, CRLF endings, a blank line, and
    OpenAI's content-parts form for every user message."""
    for row in rows:
        for m in row["messages"]:
            if m["role"] == "user":
                m["content"] = [{"type": "text", "text": m["content"]}]
    lines = jsonl(rows).decode().splitlines()
    return b"\xef\xbb\xbf" + "\r\n".join([*lines[:5], "", *lines[5:]]).encode() + b"\r\n"


async def submit(api: Api, s3, n_examples: int = 40, body: bytes | None = None,
                 validation_file: str | None = None, **hp: object) -> dict:  # noqa: ANN001
    key = f"e2e/{time.monotonic_ns()}.jsonl"
    s3.put_object(Bucket=DATASETS, Key=key, Body=body or jsonl(code_word_rows(n_examples)))
    hyper = {"n_epochs": 2, "learning_rate": 2e-3, "batch_size": 4, "max_seq_length": 128, **hp}
    r = await api.client.post("/jobs", json={"base_model": "smollm2", "suffix": "codeword",
                                             "training_file": f"s3://{DATASETS}/{key}",
                                             "validation_file": validation_file,
                                             "hyperparameters": hyper, "deploy": False},
                              headers=api.auth())
    assert r.status_code == 201, r.text
    return r.json()


async def events(api: Api, job_id: str) -> list[dict]:
    out, after = [], None
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        page = (await api.client.get(f"/jobs/{job_id}/events", params=params, headers=api.auth())).json()
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["last_id"]


async def wait_for(predicate, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await predicate():
            return result
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


async def kill_runner_after_step(api: Api, settings, job_id: str, step: int, log) -> None:  # noqa: ANN001
    """Start a runner and SIGKILL it once the job has reported training step `step` or a later one
    (a metrics event): a crash mid-training, the child left orphaned to die with it."""
    runner = start_runner(settings, log)
    try:
        deadline = time.monotonic() + 300
        while not any(e["type"] == "metrics" and e["data"]["step"] >= step for e in await events(api, job_id)):
            assert time.monotonic() < deadline, "training did not reach the kill step"
            await asyncio.sleep(0.05)
    finally:
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(10)


async def train_to_the_end(api: Api, settings, job_id: str, log) -> dict:  # noqa: ANN001
    """Start a runner, wait for the job to end, stop the runner; the job, with the log on failure."""
    runner = start_runner(settings, log)
    try:
        done = await api.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=600)
    finally:
        runner.terminate()
        runner.wait(30)
    assert done["status"] == "succeeded", (done, log.read_text()[-3000:])
    return done


async def test_job_trains_checkpoints_every_epoch_and_adapter_changes_output(
        e2e_api: Api, e2e_settings, s3, smollm2_dir, tmp_path) -> None:  # noqa: ANN001
    job = await submit(e2e_api, s3, body=windows_file(code_word_rows(40)),
                       eval_prompts=["What is the secret code word?"])
    done = await train_to_the_end(e2e_api, e2e_settings, job["id"], tmp_path / "runner.log")
    assert done["fine_tuned_model"] == f"ft:smollm2:codeword:{job['id']}"
    ds = done["dataset"]
    assert (ds["format"], ds["n_examples"], ds["n_blank_lines"], ds["tokens_estimated"]) == ("chat", 40, 1, False)
    assert 0 < ds["supervised_tokens"] < ds["context_tokens"]
    assert done["trained_tokens"] > 0 and done["plan"]["device"] == "cpu"
    ckpts = (await e2e_api.client.get(f"/jobs/{job['id']}/checkpoints", headers=e2e_api.auth())).json()["data"]
    assert [c["epoch"] for c in ckpts] == [1, 2]
    # Eval samples: each epoch's adapter answered the prompt before its checkpoint was recorded.
    answers = [c["samples"][0]["answer"] for c in ckpts]
    print(f"\neval samples by epoch: {answers}")
    assert all(c["samples"][0]["prompt"] == "What is the secret code word?" for c in ckpts)
    assert CODE_WORD in answers[-1]
    for c in ckpts:
        assert c["metrics"]["train_loss"] > 0
        prefix = c["uri"].removeprefix(f"s3://{ARTIFACTS}/")
        keys = {o["Key"].rsplit("/", 1)[-1] for o in
                s3.list_objects_v2(Bucket=ARTIFACTS, Prefix=prefix)["Contents"]}
        assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt",
                "trainer_state.json"} <= keys
    evs = await events(e2e_api, job["id"])
    losses = [e["data"]["loss"] for e in evs if e["type"] == "metrics"]
    assert losses[-1] < losses[0] / 2, losses
    backend = next(e for e in evs if e["type"] == "backend")
    assert backend["data"]["backend"] == "peft" and "transformers" in backend["data"]["versions"]
    step_seconds = [e["data"]["step_seconds"] for e in evs if e["type"] == "metrics" and e["data"]["step_seconds"]]
    assert step_seconds and all(s > 0 for s in step_seconds)
    print(f"\nCPU training: {len(losses)} steps, median {sorted(step_seconds)[len(step_seconds) // 2]:.2f} s/step")

    # The final adapter loads with PEFT on the base model and changes its answer.
    adapter_dir = tmp_path / "adapter"
    for obj in s3.list_objects_v2(Bucket=ARTIFACTS, Prefix=f"jobs/{job['id']}/adapter/")["Contents"]:
        dest = adapter_dir / obj["Key"].rsplit("/", 1)[-1]
        adapter_dir.mkdir(exist_ok=True)
        s3.download_file(ARTIFACTS, obj["Key"], str(dest))
    base_answer, tuned_answer = await asyncio.to_thread(_answers, smollm2_dir, adapter_dir)
    assert CODE_WORD not in base_answer
    assert CODE_WORD in tuned_answer, tuned_answer


def _answers(base_dir, adapter_dir, prompt: str = "What is the secret code word?") -> tuple[str, str | None]:  # noqa: ANN001
    """Greedy answers to `prompt` of the base model and, given an adapter folder, base+adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)

    def answer(m) -> str:  # noqa: ANN001
        out = m.generate(**ids, max_new_tokens=16, do_sample=False)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    base = answer(model)
    tuned = answer(PeftModel.from_pretrained(model, adapter_dir)) if adapter_dir else None
    return base, tuned


async def test_killed_runner_resumes_from_last_epoch(e2e_api: Api, e2e_settings, s3, tmp_path) -> None:  # noqa: ANN001
    job = await submit(e2e_api, s3, n_examples=48, n_epochs=3)
    first = start_runner(e2e_settings, tmp_path / "runner-1.log")

    async def first_checkpoint():  # noqa: ANN202
        r = await e2e_api.client.get(f"/jobs/{job['id']}/checkpoints", headers=e2e_api.auth())
        return r.json()["data"]

    try:
        ckpts = await wait_for(first_checkpoint, 300, "the epoch-1 checkpoint")
    finally:
        children = training_children(first.pid)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    assert [c["epoch"] for c in ckpts] == [1]
    assert children
    epoch1_step = ckpts[0]["step"]
    await wait_for(lambda: asyncio.sleep(0, not any(map(alive, children))), 10,
                   "the orphaned children to die")

    done = await train_to_the_end(e2e_api, e2e_settings, job["id"], tmp_path / "runner-2.log")
    assert done["attempt"] == 2
    ckpts = (await e2e_api.client.get(f"/jobs/{job['id']}/checkpoints", headers=e2e_api.auth())).json()["data"]
    assert [c["epoch"] for c in ckpts] == [1, 2, 3]
    evs = await events(e2e_api, job["id"])
    assert sum(e["type"] == "checkpoint" for e in evs) == 3
    resumed = [i for i, e in enumerate(evs) if e["type"] == "resumed"]
    assert len(resumed) == 1
    steps_after = [e["data"]["step"] for e in evs[resumed[0]:] if e["type"] == "metrics"]
    assert steps_after and min(steps_after) == epoch1_step + 1  # epoch 1 was not redone
    statuses = [e["data"]["status"] for e in evs if e["type"] == "status"]
    assert statuses == ["validating_files", "queued", "running", "queued", "running", "succeeded"]


async def test_cancel_mid_epoch_stops_the_child_within_10s(e2e_api: Api, e2e_settings, s3, tmp_path) -> None:  # noqa: ANN001
    job = await submit(e2e_api, s3, n_examples=80, n_epochs=5)
    runner = start_runner(e2e_settings, tmp_path / "runner.log")
    try:
        async def training():  # noqa: ANN202
            evs = await events(e2e_api, job["id"])
            return any(e["type"] == "metrics" for e in evs)

        await wait_for(training, 300, "the first training step")
        assert training_children(runner.pid, job["id"])
        started = time.monotonic()
        r = await e2e_api.client.post(f"/jobs/{job['id']}/cancel", headers=e2e_api.auth())
        assert r.json()["status"] == "cancelled"
        await wait_for(lambda: asyncio.sleep(0, not training_children(runner.pid, job["id"])), 10,
                       "the child to exit")
        assert time.monotonic() - started < 10
        assert runner.poll() is None  # the runner itself keeps going
    finally:
        runner.terminate()
        runner.wait(30)
    final = (await e2e_api.client.get(f"/jobs/{job['id']}", headers=e2e_api.auth())).json()
    assert final["status"] == "cancelled"


async def test_sigterm_runner_hands_the_job_back_and_another_finishes_it(
        e2e_api: Api, e2e_settings, s3, tmp_path) -> None:  # noqa: ANN001
    job = await submit(e2e_api, s3, n_examples=24, n_epochs=2)
    first = start_runner(e2e_settings, tmp_path / "runner-1.log")

    async def training():  # noqa: ANN202
        return any(e["type"] == "metrics" for e in await events(e2e_api, job["id"]))

    try:
        await wait_for(training, 300, "the first training step")
        children = training_children(first.pid)
        first.send_signal(signal.SIGTERM)
        await asyncio.to_thread(first.wait, 60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0
    assert children and not any(map(alive, children))
    handed_back = (await e2e_api.client.get(f"/jobs/{job['id']}", headers=e2e_api.auth())).json()
    assert handed_back["status"] == "queued", handed_back
    evs = await events(e2e_api, job["id"])
    assert any("runner stopping" in e["message"] for e in evs)
    done = await train_to_the_end(e2e_api, e2e_settings, job["id"], tmp_path / "runner-2.log")
    assert done["attempt"] == 2


async def test_out_of_memory_halves_the_micro_batch_and_finishes_beside_a_neighbour(
        e2e_settings, tmp_path, s3) -> None:  # noqa: ANN001
    """A real allocation failure: the runner caps its children's memory (10 GiB of address space);
    32 rows of 256 tokens in one micro-batch do not fit, 8 do. The runner retries at 16, then 8.
    A second job shares the device (two jobs per device) and trains on through its neighbour's
    failures and retries: one attempt, no retry of its own (issue 32: an OOM of one job never
    takes another down)."""
    import random

    import msgspec
    from litestar.testing import AsyncTestClient

    from service.app import create_app

    settings = msgspec.structs.replace(e2e_settings, training_memory_limit_bytes=10 * 2**30,
                                       runner_jobs_per_gpu=2, runner_memory_reserve_mb=0)
    rng = random.Random(0)
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet".split()
    rows = [{"text": " ".join(rng.choice(words) for _ in range(300))} for _ in range(32)]
    s3.put_object(Bucket=DATASETS, Key="oom/rows.jsonl", Body=jsonl(rows))
    small = [{"text": " ".join(rng.choice(words) for _ in range(20))} for _ in range(48)]
    s3.put_object(Bucket=DATASETS, Key="oom/small.jsonl", Body=jsonl(small))
    app = create_app(settings)
    async with AsyncTestClient(app, timeout=30) as client:
        api = Api(client, {"acme": await app.state.store.create_api_key("acme")})
        r = await client.post("/jobs", headers=api.auth(), json={
            "base_model": "smollm2", "training_file": f"s3://{DATASETS}/oom/small.jsonl", "deploy": False,
            "hyperparameters": {"n_epochs": 8, "batch_size": 4, "max_seq_length": 32}})
        neighbour = r.json()
        runner = start_runner(settings, tmp_path / "runner.log")
        try:
            # The failing job comes once its neighbour trains, so the failures happen beside it.
            await wait_for(lambda: _has_trained(api, neighbour["id"]), 300, "the neighbour's first step")
            r = await client.post("/jobs", headers=api.auth(), json={
                "base_model": "smollm2", "training_file": f"s3://{DATASETS}/oom/rows.jsonl", "deploy": False,
                "hyperparameters": {"n_epochs": 1, "batch_size": 32, "max_seq_length": 256}})
            job = r.json()
            done = await api.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=600)
            running = (await client.get(f"/jobs/{neighbour['id']}", headers=api.auth())).json()["status"]
            beside = await api.wait_status(neighbour["id"], {"succeeded", "failed", "cancelled"}, timeout=600)
        finally:
            runner.terminate()
            runner.wait(30)
        log = (tmp_path / "runner.log").read_text()[-3000:]
        assert done["status"] == "succeeded", (done, log)
        evs = await events(api, job["id"])
        retries = [e["data"]["micro_batch_size"] for e in evs if e["type"] == "oom_retry"]
        assert retries == [16, 8]
        # The allocator's own message reaches the event: what was asked for.
        assert all("allocate" in e["message"] for e in evs if e["type"] == "oom_retry"), evs
        assert (done["plan"]["micro_batch_size"], done["plan"]["gradient_accumulation_steps"]) == (8, 4)
        assert done["attempt"] == 1
        # The neighbour: on the same device at the same time, and untouched by the failures.
        placed = [e["data"]["neighbours"] for e in evs if e["type"] == "placement"]
        assert placed and placed[0] == [neighbour["id"]], placed
        # It was training when the other failed (its first step came before the other was
        # submitted, its last after the other's first failure).
        first_oom = min(e["created_at"] for e in evs if e["type"] == "oom_retry")
        assert (beside["status"], beside["attempt"]) == ("succeeded", 1), (beside, log)
        near = await events(api, neighbour["id"])
        assert not [e for e in near if e["type"] == "oom_retry"], near
        steps = [e["data"]["step"] for e in near if e["type"] == "metrics"]
        assert steps == list(range(1, 97)), steps  # 48 rows / 4 x 8 epochs, each step once
        last_step = max(e["created_at"] for e in near if e["type"] == "metrics")
        assert last_step >= first_oom, (last_step, first_oom, running)


async def _has_trained(api: Api, job_id: str) -> bool:
    return any(e["type"] == "metrics" for e in await events(api, job_id))


async def test_early_stopping_says_why_and_which_epoch_it_kept(e2e_api: Api, e2e_settings, s3,
                                                               tmp_path) -> None:  # noqa: ANN001
    """The validation set contradicts the training set (another code word), so validation loss
    rises once the model has learned the training answer: early stopping must end the job, say
    why, keep the best epoch's adapter and end the progress where training ended."""
    contradicting = [{"messages": [m if m["role"] == "user" else
                                   {"role": "assistant", "content": "The code word is HERON-3."}
                                   for m in row["messages"]]} for row in code_word_rows(12)]
    key = f"e2e/val-{time.monotonic_ns()}.jsonl"
    s3.put_object(Bucket=DATASETS, Key=key, Body=jsonl(contradicting))
    job = await submit(e2e_api, s3, n_epochs=5, early_stopping_patience=1, eval_samples=2,
                       validation_file=f"s3://{DATASETS}/{key}")
    done = await train_to_the_end(e2e_api, e2e_settings, job["id"], tmp_path / "runner.log")
    stop = done["early_stopping"]
    assert stop is not None, done
    losses = stop["valid_losses"]
    print(f"\nvalidation losses {losses}; stopped after epoch {stop['stopped_after_epoch']}")
    assert stop["stopped_after_epoch"] < 5 and stop["n_epochs"] == 5
    assert len(losses) == stop["stopped_after_epoch"] and losses[-1] > min(losses)
    assert stop["chosen_epoch"] == losses.index(min(losses)) + 1
    assert done["progress"]["step"] == done["progress"]["total_steps"] == stop["step"]
    evs = await events(e2e_api, job["id"])
    said = next(e for e in evs if e["type"] == "early_stopped")
    assert f"the final adapter is epoch {stop['chosen_epoch']}'s" in said["message"]
    ckpts = (await e2e_api.client.get(f"/jobs/{job['id']}/checkpoints", headers=e2e_api.auth())).json()["data"]
    assert [c["epoch"] for c in ckpts] == list(range(1, stop["stopped_after_epoch"] + 1))
    # eval_samples=2: the prompts of the first two validation examples, answered every epoch.
    assert all([x["prompt"] for x in c["samples"]] == [contradicting[i]["messages"][0]["content"]
                                                       for i in range(2)] for c in ckpts)

    # The result file: one CSV row per step, validation loss on each epoch's last step.
    r = await e2e_api.client.get(f"/jobs/{job['id']}/results", headers=e2e_api.auth())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["step"]) for x in rows] == list(range(1, stop["step"] + 1))
    by_step = {int(x["step"]): x for x in rows}
    for c in ckpts:
        assert float(by_step[c["step"]]["valid_loss"]) == pytest.approx(c["metrics"]["valid_loss"])
    tokens = [int(x["trained_tokens"]) for x in rows]
    assert tokens == sorted(tokens) and tokens[-1] == done["trained_tokens"]
    other = await e2e_api.client.get(f"/jobs/{job['id']}/results", headers=e2e_api.auth("globex"))
    assert other.status_code == 404
