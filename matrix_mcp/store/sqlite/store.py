"""The embedded SQLite outcome store on aiosqlite.

- WAL, busy_timeout, foreign keys on; several server processes may share one file.
- One writer connection per process. Concurrent write requests are merged into one
  `BEGIN IMMEDIATE` transaction (group commit); each request runs inside its own SAVEPOINT so one
  bad request rolls back alone. The whole batch runs as one function on the writer's thread.
- Reads run on their own connections inside a read transaction (one consistent snapshot).
- Summary counters live on the package rows and change in the same transaction as the outcome.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from matrix_mcp import rules
from matrix_mcp.models import (
    STATUSES,
    Event,
    HeartbeatResult,
    IntegrationEvent,
    LeaseRef,
    LeaseState,
    Outcome,
    OutcomeDetail,
    OutcomePage,
    PackageSummary,
    PlanResult,
    RecountReport,
    Run,
    RunAction,
    RunPolicy,
    Status,
    SystemMetrics,
    ts,
)
from matrix_mcp.store import rows as R
from matrix_mcp.store.base import (
    ApiKey,
    ClaimBatch,
    ContentFile,
    NewPackage,
    NextClaim,
    OutcomeFilter,
    Report,
    Reported,
    RunOverview,
    StoreError,
)
from matrix_mcp.store.sqlite.connection import Connection
from matrix_mcp.store.sqlite.counters import (
    _add_histogram,
    _hist_dumps,
    _minute,
    _move,
    _recount,
    _set_metrics,
    _summaries,
    _truth,
)
from matrix_mcp.store.sqlite.sql import _COUNTER_COLUMNS, _OUTCOME_SELECT, _RUN_SELECT
from matrix_mcp.store.sqlite.transitions import (
    _cancel_pending,
    _claim,
    _claim_next,
    _end_attempt,
    _event,
    _leased_row,
    _outcome,
    _run,
    _run_id,
    _update_status,
)


class SQLiteStore(Connection):
    """See the module docstring. Open with `await SQLiteStore.open(path)`."""

    # ---- runs and planning ----------------------------------------------------------------------

    async def plan(
        self, name: str, goal: str | None, policy: RunPolicy, packages: Sequence[NewPackage], now: float
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
                if row["state"] == "cancelled" and any(p.items for p in packages):
                    raise rules.run_cancelled_for_plan(name)
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

    async def control_run(self, run_id: str, action: RunAction, now: float) -> Run:
        def op(c: sqlite3.Connection) -> Run:
            state = c.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if state is None:
                raise rules.unknown_run(run_id)
            target = rules.control_target(state[0], action)
            if target != state[0]:
                c.execute("UPDATE runs SET state = ?, updated_at = ? WHERE id = ?", (target, now, run_id))
                cancelled = _cancel_pending(c, run_id, now) if target == "cancelled" else None
                _event(c, run_id, None, rules.run_controlled(action, cancelled), now)
            return _run(c, run_id)

        return await self._write(op)

    # ---- the work loop --------------------------------------------------------------------------

    async def claim(
        self,
        run_id: str,
        worker: str,
        limit: int,
        package: str | None,
        now: float,
        token_factory: Callable[[], str],
    ) -> ClaimBatch:
        def op(c: sqlite3.Connection) -> ClaimBatch:
            return _claim(c, run_id, worker, limit, package, now, token_factory)

        return await self._write(op)

    async def heartbeat(self, leases: Sequence[LeaseRef], now: float) -> HeartbeatResult:
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
                if row is None or row["status"] != "generating" or row["lease_token"] != lease.lease_token:
                    lost.append(lease.outcome_id)
                    continue
                expires = now + float(row["lease_seconds"])
                c.execute(
                    "UPDATE outcomes SET lease_expires_at = ?, updated_at = ? WHERE n = ?",
                    (expires, now, row["n"]),
                )
                if row["state"] == "cancelled":
                    cancelled.append(lease.outcome_id)
                extended.append(LeaseState(outcome_id=lease.outcome_id, lease_expires_at=ts(expires)))
            return HeartbeatResult(extended=extended, lost=lost, cancelled=cancelled)

        return await self._write(op)

    async def complete(
        self,
        outcome_id: str,
        lease_token: str,
        report: Report,
        now: float,
        next_claim: NextClaim | None = None,
    ) -> Reported:
        def op(c: sqlite3.Connection) -> Reported:
            row = _leased_row(c, outcome_id, lease_token)
            if row["status"] == "complete":
                if rules.same_report(row, report):
                    return Reported(
                        _outcome(c, outcome_id), _claim_next(c, row, lease_token, next_claim, now, False)
                    )
                raise rules.complete_differs()
            if row["status"] != "generating":
                raise rules.lost_lease(row)
            duration = rules.duration(row["started_at"], now)
            c.execute(
                "UPDATE outcomes SET status = 'complete', completed_at = ?, duration_seconds = ?, updated_at = ?,"
                " lease_expires_at = NULL, error_message = NULL, metrics = ?, metadata = ?,"
                " outcome_path = COALESCE(?, outcome_path), content_sha256 = ?, content_bytes = ?, mime_type = ?"
                " WHERE n = ?",
                (
                    now,
                    duration,
                    now,
                    R.dumps(report.metrics),
                    R.dumps(report.metadata),
                    report.outcome_path,
                    report.content_sha256,
                    report.content_bytes,
                    report.mime_type,
                    row["n"],
                ),
            )
            _end_attempt(c, outcome_id, lease_token, "complete", None, now)
            _move(c, row["package_id"], "generating", "complete", R.contribution(report.metrics, duration))
            if duration is not None:
                _add_histogram(c, row["package_id"], duration, +1)
            _set_metrics(c, outcome_id, report.metrics, replace=False)
            _minute(c, row["run_id"], now, completed=1, duration=duration)
            _event(
                c,
                row["run_id"],
                outcome_id,
                rules.completed(package=row["package_name"], item=row["item"], duration=duration),
                now,
            )
            done = dict(row)
            done.update(
                status="complete",
                completed_at=now,
                duration_seconds=duration,
                updated_at=now,
                lease_expires_at=None,
                error_message=None,
                metrics=R.dumps(report.metrics),
                metadata=R.dumps(report.metadata),
                outcome_path=report.outcome_path or row["outcome_path"],
                content_sha256=report.content_sha256,
                content_bytes=report.content_bytes,
                mime_type=report.mime_type,
            )
            return Reported(R.outcome_from(done), _claim_next(c, row, lease_token, next_claim, now, True))

        return await self._write(op)

    async def fail(
        self,
        outcome_id: str,
        lease_token: str,
        error: str,
        retryable: bool,
        now: float,
        backoff: Callable[[int], float],
        next_claim: NextClaim | None = None,
    ) -> Reported:
        def op(c: sqlite3.Connection) -> Reported:
            row = _leased_row(c, outcome_id, lease_token)
            if row["status"] != "generating":
                attempt = c.execute(
                    "SELECT status, error FROM outcome_attempts WHERE outcome_id = ? AND lease_token = ?",
                    (outcome_id, lease_token),
                ).fetchone()
                if attempt is not None and attempt["status"] == "failed" and attempt["error"] == error:
                    # the identical report, repeated
                    return Reported(
                        _outcome(c, outcome_id), _claim_next(c, row, lease_token, next_claim, now, False)
                    )
                raise rules.lost_lease(row)
            run = c.execute("SELECT state, max_attempts FROM runs WHERE id = ?", (row["run_id"],)).fetchone()
            attempts = int(row["attempts"])
            _end_attempt(c, outcome_id, lease_token, "failed", error, now)
            decided = rules.failure_outcome(
                retryable=retryable,
                attempts=attempts,
                max_attempts=int(run["max_attempts"]),
                run_state=run["state"],
                backoff=backoff,
            )
            if decided.retries:
                c.execute(
                    "UPDATE outcomes SET status = 'pending', available_at = ?, lease_expires_at = NULL,"
                    " error_message = ?, updated_at = ? WHERE n = ?",
                    (now + decided.delay, error, now, row["n"]),
                )
            else:
                c.execute(
                    "UPDATE outcomes SET status = ?, completed_at = ?, duration_seconds = ?,"
                    " lease_expires_at = NULL, error_message = ?, updated_at = ? WHERE n = ?",
                    (decided.target, now, rules.duration(row["started_at"], now), error, now, row["n"]),
                )
                if decided.target == "failed":
                    _minute(c, row["run_id"], now, failed=1)
            _move(c, row["package_id"], "generating", decided.target)
            _event(
                c,
                row["run_id"],
                outcome_id,
                rules.failure_reported(
                    package=row["package_name"],
                    item=row["item"],
                    attempt=attempts,
                    error=error,
                    outcome=decided,
                ),
                now,
            )
            return Reported(_outcome(c, outcome_id), _claim_next(c, row, lease_token, next_claim, now, True))

        return await self._write(op)

    async def retry(
        self, run_id: str, package: str | None, outcome_ids: Sequence[str] | None, now: float
    ) -> list[str]:
        def op(c: sqlite3.Connection) -> list[str]:
            state = c.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if state is None:
                raise rules.unknown_run(run_id)
            if state[0] == "cancelled":
                raise rules.run_cancelled_for_retry()
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
                _move(c, r["package_id"], "failed", "pending")
            ids = [r["id"] for r in rows]
            if ids:
                _event(c, run_id, None, rules.requeued(ids), now)
            return ids

        return await self._write(op)

    # ---- the seed's tracking API ----------------------------------------------------------------

    async def record_outcome(
        self,
        run_id: str,
        package: str,
        item: str,
        status: Status,
        outcome_type: str | None,
        specifications: dict[str, Any] | str | None,
        report: Report,
        error_message: str | None,
        created_by: str | None,
        now: float,
    ) -> tuple[Outcome, bool]:
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
                return _update_status(c, existing[0], status, error_message, report, now, created_by), False
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
                    outcome_type or run["outcome_type"],
                    R.spec_dumps(specifications),
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
            if status == "pending" and report == Report() and error_message is None:
                return _outcome(c, outcome_id), True
            return _update_status(c, outcome_id, status, error_message, report, now, created_by), True

        return await self._write(op)

    async def update_status(
        self, outcome_id: str, status: Status, error_message: str | None, report: Report | None, now: float
    ) -> Outcome:
        return await self._write(
            lambda c: _update_status(c, outcome_id, status, error_message, report, now, None)
        )

    async def get_outcome(self, outcome_id: str, history: bool = False) -> OutcomeDetail:
        def op(c: sqlite3.Connection) -> OutcomeDetail:
            row = c.execute(_OUTCOME_SELECT + " WHERE o.id = ?", (outcome_id,)).fetchone()
            if row is None:
                raise rules.unknown_outcome(outcome_id)
            hist = []
            if history:
                hist = c.execute(
                    "SELECT attempt, worker, status, error, started_at, ended_at FROM outcome_attempts"
                    " WHERE outcome_id = ? ORDER BY started_at, attempt",
                    (outcome_id,),
                ).fetchall()
            return R.detail_from(row, hist)

        return await self._read(op)

    async def list_outcomes(self, flt: OutcomeFilter, limit: int, cursor: str | None) -> OutcomePage:
        after = R.decode_cursor(cursor)

        def op(c: sqlite3.Connection) -> OutcomePage:
            where = ["o.n > ?"]
            args: list[Any] = [after]
            if flt.run_id is not None:
                where.append("o.run_id = ?")
                args.append(flt.run_id)
            if flt.package is not None:
                where.append("p.name = ?")
                args.append(flt.package)
            if flt.status is not None:
                where.append("o.status = ?")
                args.append(flt.status)
            if flt.worker is not None:
                where.append("o.worker = ?")
                args.append(flt.worker)
            rows = c.execute(
                _OUTCOME_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY o.n LIMIT ?",
                [*args, limit + 1],
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            return OutcomePage(
                outcomes=[R.outcome_from(r) for r in rows],
                next_cursor=R.encode_cursor(rows[-1]["n"]) if more and rows else None,
            )

        return await self._read(op)

    async def iter_outcomes(self, run_id: str) -> AsyncIterator[Outcome]:
        cursor: str | None = None
        while True:
            page = await self.list_outcomes(OutcomeFilter(run_id=run_id), 1000, cursor)
            for outcome in page.outcomes:
                yield outcome
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def package_summaries(self, run_id: str) -> list[PackageSummary]:
        return await self._read(lambda c: _summaries(c, "p.run_id = ?", [run_id]))

    async def package_summary(self, package: str, run_id: str | None) -> PackageSummary:
        def op(c: sqlite3.Connection) -> PackageSummary:
            if run_id is not None:
                found = _summaries(c, "p.run_id = ? AND p.name = ?", [run_id, package])
            else:
                found = _summaries(c, "p.name = ?", [package])
            return R.the_one_summary(found, package)

        return await self._read(op)

    async def system_metrics(self, run_id: str | None, now: float) -> SystemMetrics:
        def op(c: sqlite3.Connection) -> SystemMetrics:
            where, args = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
            t = c.execute(
                "SELECT COALESCE(SUM(pending),0) AS pending, COALESCE(SUM(generating),0) AS generating,"
                " COALESCE(SUM(complete),0) AS complete, COALESCE(SUM(failed),0) AS failed,"
                " COALESCE(SUM(cancelled),0) AS cancelled, COALESCE(SUM(duration_sum),0) AS ds,"
                " COALESCE(SUM(duration_n),0) AS dn, COALESCE(SUM(lines_sum),0) AS ls,"
                " COALESCE(SUM(quality_sum),0) AS qs, COALESCE(SUM(quality_n),0) AS qn"
                " FROM packages " + where,
                args,
            ).fetchone()
            since_minute = int(now // 60) - 7 * 24 * 60
            hours = c.execute(
                "SELECT minute / 60 AS hour, SUM(completed) AS completed, SUM(failed) AS failed,"
                " SUM(duration_sum) AS ds, SUM(duration_n) AS dn FROM outcome_minutes"
                " WHERE minute >= ?"
                + (" AND run_id = ?" if run_id else "")
                + " GROUP BY minute / 60 ORDER BY hour",
                [since_minute, *args],
            ).fetchall()
            run_name = None
            if run_id:
                run_name = c.execute("SELECT name FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
            return R.system_metrics_from(run_name, t, hours)

        return await self._read(op)

    async def run_overview(self, run_id: str, since: float) -> RunOverview:
        def op(c: sqlite3.Connection) -> RunOverview:
            summaries = _summaries(c, "p.run_id = ?", [run_id])
            finished = c.execute(
                "SELECT COALESCE(SUM(completed + failed), 0) FROM outcome_minutes WHERE run_id = ? AND minute >= ?",
                (run_id, int(since // 60)),
            ).fetchone()[0]
            latest = c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            return RunOverview(_run(c, run_id), summaries, int(finished), int(latest))

        return await self._read(op)

    async def record_integration(
        self,
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

    # ---- API keys -------------------------------------------------------------------------------

    async def create_api_key(self, name: str, key_hash: str, scopes: Sequence[str], now: float) -> ApiKey:
        def op(c: sqlite3.Connection) -> ApiKey:
            if c.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone() is not None:
                raise rules.key_exists(name)
            c.execute(
                "INSERT INTO api_keys (name, key_hash, scopes, created_at) VALUES (?, ?, ?, ?)",
                (name, key_hash, R.dumps(list(scopes)), now),
            )
            return ApiKey(name=name, scopes=tuple(scopes), created_at=now)

        return await self._write(op)

    async def list_api_keys(self) -> list[ApiKey]:
        return await self._read(
            lambda c: [R.api_key_from(r) for r in c.execute("SELECT * FROM api_keys ORDER BY name")]
        )

    async def revoke_api_key(self, name: str, now: float) -> ApiKey:
        def op(c: sqlite3.Connection) -> ApiKey:
            c.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name))
            row = c.execute("SELECT * FROM api_keys WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise rules.unknown_key(name)
            return R.api_key_from(row)

        return await self._write(op)

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        def op(c: sqlite3.Connection) -> ApiKey | None:
            row = c.execute("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
            return None if row is None else R.api_key_from(row)

        return await self._read(op)

    async def touch_api_key(self, name: str, now: float) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("UPDATE api_keys SET last_used_at = ? WHERE name = ?", (now, name))

        await self._write(op)

    async def status_counts(self) -> dict[str, dict[Status, int]]:
        return await self._read(
            lambda c: R.status_counts_from(
                c.execute(
                    "SELECT name, SUM(pending) AS pending, SUM(generating) AS generating,"
                    " SUM(complete) AS complete, SUM(failed) AS failed, SUM(cancelled) AS cancelled"
                    " FROM packages GROUP BY name ORDER BY name"
                )
            )
        )

    # ---- change feed ----------------------------------------------------------------------------

    async def latest_seq(self) -> int:
        return await self._read(
            lambda c: int(c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        )

    async def events_after(self, since: int, run_id: str | None, limit: int) -> list[Event]:
        def op(c: sqlite3.Connection) -> list[Event]:
            sql = "SELECT e.*, r.name AS run_name FROM events e LEFT JOIN runs r ON r.id = e.run_id WHERE e.seq > ?"
            args: list[Any] = [since]
            if run_id is not None:
                sql += " AND e.run_id = ?"
                args.append(run_id)
            rows = c.execute(sql + " ORDER BY e.seq LIMIT ?", [*args, limit]).fetchall()
            return [R.event_from(r) for r in rows]

        return await self._read(op)

    async def wait_for_change(self, since: int, timeout: float) -> int:
        """Wakes on this process's commits at once and on other processes' within ~50–200 ms."""
        deadline = anyio.current_time() + timeout
        poll = 0.05
        while True:
            latest = await self.latest_seq()
            remaining = deadline - anyio.current_time()
            if latest > since or remaining <= 0:
                return latest
            changed = self._changed
            with anyio.move_on_after(min(poll, remaining)):
                await changed.wait()
            poll = min(poll * 1.5, 0.2)

    # ---- maintenance ----------------------------------------------------------------------------

    async def recount(self, run_id: str | None = None) -> RecountReport:
        return await self._read(lambda c: _recount(c, run_id))

    async def content_hashes(self) -> set[str]:
        return await self._read(
            lambda c: {
                r[0]
                for r in c.execute(
                    "SELECT DISTINCT content_sha256 FROM outcomes WHERE content_sha256 IS NOT NULL"
                )
            }
        )

    async def content_files(self, since_seq: int, limit: int) -> list[ContentFile]:
        def op(c: sqlite3.Connection) -> list[ContentFile]:
            rows = c.execute(
                "SELECT e.seq, o.id, o.outcome_path, o.content_sha256 FROM events e JOIN outcomes o ON o.id = e.outcome_id"
                " WHERE e.seq > ? AND e.kind = 'completed' AND o.status = 'complete'"
                " AND o.content_sha256 IS NOT NULL AND o.outcome_path IS NOT NULL ORDER BY e.seq LIMIT ?",
                (since_seq, limit),
            ).fetchall()
            return [ContentFile(int(r[0]), r[1], r[2], r[3]) for r in rows]

        return await self._read(op)

    async def rebuild_counters(self, run_id: str | None = None) -> None:
        def op(c: sqlite3.Connection) -> None:
            where, args = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
            for p in c.execute("SELECT id FROM packages " + where, args).fetchall():
                truth = _truth(c, p[0])
                c.execute(
                    "UPDATE packages SET total = ?, pending = ?, generating = ?, complete = ?, failed = ?,"
                    " cancelled = ?, duration_sum = ?, duration_n = ?, lines_sum = ?, quality_sum = ?,"
                    " quality_n = ? WHERE id = ?",
                    (
                        truth["total"],
                        *(truth[s] for s in STATUSES),
                        *(truth[k] for k in _COUNTER_COLUMNS),
                        p[0],
                    ),
                )
                c.execute(
                    "UPDATE packages SET duration_hist = ? WHERE id = ?", (_hist_dumps(truth["hist"]), p[0])
                )

        await self._write(op)

    async def integrity_check(self) -> str:
        return await self._read(lambda c: str(c.execute("PRAGMA integrity_check").fetchone()[0]))


__all__ = ["SQLiteStore", "StoreError"]
