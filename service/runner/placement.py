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


def gpu_memory(gpu: str) -> tuple[int, dict[int, int]] | None:
    """(free bytes, bytes used per process) on one GPU, from nvidia-smi; None if it cannot say."""
    def query(*args: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return [[x.strip() for x in line.split(",")] for line in out.splitlines() if line.strip()]

    try:
        gpus = {row[0]: row for row in query("--query-gpu=index,uuid,memory.free")}
        if gpu not in gpus:
            return None
        uuid, free = gpus[gpu][1], int(gpus[gpu][2]) * MiB
        used = {int(pid): int(mib) * MiB for pid, gpu_uuid, mib
                in query("--query-compute-apps=pid,gpu_uuid,used_memory") if gpu_uuid == uuid}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return free, used


class Device:
    def __init__(self, settings: Settings, gpu: str | None) -> None:
        self.settings = settings
        self.gpu = gpu
        self.lanes = settings.runner_jobs_per_gpu or (4 if gpu is not None else 1)
        self.pool = settings.runner_device_memory_mb * MiB if settings.runner_device_memory_mb else None
        self.reserve = settings.runner_memory_reserve_mb * MiB
        self.held: dict[str, Held] = {}
        # Reading the budget, claiming and holding are one step: two lanes never both spend the
        # same free memory.
        self.lock = asyncio.Lock()

    @property
    def cpu_threads(self) -> int | None:
        """Each job's share of the cores on a CPU device that trains several at once."""
        if self.gpu is not None or self.lanes == 1:
            return None
        return max(1, (os.cpu_count() or 1) // self.lanes)

    @property
    def label(self) -> str:
        return "cpu" if self.gpu is None else self.gpu

    @property
    def name(self) -> str:
        return "the CPU" if self.gpu is None else f"GPU {self.gpu}"

    async def budget(self, exclude: str | None = None) -> int | None:
        """What a job (other than `exclude`, whose own claim does not count) may plan with now;
        None when nothing bounds it (the CPU without a pool, or a GPU nvidia-smi cannot read:
        the child plans on the memory it finds free)."""
        others = [h for job_id, h in self.held.items() if job_id != exclude]
        pooled = None if self.pool is None else self.pool - self.reserve - sum(h.bytes for h in others)
        if self.gpu is None:
            return None if pooled is None else max(pooled, 0)
        reading = await asyncio.to_thread(gpu_memory, self.gpu)
        if reading is None:
            return None if pooled is None else max(pooled, 0)
        free, used = reading
        growth = sum(max(0, h.bytes - used.get(h.pid, 0)) for h in others)
        budget = free - self.reserve - growth
        return max(budget if pooled is None else min(budget, pooled), 0)

    def plan(self, job: s.Job, budget: int | None) -> s.MemoryPlan | None:
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
                             packing=packing, method=job.method.type)
        except PlanError:
            return None

    def hold(self, job_id: str, plan: s.MemoryPlan | None, budget: int | None) -> None:
        """Reserve what the job's plan takes (all of `budget` when there is no plan)."""
        size = int(plan.estimated_peak_bytes * (1 + MARGIN)) if plan is not None else budget or 0
        self.held[job_id] = Held(size, budget)

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
