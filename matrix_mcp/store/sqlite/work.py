"""The SQLite store's work loop: claims (with the lease sweep), heartbeats, completes, failures and
retries; each decision is matrix_mcp.rules', each write a rules.Transition applied by counters.apply."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from matrix_mcp import rules
from matrix_mcp.models import HeartbeatResult, LeaseRef, LeaseState, ts
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import Claim, ClaimBatch, ClaimRequest, Failure, NextClaim, Report, Reported
from matrix_mcp.store.sqlite import counters, events, sql, tracking
from matrix_mcp.store.sqlite.connection import Database

SWEEP_LIMIT = 500


def leased_row(c: sqlite3.Connection, outcome_id: str, token: str) -> sqlite3.Row:
    row: sqlite3.Row | None = c.execute(sql.OUTCOME_BY_ID, (outcome_id,)).fetchone()
    return rules.check_lease(row, outcome_id, token)


def sweep(c: sqlite3.Connection, run_id: str, now: float) -> None:
    """Expired leases go back to pending (or failed when attempts are spent, cancelled when the run is)."""
    rows = c.execute(
        sql.SWEEP_SELECT_OUTCOMES,
        (run_id, now, SWEEP_LIMIT),
    ).fetchall()
    for r in rows:
        t = rules.expire(r, run_state=r["state"], max_attempts=int(r["max_attempts"]), now=now)
        if t is not None:
            counters.apply(c, r, t, now)


def cancel_pending(c: sqlite3.Connection, run_id: str, now: float) -> int:
    """The run's pending items end cancelled (rules.cancel); how many did."""
    return counters.move_run(c, run_id, rules.cancel(now))


def claim_now(c: sqlite3.Connection, request: ClaimRequest, *, now: float) -> ClaimBatch:
    """Lease up to `limit` pending items round-robin across packages (least recently served first)."""
    run_id, worker, limit, package = request.run_id, request.worker, request.limit, request.package
    token_factory = request.token_factory
    run = c.execute(sql.CLAIM_NOW_SELECT_RUNS, (run_id,)).fetchone()
    if run is None:
        raise rules.unknown_run(run_id)
    blocked = rules.claim_blocked(run["state"])
    sweep(c, run_id, now)  # a cancelled run's leases stay (rules.lease_expiry): nothing to sweep there
    if blocked is not None:
        return ClaimBatch([], blocked)
    if package is None:
        active = c.execute(sql.CLAIMABLE_PACKAGES, (run_id,)).fetchall()
    else:
        active = c.execute(sql.CLAIMABLE_PACKAGE, (run_id, package)).fetchall()
    claims: list[Claim] = []
    while active and len(claims) < limit:
        still = []
        for p in active:
            if len(claims) >= limit:
                break
            o = c.execute(
                sql.CLAIM_NOW_SELECT_OUTCOMES,
                (p["id"], now),
            ).fetchone()
            if o is None:
                continue
            t = rules.claim(
                o,
                run_id=run_id,
                package_id=p["id"],
                package=p["name"],
                worker=worker,
                token=token_factory(),
                lease_seconds=run["lease_seconds"],
                now=now,
            )
            counters.start(c, o, t, now)
            claims.append(
                Claim(
                    outcome_id=o["id"],
                    run=run["name"],
                    package=p["name"],
                    package_description=p["description"],
                    item=o["item"],
                    attempt=t.values["attempts"],
                    lease_token=t.values["lease_token"],
                    lease_expires_at=t.values["lease_expires_at"],
                    outcome_type=o["outcome_type"],
                    specifications=R.loads(o["specifications"]),
                    outcome_path=o["outcome_path"],
                )
            )
            still.append(p)
        active = still
    if len(claims) >= limit:
        return ClaimBatch(claims)
    return ClaimBatch(claims, *why_nothing(c, run_id, package))


def claim_next(
    c: sqlite3.Connection, row: sqlite3.Row, token: str, next_claim: NextClaim | None, now: float, fresh: bool
) -> ClaimBatch | None:
    """The next leases of a report: claimed now when the report is fresh; for a repeat of the identical
    report, the leases the first one took that its worker still holds (claimed at that report's time)."""
    if next_claim is None:
        return None
    worker = row["worker"] or ""
    if fresh:
        return claim_now(c, next_claim.request(row["run_id"], worker), now=now)
    first = c.execute(
        sql.CLAIM_NEXT_SELECT_OUTCOME_ATTEMPTS,
        (row["id"], token),
    ).fetchone()
    if first is None or first["ended_at"] is None:
        return ClaimBatch([])
    held = c.execute(
        sql.CLAIM_NEXT_SELECT_OUTCOMES,
        (row["run_id"], first["worker"], first["ended_at"], next_claim.limit),
    ).fetchall()
    return ClaimBatch([R.claim_from(o) for o in held])


def why_nothing(c: sqlite3.Connection, run_id: str, package: str | None) -> tuple[Any, float | None]:
    if package is None:
        pending, generating, n = c.execute(sql.QUEUE_COUNTS, (run_id,)).fetchone()
    else:
        pending, generating, n = c.execute(sql.QUEUE_COUNTS_OF_PACKAGE, (run_id, package)).fetchone()
    if package is not None and n == 0:
        raise rules.unknown_package_in_run(package)
    total = 0
    if not pending and not generating:  # done or empty: said of the whole run
        total = c.execute(sql.WHY_NOTHING_SELECT_PACKAGES, (run_id,)).fetchone()[0]
    reason, column = rules.why_nothing(pending=int(pending), generating=int(generating), total=int(total))
    if column is None:
        return reason, None
    if package is None:
        row = c.execute(sql.EARLIEST[column], (run_id,)).fetchone()
    else:
        row = c.execute(sql.EARLIEST[column] + sql.IN_PACKAGE, (run_id, run_id, package)).fetchone()
    return reason, row[0]


