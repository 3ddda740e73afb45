"""The one vocabulary shared by the store, the engine, the tools and the resources."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

# "blocked" (waiting for dependencies), then "in_review" (done, awaiting review_item) come last: the board's
# status codes and earlier outputs keep their indexes
Status = Literal["pending", "generating", "complete", "failed", "cancelled", "blocked", "in_review"]
STATUSES: tuple[Status, ...] = (
    "pending",
    "generating",
    "complete",
    "failed",
    "cancelled",
    "blocked",
    "in_review",
)
# what a record or an override may set: every status but blocked (only unmet dependencies block an item) and
# in_review (only a completion under review puts an item there)
SettableStatus = Literal["pending", "generating", "complete", "failed", "cancelled"]
RunState = Literal["active", "paused", "cancelled", "done"]
RunAction = Literal["pause", "resume", "cancel"]
DependencyFailure = Literal["cancel", "block"]
Review = Literal["none", "required"]
ReviewDecision = Literal["approve", "reject"]
Json = dict[str, Any]


def ts(epoch: float | None) -> datetime | None:
    """Epoch seconds (how both stores keep time) to an aware UTC datetime."""
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


# Result fields advertised by their JSON type alone (their shape is in the tool's description, or obvious):
# every tool's definition is counted against the tools/list budget, and results repeat records.
AsObject = WithJsonSchema({"type": "object"})
AsArray = WithJsonSchema({"type": "array"})
AsString = WithJsonSchema({"type": "string"})
AsInteger = WithJsonSchema({"type": "integer"})


# ---- inputs ---------------------------------------------------------------------------------------

# priorities and caps are stored as 32-bit integers on both backends
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1
MAX_CAP = 2**31 - 1
# an `after` reference and a lock key as the schemas state them (rules.py checks the rest: syntax, printable,
# rules.MAX_LOCK_KEY_LENGTH)
Reference = Annotated[str, Field(min_length=1)]
LockKey = Annotated[str, Field(min_length=1, max_length=200)]


class ItemSpec(_Model):
    name: str = Field(min_length=1)
    specifications: Json | str | None = None
    after: list[Reference] = Field(
        default_factory=list,
        description='Items of the run this one waits for: "package/item", a bare "item" of the same package, '
        'or "package/*" for every item of a package.',
    )
    priority: int = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="Higher is claimed first.")
    locks: list[LockKey] = Field(
        default_factory=list,
        description='Resource keys (e.g. "file:src/db.py") no two live leases hold at once, store-wide.',
    )


class PackageSpec(_Model):
    name: str = Field(min_length=1)
    description: str | None = None
    items: list[str | ItemSpec] = Field(default_factory=list)
    after: list[Reference] = Field(
        default_factory=list, description="Packages every item of this one waits for (all of their items)."
    )
    priority: int = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="Higher is claimed first.")
    max_concurrent: int | None = Field(
        default=None, ge=1, le=MAX_CAP, description="At most this many of its items generating at once."
    )
    review: Review | None = Field(
        default=None,
        description='"required": a completed item waits in_review for review_item; null: the run\'s.',
    )


MAX_NOTE_CHARS = 2_000  # a heartbeat's note, a review's note


# the largest usage a report or a budget may state (sums of them stay within 64-bit integers)
MAX_TOKENS = 10**15
MAX_COST_USD = 1e12
# a report's usage as tools advertise it: compact (the worker toolset's budget); other keys are ignored
USAGE_SCHEMA: Json = {
    "type": "object",
    "properties": {
        **{
            name: {"type": "integer", "minimum": 0, "maximum": 1e15}
            for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")
        },
        "model": {"type": "string", "maxLength": 200},
        "cost_usd": {"type": "number", "minimum": 0, "maximum": 1e12},
    },
}


class LeaseRef(_Model):
    outcome_id: str
    lease_token: str
    # a checkpoint ("migrated 3 of 5 tables"): the attempt keeps the last; the next attempt's claim shows it
    note: str | None = Field(default=None, max_length=MAX_NOTE_CHARS)


class Usage(_Model):
    # what an attempt spent, as the worker reports it (every field optional, none negative)
    input_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    output_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    cache_read_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    cache_creation_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    model: str | None = Field(default=None, max_length=200)
    cost_usd: float | None = Field(default=None, ge=0, le=MAX_COST_USD, allow_inf_nan=False)

    @property
    def tokens(self) -> int:
        """Every token counted (what max_tokens caps)."""
        return sum(
            t or 0
            for t in (
                self.input_tokens,
                self.output_tokens,
                self.cache_read_tokens,
                self.cache_creation_tokens,
            )
        )


class RunPolicy(_Model):
    outcome_type: str = "code"
    lease_seconds: float = Field(default=300, gt=0, le=86_400)
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_seconds: float = Field(default=5, ge=0, le=86_400)
    backoff_cap_seconds: float = Field(default=300, ge=0, le=86_400)
    outcome_schema: Json | None = None
    max_concurrent: int | None = Field(default=None, ge=1, le=MAX_CAP)  # run-wide items generating at once
    on_dependency_failure: DependencyFailure = "cancel"  # what an item failed for good does to its dependents
    review: Review = "none"  # "required": complete_item puts the item in_review until review_item decides
    max_cost_usd: float | None = Field(
        default=None, ge=0, le=MAX_COST_USD, allow_inf_nan=False
    )  # past: paused
    max_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)  # all tokens reported; past: paused

    @classmethod
    def planned(
        cls,
        outcome_type: str = "code",
        lease_seconds: float = 300,
        max_attempts: int = 3,
        backoff_seconds: float = 5,
        outcome_schema: Json | None = None,
        max_concurrent: int | None = None,
        on_dependency_failure: DependencyFailure = "cancel",
        review: Review = "none",
        max_cost_usd: float | None = None,
        max_tokens: int | None = None,
    ) -> RunPolicy:
        """The policy a plan asks for (plan_run's arguments, a plan file): the backoff doubles from
        `backoff_seconds` up to 300 s, or up to `backoff_seconds` when that is longer."""
        return cls(
            outcome_type=outcome_type,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            backoff_seconds=backoff_seconds,
            backoff_cap_seconds=max(backoff_seconds, 300),
            outcome_schema=outcome_schema,
            max_concurrent=max_concurrent,
            on_dependency_failure=on_dependency_failure,
            review=review,
            max_cost_usd=max_cost_usd,
            max_tokens=max_tokens,
        )


# ---- records --------------------------------------------------------------------------------------


class StatusCounts(_Model):
    pending: int = 0
    generating: int = 0
    complete: int = 0
    failed: int = 0
    cancelled: int = 0
    blocked: int = 0
    in_review: Annotated[int, AsInteger] = 0
    total: int = 0


class UsageTotals(_Model):
    # usage summed over reports (a package's, a run's, a worker's)

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float = 0.0


class Run(_Model):
    id: str
    name: str
    goal: str | None = None
    state: RunState
    policy: Annotated[RunPolicy, AsObject]  # as plan_run took it (its arguments describe the fields)
    packages: int
    counts: StatusCounts
    progress: float = Field(description="Share of items finished (complete, failed, cancelled).")
    # why a paused run paused itself (a budget); null when paused by hand
    paused_reason: Annotated[str | None, AsString] = None
    created_at: datetime
    updated_at: datetime


class PackageSummary(_Model):
    run: str
    package: str
    description: str | None = None
    position: int
    total_items: int
    pending_items: int
    generating_items: int
    completed_items: int
    failed_items: int
    cancelled_items: int
    blocked_items: int = 0
    in_review_items: Annotated[int, AsInteger] = 0
    usage: Annotated[UsageTotals | None, AsObject] = None  # what its items' reports spent (null: none yet)
    review: Annotated[Review | None, AsString] = None  # null: the run's
    priority: int = 0
    max_concurrent: int | None = None
    after: list[str] = Field(default_factory=list, description="Packages its items wait for.")
    success_rate: float | None = Field(
        default=None, description="complete / (complete + failed); null before any finished."
    )
    avg_duration_seconds: float | None = None
    p50_duration_seconds: float | None = Field(default=None, description="From a log-bucket histogram, ±10%.")
    p90_duration_seconds: float | None = None
    p99_duration_seconds: float | None = None
    total_lines_generated: float
    average_quality_score: float | None = None


class Outcome(_Model):
    id: str
    run: str
    run_id: str
    package: str
    item: str
    position: int
    status: Status
    outcome_type: str
    outcome_path: str | None = None
    specifications: Json | str | None = None
    attempts: int
    max_attempts: int
    worker: str | None = None
    created_by: str | None = None
    error_message: str | None = None
    metrics: Json
    metadata: Json
    content_sha256: str | None = None
    content_bytes: int | None = None
    mime_type: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_seconds: float | None = None
    lease_expires_at: datetime | None = None
    available_at: datetime | None = None
    priority: int = 0
    locks: list[str] = Field(default_factory=list)


class Attempt(_Model):
    attempt: int
    worker: str | None = None
    principal: str | None = None  # who claimed it over HTTP (`key:NAME` / `jwt:SUB`); omitted when open
    status: Status
    error: str | None = None
    note: Annotated[str | None, AsString] = None  # the last heartbeat note
    usage: Annotated[Usage | None, AsObject] = None
    review_decision: Annotated[ReviewDecision | None, AsString] = None
    review_note: Annotated[str | None, AsString] = None
    # the reviewer's principal (`key:NAME` / `jwt:SUB`), when not open
    reviewed_by: Annotated[str | None, AsString] = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


class InlineContent(_Model):
    # get_outcome(include_content=true): the content in the result, for hosts that cannot read resources
    # (encoding base64 when it is not UTF-8 text or holds NUL; truncated when cut at max_bytes). Field
    # descriptions are left to the tool's: the worker toolset's definitions are counted.
    encoding: Literal["utf-8", "base64"]
    data: str
    mime_type: str
    included_bytes: int
    total_bytes: int
    truncated: bool


class OutcomeDetail(Outcome):
    history: list[Attempt] = Field(default_factory=list)
    # unmet prerequisites ("package/item", "package/*"; at most 100,
    # rules.WAITS_FOR_SHOWN) and the lock keys it holds
    # under a live lease
    waits_for: list[str] = Field(default_factory=list)
    locks_held: list[str] = Field(default_factory=list)
    # advertised as a plain object: its fields are in the tool's description (the worker toolset's budget)
    content: Annotated[InlineContent | None, WithJsonSchema({"type": "object"})] = None


class Event(_Model):
    seq: int
    run: str | None = None
    outcome_id: str | None = None
    kind: str
    data: Json
    created_at: datetime


class IntegrationEvent(_Model):
    id: int
    run: str | None = None
    outcome_id: str | None = None
    integration_type: str
    action: str
    status: str
    details: Json
    created_at: datetime


# ---- tool results ---------------------------------------------------------------------------------


class PlanResult(_Model):
    run: Run
    created: bool = Field(description="False when the run already existed.")
    packages: int
    items: int
    added_packages: list[str]
    added_items: int


class PreviousAttempt(_Model):
    # an earlier attempt of a claimed item, as its next worker reads it, each thing said once (texts may be
    # cut, marked "…"): `status` only when the attempt did not fail (a failed one tells how by its error, a
    # rejected one by its review_note); `error` only when it is not the review note (a rejection's error)
    attempt: int
    status: Status | None = None
    error: str | None = None
    note: str | None = None
    review_note: str | None = None


class ClaimedItem(_Model):
    # what a worker needs to do one item (it knows the run; get_outcome has every field)
    outcome_id: str
    package: str
    item: str
    attempt: int
    lease_token: str
    lease_expires_at: datetime
    specifications: Json | str | None = None
    outcome_path: str | None = None
    briefing: str | None = None  # the run's goal and the package's description
    # earlier attempts, newest first, within MATRIX_MAX_BRIEFING_BYTES (null on a first attempt: left out of
    # the JSON); how many older ones did not fit (null when none was left out)
    previous_attempts: Annotated[list[PreviousAttempt] | None, AsArray] = None
    previous_attempts_omitted: Annotated[int | None, AsInteger] = None


# blocked: nothing ready, the rest waits on dependencies; locked: ready items wait for lock keys another
# live lease holds; capped: a max_concurrent cap is reached; in_review: nothing else is left but items
# waiting for a review (not done: a rejection sends one back)
ClaimReason = Literal[
    "done",
    "paused",
    "cancelled",
    "all_leased",
    "backing_off",
    "empty",
    "blocked",
    "locked",
    "capped",
    "in_review",
]


class ClaimResult(_Model):
    items: list[ClaimedItem]
    reason: ClaimReason | None = None  # why fewer items than asked came (the tool's description says so)
    retry_after_seconds: float | None = None


class LeaseState(_Model):
    outcome_id: str
    lease_expires_at: datetime | None = None


class HeartbeatResult(_Model):
    extended: list[LeaseState] | None = None  # detail='full'

    lease_expires_at: datetime | None = Field(default=None, description="Earliest new expiry.")
    lost: list[str]  # expired, taken over or finished
    cancelled: list[str]  # the run was cancelled: stop these


class ReportResult(_Model):
    # a report's acknowledgement: what the worker needs to go on; the full record only with detail='full'
    outcome_id: str
    status: Status
    attempt: int
    available_at: datetime | None = Field(default=None, description="Retried from then.")
    next: list[ClaimedItem] | None = None
    reason: ClaimReason | None = Field(default=None, description="Why `next` is short.")
    retry_after_seconds: float | None = None
    # detail='full': the record as get_outcome has it (described as an object: the tool's definition stays small)
    outcome: Annotated[Outcome | None, WithJsonSchema({"type": ["object", "null"]})] = None


class RetryResult(_Model):
    run: str
    requeued: int
    outcome_ids: list[str]


class ReviewResult(_Model):
    outcome_id: str
    decision: ReviewDecision
    status: Status  # complete (approved), pending (rejected, retried) or failed (rejected, attempts spent)
    attempt: int
    available_at: datetime | None = Field(default=None, description="Retried from then.")


class WorkerUsage(_Model):
    worker: str
    usage: UsageTotals


class RunList(_Model):
    runs: list[Run]


class RunStatus(_Model):
    run: str
    run_id: str
    state: RunState
    goal: str | None = None
    counts: StatusCounts
    packages: list[PackageSummary]
    progress: float
    throughput_per_minute: float | None = Field(
        default=None,
        description="Finished per minute: over the last 5 min; for a done or cancelled run, first start to last finish.",
    )
    eta_seconds: float | None = None
    usage: Annotated[UsageTotals | None, AsObject] = None  # spent by the run's reports (null: none yet)
    # the same per worker (most cost first, at most 100)
    workers: Annotated[list[WorkerUsage] | None, AsArray] = None
    latest_seq: int
    events: list[Event]
    more_events: bool = False


class OutcomePage(_Model):
    outcomes: list[Outcome]
    next_cursor: str | None = None


class RecordResult(_Model):
    outcome: Outcome
    created: bool


class HourBucket(_Model):
    hour: datetime
    completed: int
    failed: int
    avg_duration_seconds: float | None = None


class SystemMetrics(_Model):
    run: str | None = None
    outcomes_total: int
    outcomes_pending: int
    outcomes_generating: int
    outcomes_complete: int
    outcomes_failed: int
    outcomes_cancelled: int
    outcomes_blocked: int = 0
    outcomes_in_review: Annotated[int, AsInteger] = 0
    avg_generation_time: float | None = None
    success_rate: float | None = None
    total_lines_generated: float
    average_quality_score: float | None = None
    usage: Annotated[UsageTotals | None, AsObject] = None  # what the reports spent (null: none yet)
    outcomes_by_hour: list[HourBucket]


class ExportResult(_Model):
    run: str
    format: Literal["jsonl", "csv"]
    count: int
    path: str = Field(description="Absolute path of the export file.")
    bytes: int
    uri: str


class RecountReport(_Model):
    consistent: bool
    mismatches: list[str]
