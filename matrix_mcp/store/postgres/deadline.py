"""Every database call answers within a deadline, even when the link to PostgreSQL is black-holed (no RST,
no FIN: a network partition, a failover that leaves the old primary's address silent).

- **TCP keepalives and `tcp_user_timeout` on every connection** (the pool's, the LISTEN one, the first
  one): the kernel gives up on a peer that stopped acknowledging, on links where nothing else would notice.
- **A deadline per call** (MATRIX_DB_DEADLINE_SECONDS, default 10 s; `call_deadline` narrows it, e.g. to a
  group-commit batch's earliest request): every pooled connection the call holds — while it is checked,
  used and given back — carries a timer; when the timer fires, the connection's socket is shut down.
  Whatever waits on it then fails at once as a lost connection (psycopg raises OperationalError), the pool
  discards the connection instead of handing it out again, and the call answers Unavailable ("retry the
  call"). The socket is shut down rather than the task cancelled: a cancelled psycopg call would try to
  ROLLBACK (or finish its pipeline) over the same silent link and hang again.
- **The server drops a session idle inside a transaction** for longer than the deadline (see
  `session_settings`), so the row and advisory locks of a client that was cut off are released instead of
  holding every other process back until the server's own keepalives notice (hours by default).

Whether a write whose COMMIT was cut off committed is unknown to its caller; the retry is safe because
every write is idempotent for its caller (a complete with the same token and report answers as the first
time) or journaled (store/postgres/batch.py: `_recover_answers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

DEFAULT_DEADLINE = 10.0  # seconds; MATRIX_DB_DEADLINE_SECONDS

# probe an idle connection after 5 s, every 2 s, give up after 3 unanswered probes (~11 s)
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2", "keepalives_count": "3"}

Conn = AsyncConnection[Any]

# the monotonic time by which the current call must answer (None: each connection use gets the default)
_call_deadline: ContextVar[float | None] = ContextVar("matrix_pg_call_deadline", default=None)


def connect_params(url: str, deadline: float) -> dict[str, str]:
    """libpq parameters for every connection: keepalives, `tcp_user_timeout` (the deadline, in ms) and a
    `connect_timeout` (the deadline, whole seconds, at least 2: the pool's own reconnection attempts are
    bounded too). A value the URL sets itself is left to the URL."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error:
        given = {}
    params = {
        **KEEPALIVES,
        "tcp_user_timeout": str(max(1, round(deadline * 1000))),
        "connect_timeout": str(max(2, math.ceil(deadline))),
    }
    return {k: v for k, v in params.items() if k not in given}


def session_settings(deadline: float) -> dict[str, str]:
    """Server settings for each pooled session: end a session left idle inside a transaction after the
    deadline (its client gave up on it by then), releasing its locks."""
    return {"idle_in_transaction_session_timeout": str(max(1, round(deadline * 1000)))}


@contextlib.contextmanager
def call_deadline(at: float) -> Iterator[None]:
    """Within this block, every pooled connection is cut off at monotonic time `at` (or an earlier deadline
    already in force). `math.inf`: no deadline beyond the connection parameters (migrations)."""
    current = _call_deadline.get()
    token = _call_deadline.set(at if current is None or at == math.inf else min(at, current))
    try:
        yield
    finally:
        _call_deadline.reset(token)


def cut(conn: Conn) -> None:
    """Shut the connection's socket down in both directions, without closing the descriptor psycopg owns:
    a read waiting on it returns end-of-file at once, and psycopg reports the connection lost."""
    with contextlib.suppress(OSError, psycopg.Error, ValueError):
        fd = conn.pgconn.socket
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()


class BoundedPool(AsyncConnectionPool[Conn]):
    """A pool whose connections are cut off at the current call's deadline (see the module docstring):
    waiting for a connection, checking it, using it and giving it back are all bounded by it."""

    def __init__(
        self,
        conninfo: str,
        *,
        deadline: float,
        check: Callable[[Conn], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        self.deadline = deadline
        self._armed: dict[Conn, asyncio.TimerHandle] = {}
        self._cut_off: set[Conn] = set()
        super().__init__(conninfo, check=self._bounded(check) if check else None, **kwargs)

    def deadline_at(self) -> float:
        """The current call's deadline, or this use's own default one."""
        at = _call_deadline.get()
        return time.monotonic() + self.deadline if at is None else at

    def _arm(self, conn: Conn, at: float) -> asyncio.TimerHandle | None:
        if at == math.inf:
            return None
        return asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()), self._cut, conn)

    def _cut(self, conn: Conn) -> None:
        self._cut_off.add(conn)
        cut(conn)

    def _bounded(self, check: Callable[[Conn], Awaitable[None]]) -> Callable[[Conn], Awaitable[None]]:
        async def bounded_check(conn: Conn) -> None:
            handle = self._arm(conn, self.deadline_at())
            try:
                await check(conn)
            finally:
                if handle is not None:
                    handle.cancel()
                if conn in self._cut_off:
                    self._cut_off.discard(conn)
                    await conn.close()  # the check failed on it; the pool replaces it

        return bounded_check

    async def getconn(self, timeout: float | None = None) -> Conn:
        at = self.deadline_at()
        wait = self.timeout if timeout is None else timeout
        conn = await super().getconn(max(0.0, min(wait, at - time.monotonic())))
        handle = self._arm(conn, at)
        if handle is not None:
            self._armed[conn] = handle
        return conn

    async def putconn(self, conn: Conn) -> None:
        handle = self._armed.pop(conn, None)
        try:
            if conn in self._cut_off:
                self._cut_off.discard(conn)
                await conn.close()  # cut off while idle: discarded, never handed out again
            await super().putconn(conn)  # a rollback here is still bounded by the timer
        finally:
            if handle is not None:
                handle.cancel()
            if conn in self._cut_off:  # cut while being given back: the pool has dropped it
                self._cut_off.discard(conn)
