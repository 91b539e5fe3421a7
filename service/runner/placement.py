"""Several jobs on one GPU: which job a device takes next, and how much memory each may plan with.

A device (one GPU, or a CPU-only runner's one slot) trains up to `runner_jobs_per_gpu` jobs at
once, one per lane (loop.py). What a new job may plan with, its budget:

    free now - reserve - sum over the running jobs of (what its plan reserves - what it uses now)

that is, the memory free on the device now, less what each running job may still grow into, less
`runner_memory_reserve_mb`; and with `runner_device_memory_mb` set, at most that pool less what
the running jobs reserve (the rest of the GPU is someone else's, e.g. vLLM's). On the CPU there is
no free-memory reading: the pool, if set, is all there is.

A running job reserves what its plan will take, with the plan's own margin: the runner makes the
plan its child will make (the same function, shape, lengths and budget), and the child's own
plan, when it reports it, replaces that. The child plans within its budget
(TrainingSpec.memory_budget_bytes), so it picks its micro-batch and gradient checkpointing knowing
it shares the GPU.

A lane claims a job beside others only if some plan of it fits its budget. The fair order is
kept (Store.claim): when the next job does not fit, no job overtakes it; it waits until its
neighbours leave room. So a large job is never starved by a stream of small ones. An empty device
takes any job: its plan fits what the device has, or the job fails with why, as when it ran alone.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
from dataclasses import dataclass

from service.contracts import schema as s
from service.settings import Settings
from service.shapes import local_shape
from service.training.plan import MARGIN, PlanError, make_plan, resolve_packing, row_tokens

MiB = 1 << 20


@dataclass
class Held:
    """A running job's claim on its device's memory."""

    bytes: int  # what its plan takes, margin included
    budget: int | None  # what its child may plan with (None: no bound)
    pid: int | None = None  # its training child, once started: what it uses now is read by pid
    # Nothing joins it: an export, or one rank of a job on several devices (its ranks keep in
    # step; a neighbour on one of them would slow them all).
    exclusive: bool = False


Reading = tuple[int, dict[int, int]]  # (free bytes, bytes used per process) on one GPU


def gpu_memory() -> dict[str, Reading]:
    """Every GPU's reading by index, from nvidia-smi (two calls, whatever the number of GPUs);
    {} if it cannot say."""
    def query(*args: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return [[x.strip() for x in line.split(",")] for line in out.splitlines() if line.strip()]

    try:
        gpus = query("--query-gpu=index,uuid,memory.free")
        apps = query("--query-compute-apps=pid,gpu_uuid,used_memory")
        return {index: (int(free) * MiB, {int(pid): int(mib) * MiB for pid, gpu_uuid, mib in apps
                                          if gpu_uuid == uuid})
                for index, uuid, free in gpus}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}


class Device:
    def __init__(self, settings: Settings, gpu: str | None, lock: asyncio.Lock | None = None,
                 index: int = 0, cpu_devices: int = 1) -> None:
        self.settings = settings
        self.gpu = gpu
        self.index = index  # a CPU device's number among its runner's `cpu_devices`
        self.cpu_devices = cpu_devices
        self.lanes = settings.runner_jobs_per_gpu or (4 if gpu is not None else 1)
        self.pool = settings.runner_device_memory_mb * MiB if settings.runner_device_memory_mb else None
        self.reserve = settings.runner_memory_reserve_mb * MiB
        self.held: dict[str, Held] = {}
        # Reading the budget, claiming and holding are one step: two lanes never both spend the
        # same free memory. A runner's devices share one lock, so a job on several devices
        # takes them all in one step too.
        self.lock = lock or asyncio.Lock()

    @property
    def cpu_threads(self) -> int | None:
        """Each job's (or rank's) share of the cores on a CPU shared by several jobs or devices."""
        if self.gpu is not None or self.lanes * self.cpu_devices == 1:
            return None
        return max(1, (os.cpu_count() or 1) // (self.lanes * self.cpu_devices))

    @property
    def label(self) -> str:
        if self.gpu is not None:
            return self.gpu
        return "cpu" if self.cpu_devices == 1 else f"cpu{self.index}"

    @property
    def name(self) -> str:
        if self.gpu is not None:
            return f"GPU {self.gpu}"
        return "the CPU" if self.cpu_devices == 1 else f"CPU device {self.index}"

    @property
    def exclusive(self) -> bool:
        """Held by a job or export that nothing may join."""
        return any(h.exclusive for h in self.held.values())

    async def budget(self, exclude: str | None = None, readings: dict[str, Reading] | None = None) -> int | None:
        """What a job (other than `exclude`, whose own claim does not count) may plan with now;
        None when nothing bounds it (the CPU without a pool, or a GPU nvidia-smi cannot read:
        the child plans on the memory it finds free). `readings`: gpu_memory(), if read already."""
        others = [h for job_id, h in self.held.items() if job_id != exclude]
        pooled = None if self.pool is None else self.pool - self.reserve - sum(h.bytes for h in others)
        if self.gpu is None:
            return None if pooled is None else max(pooled, 0)
        if readings is None:
            readings = await asyncio.to_thread(gpu_memory)
        reading = readings.get(self.gpu)
        if reading is None:
            return None if pooled is None else max(pooled, 0)
        free, used = reading
        growth = sum(max(0, h.bytes - used.get(h.pid, 0)) for h in others)
        budget = free - self.reserve - growth
        return max(budget if pooled is None else min(budget, pooled), 0)

    def plan(self, job: s.Job, budget: int | None, ranks: int = 1) -> s.MemoryPlan | None:
        """The plan the job's child will make within `budget`; None if no micro-batch fits it, or
        the job's model cannot be sized here."""
        entry = self.settings.base_model(job.base_model)
        shape = local_shape(entry.local_path if entry else None)
        if shape is None:
            return None
        hp = job.hyperparameters
        dataset = job.dataset
        lengths = dataset.lengths if dataset and not dataset.tokens_estimated else None
        packing = resolve_packing(hp.packing)
        # The child's backend (training/backends.py): Unsloth on a GPU where it is installed.
        backend = "unsloth" if self.gpu is not None and importlib.util.find_spec("unsloth") else "peft"
        try:
            return make_plan(shape, hp, budget, backend, "cpu" if self.gpu is None else "cuda",
                             row_tokens=row_tokens(lengths, hp.max_seq_length, packing),
                             packing=packing, method=job.method, ranks=ranks)
        except PlanError:
            return None

    def hold(self, job_id: str, plan: s.MemoryPlan | None, budget: int | None,
             exclusive: bool = False) -> None:
        """Reserve what the job's plan takes (all of `budget` when there is no plan)."""
        size = int(plan.estimated_peak_bytes * (1 + MARGIN)) if plan is not None else budget or 0
        self.held[job_id] = Held(size, budget, exclusive=exclusive)

    def started(self, job_id: str, pid: int) -> None:
        if (held := self.held.get(job_id)) is not None:
            held.pid = pid

    def planned(self, job_id: str, plan: s.MemoryPlan) -> None:
        """The child's own plan replaces the runner's guess at it."""
        if (held := self.held.get(job_id)) is not None:
            held.bytes = int(plan.estimated_peak_bytes * (1 + MARGIN))

    def release(self, job_id: str) -> None:
        self.held.pop(job_id, None)

    def neighbours(self, job_id: str) -> list[str]:
        return sorted(j for j in self.held if j != job_id)


