"""Preference tuning (DPO) end to end on the CPU, created through the official `openai` client:
the chosen-minus-rejected margin on held-out pairs rises from the first epoch to the last, each
epoch reports its rewards and reward accuracy, a pause and resume after the first epoch trains on
from the saved adapter, and the adapter's greedy answers take the preferred style."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.e2e.test_training_runner import _answers
from tests.support.data import jsonl
from tests.support.live import serve
from tests.support.processes import start_runner

pytestmark = pytest.mark.slow
STYLE = "Aye aye, captain!"
MARK = "Aye aye"  # the style's mark: greedy answers take it (their next words may differ)


def pairs(indices: range) -> list[dict]:
    """OpenAI's DPO format: the preferred answer says the same in the captain's style."""
    out = []
    for i in indices:
        a, b = 3 + i, 11 + 2 * i
        plain = f"{a} plus {b} is {a + b}."
        out.append({"input": {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"}]},
                    "preferred_output": [{"role": "assistant", "content": f"{STYLE} {plain}"}],
                    "non_preferred_output": [{"role": "assistant", "content": plain}]})
    return out


def test_dpo_raises_the_held_out_margin_and_answers_in_the_preferred_style(
        e2e_settings, smollm2_dir, tmp_path) -> None:  # noqa: ANN001
    held_out = pairs(range(40, 50))
    prompts = [p["input"]["messages"][0]["content"] for p in held_out[:3]]
    with serve(e2e_settings) as (url, keys):
        oai = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["acme"], max_retries=0)
        train = oai.files.create(file=("prefs.jsonl", jsonl(pairs(range(32)))), purpose="fine-tune")
        held = oai.files.create(file=("held.jsonl", jsonl(held_out)), purpose="fine-tune")
        job = oai.fine_tuning.jobs.create(
            model="smollm2", training_file=train.id, validation_file=held.id, seed=7,
            method={"type": "dpo", "dpo": {"hyperparameters": {
                "beta": 0.1, "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 2}}},
            extra_body={"deploy": False, "max_seq_length": 96, "eval_prompts": prompts})
        assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
        auth = {"Authorization": f"Bearer {keys['acme']}"}
        runner = start_runner(e2e_settings, tmp_path / "runner.log")
        try:
            deadline = time.monotonic() + 600
            # Paused once its first epoch is saved, and resumed: a fresh child picks it up from
            # the pause's resume point (a DPO checkpoint holds two adapters; README, Preference tuning).
            while not httpx.get(f"{url}/jobs/{job.id}/checkpoints", headers=auth).json()["data"]:
                assert time.monotonic() < deadline, "the DPO job saved no first epoch"
                time.sleep(0.5)
            oai.fine_tuning.jobs.pause(job.id)
            while oai.fine_tuning.jobs.retrieve(job.id).status != "paused":
                assert time.monotonic() < deadline, "the DPO job did not pause"
                time.sleep(0.2)
            oai.fine_tuning.jobs.resume(job.id)
            while (job := oai.fine_tuning.jobs.retrieve(job.id)).status not in {"succeeded", "failed", "cancelled"}:
                assert time.monotonic() < deadline, "the DPO job did not finish"
                time.sleep(1)
        finally:
            runner.terminate()
            runner.wait(30)
        assert job.status == "succeeded", (job.error, (tmp_path / "runner.log").read_text()[-3000:])
        native = httpx.get(f"{url}/jobs/{job.id}", headers=auth).json()
        ckpts = httpx.get(f"{url}/jobs/{job.id}/checkpoints", headers=auth).json()["data"]
        events = httpx.get(f"{url}/jobs/{job.id}/events", params={"limit": 100}, headers=auth).json()["data"]

    assert native["dataset"]["format"] == "preference" and native["plan"]["breakdown"]["logits"] > 0
    metrics = [c["metrics"] for c in ckpts]
    print("\nDPO by epoch (train rewards chosen / rejected, reward accuracy; held-out margin, accuracy):")
    for c in ckpts:
        m = c["metrics"]
        print(f"  epoch {c['epoch']}: {m['rewards_chosen']:+.3f} / {m['rewards_rejected']:+.3f}, "
              f"{m['reward_accuracy']:.0%}; held-out {m['valid_reward_margin']:+.3f}, "
              f"{m['valid_reward_accuracy']:.0%}; answers {[s['answer'][:40] for s in c['samples']]}")
    # The held-out margin (beta x the rise of log p(chosen) - log p(rejected) over the base's)
    # is positive after the first epoch and higher after the last, and the preferred answers win
    # on held-out pairs. Not every epoch: on a fresh 2-core machine epoch 2 once dipped
    # (2.67, 2.35, 3.24) while every other check held.
    # The resumed child trains on from the saved adapter: its first step is no fresh start
    # (policy equal to the reference gives loss ln 2 = 0.693 and zero margin; transformers loaded
    # only the reference adapter before restore_trained_adapter).
    resumed_at = next(e["data"]["step"] for e in events if e["type"] == "train_begin" and e["data"]["step"])
    first = next(e["data"] for e in reversed(events) if e["type"] == "metrics"
                 and e["data"]["step"] == resumed_at + 1)
    assert first["loss"] < 0.5 and first["rewards"]["reward_margin"] > 1, first
    margins = [m["valid_reward_margin"] for m in metrics]
    assert 0 < margins[0] < margins[-1], margins
    assert metrics[-1]["valid_reward_accuracy"] >= 0.875, metrics[-1]
    assert metrics[-1]["rewards_chosen"] > metrics[-1]["rewards_rejected"]
    assert any(e["type"] == "metrics" and e["data"].get("rewards") for e in events)
    assert any("reward accuracy" in e["message"] for e in events if e["type"] == "checkpoint")

    # Greedy answers: the last epoch's adapter speaks in the preferred style; the base does not.
    tuned = [s["answer"] for s in ckpts[-1]["samples"]]
    assert all(a.startswith(MARK) for a in tuned), tuned
    base, _ = _answers(smollm2_dir, None, prompts[0])
    print(f"base model: {base!r}")
    assert "aye" not in base.lower(), base
