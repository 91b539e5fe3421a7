"""`Client` and `AsyncClient`: the same resources (files, jobs, models), sync and async.

Both are thin shells over one source: every call is an I/O-free generator in tunedock/_ops.py,
driven by `_Sync` (httpx.Client, time.sleep) or `_Async` (httpx.AsyncClient, asyncio.sleep) of
tunedock/_drivers.py.
The resource classes only pass their arguments on; tests/clients/test_sdk.py checks that the two
surfaces match."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx

from tunedock import _base as b
from tunedock import _ops as ops
from tunedock._drivers import _Async, _Bar, _Sync
from tunedock.types import Checkpoint, Event, Export, File, FilePreview, Job, JobEstimate, Model, RunGraderResponse


class Client:
    """A synchronous client. `with Client() as c:` closes the connection pool."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 2,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.config = b.Config.resolve(base_url, api_key, timeout, max_retries)
        self._http = httpx.Client(base_url=self.config.base_url, headers=self.config.headers(),
                                  timeout=timeout, transport=transport)
        self._driver = _Sync(self._http)
        self.files = Files(self)
        self.jobs = Jobs(self)
        self.models = Models(self)
        self.exports = Exports(self)
        self.graders = Graders(self)

    def request(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> httpx.Response:
        """Any API call, with the SDK's retries (idempotent ones) and typed errors."""
        return self._driver.run(ops.request(self.config, method, path, idempotent=idempotent, **kwargs))

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
        self._c, self._run = client.config, client._driver.run
        self._iter = client._driver.iterate

    def upload(self, source: str | Path | bytes, *, filename: str | None = None) -> File:
        return self._run(ops.files_upload(self._c, source, filename))

    def get(self, file_id: str) -> File:
        return self._run(ops.files_get(self._c, file_id))

    def list(self, *, limit: int = 100) -> Iterator[File]:
        return self._iter(ops.files_list(self._c, limit))

    def preview(self, file_id: str, *, base_model: str, n_rows: int = 3, method: str = "supervised",
                train_on_inputs: bool = False, max_seq_length: int = 2048) -> FilePreview:
        """Check the whole file for `base_model` (bad lines by number) and render its first rows
        with the model's chat template, trained text marked; nothing is created."""
        return self._run(ops.files_preview(self._c, file_id, base_model, n_rows, method,
                                           train_on_inputs, max_seq_length))


class Jobs:
    def __init__(self, client: Client) -> None:
        self._c, self._run = client.config, client._driver.run
        self._iter = client._driver.iterate

    def create(self, *, base_model: str, training_file: str | Path, validation_file: str | Path | None = None,
               suffix: str | None = None, hyperparameters: dict[str, Any] | None = None,
               metadata: dict[str, str] | None = None, deploy: bool = True,
               idempotency_key: str | None = None, method: dict[str, Any] | None = None,
               priority: int = 0, eval: dict[str, Any] | None = None, gpus: int | str = 1) -> Job:
        """Create a job; a local training/validation path is uploaded first. Always sends an
        Idempotency-Key, so a retried create never makes two jobs. `priority` orders this
        tenant's own queued jobs (higher first). `eval`: {grader, items}, graded before training
        and every epoch (checkpoint metrics' `eval_score`). `gpus`: devices to train on, one
        data-parallel rank each (a count dividing batch_size, or "auto")."""
        return self._run(ops.jobs_create(self._c, base_model, training_file, validation_file, suffix,
                                         hyperparameters, metadata, deploy, idempotency_key, method,
                                         priority, eval, gpus))

    def estimate(self, *, base_model: str, training_file: str | Path,
                 validation_file: str | Path | None = None, hyperparameters: dict[str, Any] | None = None,
                 deploy: bool = True, method: dict[str, Any] | None = None) -> JobEstimate:
        """A dry run: the data checked, the memory plan and the estimated duration; no job made."""
        return self._run(ops.jobs_estimate(self._c, base_model, training_file, validation_file,
                                           hyperparameters, deploy, method))

    def get(self, job_id: str) -> Job:
        return self._run(ops.jobs_get(self._c, job_id))

    def list(self, *, status: str | None = None, limit: int = 100) -> Iterator[Job]:
        return self._iter(ops.jobs_list(self._c, status, limit))

    def cancel(self, job_id: str) -> Job:
        return self._run(ops.jobs_cancel(self._c, job_id))

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        return self._run(ops.jobs_checkpoints(self._c, job_id))

    def results(self, job_id: str) -> str:
        """The per-step metrics CSV (step, epoch, train_loss, valid_loss, learning_rate, ...)."""
        return self._run(ops.jobs_results(self._c, job_id))

    def events(self, job_id: str, *, stream: bool = False) -> Iterator[Event]:
        """Every event so far; with stream=True, then new ones as they happen until the job ends
        (a broken stream is reopened after the last event, with the usual retries)."""
        return self._iter(ops.jobs_events(self._c, job_id, stream))

    def wait(self, job_id: str, *, progress: bool = True, timeout: float | None = None,
             poll_interval: float = 2.0) -> Job:
        """Block until the job ends; return it if it succeeded, else raise JobFailed."""
        bar = _Bar(progress)
        try:
            return self._run(ops.jobs_wait(self._c, job_id, timeout, poll_interval), bar)
        finally:
            bar.close()


class Models:
    def __init__(self, client: Client) -> None:
        self._c, self._run = client.config, client._driver.run

    def list(self) -> list[Model]:
        return self._run(ops.models_list(self._c))


class Exports:
    def __init__(self, client: Client) -> None:
        self._c, self._run = client.config, client._driver.run

    def create(self, job_id: str, *, format: str, checkpoint: int | None = None) -> Export:
        """Queue an export (merged_16bit, gguf_f16, gguf_q8_0, gguf_q4_k_m) of a succeeded job's
        adapter, or of epoch `checkpoint`'s; an existing one of the same kind is returned."""
        return self._run(ops.exports_create(self._c, job_id, format, checkpoint))

    def get(self, export_id: str) -> Export:
        return self._run(ops.exports_get(self._c, export_id))

    def list(self, job_id: str) -> list[Export]:
        return self._run(ops.exports_list(self._c, job_id))

    def wait(self, export_id: str, *, progress: bool = True, timeout: float | None = None,
             poll_interval: float = 1.0) -> Export:
        bar = _Bar(progress)
        try:
            return self._run(ops.exports_wait(self._c, export_id, timeout, poll_interval), bar)
        finally:
            bar.close()

    def download(self, export_id: str, path: str | Path, *, progress: bool = True) -> Path:
        """The file to `path`, resuming a broken download, checked against its sha256."""
        bar = _Bar(progress, unit="B")
        try:
            return self._run(ops.exports_download(self._c, export_id, Path(path)), bar)
        finally:
            bar.close()

    def modelfile(self, export_id: str) -> str:
        """A GGUF export's Ollama Modelfile."""
        return self._run(ops.exports_modelfile(self._c, export_id))


class Graders:
    """OpenAI's grader shapes (string_check, text_similarity, python, score_model, multi) as dicts."""

    def __init__(self, client: Client) -> None:
        self._c, self._run = client.config, client._driver.run

    def validate(self, grader: dict[str, Any]) -> dict[str, Any]:
        """The grader as the server will use it; BadRequest naming the field at fault."""
        return self._run(ops.graders_validate(self._c, grader))

    def run(self, grader: dict[str, Any], model_sample: str, item: dict[str, Any] | None = None) -> RunGraderResponse:
        """Grade one sample (`{{sample.output_text}}`) against one item (`{{item.…}}`)."""
        return self._run(ops.graders_run(self._c, grader, model_sample, item))


class AsyncClient:
    """The asynchronous twin of Client: the same resources, every call awaited."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 2,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = b.Config.resolve(base_url, api_key, timeout, max_retries)
        self._http = httpx.AsyncClient(base_url=self.config.base_url, headers=self.config.headers(),
                                       timeout=timeout, transport=transport)
        self._driver = _Async(self._http)
        self.files = AsyncFiles(self)
        self.jobs = AsyncJobs(self)
        self.models = AsyncModels(self)
        self.exports = AsyncExports(self)
        self.graders = AsyncGraders(self)

    async def request(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> httpx.Response:
        """Any API call, with the SDK's retries (idempotent ones) and typed errors."""
        return await self._driver.run(ops.request(self.config, method, path, idempotent=idempotent,
                                                  **kwargs))

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
        self._c, self._run = client.config, client._driver.run
        self._iter = client._driver.iterate

    async def upload(self, source: str | Path | bytes, *, filename: str | None = None) -> File:
        return await self._run(ops.files_upload(self._c, source, filename))

    async def get(self, file_id: str) -> File:
        return await self._run(ops.files_get(self._c, file_id))

    def list(self, *, limit: int = 100) -> AsyncIterator[File]:
        return self._iter(ops.files_list(self._c, limit))

    async def preview(self, file_id: str, *, base_model: str, n_rows: int = 3,
                      method: str = "supervised", train_on_inputs: bool = False,
                      max_seq_length: int = 2048) -> FilePreview:
        """Check the whole file for `base_model` and render its first rows (see Files.preview)."""
        return await self._run(ops.files_preview(self._c, file_id, base_model, n_rows, method,
                                                 train_on_inputs, max_seq_length))


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._c, self._run = client.config, client._driver.run
        self._iter = client._driver.iterate

    async def create(self, *, base_model: str, training_file: str | Path,
                     validation_file: str | Path | None = None, suffix: str | None = None,
                     hyperparameters: dict[str, Any] | None = None, metadata: dict[str, str] | None = None,
                     deploy: bool = True, idempotency_key: str | None = None,
                     method: dict[str, Any] | None = None, priority: int = 0,
                     eval: dict[str, Any] | None = None, gpus: int | str = 1) -> Job:
        return await self._run(ops.jobs_create(self._c, base_model, training_file, validation_file,
                                               suffix, hyperparameters, metadata, deploy,
                                               idempotency_key, method, priority, eval, gpus))

    async def estimate(self, *, base_model: str, training_file: str | Path,
                       validation_file: str | Path | None = None,
                       hyperparameters: dict[str, Any] | None = None, deploy: bool = True,
                       method: dict[str, Any] | None = None) -> JobEstimate:
        return await self._run(ops.jobs_estimate(self._c, base_model, training_file, validation_file,
                                                 hyperparameters, deploy, method))

    async def get(self, job_id: str) -> Job:
        return await self._run(ops.jobs_get(self._c, job_id))

    def list(self, *, status: str | None = None, limit: int = 100) -> AsyncIterator[Job]:
        return self._iter(ops.jobs_list(self._c, status, limit))

    async def cancel(self, job_id: str) -> Job:
        return await self._run(ops.jobs_cancel(self._c, job_id))

    async def checkpoints(self, job_id: str) -> list[Checkpoint]:
        return await self._run(ops.jobs_checkpoints(self._c, job_id))

    async def results(self, job_id: str) -> str:
        return await self._run(ops.jobs_results(self._c, job_id))

    def events(self, job_id: str, *, stream: bool = False) -> AsyncIterator[Event]:
        return self._iter(ops.jobs_events(self._c, job_id, stream))

    async def wait(self, job_id: str, *, progress: bool = True, timeout: float | None = None,
                   poll_interval: float = 2.0) -> Job:
        bar = _Bar(progress)
        try:
            return await self._run(ops.jobs_wait(self._c, job_id, timeout, poll_interval), bar)
        finally:
            bar.close()


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._c, self._run = client.config, client._driver.run

    async def list(self) -> list[Model]:
        return await self._run(ops.models_list(self._c))


class AsyncExports:
    def __init__(self, client: AsyncClient) -> None:
        self._c, self._run = client.config, client._driver.run

    async def create(self, job_id: str, *, format: str, checkpoint: int | None = None) -> Export:
        return await self._run(ops.exports_create(self._c, job_id, format, checkpoint))

    async def get(self, export_id: str) -> Export:
        return await self._run(ops.exports_get(self._c, export_id))

    async def list(self, job_id: str) -> list[Export]:
        return await self._run(ops.exports_list(self._c, job_id))

    async def wait(self, export_id: str, *, progress: bool = True, timeout: float | None = None,
                   poll_interval: float = 1.0) -> Export:
        bar = _Bar(progress)
        try:
            return await self._run(ops.exports_wait(self._c, export_id, timeout, poll_interval), bar)
        finally:
            bar.close()

    async def download(self, export_id: str, path: str | Path, *, progress: bool = True) -> Path:
        bar = _Bar(progress, unit="B")
        try:
            return await self._run(ops.exports_download(self._c, export_id, Path(path)), bar)
        finally:
            bar.close()

    async def modelfile(self, export_id: str) -> str:
        return await self._run(ops.exports_modelfile(self._c, export_id))


class AsyncGraders:
    def __init__(self, client: AsyncClient) -> None:
        self._c, self._run = client.config, client._driver.run

    async def validate(self, grader: dict[str, Any]) -> dict[str, Any]:
        return await self._run(ops.graders_validate(self._c, grader))

    async def run(self, grader: dict[str, Any], model_sample: str,
                  item: dict[str, Any] | None = None) -> RunGraderResponse:
        return await self._run(ops.graders_run(self._c, grader, model_sample, item))
