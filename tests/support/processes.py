"""Settings as TUNEDOCK_* variables, and runner processes started from them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in msgspec.structs.asdict(settings).items():
        if value is None:
            continue
        key = f"TUNEDOCK_{name.upper()}"
        if name == "base_models":
            env[key] = ",".join(f"{m.alias}={m.source}" for m in value)
        elif isinstance(value, tuple):
            env[key] = ",".join(value)
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        else:
            env[key] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def start_runner(settings: Settings, log_path: Path) -> subprocess.Popen:
    log = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", "service", "runner"], cwd=ROOT,
                            env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT)


def training_children() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "service[.]training "], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]
