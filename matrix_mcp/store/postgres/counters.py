"""The PostgreSQL store's counters read back: package summaries (rolled rows plus unrolled deltas),
the recount that checks them against the rows, and the rebuild."""

from __future__ import annotations

import operator
from typing import Any

import psycopg

from matrix_mcp.models import (
    STATUSES,
    PackageSummary,
    RecountReport,
)
from matrix_mcp.store import rows as R
from matrix_mcp.store.postgres.batch import Conn, Row, _all
from matrix_mcp.store.postgres.sql import _COUNTER_COLUMNS, _SUMMARY_SELECT

# what a summary is built from (besides the histogram): its memo key
_SUMMARY_FIELDS = ("id", "name", "description", "position", "run_name", "total", *STATUSES, *_COUNTER_COLUMNS)


_summary_key = operator.itemgetter(*_SUMMARY_FIELDS)


_SUMMARY_MEMO: dict[tuple[Any, ...], PackageSummary] = {}


SUMMARY_MEMO_SIZE = 4096


def _summary(row: Row) -> PackageSummary:
    """R.summary_from for a _RUN_SUMMARIES_SQL row. A package whose counters and histogram are unchanged
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


async def _summaries(c: Conn, where: str, args: list[Any]) -> list[PackageSummary]:
    rows = await _all(c, _SUMMARY_SELECT + " WHERE " + where + " ORDER BY r.created_at, p.position", args)
    return [R.summary_from(r, {int(b): int(n) for b, n in zip(r["hb"], r["hn"], strict=True)}) for r in rows]


async def _truth(c: Conn, package_id: int) -> dict[str, Any]:
    truth = R.Truth(_COUNTER_COLUMNS)
    for r in await _all(
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


async def _recount(c: Conn, run_id: str | None) -> RecountReport:
    where, args = ("WHERE p.run_id = %s", [run_id]) if run_id else ("", [])
    mismatches: list[str] = []
    packages = await _all(
        c,
        "SELECT p.*, r.name AS run_name FROM package_counters p JOIN runs r ON r.id = p.run_id " + where,
        args,
    )
    for p in packages:
        truth = await _truth(c, int(p["id"]))
        hist = {
            int(h["bucket"]): int(h["n"])
            for h in await _all(
                c, "SELECT bucket, n FROM package_hist WHERE package_id = %s AND n <> 0", (p["id"],)
            )
        }
        mismatches += R.counter_mismatches(p, truth, hist, _COUNTER_COLUMNS)
    return RecountReport(consistent=not mismatches, mismatches=mismatches)


async def _rebuild(c: Conn, run_id: str | None) -> None:
    where, args = ("WHERE run_id = %s", [run_id]) if run_id else ("", [])
    ids = [int(r["id"]) for r in await _all(c, "SELECT id FROM packages " + where, args)]
    await c.execute("DELETE FROM package_deltas WHERE package_id = ANY(%b::bigint[])", (ids,))
    for pid in ids:
        truth = await _truth(c, pid)
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
