"""Whole-file checks of uploaded files, kept for reuse.

The New-job page asks for a dry run on every edit and a preview on every change of model, method
or length; each used to read and tokenize the whole file again. An upload never changes under its
key (files/<id>.jsonl in the artifact bucket, which no job names otherwise), so a check's report
depends only on the file, the base model, the expected format and the Options, and is reused
for as long as it is kept. Files named by s3:// URI live in the tenant's own buckets and can
change: they are checked every time. The job's own validation always reads the file afresh.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from service.datasets.validate import Report

KEPT = 32  # reports kept: each holds bounded stats and its digests' temp file (removed on drop)


class CheckedFiles:
    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._reports: OrderedDict[Hashable, Report] = OrderedDict()
        self._lock = threading.Lock()  # checks run on worker threads

    def report(self, key: Hashable, check: Callable[[], Report]) -> Report:
        """The kept report for `key`, or `check()`'s, kept (least recently used dropped first).
        Two first checks of one key at once both run; the later one is kept."""
        with self._lock:
            if (found := self._reports.get(key)) is not None:
                self._reports.move_to_end(key)
                return found
        report = check()
        with self._lock:
            self._reports[key] = report
            self._reports.move_to_end(key)
            while len(self._reports) > self._kept:
                self._reports.popitem(last=False)
        return report
