"""`python -m service runner`: one device per GPU (`runner_cpu_devices` on a CPU-only machine),
each with lanes that train up to `runner_jobs_per_gpu` jobs side by side when their memory plans
fit (placement.py). A lane takes the next queued job in the fair order; a job that asks for
several GPUs takes that many empty devices at once, one rank each (training/ranks.py). The first
lane also takes exports when no job is queued."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess

import structlog

from service.contracts import schema as s
from service.db.engine import Database
from service.exports.store import ExportStore
from service.jobs.locate import Locator
from service.jobs.store import Store
from service.logs import configure_logging
from service.runner.export_run import ExportRun
from service.runner.placement import NEVER, Choice, Device, choose, gpu_memory
from service.runner.process import Child, Template
from service.runner.run import JobRun
from service.settings import Settings
from service.storage import make_store

log = structlog.get_logger()


def gpu_slots(settings: Settings) -> list[str | None]:
    """TUNEDOCK_RUNNER_GPUS ("0,1"), else every GPU nvidia-smi lists, else the CPU devices."""
    if settings.runner_gpus:
        return [g.strip() for g in settings.runner_gpus.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return [None] * settings.runner_cpu_devices
    return [line.strip() for line in out.splitlines() if line.strip()] or [None] * settings.runner_cpu_devices


class Runner:
    def __init__(self, settings: Settings, store: Store, where: Locator) -> None:
        self.settings = settings
        self.store = store
        self.exports = ExportStore(store.db)  # exports keep their own store, on the same database
        self.where = where
        self.id = f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = asyncio.Event()
        self.devices: list[Device] = []
        self.choices: dict[str, Choice] = {}  # the claimed jobs' placements, by job id

    async def device(self, device: Device) -> None:
        await asyncio.gather(*(self.lane(device, lane) for lane in range(device.lanes)))

    async def lane(self, device: Device, lane: int) -> None:
        owner = f"{self.id}/{device.label}" + (f"#{lane}" if lane else "")
        first = lane == 0
        warm: Child | None = None
        # The first lane keeps the device's warm child: one more CUDA context per lane would be
        # memory no plan counts. A CPU device forks its warm children from a template; a GPU
        # one cannot (template.py).
        use_warm = first and self.settings.warm_child
        template = await Template.start(self.settings) if device.gpu is None and use_warm else None
        try:
            while not self.stopping.is_set():
                # No claim before the template has imported: a claimed job's lease is kept by the
                # heartbeat of its child, and none can be forked before then.
                if template is not None and not await template.settled(self.stopping):
                    continue
                if warm is None and use_warm:
                    warm = await Child.warm_up(self.settings, device.gpu, template)
                job = await self._next_job(owner, device, exports=first)
                if job is None:
                    continue
                if isinstance(job, s.Export):
                    log.info("export claimed", export_id=job.id, attempt=job.attempt, owner=owner)
                    try:
                        await ExportRun(self.settings, self.store, self.exports, self.where, job,
                                        owner, device.gpu, self.stopping).run()
                    except Exception:  # noqa: BLE001 - as for a job, below
                        log.exception("the export's run ended with an error", export_id=job.id)
                    finally:
                        device.release(job.id)
                    continue
                choice = self.choices.pop(job.id)
                log.info("job claimed", job_id=job.id, attempt=job.attempt, owner=owner,
                         neighbours=device.neighbours(job.id),
                         devices=[d.label for d in choice.devices])
                run = JobRun(self.settings, self.store, self.where, job, owner, device.gpu,
                             self.stopping, warm=warm, template=template, device=device,
                             gang=choice.devices, ranks_reason=choice.reason)
                try:
                    await run.run()
                except Exception:  # noqa: BLE001 - one job's failure never stops the lane
                    # What could not be written stays as it was: the job's lease runs out and
                    # it resumes from its latest checkpoint, here or on another runner.
                    log.exception("the job's run ended with an error", job_id=job.id)
                finally:
                    for each in choice.devices:
                        each.release(job.id)
                warm = run.warm  # still there if the job ended before it needed a child
                if warm is not None and warm.proc.returncode is not None:
                    await warm.close()
                    warm = None
        finally:
            if warm is not None:
                await warm.close()
            if template is not None:
                await template.close()

    async def _next_job(self, owner: str, device: Device, exports: bool) -> s.Job | s.Export | None:
        """A claimed job (holding its share of the device), else a claimed export, or None after
        waiting a poll interval (or until the runner stops)."""
        job: s.Job | s.Export | None = None
        try:
            await self.store.requeue_expired(self.settings.max_attempts)
            await self.exports.requeue_expired_exports(self.settings.max_attempts)
            async with device.lock:  # the runner's: every device's budget and holds
                # This device's budget, and every empty one's (a job on several takes those),
                # from one nvidia-smi reading.
                readings = await asyncio.to_thread(gpu_memory) if device.gpu is not None else {}
                budgets = {i: await d.budget(readings=readings) for i, d in enumerate(self.devices)
                           if d is device or not d.held}
                choices: dict[str, Choice] = {}

                def fits(candidate: s.Job) -> int | None:  # devices it would take; 0: wait
                    choice = choose(candidate, device, self.devices, budgets)
                    if isinstance(choice, Choice):
                        choices[candidate.id] = choice
                        return choice.ranks
                    return None if choice == NEVER else 0

                job = await self.store.claim(owner, self.settings.lease_seconds,
                                             self.settings.tenant_max_running_jobs, fits=fits,
                                             tenant_gpu_limit=self.settings.tenant_max_gpus)
                if job is not None:
                    choice = self.choices[job.id] = choices[job.id]
                    for each in choice.devices:  # a rank per device: nothing joins any of them
                        each.hold(job.id, choice.plan, choice.budget, exclusive=choice.ranks > 1)
                elif exports and not device.held:
                    job = await self.exports.claim_export(owner, self.settings.lease_seconds)
                    if job is not None:
                        # An export has no plan: it holds the whole device, so no job joins it.
                        device.hold(job.id, None, budgets[self.devices.index(device)], exclusive=True)
        except Exception:  # noqa: BLE001 - the database may come back; keep polling
            log.warning("claim failed", exc_info=True)
            job = None
        if job is None:
            try:
                await asyncio.wait_for(self.stopping.wait(), self.settings.poll_seconds)
            except TimeoutError:
                pass
        return job

    async def run(self) -> None:
        slots = gpu_slots(self.settings)
        lock = asyncio.Lock()
        self.devices = [Device(self.settings, gpu, lock, index=i, cpu_devices=slots.count(None))
                        for i, gpu in enumerate(slots)]
        log.info("runner started", runner=self.id, slots=[d.label for d in self.devices])
        await asyncio.gather(*(self.device(d) for d in self.devices))
        log.info("runner stopped", runner=self.id)


async def _main(settings: Settings) -> None:
    db = Database(settings.database_url)
    objects = make_store(settings)
    store = Store(db)
    runner = Runner(settings, store, Locator(settings, store, objects))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stopping.set)
    try:
        await runner.run()
    finally:
        await db.close()


def run_forever(settings: Settings) -> int:
    configure_logging(settings.log_json, settings.log_level)
    from service.db.engine import migrate

    migrate(settings.database_url)
    asyncio.run(_main(settings))
    return 0
