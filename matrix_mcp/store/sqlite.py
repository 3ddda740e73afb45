"""The embedded SQLite outcome store on aiosqlite.

- WAL, busy_timeout, foreign keys on; several server processes may share one file.
- One writer connection per process. Concurrent write requests are merged into one
  `BEGIN IMMEDIATE` transaction (group commit); each request runs inside its own SAVEPOINT so one
  bad request rolls back alone. The whole batch runs as one function on the writer's thread.
- Reads run on their own connections inside a read transaction (one consistent snapshot).
- Summary counters live on the package rows and change in the same transaction as the outcome.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite
import anyio
import anyio.lowlevel

from matrix_mcp.audit import acting_as, current_principal, stamped
from matrix_mcp.models import (
    STATUSES,
    Event,
    HeartbeatResult,
    HourBucket,
    IntegrationEvent,
    LeaseRef,
    LeaseState,
    Outcome,
    OutcomeDetail,
    OutcomePage,
    PackageSummary,
    PlanResult,
    RecountReport,
    Run,
    RunAction,
    RunPolicy,
    Status,
    SystemMetrics,
    ts,
)
from matrix_mcp.store import rows as R
from matrix_mcp.store.base import (
    ApiKey,
    Cell,
    Claim,
    ClaimBatch,
    Conflict,
    ContentFile,
    MinuteCount,
    NewPackage,
    NextClaim,
    NotFound,
    OutcomeFilter,
    Report,
    Reported,
    RunOverview,
    StaleLease,
    StoreError,
    Unavailable,
)
from matrix_mcp.store.sqlite_schema import MIGRATIONS

if TYPE_CHECKING:
    from matrix_mcp.store.sqlite_hooks import SQLiteHooks

log = logging.getLogger("matrix_mcp.store.sqlite")
T = TypeVar("T")
Op = Callable[[sqlite3.Connection], T]

BUSY_TIMEOUT_MS = 60_000
SWEEP_LIMIT = 500
READERS = 2

_RUN_SELECT = """
SELECT r.*, COUNT(p.id) AS packages,
       COALESCE(SUM(p.pending), 0) AS pending, COALESCE(SUM(p.generating), 0) AS generating,
       COALESCE(SUM(p.complete), 0) AS complete, COALESCE(SUM(p.failed), 0) AS failed,
       COALESCE(SUM(p.cancelled), 0) AS cancelled
FROM runs r LEFT JOIN packages p ON p.run_id = r.id
"""

_OUTCOME_SELECT = """
SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, p.name AS package_name
FROM outcomes o JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = o.package_id
"""

_COUNTER_COLUMNS = ("duration_sum", "duration_n", "lines_sum", "quality_sum", "quality_n")
# Status counter columns are a closed set: one prepared statement per (from, to) pair.
_MOVE_SQL = {
    (a, b): "UPDATE packages SET " + a + " = " + a + " - 1, " + b + " = " + b + " + 1 WHERE id = ?"
    for a in STATUSES
    for b in STATUSES
    if a != b
}
_MOVE_CONTRIB_SQL = {
    (a, b): "UPDATE packages SET "
    + a
    + " = "
    + a
    + " - 1, "
    + b
    + " = "
    + b
    + " + 1, duration_sum = duration_sum + ?,"
    " duration_n = duration_n + ?, lines_sum = lines_sum + ?, quality_sum = quality_sum + ?,"
    " quality_n = quality_n + ? WHERE id = ?"
    for a in STATUSES
    for b in STATUSES
    if a != b
}


def _is_busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


async def _in_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(sqlite3_connection, *args) on the aiosqlite connection's own thread, in one hop.

    aiosqlite's public methods cost one thread hop per statement; a group-commit batch or a
    multi-statement snapshot read runs as one function instead.
    """
    return await conn._execute(fn, conn._conn, *args)  # type: ignore[no-untyped-call,no-any-return]


