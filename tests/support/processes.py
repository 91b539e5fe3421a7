"""Settings as TUNEDOCK_* variables, and runner processes started from them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec

from service.procs import die_with_parent
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
                            env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=die_with_sigterm)


def die_with_sigterm() -> None:
    """preexec_fn: a killed test run takes its runner and serving processes along."""
    die_with_parent(signal.SIGTERM)


def descendants(root: int) -> list[int]:
    """Every live process below `root`, found through /proc's child lists: tests look only at
    the processes they started, never machine-wide by name (a `make up` may run beside them)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:  # a process that exits meanwhile takes its /proc folder with it
            tasks = list(Path(f"/proc/{pid}/task").glob("*"))
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return [pid for pid in found if alive(pid)]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def training_children(root: int, job_id: str | None = None) -> list[int]:
    """Training child processes below `root` (a runner the test started); with `job_id`, only
    those training that job (their output goes to the job's work folder, whether they started
    for it or were the slot's warm child)."""
    pids = [pid for pid in descendants(root) if " -m service.training" in f" {cmdline(pid)}"]
    if job_id is None:
        return pids

    def output(pid: int) -> str:
        try:
            return os.readlink(f"/proc/{pid}/fd/1")
        except OSError:
            return ""

    return [pid for pid in pids if f"/{job_id}/" in output(pid)]
