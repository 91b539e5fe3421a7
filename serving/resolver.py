"""A vLLM LoRA resolver plugin: the pull path for new replicas. On a request for an unknown
`ft:<base>:<suffix>:<job-id>[:ckpt-N]` model that the service has deployed, it fetches that
adapter from S3 (checked like a pushed one) and lets vLLM load it. Registered through the
`vllm.general_plugins` entry point."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import httpx
from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from service.ids import parse_model_name
from service.settings import load_settings
from service.shapes import Shape, read_config
from service.storage import make_store
from serving import adapters
from serving.service_api import ServiceDeployments


class TunedockResolver(LoRAResolver):
    def __init__(self) -> None:
        self.settings = load_settings()
        self.objects = make_store(self.settings)
        self._deployments: ServiceDeployments | None = None
        self.root = Path(self.settings.adapter_dir).resolve()
        self._shapes: dict[str, Shape] = {}

    def _shape(self, alias: str) -> Shape | None:
        if alias not in self._shapes:
            entry = self.settings.base_model(alias)
            if entry is None:
                return None
            self._shapes[alias] = Shape.from_config(read_config(entry.source))
        return self._shapes[alias]

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        parsed = parse_model_name(lora_name)
        if parsed is None:
            return None
        base, job_id, epoch = parsed
        # vLLM passes the base model as it was given to --model: the registry's folder or hub id.
        entry = self.settings.base_model(base)
        if entry is None or base_model_name not in (entry.alias, entry.source):
            return None
        # Only what the service serves: an unloaded adapter stays unreachable, and one still being
        # loaded is not served before it passed the serving-contract check (the deployer loads
        # that one itself, to check it).
        if self._deployments is None:
            self._deployments = ServiceDeployments(self.settings)
        try:
            wanted = {r.name for r in await self._deployments.rows("loaded")}
        except httpx.HTTPError:
            return None  # the service cannot say: serve nothing new
        if lora_name not in wanted:
            return None
        shape = self._shape(base)
        if shape is None:
            return None
        prefix, folder = adapters.location(job_id, epoch)
        try:
            path = await asyncio.to_thread(adapters.fetch, self.objects, self.settings.artifact_bucket,
                                           prefix, self.root / folder, shape, self.settings.max_lora_rank)
        except (adapters.AdapterError, OSError):
            return None
        # A stable positive id per name, the same on every replica.
        return LoRARequest(lora_name=lora_name, lora_int_id=zlib.crc32(lora_name.encode()) or 1,
                           lora_path=str(path))


def register() -> None:
    LoRAResolverRegistry.register_resolver("tunedock", TunedockResolver())