class _Request:
    __slots__ = ("done", "error", "fn", "principal", "value")

    def __init__(self, fn: Op[Any]) -> None:
        self.fn = fn
        self.principal = current_principal.get()  # who queued it: its events record them
        self.done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class SQLiteStore:
    """See the module docstring. Open with `await SQLiteStore.open(path)`."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, readers: list[aiosqlite.Connection]) -> None:
        self.path = path
        self.url_for_display = f"sqlite:///{path}"
        self._writer = writer
        self._inline: aiosqlite.Connection | None = None  # busy_timeout 0: batches run on the event loop
        self._readers = readers
        self._reader_locks = [anyio.Lock() for _ in readers]
        self._next_reader = 0
        self._queue: list[_Request] = []
        self._leading = False
        self._changed = anyio.Event()
        self._closed = False

    # ---- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path) -> SQLiteStore:
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        writer = await cls._connect(path)
        store = cls(path, writer, [])
        await store._migrate()
        store._inline = await cls._connect(path, busy_ms=0)
        store._readers = [await cls._connect(path, reader=True) for _ in range(READERS)]
        store._reader_locks = [anyio.Lock() for _ in store._readers]
        return store

    @staticmethod
    async def _connect(
        path: Path, reader: bool = False, busy_ms: int = BUSY_TIMEOUT_MS
    ) -> aiosqlite.Connection:
        # check_same_thread=False: the inline writer runs on the event loop, not aiosqlite's thread; the
        # group-commit leader guarantees no two writes run at once.
        conn = await aiosqlite.connect(
            str(path), isolation_level=None, timeout=busy_ms / 1000, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row

        def setup(c: sqlite3.Connection) -> None:
            c.execute("PRAGMA busy_timeout = " + str(busy_ms))
            for _ in range(100):
                try:
                    c.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    time.sleep(0.05)
            c.execute("PRAGMA synchronous = NORMAL")
            c.execute("PRAGMA foreign_keys = ON")
            if reader:
                c.execute("PRAGMA query_only = ON")

        await _in_thread(conn, setup)
        return conn

    @property
    def hooks(self) -> SQLiteHooks:
        """Subscriptions and deliveries for events out (store/hooks.py)."""
        from matrix_mcp.store.sqlite_hooks import SQLiteHooks

        return SQLiteHooks(self)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in [self._writer, *([self._inline] if self._inline else []), *self._readers]:
            await conn.close()

    async def _migrate(self) -> None:
        def migrate(c: sqlite3.Connection) -> None:
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)"
            )
            done = {r[0] for r in c.execute("SELECT version FROM schema_migrations")}
            for version, script in MIGRATIONS:
                if version in done:
                    continue
                # executescript commits first; statements then run inside our own transaction
                statements = [s.strip() for s in script.split(";\n") if s.strip()]
                c.execute("BEGIN IMMEDIATE")
                try:
                    if c.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                        c.execute("ROLLBACK")
                        continue
                    for statement in statements:
                        c.execute(statement)
                    c.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
                    c.execute("COMMIT")
                    log.info("applied migration %s", version)
                except BaseException:
                    c.execute("ROLLBACK")
                    raise

        await _in_thread(self._writer, migrate)

    # ---- plumbing -------------------------------------------------------------------------------

    async def _write(self, fn: Op[T]) -> T:
        """Run `fn` in the next group-commit batch; its effects commit with the batch or not at all."""
        if self._closed:
            raise Unavailable("the store is closed")
        request = _Request(fn)
        self._queue.append(request)
        if not self._leading:
            self._leading = True
            try:
                with anyio.CancelScope(shield=True):
                    # let every task that is ready to write join this batch (group commit) before it runs
                    await anyio.lowlevel.checkpoint()
                    while self._queue:
                        batch, self._queue = self._queue, []
                        try:
                            # Inline on the event loop, on a connection that never waits for the write
                            # lock (a batch is a few hundred microseconds of work); when another process
                            # holds the lock, wait for it on the writer's thread instead.
                            assert self._inline is not None
                            if not self._run_batch(self._inline._conn, batch, wait=False):
                                await _in_thread(self._writer, self._run_batch, batch, True)
                        except BaseException as exc:  # the connection itself failed
                            for req in batch:
                                req.error = Unavailable(f"the SQLite store failed: {exc}")
                        for req in batch:
                            req.done.set()
                        changed, self._changed = self._changed, anyio.Event()
                        changed.set()
            finally:
                self._leading = False
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.value  # type: ignore[no-any-return]

    @staticmethod
    def _run_batch(c: sqlite3.Connection, batch: list[_Request], wait: bool = True) -> bool:
        """Run the batch in one transaction (retrying it whole while the database is busy). With
        wait=False (inline on the event loop), return False, having committed nothing, as soon as the
        database is busy, so the caller can retry on the writer's thread, where waiting blocks nobody."""
        inline = not wait
        for attempt in range(50):
            try:
                if wait:
                    c.execute("BEGIN IMMEDIATE")
                else:  # on the inline connection (busy_timeout 0): busy means "not now", at once
                    try:
                        c.execute("BEGIN IMMEDIATE")
                    except sqlite3.OperationalError as exc:
                        if _is_busy(exc):
                            return False
                        raise
                if len(batch) == 1:  # alone in its transaction: no savepoint needed
                    req = batch[0]
                    req.error = None
                    try:
                        with acting_as(req.principal):
                            req.value = req.fn(c)
                    except Exception as exc:
                        if _is_busy(exc):
                            raise
                        c.execute("ROLLBACK")
                        req.error = exc
                        return True
                    c.execute("COMMIT")
                    return True
                for req in batch:
                    req.error = None
                    c.execute("SAVEPOINT op")
                    try:
                        with acting_as(req.principal):
                            req.value = req.fn(c)
                        c.execute("RELEASE op")
                    except Exception as exc:
                        if _is_busy(exc):
                            raise
                        c.execute("ROLLBACK TO op")
                        c.execute("RELEASE op")
                        req.error = exc
                c.execute("COMMIT")
                return True
            except sqlite3.OperationalError as exc:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                if inline and _is_busy(exc):
                    return False
                if not _is_busy(exc) or attempt == 49:
                    for req in batch:
                        req.error = Unavailable(f"the SQLite database is busy; retry the call ({exc})")
                    return True
                time.sleep(min(0.5, 0.005 * 2**attempt) * random.random())
        return True  # pragma: no cover - the loop always returns

    async def _read(self, fn: Op[T]) -> T:
        if self._closed:
            raise Unavailable("the store is closed")
        index = self._next_reader = (self._next_reader + 1) % len(self._readers)
        conn = self._readers[index]

        def in_snapshot(c: sqlite3.Connection) -> T:
            for attempt in range(50):
                try:
                    c.execute("BEGIN")
                    try:
                        return fn(c)
                    finally:
                        c.execute("COMMIT")
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or attempt == 49:
                        raise
                    time.sleep(0.01 * random.random())
            raise AssertionError("unreachable")

        async with self._reader_locks[index]:
            return await _in_thread(conn, in_snapshot)

    # ---- runs and planning ----------------------------------------------------------------------

    async def plan(
        self, name: str, goal: str | None, policy: RunPolicy, packages: Sequence[NewPackage], now: float
    ) -> PlanResult:
        def op(c: sqlite3.Connection) -> PlanResult:
            row = c.execute("SELECT id, state FROM runs WHERE name = ?", (name,)).fetchone()
            created = row is None
            if created:
                run_id = str(uuid.uuid4())
                c.execute(
                    "INSERT INTO runs (id, name, goal, outcome_type, lease_seconds, max_attempts,"
                    " backoff_seconds, backoff_cap_seconds, outcome_schema, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        name,
                        goal,
                        policy.outcome_type,
                        policy.lease_seconds,
                        policy.max_attempts,
                        policy.backoff_seconds,
                        policy.backoff_cap_seconds,
                        R.spec_dumps(policy.outcome_schema),
                        now,
                        now,
                    ),
                )
            else:
                run_id = row["id"]
                if row["state"] == "cancelled" and any(p.items for p in packages):
                    raise Conflict(f"run '{name}' is cancelled; plan a new run", field="name")
            outcome_type = c.execute("SELECT outcome_type FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
            added_packages: list[str] = []
            added_items = 0
            next_pos = c.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM packages WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            for pkg in packages:
                prow = c.execute(
                    "SELECT id FROM packages WHERE run_id = ? AND name = ?", (run_id, pkg.name)
                ).fetchone()
                if prow is None:
                    cur = c.execute(
                        "INSERT INTO packages (run_id, name, description, position) VALUES (?, ?, ?, ?)",
                        (run_id, pkg.name, pkg.description, next_pos),
                    )
                    package_id = cur.lastrowid
                    next_pos += 1
                    added_packages.append(pkg.name)
                    item_pos = 0
                else:
                    package_id = prow["id"]
                    item_pos = c.execute(
                        "SELECT COALESCE(MAX(position) + 1, 0) FROM outcomes WHERE package_id = ?",
                        (package_id,),
                    ).fetchone()[0]
                before = c.total_changes
                c.executemany(
                    "INSERT OR IGNORE INTO outcomes (id, run_id, package_id, item, position, status,"
                    " outcome_type, specifications, available_at, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                    [
                        (
                            str(uuid.uuid4()),
                            run_id,
                            package_id,
                            item.name,
                            item_pos + i,
                            outcome_type,
                            R.spec_dumps(item.specifications),
                            now,
                            now,
                            now,
                        )
                        for i, item in enumerate(pkg.items)
                    ],
                )
                added = c.total_changes - before
                if added:
                    c.execute(
                        "UPDATE packages SET total = total + ?, pending = pending + ? WHERE id = ?",
                        (added, added, package_id),
                    )
                    added_items += added
            if created or added_items or added_packages:
                c.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (now, run_id))
                _event(
                    c,
                    run_id,
                    None,
                    "run_planned" if created else "run_extended",
                    {"packages": added_packages, "items": added_items},
                    now,
                )
            run = _run(c, run_id)
            return PlanResult(
                run=run,
                created=created,
                packages=run.packages,
                items=run.counts.total,
                added_packages=added_packages,
                added_items=added_items,
            )

        return await self._write(op)

    async def get_run(self, ref: str) -> Run:
        return await self._read(lambda c: _run(c, _run_id(c, ref)))

    async def list_runs(self) -> list[Run]:
        def op(c: sqlite3.Connection) -> list[Run]:
            rows = c.execute(_RUN_SELECT + " GROUP BY r.id ORDER BY r.created_at, r.name").fetchall()
            return [R.run_from(r) for r in rows]

        return await self._read(op)

    async def control_run(self, run_id: str, action: RunAction, now: float) -> Run:
        def op(c: sqlite3.Connection) -> Run:
            state = c.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if state is None:
                raise NotFound(f"unknown run '{run_id}'", field="run")
            current = state[0]
            if action == "pause":
                if current == "cancelled":
                    raise Conflict("the run is cancelled; it cannot be paused", field="action")
                target = "paused"
            elif action == "resume":
                if current == "cancelled":
                    raise Conflict("the run is cancelled; cancellation is final", field="action")
                target = "active"
            else:
                target = "cancelled"
            if target != current:
                c.execute("UPDATE runs SET state = ?, updated_at = ? WHERE id = ?", (target, now, run_id))
                extra: dict[str, Any] = {}
                if target == "cancelled":
                    extra["cancelled_items"] = _cancel_pending(c, run_id, now)
                _event(
                    c, run_id, None, f"run_{action}d" if action != "cancel" else "run_cancelled", extra, now
                )
            return _run(c, run_id)

        return await self._write(op)

    # ---- the work loop --------------------------------------------------------------------------

    async def claim(
        self,
        run_id: str,
        worker: str,
        limit: int,
        package: str | None,
        now: float,
        token_factory: Callable[[], str],
    ) -> ClaimBatch:
        def op(c: sqlite3.Connection) -> ClaimBatch:
            return _claim(c, run_id, worker, limit, package, now, token_factory)

        return await self._write(op)

    async def heartbeat(self, leases: Sequence[LeaseRef], now: float) -> HeartbeatResult:
        def op(c: sqlite3.Connection) -> HeartbeatResult:
            extended: list[LeaseState] = []
            lost: list[str] = []
            cancelled: list[str] = []
            for lease in leases:
                row = c.execute(
                    "SELECT o.n, o.status, o.lease_token, r.state, r.lease_seconds FROM outcomes o"
                    " JOIN runs r ON r.id = o.run_id WHERE o.id = ?",
                    (lease.outcome_id,),
                ).fetchone()
                if row is None or row["status"] != "generating" or row["lease_token"] != lease.lease_token:
                    lost.append(lease.outcome_id)
                    continue
                expires = now + float(row["lease_seconds"])
                c.execute(
                    "UPDATE outcomes SET lease_expires_at = ?, updated_at = ? WHERE n = ?",
                    (expires, now, row["n"]),
                )
                if row["state"] == "cancelled":
                    cancelled.append(lease.outcome_id)
                extended.append(LeaseState(outcome_id=lease.outcome_id, lease_expires_at=ts(expires)))
            return HeartbeatResult(extended=extended, lost=lost, cancelled=cancelled)

        return await self._write(op)

    async def complete(
        self,
        outcome_id: str,
        lease_token: str,
        report: Report,
        now: float,
        next_claim: NextClaim | None = None,
    ) -> Reported:
        def op(c: sqlite3.Connection) -> Reported:
            row = _leased_row(c, outcome_id, lease_token)
            if row["status"] == "complete":
                if R.same_report(row, report):
                    return Reported(
                        _outcome(c, outcome_id), _claim_next(c, row, lease_token, next_claim, now, False)
                    )
                raise Conflict(
                    "the item is already complete with a different report; repeat the identical report or "
                    "use update_outcome_status",
                    field="outcome_id",
                )
            if row["status"] != "generating":
                raise StaleLease(R.lost_lease_message(row), field="lease_token")
            duration = max(0.0, now - row["started_at"]) if row["started_at"] is not None else None
            c.execute(
                "UPDATE outcomes SET status = 'complete', completed_at = ?, duration_seconds = ?, updated_at = ?,"
                " lease_expires_at = NULL, error_message = NULL, metrics = ?, metadata = ?,"
                " outcome_path = COALESCE(?, outcome_path), content_sha256 = ?, content_bytes = ?, mime_type = ?"
                " WHERE n = ?",
                (
                    now,
                    duration,
                    now,
                    R.dumps(report.metrics),
                    R.dumps(report.metadata),
                    report.outcome_path,
                    report.content_sha256,
                    report.content_bytes,
                    report.mime_type,
                    row["n"],
                ),
            )
            _end_attempt(c, outcome_id, lease_token, "complete", None, now)
            _move(c, row["package_id"], "generating", "complete", R.contribution(report.metrics, duration))
            if duration is not None:
                _add_histogram(c, row["package_id"], duration, +1)
            _set_metrics(c, outcome_id, report.metrics, replace=False)
            _minute(c, row["run_id"], now, completed=1, duration=duration)
            _event(
                c,
                row["run_id"],
                outcome_id,
                "completed",
                {"package": row["package_name"], "item": row["item"], "duration": duration},
                now,
            )
            done = dict(row)
            done.update(
                status="complete",
                completed_at=now,
                duration_seconds=duration,
                updated_at=now,
                lease_expires_at=None,
                error_message=None,
                metrics=R.dumps(report.metrics),
                metadata=R.dumps(report.metadata),
                outcome_path=report.outcome_path or row["outcome_path"],
                content_sha256=report.content_sha256,
                content_bytes=report.content_bytes,
                mime_type=report.mime_type,
            )
            return Reported(R.outcome_from(done), _claim_next(c, row, lease_token, next_claim, now, True))

        return await self._write(op)

    async def fail(
        self,
        outcome_id: str,
        lease_token: str,
        error: str,
        retryable: bool,
        now: float,
        backoff: Callable[[int], float],
        next_claim: NextClaim | None = None,
    ) -> Reported:
        def op(c: sqlite3.Connection) -> Reported:
            row = _leased_row(c, outcome_id, lease_token)
            if row["status"] != "generating":
                attempt = c.execute(
                    "SELECT status, error FROM outcome_attempts WHERE outcome_id = ? AND lease_token = ?",
                    (outcome_id, lease_token),
                ).fetchone()
                if attempt is not None and attempt["status"] == "failed" and attempt["error"] == error:
                    # the identical report, repeated
                    return Reported(
                        _outcome(c, outcome_id), _claim_next(c, row, lease_token, next_claim, now, False)
                    )
                raise StaleLease(R.lost_lease_message(row), field="lease_token")
            run = c.execute("SELECT state, max_attempts FROM runs WHERE id = ?", (row["run_id"],)).fetchone()
            attempts = int(row["attempts"])
            _end_attempt(c, outcome_id, lease_token, "failed", error, now)
            if retryable and attempts < int(run["max_attempts"]) and run["state"] != "cancelled":
                delay = max(0.0, float(backoff(attempts)))
                c.execute(
                    "UPDATE outcomes SET status = 'pending', available_at = ?, lease_expires_at = NULL,"
                    " error_message = ?, updated_at = ? WHERE n = ?",
                    (now + delay, error, now, row["n"]),
                )
                _move(c, row["package_id"], "generating", "pending")
                _event(
                    c,
                    row["run_id"],
                    outcome_id,
                    "retry_scheduled",
                    {
                        "package": row["package_name"],
                        "item": row["item"],
                        "attempt": attempts,
                        "delay": round(delay, 3),
                        "error": error[:500],
                    },
                    now,
                )
            else:
                target: Status = "cancelled" if run["state"] == "cancelled" and retryable else "failed"
                duration = max(0.0, now - row["started_at"]) if row["started_at"] is not None else None
                c.execute(
                    "UPDATE outcomes SET status = ?, completed_at = ?, duration_seconds = ?,"
                    " lease_expires_at = NULL, error_message = ?, updated_at = ? WHERE n = ?",
                    (target, now, duration, error, now, row["n"]),
                )
                _move(c, row["package_id"], "generating", target)
                if target == "failed":
                    _minute(c, row["run_id"], now, failed=1)
                _event(
                    c,
                    row["run_id"],
                    outcome_id,
                    target,
                    {
                        "package": row["package_name"],
                        "item": row["item"],
                        "attempt": attempts,
                        "error": error[:500],
                    },
                    now,
                )
            return Reported(_outcome(c, outcome_id), _claim_next(c, row, lease_token, next_claim, now, True))

        return await self._write(op)

    async def retry(
        self, run_id: str, package: str | None, outcome_ids: Sequence[str] | None, now: float
    ) -> list[str]:
        def op(c: sqlite3.Connection) -> list[str]:
            state = c.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if state is None:
                raise NotFound(f"unknown run '{run_id}'", field="run")
            if state[0] == "cancelled":
                raise Conflict("the run is cancelled; plan a new run to redo its items", field="run")
            sql = "SELECT o.n, o.id, o.package_id FROM outcomes o"
            args: list[Any] = []
            where = ["o.run_id = ?", "o.status = 'failed'"]
            args.append(run_id)
            if package is not None:
                pid = c.execute(
                    "SELECT id FROM packages WHERE run_id = ? AND name = ?", (run_id, package)
                ).fetchone()
                if pid is None:
                    raise NotFound(f"unknown package '{package}' in this run", field="package")
                where.append("o.package_id = ?")
                args.append(pid[0])
            rows = c.execute(sql + " WHERE " + " AND ".join(where) + " ORDER BY o.n", args).fetchall()
            if outcome_ids is not None:
                wanted = set(outcome_ids)
                rows = [r for r in rows if r["id"] in wanted]
            for r in rows:
                c.execute(
                    "UPDATE outcomes SET status = 'pending', attempts = 0, available_at = ?, completed_at = NULL,"
                    " duration_seconds = NULL, updated_at = ? WHERE n = ?",
                    (now, now, r["n"]),
                )
                _move(c, r["package_id"], "failed", "pending")
            ids = [r["id"] for r in rows]
            if ids:
                _event(c, run_id, None, "requeued", {"count": len(ids), "outcome_ids": ids[:100]}, now)
            return ids

        return await self._write(op)

    # ---- the seed's tracking API ----------------------------------------------------------------

    async def record_outcome(
        self,
        run_id: str,
        package: str,
        item: str,
        status: Status,
        outcome_type: str | None,
        specifications: dict[str, Any] | str | None,
        report: Report,
        error_message: str | None,
        created_by: str | None,
        now: float,
    ) -> tuple[Outcome, bool]:
        def op(c: sqlite3.Connection) -> tuple[Outcome, bool]:
            run = c.execute("SELECT outcome_type, state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if run is None:
                raise NotFound(f"unknown run '{run_id}'", field="run")
            prow = c.execute(
                "SELECT id FROM packages WHERE run_id = ? AND name = ?", (run_id, package)
            ).fetchone()
            if prow is None:
                pos = c.execute(
                    "SELECT COALESCE(MAX(position) + 1, 0) FROM packages WHERE run_id = ?", (run_id,)
                ).fetchone()[0]
                package_id = c.execute(
                    "INSERT INTO packages (run_id, name, position) VALUES (?, ?, ?)", (run_id, package, pos)
                ).lastrowid
            else:
                package_id = prow[0]
            existing = c.execute(
                "SELECT id FROM outcomes WHERE package_id = ? AND item = ?", (package_id, item)
            ).fetchone()
            if existing is not None:
                return _update_status(c, existing[0], status, error_message, report, now, created_by), False
            outcome_id = str(uuid.uuid4())
            pos = c.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM outcomes WHERE package_id = ?", (package_id,)
            ).fetchone()[0]
            c.execute(
                "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type,"
                " specifications, created_by, available_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
                (
                    outcome_id,
                    run_id,
                    package_id,
                    item,
                    pos,
                    outcome_type or run["outcome_type"],
                    R.spec_dumps(specifications),
                    created_by,
                    now,
                    now,
                    now,
                ),
            )
            c.execute(
                "UPDATE packages SET total = total + 1, pending = pending + 1 WHERE id = ?", (package_id,)
            )
            _event(
                c, run_id, outcome_id, "recorded", {"package": package, "item": item, "status": status}, now
            )
            if status == "pending" and report == Report() and error_message is None:
                return _outcome(c, outcome_id), True
            return _update_status(c, outcome_id, status, error_message, report, now, created_by), True

        return await self._write(op)

    async def update_status(
        self, outcome_id: str, status: Status, error_message: str | None, report: Report | None, now: float
    ) -> Outcome:
        return await self._write(
            lambda c: _update_status(c, outcome_id, status, error_message, report, now, None)
        )

    async def get_outcome(self, outcome_id: str, history: bool = False) -> OutcomeDetail:
        def op(c: sqlite3.Connection) -> OutcomeDetail:
            row = c.execute(_OUTCOME_SELECT + " WHERE o.id = ?", (outcome_id,)).fetchone()
            if row is None:
                raise NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")
            hist = []
            if history:
                hist = c.execute(
                    "SELECT attempt, worker, status, error, started_at, ended_at FROM outcome_attempts"
                    " WHERE outcome_id = ? ORDER BY started_at, attempt",
                    (outcome_id,),
                ).fetchall()
            return R.detail_from(row, hist)

        return await self._read(op)

    async def list_outcomes(self, flt: OutcomeFilter, limit: int, cursor: str | None) -> OutcomePage:
        after = R.decode_cursor(cursor)

        def op(c: sqlite3.Connection) -> OutcomePage:
            where = ["o.n > ?"]
            args: list[Any] = [after]
            if flt.run_id is not None:
                where.append("o.run_id = ?")
                args.append(flt.run_id)
            if flt.package is not None:
                where.append("p.name = ?")
                args.append(flt.package)
            if flt.status is not None:
                where.append("o.status = ?")
                args.append(flt.status)
            if flt.worker is not None:
                where.append("o.worker = ?")
                args.append(flt.worker)
            rows = c.execute(
                _OUTCOME_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY o.n LIMIT ?",
                [*args, limit + 1],
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            return OutcomePage(
                outcomes=[R.outcome_from(r) for r in rows],
                next_cursor=R.encode_cursor(rows[-1]["n"]) if more and rows else None,
            )

        return await self._read(op)

    async def iter_outcomes(self, run_id: str) -> AsyncIterator[Outcome]:
        cursor: str | None = None
        while True:
            page = await self.list_outcomes(OutcomeFilter(run_id=run_id), 1000, cursor)
            for outcome in page.outcomes:
                yield outcome
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cells(self, run_id: str) -> list[Cell]:
        return await self._read(
            lambda c: [
                Cell(r[0], r[1], r[2], r[3])
                for r in c.execute(
                    "SELECT o.id, p.name, o.item, o.status FROM outcomes o"
                    " JOIN packages p ON p.id = o.package_id WHERE o.run_id = ? ORDER BY o.n",
                    (run_id,),
                )
            ]
        )

    async def package_summaries(self, run_id: str) -> list[PackageSummary]:
        return await self._read(lambda c: _summaries(c, "p.run_id = ?", [run_id]))

    async def package_summary(self, package: str, run_id: str | None) -> PackageSummary:
        def op(c: sqlite3.Connection) -> PackageSummary:
            if run_id is not None:
                found = _summaries(c, "p.run_id = ? AND p.name = ?", [run_id, package])
            else:
                found = _summaries(c, "p.name = ?", [package])
            if not found:
                raise NotFound(f"unknown package '{package}'", field="package")
            if len(found) > 1:
                runs = ", ".join(sorted(s.run for s in found))
                raise Conflict(f"package '{package}' exists in several runs ({runs}); pass run", field="run")
            return found[0]

        return await self._read(op)

    async def system_metrics(self, run_id: str | None, now: float) -> SystemMetrics:
        def op(c: sqlite3.Connection) -> SystemMetrics:
            where, args = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
            t = c.execute(
                "SELECT COALESCE(SUM(pending),0) AS pending, COALESCE(SUM(generating),0) AS generating,"
                " COALESCE(SUM(complete),0) AS complete, COALESCE(SUM(failed),0) AS failed,"
                " COALESCE(SUM(cancelled),0) AS cancelled, COALESCE(SUM(duration_sum),0) AS ds,"
                " COALESCE(SUM(duration_n),0) AS dn, COALESCE(SUM(lines_sum),0) AS ls,"
                " COALESCE(SUM(quality_sum),0) AS qs, COALESCE(SUM(quality_n),0) AS qn"
                " FROM packages " + where,
                args,
            ).fetchone()
            since_minute = int(now // 60) - 7 * 24 * 60
            hours = c.execute(
                "SELECT minute / 60 AS hour, SUM(completed) AS completed, SUM(failed) AS failed,"
                " SUM(duration_sum) AS ds, SUM(duration_n) AS dn FROM outcome_minutes"
                " WHERE minute >= ?"
                + (" AND run_id = ?" if run_id else "")
                + " GROUP BY minute / 60 ORDER BY hour",
                [since_minute, *args],
            ).fetchall()
            counts = R.counts_from(t)
            finished = counts.complete + counts.failed
            run_name = None
            if run_id:
                run_name = c.execute("SELECT name FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
            return SystemMetrics(
                run=run_name,
                outcomes_total=counts.total,
                outcomes_pending=counts.pending,
                outcomes_generating=counts.generating,
                outcomes_complete=counts.complete,
                outcomes_failed=counts.failed,
                outcomes_cancelled=counts.cancelled,
                avg_generation_time=round(t["ds"] / t["dn"], 6) if t["dn"] else None,
                success_rate=round(counts.complete / finished, 6) if finished else None,
                total_lines_generated=float(t["ls"]),
                average_quality_score=round(t["qs"] / t["qn"], 6) if t["qn"] else None,
                outcomes_by_hour=[
                    HourBucket(
                        hour=ts(h["hour"] * 3600),  # type: ignore[arg-type]
                        completed=int(h["completed"]),
                        failed=int(h["failed"]),
                        avg_duration_seconds=round(h["ds"] / h["dn"], 6) if h["dn"] else None,
                    )
                    for h in hours
                ],
            )

        return await self._read(op)

    async def run_overview(self, run_id: str, since: float) -> RunOverview:
        def op(c: sqlite3.Connection) -> RunOverview:
            summaries = _summaries(c, "p.run_id = ?", [run_id])
            finished = c.execute(
                "SELECT COALESCE(SUM(completed + failed), 0) FROM outcome_minutes WHERE run_id = ? AND minute >= ?",
                (run_id, int(since // 60)),
            ).fetchone()[0]
            latest = c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            return RunOverview(_run(c, run_id), summaries, int(finished), int(latest))

        return await self._read(op)

    async def run_minutes(self, run_id: str, since_minute: int) -> list[MinuteCount]:
        def op(c: sqlite3.Connection) -> list[MinuteCount]:
            rows = c.execute(
                "SELECT minute, completed, failed FROM outcome_minutes WHERE run_id = ? AND minute >= ?"
                " ORDER BY minute",
                (run_id, since_minute),
            ).fetchall()
            return [MinuteCount(int(r[0]), int(r[1]), int(r[2])) for r in rows]

        return await self._read(op)

    async def record_integration(
        self,
        run_id: str | None,
        outcome_id: str | None,
        integration_type: str,
        action: str,
        status: str,
        details: dict[str, Any],
        now: float,
    ) -> IntegrationEvent:
        def op(c: sqlite3.Connection) -> IntegrationEvent:
            if (
                outcome_id is not None
                and c.execute("SELECT 1 FROM outcomes WHERE id = ?", (outcome_id,)).fetchone() is None
            ):
                raise NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")
            cur = c.execute(
                "INSERT INTO integration_logs (run_id, outcome_id, integration_type, action, status, details,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, outcome_id, integration_type, action, status, R.dumps(details), now),
            )
            _event(
                c,
                run_id,
                outcome_id,
                "integration",
                {"integration_type": integration_type, "action": action, "status": status},
                now,
            )
            row = c.execute(
                "SELECT l.*, r.name AS run_name FROM integration_logs l LEFT JOIN runs r ON r.id = l.run_id"
                " WHERE l.id = ?",
                (cur.lastrowid,),
            ).fetchone()
            return R.integration_from(row)

        return await self._write(op)

    # ---- API keys -------------------------------------------------------------------------------

    async def create_api_key(self, name: str, key_hash: str, scopes: Sequence[str], now: float) -> ApiKey:
        def op(c: sqlite3.Connection) -> ApiKey:
            if c.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone() is not None:
                raise Conflict(f"a key named '{name}' exists (revoked keys keep their name)", field="name")
            c.execute(
                "INSERT INTO api_keys (name, key_hash, scopes, created_at) VALUES (?, ?, ?, ?)",
                (name, key_hash, R.dumps(list(scopes)), now),
            )
            return ApiKey(name=name, scopes=tuple(scopes), created_at=now)

        return await self._write(op)

    async def list_api_keys(self) -> list[ApiKey]:
        return await self._read(
            lambda c: [R.api_key_from(r) for r in c.execute("SELECT * FROM api_keys ORDER BY name")]
        )

    async def revoke_api_key(self, name: str, now: float) -> ApiKey:
        def op(c: sqlite3.Connection) -> ApiKey:
            c.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name))
            row = c.execute("SELECT * FROM api_keys WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"unknown key '{name}'", field="name")
            return R.api_key_from(row)

        return await self._write(op)

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        def op(c: sqlite3.Connection) -> ApiKey | None:
            row = c.execute("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
            return None if row is None else R.api_key_from(row)

        return await self._read(op)

    async def touch_api_key(self, name: str, now: float) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("UPDATE api_keys SET last_used_at = ? WHERE name = ?", (now, name))

        await self._write(op)

    async def status_counts(self) -> dict[str, dict[Status, int]]:
        return await self._read(
            lambda c: R.status_counts_from(
                c.execute(
                    "SELECT name, SUM(pending) AS pending, SUM(generating) AS generating,"
                    " SUM(complete) AS complete, SUM(failed) AS failed, SUM(cancelled) AS cancelled"
                    " FROM packages GROUP BY name ORDER BY name"
                )
            )
        )

    # ---- change feed ----------------------------------------------------------------------------

    async def latest_seq(self) -> int:
        return await self._read(
            lambda c: int(c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        )

    async def events_after(self, since: int, run_id: str | None, limit: int) -> list[Event]:
        def op(c: sqlite3.Connection) -> list[Event]:
            sql = "SELECT e.*, r.name AS run_name FROM events e LEFT JOIN runs r ON r.id = e.run_id WHERE e.seq > ?"
            args: list[Any] = [since]
            if run_id is not None:
                sql += " AND e.run_id = ?"
                args.append(run_id)
            rows = c.execute(sql + " ORDER BY e.seq LIMIT ?", [*args, limit]).fetchall()
            return [R.event_from(r) for r in rows]

        return await self._read(op)

    async def wait_for_change(self, since: int, timeout: float) -> int:
        """Wakes on this process's commits at once and on other processes' within ~50–200 ms."""
        deadline = anyio.current_time() + timeout
        poll = 0.05
        while True:
            latest = await self.latest_seq()
            remaining = deadline - anyio.current_time()
            if latest > since or remaining <= 0:
                return latest
            changed = self._changed
            with anyio.move_on_after(min(poll, remaining)):
                await changed.wait()
            poll = min(poll * 1.5, 0.2)

    # ---- maintenance ----------------------------------------------------------------------------

    async def recount(self, run_id: str | None = None) -> RecountReport:
        return await self._read(lambda c: _recount(c, run_id))

    async def content_hashes(self) -> set[str]:
        return await self._read(
            lambda c: {
                r[0]
                for r in c.execute(
                    "SELECT DISTINCT content_sha256 FROM outcomes WHERE content_sha256 IS NOT NULL"
                )
            }
        )

    async def content_files(self, since_seq: int, limit: int) -> list[ContentFile]:
        def op(c: sqlite3.Connection) -> list[ContentFile]:
            rows = c.execute(
                "SELECT e.seq, o.id, o.outcome_path, o.content_sha256 FROM events e JOIN outcomes o ON o.id = e.outcome_id"
                " WHERE e.seq > ? AND e.kind = 'completed' AND o.status = 'complete'"
                " AND o.content_sha256 IS NOT NULL AND o.outcome_path IS NOT NULL ORDER BY e.seq LIMIT ?",
                (since_seq, limit),
            ).fetchall()
            return [ContentFile(int(r[0]), r[1], r[2], r[3]) for r in rows]

        return await self._read(op)

    async def rebuild_counters(self, run_id: str | None = None) -> None:
        def op(c: sqlite3.Connection) -> None:
            where, args = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
            for p in c.execute("SELECT id FROM packages " + where, args).fetchall():
                truth = _truth(c, p[0])
                c.execute(
                    "UPDATE packages SET total = ?, pending = ?, generating = ?, complete = ?, failed = ?,"
                    " cancelled = ?, duration_sum = ?, duration_n = ?, lines_sum = ?, quality_sum = ?,"
                    " quality_n = ? WHERE id = ?",
                    (
                        truth["total"],
                        *(truth[s] for s in STATUSES),
                        *(truth[k] for k in _COUNTER_COLUMNS),
                        p[0],
                    ),
                )
                c.execute(
                    "UPDATE packages SET duration_hist = ? WHERE id = ?", (_hist_dumps(truth["hist"]), p[0])
                )

        await self._write(op)

    async def integrity_check(self) -> str:
        return await self._read(lambda c: str(c.execute("PRAGMA integrity_check").fetchone()[0]))


# ---- helpers that run inside a transaction ------------------------------------------------------


def _run_id(c: sqlite3.Connection, ref: str) -> str:
    row = c.execute(
        "SELECT id FROM runs WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1", (ref, ref, ref)
    ).fetchone()
    if row is None:
        raise NotFound(f"unknown run '{ref}'", field="run")
    return str(row[0])


def _run(c: sqlite3.Connection, run_id: str) -> Run:
    row = c.execute(_RUN_SELECT + " WHERE r.id = ? GROUP BY r.id", (run_id,)).fetchone()
    if row is None:
        raise NotFound(f"unknown run '{run_id}'", field="run")
    return R.run_from(row)


def _outcome(c: sqlite3.Connection, outcome_id: str) -> Outcome:
    row = c.execute(_OUTCOME_SELECT + " WHERE o.id = ?", (outcome_id,)).fetchone()
    if row is None:
        raise NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")
    return R.outcome_from(row)


def _event(
    c: sqlite3.Connection,
    run_id: str | None,
    outcome_id: str | None,
    kind: str,
    data: dict[str, Any],
    now: float,
) -> int:
    """Append to the change feed; returns the event's sequence number."""
    cur = c.execute(
        "INSERT INTO events (run_id, outcome_id, kind, data, created_at) VALUES (?, ?, ?, ?, ?)",
        (run_id, outcome_id, kind, R.dumps(stamped(kind, data)), now),
    )
    return int(cur.lastrowid or 0)


def _move(
    c: sqlite3.Connection, package_id: int, old: Status, new: Status, contrib: dict[str, float] | None = None
) -> None:
    """Move one item between status counters; `contrib` adds a completion's sums in the same statement."""
    if old == new and contrib is None:
        return
    if contrib is None:
        c.execute(_MOVE_SQL[old, new], (package_id,))
    else:
        c.execute(_MOVE_CONTRIB_SQL[old, new], (*(contrib[k] for k in _COUNTER_COLUMNS), package_id))


def _add_histogram(c: sqlite3.Connection, package_id: int, duration: float, sign: int) -> None:
    """The duration histogram lives on the package row as JSON [[bucket, count], …]: a summary reads one row
    per package instead of one per bucket (read-modify-write is safe under the single writer)."""
    row = c.execute("SELECT duration_hist FROM packages WHERE id = ?", (package_id,)).fetchone()
    hist = _hist_loads(row[0])
    bucket = R.duration_bucket(duration)
    n = hist.get(bucket, 0) + sign
    if n:
        hist[bucket] = n
    else:
        hist.pop(bucket, None)
    c.execute("UPDATE packages SET duration_hist = ? WHERE id = ?", (_hist_dumps(hist), package_id))


def _hist_loads(text: str | None) -> dict[int, int]:
    """The histogram column: a JSON list of [bucket, count] pairs in bucket order."""
    return dict(json.loads(text or "[]"))


def _hist_dumps(hist: dict[int, int]) -> str:
    return json.dumps(sorted(hist.items()), separators=(",", ":"))


def _add_contribution(
    c: sqlite3.Connection, package_id: int, metrics: dict[str, Any], duration: float | None, sign: int
) -> None:
    contrib = R.contribution(metrics, duration)
    c.execute(
        "UPDATE packages SET duration_sum = duration_sum + ?, duration_n = duration_n + ?, lines_sum = lines_sum + ?,"
        " quality_sum = quality_sum + ?, quality_n = quality_n + ? WHERE id = ?",
        (*(sign * contrib[k] for k in _COUNTER_COLUMNS), package_id),
    )
    if duration is not None:
        _add_histogram(c, package_id, duration, sign)


def _set_metrics(
    c: sqlite3.Connection, outcome_id: str, metrics: dict[str, Any], replace: bool = True
) -> None:
    """Numeric metrics as rows; `replace=False` when the outcome is completing for the first time since
    its last claim (rows of an earlier completion are removed when it leaves `complete`)."""
    if replace:
        c.execute("DELETE FROM outcome_metrics WHERE outcome_id = ?", (outcome_id,))
    values = R.numeric_metrics(metrics)
    if values:
        c.executemany(
            "INSERT INTO outcome_metrics (outcome_id, name, value) VALUES (?, ?, ?)",
            [(outcome_id, k, v) for k, v in values],
        )


def _minute(
    c: sqlite3.Connection,
    run_id: str,
    now: float,
    completed: int = 0,
    failed: int = 0,
    duration: float | None = None,
) -> None:
    c.execute(
        "INSERT INTO outcome_minutes (run_id, minute, completed, failed, duration_sum, duration_n)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, minute) DO UPDATE SET"
        " completed = completed + excluded.completed, failed = failed + excluded.failed,"
        " duration_sum = duration_sum + excluded.duration_sum, duration_n = duration_n + excluded.duration_n",
        (run_id, int(now // 60), completed, failed, duration or 0.0, 1 if duration is not None else 0),
    )


def _end_attempt(
    c: sqlite3.Connection, outcome_id: str, token: str, status: str, error: str | None, now: float
) -> None:
    c.execute(
        "UPDATE outcome_attempts SET status = ?, error = ?, ended_at = ? WHERE outcome_id = ? AND lease_token = ?",
        (status, error, now, outcome_id, token),
    )


def _leased_row(c: sqlite3.Connection, outcome_id: str, token: str) -> sqlite3.Row:
    row = c.execute(_OUTCOME_SELECT + " WHERE o.id = ?", (outcome_id,)).fetchone()
    if row is None:
        raise NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")
    if row["lease_token"] != token:
        raise StaleLease(R.stale_token_message(row), field="lease_token")
    return row  # type: ignore[no-any-return]


def _sweep(c: sqlite3.Connection, run_id: str, now: float) -> None:
    """Expired leases go back to pending (or failed when attempts are spent, cancelled when the run is)."""
    rows = c.execute(
        "SELECT o.n, o.id, o.item, o.package_id, o.attempts, o.lease_token, o.started_at, r.max_attempts, r.state,"
        " p.name AS package_name FROM outcomes o JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = o.package_id"
        " WHERE o.run_id = ? AND o.status = 'generating' AND o.lease_expires_at <= ? LIMIT ?",
        (run_id, now, SWEEP_LIMIT),
    ).fetchall()
    for r in rows:
        _end_attempt(c, r["id"], r["lease_token"], "failed", "lease expired", now)
        target: Status
        if r["state"] == "cancelled":
            target = "cancelled"
        elif int(r["attempts"]) >= int(r["max_attempts"]):
            target = "failed"
        else:
            target = "pending"
        if target == "pending":
            c.execute(
                "UPDATE outcomes SET status = 'pending', available_at = ?, lease_expires_at = NULL,"
                " error_message = 'lease expired', updated_at = ? WHERE n = ?",
                (now, now, r["n"]),
            )
        else:
            duration = max(0.0, now - r["started_at"]) if r["started_at"] is not None else None
            c.execute(
                "UPDATE outcomes SET status = ?, lease_expires_at = NULL, completed_at = ?, duration_seconds = ?,"
                " error_message = ?, updated_at = ? WHERE n = ?",
                (target, now, duration, f"lease expired after {r['attempts']} attempts", now, r["n"]),
            )
            if target == "failed":
                _minute(c, run_id, now, failed=1)
        _move(c, r["package_id"], "generating", target)
        _event(
            c,
            run_id,
            r["id"],
            "lease_expired",
            {"package": r["package_name"], "item": r["item"], "attempt": r["attempts"], "now": target},
            now,
        )


def _cancel_pending(c: sqlite3.Connection, run_id: str, now: float) -> int:
    per_package = c.execute(
        "SELECT package_id, COUNT(*) FROM outcomes WHERE run_id = ? AND status = 'pending' GROUP BY package_id",
        (run_id,),
    ).fetchall()
    c.execute(
        "UPDATE outcomes SET status = 'cancelled', updated_at = ?, completed_at = ? WHERE run_id = ? AND status = 'pending'",
        (now, now, run_id),
    )
    total = 0
    for package_id, n in per_package:
        c.execute(
            "UPDATE packages SET pending = pending - ?, cancelled = cancelled + ? WHERE id = ?",
            (n, n, package_id),
        )
        total += n
    return total


def _claim(
    c: sqlite3.Connection,
    run_id: str,
    worker: str,
    limit: int,
    package: str | None,
    now: float,
    token_factory: Callable[[], str],
) -> ClaimBatch:
    """Lease up to `limit` pending items round-robin across packages (least recently served first)."""
    run = c.execute("SELECT name, state, lease_seconds FROM runs WHERE id = ?", (run_id,)).fetchone()
    if run is None:
        raise NotFound(f"unknown run '{run_id}'", field="run")
    if run["state"] == "cancelled":
        return ClaimBatch([], "cancelled")
    _sweep(c, run_id, now)
    if run["state"] == "paused":
        return ClaimBatch([], "paused")
    sql = "SELECT id, name, description FROM packages WHERE run_id = ? AND pending > 0"
    args: list[Any] = [run_id]
    if package is not None:
        sql += " AND name = ?"
        args.append(package)
    active = c.execute(sql + " ORDER BY last_claim, position", args).fetchall()
    claims: list[Claim] = []
    expires = now + float(run["lease_seconds"])
    while active and len(claims) < limit:
        still = []
        for p in active:
            if len(claims) >= limit:
                break
            o = c.execute(
                "SELECT n, id, item, attempts, outcome_type, specifications, outcome_path FROM outcomes"
                " WHERE package_id = ? AND status = 'pending' AND available_at <= ?"
                " ORDER BY available_at, position LIMIT 1",
                (p["id"], now),
            ).fetchone()
            if o is None:
                continue
            token = token_factory()
            attempt = int(o["attempts"]) + 1
            c.execute(
                "UPDATE outcomes SET status = 'generating', attempts = ?, worker = ?, lease_token = ?,"
                " lease_expires_at = ?, started_at = ?, updated_at = ? WHERE n = ?",
                (attempt, worker, token, expires, now, now, o["n"]),
            )
            c.execute(
                "INSERT INTO outcome_attempts (outcome_id, attempt, lease_token, worker, status,"
                " started_at) VALUES (?, ?, ?, ?, 'generating', ?)",
                (o["id"], attempt, token, worker, now),
            )
            seq = _event(
                c,
                run_id,
                o["id"],
                "claimed",
                {"package": p["name"], "item": o["item"], "worker": worker, "attempt": attempt},
                now,
            )
            # fairness clock: the claim's own event sequence (monotonic across processes)
            c.execute(
                "UPDATE packages SET pending = pending - 1, generating = generating + 1, last_claim = ?"
                " WHERE id = ?",
                (seq, p["id"]),
            )
            claims.append(
                Claim(
                    outcome_id=o["id"],
                    run=run["name"],
                    package=p["name"],
                    package_description=p["description"],
                    item=o["item"],
                    attempt=attempt,
                    lease_token=token,
                    lease_expires_at=expires,
                    outcome_type=o["outcome_type"],
                    specifications=R.loads(o["specifications"]),
                    outcome_path=o["outcome_path"],
                )
            )
            still.append(p)
        active = still
    if len(claims) >= limit:
        return ClaimBatch(claims)
    return ClaimBatch(claims, *_why_nothing(c, run_id, package))


def _claim_next(
    c: sqlite3.Connection, row: sqlite3.Row, token: str, next_claim: NextClaim | None, now: float, fresh: bool
) -> ClaimBatch | None:
    """The next leases of a report: claimed now when the report is fresh; for a repeat of the identical
    report, the leases the first one took that its worker still holds (claimed at that report's time)."""
    if next_claim is None:
        return None
    worker = row["worker"] or ""
    if fresh:
        return _claim(
            c, row["run_id"], worker, next_claim.limit, next_claim.package, now, next_claim.token_factory
        )
    first = c.execute(
        "SELECT ended_at, worker FROM outcome_attempts WHERE outcome_id = ? AND lease_token = ?",
        (row["id"], token),
    ).fetchone()
    if first is None or first["ended_at"] is None:
        return ClaimBatch([])
    held = c.execute(
        "SELECT o.id, o.item, o.attempts, o.lease_token, o.lease_expires_at, o.outcome_type, o.specifications,"
        " o.outcome_path, p.name AS package_name, p.description, r.name AS run_name FROM outcomes o"
        " JOIN packages p ON p.id = o.package_id JOIN runs r ON r.id = o.run_id"
        " WHERE o.run_id = ? AND o.status = 'generating' AND o.worker = ? AND o.started_at = ?"
        " ORDER BY o.n LIMIT ?",
        (row["run_id"], first["worker"], first["ended_at"], next_claim.limit),
    ).fetchall()
    return ClaimBatch(
        [
            Claim(
                outcome_id=o["id"],
                run=o["run_name"],
                package=o["package_name"],
                package_description=o["description"],
                item=o["item"],
                attempt=int(o["attempts"]),
                lease_token=o["lease_token"],
                lease_expires_at=float(o["lease_expires_at"]),
                outcome_type=o["outcome_type"],
                specifications=R.loads(o["specifications"]),
                outcome_path=o["outcome_path"],
            )
            for o in held
        ]
    )


def _why_nothing(c: sqlite3.Connection, run_id: str, package: str | None) -> tuple[Any, float | None]:
    sql = "SELECT COALESCE(SUM(pending),0), COALESCE(SUM(generating),0), COUNT(*) FROM packages WHERE run_id = ?"
    args: list[Any] = [run_id]
    if package is not None:
        sql += " AND name = ?"
        args.append(package)
    pending, generating, n = c.execute(sql, args).fetchone()
    if package is not None and n == 0:
        raise NotFound(f"unknown package '{package}' in this run", field="package")
    pkg_filter = (
        ""
        if package is None
        else " AND package_id IN (SELECT id FROM packages WHERE run_id = ? AND name = ?)"
    )
    pkg_args = [] if package is None else [run_id, package]
    if pending:
        row = c.execute(
            "SELECT MIN(available_at) FROM outcomes WHERE run_id = ? AND status = 'pending'" + pkg_filter,
            [run_id, *pkg_args],
        ).fetchone()
        return "backing_off", row[0]
    if generating:
        row = c.execute(
            "SELECT MIN(lease_expires_at) FROM outcomes WHERE run_id = ? AND status = 'generating'"
            + pkg_filter,
            [run_id, *pkg_args],
        ).fetchone()
        return "all_leased", row[0]
    total = c.execute("SELECT COALESCE(SUM(total),0) FROM packages WHERE run_id = ?", (run_id,)).fetchone()[0]
    return ("done" if total else "empty"), None


def _update_status(
    c: sqlite3.Connection,
    outcome_id: str,
    status: Status,
    error_message: str | None,
    report: Report | None,
    now: float,
    created_by: str | None,
) -> Outcome:
    row = c.execute(
        "SELECT o.*, r.lease_seconds, p.name AS package_name FROM outcomes o JOIN runs r ON r.id = o.run_id"
        " JOIN packages p ON p.id = o.package_id WHERE o.id = ?",
        (outcome_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")
    old = row["status"]
    old_metrics = R.loads(row["metrics"], {})
    metrics = report.metrics if report is not None and report.metrics else old_metrics
    metadata = report.metadata if report is not None and report.metadata else R.loads(row["metadata"], {})
    started = row["started_at"]
    completed_at = row["completed_at"]
    duration = row["duration_seconds"]
    lease_expires = None
    token = str(uuid.uuid4())  # any override fences off whoever held the lease
    if status == "generating":
        started = now
        lease_expires = now + float(row["lease_seconds"])
        completed_at = duration = None
    elif status in ("complete", "failed", "cancelled"):
        if old != status:
            completed_at = now
            duration = max(0.0, now - started) if started is not None else None
    else:  # pending
        completed_at = duration = None
    if old == "complete":
        _add_contribution(c, row["package_id"], old_metrics, row["duration_seconds"], -1)
        c.execute("DELETE FROM outcome_metrics WHERE outcome_id = ?", (outcome_id,))
    c.execute(
        "UPDATE outcomes SET status = ?, error_message = ?, metrics = ?, metadata = ?,"
        " outcome_path = COALESCE(?, outcome_path), content_sha256 = COALESCE(?, content_sha256),"
        " content_bytes = COALESCE(?, content_bytes), mime_type = COALESCE(?, mime_type),"
        " started_at = ?, completed_at = ?, duration_seconds = ?, lease_token = ?, lease_expires_at = ?,"
        " available_at = ?, created_by = COALESCE(created_by, ?), updated_at = ? WHERE id = ?",
        (
            status,
            error_message if status != "complete" else None,
            R.dumps(metrics),
            R.dumps(metadata),
            report.outcome_path if report else None,
            report.content_sha256 if report else None,
            report.content_bytes if report else None,
            report.mime_type if report else None,
            started,
            completed_at,
            duration,
            token,
            lease_expires,
            now,
            created_by,
            now,
            outcome_id,
        ),
    )
    _move(c, row["package_id"], old, status)
    if status == "complete":
        _add_contribution(c, row["package_id"], metrics, duration, +1)
        _set_metrics(c, outcome_id, metrics)
        if old != "complete":
            _minute(c, row["run_id"], now, completed=1, duration=duration)
    elif status == "failed" and old != "failed":
        _minute(c, row["run_id"], now, failed=1)
    _event(
        c,
        row["run_id"],
        outcome_id,
        "status_updated",
        {"package": row["package_name"], "item": row["item"], "from": old, "to": status},
        now,
    )
    return _outcome(c, outcome_id)


def _summaries(c: sqlite3.Connection, where: str, args: list[Any]) -> list[PackageSummary]:
    rows = c.execute(
        "SELECT p.*, r.name AS run_name FROM packages p JOIN runs r ON r.id = p.run_id"
        " WHERE " + where + " ORDER BY r.created_at, p.position",
        args,
    ).fetchall()
    if not rows:
        return []
    return [_summary(r) for r in rows]


# Summaries are rebuilt only for packages whose row changed since the last read: a status poll during a
# run touches a few packages, and a finished run none. The key is the whole row, so a hit is exact.
_SUMMARY_CACHE: dict[tuple[Any, ...], PackageSummary] = {}


def _summary(row: sqlite3.Row) -> PackageSummary:
    key = tuple(row)
    hit = _SUMMARY_CACHE.get(key)
    if hit is None:
        if len(_SUMMARY_CACHE) >= 4096:
            _SUMMARY_CACHE.clear()
        hit = _SUMMARY_CACHE[key] = R.summary_from(row, _hist_loads(row["duration_hist"]))
    return hit.model_copy()


def _truth(c: sqlite3.Connection, package_id: int) -> dict[str, Any]:
    truth: dict[str, Any] = dict.fromkeys(STATUSES, 0)
    for status, n in c.execute(
        "SELECT status, COUNT(*) FROM outcomes WHERE package_id = ? GROUP BY status", (package_id,)
    ):
        truth[status] = n
    truth["total"] = sum(truth[s] for s in STATUSES)
    sums = dict.fromkeys(_COUNTER_COLUMNS, 0.0)
    hist: dict[int, int] = defaultdict(int)
    for metrics, duration in c.execute(
        "SELECT metrics, duration_seconds FROM outcomes WHERE package_id = ? AND status = 'complete'",
        (package_id,),
    ):
        for k, v in R.contribution(R.loads(metrics, {}), duration).items():
            sums[k] += v
        if duration is not None:
            hist[R.duration_bucket(duration)] += 1
    truth.update(sums)
    truth["hist"] = dict(hist)
    return truth


def _recount(c: sqlite3.Connection, run_id: str | None) -> RecountReport:
    where, args = ("WHERE p.run_id = ?", [run_id]) if run_id else ("", [])
    mismatches: list[str] = []
    for p in c.execute(
        "SELECT p.*, r.name AS run_name FROM packages p JOIN runs r ON r.id = p.run_id " + where, args
    ):
        truth = _truth(c, p["id"])
        label = f"{p['run_name']}/{p['name']}"
        for key in ("total", *STATUSES):
            if int(p[key]) != truth[key]:
                mismatches.append(f"{label}: {key} counter {p[key]} != rows {truth[key]}")
        for key in _COUNTER_COLUMNS:
            if abs(float(p[key]) - float(truth[key])) > 1e-6 * max(1.0, abs(float(truth[key]))):
                mismatches.append(f"{label}: {key} counter {p[key]} != rows {truth[key]}")
        hist = {b: n for b, n in _hist_loads(p["duration_hist"]).items() if n != 0}
        if hist != truth["hist"]:
            mismatches.append(f"{label}: duration histogram {hist} != rows {truth['hist']}")
    return RecountReport(consistent=not mismatches, mismatches=mismatches)


__all__ = ["SQLiteStore", "StoreError"]
