"""The SQLite store's tracking API: items recorded and set by hand (update_outcome_status), reading
and listing outcomes, the board's cells and the integration log."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from matrix_mcp import rules
from matrix_mcp.models import IntegrationEvent, Outcome, OutcomeDetail, OutcomePage, Usage
from matrix_mcp.pagination import keyset_args
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import Cell, NewRecord, OutcomeFilter, Report, StatusChange
from matrix_mcp.store.sqlite import events, policy, sql
from matrix_mcp.store.sqlite.connection import Database


def read_outcome(c: sqlite3.Connection, outcome_id: str) -> Outcome:
    row = c.execute(sql.OUTCOME_BY_ID, (outcome_id,)).fetchone()
    if row is None:
        raise rules.unknown_outcome(outcome_id)
    return R.outcome_from(row)


def set_status(c: sqlite3.Connection, outcome_id: str, change: StatusChange, *, now: float) -> Outcome:
    status, error_message = change.status, change.error_message
    report, created_by = change.report, change.created_by
    row = c.execute(
        sql.SET_STATUS_SELECT_OUTCOMES,
        (outcome_id,),
    ).fetchone()
    if row is None:
        raise rules.unknown_outcome(outcome_id)
    t = rules.override(
        row, new=status, error_message=error_message, report=report, now=now, created_by=created_by
    )
    policy.apply(c, row, t, now)
    return read_outcome(c, outcome_id)


async def record_outcome(db: Database, record: NewRecord, *, now: float) -> tuple[Outcome, bool]:
    run_id, package, item, status = record.run_id, record.package, record.item, record.status
    report, error_message, created_by = record.report, record.error_message, record.created_by

    def op(c: sqlite3.Connection) -> tuple[Outcome, bool]:
        run = c.execute(sql.RECORD_OUTCOME_SELECT_RUNS, (run_id,)).fetchone()
        if run is None:
            raise rules.unknown_run(run_id)
        prow = c.execute(sql.PACKAGE_ID, (run_id, package)).fetchone()
        if prow is None:
            pos = c.execute(sql.NEXT_PACKAGE_POSITION, (run_id,)).fetchone()[0]
            package_id = int(
                c.execute(sql.RECORD_OUTCOME_INSERT_PACKAGES, (run_id, package, pos)).lastrowid or 0
            )
        else:
            package_id = prow[0]
        existing = c.execute(sql.RECORD_OUTCOME_SELECT_OUTCOMES, (package_id, item)).fetchone()
        if existing is not None:
            return set_status(c, existing[0], record.change, now=now), False
        outcome_id = str(uuid.uuid4())
        pos = c.execute(sql.NEXT_ITEM_POSITION, (package_id,)).fetchone()[0]
        c.execute(
            sql.RECORD_OUTCOME_INSERT_OUTCOMES,
            (
                outcome_id,
                run_id,
                package_id,
                item,
                pos,
                record.outcome_type or run["outcome_type"],
                R.spec_dumps(record.specifications),
                created_by,
                now,
                now,
                now,
            ),
        )
        grown = c.execute(sql.RECORD_OUTCOME_SELECT_PACKAGE, (package_id,)).fetchone()
        c.execute(sql.RECORD_OUTCOME_UPDATE_PACKAGES, (package_id,))
        policy.package_grew(c, package_id, grown, now)
        policy.raise_top(c, package_id, 0)
        events.add_event(
            c, run_id, outcome_id, rules.recorded(package=package, item=item, status=status), now
        )
        if rules.record_is_plain(status, report_given=report != Report(), error_message=error_message):
            return read_outcome(c, outcome_id), True
        return set_status(c, outcome_id, record.change, now=now), True

    return await db.write(op)


async def update_status(db: Database, outcome_id: str, *, change: StatusChange, now: float) -> Outcome:
    return await db.write(lambda c: set_status(c, outcome_id, change, now=now))


async def record_integration(
    db: Database,
    *,
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
            and c.execute(sql.RECORD_INTEGRATION_SELECT_OUTCOMES, (outcome_id,)).fetchone() is None
        ):
            raise rules.unknown_outcome(outcome_id)
        cur = c.execute(
            sql.RECORD_INTEGRATION_INSERT_INTEGRATION_LOGS,
            (run_id, outcome_id, integration_type, action, status, R.dumps(details), now),
        )
        events.add_event(
            c,
            run_id,
            outcome_id,
            rules.integration(integration_type=integration_type, action=action, status=status),
            now,
        )
        row = c.execute(
            sql.RECORD_INTEGRATION_SELECT_INTEGRATION_LOGS,
            (cur.lastrowid,),
        ).fetchone()
        return R.integration_from(row)

    return await db.write(op)


async def get_outcome(db: Database, outcome_id: str, *, history: bool = False) -> OutcomeDetail:
    def op(c: sqlite3.Connection) -> OutcomeDetail:
        row = c.execute(sql.OUTCOME_BY_ID, (outcome_id,)).fetchone()
        if row is None:
            raise rules.unknown_outcome(outcome_id)
        hist = []
        if history:
            hist = c.execute(
                sql.GET_OUTCOME_SELECT_OUTCOME_ATTEMPTS,
                (outcome_id,),
            ).fetchall()
        return R.detail_from(
            row, hist, waits_for=policy.waits_for(c, row), locks_held=policy.locks_held(c, row)
        )

    return await db.read(op)


async def list_outcomes(
    db: Database, flt: OutcomeFilter, *, limit: int, cursor: str | None = None
) -> OutcomePage:
    columns, args = keyset_args(cursor, R.outcome_filter(flt), limit)

    def op(c: sqlite3.Connection) -> OutcomePage:
        return R.outcome_page(c.execute(sql.outcomes_page(columns), args).fetchall(), limit)

    return await db.read(op)


async def outcome_usage(db: Database, run_id: str) -> dict[str, Usage]:
    def op(c: sqlite3.Connection) -> dict[str, Usage]:
        out: dict[str, Usage] = {}
        for r in c.execute(sql.OUTCOME_USAGE, (run_id,)):
            usage = R.usage_from(r)
            if usage is not None:
                out[r["outcome_id"]] = usage
        return out

    return await db.read(op)


async def cells(db: Database, run_id: str) -> list[Cell]:
    return await db.read(
        lambda c: [
            Cell(r[0], r[1], r[2], r[3])
            for r in c.execute(
                sql.CELLS_SELECT_OUTCOMES,
                (run_id,),
            )
        ]
    )