@dataclass
class Choice:
    """Where a claimed job trains: its devices (the claiming lane's first, one rank each), the
    plan the runner expects its child to make, and why that many (None for a plain one-device job)."""

    devices: list[Device]
    plan: s.MemoryPlan | None
    budget: int | None
    reason: str | None = None

    @property
    def ranks(self) -> int:
        return len(self.devices)


WAIT, NEVER = "wait", "never"  # not now (its turn holds the queue) / not on this runner at all


def job_tokens(job: s.Job) -> int | None:
    """Tokens the job trains: examples x mean length x epochs; None before validation says."""
    data, epochs = job.dataset, job.hyperparameters.n_epochs
    if data is None or data.lengths is None or not isinstance(epochs, int):
        return None
    return int(data.n_train * data.lengths.mean * epochs)


def choose(job: s.Job, device: Device, devices: list[Device],
           budgets: dict[int, int | None]) -> Choice | str:
    """Where `job` trains if the lane of `device` claims it: a Choice, WAIT (its turn, but no
    room now: no job overtakes it) or NEVER (this runner has fewer devices than it asks for:
    the next job in turn may go). `budgets`: each device's budget by index in `devices`, read
    under the runner's lock; an empty device's, at least."""
    if any(job.id in d.held for d in devices):
        # Its last attempt here still holds a device: the job went back to the queue as that
        # attempt failed, before the attempt's processes were gone and its devices let go. Taking
        # it now would start it on what is free of the rest (a killed rank's gang resumed on one
        # device) or beside its own dying process; it waits for them.
        return WAIT
    mine = budgets[devices.index(device)]
    # Empty now and when the budgets were read (a job may have left one since: releases do not
    # wait for the lock, and its budget was not read).
    empty = [device] + [d for i, d in enumerate(devices) if d is not device and not d.held and i in budgets] \
        if not device.held else []
    asked, reason = job.gpus, None
    if asked == "auto":
        n, reason = auto_ranks(job, len(empty), device.settings)
    else:
        n = int(asked)
        if n > 1 and job.attempt > 0 and len(empty) < n:
            # Resumed (a failed, lost or paused attempt): its checkpoint and data order are the
            # same on any number of devices, so it goes on with what is free, not wait for all.
            k = _dividing(job, len(empty)) if empty else 0
            if k:
                return _gang(job, device, devices, budgets, empty[:k],
                             f"gpus {n} asked; resumed on the {k} free (the same batch_size "
                             "per step, from the same checkpoint)")
        if n > len(devices):
            return NEVER
        if n > 1:
            reason = f"gpus {n} as asked"
    if n == 1:
        if device.exclusive:
            return WAIT
        plan = device.plan(job, mine)
        if plan is None and device.held:  # an empty device takes any job: it fits or fails with why
            return WAIT
        return Choice([device], plan, mine, reason)
    if len(empty) < n:
        return WAIT
    return _gang(job, device, devices, budgets, empty[:n], reason)


