"""The `tunedock` CLI through its console script, against the real service on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.data import chat_rows, jsonl
from tests.support.live import free_port, serve

TUNEDOCK = str(Path(sys.executable).with_name("tunedock"))


@pytest.fixture
def cli(make_settings) -> Iterator:  # noqa: ANN001
    with serve(make_settings()) as (url, keys):
        env = {**os.environ, "TUNEDOCK_BASE_URL": url, "TUNEDOCK_API_KEY": keys["acme"]}

        def run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
            return subprocess.run([TUNEDOCK, *args], env={**env, **(env_extra or {})},
                                  capture_output=True, text=True, timeout=60)

        yield run


def test_files_jobs_and_models_commands(cli, tmp_path) -> None:  # noqa: ANN001
    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl(chat_rows(12)))
    up = cli("--json", "files", "upload", str(data))
    assert up.returncode == 0, up.stderr
    file_id = json.loads(up.stdout)["id"]
    table = cli("files", "list")
    assert table.returncode == 0 and file_id in table.stdout and "FILENAME" in table.stdout
    dry = cli("jobs", "create", "--model", "tiny", "--train", file_id, "--epochs", "2", "--dry-run")
    assert dry.returncode == 0 and "12 training" in dry.stdout and "estimate: none yet" in dry.stdout, dry
    dpo = cli("jobs", "create", "--model", "tiny", "--train", file_id, "--method", "dpo", "--dry-run")
    assert dpo.returncode != 0 and "a dpo job trains on preference pairs" in dpo.stderr, dpo
    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps({"type": "string_check", "name": "g", "input": "{{sample.output_text}}",
                                  "reference": "yes", "operation": "ilike"}))
    rft = cli("jobs", "create", "--model", "tiny", "--train", file_id, "--method", "reinforcement",
              "--grader", str(grader), "--group-size", "3", "--dry-run")
    assert rft.returncode != 0 and "end with the user's turn" in rft.stderr, rft  # chat rows: not prompts
    no_grader = cli("jobs", "create", "--model", "tiny", "--train", file_id, "--method", "reinforcement")
    assert no_grader.returncode != 0 and "--grader FILE" in no_grader.stderr, no_grader
    created = cli("--json", "jobs", "create", "--model", "tiny", "--train", str(data), "--epochs", "2",
                  "--suffix", "cli")
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    assert job["hyperparameters"]["n_epochs"] == 2 and job["suffix"] == "cli"
    listed = cli("jobs", "list")
    assert listed.returncode == 0 and job["id"] in listed.stdout and "STATUS" in listed.stdout
    assert cli("jobs", "get", job["id"]).returncode == 0
    assert cli("jobs", "cancel", job["id"]).returncode == 0
    events = cli("jobs", "events", job["id"], "--follow")
    assert events.returncode == 1  # followed to the end: the job was cancelled
    assert "job cancelled" in events.stdout
    waited = cli("jobs", "wait", job["id"])
    assert waited.returncode == 1 and "cancelled" in waited.stderr
    models = cli("models")
    assert models.returncode == 0 and "tiny" in models.stdout


def test_exit_codes(cli) -> None:  # noqa: ANN001
    assert cli("jobs", "frobnicate").returncode == 2
    assert cli("jobs", "create").returncode == 2
    missing = cli("jobs", "get", "ftjob-nope")
    assert missing.returncode == 3 and "not_found" in missing.stderr
    bad = cli("jobs", "create", "--model", "nope", "--train", "s3://datasets/x.jsonl")
    assert bad.returncode == 3 and "model_not_found" in bad.stderr
    down = cli("jobs", "list", env_extra={"TUNEDOCK_BASE_URL": f"http://127.0.0.1:{free_port()}"})
    assert down.returncode == 3 and "could not reach" in down.stderr
    unserved = cli("chat", "ft:x", "hi")
    assert unserved.returncode == 3 and "model_not_found" in unserved.stderr, unserved.stderr


@pytest.mark.parametrize("command", [[], ["files"], ["files", "upload"], ["jobs"], ["jobs", "create"],
                                     ["jobs", "events"], ["models"], ["chat"]])
def test_every_command_has_help(command: list[str]) -> None:
    out = subprocess.run([TUNEDOCK, *command, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "usage: tunedock" in out.stdout


def test_files_preview_shows_errors_by_line_and_marks_trained_text(make_settings, smollm2_dir,  # noqa: ANN001
                                                                    tmp_path) -> None:  # noqa: ANN001
    import tunedock
    from service.settings import BaseModelEntry

    settings = make_settings(base_models=(BaseModelEntry(alias="smollm2", source=str(smollm2_dir)),))
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(jsonl(chat_rows(12)))
    bad.write_bytes(jsonl(chat_rows(12))[:-40] + b"\n{oops\n")
    with serve(settings) as (url, keys):
        env = {**os.environ, "TUNEDOCK_BASE_URL": url, "TUNEDOCK_API_KEY": keys["acme"]}
        ok = subprocess.run([TUNEDOCK, "files", "preview", str(good), "--model", "smollm2", "--rows", "2"],
                            env=env, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("valid: 12 examples (chat) for smollm2")
        assert ok.stdout.count("--- line ") == 2 and "[[" in ok.stdout and "<|im_end|>\n]]" in ok.stdout
        failed = subprocess.run([TUNEDOCK, "files", "preview", str(bad), "--model", "smollm2"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert failed.returncode == 2 and "invalid:" in failed.stdout
        assert "line 12:" in failed.stdout and "line 13:" in failed.stdout, failed.stdout
        # The SDK answers the same, typed.
        with tunedock.Client(url, keys["acme"]) as client:
            file_id = client.files.upload(good).id
            found = client.files.preview(file_id, base_model="smollm2", n_rows=1)
        assert found.valid and len(found.rows) == 1
        assert found.rows[0].marked().count("[[") == 1
