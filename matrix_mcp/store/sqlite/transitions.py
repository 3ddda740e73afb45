"""The SQLite store's transitions on locked rows, inside the writer's transaction: claims, the lease
sweep, manual overrides. The decisions are matrix_mcp.rules'; this module holds the SQL."""

from __future__ import annotations

import sqlite3
from typing import Any

from matrix_mcp import rules
from matrix_mcp.audit import current_principal
from matrix_mcp.models import (
    Outcome,
    Run,
)
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import Claim, ClaimBatch, ClaimRequest, NextClaim, StatusChange
from matrix_mcp.store.sqlite.counters import add_event, apply
from matrix_mcp.store.sqlite.sql import _CLAIM_MOVE_SQL, _EARLIEST, _OUTCOME_SELECT, _RUN_SELECT

SWEEP_LIMIT = 500


def _run_id(c: sqlite3.Connection, ref: str) -> str:
    row = c.execute(
        "SELECT id FROM runs WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1", (ref, ref, ref)
    ).fetchone()
    if row is None:
        raise rules.unknown_run(ref)
    return str(row[0])


def _run(c: sqlite3.Connection, run_id: str) -> Run:
    row = c.execute(_RUN_SELECT + " WHERE r.id = ? GROUP BY r.id", (run_id,)).fetchone()
    if row is None:
        raise rules.unknown_run(run_id)
    return R.run_from(row)


def _outcome(c: sqlite3.Connection, outcome_id: str) -> Outcome:
    row = c.execute(_OUTCOME_SELECT + " WHERE o.id = ?", (outcome_id,)).fetchone()
    if row is None:
        raise rules.unknown_outcome(outcome_id)
    return R.outcome_from(row)


def _event(
    c: sqlite3.Connection,
    run_id: str | None,
    outcome_id: str | None,
    ev: rules.Ev,
    now: float,
) -> int:
    """Append to the change feed; returns the event's sequence number."""
    return add_event(c, run_id, outcome_id, ev, now)


def _leased_row(c: sqlite3.Connection, outcome_id: str, token: str) -> sqlite3.Row:
    row: sqlite3.Row | None = c.execute(_OUTCOME_SELECT + " WHERE o.id = ?", (outcome_id,)).fetchone()
    return rules.check_lease(row, outcome_id, token)


def _sweep(c: sqlite3.Connection, run_id: str, now: float) -> None:
    """Expired leases go back to pending (or failed when attempts are spent, cancelled when the run is)."""
    rows = c.execute(
        "SELECT o.n, o.id, o.run_id, o.item, o.package_id, o.attempts, o.lease_token, o.started_at, r.max_attempts,"
        " r.state, p.name AS package_name FROM outcomes o JOIN runs r ON r.id = o.run_id"
        " JOIN packages p ON p.id = o.package_id"
        " WHERE o.run_id = ? AND o.status = 'generating' AND o.lease_expires_at <= ? LIMIT ?",
        (run_id, now, SWEEP_LIMIT),
    ).fetchall()
    for r in rows:
        t = rules.expire(r, run_state=r["state"], max_attempts=int(r["max_attempts"]), now=now)
        if t is not None:
            apply(c, r, t, now)


def _cancel_pending(c: sqlite3.Connection, run_id: str, now: float) -> int:
    per_package = c.execute(
        "SELECT package_id, COUNT(*) FROM outcomes WHERE run_id = ? AND status = 'pending' GROUP BY package_id",
        (run_id,),
    ).fetchall()
    c.execute(
        "UPDATE outcomes SET status = 'cancelled', updated_at = ?, completed_at = ? WHERE run_id = ? AND status = 'pending'",
        (now, now, run_id),
    )
    total = 0
    for package_id, n in per_package:
        c.execute(
            "UPDATE packages SET pending = pending - ?, cancelled = cancelled + ? WHERE id = ?",
            (n, n, package_id),
        )
        total += n
    return total


