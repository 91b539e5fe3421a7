"""Prometheus metrics: one registry per app, so tests can build many apps in one process. With
several API worker processes (TUNEDOCK_API_WORKERS) each writes its samples to files in a folder
they share (prometheus_client's multiprocess mode) and a scrape, whichever worker takes it, adds
them all up."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR"


def share_between_processes() -> None:
    """Before the API's workers start: a fresh folder for their samples (prometheus_client reads
    the variable when it is imported, in each worker), removed when the parent exits."""
    folder = tempfile.mkdtemp(prefix="tunedock-metrics-")
    os.environ[MULTIPROCESS] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Every worker reads the same counts from the database when scraped: the latest one's.
        self.jobs = Gauge("tunedock_jobs", "Jobs by status", ["status"], registry=self.registry,
                          multiprocess_mode="mostrecent")
        self.latency = Histogram(
            "tunedock_request_duration_seconds", "HTTP request latency", ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )

    def render(self, jobs_by_status: dict[str, int]) -> bytes:
        from service.contracts.schema import Status

        for status in Status:
            self.jobs.labels(status.value).set(jobs_by_status.get(status.value, 0))
        if MULTIPROCESS not in os.environ:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker)
        return generate_latest(every_worker)
