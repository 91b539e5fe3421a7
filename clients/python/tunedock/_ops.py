"""Every SDK call, written once, without I/O: each is a generator that yields what it needs done
(send a request, sleep, open an event stream, read its next line, hand the caller an item) and
gets the result sent back. `Client` drives them with httpx.Client and time.sleep, `AsyncClient`
with httpx.AsyncClient and asyncio.sleep (tunedock/_client.py); neither holds any logic of its own,
so the two cannot drift apart. Retries live here too, so every call, a streamed one included,
retries the same way."""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from tunedock import _base as b
from tunedock.errors import ExportFailed, JobFailed
from tunedock.types import Checkpoint, Event, Export, File, FilePreview, Job, JobEstimate, Model, RunGraderResponse

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Send:
    """One HTTP request; the driver sends back the httpx.Response (or throws TransportError)."""

    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Open:
    """Open a streamed GET (closing any stream open before); the driver sends back the response,
    its body read only when the status is an error. The driver closes the stream when the op
    ends."""

    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NextLine:
    """The next line of the open stream, or None at its end (TransportError if it breaks)."""


@dataclass(frozen=True)
class NextChunk:
    """The next piece of the open stream's body, or None at its end (TransportError if it breaks)."""


@dataclass(frozen=True)
class Emit:
    """An item for the caller of an iterating call."""

    item: Any


@dataclass(frozen=True)
class Progress:
    """Show a job on the progress bar (a driver without one ignores it)."""

    job: Job


Op = Generator[Any, Any, Any]


