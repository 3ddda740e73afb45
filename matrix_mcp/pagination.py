"""The one page-cursor codec: an opaque cursor is its payload text, base64url without padding.

The stores' outcome and delivery pages carry a sequence number (`encode_cursor` / `decode_cursor`); the schema
tools carry JSON (`cursor_text` / `cursor_payload`). Below the store and the faces alike, so a face pages
without naming the store.

A store's page is a keyset page (`keyset_args`, `keyset_page`): rows after the cursor's sequence number `n`,
in `n` order, the filter's columns equal to their values, limit + 1 of them: the extra row only says there is
a next page.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from matrix_mcp.errors import InputError

T = TypeVar("T")

DELIVERY_CURSOR = ""  # delivery pages: the sequence number alone
OUTCOME_CURSOR = "o:"  # outcome pages


def cursor_text(payload: str) -> str:
    """The cursor carrying `payload`."""
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def cursor_payload(cursor: str) -> str | None:
    """The payload of a cursor `cursor_text` made; None for anything else."""
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def encode_cursor(n: int, *, kind: str = OUTCOME_CURSOR) -> str:
    """A page cursor after sequence number `n` (an outcome's or a delivery's `n`)."""
    return cursor_text(kind + str(n))


def decode_cursor(cursor: str | None, *, kind: str = OUTCOME_CURSOR) -> int:
    """The sequence number an `encode_cursor` cursor of this kind carries (0: no cursor, the first page);
    anything else is refused, as is a number neither store can bind (64-bit)."""
    if not cursor:
        return 0
    payload = cursor_payload(cursor)
    if payload is not None and payload.startswith(kind):
        try:
            value = int(payload[len(kind) :])
        except ValueError:
            value = -1
        if 0 <= value < 2**63:
            return value
    raise InputError("cursor is not one this server issued", field="cursor")


def keyset_args(
    cursor: str | None, pinned: Sequence[tuple[str, Any]], limit: int, *, kind: str = OUTCOME_CURSOR
) -> tuple[tuple[str, ...], list[Any]]:
    """A keyset page's filter columns and bound values: the cursor's `n`, each pinned (column, value)'s
    value, and limit + 1 (the page SQL binds them in that order: `n > ?`, `column = ?`…, `LIMIT ?`)."""
    after = decode_cursor(cursor, kind=kind)
    return tuple(column for column, _ in pinned), [after, *(value for _, value in pinned), limit + 1]


def keyset_page(
    rows: Sequence[T], limit: int, n: Callable[[T], int], *, kind: str = OUTCOME_CURSOR
) -> tuple[Sequence[T], str | None]:
    """The page in up to limit + 1 rows fetched in `n` order, and the cursor after it (None on the last)."""
    page = rows[:limit]
    return page, encode_cursor(n(page[-1]), kind=kind) if len(rows) > limit and page else None
