"""The SDK user story on a real CPU job: create from a local file, wait with the progress bar."""

from __future__ import annotations

import pytest

import tunedock
from tests.e2e.test_training_runner import code_word_rows
from tests.support.data import jsonl
from tests.support.live import serve
from tests.support.processes import start_runner

pytestmark = pytest.mark.slow


def test_wait_shows_progress_and_returns_the_finished_job(e2e_settings, tmp_path, capfd) -> None:  # noqa: ANN001
    data = tmp_path / "codeword.jsonl"
    data.write_bytes(jsonl(code_word_rows(24)))
    with serve(e2e_settings) as (url, keys):
        runner = start_runner(e2e_settings, tmp_path / "runner.log")
        try:
            with tunedock.Client(url, keys["acme"]) as client:
                job = client.jobs.create(base_model="smollm2", training_file=data, deploy=False,
                                         hyperparameters={"n_epochs": 1, "batch_size": 4,
                                                          "max_seq_length": 96})
                done = client.jobs.wait(job.id, progress=True, timeout=600, poll_interval=0.5)
                checkpoints = client.jobs.checkpoints(job.id)
        finally:
            runner.terminate()
            runner.wait(30)
    assert done.status == "succeeded" and done.fine_tuned_model.endswith(job.id)
    assert [c.epoch for c in checkpoints] == [1]
    err = capfd.readouterr().err
    assert "running" in err and "step" in err and "loss" in err