def request(config: b.Config, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> Op:
    """Send with retries: connection errors, 408/429/5xx, with backoff, for idempotent calls."""
    attempt = 0
    while True:
        response = None
        try:
            response = yield Send(method, path, kwargs)
        except httpx.TransportError as exc:
            if not (idempotent and b.should_retry(attempt, config.max_retries, None)):
                raise b.connection_error(exc) from exc
        else:
            if not (idempotent and response.status_code in b.RETRY_STATUS
                    and b.should_retry(attempt, config.max_retries, response)):
                b.raise_for(response)
                return response
        yield Sleep(b.backoff(attempt, response))
        attempt += 1


def pages(config: b.Config, path: str, item: type, params: dict[str, Any]) -> Op:
    after = None
    while True:
        query = {**params, **({"after": after} if after else {})}
        r = yield from request(config, "GET", path, idempotent=True, params=query)
        items, has_more, after = b.decode_page(r, item)
        for x in items:
            yield Emit(x)
        if not has_more:
            return


def collect(gen: Op) -> Op:
    """An iterating op as one call answering a list."""
    found = []
    try:
        instruction = next(gen)
        while True:
            if isinstance(instruction, Emit):
                found.append(instruction.item)
                instruction = next(gen)
                continue
            try:
                result = yield instruction
            except Exception as exc:  # thrown in by the driver (a TransportError): pass it down
                instruction = gen.throw(exc)
            else:
                instruction = gen.send(result)
    except StopIteration:
        return found


# -- files ----------------------------------------------------------------------------------
def files_upload(config: b.Config, source: str | Path | bytes, filename: str | None) -> Op:
    name, content = b.file_payload(source, filename)
    headers = {"Idempotency-Key": b.new_idempotency_key()}
    try:
        r = yield from request(config, "POST", "/files", idempotent=True, headers=headers,
                               files={"file": (name, content, "application/jsonl")})
    finally:
        if not isinstance(content, bytes):
            content.close()
    return b.decode(r, File)


def files_get(config: b.Config, file_id: str) -> Op:
    return b.decode((yield from request(config, "GET", f"/files/{file_id}", idempotent=True)), File)


def files_list(config: b.Config, limit: int) -> Op:
    yield from pages(config, "/files", File, {"limit": limit})


def files_preview(config: b.Config, file_id: str, base_model: str, n_rows: int, method: str,
                  train_on_inputs: bool, max_seq_length: int) -> Op:
    body = b.preview_body(n_rows, base_model, method, train_on_inputs, max_seq_length)
    r = yield from request(config, "POST", f"/files/{file_id}/preview", idempotent=True, json=body)
    return b.decode(r, FilePreview)


# -- jobs -----------------------------------------------------------------------------------
def _uploaded(config: b.Config, ref: str | Path | None) -> Op:
    """A local path uploaded first (its file- id), anything else as given."""
    if ref is not None and b.is_local_path(ref):
        return (yield from files_upload(config, ref, None)).id
    return None if ref is None else str(ref)


def jobs_create(config: b.Config, base_model: str, training_file: str | Path,
                validation_file: str | Path | None, suffix: str | None,
                hyperparameters: dict[str, Any] | None, metadata: dict[str, str] | None,
                deploy: bool, idempotency_key: str | None, method: dict[str, Any] | None,
                priority: int = 0, eval: dict[str, Any] | None = None, gpus: int | str = 1) -> Op:
    train = yield from _uploaded(config, training_file)
    validation = yield from _uploaded(config, validation_file)
    body = b.job_body(base_model, train, validation, suffix, hyperparameters, metadata, deploy, method,
                      priority, eval, gpus)
    headers = {"Idempotency-Key": idempotency_key or b.new_idempotency_key()}
    r = yield from request(config, "POST", "/jobs", idempotent=True, json=body, headers=headers)
    return b.decode(r, Job)


def jobs_estimate(config: b.Config, base_model: str, training_file: str | Path,
                  validation_file: str | Path | None, hyperparameters: dict[str, Any] | None,
                  deploy: bool, method: dict[str, Any] | None) -> Op:
    train = yield from _uploaded(config, training_file)
    validation = yield from _uploaded(config, validation_file)
    body = b.job_body(base_model, train, validation, None, hyperparameters, None, deploy,
                      method) | {"dry_run": True}
    r = yield from request(config, "POST", "/jobs", idempotent=True, json=body)
    return b.decode(r, JobEstimate)


def jobs_get(config: b.Config, job_id: str) -> Op:
    return b.decode((yield from request(config, "GET", f"/jobs/{job_id}", idempotent=True)), Job)


def jobs_list(config: b.Config, status: str | None, limit: int) -> Op:
    params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
    yield from pages(config, "/jobs", Job, params)


def jobs_cancel(config: b.Config, job_id: str) -> Op:
    r = yield from request(config, "POST", f"/jobs/{job_id}/cancel", idempotent=True)
    return b.decode(r, Job)


def jobs_checkpoints(config: b.Config, job_id: str) -> Op:
    return (yield from collect(pages(config, f"/jobs/{job_id}/checkpoints", Checkpoint, {})))


def jobs_results(config: b.Config, job_id: str) -> Op:
    return (yield from request(config, "GET", f"/jobs/{job_id}/results", idempotent=True)).text


def jobs_events(config: b.Config, job_id: str, stream: bool) -> Op:
    """Every event so far; with stream, then each new one until the job ends. A stream that
    fails to open or breaks is reopened after the last event seen, with the same backoff and
    retry budget as any call (the budget resets whenever an event arrives)."""
    if not stream:
        yield from pages(config, f"/jobs/{job_id}/events", Event, {"limit": 100})
        return
    last, attempt = None, 0
    while True:
        response = None
        try:
            response = yield Open(f"/jobs/{job_id}/events", {
                "params": {"after": last} if last else {}, "headers": {"Accept": "text/event-stream"}})
            if response.status_code < 400:
                while (line := (yield NextLine())) is not None:
                    if line.startswith("data: "):
                        event = msgspec.json.decode(line[6:], type=Event)
                        last, attempt = event.id, 0
                        yield Emit(event)
                return
        except httpx.TransportError as exc:
            if not b.should_retry(attempt, config.max_retries, None):
                raise b.connection_error(exc) from exc
        if response is not None and not (response.status_code in b.RETRY_STATUS
                                         and b.should_retry(attempt, config.max_retries, response)):
            b.raise_for(response)
        yield Sleep(b.backoff(attempt, response))
        attempt += 1


def jobs_wait(config: b.Config, job_id: str, timeout: float | None, poll_interval: float) -> Op:
    """Until the job ends: the job if it succeeded, else JobFailed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = yield from jobs_get(config, job_id)
        yield Progress(job)
        if job.status in TERMINAL:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
        yield Sleep(poll_interval)
    if job.status != "succeeded":
        raise JobFailed(job)
    return job


# -- models ---------------------------------------------------------------------------------
def models_list(config: b.Config) -> Op:
    return (yield from collect(pages(config, "/models", Model, {})))


# -- graders --------------------------------------------------------------------------------
def graders_validate(config: b.Config, grader: dict[str, Any]) -> Op:
    r = yield from request(config, "POST", "/graders/validate", idempotent=True, json={"grader": grader})
    return r.json()["grader"]


def graders_run(config: b.Config, grader: dict[str, Any], model_sample: str,
                item: dict[str, Any] | None) -> Op:
    body = {"grader": grader, "model_sample": model_sample, **({"item": item} if item is not None else {})}
    r = yield from request(config, "POST", "/graders/run", idempotent=True, json=body)
    return b.decode(r, RunGraderResponse)


# -- exports --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Downloaded:
    """Download progress, for a bar: bytes so far of `total`."""

    done: int
    total: int


def exports_create(config: b.Config, job_id: str, format: str, checkpoint: int | None) -> Op:
    body: dict[str, Any] = {"format": format, **({"checkpoint": checkpoint} if checkpoint else {})}
    # Idempotent by nature: the server answers an existing export of the same kind.
    r = yield from request(config, "POST", f"/jobs/{job_id}/exports", idempotent=True, json=body)
    return b.decode(r, Export)


def exports_get(config: b.Config, export_id: str) -> Op:
    return b.decode((yield from request(config, "GET", f"/exports/{export_id}", idempotent=True)), Export)


def exports_list(config: b.Config, job_id: str) -> Op:
    return (yield from collect(pages(config, f"/jobs/{job_id}/exports", Export, {})))


def exports_modelfile(config: b.Config, export_id: str) -> Op:
    return (yield from request(config, "GET", f"/exports/{export_id}/modelfile", idempotent=True)).text


def exports_wait(config: b.Config, export_id: str, timeout: float | None, poll_interval: float) -> Op:
    """Until the export ends: the export if it succeeded, else ExportFailed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        export = yield from exports_get(config, export_id)
        yield Progress(export)
        if export.status in ("succeeded", "failed"):
            break
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"export {export_id} is still {export.status} after {timeout} s")
        yield Sleep(poll_interval)
    if export.status != "succeeded":
        raise ExportFailed(export)
    return export


