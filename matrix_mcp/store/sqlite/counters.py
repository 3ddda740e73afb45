"""The SQLite store's counters: status moves, summary sums, the duration histogram, per-minute
throughput, and the recount that checks them against the rows (inside the writer's transaction)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from matrix_mcp.models import (
    PackageSummary,
    RecountReport,
    Status,
)
from matrix_mcp.store import rows as R
from matrix_mcp.store.sqlite.sql import _COMPLETE_SQL, _COUNTER_COLUMNS, _MOVE_CONTRIB_SQL, _MOVE_SQL


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
    c.execute(
        "UPDATE packages SET duration_hist = ? WHERE id = ?", (_hist_add(row[0], duration, sign), package_id)
    )


def _hist_add(text: str | None, duration: float, sign: int) -> str:
    """The histogram column with one duration added (sign +1) or taken away (-1)."""
    hist = _hist_loads(text)
    bucket = R.duration_bucket(duration)
    n = hist.get(bucket, 0) + sign
    if n:
        hist[bucket] = n
    else:
        hist.pop(bucket, None)
    return _hist_dumps(hist)


def _complete_counters(
    c: sqlite3.Connection, row: sqlite3.Row, contrib: dict[str, float], duration: float | None
) -> None:
    """A fresh completion of a leased row (read in this transaction with its package's histogram): the
    status move, the summary sums and the duration histogram in one statement."""
    if duration is None:
        _move(c, row["package_id"], "generating", "complete", contrib)
        return
    hist = _hist_add(row["package_duration_hist"], duration, +1)
    c.execute(_COMPLETE_SQL, (*(contrib[k] for k in _COUNTER_COLUMNS), hist, row["package_id"]))


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
    truth = R.Truth(_COUNTER_COLUMNS)
    for status, n in c.execute(
        "SELECT status, COUNT(*) FROM outcomes WHERE package_id = ? GROUP BY status", (package_id,)
    ):
        truth.count(status, n)
    for metrics, duration in c.execute(
        "SELECT metrics, duration_seconds FROM outcomes WHERE package_id = ? AND status = 'complete'",
        (package_id,),
    ):
        truth.complete(metrics, duration)
    return truth.result()


def _recount(c: sqlite3.Connection, run_id: str | None) -> RecountReport:
    where, args = ("WHERE p.run_id = ?", [run_id]) if run_id else ("", [])
    mismatches: list[str] = []
    for p in c.execute(
        "SELECT p.*, r.name AS run_name FROM packages p JOIN runs r ON r.id = p.run_id " + where, args
    ):
        hist = {b: n for b, n in _hist_loads(p["duration_hist"]).items() if n != 0}
        mismatches += R.counter_mismatches(p, _truth(c, p["id"]), hist, _COUNTER_COLUMNS)
    return RecountReport(consistent=not mismatches, mismatches=mismatches)
