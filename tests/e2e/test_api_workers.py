"""`python -m service api` with several worker processes (TUNEDOCK_API_WORKERS): they share the
port, the database is migrated once before them, and /metrics adds up every worker's requests
whichever one takes the scrape."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.e2e.test_up import wait_until
from tests.support.live import free_port
from tests.support.processes import ROOT, cmdline, descendants, die_with_sigterm, settings_env

pytestmark = pytest.mark.slow


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_two_workers_share_the_port_and_the_metrics(e2e_settings, tmp_path: Path) -> None:  # noqa: ANN001
    port = free_port()
    settings = msgspec.structs.replace(e2e_settings, port=port, api_workers=2, metrics_api_key="scrape-key",
                                       database_url=f"sqlite+aiosqlite:///{tmp_path}/workers.db")
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "acme"], cwd=ROOT,
                         env=settings_env(settings), check=True, capture_output=True, text=True).stdout.strip()
    api = subprocess.Popen([sys.executable, "-m", "service", "api"], cwd=ROOT, env=settings_env(settings),
                           stdout=(tmp_path / "api.log").open("wb"), stderr=subprocess.STDOUT,
                           preexec_fn=die_with_sigterm)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ok(f"{url}/healthz"), 120, "the API to start")
        workers = wait_until(lambda: len(w := [p for p in descendants(api.pid)
                                               if "spawn_main" in cmdline(p)]) == 2 and w, 60, "two workers")
        assert len(workers) == 2, [cmdline(p) for p in descendants(api.pid)]
        # A connection each (keep-alive would hold one worker), at once: both workers take some.
        n = 40
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: httpx.get(f"{url}/jobs", headers={"Authorization": f"Bearer {key}"},
                                                      timeout=30).status_code, range(n)))
            assert codes == [200] * n
            scrapes = list(pool.map(lambda _: httpx.get(f"{url}/metrics", timeout=30, headers={
                "Authorization": "Bearer scrape-key"}).text, range(12)))
        # Every scrape, whichever worker answers it, counts all n requests (not one worker's share).
        for text in scrapes:
            found = re.search(r'tunedock_request_duration_seconds_count\{method="GET",route="/jobs",status="200"\} '
                              r"([0-9.]+)", text)
            assert found and float(found.group(1)) == n, text[-2000:]
            assert re.search(r'tunedock_jobs\{status="queued"\} 0', text), text[-2000:]
    finally:
        api.terminate()
        api.wait(30)
    log = (tmp_path / "api.log").read_text()
    assert "Traceback" not in log, log[-3000:]
