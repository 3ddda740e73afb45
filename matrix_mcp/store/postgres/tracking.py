"""The PostgreSQL store's tracking API: items recorded and set by hand (update_outcome_status), reading
and listing outcomes, the board's cells and the integration log."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from matrix_mcp import rules
from matrix_mcp.models import IntegrationEvent, Outcome, OutcomeDetail, OutcomePage, Usage
from matrix_mcp.pagination import keyset_args
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import Cell, NewRecord, OutcomeFilter, Report, StatusChange
from matrix_mcp.store.postgres import policy, sql
from matrix_mcp.store.postgres.batch import (
    INTEGRATION_ANSWER,
    OUTCOME_ANSWER,
    RECORD_ANSWER,
    Conn,
    Row,
    Tx,
    fetch_all,
    fetch_one,
)
from matrix_mcp.store.postgres.sql import (
    OUTCOME_BY_ID,
    OUTCOME_SELECT,
    QUEUED_OUTCOME_SELECT,
    queue_status_filter,
)

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database


async def read_outcome(c: Conn, outcome_id: str) -> Outcome:
    row = await fetch_one(c, OUTCOME_BY_ID, (outcome_id,))
    if row is None:
        raise rules.unknown_outcome(outcome_id)
    return R.outcome_from(row)


async def set_status(tx: Tx, outcome_id: str, change: StatusChange, *, now: float) -> Outcome:
    status, error_message = change.status, change.error_message
    report, created_by = change.report, change.created_by
    # the narrow row first, as a claim locks them (a claim holding it then waits for nothing of ours)
    await tx.execute(
        sql.SET_STATUS_SELECT_OUTCOME_QUEUE,
        (outcome_id,),
    )
    row = await tx.one(
        sql.SET_STATUS_SELECT_OUTCOMES,
        (outcome_id,),
    )
    if row is None:
        raise rules.unknown_outcome(outcome_id)
    t = rules.override(
        row, new=status, error_message=error_message, report=report, now=now, created_by=created_by
    )
    await policy.after(tx, row, t, await tx.apply(row, t, now), now)
    return await read_outcome(tx.conn, outcome_id)


async def record_outcome(db: Database, record: NewRecord, *, now: float) -> tuple[Outcome, bool]:
    run_id, package, item, status = record.run_id, record.package, record.item, record.status
    report, error_message, created_by = record.report, record.error_message, record.created_by

    async def op(tx: Tx) -> tuple[Outcome, bool]:
        run = await tx.one(sql.RECORD_OUTCOME_SELECT_RUNS, (run_id,))
        if run is None:
            raise rules.unknown_run(run_id)
        prow = await tx.one(sql.PACKAGE_ID, (run_id, package))
        if prow is None:
            created_pkg = await tx.one(
                sql.RECORD_OUTCOME_INSERT_PACKAGES,
                (run_id, package, run_id),
            )
            assert created_pkg is not None
            package_id = int(created_pkg["id"])
        else:
            package_id = int(prow["id"])
        existing = await tx.one(sql.RECORD_OUTCOME_SELECT_OUTCOMES, (package_id, item))
        if existing is not None:
            return await set_status(tx, existing["id"], record.change, now=now), False
        was_done = False  # a package others wait for that was done waits again once it has this item
        if prow is not None and prow["has_dependents"]:
            await tx.execute(sql.LOCK_PACKAGES, ([package_id],))
            await tx.flush()
            done = await tx.one(sql.RECORD_OUTCOME_PACKAGE_DONE, (package_id,))
            was_done = done is not None and rules.package_done(int(done["complete"]), int(done["total"]))
        outcome_id = str(uuid.uuid4())
        await tx.execute(
            sql.RECORD_OUTCOME_INSERT_OUTCOMES,
            (
                outcome_id,
                run_id,
                package_id,
                item,
                record.outcome_type or run["outcome_type"],
                R.spec_dumps(record.specifications),
                created_by,
                now,
                now,
                now,
                package_id,
                package_id,
            ),
        )
        tx.add((run_id, package_id, None, None), total=1, pending=1)
        if was_done:
            await policy.grew(tx, [package_id], now)
        tx.event(run_id, outcome_id, rules.recorded(package=package, item=item, status=status), now)
        if rules.record_is_plain(status, report_given=report != Report(), error_message=error_message):
            return await read_outcome(tx.conn, outcome_id), True
        return await set_status(tx, outcome_id, record.change, now=now), True

    return await db.write(op, journal=RECORD_ANSWER)


async def update_status(db: Database, outcome_id: str, *, change: StatusChange, now: float) -> Outcome:
    return await db.write(
        lambda tx: set_status(tx, outcome_id, change, now=now),
        journal=OUTCOME_ANSWER,
    )


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
    async def op(tx: Tx) -> IntegrationEvent:
        if (
            outcome_id is not None
            and await tx.one(sql.RECORD_INTEGRATION_SELECT_OUTCOMES, (outcome_id,)) is None
        ):
            raise rules.unknown_outcome(outcome_id)
        row = await tx.one(
            sql.RECORD_INTEGRATION_INSERT_INTEGRATION_LOGS,
            (run_id, outcome_id, integration_type, action, status, R.dumps(details), now),
        )
        tx.event(
            run_id,
            outcome_id,
            rules.integration(integration_type=integration_type, action=action, status=status),
            now,
        )
        assert row is not None  # (an INSERT … RETURNING answers its row)
        return R.integration_from(row)

    return await db.write(op, journal=INTEGRATION_ANSWER)


async def get_outcome(db: Database, outcome_id: str, *, history: bool = False) -> OutcomeDetail:
    async def op(c: Conn) -> OutcomeDetail:
        row = await fetch_one(c, OUTCOME_BY_ID, (outcome_id,))
        if row is None:
            raise rules.unknown_outcome(outcome_id)
        hist: list[Row] = []
        if history:
            hist = await fetch_all(
                c,
                sql.GET_OUTCOME_SELECT_OUTCOME_ATTEMPTS,
                (outcome_id,),
            )

        async def fetch(query: Any, params: Any) -> list[Row]:
            return await fetch_all(c, query, params)

        return R.detail_from(
            row,
            hist,
            waits_for=await policy.waits_for(fetch, row),
            locks_held=await policy.locks_held(fetch, row),
        )

    return await db.read(op, snapshot=history)


async def list_outcomes(
    db: Database, flt: OutcomeFilter, *, limit: int, cursor: str | None = None
) -> OutcomePage:
    if flt.status is None:
        select, order, first = OUTCOME_SELECT, "o.n", ["o.n > %s"]
        pinned = R.outcome_filter(flt)
    else:
        # by status: the queue's rows of that status, in n order (with a run, a range of
        # outcome_queue_status or outcome_queue_leased); the queue row holds the status
        condition, order = queue_status_filter(flt.status, one_run=flt.run_id is not None)
        select, first = QUEUED_OUTCOME_SELECT, ["q.n > %s", condition]
        pinned = R.outcome_filter(replace(flt, run_id=None, status=None))
        if flt.run_id is not None:
            pinned.insert(0, ("q.run_id", flt.run_id))
    columns, args = keyset_args(cursor, pinned, limit)
    where = " AND ".join([*first, *(f"{column} = %s" for column in columns)])

    async def op(c: Conn) -> OutcomePage:
        rows = await fetch_all(c, select + " WHERE " + where + f" ORDER BY {order} LIMIT %s", args)
        return R.outcome_page(rows, limit)

    return await db.read(op)


async def outcome_usage(db: Database, run_id: str) -> dict[str, Usage]:
    async def op(c: Conn) -> dict[str, Usage]:
        out: dict[str, Usage] = {}
        for r in await fetch_all(c, sql.OUTCOME_USAGE, (run_id,)):
            usage = R.usage_from(r)
            if usage is not None:
                out[r["outcome_id"]] = usage
        return out

    return await db.read(op)


async def cells(db: Database, run_id: str) -> list[Cell]:
    async def op(c: Conn) -> list[Cell]:
        rows = await fetch_all(
            c,
            sql.CELLS_SELECT_OUTCOMES,
            [run_id],
        )
        return [Cell(str(r["id"]), r["package"], r["item"], r["status"]) for r in rows]

    return await db.read(op)
