"""Object storage: S3 (boto3; MinIO, AWS, R2) or a local folder, behind one small interface.

Locations are (bucket, key). Keys are checked here once, so no caller can name `..` or a
scheme the service does not read.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from service.errors import InvalidRequest
from service.storage.keys import check_key, is_safe_key  # noqa: F401 - the package's interface

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ObjectStore(Protocol):
    def size(self, bucket: str, key: str) -> int | None: ...
    def iter_bytes(self, bucket: str, key: str, chunk: int = 1 << 20) -> Iterator[bytes]: ...
    def iter_range(self, bucket: str, key: str, start: int, end: int,
                   chunk: int = 1 << 20) -> Iterator[bytes]: ...  # bytes start..end, inclusive
    def put_fileobj(self, bucket: str, key: str, fileobj: BinaryIO) -> None: ...
    def put_file(self, bucket: str, key: str, path: Path) -> None: ...
    def download(self, bucket: str, key: str, path: Path) -> None: ...
    def list_keys(self, bucket: str, prefix: str) -> list[str]: ...
    def delete(self, bucket: str, key: str) -> None: ...
    def abort_uploads(self, bucket: str, prefix: str) -> int: ...
    def ping(self, bucket: str) -> None: ...


def parse_s3_uri(uri: str, param: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key); whether the caller may read it is checked elsewhere."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme != "s3":
        raise InvalidRequest(
            f"{param} must be an s3://bucket/key URI or a file- id; {scheme or uri!r} is not read",
            param=param,
        )
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise InvalidRequest(f"{bucket!r} is not a valid bucket name", param=param)
    return bucket, key


_MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket", "NoSuchUpload"})
_DENIED = frozenset({"403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                     "SignatureDoesNotMatch", "AccountProblem", "InvalidObjectState"})


def storage_error_kind(exc: BaseException) -> str:
    """"missing", "denied" (both permanent: retrying will not help) or "unavailable" (5xx,
    throttling, no connection: it may), for an object-store error of either store."""
    if isinstance(exc, FileNotFoundError):  # the local store
        return "missing"
    if isinstance(exc, PermissionError):
        return "denied"
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    if code in _MISSING:
        return "missing"
    if code in _DENIED:
        return "denied"
    return "unavailable"


def upload_dir(store: ObjectStore, bucket: str, prefix: str, folder: Path) -> list[str]:
    """Upload every file under `folder` to `prefix/`; returns the keys written."""
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = posixpath.join(prefix, path.relative_to(folder).as_posix())
        store.put_file(bucket, key, path)
        keys.append(key)
    return keys


def download_prefix(store: ObjectStore, bucket: str, prefix: str, folder: Path) -> int:
    """Download every object under `prefix/` into `folder`; returns how many."""
    prefix = prefix.rstrip("/") + "/"
    keys = store.list_keys(bucket, prefix)
    for key in keys:
        rel = check_key(key[len(prefix):])
        store.download(bucket, key, folder / rel)
    return len(keys)


class StorageConfig(Protocol):
    uses_s3: bool
    s3_endpoint_url: str | None
    s3_region: str
    s3_access_key_id: str | None
    s3_secret_access_key: str | None
    s3_path_style: bool
    s3_max_attempts: int
    data_dir: str


def make_store(cfg: StorageConfig) -> ObjectStore:
    if cfg.uses_s3:
        from service.storage.s3 import S3Store

        return S3Store(
            endpoint_url=cfg.s3_endpoint_url,
            region=cfg.s3_region,
            access_key_id=cfg.s3_access_key_id,
            secret_access_key=cfg.s3_secret_access_key,
            path_style=cfg.s3_path_style,
            max_attempts=cfg.s3_max_attempts,
        )
    from service.storage.local import LocalStore

    return LocalStore(Path(cfg.data_dir) / "objects")
