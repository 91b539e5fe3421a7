"""`python -m service up`: the embedded single-machine set-up behind `make up`.

Migrates the database, creates a dev API key on first start (kept in DATA_DIR/dev-key), starts a
runner (and, with TUNEDOCK_SERVE_MODEL, the vLLM sidecar) in child processes that are restarted
with backoff when they die, and serves the API in the foreground until interrupted.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import structlog

from service.procs import die_with_parent
from service.settings import Settings

log = structlog.get_logger()
MAX_BACKOFF_S = 60.0


def _dev_key(settings: Settings) -> str:
    path = Path(settings.data_dir) / "dev-key"
    if path.is_file():
        return path.read_text().strip()
    from service.db.engine import Database
    from service.jobs.store import Store

    async def create() -> str:
        db = Database(settings.database_url)
        try:
            return await Store(db).create_api_key("dev")
        finally:
            await db.close()

    key = asyncio.run(create())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


class Supervised:
    """One child of `service up` (the runner, the serving sidecar), restarted with backoff
    whenever it exits, as serving/vllm.py's supervisor does for vLLM."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.proc = self._spawn()
        self.restarts = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name=f"supervise {module}", daemon=True)
        self.thread.start()

    def _spawn(self) -> subprocess.Popen:
        # The kernel sends the child SIGTERM when this process ends, however it ends (uvicorn
        # re-raises SIGTERM after its shutdown, so no `finally` here is sure to run).
        return subprocess.Popen([sys.executable, "-m", *self.module.split()],
                                preexec_fn=lambda: die_with_parent(signal.SIGTERM))

    def _watch(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            started = time.monotonic()
            code = self.proc.wait()
            if self.stopping.is_set():
                return
            if time.monotonic() - started > 60:  # it had been running fine: start over quickly
                backoff = 1.0
            log.warning("child exited; restarting", child=self.module, code=code, backoff_s=backoff)
            if self.stopping.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            self.proc = self._spawn()
            self.restarts += 1

    def stop(self) -> None:
        self.stopping.set()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def up(settings: Settings) -> int:
    import uvicorn

    from service.app import create_app
    from service.db.engine import migrate

    migrate(settings.database_url)
    key = _dev_key(settings)
    url = f"http://{settings.host}:{settings.port}"
    # The serving sidecar asks this API what to serve, with an internal key (a fresh one per
    # start unless the operator set one); the children read both from the environment.
    os.environ.setdefault("TUNEDOCK_API_URL", url)
    if not settings.internal_api_key:
        os.environ["TUNEDOCK_INTERNAL_API_KEY"] = secrets.token_urlsafe(32)
    settings = msgspec.structs.replace(settings, api_url=os.environ["TUNEDOCK_API_URL"],
                                       internal_api_key=os.environ["TUNEDOCK_INTERNAL_API_KEY"])
    children = [Supervised("service runner")]
    if settings.serve_model:
        children.append(Supervised("serving"))
    models = ", ".join(m.alias for m in settings.base_models) or "none (set TUNEDOCK_BASE_MODELS)"
    serving = (f"  OpenAI API (files, fine-tuning, models, chat once vLLM is up): {url}/v1\n"
               if settings.serve_model else f"  OpenAI API (files, fine-tuning, models): {url}/v1\n")
    print(f"\ntunedock is up at {url}\n  API key (tenant 'dev'): {key}\n  base models: {models}\n"
          f"{serving}  try: curl -H 'Authorization: Bearer {key}' {url}/jobs\n", flush=True)
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level="warning", access_log=False)
    finally:
        for child in children:
            child.stop()
    return 0
