"""The PostgreSQL store's plumbing: the pool, migrations under an advisory lock, group commit
(matrix_mcp.store.group_commit) with transient-error retries, pipelined batches, the counter roller
and LISTEN/NOTIFY wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Self

import anyio
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from pydantic import TypeAdapter

from matrix_mcp.audit import acting_as
from matrix_mcp.config import redact_text, redact_url, url_password
from matrix_mcp.errors import StoreError, Unavailable
from matrix_mcp.store.group_commit import GroupCommit
from matrix_mcp.store.postgres import events, sql
from matrix_mcp.store.postgres.batch import (
    IN_TRANSACTION,
    Batch,
    BatchRequest,
    ClaimArgs,
    CompleteArgs,
    Conn,
    NeedSafe,
    ReviewArgs,
    T,
    Tx,
    check_idle,
    configure,
    fetch_all,
    fetch_one,
    journal_answers,
    log,
    note_return,
    recover_answers,
    transient,
    write_deltas,
)
from matrix_mcp.store.postgres.deadline import (
    DEFAULT_DEADLINE,
    BoundedPool,
    call_deadline,
    connect_params,
    cut,
    session_settings,
)
from matrix_mcp.store.postgres.migrations import (
    EVENTS_LOCK,
    MIGRATION_LOCK,
    MIGRATIONS,
    NOTIFY_CHANNEL,
    ROLLUP_LOCK,
)
from matrix_mcp.store.postgres.review import review_many
from matrix_mcp.store.postgres.sql import ROLLUP_SQL
from matrix_mcp.store.postgres.work import merged, recover_claims

POOL_MIN = 2


POOL_MAX = 10


POOL_WAIT = 2.0  # seconds a call waits for a connection before the retry budget counts it


RETRY_BUDGET = 4.0  # seconds of transient-error retries before answering Unavailable


ROLL_INTERVAL = 0.5


ROLL_CHUNK = 50_000


NOTIFY_DEBOUNCE = 0.01


POLL_FALLBACK = 0.5


LISTEN_PING = 10.0  # seconds without a notification after which the LISTEN connection is checked (bounded)


# a journaled answer is needed only while its write is being retried (RETRY_BUDGET); kept far longer
ANSWERS_KEEP = 600.0


ANSWERS_PRUNE_INTERVAL = 60.0


class Database:
    """The PostgreSQL store's plumbing: pool, migrations, group commit with retries, roll-up, LISTEN/NOTIFY."""

    def __init__(self, url: str, pool: BoundedPool) -> None:
        self._url = url
        self._deadline = pool.deadline
        self._secret = url_password(url) or ""
        self.url_for_display = redact_url(url)
        self._pool = pool
        self.group_commit: GroupCommit[BatchRequest] = GroupCommit(
            self._commit, unavailable=self._unavailable_text, after=self.wake, regather=True
        )
        self._changed = anyio.Event()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self.listening: AsyncConnection[Any] | None = None  # the LISTEN connection, once made
        self._last_notify = 0.0
        self._notify_owed = False

    @property
    def pool(self) -> BoundedPool:
        """The connection pool (reads outside the group commit take their connection from it)."""
        return self._pool

    # ---- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, deadline: float = DEFAULT_DEADLINE) -> Self:
        """Connect, migrate and start the roller. `deadline`: seconds within which every database call
        answers, even over a black-holed link (MATRIX_DB_DEADLINE_SECONDS; see store/postgres/deadline.py)."""
        if url.startswith("postgresql+psycopg://"):
            url = "postgresql://" + url[len("postgresql+psycopg://") :]
        from matrix_mcp.store.postgres.connect import check_connect

        params = connect_params(url, deadline)
        # a refusal at once, an unreachable server briefly
        await check_connect(url, url_password(url) or "", params=params)
        settings = session_settings(deadline)

        async def configure_session(conn: Conn) -> None:
            await configure(conn)
            for name, value in settings.items():
                await conn.execute(sql.SET_SESSION_SETTING, (name, value))

        pool = BoundedPool(
            url,
            deadline=deadline,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            open=False,
            timeout=POOL_WAIT,
            kwargs={"autocommit": True, "row_factory": dict_row, **params},
            check=check_idle,
            reset=note_return,
            configure=configure_session,
            reconnect_timeout=30.0,
            name="matrix",
        )
        store = cls(url, pool)
        try:
            await pool.open(wait=True, timeout=10.0)
            await store._migrate()
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, psycopg.Error):
                raise Unavailable(store._unavailable_text(exc)) from None
            raise
        store._tasks.append(asyncio.create_task(store._roller(), name="matrix-pg-roller"))
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await self._pool.close()

    async def _migrate(self) -> None:
        # a migration may run long: no call deadline (keepalives and tcp_user_timeout still apply)
        with call_deadline(math.inf):
            await self._migrate_now()

    async def _migrate_now(self) -> None:
        async with self._pool.connection() as c, c.transaction():
            await c.execute(sql.XACT_LOCK, (MIGRATION_LOCK,))
            await c.execute(sql.CREATE_SCHEMA_MIGRATIONS)
            done = {r["version"] for r in await fetch_all(c, sql.APPLIED_MIGRATIONS)}
            for version, script in MIGRATIONS:
                if version in done:
                    continue
                for statement in (s.strip() for s in script.split(";\n")):
                    if statement:
                        await c.execute(statement.encode())
                await c.execute(
                    sql.RECORD_MIGRATION,
                    (version, time.time()),
                )
                log.info("applied migration %s", version)

    def _unavailable_text(self, exc: BaseException) -> str:
        detail = redact_text(
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, (self._secret,)
        )
        return f"the PostgreSQL database is unavailable ({detail}); retry the call"

    # ---- plumbing -------------------------------------------------------------------------------

    async def with_retry(self, attempt_fn: Callable[[], Awaitable[T]], deadline: float = math.inf) -> T:
        """Run attempt_fn, retrying transient database errors with jittered backoff for a short budget,
        and answer Unavailable by the call's deadline (the store's, or the monotonic `deadline` if earlier):
        a connection still in use then is cut off (store/postgres/deadline.py)."""
        at = min(time.monotonic() + self._deadline, deadline)
        budget = min(time.monotonic() + RETRY_BUDGET, at)
        delay = 0.02
        with call_deadline(at):
            while True:
                if self._closed:
                    raise Unavailable("the store is closed")
                try:
                    return await attempt_fn()
                except psycopg.Error as exc:
                    if not transient(exc):
                        raise StoreError(
                            f"database error: {redact_text(str(exc), (self._secret,))}"
                        ) from None
                    if time.monotonic() >= at:
                        raise Unavailable(self._late_text()) from None
                    if time.monotonic() + delay > budget:
                        raise Unavailable(self._unavailable_text(exc)) from None
                    log.info("transient database error, retrying: %s", redact_text(str(exc), (self._secret,)))
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.5)

    def _late_text(self) -> str:
        return (
            f"the PostgreSQL database did not answer within {self._deadline:g} s"
            " (MATRIX_DB_DEADLINE_SECONDS); retry the call"
        )

    async def write(
        self,
        fn: Callable[[Tx], Awaitable[T]],
        atomic: bool = False,
        merge: ClaimArgs | CompleteArgs | ReviewArgs | None = None,
        journal: TypeAdapter[T] | None = None,
    ) -> T:
        """Run `fn` in the next group-commit batch; its effects commit with the batch or not at all.

        atomic=True: fn either raises before changing any row or sets `tx.wrote` after its only write,
        so it runs without a SAVEPOINT (two round trips fewer); if it fails after writing, the batch
        is rolled back and re-run with a savepoint around every request.

        journal: for writes that must not run twice — the answer is stored with the batch, and a
        retry after a lost answer returns it instead of running `fn` again."""
        if self._closed:
            raise Unavailable("the store is closed")
        request = BatchRequest(fn, atomic, merge, journal, deadline=time.monotonic() + self._deadline)
        return await self.group_commit.submit(request)  # type: ignore[no-any-return]

    async def _commit(self, batch: list[BatchRequest]) -> None:
        # the batch answers by its earliest request's deadline: a writer queued behind a stuck batch
        # waits at most its own deadline in all
        deadline = min(req.deadline for req in batch)
        await self.with_retry(functools.partial(self._run_batch, batch), deadline)

    async def _run_batch(self, batch: list[BatchRequest]) -> None:
        try:
            if all(req.atomic for req in batch):
                await self._run_batch_pipelined(batch)
            else:
                await self._run_batch_once(batch, safe=False)
        except NeedSafe:
            await self._run_batch_once(batch, safe=True)

    async def _run_batch_pipelined(self, batch: list[BatchRequest]) -> None:
        """A batch of atomic requests (claims, completes, heartbeats) in pipeline mode: BEGIN goes out
        with the first statement, the deltas, the events and COMMIT with one Sync, so a lone claim or
        complete costs two round trips. A database error rolls the whole batch back (non-transient
        ones re-run it with a savepoint per request, outside pipeline mode)."""
        async with self._pool.connection() as conn:
            try:
                async with conn.pipeline():
                    await conn.execute(sql.BEGIN)
                    notify = await self._batch_body(conn, batch, safe=False, pipelined=True)
                    await conn.execute(sql.COMMIT)
            except BaseException:
                if conn.info.transaction_status in IN_TRANSACTION:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute(sql.ROLLBACK)
                raise
        self._after_commit(notify)

    async def _run_batch_once(self, batch: list[BatchRequest], safe: bool) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            notify = await self._batch_body(conn, batch, safe, pipelined=False)
        self._after_commit(notify)

    async def _batch_body(
        self, conn: Conn, batch: list[BatchRequest], safe: bool, pipelined: bool
    ) -> bool | None:
        """Run the batch's requests and write its deltas and events; returns None when it wrote no
        event, else whether its events statement sent the NOTIFY."""
        state = Batch()
        for req in batch:
            req.error = None
            req.value = None
            req.handled = False
            req.recovered = False
            req.rest = None
        await recover_claims(conn, batch)
        await recover_answers(conn, batch)
        for req in batch:
            req.tried = True
        if not safe and any(req.merge is not None for req in batch):
            try:
                await merged(conn, state, batch)
                await review_many(conn, state, batch)
            except psycopg.Error as exc:
                if transient(exc):
                    raise
                raise NeedSafe from exc
            except Exception as exc:
                raise NeedSafe from exc
        for req in batch:
            if req.handled:
                continue
            tx = Tx(conn, state)
            if req.atomic and not safe:
                try:
                    with acting_as(req.principal):
                        req.value = await (req.rest or req.fn)(tx)
                except psycopg.Error as exc:
                    if transient(exc):
                        raise
                    raise NeedSafe from exc  # the transaction is aborted: redo with savepoints
                except Exception as exc:
                    if tx.wrote:
                        raise NeedSafe from exc
                    tx.failed()
                    req.error = exc
                else:
                    tx.succeeded()
                continue
            try:
                async with conn.transaction():
                    with acting_as(req.principal):
                        req.value = await (req.rest or req.fn)(tx)
            except psycopg.Error as exc:
                if transient(exc):
                    raise
                tx.failed()
                req.error = StoreError(f"database error: {redact_text(str(exc), (self._secret,))}")
            except Exception as exc:
                tx.failed()
                req.error = exc
            else:
                tx.succeeded()
        if not state.events:
            async with contextlib.nullcontext() if pipelined else conn.pipeline():
                await journal_answers(conn, batch)
                await write_deltas(conn, state.deltas)
            return None
        cols = list(zip(*state.events, strict=True))
        notify = time.monotonic() - self._last_notify >= NOTIFY_DEBOUNCE
        async with contextlib.nullcontext() if pipelined else conn.pipeline():
            await journal_answers(conn, batch)
            await write_deltas(conn, state.deltas)
            await conn.execute(sql.XACT_LOCK, (EVENTS_LOCK,))
            await conn.execute(
                sql.INSERT_EVENTS,
                [*(list(c) for c in cols), notify, NOTIFY_CHANNEL],
            )
        return notify

    def _after_commit(self, notify: bool | None) -> None:
        if notify is None:
            return
        if notify:
            self._last_notify = time.monotonic()
        elif not self._notify_owed:
            self._notify_owed = True
            self._tasks.append(asyncio.create_task(self._trailing_notify()))

    async def _trailing_notify(self) -> None:
        """A debounced NOTIFY skipped during a burst is sent once the burst window has passed."""
        try:
            await asyncio.sleep(NOTIFY_DEBOUNCE)
            self._notify_owed = False
            self._last_notify = time.monotonic()
            async with self._pool.connection(timeout=POOL_WAIT) as c:
                await c.execute(sql.NOTIFY, (NOTIFY_CHANNEL,))
        except Exception:  # the poll fallback covers a lost notification
            self._notify_owed = False
        finally:
            task = asyncio.current_task()
            if task in self._tasks:
                self._tasks.remove(task)  # type: ignore[arg-type]

    async def read(self, fn: Callable[[Conn], Awaitable[T]], snapshot: bool = False) -> T:
        """Run fn on a pooled connection: autocommit (one statement = one snapshot) or, with
        snapshot=True, inside a REPEATABLE READ READ ONLY transaction."""

        async def attempt() -> T:
            async with self._pool.connection() as conn:
                if not snapshot:
                    return await fn(conn)
                await conn.execute(sql.BEGIN_SNAPSHOT)
                try:
                    value = await fn(conn)
                except BaseException:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute(sql.ROLLBACK)
                    raise
                await conn.execute(sql.COMMIT)
                return value

        return await self.with_retry(attempt)

    def wake(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    # ---- background: counter roll-up and LISTEN ------------------------------------------------

    async def _roller(self) -> None:
        pruned = time.monotonic()
        while not self._closed:
            await asyncio.sleep(ROLL_INTERVAL * (0.75 + random.random() / 2))
            try:
                await self.roll_up()
                if time.monotonic() - pruned >= ANSWERS_PRUNE_INTERVAL:
                    await self.prune_answers(time.time() - ANSWERS_KEEP)
                    pruned = time.monotonic()
            except Exception as exc:  # retried next round; the deltas stay readable meanwhile
                log.debug("counter roll-up skipped: %s", redact_text(str(exc), (self._secret,)))

    async def prune_answers(self, before: float) -> int:
        """Drop journaled write answers (see recover_answers) written before `before`; returns how many."""
        async with self._pool.connection(timeout=POOL_WAIT) as c:
            cur = await c.execute(sql.PRUNE_ANSWERS, (before,))
            return cur.rowcount

    async def roll_up(self) -> int:
        """Fold the appended counter deltas into the package rows; returns how many deltas were folded.
        At most one roller runs at a time across all processes (the others skip)."""
        folded = 0
        async with self._pool.connection(timeout=POOL_WAIT) as c:
            while True:
                async with c.transaction():
                    got = await fetch_one(c, sql.TRY_XACT_LOCK, (ROLLUP_LOCK,))
                    if not got or not got["ok"]:
                        return folded
                    row = await fetch_one(c, ROLLUP_SQL, {"chunk": ROLL_CHUNK})
                    n = int(row["n"]) if row else 0
                folded += n
                if n < ROLL_CHUNK:
                    return folded

    async def _listen(self) -> None:
        delay = 0.2
        conninfo = make_conninfo(self._url, **connect_params(self._url, self._deadline))
        while not self._closed:
            try:
                conn = await AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=3)
                self.listening = conn
                async with conn:
                    await conn.execute(sql.LISTEN)
                    delay = 0.2
                    self.wake()  # anything missed while not listening is picked up by the poll
                    while True:
                        async for _ in conn.notifies(timeout=LISTEN_PING):
                            self.wake()
                        await self._ping(conn)  # quiet: make sure the link is still there
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("LISTEN connection lost: %s", redact_text(str(exc), (self._secret,)))
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    async def _ping(self, conn: AsyncConnection[Any]) -> None:
        """One round trip, cut off at the deadline: a silent (black-holed) connection fails with
        OperationalError instead of being listened on forever."""
        handle = asyncio.get_running_loop().call_later(self._deadline, cut, conn)
        try:
            await conn.execute(sql.PING)
        finally:
            handle.cancel()

    async def wait_for_change(self, since: int, *, timeout: float) -> int:
        """Wakes on this process's commits at once, on other processes' through LISTEN/NOTIFY, and
        polls every POLL_FALLBACK seconds in case a notification is lost."""
        if self._listener is None and not self._closed:
            self._listener = asyncio.create_task(self._listen(), name="matrix-pg-listen")
        deadline = anyio.current_time() + timeout
        while True:
            changed = self._changed
            latest = await events.latest_seq(self)
            remaining = deadline - anyio.current_time()
            if latest > since or remaining <= 0:
                return latest
            with anyio.move_on_after(min(POLL_FALLBACK, remaining)):
                await changed.wait()
