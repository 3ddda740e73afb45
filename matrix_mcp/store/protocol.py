"""The Store protocol: what the engine needs from persistence (errors: matrix_mcp.errors; parameter objects:
matrix_mcp.store.params).

A store is the only place that speaks SQL for the outcome store. Each method is one atomic
transition: it either happens whole or raises and changes nothing. Times are epoch seconds
passed in by the engine (so rules and tests control the clock), except where noted.

Calls cannot be swapped silently: a method takes at most the identity of what it changes (an outcome id,
a run id, a parameter object) positionally and everything else by keyword, and fields that travel
together through the layers come as one frozen parameter object (ClaimRequest, NextClaim, Failure,
NewRecord, StatusChange, Report), built by keyword.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

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
    Usage,
)
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
    PolicyUpdate,
    Report,
    Reported,
    ReviewVerdict,
    RunOverview,
    StatusChange,
)

if TYPE_CHECKING:
    from matrix_mcp.store.hooks import HookStore


class Store(Protocol):
    """Persistence for runs, packages, outcomes, events and integration logs."""

    url_for_display: str

    @property
    def hooks(self) -> HookStore:
        """Subscriptions and deliveries for events out (store/hooks.py)."""
        ...

    async def close(self) -> None: ...

    # runs and planning
    async def plan(
        self,
        *,
        name: str,
        goal: str | None,
        policy: RunPolicy,
        packages: Sequence[NewPackage],
        now: float,
    ) -> PlanResult:
        """Create the run (or extend the one of that name) with packages and pending items; items already
        there are kept. Event `run_planned` / `run_extended` (rules.planned) when anything was added.
        Conflict (field name) when the run is cancelled and items would be added."""
        ...

    async def get_run(self, ref: str) -> Run:
        """By id or by name; NotFound names the field `run`."""
        ...

    async def list_runs(self) -> list[Run]: ...

    async def control_run(self, run_id: str, *, action: RunAction, now: float) -> Run:
        """The run moves to rules.control_target(state, action); cancel also cancels its pending items.
        Event run_paused / run_resumed / run_cancelled (with cancelled_items) when the state changed.
        NotFound (run); Conflict (action) on pause or resume of a cancelled run."""
        ...

    # the work loop
    async def claim(self, request: ClaimRequest, *, now: float) -> ClaimBatch:
        """Expired leases first go where rules.lease_expiry sends them (event lease_expired each); then up
        to `request.limit` pending items whose available_at has come are leased round-robin across packages:
        pending → generating, attempt + 1, an attempt row, event `claimed` each. A short batch says why
        (rules.why_nothing, or paused / cancelled) and when to ask again. NotFound (run, package)."""
        ...

    async def heartbeat(self, leases: Sequence[LeaseRef], *, now: float) -> HeartbeatResult:
        """Extend every lease still held (generating under that token) by the run's lease_seconds; the
        others are `lost`; held leases of a cancelled run are also listed `cancelled`. No event, no error."""
        ...

    async def complete(
        self,
        outcome_id: str,
        *,
        lease_token: str,
        report: Report,
        now: float,
        next_claim: NextClaim | None = None,
    ) -> Reported:
        """generating → complete under the current lease token: metrics, metadata, content reference (and
        the content itself when report.inline is set, in the same transaction), counters, duration
        histogram, event `completed`; with next_claim, the next leases in the same transaction. The
        identical report repeated answers the same outcome and leases. NotFound (outcome_id); StaleLease
        (lease_token) for a token that is not the current one or a lease that no longer holds; Conflict
        (outcome_id) for a different report on a complete item."""
        ...

    async def fail(
        self,
        outcome_id: str,
        *,
        lease_token: str,
        failure: Failure,
        now: float,
        next_claim: NextClaim | None = None,
    ) -> Reported:
        """generating → where rules.failure_outcome sends it: pending after failure.backoff(attempts_so_far)
        (event retry_scheduled), or final failed / cancelled (event of that name); the attempt ends failed
        with failure.error. The identical report (same lease, same error) repeated changes nothing and
        answers the same leases. Errors as for complete."""
        ...

    async def retry(
        self,
        run_id: str,
        *,
        package: str | None = None,
        outcome_ids: Sequence[str] | None = None,
        now: float,
    ) -> list[str]:
        """failed → pending with attempts reset (optionally one package, or these ids); event `requeued`
        when any moved. NotFound (run, package); Conflict (run) when the run is cancelled."""
        ...

    # review gates and budgets
    async def review(self, outcome_id: str, *, verdict: ReviewVerdict, now: float) -> Outcome:
        """in_review → complete (approve: counted, dependents readied, event `approved`) or → pending after
        verdict.backoff(attempts) / failed past max_attempts (reject: event `rejected`, the failure cascade),
        rules.review deciding; the attempt keeps the decision, its note and the reviewer's principal.
        NotFound (outcome_id); Conflict (outcome_id) when the item is not in_review."""
        ...

    async def update_policy(self, run_id: str, *, update: PolicyUpdate, now: float) -> Run:
        """The run's policy fields given in `update` replace its own (those in update.clear go back to none);
        event `policy_updated` with the changes. A raised budget does not resume a paused run. NotFound
        (run)."""
        ...

    # the seed's tracking API
    async def record_outcome(self, record: NewRecord, *, now: float) -> tuple[Outcome, bool]:
        """The seed's tracking call: record.item (and its package) created when new (event `recorded`),
        then set to record.status as update_status does (skipped for a new item recorded pending with
        an empty report and no error); answers (outcome, created). NotFound (run)."""
        ...

    async def update_status(self, outcome_id: str, *, change: StatusChange, now: float) -> Outcome:
        """A manual override to change.status (rules.override): any status from any status, counters moved, a fresh lease
        token fences off whoever held the item; event `status_updated` (from, to). NotFound (outcome_id)."""
        ...

    async def get_outcome(self, outcome_id: str, *, history: bool = False) -> OutcomeDetail: ...

    async def list_outcomes(
        self, flt: OutcomeFilter, *, limit: int, cursor: str | None = None
    ) -> OutcomePage: ...

    def iter_outcomes(self, run_id: str) -> AsyncIterator[Outcome]:
        """Every outcome of a run, page by page."""
        ...

    async def outcome_usage(self, run_id: str) -> dict[str, Usage]:
        """What each outcome of a run spent, summed over its attempts (`model`: the latest attempt's that
        named one), by outcome id; outcomes that reported no usage are left out (what exports carry)."""
        ...

    async def cells(self, run_id: str) -> list[Cell]:
        """Every outcome of a run, in creation order, reduced to what the board's grid draws (one read;
        a 40,000-item run without building 40,000 records)."""
        ...

    async def package_summaries(self, run_id: str) -> list[PackageSummary]: ...

    async def package_summary(self, package: str, *, run_id: str | None) -> PackageSummary: ...

    async def system_metrics(self, run_id: str | None, *, now: float) -> SystemMetrics: ...

    async def run_overview(self, run_id: str, *, since: float) -> RunOverview:
        """The run, its package summaries, items finished at or after `since` and the latest event
        sequence, from one consistent snapshot (what `run_status` polls)."""
        ...

    async def run_minutes(self, run_id: str, *, since_minute: int) -> list[MinuteCount]:
        """The per-minute finished counts the throughput window sums, from `since_minute` on, in order
        (minutes with nothing finished are absent)."""
        ...

    async def finished_span(self, run_id: str) -> FinishedSpan:
        """The run's complete and failed items: how many, the earliest `started_at` and the latest
        `completed_at` among them (one aggregate read; run_status asks it for finished runs only)."""
        ...

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
        """A line in the integration log (details as JSON), and event `integration`. NotFound
        (outcome_id) for an outcome id that does not exist."""
        ...

    # change feed
    async def latest_seq(self) -> int: ...

    async def events_after(self, *, since: int, run_id: str | None = None, limit: int) -> list[Event]: ...

    async def wait_for_change(self, since: int, *, timeout: float) -> int:
        """Return the latest sequence once it exceeds `since`, or after `timeout` seconds."""
        ...

    # API keys (the HTTP service's credentials; shared by every process on one store)
    async def create_api_key(self, name: str, *, key_hash: str, scopes: Sequence[str], now: float) -> ApiKey:
        """Raises Conflict (field name) when a key of that name exists, revoked or not."""
        ...

    async def list_api_keys(self) -> list[ApiKey]: ...

    async def revoke_api_key(self, name: str, *, now: float) -> ApiKey:
        """Raises NotFound (field name). Revoking twice keeps the first time."""
        ...

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    async def touch_api_key(self, name: str, *, now: float) -> None:
        """Record a use (callers throttle this; it is not written per request)."""
        ...

    async def revoke_session(self, session_id: str, *, expires_at: float, now: float) -> None:
        """End a board session (sign-out) for every replica until `expires_at`; forgets sessions whose
        time is past `now`."""
        ...

    async def session_revoked(self, session_id: str) -> bool: ...

    async def status_counts(self) -> dict[str, dict[Status, int]]:
        """Outcomes by package name and status over all runs, from the counters (no scan)."""
        ...

    async def active_status_counts(
        self, limit: int
    ) -> tuple[dict[Status, int], dict[str, dict[Status, int]]]:
        """Outcomes by status over all runs, and by status for at most `limit` package names with items
        pending or generating in a run that is not cancelled (in name order), from the counters: what
        /metrics labels, bounded however many packages were ever planned."""
        ...

    # maintenance
    async def recount(self, run_id: str | None = None) -> RecountReport:
        """Compare every counter with a recount of the rows (tests, `status --check`)."""
        ...

    async def rebuild_counters(self, run_id: str | None = None) -> None: ...

    async def inline_content(self, sha256: str) -> bytes | None:
        """Content kept in the store under its sha256 (a report's inline content), or None."""
        ...

    async def content_hashes(self) -> set[str]:
        """Every content_sha256 an outcome refers to (artifact garbage collection)."""
        ...

    async def collect_contents(self) -> Collected:
        """Delete the content kept in the store (a small report's inline content) that no outcome refers to
        any more: an override replaced or cleared it. Orphans are found without blocking anything; they are
        deleted only after a check under a lock that every report writing content takes (SQLite: the one
        writer; PostgreSQL: the `contents` table lock), so content a report is committing right now (the
        same bytes again) is never taken from under it. Rows are not timed: a report re-using an existing
        row does not touch it, so a time window could not tell it from an old orphan."""
        ...

    async def path_holder(self, path: str) -> PathHolder | None:
        """The outcome whose outcome_path is `path` (one per path, kept by a unique key), or None."""
        ...

    async def content_files(self, *, since_seq: int, limit: int) -> list[ContentFile]:
        """Complete outcomes with stored content and a path, in the order of their `completed` events after
        `since_seq` (the event log's index finds recent completions without scanning the outcomes)."""
        ...
