"""The PostgreSQL outcome store on psycopg 3 (async) and psycopg_pool: many processes, one board. The Store
protocol, each method delegated to the module of its noun (runs, work, tracking, events, keys, content,
counters) with the store's Database (connection.py: pool, group commit, roll-up, LISTEN/NOTIFY).


- Semantics are those of the SQLite store, transition for transition (same errors, events, reasons).
- Group commit: one writer per process merges concurrent requests into one transaction; each
  request runs in its own SAVEPOINT so a bad request rolls back alone. Transient errors
  (serialization failure, deadlock, lost connection, admin shutdown, pool timeout) retry the whole
  batch with jittered backoff; past a short budget the callers get `Unavailable` (retryable).
- Claims are one `UPDATE … RETURNING` over a MATERIALIZED CTE with `FOR UPDATE SKIP LOCKED` on the
  narrow queue (`outcome_queue`, migration 8: lease token and expiry, available_at, claim order, final
  status once done; listings by status read it too),
  which holds the only indexes the claim, the lease sweep and fairness need; the outcome row is then
  updated HOT (no index of `outcomes` names a column a claim or report writes). Fairness across
  packages comes from each queue row's `claim_seq` (a global sequence), so no package or run row is
  written on the claim path.
- Counters without a hot row: each batch appends one aggregated row per touched package (and
  bucket, and minute) to `package_deltas`; one roller at a time (advisory lock) folds them into
  `packages` (the duration histogram too, as sorted arrays on the package row). Readers add the unrolled deltas (views `package_counters`, `package_hist`, `run_minutes`).
- Events get their sequence numbers in commit order (an advisory lock held from the insert to the
  commit), so a reader that saw seq S has seen every event ≤ S. One debounced NOTIFY per batch wakes
  long-polls in other processes; a poll is the fallback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from matrix_mcp.models import (
    Event,
    HeartbeatResult,
    IntegrationEvent,
    LeaseRef,
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
)
from matrix_mcp.store.group_commit import GroupCommit
from matrix_mcp.store.params import (
    ApiKey,
    Cell,
    ClaimBatch,
    ClaimRequest,
    Collected,
    ContentFile,
    Failure,
    FinishedSpan,
    MinuteCount,
    NewPackage,
    NewRecord,
    NextClaim,
    OutcomeFilter,
    PathHolder,
    Report,
    Reported,
    RunOverview,
    StatusChange,
)
from matrix_mcp.store.postgres import content, counters, events, keys, runs, tracking, work
from matrix_mcp.store.postgres.connection import Database
from matrix_mcp.store.postgres.deadline import DEFAULT_DEADLINE
from matrix_mcp.store.postgres.hooks import PostgresHooks


class PostgresStore:
    """See the module docstring. Open with `await PostgresStore.open(url)`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.url_for_display = db.url_for_display

    @classmethod
    async def open(cls, url: str, *, deadline: float = DEFAULT_DEADLINE) -> PostgresStore:
        """Connect, migrate and start the roller; every database call answers within `deadline` seconds
        (store/postgres/deadline.py)."""
        return cls(await Database.open(url, deadline=deadline))

    async def close(self) -> None:
        await self.db.close()

    @property
    def group_commit(self) -> GroupCommit[Any]:
        return self.db.group_commit

    @property
    def hooks(self) -> PostgresHooks:
        """Subscriptions and deliveries for events out (store/hooks.py)."""
        return PostgresHooks(self.db)

    async def latest_seq(self) -> int:
        return await events.latest_seq(self.db)

    async def wait_for_change(self, since: int, *, timeout: float) -> int:
        return await events.wait_for_change(self.db, since, timeout=timeout)

    async def roll_up(self) -> int:
        """Fold the appended counter deltas into the package rows (see Database.roll_up)."""
        return await self.db.roll_up()

    async def prune_answers(self, before: float) -> int:
        """Drop journaled write answers written before `before` (see Database.prune_answers)."""
        return await self.db.prune_answers(before)

    async def plan(
        self, *, name: str, goal: str | None, policy: RunPolicy, packages: Sequence[NewPackage], now: float
    ) -> PlanResult:
        return await runs.plan(self.db, name=name, goal=goal, policy=policy, packages=packages, now=now)

    async def get_run(self, ref: str) -> Run:
        return await runs.get_run(self.db, ref)

    async def list_runs(self) -> list[Run]:
        return await runs.list_runs(self.db)

    async def control_run(self, run_id: str, *, action: RunAction, now: float) -> Run:
        return await runs.control_run(self.db, run_id, action=action, now=now)

    async def claim(self, request: ClaimRequest, *, now: float) -> ClaimBatch:
        return await work.claim(self.db, request, now=now)

    async def heartbeat(self, leases: Sequence[LeaseRef], *, now: float) -> HeartbeatResult:
        return await work.heartbeat(self.db, leases, now=now)

    async def complete(
        self,
        outcome_id: str,
        *,
        lease_token: str,
        report: Report,
        now: float,
        next_claim: NextClaim | None = None,
    ) -> Reported:
        return await work.complete(
            self.db, outcome_id, lease_token=lease_token, report=report, now=now, next_claim=next_claim
        )

    async def fail(
        self,
        outcome_id: str,
        *,
        lease_token: str,
        failure: Failure,
        now: float,
        next_claim: NextClaim | None = None,
    ) -> Reported:
        return await work.fail(
            self.db, outcome_id, lease_token=lease_token, failure=failure, now=now, next_claim=next_claim
        )

    async def retry(
        self,
        run_id: str,
        *,
        package: str | None = None,
        outcome_ids: Sequence[str] | None = None,
        now: float,
    ) -> list[str]:
        return await work.retry(self.db, run_id, package=package, outcome_ids=outcome_ids, now=now)

    async def record_outcome(self, record: NewRecord, *, now: float) -> tuple[Outcome, bool]:
        return await tracking.record_outcome(self.db, record, now=now)

    async def update_status(self, outcome_id: str, *, change: StatusChange, now: float) -> Outcome:
        return await tracking.update_status(self.db, outcome_id, change=change, now=now)

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
        return await tracking.record_integration(
            self.db,
            run_id=run_id,
            outcome_id=outcome_id,
            integration_type=integration_type,
            action=action,
            status=status,
            details=details,
            now=now,
        )

    async def get_outcome(self, outcome_id: str, *, history: bool = False) -> OutcomeDetail:
        return await tracking.get_outcome(self.db, outcome_id, history=history)

    async def list_outcomes(
        self, flt: OutcomeFilter, *, limit: int, cursor: str | None = None
    ) -> OutcomePage:
        return await tracking.list_outcomes(self.db, flt, limit=limit, cursor=cursor)

    def iter_outcomes(self, run_id: str) -> AsyncIterator[Outcome]:
        return tracking.iter_outcomes(self.db, run_id)

    async def run_minutes(self, run_id: str, *, since_minute: int) -> list[MinuteCount]:
        return await counters.run_minutes(self.db, run_id, since_minute=since_minute)

    async def finished_span(self, run_id: str) -> FinishedSpan:
        return await counters.finished_span(self.db, run_id)

    async def cells(self, run_id: str) -> list[Cell]:
        return await tracking.cells(self.db, run_id)

    async def package_summaries(self, run_id: str) -> list[PackageSummary]:
        return await counters.package_summaries(self.db, run_id)

    async def package_summary(self, package: str, *, run_id: str | None) -> PackageSummary:
        return await counters.package_summary(self.db, package, run_id=run_id)

    async def system_metrics(self, run_id: str | None, *, now: float) -> SystemMetrics:
        return await counters.system_metrics(self.db, run_id, now=now)

    async def run_overview(self, run_id: str, *, since: float) -> RunOverview:
        return await runs.run_overview(self.db, run_id, since=since)

    async def create_api_key(self, name: str, *, key_hash: str, scopes: Sequence[str], now: float) -> ApiKey:
        return await keys.create_api_key(self.db, name, key_hash=key_hash, scopes=scopes, now=now)

    async def list_api_keys(self) -> list[ApiKey]:
        return await keys.list_api_keys(self.db)

    async def revoke_api_key(self, name: str, *, now: float) -> ApiKey:
        return await keys.revoke_api_key(self.db, name, now=now)

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        return await keys.api_key_by_hash(self.db, key_hash)

    async def touch_api_key(self, name: str, *, now: float) -> None:
        return await keys.touch_api_key(self.db, name, now=now)

    async def revoke_session(self, session_id: str, *, expires_at: float, now: float) -> None:
        return await keys.revoke_session(self.db, session_id, expires_at=expires_at, now=now)

    async def session_revoked(self, session_id: str) -> bool:
        return await keys.session_revoked(self.db, session_id)

    async def status_counts(self) -> dict[str, dict[Status, int]]:
        return await counters.status_counts(self.db)

    async def active_status_counts(
        self, limit: int
    ) -> tuple[dict[Status, int], dict[str, dict[Status, int]]]:
        return await counters.active_status_counts(self.db, limit)

    async def events_after(self, *, since: int, run_id: str | None = None, limit: int) -> list[Event]:
        return await events.events_after(self.db, since=since, run_id=run_id, limit=limit)

    async def recount(self, run_id: str | None = None) -> RecountReport:
        return await counters.recount(self.db, run_id)

    async def inline_content(self, sha256: str) -> bytes | None:
        return await content.inline_content(self.db, sha256)

    async def content_hashes(self) -> set[str]:
        return await content.content_hashes(self.db)

    async def collect_contents(self) -> Collected:
        return await content.collect_contents(self.db)

    async def path_holder(self, path: str) -> PathHolder | None:
        return await content.path_holder(self.db, path)

    async def content_files(self, *, since_seq: int, limit: int) -> list[ContentFile]:
        return await content.content_files(self.db, since_seq=since_seq, limit=limit)

    async def rebuild_counters(self, run_id: str | None = None) -> None:
        return await counters.rebuild_counters(self.db, run_id)


__all__ = ["PostgresStore"]