async def claim(db: Database, request: ClaimRequest, *, now: float) -> ClaimBatch:
    def op(c: sqlite3.Connection) -> ClaimBatch:
        return claim_now(c, request, now=now)

    return await db.write(op)


async def heartbeat(db: Database, leases: Sequence[LeaseRef], *, now: float) -> HeartbeatResult:
    def op(c: sqlite3.Connection) -> HeartbeatResult:
        extended: list[LeaseState] = []
        lost: list[str] = []
        cancelled: list[str] = []
        for lease in leases:
            row = c.execute(
                sql.HEARTBEAT_SELECT_OUTCOMES,
                (lease.outcome_id,),
            ).fetchone()
            held = None
            if row is not None:
                held = rules.heartbeat(
                    row,
                    token=lease.lease_token,
                    run_state=row["state"],
                    lease_seconds=row["lease_seconds"],
                    now=now,
                )
            if held is None:
                lost.append(lease.outcome_id)
                continue
            counters.extend(c, row, held)
            if held.stops:
                cancelled.append(lease.outcome_id)
            extended.append(
                LeaseState(outcome_id=lease.outcome_id, lease_expires_at=ts(held.lease_expires_at))
            )
        return HeartbeatResult(extended=extended, lost=lost, cancelled=cancelled)

    return await db.write(op)


async def complete(
    db: Database,
    outcome_id: str,
    *,
    lease_token: str,
    report: Report,
    now: float,
    next_claim: NextClaim | None = None,
) -> Reported:
    def op(c: sqlite3.Connection) -> Reported:
        row = c.execute(sql.OUTCOME_BY_ID, (outcome_id,)).fetchone()
        if not rules.check_complete(row, outcome_id, lease_token, report):  # the identical report, repeated
            return Reported(
                tracking.read_outcome(c, outcome_id), claim_next(c, row, lease_token, next_claim, now, False)
            )
        t = rules.complete(row, lease_token=lease_token, report=report, now=now)
        counters.apply(c, row, t, now, hist_read=True)
        if report.inline is not None:
            c.execute(
                sql.COMPLETE_INSERT_CONTENTS,
                (report.content_sha256, report.inline),
            )
        return Reported(R.outcome_from(t.row(row)), claim_next(c, row, lease_token, next_claim, now, True))

    return await db.write(op)


async def fail(
    db: Database,
    outcome_id: str,
    *,
    lease_token: str,
    failure: Failure,
    now: float,
    next_claim: NextClaim | None = None,
) -> Reported:
    error, retryable, backoff = failure.error, failure.retryable, failure.backoff

    def op(c: sqlite3.Connection) -> Reported:
        row = leased_row(c, outcome_id, lease_token)
        if not rules.lease_holds(row["status"], row["lease_token"], lease_token):
            attempt = c.execute(
                sql.FAIL_SELECT_OUTCOME_ATTEMPTS,
                (outcome_id, lease_token),
            ).fetchone()
            if not rules.is_repeat_failure(attempt, error):
                raise rules.lost_lease(row)
            return Reported(
                tracking.read_outcome(c, outcome_id), claim_next(c, row, lease_token, next_claim, now, False)
            )
        run = c.execute(sql.FAIL_SELECT_RUNS, (row["run_id"],)).fetchone()
        t = rules.fail(
            row,
            lease_token=lease_token,
            error=error,
            retryable=retryable,
            backoff=backoff,
            run_state=run["state"],
            max_attempts=int(run["max_attempts"]),
            now=now,
        )
        counters.apply(c, row, t, now)
        return Reported(
            tracking.read_outcome(c, outcome_id), claim_next(c, row, lease_token, next_claim, now, True)
        )

    return await db.write(op)


async def retry(
    db: Database,
    run_id: str,
    *,
    package: str | None = None,
    outcome_ids: Sequence[str] | None = None,
    now: float,
) -> list[str]:
    def op(c: sqlite3.Connection) -> list[str]:
        state = c.execute(sql.RUN_STATE, (run_id,)).fetchone()
        rules.check_retry(None if state is None else state[0], run_id)
        move = rules.retry(now)
        if package is None:
            rows = c.execute(sql.RETRY_SELECT_OUTCOMES, (run_id, move.old)).fetchall()
        else:
            pid = c.execute(sql.PACKAGE_ID, (run_id, package)).fetchone()
            if pid is None:
                raise rules.unknown_package_in_run(package)
            rows = c.execute(sql.RETRY_SELECT_PACKAGE_OUTCOMES, (run_id, move.old, pid[0])).fetchall()
        if outcome_ids is not None:
            wanted = set(outcome_ids)
            rows = [r for r in rows if r["id"] in wanted]
        for r in rows:
            counters.apply_move(c, r, move)
        ids = [r["id"] for r in rows]
        if ids:
            events.add_event(c, run_id, None, rules.requeued(ids), now)
        return ids

    return await db.write(op)
