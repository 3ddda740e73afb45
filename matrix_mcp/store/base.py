"""The Store protocol: what the engine needs from persistence, and the errors stores raise.

A store is the only place that speaks SQL for the outcome store. Each method is one atomic
transition: it either happens whole or raises and changes nothing. Times are epoch seconds
passed in by the engine (so rules and tests control the clock), except where noted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

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


class StoreError(Exception):
    """Base of every error a store raises on purpose. The message is safe to show a client."""

    field: str | None = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(StoreError):
    """A run, package or outcome that does not exist."""


class Conflict(StoreError):
    """The request contradicts the current state (a different report for a finished item...)."""


class StaleLease(Conflict):
    """The lease token is not the item's current one: it expired and was re-claimed, or never was."""


class Unavailable(StoreError):
    """The database cannot be reached right now; the call may be retried."""

    retryable = True


@dataclass(frozen=True)
class ContentFile:
    """Where a complete outcome's content should be readable: outcome_path, linked from its blob."""

    seq: int  # the `completed` event's sequence number (a cursor)
    outcome_id: str
    outcome_path: str
    content_sha256: str


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


@dataclass(frozen=True)
class NextClaim:
    """With a report: lease up to `limit` next items of the same run for the worker that held the
    reported lease, in the report's own transaction (the one-call worker loop)."""

    limit: int
    package: str | None
    token_factory: Callable[[], str]


@dataclass(frozen=True)
class Reported:
    """What a report answers: the outcome as it now stands, and the next leases when asked for.

    A repeat of the identical report answers the leases the first one took that the worker still
    holds (those whose attempt started at the first report's time), never new ones."""

    outcome: Outcome
    next: ClaimBatch | None = None


@dataclass(frozen=True)
class Report:
    """A completion report. Identical reports for the same lease are idempotent."""

    outcome_path: str | None = None
    content_sha256: str | None = None
    content_bytes: int | None = None
    mime_type: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


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
        name: str,
        goal: str | None,
        policy: RunPolicy,
        packages: Sequence[NewPackage],
        now: float,
    ) -> PlanResult: ...

    async def get_run(self, ref: str) -> Run:
        """By id or by name; NotFound names the field `run`."""
        ...

    async def list_runs(self) -> list[Run]: ...

    async def control_run(self, run_id: str, action: RunAction, now: float) -> Run: ...

    # the work loop
    async def claim(
        self,
        run_id: str,
        worker: str,
        limit: int,
        package: str | None,
        now: float,
        token_factory: Callable[[], str],
    ) -> ClaimBatch: ...

    async def heartbeat(self, leases: Sequence[LeaseRef], now: float) -> HeartbeatResult: ...

    async def complete(
        self,
        outcome_id: str,
        lease_token: str,
        report: Report,
        now: float,
        next_claim: NextClaim | None = None,
    ) -> Reported: ...

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
        """backoff(attempts_so_far) gives the delay before the item is claimable again."""
        ...

    async def retry(
        self, run_id: str, package: str | None, outcome_ids: Sequence[str] | None, now: float
    ) -> list[str]: ...

    # the seed's tracking API
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
    ) -> tuple[Outcome, bool]: ...

    async def update_status(
        self,
        outcome_id: str,
        status: Status,
        error_message: str | None,
        report: Report | None,
        now: float,
    ) -> Outcome: ...

    async def get_outcome(self, outcome_id: str, history: bool = False) -> OutcomeDetail: ...

    async def list_outcomes(self, flt: OutcomeFilter, limit: int, cursor: str | None) -> OutcomePage: ...

    def iter_outcomes(self, run_id: str) -> AsyncIterator[Outcome]: ...

    async def cells(self, run_id: str) -> list[Cell]:
        """Every outcome of a run, in creation order, reduced to what the board's grid draws (one read;
        a 40,000-item run without building 40,000 records)."""
        ...

    async def package_summaries(self, run_id: str) -> list[PackageSummary]: ...

    async def package_summary(self, package: str, run_id: str | None) -> PackageSummary: ...

    async def system_metrics(self, run_id: str | None, now: float) -> SystemMetrics: ...

    async def run_overview(self, run_id: str, since: float) -> RunOverview:
        """The run, its package summaries, items finished at or after `since` and the latest event
        sequence, from one consistent snapshot (what `run_status` polls)."""
        ...

    async def run_minutes(self, run_id: str, since_minute: int) -> list[MinuteCount]:
        """The per-minute finished counts the throughput window sums, from `since_minute` on, in order
        (minutes with nothing finished are absent)."""
        ...

    async def record_integration(
        self,
        run_id: str | None,
        outcome_id: str | None,
        integration_type: str,
        action: str,
        status: str,
        details: dict[str, Any],
        now: float,
    ) -> IntegrationEvent: ...

    # change feed
    async def latest_seq(self) -> int: ...

    async def events_after(self, since: int, run_id: str | None, limit: int) -> list[Event]: ...

    async def wait_for_change(self, since: int, timeout: float) -> int:
        """Return the latest sequence once it exceeds `since`, or after `timeout` seconds."""
        ...

    # API keys (the HTTP service's credentials; shared by every process on one store)
    async def create_api_key(self, name: str, key_hash: str, scopes: Sequence[str], now: float) -> ApiKey:
        """Raises Conflict (field name) when a key of that name exists, revoked or not."""
        ...

    async def list_api_keys(self) -> list[ApiKey]: ...

    async def revoke_api_key(self, name: str, now: float) -> ApiKey:
        """Raises NotFound (field name). Revoking twice keeps the first time."""
        ...

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    async def touch_api_key(self, name: str, now: float) -> None:
        """Record a use (callers throttle this; it is not written per request)."""
        ...

    async def status_counts(self) -> dict[str, dict[Status, int]]:
        """Outcomes by package name and status over all runs, from the counters (no scan)."""
        ...

    # maintenance
    async def recount(self, run_id: str | None = None) -> RecountReport:
        """Compare every counter with a recount of the rows (tests, `status --check`)."""
        ...

    async def rebuild_counters(self, run_id: str | None = None) -> None: ...

    async def content_hashes(self) -> set[str]:
        """Every content_sha256 an outcome refers to (artifact garbage collection)."""
        ...

    async def content_files(self, since_seq: int, limit: int) -> list[ContentFile]:
        """Complete outcomes with stored content and a path, in the order of their `completed` events after
        `since_seq` (the event log's index finds recent completions without scanning the outcomes)."""
        ...
