"""The SQLite store's counters: status moves, summary sums, the duration histogram, per-minute
throughput, and the recount that checks them against the rows (inside the writer's transaction)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from matrix_mcp import rules
from matrix_mcp.audit import current_principal
from matrix_mcp.models import PackageSummary, RecountReport, Status, SystemMetrics
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import FinishedSpan, MinuteCount
from matrix_mcp.store.sqlite import events, sql, usage
from matrix_mcp.store.sqlite.connection import Database


def apply(
    c: sqlite3.Connection, row: rules.RowLike, t: rules.Transition, now: float, *, hist_read: bool = False
) -> None:
    """Write what a rules.Transition decided for the item `row` (locked under the single writer): its row,
    its attempt's end, the package counters, its metric rows, the run's minute and the event. `hist_read`:
    the row carries its package's histogram (`package_duration_hist`), so a completion's status move, sums
    and histogram go in one statement."""
    c.execute(sql.update_outcome(tuple(t.values)), (*t.values.values(), row["n"]))
    if t.attempt is not None:
        end = t.attempt
        if t.usage is not None:  # the usage its report gave goes on the attempt as it ends
            c.execute(
                sql.END_ATTEMPT_USAGE,
                (end.status, end.error, now, *usage.reported(t.usage), t.outcome_id, end.lease_token),
            )
        else:
            c.execute(sql.END_ATTEMPT, (end.status, end.error, now, t.outcome_id, end.lease_token))
    if t.usage is not None or t.review is not None:
        usage.record(c, row, t, now)
    added = [x for x in t.contributions if x.sign > 0]
    for x in t.contributions:
        if x.sign < 0:
            _add_contribution(c, t.package_id, x.metrics, x.duration, -1)
    if hist_read and len(added) == 1 and t.old != t.new:
        _complete_counters(c, row, t.old, t.new, added[0])
    else:
        move(c, t.package_id, t.old, t.new)
        for x in added:
            _add_contribution(c, t.package_id, x.metrics, x.duration, +1)
    if t.clear_metric_rows:
        c.execute(sql.CLEAR_METRICS, (t.outcome_id,))
    if t.metric_rows is not None:
        _insert_metrics(c, t.outcome_id, t.metric_rows)
    if t.minute is not None:
        m = t.minute
        add_minute(c, t.run_id, now, completed=m.completed, failed=m.failed, duration=m.duration)
    events.add_event(c, t.run_id, t.outcome_id, t.event, now)


def start(c: sqlite3.Connection, row: rules.RowLike, t: rules.Transition, now: float) -> int:
    """Write what a claim's rules.Transition decided for the pending item `row` (locked under the single
    writer): its row, the attempt it starts and its event, then the package's counter move with the
    package's fairness clock set to that event's sequence (monotonic across processes), which it returns."""
    assert t.start is not None
    s = t.start
    c.execute(sql.update_outcome(tuple(t.values)), (*t.values.values(), row["n"]))
    c.execute(
        sql.START_ATTEMPT,
        (t.outcome_id, s.attempt, s.lease_token, s.worker, current_principal.get(), t.new, now),
    )
    seq = events.add_event(c, t.run_id, t.outcome_id, t.event, now)
    c.execute(sql.MOVE_CLOCK_SQL[t.old, t.new], (seq, t.package_id))
    return seq


def extend(c: sqlite3.Connection, row: sqlite3.Row, held: rules.Extension) -> None:
    """Write a heartbeat's rules.Extension on the item `row` (its `n`)."""
    c.execute(sql.update_outcome(tuple(held.values)), (*held.values.values(), row["n"]))


def apply_move(c: sqlite3.Connection, row: rules.RowLike, m: rules.Move) -> None:
    """Move one chosen item (`row`: its `n` and package_id) as the rules.Move says."""
    c.execute(sql.update_outcome(tuple(m.values)), (*m.values.values(), row["n"]))
    move(c, row["package_id"], m.old, m.new)


def move_run(c: sqlite3.Connection, run_id: str, m: rules.Move) -> int:
    """Move every item of the run in status m.old as the rules.Move says; how many moved."""
    per_package = c.execute(sql.COUNT_IN_STATUS, (run_id, m.old)).fetchall()
    c.execute(sql.update_run_outcomes(tuple(m.values)), (*m.values.values(), run_id, m.old))
    for package_id, n in per_package:
        c.execute(sql.MOVE_N_SQL[m.old, m.new], (n, n, package_id))
    return sum(n for _, n in per_package)


def move(
    c: sqlite3.Connection, package_id: int, old: Status, new: Status, contrib: dict[str, float] | None = None
) -> None:
    """Move one item between status counters; `contrib` adds a completion's sums in the same statement."""
    if old == new and contrib is None:
        return
    if contrib is None:
        c.execute(sql.MOVE_SQL[old, new], (package_id,))
    else:
        c.execute(sql.MOVE_CONTRIB_SQL[old, new], (*(contrib[k] for k in sql.COUNTER_COLUMNS), package_id))


