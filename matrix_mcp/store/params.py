"""The parameter objects and plain results the Store protocol (matrix_mcp.store.protocol) speaks.

Fields that travel together through the layers come as one frozen object built by keyword (ClaimRequest,
NextClaim, Failure, NewRecord, StatusChange, Report): calls cannot swap two of them silently
(tests/architecture/test_call_shapes.py holds every one to that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from matrix_mcp.models import (
    ClaimReason,
    Outcome,
    PackageSummary,
    PreviousAttempt,
    Review,
    ReviewDecision,
    Run,
    Status,
    Usage,
    WorkerUsage,
)


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


@dataclass(frozen=True, kw_only=True)
class Prerequisite:
    """One reference of a plan's `after` lists: what it may name, in order (package, item; item None: every
    item of the package; rules.ref_candidates), and the input field it came from with the text written there
    (named by the error when none of them exists in the plan or the run)."""

    candidates: tuple[tuple[str, str | None], ...]
    field: str
    text: str = ""  # the reference as written


@dataclass(frozen=True)
class NewItem:
    name: str
    specifications: dict[str, Any] | str | None = None
    after: Sequence[Prerequisite] = ()
    priority: int = 0
    locks: Sequence[str] = ()


@dataclass(frozen=True)
class NewPackage:
    name: str
    description: str | None
    items: Sequence[NewItem]
    after: Sequence[Prerequisite] = ()  # packages (candidates with item None) every item waits for
    priority: int = 0
    max_concurrent: int | None = None
    review: Review | None = None  # None: the run's


@dataclass(frozen=True, kw_only=True)
class ReviewVerdict:
    """review_item's decision on an item in_review, with the reviewer's note (kept in the attempt history;
    a rejection's note is what the next attempt reads, and the error when no attempt is left)."""

    decision: ReviewDecision
    note: str | None = None
    backoff: Callable[[int], float]  # a rejection's delay before attempt n + 1, like a failure's


@dataclass(frozen=True, kw_only=True)
class PolicyUpdate:
    """update_policy's changes to a run's policy: each field given replaces the run's; `clear` names the
    optional limits set back to none (max_cost_usd, max_tokens, max_concurrent)."""

    max_cost_usd: float | None = None
    max_tokens: int | None = None
    max_concurrent: int | None = None
    review: Review | None = None
    lease_seconds: float | None = None
    max_attempts: int | None = None
    clear: frozenset[str] = frozenset()


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
    # a retry reset its attempt count (rules.has_earlier_attempts: its earlier attempts are still there)
    retried: bool = False
    # the item's earlier attempts, newest first, as stored (the engine bounds them: rules.briefing)
    previous_attempts: Sequence[PreviousAttempt] = ()


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
    usage: Usage | None = None  # what the attempt spent (rolled up with the report, counted against budgets)


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
    usage: Usage | None = None  # what the attempt spent (rolled up with the report, counted against budgets)


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
    workers: list[WorkerUsage] = field(default_factory=list)  # what each worker's reports spent, most first


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
