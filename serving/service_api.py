"""The serving side's view of the service: which adapters to serve, and how loading went, over
the API's internal endpoint (service/api/internal.py) with the internal key. The sidecar and the
resolver plugin never open the service's database."""

from __future__ import annotations

import httpx
import msgspec

from service.contracts.schema import DeploymentReport, DeploymentSpec
from service.settings import Settings

_SPECS = msgspec.json.Decoder(list[DeploymentSpec])


class ServiceDeployments:
    def __init__(self, settings: Settings) -> None:
        if not settings.internal_api_key:
            raise SystemExit("set TUNEDOCK_INTERNAL_API_KEY (the API's internal key) for the serving side")
        self.replica = settings.replica_name
        self.http = httpx.AsyncClient(base_url=settings.api_url.rstrip("/"), timeout=30,
                                      headers={"Authorization": f"Bearer {settings.internal_api_key}"})

    async def rows(self, *statuses: str) -> list[DeploymentSpec]:
        """The deployments (of these statuses), each with this replica's own state of it."""
        params = [("status", st) for st in statuses] + [("replica", self.replica)]
        r = await self.http.get("/internal/deployments", params=params)
        r.raise_for_status()
        return _SPECS.decode(r.content)

    async def mark(self, name: str, status: str, *, error: str | None = None,
                   load_seconds: float | None = None, message: str | None = None) -> None:
        report = DeploymentReport(status=status, replica=self.replica, error=error and error[:4000], load_seconds=load_seconds,
                                  message=message and message[:4000])
        r = await self.http.post(f"/internal/deployments/{name}", content=msgspec.json.encode(report),
                                 headers={"Content-Type": "application/json"})
        r.raise_for_status()

    async def close(self) -> None:
        await self.http.aclose()
