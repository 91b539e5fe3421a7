"""API keys and Idempotency-Key records."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.engine import Database, unix
from service.db.tables import ApiKey, IdempotencyRow, utcnow
from service.errors import Conflict, NotFound
from service.ids import hash_key, new_api_key, new_id


class KeysStore:
    db: Database

    # -- API keys -------------------------------------------------------------------------
    async def create_api_key(self, tenant: str) -> str:
        key = new_api_key()
        async with self.db.write() as ses:
            ses.add(ApiKey(id=new_id("key"), tenant=tenant, key_hash=hash_key(key)))
        return key

    async def list_api_keys(self, tenant: str | None = None) -> list[dict[str, object]]:
        """Every key's id, tenant and dates (never the key: only its hash is stored), oldest first."""
        async with self.db.read() as ses:
            q = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
            if tenant is not None:
                q = q.where(ApiKey.tenant == tenant)
            rows = (await ses.scalars(q)).all()
        return [{"id": r.id, "tenant": r.tenant, "created_at": unix(r.created_at),
                 "revoked_at": unix(r.revoked_at)} for r in rows]

    async def revoke_api_key(self, key_id: str) -> dict[str, object]:
        """Revoke one key by id (idempotent); NotFound if there is no such key."""
        async with self.db.write() as ses:
            row = await ses.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"no API key {key_id!r}", param="key_id")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return {"id": row.id, "tenant": row.tenant, "created_at": unix(row.created_at),
                    "revoked_at": unix(row.revoked_at)}

    async def rotate_api_key(self, key_id: str) -> tuple[str, str]:
        """A new key for the tenant of `key_id`, which is revoked in the same transaction:
        (new key's id, new key). A revoked key cannot be rotated (it is already out)."""
        key = new_api_key()
        async with self.db.write() as ses:
            row = await ses.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"no API key {key_id!r}", param="key_id")
            if row.revoked_at is not None:
                raise Conflict(f"API key {key_id} is already revoked; create a new one for tenant "
                               f"{row.tenant!r} instead", param="key_id", code="key_revoked")
            row.revoked_at = utcnow()
            new = ApiKey(id=new_id("key"), tenant=row.tenant, key_hash=hash_key(key))
            ses.add(new)
        return new.id, key

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
