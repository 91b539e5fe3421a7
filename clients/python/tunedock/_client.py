"""`Client` and `AsyncClient`: the same resources (files, jobs, models), sync and async."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from tunedock import _base as b
from tunedock.errors import JobFailed
from tunedock.types import Checkpoint, Event, File, FilePreview, Job, JobEstimate, Model

TERMINAL = ("succeeded", "failed", "cancelled")


class Client:
    """A synchronous client. `with Client() as c:` closes the connection pool."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 2,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.config = b.Config.resolve(base_url, api_key, timeout, max_retries)
        self._http = httpx.Client(base_url=self.config.base_url, headers=self.config.headers(),
                                  timeout=timeout, transport=transport)
        self.files = Files(self)
        self.jobs = Jobs(self)
        self.models = Models(self)

    def request(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response = None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if not (idempotent and b.should_retry(attempt, self.config.max_retries, None)):
                    raise b.connection_error(exc) from exc
            else:
                if not (idempotent and response.status_code in b.RETRY_STATUS
                        and b.should_retry(attempt, self.config.max_retries, response)):
                    b.raise_for(response)
                    return response
            time.sleep(b.backoff(attempt, response))
            attempt += 1

    def openai(self) -> Any:
        """An `openai.OpenAI` on this service's /v1 front door (files, fine-tuning, models, chat),
        with this client's key."""
        import openai

        return openai.OpenAI(base_url=b.v1_url(self.config), api_key=self.config.api_key or "none")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Files:
    def __init__(self, client: Client) -> None:
        self._c = client

    def upload(self, source: str | Path | bytes, *, filename: str | None = None) -> File:
        name, content = b.file_payload(source, filename)
        headers = {"Idempotency-Key": b.new_idempotency_key()}
        r = self._c.request("POST", "/files", idempotent=True, headers=headers,
                            files={"file": (name, content, "application/jsonl")})
        return b.decode(r, File)

    def get(self, file_id: str) -> File:
        return b.decode(self._c.request("GET", f"/files/{file_id}", idempotent=True), File)

    def list(self, *, limit: int = 100) -> Iterator[File]:
        yield from _pages(self._c, "/files", File, {"limit": limit})

    def preview(self, file_id: str, *, base_model: str, n_rows: int = 3, method: str = "supervised",
                train_on_inputs: bool = False, max_seq_length: int = 2048) -> FilePreview:
        """Check the whole file for `base_model` (bad lines by number) and render its first rows
        with the model's chat template, trained text marked; nothing is created."""
        body = b.preview_body(n_rows, base_model, method, train_on_inputs, max_seq_length)
        r = self._c.request("POST", f"/files/{file_id}/preview", idempotent=True, json=body)
        return b.decode(r, FilePreview)


class Jobs:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, *, base_model: str, training_file: str | Path, validation_file: str | Path | None = None,
               suffix: str | None = None, hyperparameters: dict[str, Any] | None = None,
               metadata: dict[str, str] | None = None, deploy: bool = True,
               idempotency_key: str | None = None, method: dict[str, Any] | None = None) -> Job:
        """Create a job; a local training/validation path is uploaded first. Always sends an
        Idempotency-Key, so a retried create never makes two jobs."""
        if b.is_local_path(training_file):
            training_file = self._c.files.upload(training_file).id
        if validation_file is not None and b.is_local_path(validation_file):
            validation_file = self._c.files.upload(validation_file).id
        body = b.job_body(base_model, str(training_file), validation_file and str(validation_file),
                          suffix, hyperparameters, metadata, deploy, method)
        headers = {"Idempotency-Key": idempotency_key or b.new_idempotency_key()}
        return b.decode(self._c.request("POST", "/jobs", idempotent=True, json=body, headers=headers), Job)

    def estimate(self, *, base_model: str, training_file: str | Path,
                 validation_file: str | Path | None = None, hyperparameters: dict[str, Any] | None = None,
                 deploy: bool = True, method: dict[str, Any] | None = None) -> JobEstimate:
        """A dry run: the data checked, the memory plan and the estimated duration; no job made."""
        if b.is_local_path(training_file):
            training_file = self._c.files.upload(training_file).id
        if validation_file is not None and b.is_local_path(validation_file):
            validation_file = self._c.files.upload(validation_file).id
        body = b.job_body(base_model, str(training_file), validation_file and str(validation_file),
                          None, hyperparameters, None, deploy, method) | {"dry_run": True}
        return b.decode(self._c.request("POST", "/jobs", idempotent=True, json=body), JobEstimate)

    def get(self, job_id: str) -> Job:
        return b.decode(self._c.request("GET", f"/jobs/{job_id}", idempotent=True), Job)

    def list(self, *, status: str | None = None, limit: int = 100) -> Iterator[Job]:
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        yield from _pages(self._c, "/jobs", Job, params)

    def cancel(self, job_id: str) -> Job:
        return b.decode(self._c.request("POST", f"/jobs/{job_id}/cancel", idempotent=True), Job)

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        return list(_pages(self._c, f"/jobs/{job_id}/checkpoints", Checkpoint, {}))

    def results(self, job_id: str) -> str:
        """The per-step metrics CSV (step, epoch, train_loss, valid_loss, learning_rate, ...)."""
        return self._c.request("GET", f"/jobs/{job_id}/results", idempotent=True).text

    def events(self, job_id: str, *, stream: bool = False) -> Iterator[Event]:
        """Every event so far; with stream=True, then new ones as they happen until the job ends."""
        if not stream:
            yield from _pages(self._c, f"/jobs/{job_id}/events", Event, {"limit": 100})
            return
        with self._c._http.stream("GET", f"/jobs/{job_id}/events", timeout=None,
                                  headers={"Accept": "text/event-stream"}) as r:
            if r.status_code >= 400:
                r.read()
                b.raise_for(r)
            for line in r.iter_lines():
                if line.startswith("data: "):
                    yield msgspec.json.decode(line[6:], type=Event)

    def wait(self, job_id: str, *, progress: bool = True, timeout: float | None = None,
             poll_interval: float = 2.0) -> Job:
        """Block until the job ends; return it if it succeeded, else raise JobFailed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with _Bar(progress) as bar:
            while True:
                job = self.get(job_id)
                bar.show(job)
                if job.status in TERMINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
                time.sleep(poll_interval)
        if job.status != "succeeded":
            raise JobFailed(job)
        return job


class Models:
    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self) -> list[Model]:
        return list(_pages(self._c, "/models", Model, {}))


def _pages(c: Client, path: str, item: type, params: dict[str, Any]) -> Iterator[Any]:
    after = None
    while True:
        query = {**params, **({"after": after} if after else {})}
        items, has_more, after = b.decode_page(c.request("GET", path, idempotent=True, params=query), item)
        yield from items
        if not has_more:
            return


class _Bar:
    """A tqdm bar over training steps, described by status, epoch, loss; ETA from tqdm."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=None, unit="step", dynamic_ncols=True)

    def show(self, job: Job) -> None:
        if self.bar is None:
            return
        p = job.progress
        if p is not None and p.total_steps:
            self.bar.total = p.total_steps
            self.bar.n = p.step
        self.bar.set_description_str(b.progress_text(job), refresh=False)
        self.bar.refresh()

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


