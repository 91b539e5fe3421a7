"""Loads requested adapters into vLLM and keeps vLLM's set equal to the service's.

deploy:    pending -> loading -> fetch + verify (serving/adapters.py) -> /v1/load_lora_adapter
           -> loaded (with the seconds since the job succeeded) | failed (with why).
reconcile: after every vLLM (re)start and every few seconds: load what should be loaded and is
           not (vLLM forgets runtime adapters when it restarts), unload what should not be.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anyio
import httpx
import structlog

from service.jobs.schema import DeploymentSpec
from service.settings import Settings
from service.shapes import Shape
from service.storage import ObjectStore
from serving import adapters
from serving.service_api import ServiceDeployments
from serving.vllm import Supervisor, VLLMClient

log = structlog.get_logger()
POLL_S = 0.5


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

    async def deploy(self, row: DeploymentSpec) -> None:
        try:
            await self.deployments.mark(row.name, "loading")
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 409:
                raise
            # Another replica of this base took it (or the user unloaded it): not this pass's
            # to load. Once it is loaded, reconcile() loads it here too.
            log.info("deployment taken by another replica", model=row.name)
            return
        try:
            path = await self._fetch(row)
            await self.client.load(row.name, str(path))
        except (adapters.AdapterError, RuntimeError, httpx.HTTPError, OSError) as exc:
            await self.deployments.mark(row.name, "failed", error=str(exc),
                                        message=f"{row.name} could not be deployed: {exc}")
            log.warning("deployment failed", model=row.name, error=str(exc))
            return
        finished = row.job_finished_at
        seconds = round(time.time() - finished, 3) if finished and row.kind == "final" else None
        after = f" {seconds:.1f} s after the job succeeded" if seconds is not None else ""
        await self.deployments.mark(row.name, "loaded", load_seconds=seconds,
                                    message=f"{row.name} is served by vLLM{after}")
        log.info("adapter loaded", model=row.name, seconds_from_success=seconds)

    async def reconcile(self) -> None:
        rows = [r for r in await self.deployments.rows() if self._ours(r)]
        present = await self.client.adapters()
        wanted = {r.name: r for r in rows if r.status == "loaded"}
        busy = {r.name for r in rows if r.status in ("pending", "loading")}
        for name in sorted(wanted.keys() - present):
            row = wanted[name]
            try:
                await self.client.load(name, str(await self._fetch(row)))
                log.info("adapter re-loaded", model=name)
            except (adapters.AdapterError, RuntimeError, httpx.HTTPError, OSError) as exc:
                await self.deployments.mark(name, "failed", error=str(exc),
                                            message=f"{name} could not be re-loaded: {exc}")
        for name in sorted(present - wanted.keys() - busy):
            await self.client.unload(name)
            log.info("adapter unloaded", model=name)

    async def run(self, supervisor: Supervisor) -> None:
        last = 0.0
        while not supervisor.stopping.is_set():
            await supervisor.ready.wait()
            try:
                for row in await self.deployments.rows("pending"):
                    if self._ours(row):
                        await self.deploy(row)
                if time.monotonic() - last >= self.settings.reconcile_seconds:
                    await self.reconcile()
                    last = time.monotonic()
            except (httpx.HTTPError, RuntimeError) as exc:
                log.warning("deployer pass failed", error=str(exc))
            await asyncio.sleep(POLL_S)
