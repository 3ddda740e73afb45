"""The PostgreSQL store's counters read back: package summaries (rolled rows plus unrolled deltas),
the recount that checks them against the rows, and the rebuild."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import psycopg

from matrix_mcp.models import PackageSummary, RecountReport, Status, SystemMetrics
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import FinishedSpan, MinuteCount
from matrix_mcp.store.postgres import sql
from matrix_mcp.store.postgres.batch import Conn, Row, fetch_all, fetch_one
from matrix_mcp.store.postgres.migrations import ROLLUP_LOCK
from matrix_mcp.store.postgres.sql import COUNTED_STATUSES, COUNTER_COLUMNS, RUN_SUMMARIES_SQL, SUMMARY_SELECT

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database

# what a summary is built from (besides the histogram): its memo key
_SUMMARY_FIELDS = (
    "id",
    "name",
    "description",
    "position",
    "run_name",
    "total",
    *COUNTED_STATUSES,
    *COUNTER_COLUMNS,
    "priority",
    "max_concurrent",
    "after",
    *sql.USAGE_COLUMNS,
    "review",
)


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
    for r in await fetch_all(c, sql.PACKAGE_TRUTH_SELECT_OUTCOMES, (package_id,)):
        truth.count(r["status"], r["n"])
    async with c.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        await cur.execute(
            sql.PACKAGE_TRUTH_SELECT_OUTCOMES_2,
            (package_id,),
        )
        async for metrics, duration in cur:
            truth.complete(metrics, duration)
    spent = await fetch_one(c, sql.PACKAGE_USAGE_TRUTH, (package_id,))
    assert spent is not None
    return {**truth.result(), **{k: spent[k] for k in sql.USAGE_COLUMNS}}


async def recount_rows(c: Conn, run_id: str | None) -> RecountReport:
    where, args = ("WHERE p.run_id = %s", [run_id]) if run_id else ("", [])
    mismatches: list[str] = []
    packages = await fetch_all(
        c,
        sql.RECOUNT_ROWS_SELECT_PACKAGE_COUNTERS + where,
        args,
    )
    for p in packages:
        truth = await package_truth(c, int(p["id"]))
        hist = {
            int(h["bucket"]): int(h["n"])
            for h in await fetch_all(c, sql.RECOUNT_ROWS_SELECT_PACKAGE_HIST, (p["id"],))
        }
        mismatches += R.counter_mismatches(p, truth, hist, (*COUNTER_COLUMNS, *sql.USAGE_COLUMNS))
    for t in await fetch_all(c, sql.RECOUNT_RUN_COUNTERS, ([run_id] if run_id else None,) * 2):
        mismatches += [
            f"{t['name']}: run {s} counter {t[s]} != packages {t['p_' + s]}"
            for s in COUNTED_STATUSES
            if int(t[s]) != int(t["p_" + s])
        ]
    if run_id:
        mismatches += R.waiting_mismatches(await fetch_all(c, sql.WAITING_TRUTH_OF_RUN, (run_id,)))
    else:
        mismatches += R.waiting_mismatches(await fetch_all(c, sql.WAITING_TRUTH))
    run = {"run": run_id}
    mismatches += R.worker_usage_mismatches(
        await fetch_all(c, sql.WORKER_USAGE_ROWS, run), await fetch_all(c, sql.WORKER_USAGE_TRUTH, run)
    )
    mismatches += R.run_spent_mismatches(await fetch_all(c, sql.RECOUNT_RUN_SPENT, run))
    return RecountReport(consistent=not mismatches, mismatches=mismatches)


async def rebuild_rows(c: Conn, run_id: str | None) -> None:
    where, args = ("WHERE run_id = %s", [run_id]) if run_id else ("", [])
    rows = await fetch_all(c, sql.REBUILD_ROWS_SELECT_PACKAGES + where, args)
    ids = [int(r["id"]) for r in rows]
    await c.execute(sql.REBUILD_ROWS_DELETE_PACKAGE_DELTAS, (ids,))
    for pid in ids:
        truth = await package_truth(c, pid)
        buckets = sorted(b for b, n in truth["hist"].items() if n)
        await c.execute(
            sql.REBUILD_ROWS_UPDATE_PACKAGES,
            (
                truth["total"],
                *(truth[s] for s in COUNTED_STATUSES),
                truth["duration_sum"],
                round(truth["duration_n"]),
                truth["lines_sum"],
                truth["quality_sum"],
                round(truth["quality_n"]),
                *(truth[k] for k in sql.USAGE_COLUMNS),
                buckets,
                [truth["hist"][b] for b in buckets],
                pid,
            ),
        )
    runs = [run_id] if run_id else [r["id"] for r in await fetch_all(c, sql.REBUILD_ROWS_SELECT_RUNS)]
    await c.execute(sql.REBUILD_RUN_COUNTERS, (runs,))
    await c.execute(sql.DELETE_WORKER_USAGE, {"run": run_id})
    await c.execute(sql.REBUILD_WORKER_USAGE, {"run": run_id})
    await c.execute(sql.REBUILD_RUN_SPENT, {"run": run_id})  # the packages' sums, rebuilt above


async def run_minutes(db: Database, run_id: str, *, since_minute: int) -> list[MinuteCount]:
    async def op(c: Conn) -> list[MinuteCount]:
        rows = await fetch_all(
            c,
            sql.RUN_MINUTES_SELECT_RUN_MINUTES,
            (run_id, since_minute),
        )
        return [MinuteCount(int(r["minute"]), int(r["completed"]), int(r["failed"])) for r in rows]

    return await db.read(op)


async def finished_span(db: Database, run_id: str) -> FinishedSpan:
    async def op(c: Conn) -> FinishedSpan:
        rows = await fetch_all(
            c,
            sql.FINISHED_SPAN_SELECT_OUTCOMES,
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
            sql.SYSTEM_METRICS_SELECT_PACKAGE_COUNTERS + where,
            args,
        )
        assert t is not None
        since_minute = R.hourly_since_minute(now)
        hours = await fetch_all(
            c,
            sql.SYSTEM_METRICS_SELECT_RUN_MINUTES
            + (" AND run_id = %s" if run_id else "")
            + " GROUP BY minute / 60 ORDER BY hour",
            [since_minute, *args],
        )
        run_name = None
        if run_id:
            r = await fetch_one(c, sql.SYSTEM_METRICS_SELECT_RUNS, (run_id,))
            run_name = r["name"] if r else None
        return R.system_metrics_from(run_name, t, hours)

    return await db.read(op, snapshot=True)


async def status_counts(db: Database) -> dict[str, dict[Status, int]]:
    async def op(c: Conn) -> dict[str, dict[Status, int]]:
        rows = await fetch_all(
            c,
            sql.STATUS_COUNTS_SELECT_PACKAGE_COUNTERS,
        )
        return R.status_counts_from(rows)

    return await db.read(op)


async def active_status_counts(
    db: Database, limit: int
) -> tuple[dict[Status, int], dict[str, dict[Status, int]]]:
    async def op(c: Conn) -> tuple[dict[Status, int], dict[str, dict[Status, int]]]:
        await c.execute(sql.JIT_OFF)
        totals = R.totals_from(await fetch_one(c, sql.ACTIVE_TOTALS))
        names = sorted({row["name"] for row in await fetch_all(c, sql.ACTIVE_NAMES, (limit,))})
        if not names:
            return totals, {}
        return totals, R.status_counts_from(await fetch_all(c, sql.ACTIVE_COUNTS, (names,)))

    return await db.read(op, snapshot=True)  # one snapshot: totals and packages agree


async def recount(db: Database, run_id: str | None = None) -> RecountReport:
    return await db.read(lambda c: recount_rows(c, run_id), snapshot=True)


async def rebuild_counters(db: Database, run_id: str | None = None) -> None:
    async def attempt() -> None:
        async with db.pool.connection() as c:
            await c.execute(sql.ROLLUP_LOCK_TAKE, (ROLLUP_LOCK,))
            try:
                async with c.transaction():
                    await c.execute(sql.SET_REPEATABLE_READ)
                    await rebuild_rows(c, run_id)
            finally:
                await c.execute(sql.ROLLUP_LOCK_RELEASE, (ROLLUP_LOCK,))

    await db.with_retry(attempt)
    db.wake()
