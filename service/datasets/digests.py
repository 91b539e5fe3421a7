"""The rows' digests that validation keeps, on disk: one 8-byte digest per example in a
temporary SQLite file, so duplicates and the validation split's overlap are counted exactly with
memory that does not grow with the row count (SQLite's page cache is capped; its sorts spill to
the same temporary folder). What stays in memory per row is nothing; the seeded split's shuffle
(`held_rows`) costs 4 bytes per row while it runs, as an array, not a list of ints."""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
from array import array

_BATCH = 50_000
_CACHE_KIB = 8 << 10  # SQLite page cache: 8 MiB


class Digests:
    """Append-only digests of one file's examples, in order (row i is the i-th valid example)."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="tunedock-digests-", suffix=".sqlite")
        os.close(fd)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{_CACHE_KIB}",
                       "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE rows (i INTEGER PRIMARY KEY, d INTEGER NOT NULL)")
        self._pending: list[tuple[int, int]] = []
        self.n = 0
        self._indexed = False

    def add(self, digest: bytes) -> None:
        self._pending.append((self.n, int.from_bytes(digest, "big", signed=True)))
        self.n += 1
        if len(self._pending) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO rows VALUES (?, ?)", self._pending)
            self.db.execute("COMMIT")
            self._pending.clear()

    def _ready(self) -> None:
        self._flush()
        if not self._indexed:
            self.db.execute("CREATE INDEX rows_d ON rows (d)")
            self._indexed = True

    def duplicates(self) -> int:
        """Examples that repeat an earlier one."""
        self._ready()
        return self.n - self.db.execute("SELECT count(DISTINCT d) FROM rows").fetchone()[0]

    def overlap(self, validation: Digests | None, held: set[int]) -> int:
        """Validation examples that are also training examples: those of `validation` (a file)
        found here, or else the `held` rows (the automatic split) found among the others."""
        self._ready()
        if validation is not None:
            validation._flush()
            self.db.execute("ATTACH DATABASE ? AS v", (validation.path,))
            try:
                return self.db.execute(
                    "SELECT count(*) FROM v.rows WHERE d IN (SELECT d FROM main.rows)").fetchone()[0]
            finally:
                self.db.execute("DETACH DATABASE v")
        if not held:
            return 0
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS held (i INTEGER PRIMARY KEY)")
        self.db.execute("DELETE FROM held")
        self.db.executemany("INSERT INTO held VALUES (?)", ((i,) for i in held))
        return self.db.execute(
            "SELECT count(*) FROM rows r JOIN held h ON r.i = h.i WHERE EXISTS "
            "(SELECT 1 FROM rows o WHERE o.d = r.d AND o.i NOT IN (SELECT i FROM held))").fetchone()[0]

    def close(self) -> None:
        self.db.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __del__(self) -> None:  # a report dropped without close() still leaves no file
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def held_rows(n_rows: int, n_validation: int, seed: int) -> set[int]:
    """render.validation_indices(n_rows, n_validation, seed), exactly (the same shuffle of the
    same sequence), in an array of 4-byte ints instead of a list: 40 MB for 10 M rows, not 400."""
    if n_validation <= 0:
        return set()
    order = array("I" if n_rows < 2**32 else "Q", range(n_rows))
    random.Random(seed).shuffle(order)
    return set(order[:n_validation])
