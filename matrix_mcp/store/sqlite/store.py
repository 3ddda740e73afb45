"""The embedded SQLite outcome store on aiosqlite.

- WAL, busy_timeout, foreign keys on; several server processes may share one file.
- One writer connection per process. Concurrent write requests are merged into one
  `BEGIN IMMEDIATE` transaction (group commit); each request runs inside its own SAVEPOINT so one
  bad request rolls back alone. The whole batch runs as one function on the writer's thread.
- Reads run on their own connections inside a read transaction (one consistent snapshot).
- Summary counters live on the package rows and change in the same transaction as the outcome.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from matrix_mcp import rules
from matrix_mcp.errors import StoreError
from matrix_mcp.models import (
    STATUSES,
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
    MinuteCount,
    OutcomeFilter,
    RunOverview,
)
from matrix_mcp.store.protocol import paged_outcomes
from matrix_mcp.store.sqlite.counters import (
    _hist_dumps,
    _recount,
    _summaries,
    _truth,
)
from matrix_mcp.store.sqlite.sql import _COUNTER_COLUMNS, _OUTCOME_SELECT
from matrix_mcp.store.sqlite.transitions import (
    _run,
)
from matrix_mcp.store.sqlite.writes import Writes

if TYPE_CHECKING:
    from matrix_mcp.store.sqlite.hooks import SQLiteHooks

# content kept in the store that no outcome refers to (the subquery is built once, not run per row)
_ORPHAN_CONTENTS = (
    "SELECT sha256 FROM contents WHERE sha256 NOT IN"
    " (SELECT content_sha256 FROM outcomes WHERE content_sha256 IS NOT NULL)"
)
_GC_CHUNK = 5000  # hashes per statement (bound twice: below SQLite's limit of 32,766 parameters)


class SQLiteStore(Writes):
    """See the module docstring. Open with `await SQLiteStore.open(path)`."""

    @property
    def hooks(self) -> SQLiteHooks:
        """Subscriptions and deliveries for events out (store/hooks.py)."""
        from matrix_mcp.store.sqlite.hooks import SQLiteHooks

        return SQLiteHooks(self)

    async def get_outcome(self, outcome_id: str, *, history: bool = False) -> OutcomeDetail:
        def op(c: sqlite3.Connection) -> OutcomeDetail:
            row = c.execute(_OUTCOME_SELECT + " WHERE o.id = ?", (outcome_id,)).fetchone()
            if row is None:
                raise rules.unknown_outcome(outcome_id)
            hist = []
            if history:
                hist = c.execute(
                    "SELECT attempt, worker, principal, status, error, started_at, ended_at FROM outcome_attempts"
                    " WHERE outcome_id = ? ORDER BY started_at, attempt",
                    (outcome_id,),
                ).fetchall()
            return R.detail_from(row, hist)

        return await self._read(op)

    async def list_outcomes(
        self, flt: OutcomeFilter, *, limit: int, cursor: str | None = None
    ) -> OutcomePage:
        after = R.decode_cursor(cursor)
        pinned = R.outcome_filter(flt)

        def op(c: sqlite3.Connection) -> OutcomePage:
            rows = c.execute(
                _OUTCOME_SELECT
                + " WHERE "
                + " AND ".join(["o.n > ?", *(f"{column} = ?" for column, _ in pinned)])
                + " ORDER BY o.n LIMIT ?",
                [after, *(value for _, value in pinned), limit + 1],
            ).fetchall()
            return R.outcome_page(rows, limit)

        return await self._read(op)

    def iter_outcomes(self, run_id: str) -> AsyncIterator[Outcome]:
        return paged_outcomes(self.list_outcomes, run_id)

    async def run_minutes(self, run_id: str, *, since_minute: int) -> list[MinuteCount]:
        def op(c: sqlite3.Connection) -> list[MinuteCount]:
            rows = c.execute(
                "SELECT minute, completed, failed FROM outcome_minutes WHERE run_id = ? AND minute >= ?"
                " ORDER BY minute",
                (run_id, since_minute),
            ).fetchall()
            return [MinuteCount(int(r[0]), int(r[1]), int(r[2])) for r in rows]

        return await self._read(op)

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

    async def package_summary(self, package: str, *, run_id: str | None) -> PackageSummary:
        def op(c: sqlite3.Connection) -> PackageSummary:
            if run_id is not None:
                found = _summaries(c, "p.run_id = ? AND p.name = ?", [run_id, package])
            else:
                found = _summaries(c, "p.name = ?", [package])
            return R.the_one_summary(found, package)

        return await self._read(op)

    async def system_metrics(self, run_id: str | None, *, now: float) -> SystemMetrics:
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
            since_minute = R.hourly_since_minute(now)
            hours = c.execute(
                "SELECT minute / 60 AS hour, SUM(completed) AS completed, SUM(failed) AS failed,"
                " SUM(duration_sum) AS ds, SUM(duration_n) AS dn FROM outcome_minutes"
                " WHERE minute >= ?"
                + (" AND run_id = ?" if run_id else "")
                + " GROUP BY minute / 60 ORDER BY hour",
                [since_minute, *args],
            ).fetchall()
            run_name = None
            if run_id:
                run_name = c.execute("SELECT name FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
            return R.system_metrics_from(run_name, t, hours)

        return await self._read(op)

    async def run_overview(self, run_id: str, *, since: float) -> RunOverview:
        def op(c: sqlite3.Connection) -> RunOverview:
            summaries = _summaries(c, "p.run_id = ?", [run_id])
            finished = c.execute(
                "SELECT COALESCE(SUM(completed + failed), 0) FROM outcome_minutes WHERE run_id = ? AND minute >= ?",
                (run_id, int(since // 60)),
            ).fetchone()[0]
            latest = c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            return RunOverview(_run(c, run_id), summaries, int(finished), int(latest))

        return await self._read(op)

    # ---- API keys -------------------------------------------------------------------------------

    async def create_api_key(self, name: str, *, key_hash: str, scopes: Sequence[str], now: float) -> ApiKey:
        def op(c: sqlite3.Connection) -> ApiKey:
            if c.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone() is not None:
                raise rules.key_exists(name)
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

    async def revoke_api_key(self, name: str, *, now: float) -> ApiKey:
        def op(c: sqlite3.Connection) -> ApiKey:
            c.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name))
            row = c.execute("SELECT * FROM api_keys WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise rules.unknown_key(name)
            return R.api_key_from(row)

        return await self._write(op)

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        def op(c: sqlite3.Connection) -> ApiKey | None:
            row = c.execute("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
            return None if row is None else R.api_key_from(row)

        return await self._read(op)

    async def touch_api_key(self, name: str, *, now: float) -> None:
        def op(c: sqlite3.Connection) -> None:
            # never backwards (as on PostgreSQL): processes stamp uses with their own clocks
            c.execute(
                "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE name = ?",
                (now, name),
            )

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

    async def events_after(self, *, since: int, run_id: str | None = None, limit: int) -> list[Event]:
        def op(c: sqlite3.Connection) -> list[Event]:
            sql = "SELECT e.*, r.name AS run_name FROM events e LEFT JOIN runs r ON r.id = e.run_id WHERE e.seq > ?"
            args: list[Any] = [since]
            if run_id is not None:
                sql += " AND e.run_id = ?"
                args.append(run_id)
            rows = c.execute(sql + " ORDER BY e.seq LIMIT ?", [*args, limit]).fetchall()
            return [R.event_from(r) for r in rows]

        return await self._read(op)

    async def wait_for_change(self, since: int, *, timeout: float) -> int:
        """Wakes on this process's commits at once and on other processes' within ~50–200 ms."""
        deadline = anyio.current_time() + timeout
        poll = 0.05
        while True:
            latest = await self.latest_seq()
            remaining = deadline - anyio.current_time()
            if latest > since or remaining <= 0:
                return latest
            changed = self._next_change()
            with anyio.move_on_after(min(poll, remaining)):
                await changed.wait()
            poll = min(poll * 1.5, 0.2)

    # ---- maintenance ----------------------------------------------------------------------------

    async def recount(self, run_id: str | None = None) -> RecountReport:
        return await self._read(lambda c: _recount(c, run_id))

    async def inline_content(self, sha256: str) -> bytes | None:
        def op(c: sqlite3.Connection) -> bytes | None:
            row = c.execute("SELECT body FROM contents WHERE sha256 = ?", (sha256,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._read(op)

    async def content_hashes(self) -> set[str]:
        return await self._read(
            lambda c: {
                r[0]
                for r in c.execute(
                    "SELECT DISTINCT content_sha256 FROM outcomes WHERE content_sha256 IS NOT NULL"
                )
            }
        )

    async def collect_contents(self) -> Collected:
        """Orphans found on a reader; deleted after the same check in a write transaction (the one writer:
        no report is between its content and its outcome there)."""
        candidates: list[str] = await self._read(lambda c: [r[0] for r in c.execute(_ORPHAN_CONTENTS)])
        if not candidates:
            return Collected(0, 0)

        def op(c: sqlite3.Connection) -> Collected:
            removed = removed_bytes = 0
            for i in range(0, len(candidates), _GC_CHUNK):
                chunk = candidates[i : i + _GC_CHUNK]
                marks = ", ".join("?" for _ in chunk)  # placeholders only; the hashes are bound
                for (size,) in c.execute(
                    "DELETE FROM contents WHERE sha256 IN (" + marks + ") AND sha256 NOT IN"
                    " (SELECT content_sha256 FROM outcomes WHERE content_sha256 IN (" + marks + "))"
                    " RETURNING length(body)",
                    [*chunk, *chunk],
                ).fetchall():
                    removed += 1
                    removed_bytes += int(size)
            return Collected(removed, removed_bytes)

        return await self._write(op)

    async def content_files(self, *, since_seq: int, limit: int) -> list[ContentFile]:
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


__all__ = ["SQLiteStore", "StoreError"]
