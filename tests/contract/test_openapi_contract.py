"""The API keeps the contract its OpenAPI document states: Schemathesis (pinned in the test
extra) fuzzes every operation, then chains them statefully, with all of its checks on, against
the real app on a loopback port with a real S3 server. Bounded by schemathesis.toml here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.live import serve

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_failure_with_all_checks(make_settings, tmp_path: Path) -> None:  # noqa: ANN001
    with serve(make_settings()) as (url, keys):
        out = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
             f"{url}/openapi/openapi.json", "--seed", "1",
             "-H", f"Authorization: Bearer {keys['acme']}"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    report = out.stdout + out.stderr
    print(report[-6000:])
    generated = re.search(r"(\d+) generated", report)
    assert generated and int(generated.group(1)) >= 500, "Schemathesis ran fewer cases than expected"
    assert out.returncode == 0, report[-6000:]
