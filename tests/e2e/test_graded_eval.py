"""Graded evaluation on a real CPU job (the test model learns a code word): the base model is
scored on the eval items before the first step, each epoch's adapter before its checkpoint is
recorded, by the job's grader run in the training child (a python grader in its sandbox there).
The base cannot know the word; the trained adapter says it."""

from __future__ import annotations

import pytest

import tunedock
from tests.support.data import QUESTIONS, jsonl
from tests.support.live import serve
from tests.support.processes import start_runner
from tests.support.stack import rows

pytestmark = pytest.mark.slow
WORD = "KESTREL-5"
GRADER = {"type": "multi", "name": "says the word", "calculate_output": "word * short",
          "graders": {
              "word": {"type": "string_check", "name": "word", "input": "{{sample.output_text}}",
                       "reference": "{{item.label}}", "operation": "ilike"},
              "short": {"type": "python", "name": "short",
                        "source": "def grade(sample, item):\n    return 1.0 if len(sample['output_text']) < 200 else 0.0"}}}


def test_the_eval_scores_the_base_then_every_epoch(e2e_settings, tmp_path) -> None:  # noqa: ANN001
    items = [{"prompt": q, "label": WORD} for q in QUESTIONS[:3]]
    with serve(e2e_settings) as (url, keys):
        runner = start_runner(e2e_settings, tmp_path / "runner.log")
        try:
            with tunedock.Client(url, keys["acme"]) as client:
                upload = client.files.upload(jsonl(rows(WORD, 24)), filename="kestrel.jsonl")
                job = client.jobs.create(
                    base_model="smollm2", training_file=upload.id, deploy=False,
                    hyperparameters={"n_epochs": 2, "learning_rate": 2e-3, "batch_size": 4,
                                     "max_seq_length": 128},
                    eval={"grader": GRADER, "items": items})
                done = client.jobs.wait(job.id, progress=False, timeout=900, poll_interval=0.5)
                checkpoints = client.jobs.checkpoints(job.id)
                events = list(client.jobs.events(job.id))
        finally:
            runner.terminate()
            runner.wait(30)
    assert done.status == "succeeded", done.error
    assert done.eval is not None and done.base_eval_score == 0.0
    base = next(e for e in events if e.type == "base_eval")
    assert all(WORD.lower() not in s["answer"].lower() and s["score"] == 0 for s in base.data["samples"])
    last = checkpoints[-1]
    assert [c.epoch for c in checkpoints] == [1, 2]
    assert last.metrics["eval_score"] >= 2 / 3, last.samples
    for sample in last.samples:
        # Each answer's score is the grader's: the word said in a short answer.
        assert sample.score == float(WORD.lower() in sample.answer.lower() and len(sample.answer) < 200), sample
        assert sample.error is None
    assert any(e.type == "checkpoint" and "eval score" in e.message for e in events)
