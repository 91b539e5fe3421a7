"""API under load (CPU): GET /jobs/{id}, GET /jobs and POST /jobs from a second process (wrk) on
loopback, 64 connections for 20 s each, on SQLite and on Postgres.

    python bench/api_load.py [--seconds 20] [--connections 64] [--out results.md]
The API runs as one uvicorn process (one core); requests/s per core = requests/s of that process.
Needs `wrk` (Debian package) and Debian's postgresql (both installed by .ci/run / apt).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.live import free_port  # noqa: E402

POST_LUA = """
wrk.method = "POST"
wrk.body = '{"base_model": "tiny", "training_file": "%s", "deploy": false}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def start_postgres(root: Path):  # noqa: ANN201 - (url, None, stop)
    import glob

    bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]).parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    port = free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(root / "pg"), "-U", "postgres",
                    "--auth=trust"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(root / "pg"), "-w", "-l",
                    str(root / "pg.log"), "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
                    "-c max_connections=200 -c synchronous_commit=off", "start"],
                   check=True, capture_output=True)

    def stop() -> None:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(root / "pg"), "-m", "immediate",
                        "stop"], capture_output=True)

    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres", None, stop


def wrk(url: str, seconds: int, connections: int, key: str, script: str | None = None) -> dict:
    args = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency",
            "-H", f"Authorization: Bearer {key}", url]
    if script:
        args[1:1] = ["-s", script]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout

    def latency(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": latency("50"), "p99_ms": latency("99"),
            "non_2xx": int(errors.group(1)) if errors else 0}


def run_backend(name: str, database_url: str, work: Path, seconds: int, connections: int) -> list[dict]:
    port = free_port()
    env = {**os.environ, "TUNEDOCK_DATABASE_URL": database_url, "TUNEDOCK_DATA_DIR": str(work / name),
           "TUNEDOCK_BASE_MODELS": f"tiny={work}", "TUNEDOCK_LOG_LEVEL": "warning",
           "TUNEDOCK_PORT": str(port)}
    key = subprocess.run([sys.executable, "-m", "service", "keys", "create", "--tenant", "bench"],
                         env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    api = subprocess.Popen([sys.executable, "-m", "service", "api"], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=(work / f"api-{name}.log").open("w"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        c = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"})
        rows = "".join(json.dumps({"text": f"example {i}"}) + "\n" for i in range(12))
        file_id = c.post("/files", files={"file": ("tiny.jsonl", rows.encode())}).json()["id"]
        job_ids = [c.post("/jobs", json={"base_model": "tiny", "training_file": file_id,
                                         "deploy": False}).json()["id"] for _ in range(50)]
        time.sleep(2)  # let validation of the seed jobs finish
        script = work / f"post-{name}.lua"
        script.write_text(POST_LUA % (file_id, key))
        results = []
        for label, url, lua in (("GET /jobs/{id}", f"{base}/jobs/{job_ids[0]}", None),
                                ("GET /jobs", f"{base}/jobs?limit=20", None),
                                ("POST /jobs", f"{base}/jobs", str(script))):
            r = wrk(url, seconds, connections, key, lua)
            results.append({"backend": name, "endpoint": label, **r})
            print(json.dumps(results[-1]), flush=True)
        return results
    finally:
        api.terminate()
        api.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--out")
    ap.add_argument("--backends", default="sqlite,postgres")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunedock-load-"))
    (work / "config.json").write_text("{}")
    results = []
    if "sqlite" in args.backends:
        results += run_backend("sqlite", f"sqlite+aiosqlite:///{work}/load.db", work, args.seconds,
                               args.connections)
    if "postgres" in args.backends:
        pg_root = Path(tempfile.mkdtemp(prefix="tunedock-load-pg-"))
        url, _, stop = start_postgres(pg_root)
        try:
            results += run_backend("postgres", url, work, args.seconds, args.connections)
        finally:
            stop()
    lines = [f"### API under load — {dt.date.today()}",
             f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()}; API: one uvicorn process (= 1 core); load: wrk, "
             f"1 thread, {args.connections} connections, {args.seconds} s per row, loopback",
             "Command: `python bench/api_load.py` (`make bench`)", "",
             "| database | endpoint | req/s (= per core) | p50 ms | p99 ms | non-2xx |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['endpoint']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['non_2xx']} |" for r in results]
    get_one = [r for r in results if r["endpoint"] == "GET /jobs/{id}"]
    lines += ["", "Target: >= 2,000 req/s per core for GET /jobs/{id} with p99 < 20 ms: " + ", ".join(
        f"{r['backend']} {'met' if r['rps'] >= 2000 and r['p99_ms'] < 20 else 'NOT met'}" for r in get_one), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
