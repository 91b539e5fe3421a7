"""Uploaded files: rows, idempotent inserts, deletion, and their keyset-paginated list."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from service.contracts import schema as s
from service.db.engine import unix
from service.db.pages import newest_first, page
from service.db.tables import DeletedFileRow, FileRow, IdempotencyRow, JobRow
from service.errors import Conflict, NotFound
from service.keys.store import KeysStore


def file_from_row(row: FileRow) -> s.File:
    return s.File(
        id=row.id,
        bytes=row.bytes,
        filename=row.filename,
        uri=f"s3://{row.bucket}/{row.key}",
        created_at=unix(row.created_at),
    )


class FilesStore(KeysStore):
    # -- files ----------------------------------------------------------------------------
    async def find_idempotent_file(self, tenant: str, key: str | None, req_hash: str) -> s.File | None:
        async with self.db.read() as ses:
            found = await self._idempotent(ses, tenant, "files", key, req_hash)
        return await self.get_file(tenant, found) if found else None

    async def insert_file(
        self, row: FileRow, idempotency_key: str | None, req_hash: str
    ) -> tuple[s.File, bool]:
        """Insert the file row; (file, created). With a known key: the first file, created=False."""
        try:
            async with self.db.write() as ses:
                found = await self._idempotent(ses, row.tenant, "files", idempotency_key, req_hash)
                if found is None:
                    ses.add(row)
                    if idempotency_key:
                        ses.add(IdempotencyRow(tenant=row.tenant, endpoint="files", key=idempotency_key,
                                               request_hash=req_hash, resource_id=row.id))
        except IntegrityError:
            found = await self.find_idempotent_file(row.tenant, idempotency_key, req_hash)
            if found is None:
                raise
            return found, False
        if found is not None:
            return await self.get_file(row.tenant, found), False
        return file_from_row(row), True

    async def get_file(self, tenant: str, file_id: str) -> s.File:
        return file_from_row(await self.file_row(tenant, file_id))

    async def file_row(self, tenant: str, file_id: str) -> FileRow:
        """A detached row, read on the driver path (every POST /jobs naming a file reads it)."""
        found = await self.db.rows("SELECT * FROM files WHERE id = ?", file_id)
        if not found or found[0]["tenant"] != tenant:
            raise NotFound(f"no file {file_id!r}", param="file_id")
        return FileRow(**found[0])

    async def delete_file(self, tenant: str, file_id: str) -> FileRow:
        """Delete the row, and the Idempotency-Key records that would replay it, unless a job
        that has not ended reads it (Conflict). One transaction with the row locked for update:
        a job being created with this file share-locks it (JobsStore._hold_files), so the
        check cannot miss a job that commits meanwhile."""
        live = [st.value for st in s.Status if st not in s.TERMINAL]
        async with self.db.write() as ses:
            row = await ses.get(FileRow, file_id, with_for_update=True)
            if row is None or row.tenant != tenant:
                raise NotFound(f"no file {file_id!r}", param="file_id")
            if await ses.scalar(select(JobRow.id).where(
                    JobRow.tenant == tenant, JobRow.status.in_(live),
                    (JobRow.training_file == file_id) | (JobRow.validation_file == file_id)).limit(1)):
                raise Conflict(f"file {file_id} is used by a job that has not ended; cancel the job or "
                               "wait for it to end, then delete the file", param="file_id",
                               code="file_in_use")
            await ses.delete(row)
            ses.add(DeletedFileRow(id=row.id, tenant=row.tenant, created_at=row.created_at))
            await ses.execute(delete(IdempotencyRow).where(
                IdempotencyRow.tenant == tenant, IdempotencyRow.endpoint == "files",
                IdempotencyRow.resource_id == file_id))
            return row

    async def list_files(self, tenant: str, after: str | None, limit: int) -> s.Page:
        """Newest first, on the driver path like the jobs list, with the same keyset page."""
        anchor = None
        if after:
            # A file deleted since the client read its page still marks where that page ended.
            found = (await self.db.rows("SELECT id, tenant, created_at FROM files WHERE id = ?", after)
                     or await self.db.rows("SELECT id, tenant, created_at FROM deleted_files WHERE id = ?", after))
            if not found or found[0]["tenant"] != tenant:
                raise NotFound(f"no file {after!r}", param="after")
            anchor = found[0]
        sql, params = newest_first("SELECT * FROM files WHERE tenant = ?", [tenant], anchor, limit)
        return page([file_from_row(FileRow(**r)) for r in await self.db.rows(sql, *params)], limit)
