"""API keys and Idempotency-Key records."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from service.errors import Conflict
from service.ids import hash_key, new_api_key, new_id
from service.jobs.database import Database
from service.jobs.db import ApiKey, IdempotencyRow


class KeysStore:
    db: Database

    # -- API keys -------------------------------------------------------------------------
    async def create_api_key(self, tenant: str) -> str:
        key = new_api_key()
        async with self.db.write() as ses:
            ses.add(ApiKey(id=new_id("key"), tenant=tenant, key_hash=hash_key(key)))
        return key

    async def tenant_for_key(self, key: str) -> str | None:
        # On the driver path: when the API's key cache expires, every request in flight looks
        # its key up at once.
        found = await self.db.rows(
            "SELECT tenant FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", hash_key(key))
        return found[0]["tenant"] if found else None

    # -- idempotency ----------------------------------------------------------------------
    @staticmethod
    async def _idempotent(
        ses: AsyncSession, tenant: str, endpoint: str, key: str | None, req_hash: str
    ) -> str | None:
        """The id of the resource an earlier request with this key made, or None."""
        if key is None:
            return None
        row = await ses.get(IdempotencyRow, (tenant, endpoint, key))
        if row is None:
            return None
        if row.request_hash != req_hash:
            raise Conflict(
                "this Idempotency-Key was already used with a different request body",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        return row.resource_id