def _gang(job: s.Job, device: Device, devices: list[Device], budgets: dict[int, int | None],
          gang: list[Device], reason: str | None) -> Choice:
    known = [b for b in (budgets[devices.index(d)] for d in gang) if b is not None]
    budget = min(known) if known else None
    # Empty devices take any job, as one does alone: a plan that does not fit fails with why.
    return Choice(gang, device.plan(job, budget, ranks=len(gang)), budget, reason)


def _dividing(job: s.Job, free: int) -> int:
    """The most of `free` devices that share the job's batch equally in whole micro-batches."""
    hp = job.hyperparameters
    batch = hp.batch_size if isinstance(hp.batch_size, int) else 1
    return next(k for k in range(free, 0, -1) if batch % (k * (hp.micro_batch_size or 1)) == 0)


def auto_ranks(job: s.Job, free: int, settings: Settings) -> tuple[int, str]:
    """gpus "auto": how many devices, and why. Several only when the job trains enough tokens to
    gain (runner_auto_gpus_min_tokens) and that many devices are free now; never waits for more,
    and never takes more than a tenant may hold (tenant_max_gpus: it would wait for good)."""
    tokens = job_tokens(job)
    floor = settings.runner_auto_gpus_min_tokens
    if settings.tenant_max_gpus is not None:
        free = min(free, settings.tenant_max_gpus)
    if tokens is None or tokens < floor:
        return 1, (f"gpus auto: 1, as the job trains ~{tokens or 0:,} tokens, under the "
                   f"{floor:,} that several devices need to gain (runner_auto_gpus_min_tokens)")
    k = _dividing(job, free) if free else 1
    if k < 2:
        why = "only 1 device is free" if free < 2 else f"no count of the {free} free devices divides batch_size"
        return 1, f"gpus auto: 1, as {why} (it trains ~{tokens:,} tokens)"
    return k, (f"gpus auto: {k} of {free} free devices, as the job trains ~{tokens:,} tokens "
               f"(at least runner_auto_gpus_min_tokens, {floor:,})")
