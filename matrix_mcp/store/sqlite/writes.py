"""The SQLite store's writes: planning, run control, the work loop (claim, heartbeat, complete, fail,
retry) and the tracking API, each one function run in a group-commit batch on the writer."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

from matrix_mcp import rules
from matrix_mcp.models import (
    HeartbeatResult,
    IntegrationEvent,
    LeaseRef,
    LeaseState,
    Outcome,
    PlanResult,
    Run,
    RunAction,
    RunPolicy,
    ts,
)
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import (
    ClaimBatch,
    ClaimRequest,
    Failure,
    NewPackage,
    NewRecord,
    NextClaim,
    Report,
    Reported,
    StatusChange,
)
from matrix_mcp.store.sqlite.connection import Connection
from matrix_mcp.store.sqlite.counters import _move, apply
from matrix_mcp.store.sqlite.sql import _OUTCOME_SELECT, _RUN_SELECT
from matrix_mcp.store.sqlite.transitions import (
    _cancel_pending,
    _claim,
    _claim_next,
    _event,
    _leased_row,
    _outcome,
    _run,
    _run_id,
    _update_status,
)


class Writes(Connection):
    """The SQLite store's writes: planning, run control, the work loop (claim, heartbeat, complete, fail,"""

    # ---- runs and planning ----------------------------------------------------------------------

    async def plan(
        self, *, name: str, goal: str | None, policy: RunPolicy, packages: Sequence[NewPackage], now: float
    ) -> PlanResult:
        def op(c: sqlite3.Connection) -> PlanResult:
            row = c.execute("SELECT id, state FROM runs WHERE name = ?", (name,)).fetchone()
            created = row is None
            if created:
                run_id = str(uuid.uuid4())
                c.execute(
                    "INSERT INTO runs (id, name, goal, outcome_type, lease_seconds, max_attempts,"
                    " backoff_seconds, backoff_cap_seconds, outcome_schema, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        name,
                        goal,
                        *R.policy_values(policy),
                        now,
                        now,
                    ),
                )
            else:
                run_id = row["id"]
                rules.check_plan(row["state"], any(p.items for p in packages), name)
            outcome_type = c.execute("SELECT outcome_type FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
            added_packages: list[str] = []
            added_items = 0
            next_pos = c.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM packages WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            for pkg in packages:
                prow = c.execute(
                    "SELECT id FROM packages WHERE run_id = ? AND name = ?", (run_id, pkg.name)
                ).fetchone()
                if prow is None:
                    cur = c.execute(
                        "INSERT INTO packages (run_id, name, description, position) VALUES (?, ?, ?, ?)",
                        (run_id, pkg.name, pkg.description, next_pos),
                    )
                    package_id = cur.lastrowid
                    next_pos += 1
                    added_packages.append(pkg.name)
                    item_pos = 0
                else:
                    package_id = prow["id"]
                    item_pos = c.execute(
                        "SELECT COALESCE(MAX(position) + 1, 0) FROM outcomes WHERE package_id = ?",
                        (package_id,),
                    ).fetchone()[0]
                before = c.total_changes
                c.executemany(
                    "INSERT OR IGNORE INTO outcomes (id, run_id, package_id, item, position, status,"
                    " outcome_type, specifications, available_at, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                    [
                        (
                            str(uuid.uuid4()),
                            run_id,
                            package_id,
                            item.name,
                            item_pos + i,
                            outcome_type,
                            R.spec_dumps(item.specifications),
                            now,
                            now,
                            now,
                        )
                        for i, item in enumerate(pkg.items)
                    ],
                )
                added = c.total_changes - before
                if added:
                    c.execute(
                        "UPDATE packages SET total = total + ?, pending = pending + ? WHERE id = ?",
                        (added, added, package_id),
                    )
                    added_items += added
            if created or added_items or added_packages:
                c.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (now, run_id))
                _event(
                    c,
                    run_id,
                    None,
                    rules.planned(created=created, packages=added_packages, items=added_items),
                    now,
                )
            run = _run(c, run_id)
            return R.plan_result(run, created, added_packages, added_items)

        return await self._write(op)

    async def get_run(self, ref: str) -> Run:
        return await self._read(lambda c: _run(c, _run_id(c, ref)))

    async def list_runs(self) -> list[Run]:
        def op(c: sqlite3.Connection) -> list[Run]:
            rows = c.execute(_RUN_SELECT + " GROUP BY r.id ORDER BY r.created_at, r.name").fetchall()
            return [R.run_from(r) for r in rows]

        return await self._read(op)

    async def control_run(self, run_id: str, *, action: RunAction, now: float) -> Run:
        def op(c: sqlite3.Connection) -> Run:
            state = c.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if state is None:
                raise rules.unknown_run(run_id)
            target = rules.control_target(state[0], action)
            if target != state[0]:
                c.execute("UPDATE runs SET state = ?, updated_at = ? WHERE id = ?", (target, now, run_id))
                cancelled = _cancel_pending(c, run_id, now) if rules.cancels_pending(target) else None
                _event(c, run_id, None, rules.run_controlled(action, cancelled), now)
            return _run(c, run_id)

        return await self._write(op)

    # ---- the work loop --------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest, *, now: float) -> ClaimBatch:
        def op(c: sqlite3.Connection) -> ClaimBatch:
            return _claim(c, request, now=now)

        return await self._write(op)

    async def heartbeat(self, leases: Sequence[LeaseRef], *, now: float) -> HeartbeatResult:
        def op(c: sqlite3.Connection) -> HeartbeatResult:
            extended: list[LeaseState] = []
            lost: list[str] = []
            cancelled: list[str] = []
            for lease in leases:
                row = c.execute(
                    "SELECT o.n, o.status, o.lease_token, r.state, r.lease_seconds FROM outcomes o"
                    " JOIN runs r ON r.id = o.run_id WHERE o.id = ?",
                    (lease.outcome_id,),
                ).fetchone()
                if row is None or not rules.lease_holds(row["status"], row["lease_token"], lease.lease_token):
                    lost.append(lease.outcome_id)
                    continue
                expires = rules.lease_expires(now, row["lease_seconds"])
                c.execute(
                    "UPDATE outcomes SET lease_expires_at = ?, updated_at = ? WHERE n = ?",
                    (expires, now, row["n"]),
                )
                if rules.stops_work(row["state"]):
                    cancelled.append(lease.outcome_id)
                extended.append(LeaseState(outcome_id=lease.outcome_id, lease_expires_at=ts(expires)))
            return HeartbeatResult(extended=extended, lost=lost, cancelled=cancelled)

        return await self._write(op)

    async def complete(
        self,
        outcome_id: str,
        *,
        lease_token: str,
        report: Report,
        now: float,
        next_claim: NextClaim | None = None,
    ) -> Reported:
        def op(c: sqlite3.Connection) -> Reported:
            row = c.execute(_OUTCOME_SELECT + " WHERE o.id = ?", (outcome_id,)).fetchone()
            if not rules.check_complete(
                row, outcome_id, lease_token, report
            ):  # the identical report, repeated
                return Reported(
                    _outcome(c, outcome_id), _claim_next(c, row, lease_token, next_claim, now, False)
                )
            t = rules.complete(row, lease_token=lease_token, report=report, now=now)
            apply(c, row, t, now, hist_read=True)
            if report.inline is not None:
                c.execute(
                    "INSERT INTO contents (sha256, body) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (report.content_sha256, report.inline),
                )
            return Reported(
                R.outcome_from(t.row(row)), _claim_next(c, row, lease_token, next_claim, now, True)
            )

        return await self._write(op)

    async def fail(
        self,
        outcome_id: str,
        *,
        lease_token: str,
        failure: Failure,
        now: float,
        next_claim: NextClaim | None = None,
    ) -> Reported:
        error, retryable, backoff = failure.error, failure.retryable, failure.backoff

        def op(c: sqlite3.Connection) -> Reported:
            row = _leased_row(c, outcome_id, lease_token)
            if not rules.lease_holds(row["status"], row["lease_token"], lease_token):
                attempt = c.execute(
                    "SELECT status, error FROM outcome_attempts WHERE outcome_id = ? AND lease_token = ?",
                    (outcome_id, lease_token),
                ).fetchone()
                if not rules.is_repeat_failure(attempt, error):
                    raise rules.lost_lease(row)
                return Reported(
                    _outcome(c, outcome_id), _claim_next(c, row, lease_token, next_claim, now, False)
                )
            run = c.execute("SELECT state, max_attempts FROM runs WHERE id = ?", (row["run_id"],)).fetchone()
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
            apply(c, row, t, now)
            return Reported(_outcome(c, outcome_id), _claim_next(c, row, lease_token, next_claim, now, True))

        return await self._write(op)

    async def retry(
        self,
        run_id: str,
        *,
        package: str | None = None,
        outcome_ids: Sequence[str] | None = None,
        now: float,
    ) -> list[str]:
        def op(c: sqlite3.Connection) -> list[str]:
            state = c.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
            rules.check_retry(None if state is None else state[0], run_id)
            sql = "SELECT o.n, o.id, o.package_id FROM outcomes o"
            args: list[Any] = []
            where = ["o.run_id = ?", "o.status = 'failed'"]
            args.append(run_id)
            if package is not None:
                pid = c.execute(
                    "SELECT id FROM packages WHERE run_id = ? AND name = ?", (run_id, package)
                ).fetchone()
                if pid is None:
                    raise rules.unknown_package_in_run(package)
                where.append("o.package_id = ?")
                args.append(pid[0])
            rows = c.execute(sql + " WHERE " + " AND ".join(where) + " ORDER BY o.n", args).fetchall()
            if outcome_ids is not None:
                wanted = set(outcome_ids)
                rows = [r for r in rows if r["id"] in wanted]
            for r in rows:
                c.execute(
                    "UPDATE outcomes SET status = 'pending', attempts = 0, available_at = ?, completed_at = NULL,"
                    " duration_seconds = NULL, updated_at = ? WHERE n = ?",
                    (now, now, r["n"]),
                )
                _move(c, r["package_id"], *rules.RETRY_MOVE)
            ids = [r["id"] for r in rows]
            if ids:
                _event(c, run_id, None, rules.requeued(ids), now)
            return ids

        return await self._write(op)

    # ---- the seed's tracking API ----------------------------------------------------------------

    async def record_outcome(self, record: NewRecord, *, now: float) -> tuple[Outcome, bool]:
        run_id, package, item, status = record.run_id, record.package, record.item, record.status
        report, error_message, created_by = record.report, record.error_message, record.created_by

        def op(c: sqlite3.Connection) -> tuple[Outcome, bool]:
            run = c.execute("SELECT outcome_type, state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if run is None:
                raise rules.unknown_run(run_id)
            prow = c.execute(
                "SELECT id FROM packages WHERE run_id = ? AND name = ?", (run_id, package)
            ).fetchone()
            if prow is None:
                pos = c.execute(
                    "SELECT COALESCE(MAX(position) + 1, 0) FROM packages WHERE run_id = ?", (run_id,)
                ).fetchone()[0]
                package_id = c.execute(
                    "INSERT INTO packages (run_id, name, position) VALUES (?, ?, ?)", (run_id, package, pos)
                ).lastrowid
            else:
                package_id = prow[0]
            existing = c.execute(
                "SELECT id FROM outcomes WHERE package_id = ? AND item = ?", (package_id, item)
            ).fetchone()
            if existing is not None:
                return _update_status(c, existing[0], record.change, now=now), False
            outcome_id = str(uuid.uuid4())
            pos = c.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM outcomes WHERE package_id = ?", (package_id,)
            ).fetchone()[0]
            c.execute(
                "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type,"
                " specifications, created_by, available_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
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
            c.execute(
                "UPDATE packages SET total = total + 1, pending = pending + 1 WHERE id = ?", (package_id,)
            )
            _event(c, run_id, outcome_id, rules.recorded(package=package, item=item, status=status), now)
            if rules.record_is_plain(status, report_given=report != Report(), error_message=error_message):
                return _outcome(c, outcome_id), True
            return _update_status(c, outcome_id, record.change, now=now), True

        return await self._write(op)

    async def update_status(self, outcome_id: str, *, change: StatusChange, now: float) -> Outcome:
        return await self._write(lambda c: _update_status(c, outcome_id, change, now=now))

    async def record_integration(
        self,
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
                and c.execute("SELECT 1 FROM outcomes WHERE id = ?", (outcome_id,)).fetchone() is None
            ):
                raise rules.unknown_outcome(outcome_id)
            cur = c.execute(
                "INSERT INTO integration_logs (run_id, outcome_id, integration_type, action, status, details,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, outcome_id, integration_type, action, status, R.dumps(details), now),
            )
            _event(
                c,
                run_id,
                outcome_id,
                rules.integration(integration_type=integration_type, action=action, status=status),
                now,
            )
            row = c.execute(
                "SELECT l.*, r.name AS run_name FROM integration_logs l LEFT JOIN runs r ON r.id = l.run_id"
                " WHERE l.id = ?",
                (cur.lastrowid,),
            ).fetchone()
            return R.integration_from(row)

        return await self._write(op)
