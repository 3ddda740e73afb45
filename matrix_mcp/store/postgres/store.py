"""The PostgreSQL outcome store on psycopg 3 (async) and psycopg_pool: many processes, one board.

- Semantics are those of the SQLite store, transition for transition (same errors, events, reasons).
- Group commit: one writer per process merges concurrent requests into one transaction; each
  request runs in its own SAVEPOINT so a bad request rolls back alone. Transient errors
  (serialization failure, deadlock, lost connection, admin shutdown, pool timeout) retry the whole
  batch with jittered backoff; past a short budget the callers get `Unavailable` (retryable).
- Claims are one `UPDATE … RETURNING` over a MATERIALIZED CTE with `FOR UPDATE SKIP LOCKED` on the
  narrow queue (`outcome_queue`, migration 8: lease token and expiry, available_at, claim order, final
  status once done; listings by status read it too),
  which holds the only indexes the claim, the lease sweep and fairness need; the outcome row is then
  updated HOT (no index of `outcomes` names a column a claim or report writes). Fairness across
  packages comes from each queue row's `claim_seq` (a global sequence), so no package or run row is
  written on the claim path.
- Counters without a hot row: each batch appends one aggregated row per touched package (and
  bucket, and minute) to `package_deltas`; one roller at a time (advisory lock) folds them into
  `packages` (the duration histogram too, as sorted arrays on the package row). Readers add the unrolled deltas (views `package_counters`, `package_hist`, `run_minutes`).
- Events get their sequence numbers in commit order (an advisory lock held from the insert to the
  commit), so a reader that saw seq S has seen every event ≤ S. One debounced NOTIFY per batch wakes
  long-polls in other processes; a poll is the fallback.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import psycopg

from matrix_mcp import rules
from matrix_mcp.models import (
    Event,
    Outcome,
    OutcomeDetail,
    OutcomePage,
    PackageSummary,
    RecountReport,
    Status,
    SystemMetrics,
)
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import (
    ApiKey,
    Cell,
    Collected,
    ContentFile,
    FinishedSpan,
    MinuteCount,
    OutcomeFilter,
    RunOverview,
)
from matrix_mcp.store.postgres.batch import (
    _IN_TRANSACTION,
    Conn,
    Row,
    _all,
    _one,
    _Tx,
)
from matrix_mcp.store.postgres.counters import _rebuild, _recount, _summaries, _summary
from matrix_mcp.store.postgres.migrations import (
    ROLLUP_LOCK,
)
from matrix_mcp.store.postgres.sql import (
    _LATEST_SEQ_SQL,
    _ONE_RUN_SQL,
    _OUTCOME_SELECT,
    _QUEUED_OUTCOME_SELECT,
    _RUN_SUMMARIES_SQL,
    _THROUGHPUT_SQL,
    queue_status_filter,
)
from matrix_mcp.store.postgres.writes import Writes
from matrix_mcp.store.protocol import paged_outcomes

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.hooks import PostgresHooks


class PostgresStore(Writes):
    """See the module docstring. Open with `await PostgresStore.open(url)`."""

    @property
    def hooks(self) -> PostgresHooks:
        """Subscriptions and deliveries for events out (store/hooks.py)."""
        from matrix_mcp.store.postgres.hooks import PostgresHooks

        return PostgresHooks(self)

    async def get_outcome(self, outcome_id: str, *, history: bool = False) -> OutcomeDetail:
        async def op(c: Conn) -> OutcomeDetail:
            row = await _one(c, _OUTCOME_SELECT + " WHERE o.id = %s", (outcome_id,))
            if row is None:
                raise rules.unknown_outcome(outcome_id)
            hist: list[Row] = []
            if history:
                hist = await _all(
                    c,
                    "SELECT attempt, worker, principal, status, error, started_at, ended_at FROM outcome_attempts"
                    " WHERE outcome_id = %s ORDER BY started_at, attempt",
                    (outcome_id,),
                )
            return R.detail_from(row, hist)

        return await self._read(op, snapshot=history)

    async def list_outcomes(
        self, flt: OutcomeFilter, *, limit: int, cursor: str | None = None
    ) -> OutcomePage:
        after = R.decode_cursor(cursor)
        if flt.status is None:
            select, order, first = _OUTCOME_SELECT, "o.n", ["o.n > %s"]
            pinned = R.outcome_filter(flt)
        else:
            # by status: the queue's rows of that status, in n order (with a run, a range of
            # outcome_queue_status or outcome_queue_leased); the queue row holds the status
            condition, order = queue_status_filter(flt.status, one_run=flt.run_id is not None)
            select, first = _QUEUED_OUTCOME_SELECT, ["q.n > %s", condition]
            pinned = R.outcome_filter(replace(flt, run_id=None, status=None))
            if flt.run_id is not None:
                pinned.insert(0, ("q.run_id", flt.run_id))
        conditions = [*first, *(f"{column} = %s" for column, _ in pinned)]
        args = [after, *(value for _, value in pinned)]

        async def op(c: Conn) -> OutcomePage:
            rows = await _all(
                c,
                select + " WHERE " + " AND ".join(conditions) + f" ORDER BY {order} LIMIT %s",
                [*args, limit + 1],
            )
            return R.outcome_page(rows, limit)

        return await self._read(op)

    def iter_outcomes(self, run_id: str) -> AsyncIterator[Outcome]:
        return paged_outcomes(self.list_outcomes, run_id)

    async def run_minutes(self, run_id: str, *, since_minute: int) -> list[MinuteCount]:
        async def op(c: Conn) -> list[MinuteCount]:
            rows = await _all(
                c,
                "SELECT minute, completed::bigint AS completed, failed::bigint AS failed FROM run_minutes"
                " WHERE run_id = %s AND minute >= %s ORDER BY minute",
                (run_id, since_minute),
            )
            return [MinuteCount(int(r["minute"]), int(r["completed"]), int(r["failed"])) for r in rows]

        return await self._read(op)

    async def finished_span(self, run_id: str) -> FinishedSpan:
        async def op(c: Conn) -> FinishedSpan:
            rows = await _all(
                c,
                "SELECT COUNT(*)::bigint AS n, MIN(started_at) AS first, MAX(completed_at) AS last"
                " FROM outcomes WHERE run_id = %s AND status IN ('complete', 'failed')",
                (run_id,),
            )
            row = rows[0]
            return FinishedSpan(int(row["n"]), row["first"], row["last"])

        return await self._read(op)

    async def cells(self, run_id: str) -> list[Cell]:
        async def op(c: Conn) -> list[Cell]:
            rows = await _all(
                c,
                "SELECT o.id, p.name AS package, o.item, o.status FROM outcomes o"
                " JOIN packages p ON p.id = o.package_id WHERE o.run_id = %s ORDER BY o.n",
                [run_id],
            )
            return [Cell(str(r["id"]), r["package"], r["item"], r["status"]) for r in rows]

        return await self._read(op)

    async def package_summaries(self, run_id: str) -> list[PackageSummary]:
        async def op(c: Conn) -> list[PackageSummary]:
            return [_summary(r) for r in await _all(c, _RUN_SUMMARIES_SQL, {"run": run_id})]

        return await self._read(op)

    async def package_summary(self, package: str, *, run_id: str | None) -> PackageSummary:
        async def op(c: Conn) -> PackageSummary:
            if run_id is not None:
                found = await _summaries(c, "p.run_id = %s AND p.name = %s", [run_id, package])
            else:
                found = await _summaries(c, "p.name = %s", [package])
            return R.the_one_summary(found, package)

        return await self._read(op)

    async def system_metrics(self, run_id: str | None, *, now: float) -> SystemMetrics:
        async def op(c: Conn) -> SystemMetrics:
            where, args = ("WHERE run_id = %s", [run_id]) if run_id else ("", [])
            t = await _one(
                c,
                "SELECT COALESCE(SUM(pending),0)::bigint AS pending, COALESCE(SUM(generating),0)::bigint AS generating,"
                " COALESCE(SUM(complete),0)::bigint AS complete, COALESCE(SUM(failed),0)::bigint AS failed,"
                " COALESCE(SUM(cancelled),0)::bigint AS cancelled, COALESCE(SUM(duration_sum),0)::float8 AS ds,"
                " COALESCE(SUM(duration_n),0)::bigint AS dn, COALESCE(SUM(lines_sum),0)::float8 AS ls,"
                " COALESCE(SUM(quality_sum),0)::float8 AS qs, COALESCE(SUM(quality_n),0)::bigint AS qn"
                " FROM package_counters " + where,
                args,
            )
            assert t is not None
            since_minute = R.hourly_since_minute(now)
            hours = await _all(
                c,
                "SELECT minute / 60 AS hour, SUM(completed)::bigint AS completed, SUM(failed)::bigint AS failed,"
                " SUM(duration_sum)::float8 AS ds, SUM(duration_n)::bigint AS dn FROM run_minutes"
                " WHERE minute >= %s"
                + (" AND run_id = %s" if run_id else "")
                + " GROUP BY minute / 60 ORDER BY hour",
                [since_minute, *args],
            )
            run_name = None
            if run_id:
                r = await _one(c, "SELECT name FROM runs WHERE id = %s", (run_id,))
                run_name = r["name"] if r else None
            return R.system_metrics_from(run_name, t, hours)

        return await self._read(op, snapshot=True)

    async def run_overview(self, run_id: str, *, since: float) -> RunOverview:
        """The run, its package summaries, its recent throughput and the latest event, in one snapshot
        and one round trip (pipeline mode: BEGIN, the four reads and COMMIT go out together)."""

        async def attempt() -> RunOverview:
            async with self._pool.connection() as conn:
                try:
                    async with conn.pipeline():
                        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        run_cur = await conn.execute(_ONE_RUN_SQL + " WHERE r.id = %s", (run_id,))
                        summaries_cur = await conn.execute(_RUN_SUMMARIES_SQL, {"run": run_id})
                        finished_cur = await conn.execute(_THROUGHPUT_SQL, (run_id, int(since // 60)))
                        seq_cur = await conn.execute(_LATEST_SEQ_SQL)
                        await conn.execute("COMMIT")
                        run_row = await run_cur.fetchone()
                        summary_rows = await summaries_cur.fetchall()
                        finished = await finished_cur.fetchone()
                        seq = await seq_cur.fetchone()
                except BaseException:
                    if conn.info.transaction_status in _IN_TRANSACTION:
                        with contextlib.suppress(psycopg.Error):
                            await conn.execute("ROLLBACK")
                    raise
            if run_row is None:
                raise rules.unknown_run(run_id)
            return RunOverview(
                R.run_from(run_row),
                [_summary(r) for r in summary_rows],
                int(finished["n"]) if finished else 0,
                int(seq["s"]) if seq else 0,
            )

        return await self._with_retry(attempt)

    # ---- API keys -------------------------------------------------------------------------------

    async def create_api_key(self, name: str, *, key_hash: str, scopes: Sequence[str], now: float) -> ApiKey:
        async def op(tx: _Tx) -> ApiKey:
            row = await tx.one(
                "INSERT INTO api_keys (name, key_hash, scopes, created_at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING RETURNING name",
                (name, key_hash, R.dumps(list(scopes)), now),
            )
            if row is None:
                raise rules.key_exists(name)
            tx.wrote = True
            return ApiKey(name=name, scopes=tuple(scopes), created_at=now)

        return await self._write(op, atomic=True)

    async def list_api_keys(self) -> list[ApiKey]:
        async def op(c: Conn) -> list[ApiKey]:
            return [R.api_key_from(r) for r in await _all(c, "SELECT * FROM api_keys ORDER BY name")]

        return await self._read(op)

    async def revoke_api_key(self, name: str, *, now: float) -> ApiKey:
        async def op(tx: _Tx) -> ApiKey:
            row = await tx.one(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE name = %s RETURNING *",
                (now, name),
            )
            if row is None:
                raise rules.unknown_key(name)
            tx.wrote = True
            return R.api_key_from(row)

        return await self._write(op, atomic=True)

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        async def op(c: Conn) -> ApiKey | None:
            row = await _one(c, "SELECT * FROM api_keys WHERE key_hash = %s", (key_hash,))
            return None if row is None else R.api_key_from(row)

        return await self._read(op)

    async def touch_api_key(self, name: str, *, now: float) -> None:
        async def op(c: Conn) -> None:
            await c.execute(
                "UPDATE api_keys SET last_used_at = GREATEST(COALESCE(last_used_at, 0), %s) WHERE name = %s",
                (now, name),
            )

        # autocommit, outside the group commit: a use stamp must not wait behind (or slow) the work loop
        await self._read(op)

    # ---- board sessions ended by sign-out -------------------------------------------------------

    async def revoke_session(self, session_id: str, *, expires_at: float, now: float) -> None:
        async def op(c: Conn) -> None:
            await c.execute("DELETE FROM revoked_sessions WHERE expires_at < %s", (now,))
            await c.execute(
                "INSERT INTO revoked_sessions (session_id, expires_at) VALUES (%s, %s)"
                " ON CONFLICT (session_id) DO NOTHING",
                (session_id, expires_at),
            )

        # autocommit, outside the group commit (as a key's use stamp): each statement stands alone
        await self._read(op)

    async def session_revoked(self, session_id: str) -> bool:
        async def op(c: Conn) -> bool:
            row = await _one(c, "SELECT 1 FROM revoked_sessions WHERE session_id = %s", (session_id,))
            return row is not None

        return await self._read(op)

    async def status_counts(self) -> dict[str, dict[Status, int]]:
        async def op(c: Conn) -> dict[str, dict[Status, int]]:
            rows = await _all(
                c,
                "SELECT name, SUM(pending) AS pending, SUM(generating) AS generating,"
                " SUM(complete) AS complete, SUM(failed) AS failed, SUM(cancelled) AS cancelled"
                " FROM package_counters GROUP BY name ORDER BY name",
            )
            return R.status_counts_from(rows)

        return await self._read(op)

    # ---- change feed ----------------------------------------------------------------------------

    async def events_after(self, *, since: int, run_id: str | None = None, limit: int) -> list[Event]:
        async def op(c: Conn) -> list[Event]:
            q = "SELECT e.*, r.name AS run_name FROM events e LEFT JOIN runs r ON r.id = e.run_id WHERE e.seq > %s"
            args: list[Any] = [since]
            if run_id is not None:
                q += " AND e.run_id = %s"
                args.append(run_id)
            rows = await _all(c, q + " ORDER BY e.seq LIMIT %s", [*args, limit])
            return [R.event_from(r) for r in rows]

        return await self._read(op)

    # ---- maintenance ----------------------------------------------------------------------------

    async def recount(self, run_id: str | None = None) -> RecountReport:
        return await self._read(lambda c: _recount(c, run_id), snapshot=True)

    async def inline_content(self, sha256: str) -> bytes | None:
        async def op(c: Conn) -> bytes | None:
            row = await _one(c, "SELECT body FROM contents WHERE sha256 = %s", (sha256,))
            return None if row is None else bytes(row["body"])

        return await self._read(op)

    async def content_hashes(self) -> set[str]:
        async def op(c: Conn) -> set[str]:
            rows = await _all(
                c, "SELECT DISTINCT content_sha256 FROM outcomes WHERE content_sha256 IS NOT NULL"
            )
            return {r["content_sha256"] for r in rows}

        return await self._read(op)

    async def collect_contents(self) -> Collected:
        """Orphans found by one autocommit read; deleted after the same check under a SHARE ROW EXCLUSIVE
        lock on `contents`. Every report that writes content holds ROW EXCLUSIVE on the table from its
        INSERT to its commit, so the lock waits for reports in flight (their outcomes are then visible to
        the check) and holds new ones back for the one DELETE, only when there is an orphan to delete."""

        async def find(c: Conn) -> list[str]:
            rows = await _all(
                c,
                "SELECT c.sha256 FROM contents c"
                " WHERE NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.content_sha256 = c.sha256)",
            )
            return [r["sha256"] for r in rows]

        candidates = await self._read(find)
        if not candidates:
            return Collected(0, 0)

        async def attempt() -> Collected:
            async with self._pool.connection() as conn, conn.transaction():
                # behind a long transaction: give up soon (retried, then Unavailable) rather than hold reports back
                await conn.execute("SET LOCAL lock_timeout = '2s'")
                await conn.execute("LOCK TABLE contents IN SHARE ROW EXCLUSIVE MODE")
                rows = await _all(
                    conn,
                    "DELETE FROM contents WHERE sha256 = ANY(%(c)s) AND sha256 NOT IN"
                    " (SELECT content_sha256 FROM outcomes WHERE content_sha256 = ANY(%(c)s))"
                    " RETURNING octet_length(body) AS size",
                    {"c": candidates},
                )
            return Collected(len(rows), sum(int(r["size"]) for r in rows))

        return await self._with_retry(attempt)

    async def content_files(self, *, since_seq: int, limit: int) -> list[ContentFile]:
        async def op(c: Conn) -> list[ContentFile]:
            rows = await _all(
                c,
                "SELECT e.seq, o.id, o.outcome_path, o.content_sha256 FROM events e JOIN outcomes o ON o.id = e.outcome_id"
                " WHERE e.seq > %s AND e.kind = 'completed' AND o.status = 'complete'"
                " AND o.content_sha256 IS NOT NULL AND o.outcome_path IS NOT NULL ORDER BY e.seq LIMIT %s",
                (since_seq, limit),
            )
            return [ContentFile(int(r["seq"]), r["id"], r["outcome_path"], r["content_sha256"]) for r in rows]

        return await self._read(op)

    async def rebuild_counters(self, run_id: str | None = None) -> None:
        async def attempt() -> None:
            async with self._pool.connection() as c:
                await c.execute("SELECT pg_advisory_lock(%s)", (ROLLUP_LOCK,))
                try:
                    async with c.transaction():
                        await c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                        await _rebuild(c, run_id)
                finally:
                    await c.execute("SELECT pg_advisory_unlock(%s)", (ROLLUP_LOCK,))

        await self._with_retry(attempt)
        self._wake()


__all__ = ["PostgresStore"]
