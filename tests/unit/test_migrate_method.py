"""`tunedock migrate` recreates a job with its method: a reinforcement job at OpenAI comes across
with its grader and hyperparameters in the shape tunedock's /v1 takes (what the openai SDK parses
from OpenAI's job object, fed back as the create body)."""

from __future__ import annotations

import msgspec
from openai.types.fine_tuning import FineTuningJob

from service import openai_types as o
from tunedock.migrate import method_of

GRADER = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
          "reference": "{{item.answer}}", "operation": "eq"}


def _job(method: dict) -> FineTuningJob:
    return FineTuningJob.model_validate({
        "id": "ftjob-1", "object": "fine_tuning.job", "created_at": 1, "error": None, "fine_tuned_model": "ft:x",
        "finished_at": 2, "hyperparameters": {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0},
        "model": "o4-mini", "organization_id": "org", "result_files": [], "seed": 1, "status": "succeeded",
        "trained_tokens": 10, "training_file": "file-a", "validation_file": None, "method": method})


def test_a_reinforcement_job_comes_across_with_its_grader() -> None:
    job = _job({"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "compute_multiplier": 2.0,
        "eval_interval": 5, "eval_samples": 3, "reasoning_effort": "medium"}}})
    method = method_of(job)
    assert method == {"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "compute_multiplier": 2.0,
        "eval_interval": 5, "eval_samples": 3, "reasoning_effort": "medium"}}}
    # tunedock's /v1 takes it as it is.
    create = msgspec.convert({"model": "smollm2", "training_file": "file-a", "method": method},
                             o.FineTuningJobCreate)
    native = create.to_native().method
    assert native.type == "reinforcement" and native.rollouts == 8  # group_size 4 x compute_multiplier 2


def test_supervised_and_dpo_keep_their_hyperparameters() -> None:
    assert method_of(_job({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}})) == {
        "type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "beta": 0.2}}}
    assert method_of(_job({"type": "supervised"}))["supervised"]["hyperparameters"]["n_epochs"] == 3
