"""Loads requested adapters into this replica's vLLM and keeps vLLM's set equal to the service's.

Every replica of a base loads every deployment of it and reports its own state under its name
(TUNEDOCK_SERVING_REPLICA), so several replicas never refuse each other; the API's deployment
status follows the best replica (service/deployments/service.py).

deploy:    (this replica: no state yet) -> loading -> fetch + verify (serving/adapters.py)
           -> /v1/load_lora_adapter -> loaded (with the seconds since the job succeeded) | failed.
reconcile: after every vLLM (re)start and every few seconds: re-load what this replica had
           loaded and vLLM forgot (vLLM forgets runtime adapters when it restarts), unload what
           the service no longer wants.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anyio
import httpx
import structlog

from service.contracts.messages import ROLLOUT_ADAPTER_PREFIX
from service.contracts.schema import DeploymentSpec
from service.settings import Settings
from service.shapes import Shape
from service.storage import ObjectStore
from serving import adapters, check
from serving.service_api import ServiceDeployments
from serving.vllm import Supervisor, VLLMClient

log = structlog.get_logger()
POLL_S = 0.5
WANTED = ("pending", "loading", "loaded")
LOAD_ERRORS = (adapters.AdapterError, RuntimeError, httpx.HTTPError, OSError)


def _unwanted(exc: httpx.HTTPError) -> bool:
    """The API's 409: the model is no longer to be served (unloaded, or asked for again)."""
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 409


class Deployer:
    def __init__(self, settings: Settings, deployments: ServiceDeployments, objects: ObjectStore,
                 client: VLLMClient, base: Shape) -> None:
        self.settings = settings
        self.deployments = deployments
        self.objects = objects
        self.client = client
        self.base = base
        self.root = Path(settings.adapter_dir).resolve()

    def _ours(self, row: DeploymentSpec) -> bool:
        return row.base_model == self.settings.serve_model

    async def _fetch(self, row: DeploymentSpec) -> Path:
        return await anyio.to_thread.run_sync(
            adapters.fetch, self.objects, row.bucket, row.prefix, self.root / row.folder, self.base,
            self.settings.max_lora_rank)

    async def _report(self, name: str, status: str, **kw: object) -> bool:
        """Report this replica's state; False when the service no longer wants the model (it is
        then unloaded here by the next reconcile)."""
        try:
            await self.deployments.mark(name, status, **kw)  # type: ignore[arg-type]
        except httpx.HTTPStatusError as exc:
            if not _unwanted(exc):
                raise
            log.info("deployment no longer wanted", model=name, status=status)
            return False
        return True

    async def _check(self, name: str, folder: Path) -> str:
        """The serving-contract check (serving/check.py): a clause for the deployment's message,
        or CheckFailed."""
        tolerance = self.settings.serving_check_tolerance
        if tolerance is None:
            return "; not checked (TUNEDOCK_SERVING_CHECK_TOLERANCE is unset)"
        record = check.read(folder)
        if record is None:
            return f"; not checked: the adapter has no {check.FILE} (made elsewhere or before the check)"
        limit = (self.settings.vllm_max_model_len or 1 << 30) - 1  # vLLM wants room for one token
        started = time.perf_counter()
        # all at once: vLLM scores them in one batch
        served = await asyncio.gather(*(self.client.prompt_logprobs(name, seq.ids[:limit])
                                        for seq in record.sequences))
        outcome = check.compare(record, served, tolerance)
        return (f"; checked against training in {time.perf_counter() - started:.1f} s: {outcome.tokens} "
                f"tokens, token probabilities within {outcome.worst:.3f} (tolerance {tolerance})")

    async def deploy(self, row: DeploymentSpec) -> None:
        if not await self._report(row.name, "loading"):
            return
        try:
            folder = await self._fetch(row)
            # (vLLM's "already loaded", when the resolver plugin loaded it on a request, is a load.)
            await self.client.load(row.name, str(folder))
        except LOAD_ERRORS as exc:
            await self._report(row.name, "failed", error=str(exc),
                               message=f"{row.name} could not be deployed: {exc}")
            log.warning("deployment failed", model=row.name, error=str(exc))
            return
        try:
            checked = await self._check(row.name, folder)
        except (check.CheckFailed, *LOAD_ERRORS) as exc:
            try:
                await self.client.unload(row.name)  # a tenant never gets an adapter that failed it
            except LOAD_ERRORS as gone:  # the next reconcile unloads what is not wanted
                log.warning("unload after a failed check failed", model=row.name, error=str(gone))
            await self._report(row.name, "failed", error=str(exc),
                               message=f"{row.name} failed the serving check: {exc}")
            log.warning("serving check failed", model=row.name, error=str(exc))
            return
        finished = row.job_finished_at
        seconds = round(time.time() - finished, 3) if finished and row.kind == "final" else None
        after = f" {seconds:.1f} s after the job succeeded" if seconds is not None else ""
        if await self._report(row.name, "loaded", load_seconds=seconds,
                              message=f"{row.name} is served by vLLM{after}{checked}"):
            log.info("adapter loaded", model=row.name, seconds_from_success=seconds, check=checked)

    async def deploy_new(self) -> None:
        """Load what the service wants and this replica has not tried yet, one model at a time:
        one model's failure never skips the others."""
        for row in await self.deployments.rows(*WANTED):
            if not self._ours(row) or row.replica_status is not None:
                continue
            try:
                await self.deploy(row)
            except httpx.HTTPError as exc:  # the API did not take a report: the next pass retries
                log.warning("deployment report failed", model=row.name, error=str(exc))

    async def reconcile(self) -> None:
        rows = [r for r in await self.deployments.rows() if self._ours(r)]
        # A training job's rollout adapter is that job's to load and unload (service/training/rollouts.py).
        present = {name for name in await self.client.adapters() if not name.startswith(ROLLOUT_ADAPTER_PREFIX)}
        wanted = {r.name for r in rows if r.status in WANTED}
        mine = {r.name: r for r in rows if r.status in WANTED and r.replica_status == "loaded"}
        for name in sorted(mine.keys() - present):
            try:
                await self.client.load(name, str(await self._fetch(mine[name])))
                log.info("adapter re-loaded", model=name)
            except LOAD_ERRORS as exc:
                await self._report(name, "failed", error=str(exc),
                                   message=f"{name} could not be re-loaded: {exc}")
        for name in sorted(present - wanted):
            await self.client.unload(name)
            log.info("adapter unloaded", model=name)

    async def run(self, supervisor: Supervisor) -> None:
        last = 0.0
        while not supervisor.stopping.is_set():
            await supervisor.ready.wait()
            try:
                await self.deploy_new()
                if time.monotonic() - last >= self.settings.reconcile_seconds:
                    await self.reconcile()
                    last = time.monotonic()
            except (httpx.HTTPError, RuntimeError) as exc:
                log.warning("deployer pass failed", error=str(exc))
            await asyncio.sleep(POLL_S)