def _claim(c: sqlite3.Connection, request: ClaimRequest, *, now: float) -> ClaimBatch:
    """Lease up to `limit` pending items round-robin across packages (least recently served first)."""
    run_id, worker, limit, package = request.run_id, request.worker, request.limit, request.package
    token_factory = request.token_factory
    run = c.execute("SELECT name, state, lease_seconds FROM runs WHERE id = ?", (run_id,)).fetchone()
    if run is None:
        raise rules.unknown_run(run_id)
    blocked = rules.claim_blocked(run["state"])
    _sweep(c, run_id, now)  # a cancelled run's leases stay (rules.lease_expiry): nothing to sweep there
    if blocked is not None:
        return ClaimBatch([], blocked)
    sql = "SELECT id, name, description FROM packages WHERE run_id = ? AND pending > 0"
    args: list[Any] = [run_id]
    if package is not None:
        sql += " AND name = ?"
        args.append(package)
    active = c.execute(sql + " ORDER BY last_claim, position", args).fetchall()
    claims: list[Claim] = []
    expires = rules.lease_expires(now, run["lease_seconds"])
    while active and len(claims) < limit:
        still = []
        for p in active:
            if len(claims) >= limit:
                break
            o = c.execute(
                "SELECT n, id, item, attempts, outcome_type, specifications, outcome_path FROM outcomes"
                " WHERE package_id = ? AND status = 'pending' AND available_at <= ?"
                " ORDER BY available_at, position LIMIT 1",
                (p["id"], now),
            ).fetchone()
            if o is None:
                continue
            token = token_factory()
            attempt = int(o["attempts"]) + 1
            c.execute(
                "UPDATE outcomes SET status = 'generating', attempts = ?, worker = ?, lease_token = ?,"
                " lease_expires_at = ?, started_at = ?, updated_at = ? WHERE n = ?",
                (attempt, worker, token, expires, now, now, o["n"]),
            )
            c.execute(
                "INSERT INTO outcome_attempts (outcome_id, attempt, lease_token, worker, principal, status,"
                " started_at) VALUES (?, ?, ?, ?, ?, 'generating', ?)",
                (o["id"], attempt, token, worker, current_principal.get(), now),
            )
            seq = _event(
                c,
                run_id,
                o["id"],
                rules.claimed(package=p["name"], item=o["item"], worker=worker, attempt=attempt),
                now,
            )
            # fairness clock: the claim's own event sequence (monotonic across processes)
            c.execute(
                _CLAIM_MOVE_SQL,
                (seq, p["id"]),
            )
            claims.append(
                Claim(
                    outcome_id=o["id"],
                    run=run["name"],
                    package=p["name"],
                    package_description=p["description"],
                    item=o["item"],
                    attempt=attempt,
                    lease_token=token,
                    lease_expires_at=expires,
                    outcome_type=o["outcome_type"],
                    specifications=R.loads(o["specifications"]),
                    outcome_path=o["outcome_path"],
                )
            )
            still.append(p)
        active = still
    if len(claims) >= limit:
        return ClaimBatch(claims)
    return ClaimBatch(claims, *_why_nothing(c, run_id, package))


def _claim_next(
    c: sqlite3.Connection, row: sqlite3.Row, token: str, next_claim: NextClaim | None, now: float, fresh: bool
) -> ClaimBatch | None:
    """The next leases of a report: claimed now when the report is fresh; for a repeat of the identical
    report, the leases the first one took that its worker still holds (claimed at that report's time)."""
    if next_claim is None:
        return None
    worker = row["worker"] or ""
    if fresh:
        return _claim(c, next_claim.request(row["run_id"], worker), now=now)
    first = c.execute(
        "SELECT ended_at, worker FROM outcome_attempts WHERE outcome_id = ? AND lease_token = ?",
        (row["id"], token),
    ).fetchone()
    if first is None or first["ended_at"] is None:
        return ClaimBatch([])
    held = c.execute(
        "SELECT o.id, o.item, o.attempts, o.lease_token, o.lease_expires_at, o.outcome_type, o.specifications,"
        " o.outcome_path, p.name AS package_name, p.description AS package_description, r.name AS run_name FROM outcomes o"
        " JOIN packages p ON p.id = o.package_id JOIN runs r ON r.id = o.run_id"
        " WHERE o.run_id = ? AND o.status = 'generating' AND o.worker = ? AND o.started_at = ?"
        " ORDER BY o.n LIMIT ?",
        (row["run_id"], first["worker"], first["ended_at"], next_claim.limit),
    ).fetchall()
    return ClaimBatch([R.claim_from(o) for o in held])


def _why_nothing(c: sqlite3.Connection, run_id: str, package: str | None) -> tuple[Any, float | None]:
    sql = "SELECT COALESCE(SUM(pending),0), COALESCE(SUM(generating),0), COUNT(*) FROM packages WHERE run_id = ?"
    args: list[Any] = [run_id]
    if package is not None:
        sql += " AND name = ?"
        args.append(package)
    pending, generating, n = c.execute(sql, args).fetchone()
    if package is not None and n == 0:
        raise rules.unknown_package_in_run(package)
    total = 0
    if not pending and not generating:  # done or empty: said of the whole run
        total = c.execute(
            "SELECT COALESCE(SUM(total),0) FROM packages WHERE run_id = ?", (run_id,)
        ).fetchone()[0]
    reason, column = rules.why_nothing(pending=int(pending), generating=int(generating), total=int(total))
    if column is None:
        return reason, None
    pkg_filter = (
        ""
        if package is None
        else " AND package_id IN (SELECT id FROM packages WHERE run_id = ? AND name = ?)"
    )
    pkg_args = [] if package is None else [run_id, package]
    row = c.execute(_EARLIEST[column] + pkg_filter, [run_id, *pkg_args]).fetchone()
    return reason, row[0]


def _update_status(c: sqlite3.Connection, outcome_id: str, change: StatusChange, *, now: float) -> Outcome:
    status, error_message = change.status, change.error_message
    report, created_by = change.report, change.created_by
    row = c.execute(
        "SELECT o.*, r.lease_seconds, p.name AS package_name FROM outcomes o JOIN runs r ON r.id = o.run_id"
        " JOIN packages p ON p.id = o.package_id WHERE o.id = ?",
        (outcome_id,),
    ).fetchone()
    if row is None:
        raise rules.unknown_outcome(outcome_id)
    t = rules.override(
        row, new=status, error_message=error_message, report=report, now=now, created_by=created_by
    )
    apply(c, row, t, now)
    return _outcome(c, outcome_id)