def _add_histogram(c: sqlite3.Connection, package_id: int, duration: float, sign: int) -> None:
    """The duration histogram lives on the package row as JSON [[bucket, count], …]: a summary reads one row
    per package instead of one per bucket (read-modify-write is safe under the single writer)."""
    row = c.execute(sql.ADD_HISTOGRAM_SELECT_PACKAGES, (package_id,)).fetchone()
    c.execute(sql.SET_HISTOGRAM, (_hist_add(row[0], duration, sign), package_id))


# The texts this process last wrote to histogram columns, parsed: a completion reads back the text the one
# before it wrote, so it is parsed once, not once per completion. Keyed by the whole text, so a hit is exact
# (another process's write is a different text, parsed afresh); the parsed value is never changed in place.
_HIST_PARSED: dict[str, dict[int, int]] = {}
_HIST_KEPT = 256


def _hist_add(text: str | None, duration: float, sign: int) -> str:
    """The histogram column with one duration added (sign +1) or taken away (-1)."""
    parsed = _HIST_PARSED.get(text) if text is not None else None
    hist = dict(parsed) if parsed is not None else _hist_loads(text)
    bucket = R.duration_bucket(duration)
    n = hist.get(bucket, 0) + sign
    if n:
        hist[bucket] = n
    else:
        hist.pop(bucket, None)
    out = hist_dumps(hist)
    if len(_HIST_PARSED) >= _HIST_KEPT:
        _HIST_PARSED.clear()
    _HIST_PARSED[out] = hist
    return out


def _complete_counters(
    c: sqlite3.Connection, row: rules.RowLike, old: Status, new: Status, added: rules.Contribution
) -> None:
    """A move that adds a contribution, on a row read in this transaction with its package's histogram
    (a fresh completion): the status move, the summary sums and the duration histogram in one statement."""
    contrib = R.contribution(added.metrics, added.duration)
    if added.duration is None:
        move(c, row["package_id"], old, new, contrib)
        return
    hist = _hist_add(row["package_duration_hist"], added.duration, +1)
    c.execute(
        sql.COMPLETE_SQL[old, new], (*(contrib[k] for k in sql.COUNTER_COLUMNS), hist, row["package_id"])
    )


def _hist_loads(text: str | None) -> dict[int, int]:
    """The histogram column: a JSON list of [bucket, count] pairs in bucket order."""
    return dict(json.loads(text or "[]"))


def hist_dumps(hist: dict[int, int]) -> str:
    """json.dumps(sorted(hist.items()), separators=(",", ":")), written out: buckets and counts are ints."""
    return "[" + ",".join([f"[{b},{n}]" for b, n in sorted(hist.items())]) + "]"


def _add_contribution(
    c: sqlite3.Connection, package_id: int, metrics: Mapping[str, Any], duration: float | None, sign: int
) -> None:
    contrib = R.contribution(metrics, duration)
    c.execute(
        sql.ADD_CONTRIBUTION_UPDATE_PACKAGES,
        (*(sign * contrib[k] for k in sql.COUNTER_COLUMNS), package_id),
    )
    if duration is not None:
        _add_histogram(c, package_id, duration, sign)


def _insert_metrics(c: sqlite3.Connection, outcome_id: str, metrics: Mapping[str, Any]) -> None:
    """Numeric metrics as rows (an item has none while it is not complete: they go when it leaves)."""
    values = R.numeric_metrics(metrics)
    if values:
        c.executemany(sql.INSERT_METRIC, [(outcome_id, k, v) for k, v in values])


