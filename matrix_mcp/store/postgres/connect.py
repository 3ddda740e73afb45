"""The first connection to PostgreSQL, made before the pool opens, so a bad URL is reported once, as what it is.

A server that answered and refused (role or database does not exist, authentication failed, no pg_hba entry)
will refuse again: that is reported at once. A server that cannot be reached is tried again for a short,
bounded wait (CONNECT_WAIT), then reported in one line naming host and port. Never the password; and the pool
never starts against a database it cannot reach (its reconnect loop logs a WARNING per attempt).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from matrix_mcp.config import redact_text
from matrix_mcp.errors import StoreError, Unavailable

CONNECT_WAIT = 3.0  # seconds an unreachable server is tried again before start-up gives up
CONNECT_TIMEOUT = 2  # libpq connect_timeout per attempt (seconds, integer)
# FATAL errors that a server gives while it cannot take connections yet: worth waiting for
_TRANSIENT_FATAL = ("starting up", "shutting down", "in recovery", "too many", "connection slots")


class ConnectRefused(StoreError):
    """The server answered and refused this connection (role, password, database, pg_hba): a setting to fix."""


def target(url: str) -> str:
    """host:port the URL connects to (libpq's PGHOST/PGPORT fill in what the URL leaves out); no credentials."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "the configured server"
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    return f"{host}:{port}"


def _detail(exc: BaseException, secret: str) -> str:
    text = str(exc).strip()
    if "FATAL:" in text:
        text = text.split("FATAL:", 1)[1]
    elif "failed:" in text:
        text = text.rsplit("failed:", 1)[1]
    first = " ".join(text.split()) or type(exc).__name__
    return redact_text(first, (secret,))


def refused(exc: BaseException) -> bool:
    """True when the server answered and will answer the same again (not worth retrying)."""
    text = str(exc)
    return "FATAL:" in text and not any(t in text for t in _TRANSIENT_FATAL)


async def check_connect(
    url: str, secret: str, wait: float = CONNECT_WAIT, params: Mapping[str, str] | None = None
) -> None:
    """Connect once (retrying an unreachable server for up to `wait` seconds) and close; raise ConnectRefused
    or Unavailable with one line naming host and port. `params`: extra libpq parameters (keepalives...)."""
    where = target(url)
    started = time.monotonic()
    deadline = started + wait
    delay = 0.1
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                make_conninfo(url, **(params or {})), connect_timeout=CONNECT_TIMEOUT
            )
        except psycopg.Error as exc:
            if refused(exc):
                raise ConnectRefused(
                    f"PostgreSQL at {where} refused the connection: {_detail(exc, secret)}"
                ) from None
            if time.monotonic() + delay > deadline:
                raise Unavailable(
                    f"cannot reach PostgreSQL at {where} (tried for {time.monotonic() - started:.1f} s): "
                    + _detail(exc, secret)
                ) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        else:
            await conn.close()
            return
