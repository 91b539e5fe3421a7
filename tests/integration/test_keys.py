"""API keys from the command line (`python -m service keys create | list | revoke | rotate`)
against a real app and database: a revoked or rotated key stops working within the key cache's
stated time (TUNEDOCK_KEY_CACHE_SECONDS)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from litestar.testing import AsyncTestClient

from service.app import create_app
from tests.support.processes import ROOT, settings_env

CACHE_S = 1.0


def keys(settings, *args: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run([sys.executable, "-m", "service", "keys", *args], cwd=ROOT, env=settings_env(settings),
                          capture_output=True, text=True, timeout=120)


async def test_keys_are_listed_revoked_and_rotated_within_the_cache_time(make_settings) -> None:  # noqa: ANN001
    settings = make_settings(key_cache_seconds=CACHE_S)
    made = await asyncio.to_thread(keys, settings, "create", "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    first = made.stdout.strip()
    async with AsyncTestClient(create_app(settings)) as client:
        async def status(key: str) -> int:
            return (await client.get("/jobs", headers={"Authorization": f"Bearer {key}"})).status_code

        assert await status(first) == 200
        listed = await asyncio.to_thread(keys, settings, "list", "--tenant", "acme")
        [row] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert row["tenant"] == "acme" and row["revoked_at"] is None and first not in listed.stdout

        rotated = await asyncio.to_thread(keys, settings, "rotate", row["id"])
        assert rotated.returncode == 0, rotated.stderr
        second = rotated.stdout.strip()
        assert second != first and await status(second) == 200
        await asyncio.sleep(CACHE_S + 0.2)  # the old key was cached: it goes once the cache does
        assert await status(first) == 401

        [_, new_row] = [json.loads(line) for line in
                        (await asyncio.to_thread(keys, settings, "list")).stdout.splitlines()]
        assert await status(second) == 200  # cached now
        revoked = await asyncio.to_thread(keys, settings, "revoke", new_row["id"])
        assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked_at"] is not None
        began = time.monotonic()
        while await status(second) == 200:
            assert time.monotonic() - began < CACHE_S + 1, "a revoked key outlived the key cache"
            await asyncio.sleep(0.1)

        again = await asyncio.to_thread(keys, settings, "rotate", new_row["id"])
        assert again.returncode == 1 and "already revoked" in again.stderr
        missing = await asyncio.to_thread(keys, settings, "revoke", "key-nope")
        assert missing.returncode == 1 and "no API key 'key-nope'" in missing.stderr