def add_minute(
    c: sqlite3.Connection,
    run_id: str,
    now: float,
    completed: int = 0,
    failed: int = 0,
    duration: float | None = None,
) -> None:
    c.execute(
        sql.ADD_MINUTE_INSERT_OUTCOME_MINUTES,
        (run_id, int(now // 60), completed, failed, duration or 0.0, 1 if duration is not None else 0),
    )


def summaries(c: sqlite3.Connection, where: str, args: list[Any]) -> list[PackageSummary]:
    rows = c.execute(
        sql.SUMMARIES_SELECT_PACKAGES + where + " ORDER BY r.created_at, p.position",
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


def package_truth(c: sqlite3.Connection, package_id: int) -> dict[str, Any]:
    truth = R.Truth(sql.COUNTER_COLUMNS)
    for status, n in c.execute(sql.PACKAGE_TRUTH_SELECT_OUTCOMES, (package_id,)):
        truth.count(status, n)
    for metrics, duration in c.execute(
        sql.PACKAGE_TRUTH_SELECT_OUTCOMES_2,
        (package_id,),
    ):
        truth.complete(metrics, duration)
    spent = c.execute(sql.PACKAGE_USAGE_TRUTH, (package_id,)).fetchone()
    return {**truth.result(), **dict(zip(R.USAGE_COLUMNS, spent, strict=True))}


def recount_rows(c: sqlite3.Connection, run_id: str | None) -> RecountReport:
    where, args = ("WHERE p.run_id = ?", [run_id]) if run_id else ("", [])
    mismatches: list[str] = []
    for p in c.execute(sql.RECOUNT_ROWS_SELECT_PACKAGES + where, args):
        hist = {b: n for b, n in _hist_loads(p["duration_hist"]).items() if n != 0}
        mismatches += R.counter_mismatches(
            p, package_truth(c, p["id"]), hist, (*sql.COUNTER_COLUMNS, *R.USAGE_COLUMNS)
        )
    waiting = c.execute(sql.WAITING_TRUTH_OF_RUN, (run_id,)) if run_id else c.execute(sql.WAITING_TRUTH)
    mismatches += R.waiting_mismatches(waiting)
    mismatches += R.worker_usage_mismatches(
        c.execute(sql.WORKER_USAGE_ROWS, (run_id,)), c.execute(sql.WORKER_USAGE_TRUTH, (run_id,))
    )
    mismatches += R.run_spent_mismatches(c.execute(sql.RECOUNT_RUN_SPENT, (run_id,)))
    return RecountReport(consistent=not mismatches, mismatches=mismatches)


async def run_minutes(db: Database, run_id: str, *, since_minute: int) -> list[MinuteCount]:
    def op(c: sqlite3.Connection) -> list[MinuteCount]:
        rows = c.execute(
            sql.RUN_MINUTES_SELECT_OUTCOME_MINUTES,
            (run_id, since_minute),
        ).fetchall()
        return [MinuteCount(int(r[0]), int(r[1]), int(r[2])) for r in rows]

    return await db.read(op)


async def package_summaries(db: Database, run_id: str) -> list[PackageSummary]:
    return await db.read(lambda c: summaries(c, "p.run_id = ?", [run_id]))


async def package_summary(db: Database, package: str, *, run_id: str | None) -> PackageSummary:
    def op(c: sqlite3.Connection) -> PackageSummary:
        if run_id is not None:
            found = summaries(c, "p.run_id = ? AND p.name = ?", [run_id, package])
        else:
            found = summaries(c, "p.name = ?", [package])
        return R.the_one_summary(found, package)

    return await db.read(op)


async def system_metrics(db: Database, run_id: str | None, *, now: float) -> SystemMetrics:
    def op(c: sqlite3.Connection) -> SystemMetrics:
        where, args = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
        t = c.execute(
            sql.SYSTEM_METRICS_SELECT_PACKAGES + where,
            args,
        ).fetchone()
        since_minute = R.hourly_since_minute(now)
        hours = c.execute(
            sql.SYSTEM_METRICS_SELECT_OUTCOME_MINUTES
            + (" AND run_id = ?" if run_id else "")
            + " GROUP BY minute / 60 ORDER BY hour",
            [since_minute, *args],
        ).fetchall()
        run_name = None
        if run_id:
            run_name = c.execute(sql.SYSTEM_METRICS_SELECT_RUNS, (run_id,)).fetchone()[0]
        return R.system_metrics_from(run_name, t, hours)

    return await db.read(op)


async def status_counts(db: Database) -> dict[str, dict[Status, int]]:
    return await db.read(lambda c: R.status_counts_from(c.execute(sql.STATUS_COUNTS_SELECT_PACKAGES)))


async def active_status_counts(
    db: Database, limit: int
) -> tuple[dict[Status, int], dict[str, dict[Status, int]]]:
    def op(c: sqlite3.Connection) -> tuple[dict[Status, int], dict[str, dict[Status, int]]]:
        totals = R.totals_from(c.execute(sql.ACTIVE_TOTALS).fetchone())
        # the first `limit` busy packages, then their names' counts over all runs
        names = sorted({row[0] for row in c.execute(sql.ACTIVE_NAMES, (limit,))})
        if not names:
            return totals, {}
        return totals, R.status_counts_from(c.execute(sql.active_counts(len(names)), names))

    return await db.read(op)


async def recount(db: Database, run_id: str | None = None) -> RecountReport:
    return await db.read(lambda c: recount_rows(c, run_id))


async def rebuild_counters(db: Database, run_id: str | None = None) -> None:
    def op(c: sqlite3.Connection) -> None:
        where, args = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
        for p in c.execute(sql.REBUILD_COUNTERS_SELECT_PACKAGES + where, args).fetchall():
            truth = package_truth(c, p[0])
            c.execute(
                sql.REBUILD_COUNTERS_UPDATE_PACKAGES,
                (
                    truth["total"],
                    *(truth[s] for s in sql.COUNTED_STATUSES),
                    *(truth[k] for k in sql.COUNTER_COLUMNS),
                    *(truth[k] for k in R.USAGE_COLUMNS),
                    p[0],
                ),
            )
            c.execute(sql.SET_HISTOGRAM, (hist_dumps(truth["hist"]), p[0]))
        c.execute(sql.DELETE_WORKER_USAGE, (run_id,))
        c.execute(sql.REBUILD_WORKER_USAGE, (run_id,))
        c.execute(sql.REBUILD_RUN_SPENT, (run_id,))

    await db.write(op)


async def finished_span(db: Database, run_id: str) -> FinishedSpan:
    def op(c: sqlite3.Connection) -> FinishedSpan:
        row = c.execute(sql.FINISHED_SPAN, (run_id,)).fetchone()
        return FinishedSpan(int(row[0]), row[1], row[2])

    return await db.read(op)
