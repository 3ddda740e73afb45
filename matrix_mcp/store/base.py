"""The Store protocol: what the engine needs from persistence (errors: matrix_mcp.errors, re-exported).

A store is the only place that speaks SQL for the outcome store. Each method is one atomic
transition: it either happens whole or raises and changes nothing. Times are epoch seconds
passed in by the engine (so rules and tests control the clock), except where noted.

Calls cannot be swapped silently: a method takes at most the identity of what it changes (an outcome id,
a run id, a parameter object) positionally and everything else by keyword, and fields that travel
together through the layers come as one frozen parameter object (ClaimRequest, NextClaim, Failure,
NewRecord, StatusChange, Report), built by keyword.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from matrix_mcp.errors import Conflict as Conflict
from matrix_mcp.errors import NotFound as NotFound
from matrix_mcp.errors import StaleLease as StaleLease
from matrix_mcp.errors import StoreError as StoreError
from matrix_mcp.errors import Unavailable as Unavailable
from matrix_mcp.models import (
    ClaimReason,
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

if TYPE_CHECKING:
    from matrix_mcp.store.hooks import HookStore


@dataclass(frozen=True, kw_only=True)
class PathHolder:
    """The outcome whose readable file a path is."""

    outcome_id: str
    run_id: str
    package: str
    item: str


@dataclass(frozen=True)
class ContentFile:
    """Where a complete outcome's content should be readable: outcome_path, linked from its blob."""

    seq: int  # the `completed` event's sequence number (a cursor)
    outcome_id: str
    outcome_path: str
    content_sha256: str


@dataclass(frozen=True)
class Collected:
    """What a collection of the content kept in the store removed."""

    removed: int
    removed_bytes: int


@dataclass(frozen=True)
class NewItem:
    name: str
    specifications: dict[str, Any] | str | None = None


@dataclass(frozen=True)
class NewPackage:
    name: str
    description: str | None
    items: Sequence[NewItem]


@dataclass(frozen=True)
class Claim:
    """One claimed item as the store returns it; the engine adds the briefing."""

    outcome_id: str
    run: str
    package: str
    package_description: str | None
    item: str
    attempt: int
    lease_token: str
    lease_expires_at: float
    outcome_type: str
    specifications: dict[str, Any] | str | None
    outcome_path: str | None


@dataclass(frozen=True)
class ClaimBatch:
    claims: list[Claim]
    reason: ClaimReason | None = None
    next_available_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class ClaimRequest:
    """What `claim` asks for: up to `limit` items of the run for `worker` (of one package when given),
    each leased under a fresh token from `token_factory`."""

    run_id: str
    worker: str
    limit: int = 1
    package: str | None = None
    token_factory: Callable[[], str]


@dataclass(frozen=True, kw_only=True)
class NextClaim:
    """With a report: lease up to `limit` next items of the same run for the worker that held the
    reported lease, in the report's own transaction (the one-call worker loop)."""

    limit: int
    package: str | None = None
    token_factory: Callable[[], str]

    def request(self, run_id: str, worker: str) -> ClaimRequest:
        """The claim this asks for, once the reported row tells the run and the worker."""
        return ClaimRequest(
            run_id=run_id,
            worker=worker,
            limit=self.limit,
            package=self.package,
            token_factory=self.token_factory,
        )


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A failure report: the worker's error text, whether another attempt may help, and the delay before
    attempt n + 1 (`backoff(n)`, n the attempts so far) when rules.failure_outcome schedules a retry."""

    error: str
    retryable: bool = True
    backoff: Callable[[int], float]


@dataclass(frozen=True)
class Reported:
    """What a report answers: the outcome as it now stands, and the next leases when asked for.

    A repeat of the identical report answers the leases the first one took that the worker still
    holds (those whose attempt started at the first report's time), never new ones."""

    outcome: Outcome
    next: ClaimBatch | None = None


@dataclass(frozen=True, kw_only=True)
class Report:
    """A completion report. Identical reports for the same lease are idempotent."""

    outcome_path: str | None = None
    content_sha256: str | None = None
    content_bytes: int | None = None
    mime_type: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # the content itself, when small enough to be kept in the store: written with the report, in its
    # transaction, under content_sha256 (the readable file is a copy made after the commit)
    inline: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class StatusChange:
    """A manual override: the status to set, with its error text and report (metrics, metadata, path);
    `created_by` is recorded only where the outcome has no creator yet."""

    status: Status
    error_message: str | None = None
    report: Report | None = None
    created_by: str | None = None


@dataclass(frozen=True, kw_only=True)
class NewRecord:
    """The seed's tracking call: the item `item` of `package` in run `run_id`, set to `status` with
    `report` (its outcome_type, specifications and created_by apply only when the item is new)."""

    run_id: str
    package: str
    item: str
    status: Status = "pending"
    outcome_type: str | None = None
    specifications: dict[str, Any] | str | None = None
    report: Report = field(default_factory=Report)
    error_message: str | None = None
    created_by: str | None = None

    @property
    def change(self) -> StatusChange:
        """The status this record sets, as update_status would set it."""
        return StatusChange(
            status=self.status,
            error_message=self.error_message,
            report=self.report,
            created_by=self.created_by,
        )


@dataclass(frozen=True)
class RunOverview:
    """Everything `run_status` shows, read in one snapshot."""

    run: Run
    packages: list[PackageSummary]
    finished_since: int
    latest_seq: int


@dataclass(frozen=True)
class MinuteCount:
    """Items of a run that finished in one minute (`minute`: whole minutes since the epoch)."""

    minute: int
    completed: int
    failed: int


@dataclass(frozen=True)
class FinishedSpan:
    """A run's finished items (complete or failed), the earliest start among them and the latest finish:
    a finished run's actual rate, which no later clock reading changes."""

    finished: int
    first_started_at: float | None
    last_finished_at: float | None


@dataclass(frozen=True)
class ApiKey:
    """An API key as stored: never the key itself (only its hash, which stays in the store)."""

    name: str
    scopes: tuple[str, ...]
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None


class Cell(NamedTuple):
    """One outcome as the board's grid shows it."""

    outcome_id: str
    package: str
    item: str
    status: Status


@dataclass(frozen=True)
class OutcomeFilter:
    run_id: str | None = None
    package: str | None = None
    status: Status | None = None
    worker: str | None = None


class ListOutcomes(Protocol):
    """A store's list_outcomes, as paged_outcomes calls it."""

    def __call__(
        self, flt: OutcomeFilter, *, limit: int, cursor: str | None = None
    ) -> Awaitable[OutcomePage]: ...


async def paged_outcomes(list_outcomes: ListOutcomes, run_id: str) -> AsyncIterator[Outcome]:
    """Every outcome of a run, page by page (what both stores' iter_outcomes do)."""
    cursor: str | None = None
    while True:
        page = await list_outcomes(OutcomeFilter(run_id=run_id), limit=1000, cursor=cursor)
        for outcome in page.outcomes:
            yield outcome
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


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

    def iter_outcomes(self, run_id: str) -> AsyncIterator[Outcome]: ...

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
