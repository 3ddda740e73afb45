"""The PostgreSQL store's counters read back: package summaries (rolled rows plus unrolled deltas),
the recount that checks them against the rows, and the rebuild."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import psycopg

from matrix_mcp.models import (
    STATUSES,
    PackageSummary,
    RecountReport,
    Status,
    SystemMetrics,
)
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import FinishedSpan, MinuteCount
from matrix_mcp.store.postgres.batch import Conn, Row, fetch_all, fetch_one
from matrix_mcp.store.postgres.migrations import ROLLUP_LOCK
from matrix_mcp.store.postgres.sql import COUNTER_COLUMNS, RUN_SUMMARIES_SQL, SUMMARY_SELECT

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database

# what a summary is built from (besides the histogram): its memo key
_SUMMARY_FIELDS = ("id", "name", "description", "position", "run_name", "total", *STATUSES, *COUNTER_COLUMNS)


_summary_key = operator.itemgetter(*_SUMMARY_FIELDS)


_SUMMARY_MEMO: dict[tuple[Any, ...], PackageSummary] = {}


SUMMARY_MEMO_SIZE = 4096


def summary_of(row: Row) -> PackageSummary:
    """R.summary_from for a RUN_SUMMARIES_SQL row. A package whose counters and histogram are unchanged
    since the last call gets a copy of the summary built then (status polls see mostly unchanged rows)."""
    hb, hn, db, dn = row["hb"] or (), row["hn"] or (), row["db"] or (), row["dn"] or ()
    key = (*_summary_key(row), tuple(hb), tuple(hn), tuple(db), tuple(dn))
    found = _SUMMARY_MEMO.get(key)
    if found is not None:
        return _shallow_copy(found)
    hist: dict[int, int] = dict(zip(hb, hn, strict=True))
    for b, n in zip(db, dn, strict=True):
        hist[b] = hist.get(b, 0) + n
    summary = R.summary_from(row, {b: n for b, n in sorted(hist.items()) if n > 0})
    if len(_SUMMARY_MEMO) >= SUMMARY_MEMO_SIZE:
        _SUMMARY_MEMO.clear()
    _SUMMARY_MEMO[key] = summary.model_copy()
    return summary


def _shallow_copy(m: PackageSummary) -> PackageSummary:
    """What `model_copy()` makes (a shallow copy), without its generic path: a hundred per status poll."""
    if m.__pydantic_extra__ is not None or m.__pydantic_private__ is not None:
        return m.model_copy()
    new = PackageSummary.__new__(PackageSummary)
    object.__setattr__(new, "__dict__", m.__dict__.copy())
    object.__setattr__(new, "__pydantic_fields_set__", m.__pydantic_fields_set__.copy())
    object.__setattr__(new, "__pydantic_extra__", None)
    object.__setattr__(new, "__pydantic_private__", None)
    return new


async def summaries(c: Conn, where: str, args: list[Any]) -> list[PackageSummary]:
    rows = await fetch_all(c, SUMMARY_SELECT + " WHERE " + where + " ORDER BY r.created_at, p.position", args)
    return [R.summary_from(r, {int(b): int(n) for b, n in zip(r["hb"], r["hn"], strict=True)}) for r in rows]


async def package_truth(c: Conn, package_id: int) -> dict[str, Any]:
    truth = R.Truth(COUNTER_COLUMNS)
    for r in await fetch_all(
        c, "SELECT status, COUNT(*) AS n FROM outcomes WHERE package_id = %s GROUP BY status", (package_id,)
    ):
        truth.count(r["status"], r["n"])
    async with c.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        await cur.execute(
            "SELECT metrics, duration_seconds FROM outcomes WHERE package_id = %s AND status = 'complete'",
            (package_id,),
        )
        async for metrics, duration in cur:
            truth.complete(metrics, duration)
    return truth.result()


async def recount_rows(c: Conn, run_id: str | None) -> RecountReport:
    where, args = ("WHERE p.run_id = %s", [run_id]) if run_id else ("", [])
    mismatches: list[str] = []
    packages = await fetch_all(
        c,
        "SELECT p.*, r.name AS run_name FROM package_counters p JOIN runs r ON r.id = p.run_id " + where,
        args,
    )
    for p in packages:
        truth = await package_truth(c, int(p["id"]))
        hist = {
            int(h["bucket"]): int(h["n"])
            for h in await fetch_all(
                c, "SELECT bucket, n FROM package_hist WHERE package_id = %s AND n <> 0", (p["id"],)
            )
        }
        mismatches += R.counter_mismatches(p, truth, hist, COUNTER_COLUMNS)
    return RecountReport(consistent=not mismatches, mismatches=mismatches)


async def rebuild_rows(c: Conn, run_id: str | None) -> None:
    where, args = ("WHERE run_id = %s", [run_id]) if run_id else ("", [])
    ids = [int(r["id"]) for r in await fetch_all(c, "SELECT id FROM packages " + where, args)]
    await c.execute("DELETE FROM package_deltas WHERE package_id = ANY(%b::bigint[])", (ids,))
    for pid in ids:
        truth = await package_truth(c, pid)
        buckets = sorted(b for b, n in truth["hist"].items() if n)
        await c.execute(
            "UPDATE packages SET total = %s, pending = %s, generating = %s, complete = %s, failed = %s,"
            " cancelled = %s, duration_sum = %s, duration_n = %s, lines_sum = %s, quality_sum = %s,"
            " quality_n = %s, hist_b = %b::int4[], hist_n = %b::int8[] WHERE id = %s",
            (
                truth["total"],
                *(truth[s] for s in STATUSES),
                truth["duration_sum"],
                round(truth["duration_n"]),
                truth["lines_sum"],
                truth["quality_sum"],
                round(truth["quality_n"]),
                buckets,
                [truth["hist"][b] for b in buckets],
                pid,
            ),
        )


async def run_minutes(db: Database, run_id: str, *, since_minute: int) -> list[MinuteCount]:
    async def op(c: Conn) -> list[MinuteCount]:
        rows = await fetch_all(
            c,
            "SELECT minute, completed::bigint AS completed, failed::bigint AS failed FROM run_minutes"
            " WHERE run_id = %s AND minute >= %s ORDER BY minute",
            (run_id, since_minute),
        )
        return [MinuteCount(int(r["minute"]), int(r["completed"]), int(r["failed"])) for r in rows]

    return await db.read(op)


async def finished_span(db: Database, run_id: str) -> FinishedSpan:
    async def op(c: Conn) -> FinishedSpan:
        rows = await fetch_all(
            c,
            "SELECT COUNT(*)::bigint AS n, MIN(started_at) AS first, MAX(completed_at) AS last"
            " FROM outcomes WHERE run_id = %s AND status IN ('complete', 'failed')",
            (run_id,),
        )
        row = rows[0]
        return FinishedSpan(int(row["n"]), row["first"], row["last"])

    return await db.read(op)


async def package_summaries(db: Database, run_id: str) -> list[PackageSummary]:
    async def op(c: Conn) -> list[PackageSummary]:
        return [summary_of(r) for r in await fetch_all(c, RUN_SUMMARIES_SQL, {"run": run_id})]

    return await db.read(op)


async def package_summary(db: Database, package: str, *, run_id: str | None) -> PackageSummary:
    async def op(c: Conn) -> PackageSummary:
        if run_id is not None:
            found = await summaries(c, "p.run_id = %s AND p.name = %s", [run_id, package])
        else:
            found = await summaries(c, "p.name = %s", [package])
        return R.the_one_summary(found, package)

    return await db.read(op)


async def system_metrics(db: Database, run_id: str | None, *, now: float) -> SystemMetrics:
    async def op(c: Conn) -> SystemMetrics:
        where, args = ("WHERE run_id = %s", [run_id]) if run_id else ("", [])
        t = await fetch_one(
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
        hours = await fetch_all(
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
            r = await fetch_one(c, "SELECT name FROM runs WHERE id = %s", (run_id,))
            run_name = r["name"] if r else None
        return R.system_metrics_from(run_name, t, hours)

    return await db.read(op, snapshot=True)


async def status_counts(db: Database) -> dict[str, dict[Status, int]]:
    async def op(c: Conn) -> dict[str, dict[Status, int]]:
        rows = await fetch_all(
            c,
            "SELECT name, SUM(pending) AS pending, SUM(generating) AS generating,"
            " SUM(complete) AS complete, SUM(failed) AS failed, SUM(cancelled) AS cancelled"
            " FROM package_counters GROUP BY name ORDER BY name",
        )
        return R.status_counts_from(rows)

    return await db.read(op)


async def recount(db: Database, run_id: str | None = None) -> RecountReport:
    return await db.read(lambda c: recount_rows(c, run_id), snapshot=True)


async def rebuild_counters(db: Database, run_id: str | None = None) -> None:
    async def attempt() -> None:
        async with db.pool.connection() as c:
            await c.execute("SELECT pg_advisory_lock(%s)", (ROLLUP_LOCK,))
            try:
                async with c.transaction():
                    await c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    await rebuild_rows(c, run_id)
            finally:
                await c.execute("SELECT pg_advisory_unlock(%s)", (ROLLUP_LOCK,))

    await db.with_retry(attempt)
    db.wake()
