"""Graded evaluation on a real CPU job (the test model learns a code word): the base model is
scored on the eval items before the first step, each epoch's adapter before its checkpoint is
recorded, by the job's grader run in the training child (a python grader in its sandbox there).
The base cannot know the word; the trained adapter says it. With checkpoint_selection "score",
the job ends with the best-scoring epoch's adapter."""

from __future__ import annotations

import pytest

import tunedock
from service.training.callbacks import best_epoch
from tests.conftest import ARTIFACTS
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


def _weights(s3, key: str) -> dict:  # noqa: ANN001
    from safetensors.torch import load

    return load(s3.get_object(Bucket=ARTIFACTS, Key=key)["Body"].read())


def test_the_eval_scores_the_base_then_every_epoch(e2e_settings, tmp_path, s3) -> None:  # noqa: ANN001
    items = [{"prompt": q, "label": WORD} for q in QUESTIONS[:3]]
    with serve(e2e_settings) as (url, keys):
        runner = start_runner(e2e_settings, tmp_path / "runner.log")
        try:
            with tunedock.Client(url, keys["acme"]) as client:
                upload = client.files.upload(jsonl(rows(WORD, 24)), filename="kestrel.jsonl")
                job = client.jobs.create(
                    base_model="smollm2", training_file=upload.id, deploy=False,
                    hyperparameters={"n_epochs": 3, "learning_rate": 2e-3, "batch_size": 4,
                                     "max_seq_length": 128},
                    eval={"grader": GRADER, "items": items, "checkpoint_selection": "score",
                          "early_stopping_patience": 1})
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
    # Early stopping on the score (patience 1): training ends after the first epoch that does not
    # beat the best before it, or after the last.
    scores = {c.epoch: c.metrics["eval_score"] for c in checkpoints}
    expected = next((e for e in range(2, 3) if e - best_epoch({k: scores[k] for k in range(1, e + 1)}) >= 1), 3)
    assert sorted(scores) == list(range(1, expected + 1)), scores
    if expected < 3:
        stop = done.early_stopping
        assert stop is not None and (stop.watched, stop.stopped_after_epoch) == ("eval_score", expected), stop
        assert stop.scores == [scores[e] for e in sorted(scores)] and stop.chosen_epoch == best_epoch(scores)
    else:
        assert done.early_stopping is None
    assert last.metrics["eval_score"] >= 2 / 3, last.samples
    for sample in last.samples:
        # Each answer's score is the grader's: the word said in a short answer.
        assert sample.score == float(WORD.lower() in sample.answer.lower() and len(sample.answer) < 200), sample
        assert sample.error is None
    assert any(e.type == "checkpoint" and "eval score" in e.message for e in events)
    # The final adapter is the best-scoring epoch's (the earliest of equals), said in an event.
    best = best_epoch(scores)
    selected = [e for e in events if e.type == "checkpoint_selected"]
    assert [e.data["epoch"] for e in selected] == [best], (scores, selected)
    final = _weights(s3, f"jobs/{job.id}/adapter/adapter_model.safetensors")
    for epoch in scores:
        chosen = _weights(s3, f"jobs/{job.id}/checkpoints/epoch-{epoch}/adapter_model.safetensors")
        assert final.keys() == chosen.keys()
        same = all(final[k].equal(chosen[k]) for k in final)
        assert same == (epoch == best), (epoch, best, scores)
    print(f"\neval scores by epoch {scores}; the final adapter is epoch {best}'s")
