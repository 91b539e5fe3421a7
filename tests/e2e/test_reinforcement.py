"""Reinforcement fine-tuning on the CPU (issue 31, part 4): a GRPO job through POST /jobs, its
grader (a python grader, in its sandbox) the reward.

The task: name a thing in as few words as possible. The test model answers in sentences, so the
base rarely earns much (a reward of 1 - words/12, 0 for no answer); sampled answers vary in
length, so GRPO has a signal from the first step. The held-out prompts (the validation file) are
scored before training, after every epoch and every 4 steps between by the same grader: the mean
must rise by MARGIN.

And resume: a reinforcement job killed (SIGKILL) mid-epoch goes on from its last resume point
with the same rewards, step for step, as the same job run without interruption: the same prompts
in the same order, the same rollouts sampled (the RNG states come back with the checkpoint)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, DATASETS, Api
from tests.e2e.test_resume import tiny_api, tiny_settings  # noqa: F401 - fixtures
from tests.e2e.test_training_runner import events, kill_runner_after_step, train_to_the_end
from tests.support.data import jsonl

pytestmark = pytest.mark.slow
MARGIN = 0.3
SHORT = {"type": "python", "name": "short answer", "source": (
    "def grade(sample, item):\n"
    "    words = sample['output_text'].split()\n"
    "    return 0.0 if not words else max(0.0, 1.0 - len(words) / 12)\n")}
TOPICS = ["a color", "a fruit", "an animal", "a country", "a planet", "a metal", "a vegetable", "a sport",
          "a musical instrument", "a tree", "a flower", "a bird", "a fish", "a city", "a drink", "a tool",
          "a vehicle", "a gemstone", "a spice", "a month", "a river", "a mountain", "a dance", "a fabric",
          "a cheese", "a bread", "a game", "a language", "a shape", "an insect"]


def prompts(topics: list[str]) -> bytes:
    return jsonl([{"messages": [{"role": "user", "content": f"Name {t}."}], "topic": t} for t in topics])


def rewards(evs: list[dict]) -> list[tuple[int, int, float]]:
    """(attempt, step, mean reward) of every metrics event, in order."""
    return [(e["data"]["attempt"], e["data"]["step"], e["data"]["rewards"]["reward_mean"])
            for e in evs if e["type"] == "metrics"]


def put(s3, name: str, body: bytes) -> str:  # noqa: ANN001
    key = f"rft/{time.monotonic_ns()}-{name}"
    s3.put_object(Bucket=DATASETS, Key=key, Body=body)
    return f"s3://{DATASETS}/{key}"


async def test_reinforcement_raises_the_graded_reward_on_held_out_prompts(
        e2e_api: Api, e2e_settings, s3, tmp_path: Path) -> None:  # noqa: ANN001
    api = e2e_api
    r = await api.client.post("/jobs", headers=api.auth(), json={
        "base_model": "smollm2", "deploy": False,
        "training_file": put(s3, "train.jsonl", prompts(TOPICS[:20])),
        "validation_file": put(s3, "validation.jsonl", prompts(TOPICS[20:])),
        "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate": 5e-4, "max_seq_length": 128},
        "method": {"type": "reinforcement", "reinforcement": {
            "grader": SHORT, "hyperparameters": {"group_size": 4, "max_completion_tokens": 16,
                                                 "eval_interval": 4}}}})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    done = await train_to_the_end(api, e2e_settings, job_id, tmp_path / "runner.log")
    evs = await events(api, job_id)
    checkpoints = (await api.client.get(f"/jobs/{job_id}/checkpoints", headers=api.auth())).json()["data"]

    base = done["base_eval_score"]
    scores = [c["metrics"]["eval_score"] for c in checkpoints]
    print(f"\nheld-out mean reward: base {base:.3f}, by epoch {[round(s, 3) for s in scores]}")
    print("rewards by step:", [round(r, 3) for _, _, r in rewards(evs)])
    assert [c["epoch"] for c in checkpoints] == [1, 2, 3]
    assert base < 0.5, "the base already earns the reward: the test shows nothing"
    assert scores[-1] >= base + MARGIN, (base, scores, checkpoints[-1]["samples"])
    # Every step reports what a reinforcement user watches, and each epoch's checkpoint its means.
    steps = [e["data"] for e in evs if e["type"] == "metrics"]
    assert len(steps) == 15  # 20 prompts / 4 per step x 3 epochs
    for step in steps:
        assert {"reward_mean", "reward_std", "kl", "completion_length", "clip_ratio"} <= set(step["rewards"])
        assert step["supervised_tokens"] > 0  # the sampled tokens the policy loss is taken on
    assert all("reward_mean" in c["metrics"] for c in checkpoints)
    assert any(e["type"] == "metrics" and "mean reward" in e["message"] for e in evs)
    # The samples are the held-out prompts' answers, each scored by the grader.
    last = checkpoints[-1]["samples"]
    assert len(last) == 10 and all(s["error"] is None for s in last)
    for s in last:
        words = s["answer"].split()
        assert s["score"] == pytest.approx(0.0 if not words else max(0.0, 1 - len(words) / 12))
    # eval_interval 4: graded between epoch ends too (steps 5, 10 and 15 end epochs, scored with
    # their checkpoints), each score the mean of its answers' scores.
    between = [e["data"] for e in evs if e["type"] == "eval"]
    assert [e["step"] for e in between] == [4, 8, 12], between
    for e in between:
        assert len(e["samples"]) == 10 and e["score"] == pytest.approx(
            sum(s["score"] for s in e["samples"]) / 10)
    assert done["trained_tokens"] > 0
    s3.head_object(Bucket=ARTIFACTS, Key=f"jobs/{job_id}/adapter/adapter_model.safetensors")


async def test_a_killed_reinforcement_job_resumes_with_the_same_rewards(
        tiny_api: Api, tiny_settings, s3, tmp_path: Path) -> None:  # noqa: ANN001, F811
    api = tiny_api

    async def submit() -> str:
        r = await api.client.post("/jobs", headers=api.auth(), json={
            "base_model": "tiny", "deploy": False,
            "training_file": put(s3, "train.jsonl", prompts(TOPICS[:28] * 2)),
            "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "max_seq_length": 64,
                                "checkpoint_interval_steps": 3, "seed": 5},
            "method": {"type": "reinforcement", "reinforcement": {
                "grader": SHORT, "hyperparameters": {"group_size": 2, "max_completion_tokens": 12}}}})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    reference_id = await submit()
    await train_to_the_end(api, tiny_settings, reference_id, tmp_path / "reference.log")
    ev = await events(api, reference_id)
    reference = {step: (reward, loss) for (_, step, reward), loss in
                 zip(rewards(ev), [e["data"]["loss"] for e in ev if e["type"] == "metrics"], strict=True)}
    total = max(reference)
    assert total == 24  # (56 prompts - 8 split off to validate) / 4 per step x 2 epochs: 12 per epoch
    # Rollouts of a random model differ in length, so the rewards differ step to step: equal
    # rewards after the resume are the same rollouts, not a constant.
    assert len({round(r, 6) for r, _ in reference.values()}) > 3, reference

    job_id = await submit()
    # In the second epoch, after the resume point at step 12 (the first epoch's end): the resumed
    # attempt trains in epoch 2 only, whose prompt order must be the uninterrupted run's.
    kill_at = 14
    await kill_runner_after_step(api, tiny_settings, job_id, kill_at, tmp_path / "killed.log")
    done = await train_to_the_end(api, tiny_settings, job_id, tmp_path / "resumed.log")
    assert done["attempt"] == 2
    evs = await events(api, job_id)
    seen = rewards(evs)
    losses = [e["data"]["loss"] for e in evs if e["type"] == "metrics"]
    assert any(e["type"] == "resumed" for e in evs)
    assert {step for _, step, _ in seen} == set(reference)
    worst = max(abs(reward - reference[step][0]) for _, step, reward in seen)
    worst_loss = max(abs(loss - reference[step][1]) for (_, step, _), loss in zip(seen, losses, strict=True))
    print(f"\nrl resume: killed after step {max(s for a, s, _ in seen if a == 1)}, resumed from step "
          f"{min(s for a, s, _ in seen if a == 2) - 1}; largest reward difference {worst:.2e}, "
          f"loss {worst_loss:.2e}")
    assert worst <= 1e-6 and worst_loss <= 1e-5, (seen, reference)
