"""`python -m service up`: the embedded single-machine set-up behind `make up`.

Migrates the database, creates a dev API key on first start (kept in DATA_DIR/dev-key), starts a
runner (and, with TUNEDOCK_SERVE_MODEL, the vLLM sidecar) in child processes and serves the API
in the foreground until interrupted.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from service.procs import die_with_parent
from service.settings import Settings


def _dev_key(settings: Settings) -> str:
    path = Path(settings.data_dir) / "dev-key"
    if path.is_file():
        return path.read_text().strip()
    from service.jobs.database import Database
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


def up(settings: Settings) -> int:
    import uvicorn

    from service.app import create_app
    from service.jobs.database import migrate

    migrate(settings.database_url)
    key = _dev_key(settings)
    # uvicorn re-raises SIGTERM after its shutdown, so no `finally` here is sure to run: the
    # children get SIGTERM from the kernel when this process ends, however it ends.
    def spawn(module: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", *module.split()],
                                preexec_fn=lambda: die_with_parent(signal.SIGTERM))

    children = [spawn("service runner")]
    if settings.serve_model:
        children.append(spawn("serving"))
    url = f"http://{settings.host}:{settings.port}"
    models = ", ".join(m.alias for m in settings.base_models) or "none (set TUNEDOCK_BASE_MODELS)"
    serving = (f"  chat (OpenAI API, once vLLM is up): {settings.serving_url}\n"
               if settings.serve_model else "")
    print(f"\ntunedock is up at {url}\n  API key (tenant 'dev'): {key}\n  base models: {models}\n"
          f"{serving}  try: curl -H 'Authorization: Bearer {key}' {url}/jobs\n", flush=True)
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                    log_level="warning", access_log=False)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(60)
    return 0
