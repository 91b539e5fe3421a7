"""Validation's memory does not grow with the row count: a 5-million-row file is validated (every
line checked, duplicates counted, the automatic split's overlap found) in a child process whose
peak RSS is measured. The bound, as service/datasets/validate.py states it: nothing per row in
memory but the seeded split's 4 bytes per row while it is drawn, plus a constant (SQLite's
8 MiB page cache, the length histogram, a line buffer, a batch of digests): 64 MiB here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.slow
ROWS = 5_000_000
BOUND_BYTES = 4 * ROWS + (64 << 20)  # 4 B/row for the split's shuffle + 64 MiB of constants

CHILD = r"""
import json, sys, threading, time
from service.datasets.validate import validate_jsonl, validation_overlap

ROWS = int(sys.argv[1])

def chunks():
    batch = []
    for i in range(ROWS):
        batch.append(b'{"text": "example %d of a long file"}\n' % (i % (ROWS - 1000)))
        if len(batch) == 20_000:
            yield b"".join(batch)
            batch = []
    yield b"".join(batch)

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

# The process's peak while validating, sampled every 20 ms (ru_maxrss would report the imports'
# peak, which is higher than validation's whole use).
highest, done = [0], threading.Event()
def sample():
    while not done.is_set():
        highest[0] = max(highest[0], rss())
        time.sleep(0.02)

# Warm the code paths on a small file first, so imports and caches are in the baseline.
validation_overlap(validate_jsonl(iter([b'{"text": "a"}\n' * 100]), None, 1 << 20).digests, None, 1)
before = rss()
threading.Thread(target=sample, daemon=True).start()
report = validate_jsonl(chunks(), None, 1 << 20)
overlap = validation_overlap(report.digests, None, 3407)
done.set()
print(json.dumps({"before": before, "after": max(highest[0], rss()), "n": report.n_examples,
                  "duplicates": report.n_duplicates, "overlap": overlap, "p95": report.lengths.p95}))
"""


def test_five_million_rows_validate_under_the_stated_memory_bound() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROWS)], cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    grew = found["after"] - found["before"]
    print(f"\n5M-row validation: peak RSS {found['after'] / 2**20:.0f} MiB, grew {grew / 2**20:.1f} MiB "
          f"(bound {BOUND_BYTES / 2**20:.0f} MiB)")
    assert found["n"] == ROWS
    assert found["duplicates"] == 1000  # the last 1,000 rows repeat the first 1,000
    assert grew < BOUND_BYTES, found
