"""Reinforcement jobs at the front door: what each API takes, and the clear 4xx for what it
cannot train (a missing or judge grader, a method block that is not the type's, data that is not
prompts, rows without the fields the grader reads). Training itself: tests/e2e/test_reinforcement.py."""

from __future__ import annotations

import pytest

from tests.conftest import DATASETS, Api
from tests.support.data import chat_rows, jsonl

GRADER = {"type": "string_check", "name": "names the topic", "input": "{{sample.output_text}}",
          "reference": "{{item.topic}}", "operation": "ilike"}
PROMPTS = [{"messages": [{"role": "user", "content": f"Name a thing of kind {i}."}], "topic": f"kind {i}"}
           for i in range(12)]


def _put(s3, key: str, rows: list[dict]) -> str:  # noqa: ANN001
    s3.put_object(Bucket=DATASETS, Key=key, Body=jsonl(rows))
    return f"s3://{DATASETS}/{key}"


def _body(training_file: str, method: dict, **extra: object) -> dict:
    return {"base_model": "tiny", "training_file": training_file, "deploy": False, "method": method, **extra}


@pytest.mark.parametrize(("method", "param", "words"), [
    ({"type": "reinforcement"}, "method.reinforcement", "needs method.reinforcement.grader"),
    ({"type": "supervised", "reinforcement": {"grader": GRADER}}, "method.type", "method.type is 'supervised'"),
    ({"type": "reinforcement", "dpo": {}, "reinforcement": {"grader": GRADER}}, "method.type", "method.dpo"),
    ({"type": "reinforcement", "reinforcement": {"grader": {
        "type": "score_model", "name": "judge", "model": "no-such-judge", "input": [{"role": "user", "content": "x"}]}}},
     "method.reinforcement.grader.model", "'no-such-judge' is not a model this server serves to this key"),
    ({"type": "reinforcement", "reinforcement": {"grader": {
        "type": "python", "name": "p", "source": "def nope(a, b):\n    return 1"}}},
     "method.reinforcement.grader.source", "grade(sample, item)"),
    ({"type": "reinforcement", "reinforcement": {"grader": {**GRADER, "reference": "{{ topic }}"}}},
     "method.reinforcement.grader.reference", "not a variable"),
])
async def test_a_method_it_cannot_train_is_422_naming_the_field(api: Api, s3, method: dict, param: str,  # noqa: ANN001
                                                                words: str) -> None:
    r = await api.client.post("/jobs", headers=api.auth(), json=_body(_put(s3, "p.jsonl", PROMPTS), method))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert (await api.client.get("/jobs", headers=api.auth())).json()["data"] == []


async def test_micro_batches_count_completions(api: Api, s3) -> None:  # noqa: ANN001
    method = {"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {"group_size": 3}}}
    r = await api.client.post("/jobs", headers=api.auth(), json=_body(
        _put(s3, "p.jsonl", PROMPTS), method, hyperparameters={"batch_size": 4, "micro_batch_size": 8}))
    assert r.status_code == 422 and "12 completions per step" in r.json()["error"]["message"], r.text
    r = await api.client.post("/jobs", headers=api.auth(), json=_body(
        _put(s3, "p.jsonl", PROMPTS), method, hyperparameters={"batch_size": 4, "micro_batch_size": 6},
        dry_run=True))
    assert r.status_code == 200, r.text
    assert r.json()["dataset"]["n_train"] == 12


@pytest.mark.parametrize(("rows", "words"), [
    (chat_rows(12), "end with the user's turn"),
    ([{"prompt": "p", "completion": "c"}] * 12, "a reinforcement job trains on prompts"),
    ([{k: v for k, v in row.items() if k != "topic"} for row in PROMPTS], "reads item.topic, which this line lacks"),
    ([{**row, "tools": [{"type": "function", "function": {"name": "f"}}]} for row in PROMPTS], "'tools'"),
])
async def test_data_that_is_not_prompts_for_the_grader_is_refused_by_line(api: Api, s3, rows: list[dict],  # noqa: ANN001
                                                                          words: str) -> None:
    method = {"type": "reinforcement", "reinforcement": {"grader": GRADER}}
    r = await api.client.post("/jobs", headers=api.auth(), json=_body(_put(s3, "bad.jsonl", rows), method,
                                                                        dry_run=True))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_training_file" and "line 1: " in error["message"], error
    assert words in error["message"], error


async def test_v1_creates_a_reinforcement_job_as_openai_takes_it(api: Api, s3) -> None:  # noqa: ANN001
    upload = await api.client.post("/v1/files", headers=api.auth(), data={"purpose": "fine-tune"},
                                   files={"file": ("rft.jsonl", jsonl(PROMPTS), "application/jsonl")})
    assert upload.status_code == 200, upload.text
    body = {"model": "tiny", "training_file": upload.json()["id"], "deploy": False,
            "method": {"type": "reinforcement", "reinforcement": {
                "grader": GRADER, "hyperparameters": {
                    "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "compute_multiplier": 2,
                    "eval_samples": 4, "reasoning_effort": "low", "group_size": 3}}}}
    r = await api.client.post("/v1/fine_tuning/jobs", headers=api.auth(), json=body)
    assert r.status_code == 200, r.text
    job = r.json()
    method = job["method"]
    assert method["type"] == "reinforcement" and "supervised" not in method
    assert method["reinforcement"]["grader"] == GRADER
    hp = method["reinforcement"]["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["compute_multiplier"], hp["eval_samples"],
            hp["eval_interval"], hp["reasoning_effort"]) == (2, 4, 2.0, 4, "auto", "low")
    assert hp["learning_rate_multiplier"] == pytest.approx(0.5)
    native = job["tunedock"]["method"]["reinforcement"]["hyperparameters"]
    assert native["group_size"] == 3 and native["compute_multiplier"] == 2.0  # 6 completions per prompt
    r = await api.client.post("/v1/fine_tuning/jobs", headers=api.auth(), json={
        **body, "method": {"type": "reinforcement", "reinforcement": {"grader": GRADER,
                                                                       "hyperparameters": {"group_size": 1}}}})
    assert r.status_code in (400, 422) and "group_size" in r.text, r.text
