"""S3-compatible object store over boto3. Reads stream; large uploads go multipart (s3transfer)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError
from urllib3.exceptions import HTTPError as Urllib3Error

# A multipart upload from a stream holds up to max_in_memory_upload_chunks x chunk bytes (s3transfer's
# default: 10 x 8 MiB, ~100 MiB an upload as measured). 4 x 8 MiB keeps eight concurrent 200 MB
# uploads within the API's stated memory bound (tests/integration/test_pressure.py).
UPLOADS = TransferConfig(multipart_chunksize=8 << 20, max_concurrency=4)
UPLOADS.max_in_memory_upload_chunks = 4
# A body that breaks mid-stream: botocore's wrappers, urllib3's own, the socket's.
_BROKEN_BODY = (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, Urllib3Error, OSError)
RESUMES = 3  # resumed reads in a row with no byte between them before the read fails


class S3Store:
    def __init__(self, *, endpoint_url: str | None, region: str, access_key_id: str | None,
                 secret_access_key: str | None, path_style: bool, max_attempts: int = 5) -> None:
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                s3={"addressing_style": "path" if path_style else "auto"},
                retries={"max_attempts": max_attempts, "mode": "standard"},
                max_pool_connections=32,
            ),
        )

    def size(self, bucket: str, key: str) -> int | None:
        try:
            return self.client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound", "403"):
                return None
            raise

    def iter_bytes(self, bucket: str, key: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        return self._read(bucket, key, 0, None, chunk)

    def iter_range(self, bucket: str, key: str, start: int, end: int,
                   chunk: int = 1 << 20) -> Iterator[bytes]:
        return self._read(bucket, key, start, end, chunk)

    def _read(self, bucket: str, key: str, start: int, end: int | None, chunk: int) -> Iterator[bytes]:
        """The bytes start..end (inclusive; None: to the end). botocore retries a failed GET but
        not a body that breaks mid-stream (a dropped connection, a store restarting): that is
        resumed here from the byte it broke at, with a ranged GET of the same version (If-Match
        on its ETag), up to RESUMES times in a row. The GET is made when the iterator is first
        advanced, so a store that is down fails there, before any byte."""
        offset, resumes = start, 0
        answer = self._get(bucket, key, offset, end, None)
        etag = answer.get("ETag")
        try:
            while True:
                try:
                    for block in answer["Body"].iter_chunks(chunk):
                        offset += len(block)
                        resumes = 0
                        yield block
                    return
                except _BROKEN_BODY:
                    answer["Body"].close()
                    resumes += 1
                    if resumes > RESUMES or (end is not None and offset > end):
                        raise
                    answer = self._get(bucket, key, offset, end, etag)
        finally:
            answer["Body"].close()

    def _get(self, bucket: str, key: str, start: int, end: int | None, etag: str | None) -> dict:
        extra: dict[str, str] = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"
        if etag:
            extra["IfMatch"] = etag
        return self.client.get_object(Bucket=bucket, Key=key, **extra)

    def put_fileobj(self, bucket: str, key: str, fileobj: BinaryIO) -> None:
        self.client.upload_fileobj(fileobj, bucket, key, Config=UPLOADS)

    def put_file(self, bucket: str, key: str, path: Path) -> None:
        self.client.upload_file(str(path), bucket, key, Config=UPLOADS)

    def download(self, bucket: str, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        self.client.download_file(bucket, key, str(tmp))
        tmp.replace(path)

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def abort_uploads(self, bucket: str, prefix: str) -> int:
        """Abort the multipart uploads open under `prefix`: a process killed in the middle of a
        large upload leaves its parts stored (and billed) until someone aborts them."""
        aborted = 0
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket,
                                                                                 Prefix=prefix):
            for upload in page.get("Uploads", []):
                self.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                                   UploadId=upload["UploadId"])
                aborted += 1
        return aborted

    def ping(self, bucket: str) -> None:
        self.client.head_bucket(Bucket=bucket)

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self.client.create_bucket(Bucket=bucket)
