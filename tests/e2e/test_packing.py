"""Packing on the test model through POST /jobs: padding-free and padded training of the same
examples reach the same validation loss, and the token counts are the real ones, not padding."""

from __future__ import annotations

import random
import time

import pytest

from service.datasets.formats import detect_format, parse_example
from service.datasets.render import IGNORE, Renderer, split_examples
from service.datasets.template import LocalTokens
from tests.conftest import DATASETS, Api
from tests.support.data import jsonl
from tests.support.processes import start_runner

pytestmark = pytest.mark.slow
FACTS = [("the capital of Freedonia", "Fredville"), ("the tallest tree in Arboria", "the Skypine"),
         ("the river through Lenth", "the Ousel"), ("the bird of Pelica Bay", "the grey pelican")]


def mixed_length_rows(n: int) -> list[dict]:
    """Questions with 0-60 words of preamble: lengths from ~20 to ~110 tokens."""
    rng = random.Random(7)
    words = "please kindly tell me because I was wondering and would like to know about".split()
    rows = []
    for i in range(n):
        thing, answer = FACTS[i % len(FACTS)]
        preamble = " ".join(rng.choice(words) for _ in range(int(rng.paretovariate(1.2) * 4) % 60))
        rows.append({"messages": [{"role": "user", "content": f"{preamble} What is {thing}?".strip()},
                                  {"role": "assistant", "content": f"It is {answer}."}]})
    return rows


async def test_padding_free_matches_padded_and_counts_real_tokens(e2e_api: Api, e2e_settings, s3,
                                                                  smollm2_dir, tmp_path) -> None:  # noqa: ANN001
    rows = mixed_length_rows(64)
    key = f"packing/{time.monotonic_ns()}.jsonl"
    s3.put_object(Bucket=DATASETS, Key=key, Body=jsonl(rows))
    hp = {"n_epochs": 1, "learning_rate": 1e-3, "batch_size": 4, "max_seq_length": 256}
    jobs = {}
    for mode in ("padding_free", "off"):
        r = await e2e_api.client.post("/jobs", json={
            "base_model": "smollm2", "training_file": f"s3://{DATASETS}/{key}", "deploy": False,
            "hyperparameters": {**hp, "packing": mode}}, headers=e2e_api.auth())
        assert r.status_code == 201, r.text
        jobs[mode] = r.json()["id"]
    runner = start_runner(e2e_settings, tmp_path / "runner.log")
    try:
        done = {mode: await e2e_api.wait_status(job_id, {"succeeded", "failed"}, timeout=600)
                for mode, job_id in jobs.items()}
    finally:
        runner.terminate()
        runner.wait(30)
    for job in done.values():
        assert job["status"] == "succeeded", (job, (tmp_path / "runner.log").read_text()[-3000:])

    # The same examples, the same order: validation losses within 2% of each other.
    valid = {}
    for mode, job_id in jobs.items():
        ckpts = (await e2e_api.client.get(f"/jobs/{job_id}/checkpoints", headers=e2e_api.auth())).json()
        valid[mode] = ckpts["data"][-1]["metrics"]["valid_loss"]
    print(f"\nvalidation loss: padding-free {valid['padding_free']:.4f}, padded {valid['off']:.4f}")
    assert abs(valid["padding_free"] - valid["off"]) <= 0.02 * valid["off"], valid

    # trained_tokens are the real tokens of the training rows (no padding), in both modes.
    tokens = LocalTokens(smollm2_dir)
    renderer = Renderer(tokens, train_on_inputs=False)
    summary = done["off"]["dataset"]
    assert summary["validation_source"] == "split"
    train_rows, _ = split_examples(rows, summary["n_validation"], seed=3407)
    encoded = [renderer.encode(parse_example(r, detect_format(r))) for r in train_rows]
    real = sum(len(ids) for ids, _ in encoded)
    supervised = sum(sum(1 for t in labels[1:] if t != IGNORE) for _, labels in encoded)
    padded = sum(max(len(ids) for ids, _ in encoded[i:i + 4]) * 4 for i in range(0, len(encoded), 4))
    print(f"real tokens {real}, supervised {supervised}; padded batches would count ~{padded}")
    for mode, job in done.items():
        assert job["trained_tokens"] == real, (mode, job["trained_tokens"], real)
        assert job["plan"]["packing"] == mode
        events = (await e2e_api.client.get(f"/jobs/{jobs[mode]}/events", params={"limit": 100},
                                           headers=e2e_api.auth())).json()["data"]
        final = next(e for e in events if e["type"] == "status" and e["data"].get("status") == "succeeded")
        assert final["data"]["supervised_tokens"] >= supervised  # + the first label of each row in "off"
        assert final["data"]["supervised_tokens"] <= supervised + len(train_rows)
    assert done["padding_free"]["plan"]["row_tokens"] < done["off"]["plan"]["row_tokens"] < 256
