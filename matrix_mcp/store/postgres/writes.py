"""The PostgreSQL store's writes: planning, run control, the work loop (claim, heartbeat, complete, fail,
retry; claims and completes merged set-based per batch) and the tracking API."""

from __future__ import annotations

import uuid
from collections import defaultdict
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
from matrix_mcp.store.postgres.batch import (
    _IDS_ANSWER,
    _INTEGRATION_ANSWER,
    _OUTCOME_ANSWER,
    _PLAN_ANSWER,
    _RECORD_ANSWER,
    _REPORTED_ANSWER,
    _RUN_ANSWER,
    Conn,
    _all,
    _ClaimArgs,
    _CompleteArgs,
    _one,
    _Tx,
)
from matrix_mcp.store.postgres.connection import Connection
from matrix_mcp.store.postgres.sql import (
    _COMPLETE_SQL,
    _HEARTBEAT_SQL,
    _ONE_RUN_SQL,
    _RUN_SELECT,
)
from matrix_mcp.store.postgres.transitions import (
    _cancel_pending,
    _claim_op,
    _leased_row,
    _next_claims,
    _outcome,
    _run,
    _update_status,
)


class Writes(Connection):
    """The PostgreSQL store's writes: planning, run control, the work loop (claim, heartbeat, complete, fail,"""

    # ---- runs and planning ----------------------------------------------------------------------

    async def plan(
        self, *, name: str, goal: str | None, policy: RunPolicy, packages: Sequence[NewPackage], now: float
    ) -> PlanResult:
        async def op(tx: _Tx) -> PlanResult:
            row = await tx.one(
                "SELECT id, state, outcome_type FROM runs WHERE name = %s FOR NO KEY UPDATE", (name,)
            )
            created = row is None
            if row is None:
                run_id = str(uuid.uuid4())
                inserted = await tx.one(
                    "INSERT INTO runs (id, name, goal, outcome_type, lease_seconds, max_attempts,"
                    " backoff_seconds, backoff_cap_seconds, outcome_schema, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING"
                    " RETURNING id",
                    (
                        run_id,
                        name,
                        goal,
                        *R.policy_values(policy),
                        now,
                        now,
                    ),
                )
                if inserted is None:  # another process created it just now
                    row = await tx.one(
                        "SELECT id, state, outcome_type FROM runs WHERE name = %s FOR NO KEY UPDATE", (name,)
                    )
                    created = False
                outcome_type = policy.outcome_type
            if row is not None:
                run_id = row["id"]
                outcome_type = row["outcome_type"]
                rules.check_plan(row["state"], any(p.items for p in packages), name)
            names = [p.name for p in packages]
            existing = {
                r["name"]: int(r["id"])
                for r in await tx.all(
                    "SELECT id, name FROM packages WHERE run_id = %s AND name = ANY(%b::text[])",
                    (run_id, names),
                )
            }
            added_packages = [p.name for p in packages if p.name not in existing]
            ids = dict(existing)
            if added_packages:
                top = await tx.one(
                    "SELECT COALESCE(MAX(position) + 1, 0) AS pos FROM packages WHERE run_id = %s", (run_id,)
                )
                first = int(top["pos"]) if top else 0
                descriptions = {p.name: p.description for p in packages}
                for r in await tx.all(
                    "INSERT INTO packages (run_id, name, description, position)"
                    " SELECT %s, n, d, %s + i - 1 FROM unnest(%b::text[], %b::text[]) WITH ORDINALITY AS u(n, d, i)"
                    " RETURNING id, name",
                    (run_id, first, added_packages, [descriptions[n] for n in added_packages]),
                ):
                    ids[r["name"]] = int(r["id"])
            starts: dict[int, int] = {}
            if existing:
                for r in await tx.all(
                    "SELECT package_id, MAX(position) + 1 AS pos FROM outcomes"
                    " WHERE package_id = ANY(%b::bigint[]) GROUP BY package_id",
                    (list(existing.values()),),
                ):
                    starts[int(r["package_id"])] = int(r["pos"])
            pids: list[int] = []
            items: list[str] = []
            positions: list[int] = []
            specs: list[str | None] = []
            for pkg in packages:
                pid = ids[pkg.name]
                base = starts.get(pid, 0)
                for i, item in enumerate(pkg.items):
                    pids.append(pid)
                    items.append(item.name)
                    positions.append(base + i)
                    specs.append(R.spec_dumps(item.specifications))
            added_items = 0
            if items:
                for r in await tx.all(
                    "WITH ins AS (INSERT INTO outcomes (id, run_id, package_id, item, position, status,"
                    " outcome_type, specifications, available_at, created_at, updated_at)"
                    " SELECT gen_random_uuid()::text, %(run)s, u.pid, u.item, u.pos, 'pending', %(ot)s, u.spec,"
                    " %(now)s, %(now)s, %(now)s"
                    " FROM unnest(%(pids)b::bigint[], %(items)b::text[], %(pos)b::int[], %(specs)b::text[])"
                    " WITH ORDINALITY AS u(pid, item, pos, spec, i) ORDER BY u.i"
                    " ON CONFLICT (package_id, item) DO NOTHING RETURNING n, package_id, position),"
                    " q AS (INSERT INTO outcome_queue (n, run_id, package_id, position, available_at)"
                    " SELECT n, %(run)s, package_id, position, %(now)s FROM ins ORDER BY n)"
                    " SELECT package_id, count(*) AS n FROM ins GROUP BY package_id",
                    {
                        "run": run_id,
                        "ot": outcome_type,
                        "now": now,
                        "pids": pids,
                        "items": items,
                        "pos": positions,
                        "specs": specs,
                    },
                ):
                    n = int(r["n"])
                    tx.add((run_id, int(r["package_id"]), None, None), total=n, pending=n)
                    added_items += n
            if created or added_items or added_packages:
                await tx.execute("UPDATE runs SET updated_at = %s WHERE id = %s", (now, run_id))
                tx.event(
                    run_id,
                    None,
                    rules.planned(created=created, packages=added_packages, items=added_items),
                    now,
                )
            await tx.flush()
            run = await _run(tx.conn, run_id)
            return R.plan_result(run, created, added_packages, added_items)

        return await self._write(op, journal=_PLAN_ANSWER)

    async def get_run(self, ref: str) -> Run:
        async def op(c: Conn) -> Run:
            row = await _one(
                c,
                _ONE_RUN_SQL
                + " WHERE r.id = (SELECT id FROM runs WHERE id = %s OR name = %s ORDER BY (id = %s) DESC LIMIT 1)",
                (ref, ref, ref),
            )
            if row is None:
                raise rules.unknown_run(ref)
            return R.run_from(row)

        return await self._read(op)

    async def list_runs(self) -> list[Run]:
        async def op(c: Conn) -> list[Run]:
            rows = await _all(c, _RUN_SELECT + " GROUP BY r.id ORDER BY r.created_at, r.name")
            return [R.run_from(r) for r in rows]

        return await self._read(op)

    async def control_run(self, run_id: str, *, action: RunAction, now: float) -> Run:
        async def op(tx: _Tx) -> Run:
            state = await tx.one("SELECT state FROM runs WHERE id = %s FOR NO KEY UPDATE", (run_id,))
            if state is None:
                raise rules.unknown_run(run_id)
            target = rules.control_target(state["state"], action)
            if target != state["state"]:
                await tx.execute(
                    "UPDATE runs SET state = %s, updated_at = %s WHERE id = %s", (target, now, run_id)
                )
                cancelled = await _cancel_pending(tx, run_id, now) if rules.cancels_pending(target) else None
                tx.event(run_id, None, rules.run_controlled(action, cancelled), now)
            await tx.flush()
            return await _run(tx.conn, run_id)

        return await self._write(op, journal=_RUN_ANSWER)

    # ---- the work loop --------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest, *, now: float) -> ClaimBatch:
        args = _ClaimArgs(
            run_id=request.run_id,
            worker=request.worker,
            limit=request.limit,
            package=request.package,
            now=now,
            token_factory=request.token_factory,
        )
        return await self._write(_claim_op(args, []), atomic=True, merge=args)

    async def heartbeat(self, leases: Sequence[LeaseRef], *, now: float) -> HeartbeatResult:
        async def op(tx: _Tx) -> HeartbeatResult:
            # the leases that hold (rules.lease_holds) run until rules.lease_expires: tests/test_rules.py
            # holds the statement to them
            rows = await tx.all(
                _HEARTBEAT_SQL,
                {
                    "now": now,
                    "ids": [lease.outcome_id for lease in leases],
                    "tokens": [lease.lease_token for lease in leases],
                },
            )
            tx.wrote = bool(rows)
            held = {(r["id"], r["lease_token"]): r for r in rows}
            extended: list[LeaseState] = []
            lost: list[str] = []
            cancelled: list[str] = []
            for lease in leases:
                r = held.get((lease.outcome_id, lease.lease_token))
                if r is None:
                    lost.append(lease.outcome_id)
                    continue
                if rules.stops_work(r["state"]):
                    cancelled.append(lease.outcome_id)
                extended.append(
                    LeaseState(outcome_id=lease.outcome_id, lease_expires_at=ts(r["lease_expires_at"]))  # type: ignore[arg-type]
                )
            return HeartbeatResult(extended=extended, lost=lost, cancelled=cancelled)

        return await self._write(op, atomic=True)

    async def complete(
        self,
        outcome_id: str,
        *,
        lease_token: str,
        report: Report,
        now: float,
        next_claim: NextClaim | None = None,
    ) -> Reported:
        metrics, metadata = R.dumps(report.metrics), R.dumps(report.metadata)
        values = R.numeric_metrics(report.metrics)
        params = {
            "now": now,
            "metrics": metrics,
            "metadata": metadata,
            "path": report.outcome_path,
            "sha": report.content_sha256,
            "bytes": report.content_bytes,
            "mime": report.mime_type,
            "id": outcome_id,
            "token": lease_token,
            "names": [k for k, _ in values],
            "values": [v for _, v in values],
            "body": report.inline,
        }

        async def op(tx: _Tx) -> Outcome:
            # the statement completes the item when its lease holds (rules.lease_holds, with
            # rules.duration: tests/test_rules.py holds the SQL to them); `row` is the item before it
            row = await tx.one(_COMPLETE_SQL, params)
            fresh = rules.check_complete(row, outcome_id, lease_token, report)
            assert row is not None  # (check_complete raised otherwise)
            if not fresh:
                return R.outcome_from(row)  # the identical report, repeated
            tx.wrote = True
            t = rules.complete(
                row, lease_token=lease_token, report=report, now=now, encoded=(metrics, metadata)
            )
            tx.effects(t, now)
            return R.outcome_from(t.row(row))

        if next_claim is None:
            merge = _CompleteArgs(
                outcome_id=outcome_id,
                lease_token=lease_token,
                report=report,
                now=now,
                metrics=metrics,
                metadata=metadata,
                values=values,
            )
            return Reported(await self._write(op, atomic=True, merge=merge))
        claim = next_claim

        async def then(tx: _Tx) -> Reported:
            outcome = await op(tx)  # sets tx.wrote only when this report completed the item
            return Reported(outcome, await _next_claims(tx, outcome, lease_token, claim, now, tx.wrote))

        # journaled: a retry after a lost answer returns these leases instead of taking more
        return await self._write(then, atomic=True, journal=_REPORTED_ANSWER)

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

        async def op(tx: _Tx) -> Reported:
            row = await _leased_row(tx, outcome_id, lease_token)
            if not rules.lease_holds(row["status"], row["lease_token"], lease_token):
                attempt = await tx.one(
                    "SELECT status, error FROM outcome_attempts WHERE outcome_id = %s AND lease_token = %s",
                    (outcome_id, lease_token),
                )
                if not rules.is_repeat_failure(attempt, error):
                    raise rules.lost_lease(row)
                repeated = R.outcome_from(row)  # the identical report, repeated
                return Reported(
                    repeated, await _next_claims(tx, repeated, lease_token, next_claim, now, False)
                )
            t = rules.fail(
                row,
                lease_token=lease_token,
                error=error,
                retryable=retryable,
                backoff=backoff,
                run_state=row["run_state"],
                max_attempts=int(row["max_attempts"]),
                now=now,
            )
            await tx.apply(row, t, now)
            outcome = R.outcome_from(t.row(row))
            return Reported(outcome, await _next_claims(tx, outcome, lease_token, next_claim, now, True))

        return await self._write(op, journal=_REPORTED_ANSWER)

    async def retry(
        self,
        run_id: str,
        *,
        package: str | None = None,
        outcome_ids: Sequence[str] | None = None,
        now: float,
    ) -> list[str]:
        async def op(tx: _Tx) -> list[str]:
            state = await tx.one("SELECT state FROM runs WHERE id = %s", (run_id,))
            rules.check_retry(None if state is None else state["state"], run_id)
            pid: int | None = None
            if package is not None:
                prow = await tx.one(
                    "SELECT id FROM packages WHERE run_id = %s AND name = %s", (run_id, package)
                )
                if prow is None:
                    raise rules.unknown_package_in_run(package)
                pid = int(prow["id"])
            rows = await tx.all(
                "WITH u AS (UPDATE outcomes SET status = 'pending', attempts = 0, available_at = %(now)s,"
                " completed_at = NULL, duration_seconds = NULL, updated_at = %(now)s"
                " WHERE run_id = %(run)s AND status = 'failed'"
                " AND (%(pid)s::bigint IS NULL OR package_id = %(pid)s::bigint)"
                " AND (%(ids)b::text[] IS NULL OR id = ANY(%(ids)b::text[]))"
                " RETURNING n, id, package_id),"
                " q AS (UPDATE outcome_queue q SET final = NULL, lease_token = NULL, lease_expires_at = NULL,"
                " available_at = %(now)s FROM u WHERE q.n = u.n)"
                " SELECT n, id, package_id FROM u",
                {
                    "now": now,
                    "run": run_id,
                    "pid": pid,
                    "ids": list(outcome_ids) if outcome_ids is not None else None,
                },
            )
            rows.sort(key=lambda r: int(r["n"]))
            per_package: dict[int, int] = defaultdict(int)
            for r in rows:
                per_package[int(r["package_id"])] += 1
            for p, n in per_package.items():
                tx.move(run_id, p, *rules.RETRY_MOVE, n)
            ids = [r["id"] for r in rows]
            if ids:
                tx.event(run_id, None, rules.requeued(ids), now)
            return ids

        return await self._write(op, journal=_IDS_ANSWER)

    # ---- the seed's tracking API ----------------------------------------------------------------

    async def record_outcome(self, record: NewRecord, *, now: float) -> tuple[Outcome, bool]:
        run_id, package, item, status = record.run_id, record.package, record.item, record.status
        report, error_message, created_by = record.report, record.error_message, record.created_by

        async def op(tx: _Tx) -> tuple[Outcome, bool]:
            run = await tx.one(
                "SELECT outcome_type, state FROM runs WHERE id = %s FOR NO KEY UPDATE", (run_id,)
            )
            if run is None:
                raise rules.unknown_run(run_id)
            prow = await tx.one("SELECT id FROM packages WHERE run_id = %s AND name = %s", (run_id, package))
            if prow is None:
                created_pkg = await tx.one(
                    "INSERT INTO packages (run_id, name, position) SELECT %s, %s,"
                    " COALESCE(MAX(position) + 1, 0) FROM packages WHERE run_id = %s RETURNING id",
                    (run_id, package, run_id),
                )
                assert created_pkg is not None
                package_id = int(created_pkg["id"])
            else:
                package_id = int(prow["id"])
            existing = await tx.one(
                "SELECT id FROM outcomes WHERE package_id = %s AND item = %s", (package_id, item)
            )
            if existing is not None:
                return await _update_status(tx, existing["id"], record.change, now=now), False
            outcome_id = str(uuid.uuid4())
            await tx.execute(
                "WITH ins AS (INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type,"
                " specifications, created_by, available_at, created_at, updated_at)"
                " SELECT %s, %s, %s, %s, COALESCE(MAX(position) + 1, 0), 'pending', %s, %s, %s, %s, %s, %s"
                " FROM outcomes WHERE package_id = %s RETURNING n, run_id, package_id, position, available_at)"
                " INSERT INTO outcome_queue (n, run_id, package_id, position, available_at)"
                " SELECT n, run_id, package_id, position, available_at FROM ins",
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
                ),
            )
            tx.add((run_id, package_id, None, None), total=1, pending=1)
            tx.event(run_id, outcome_id, rules.recorded(package=package, item=item, status=status), now)
            if rules.record_is_plain(status, report_given=report != Report(), error_message=error_message):
                return await _outcome(tx.conn, outcome_id), True
            return await _update_status(tx, outcome_id, record.change, now=now), True

        return await self._write(op, journal=_RECORD_ANSWER)

    async def update_status(self, outcome_id: str, *, change: StatusChange, now: float) -> Outcome:
        return await self._write(
            lambda tx: _update_status(tx, outcome_id, change, now=now),
            journal=_OUTCOME_ANSWER,
        )

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
        async def op(tx: _Tx) -> IntegrationEvent:
            if (
                outcome_id is not None
                and await tx.one("SELECT 1 FROM outcomes WHERE id = %s", (outcome_id,)) is None
            ):
                raise rules.unknown_outcome(outcome_id)
            row = await tx.one(
                "WITH l AS (INSERT INTO integration_logs (run_id, outcome_id, integration_type, action, status,"
                " details, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *)"
                " SELECT l.*, r.name AS run_name FROM l LEFT JOIN runs r ON r.id = l.run_id",
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

        return await self._write(op, journal=_INTEGRATION_ANSWER)
