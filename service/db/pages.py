"""One page shape for every keyset-paginated list (jobs, files, events, exports, webhooks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.contracts import schema as s

MAX_PAGE = 100


def newest_first(sql: str, params: list[Any], anchor: Mapping[str, Any] | None,
                 limit: int) -> tuple[str, list[Any]]:
    """`sql` (ending in a WHERE clause) as one keyset page, newest first, after `anchor` (the
    previous page's last row); one row more than `limit`, so page() can tell if there are more."""
    if anchor is not None:
        sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
        params = [*params, anchor["created_at"], anchor["created_at"], anchor["id"]]
    return sql + " ORDER BY created_at DESC, id DESC LIMIT ?", [*params, limit + 1]


def page(items: list[Any], limit: int) -> s.Page:
    has_more = len(items) > limit
    items = items[:limit]
    last = getattr(items[-1], "id", None) if items else None
    return s.Page(data=items, has_more=has_more, last_id=last)
