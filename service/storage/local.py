"""A local-folder object store: the embedded default when no S3 is configured."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from service.storage.keys import check_key


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / check_key(key)

    def size(self, bucket: str, key: str) -> int | None:
        p = self._path(bucket, key)
        return p.stat().st_size if p.is_file() else None

    def iter_bytes(self, bucket: str, key: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self._path(bucket, key).open("rb") as f:
            while block := f.read(chunk):
                yield block

    def iter_range(self, bucket: str, key: str, start: int, end: int,
                   chunk: int = 1 << 20) -> Iterator[bytes]:
        with self._path(bucket, key).open("rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0 and (block := f.read(min(chunk, left))):
                left -= len(block)
                yield block

    def put_fileobj(self, bucket: str, key: str, fileobj: BinaryIO) -> None:
        dest = self._path(bucket, key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the destination, then rename: readers never see half a file.
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(fileobj, out, 1 << 20)
        except BaseException:  # an abandoned upload leaves nothing behind
            os.unlink(tmp)
            raise
        os.replace(tmp, dest)

    def put_file(self, bucket: str, key: str, path: Path) -> None:
        with path.open("rb") as f:
            self.put_fileobj(bucket, key, f)

    def download(self, bucket: str, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(bucket, key), path)

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        base = self.root / bucket
        if not base.is_dir():
            return []
        keys = (p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and "/.part-" not in k
                      and not k.startswith(".part-"))

    def delete(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)

    def abort_uploads(self, bucket: str, prefix: str) -> int:
        """Remove the temporary files a killed writer left under `prefix` (its open uploads)."""
        base = self.root / bucket
        folder = base / prefix.rpartition("/")[0]  # the deepest folder the prefix names
        if not folder.is_dir():
            return 0
        left = [p for p in folder.rglob(".part-*")
                if p.is_file() and p.relative_to(base).as_posix().startswith(prefix)]
        for path in left:
            path.unlink(missing_ok=True)
        return len(left)

    def ping(self, bucket: str) -> None:
        (self.root / bucket).mkdir(parents=True, exist_ok=True)

    def ensure_bucket(self, bucket: str) -> None:
        self.ping(bucket)