def exports_download(config: b.Config, export_id: str, dest: Path) -> Op:
    """A succeeded export's file to `dest`. It is written to `dest.part` first; a download that
    breaks resumes from there with a Range request (as does a later call), and the file is
    checked against the export's sha256 before it is renamed into place."""
    import hashlib

    export = yield from exports_get(config, export_id)
    if export.status != "succeeded" or export.bytes is None:
        raise ExportFailed(export, f"it is {export.status}; download it once it has succeeded")
    total, part = export.bytes, dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        if offset > total:
            part.unlink()
            offset = 0
        response = None
        try:
            headers = {"Range": f"bytes={offset}-"} if 0 < offset < total else {}
            if offset < total:
                response = yield Open(f"/exports/{export_id}/content", {"headers": headers})
                if response.status_code in (200, 206):
                    with part.open("ab" if response.status_code == 206 else "wb") as out:
                        done = offset if response.status_code == 206 else 0
                        while (chunk := (yield NextChunk())) is not None:
                            out.write(chunk)
                            done += len(chunk)
                            attempt = 0
                            yield Progress(Downloaded(done, total))
            if part.is_file() and part.stat().st_size == total:
                break
        except httpx.TransportError as exc:
            if not b.should_retry(attempt, config.max_retries, None):
                raise b.connection_error(exc) from exc
        if response is not None and response.status_code >= 400 and not (
                response.status_code in b.RETRY_STATUS
                and b.should_retry(attempt, config.max_retries, response)):
            b.raise_for(response)
        if attempt >= config.max_retries:
            raise b.connection_error(RuntimeError(f"the download stopped at {offset} of {total} bytes"))
        yield Sleep(b.backoff(attempt, response))
        attempt += 1
    digest = hashlib.sha256()
    with part.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != export.sha256:
        part.unlink()
        raise ExportFailed(export, f"the downloaded file's sha256 is {digest.hexdigest()}, not "
                                   f"{export.sha256}; it was removed, download it again")
    part.replace(dest)
    return dest