class AsyncClient:
    """The asynchronous twin of Client: the same resources, every call awaited."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 2,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = b.Config.resolve(base_url, api_key, timeout, max_retries)
        self._http = httpx.AsyncClient(base_url=self.config.base_url, headers=self.config.headers(),
                                       timeout=timeout, transport=transport)
        self.files = AsyncFiles(self)
        self.jobs = AsyncJobs(self)
        self.models = AsyncModels(self)

    async def request(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response = None
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if not (idempotent and b.should_retry(attempt, self.config.max_retries, None)):
                    raise b.connection_error(exc) from exc
            else:
                if not (idempotent and response.status_code in b.RETRY_STATUS
                        and b.should_retry(attempt, self.config.max_retries, response)):
                    b.raise_for(response)
                    return response
            await asyncio.sleep(b.backoff(attempt, response))
            attempt += 1

    async def openai(self) -> Any:
        """An `openai.AsyncOpenAI` on this service's /v1 front door, with this client's key."""
        import openai

        return openai.AsyncOpenAI(base_url=b.v1_url(self.config), api_key=self.config.api_key or "none")

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncFiles:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def upload(self, source: str | Path | bytes, *, filename: str | None = None) -> File:
        name, content = await asyncio.to_thread(b.file_payload, source, filename)
        headers = {"Idempotency-Key": b.new_idempotency_key()}
        r = await self._c.request("POST", "/files", idempotent=True, headers=headers,
                                  files={"file": (name, content, "application/jsonl")})
        return b.decode(r, File)

    async def get(self, file_id: str) -> File:
        return b.decode(await self._c.request("GET", f"/files/{file_id}", idempotent=True), File)

    def list(self, *, limit: int = 100) -> AsyncIterator[File]:
        return _apages(self._c, "/files", File, {"limit": limit})

    async def preview(self, file_id: str, *, base_model: str, n_rows: int = 3,
                      method: str = "supervised", train_on_inputs: bool = False,
                      max_seq_length: int = 2048) -> FilePreview:
        """Check the whole file for `base_model` and render its first rows (see Files.preview)."""
        body = b.preview_body(n_rows, base_model, method, train_on_inputs, max_seq_length)
        r = await self._c.request("POST", f"/files/{file_id}/preview", idempotent=True, json=body)
        return b.decode(r, FilePreview)


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, *, base_model: str, training_file: str | Path,
                     validation_file: str | Path | None = None, suffix: str | None = None,
                     hyperparameters: dict[str, Any] | None = None,
                     metadata: dict[str, str] | None = None, deploy: bool = True,
                     idempotency_key: str | None = None, method: dict[str, Any] | None = None) -> Job:
        if b.is_local_path(training_file):
            training_file = (await self._c.files.upload(training_file)).id
        if validation_file is not None and b.is_local_path(validation_file):
            validation_file = (await self._c.files.upload(validation_file)).id
        body = b.job_body(base_model, str(training_file), validation_file and str(validation_file),
                          suffix, hyperparameters, metadata, deploy, method)
        headers = {"Idempotency-Key": idempotency_key or b.new_idempotency_key()}
        r = await self._c.request("POST", "/jobs", idempotent=True, json=body, headers=headers)
        return b.decode(r, Job)

    async def estimate(self, *, base_model: str, training_file: str | Path,
                       validation_file: str | Path | None = None,
                       hyperparameters: dict[str, Any] | None = None, deploy: bool = True,
                       method: dict[str, Any] | None = None) -> JobEstimate:
        """A dry run: the data checked, the memory plan and the estimated duration; no job made."""
        if b.is_local_path(training_file):
            training_file = (await self._c.files.upload(training_file)).id
        if validation_file is not None and b.is_local_path(validation_file):
            validation_file = (await self._c.files.upload(validation_file)).id
        body = b.job_body(base_model, str(training_file), validation_file and str(validation_file),
                          None, hyperparameters, None, deploy, method) | {"dry_run": True}
        r = await self._c.request("POST", "/jobs", idempotent=True, json=body)
        return b.decode(r, JobEstimate)

    async def get(self, job_id: str) -> Job:
        return b.decode(await self._c.request("GET", f"/jobs/{job_id}", idempotent=True), Job)

    def list(self, *, status: str | None = None, limit: int = 100) -> AsyncIterator[Job]:
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        return _apages(self._c, "/jobs", Job, params)

    async def cancel(self, job_id: str) -> Job:
        return b.decode(await self._c.request("POST", f"/jobs/{job_id}/cancel", idempotent=True), Job)

    async def checkpoints(self, job_id: str) -> list[Checkpoint]:
        return [c async for c in _apages(self._c, f"/jobs/{job_id}/checkpoints", Checkpoint, {})]

    async def results(self, job_id: str) -> str:
        """The per-step metrics CSV (step, epoch, train_loss, valid_loss, learning_rate, ...)."""
        return (await self._c.request("GET", f"/jobs/{job_id}/results", idempotent=True)).text

    async def events(self, job_id: str, *, stream: bool = False) -> AsyncIterator[Event]:
        if not stream:
            async for event in _apages(self._c, f"/jobs/{job_id}/events", Event, {"limit": 100}):
                yield event
            return
        async with self._c._http.stream("GET", f"/jobs/{job_id}/events", timeout=None,
                                        headers={"Accept": "text/event-stream"}) as r:
            if r.status_code >= 400:
                await r.aread()
                b.raise_for(r)
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    yield msgspec.json.decode(line[6:], type=Event)

    async def wait(self, job_id: str, *, progress: bool = True, timeout: float | None = None,
                   poll_interval: float = 2.0) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        with _Bar(progress) as bar:
            while True:
                job = await self.get(job_id)
                bar.show(job)
                if job.status in TERMINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
                await asyncio.sleep(poll_interval)
        if job.status != "succeeded":
            raise JobFailed(job)
        return job


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(self) -> list[Model]:
        return [m async for m in _apages(self._c, "/models", Model, {})]


async def _apages(c: AsyncClient, path: str, item: type, params: dict[str, Any]) -> AsyncIterator[Any]:
    after = None
    while True:
        query = {**params, **({"after": after} if after else {})}
        r = await c.request("GET", path, idempotent=True, params=query)
        items, has_more, after = b.decode_page(r, item)
        for x in items:
            yield x
        if not has_more:
            return
