"""Prometheus metrics: one registry per app, so tests can build many apps in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Gauge("tunedock_jobs", "Jobs by status", ["status"], registry=self.registry)
        self.latency = Histogram(
            "tunedock_request_duration_seconds", "HTTP request latency", ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )

    def render(self, jobs_by_status: dict[str, int]) -> bytes:
        from service.contracts.schema import Status

        for status in Status:
            self.jobs.labels(status.value).set(jobs_by_status.get(status.value, 0))
        return generate_latest(self.registry)
