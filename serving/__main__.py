"""`python -m serving`: supervise vLLM for TUNEDOCK_SERVE_MODEL and deploy adapters into it."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog

from service.logs import configure_logging
from service.settings import Settings, load_settings
from service.shapes import Shape, read_config
from service.storage import make_store
from serving.deployer import Deployer
from serving.service_api import ServiceDeployments
from serving.vllm import Supervisor, VLLMClient

log = structlog.get_logger()


async def serve(settings: Settings) -> None:
    entry = settings.base_model(settings.serve_model or "")
    if entry is None:
        raise SystemExit(f"TUNEDOCK_SERVE_MODEL={settings.serve_model!r} is not in TUNEDOCK_BASE_MODELS")
    service = ServiceDeployments(settings)
    client = VLLMClient(settings)
    deployer = Deployer(settings, service, make_store(settings), client,
                        Shape.from_config(read_config(entry.source)))
    supervisor = Supervisor(settings, client, deployer.reconcile)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(supervisor.run()), asyncio.create_task(deployer.run(supervisor))]
    await stop.wait()
    log.info("serving stopping")
    await supervisor.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    await service.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(
        prog="python -m serving",
        description="Supervise vLLM's OpenAI server for TUNEDOCK_SERVE_MODEL, load the adapters of "
                    "succeeded jobs into it, and keep its adapters equal to the service's. "
                    "Configured by TUNEDOCK_* variables (see README).").parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_json, settings.log_level)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
