"""The board's rules, once: every decision about a row's next state, every event and every message.

Pure: no I/O, no SQL, no clock. Both stores lock the rows inside their transaction, ask these functions
what happens next, and write the answer in their own dialect. What a function decides is what both
backends do, so the two cannot drift. Every transition of an item is one value decided here: a claim,
complete, fail, expiry or override is a `Transition`, a heartbeat an `Extension`, a retry or cancel a
`Move`. Where PostgreSQL writes one in a set-based statement for speed (claim, complete, heartbeat, sweep,
retry, cancel), a property test in tests/rules/test_rules.py holds the statement to the function here.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeVar

from matrix_mcp.audit import stamped
from matrix_mcp.errors import Conflict, InputError, NotFound, StaleLease
from matrix_mcp.models import (
    ClaimReason,
    PreviousAttempt,
    ReviewDecision,
    RunAction,
    Status,
    Usage,
)


class RowLike(Protocol):
    """A database row read by column name: a sqlite3.Row or a psycopg dict row (or a dict in tests)."""

    def keys(self) -> Iterable[str]: ...

    def __getitem__(self, key: str, /) -> Any: ...


ERROR_IN_EVENT = 500  # characters of a worker's error an event carries
REQUEUED_IDS_IN_EVENT = 100
LEASE_EXPIRED = "lease expired"

# ---- errors ---------------------------------------------------------------------------------------


def unknown_run(ref: str) -> NotFound:
    return NotFound(f"unknown run '{ref}'", field="run")


def unknown_outcome(outcome_id: str) -> NotFound:
    return NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")


def unknown_package_in_run(package: str) -> NotFound:
    return NotFound(f"unknown package '{package}' in this run", field="package")


def unknown_package(package: str) -> NotFound:
    return NotFound(f"unknown package '{package}'", field="package")


def ambiguous_package(package: str, runs: str) -> Conflict:
    return Conflict(f"package '{package}' exists in several runs ({runs}); pass run", field="run")


def run_cancelled_for_plan(name: str) -> Conflict:
    return Conflict(f"run '{name}' is cancelled; plan a new run", field="name")


def run_cancelled_for_retry() -> Conflict:
    return Conflict("the run is cancelled; plan a new run to redo its items", field="run")


def key_exists(name: str) -> Conflict:
    return Conflict(f"a key named '{name}' exists (revoked keys keep their name)", field="name")


def unknown_key(name: str) -> NotFound:
    return NotFound(f"unknown key '{name}'", field="name")


def unknown_webhook(subscription_id: str) -> NotFound:
    return NotFound(f"unknown webhook '{subscription_id}'", field="webhook")


def unknown_delivery(delivery_id: str) -> NotFound:
    return NotFound(f"unknown delivery '{delivery_id}'", field="delivery_id")


def complete_differs() -> Conflict:
    return Conflict(
        "the item is already complete with a different report; repeat the identical report or "
        "use update_outcome_status",
        field="outcome_id",
    )


def lost_lease_message(row: RowLike) -> str:
    """Why a report whose lease_token is the item's current one changes nothing: the lease no longer holds."""
    if row["status"] == "pending":
        return "the lease expired or the item was failed and requeued; this report changes nothing"
    return f"the item is {row['status']}; this lease no longer holds it, and the report changes nothing"


def stale_token_message(row: RowLike) -> str:
    """Why a report with a lease_token that is not the item's current one changes nothing, said from the item's
    row (status, worker, attempts): what actually happened to the item, not a guess."""
    status, worker, attempt = row["status"], row["worker"], row["attempts"]
    last = f"attempt {attempt}" + (f" by worker {worker!r}" if worker else "")
    if status == "complete":
        what = f"the item is already complete (its last lease: {last})"
    elif status == "generating":
        what = f"the item is leased under another token ({last})"
    elif status == "pending":
        what = "the item is pending: its lease expired or it was failed, requeued or reset"
    else:
        what = f"the item is {status}"
    return f"stale lease_token: {what}; this token is not its current lease, and the report changes nothing"


def lost_lease(row: RowLike) -> StaleLease:
    return StaleLease(lost_lease_message(row), field="lease_token")


def stale_token(row: RowLike) -> StaleLease:
    return StaleLease(stale_token_message(row), field="lease_token")


RowT = TypeVar("RowT", bound=RowLike)


def check_lease(row: RowT | None, outcome_id: str, token: str) -> RowT:
    """The locked row of a report: it must exist and carry this lease token."""
    if row is None:
        raise unknown_outcome(outcome_id)
    if row["lease_token"] != token:
        raise stale_token(row)
    return row


def lease_holds(status: str, current_token: str | None, token: str) -> bool:
    """A lease still holds its item: the item is generating under this very token. Every write that acts
    for a lease holder (heartbeat, complete, fail) asks this (PostgreSQL's SQL texts restate it; a property
    test in tests/rules/test_rules.py holds them together)."""
    return status == "generating" and current_token == token


def check_complete(row: RowLike | None, outcome_id: str, token: str, report: Any) -> bool:
    """The order of a completion's checks, on the item's locked row: unknown item, stale token, then an item
    already complete (the identical report repeated is answered again, False; a different one is refused),
    then a lease that no longer holds. True: the report completes the item now."""
    row = check_lease(row, outcome_id, token)
    if row["status"] in REPORTED:
        if same_report(row, report):
            return False
        raise complete_differs()
    if not lease_holds(row["status"], row["lease_token"], token):
        raise lost_lease(row)
    return True


# an item whose completion was reported (awaiting review, or complete): the identical report is answered again
REPORTED = ("complete", "in_review")


def is_repeat_failure(attempt: RowLike | None, error: str) -> bool:
    """A failure report whose lease no longer holds repeats the one that ended it: the attempt under this
    lease failed with the same error (it is answered again; anything else is a lost lease)."""
    return attempt is not None and attempt["status"] == "failed" and attempt["error"] == error


def same_report(row: RowLike, report: Any) -> bool:
    """Whether a stored complete outcome carries exactly this report (idempotent repeat)."""
    return bool(
        row["content_sha256"] == report.content_sha256
        and (report.outcome_path is None or row["outcome_path"] == report.outcome_path)
        and _loads(row["metrics"]) == report.metrics
        and _loads(row["metadata"]) == report.metadata
    )


def _loads(text: str | None) -> Any:
    return {} if text is None else json.loads(text)


# ---- run control ----------------------------------------------------------------------------------


def control_target(current: str, action: RunAction) -> str:
    """The state a run moves to under `action`; cancellation is final."""
    if action == "pause":
        if current == "cancelled":
            raise Conflict("the run is cancelled; it cannot be paused", field="action")
        return "paused"
    if action == "resume":
        if current == "cancelled":
            raise Conflict("the run is cancelled; cancellation is final", field="action")
        return "active"
    return "cancelled"


def plan_allowed(state: str, adds_items: bool) -> bool:
    """A cancelled run takes no new items (a plan that only names existing packages is still answered)."""
    return not (state == "cancelled" and adds_items)


def check_plan(state: str, adds_items: bool, name: str) -> None:
    if not plan_allowed(state, adds_items):
        raise run_cancelled_for_plan(name)


def retry_allowed(state: str) -> bool:
    """Failed items of a cancelled run stay failed: redoing them means planning a new run."""
    return state != "cancelled"


def check_retry(state: str | None, run_id: str) -> None:
    """The guards of retry on its run's state (None: no such run)."""
    if state is None:
        raise unknown_run(run_id)
    if not retry_allowed(state):
        raise run_cancelled_for_retry()


def claim_blocked(state: str) -> ClaimReason | None:
    """Why a run hands out no leases at all (its state, paused or cancelled), or None when it is active."""
    if state == "cancelled":
        return "cancelled"
    if state == "paused":
        return "paused"
    return None


def cancels_pending(target: str) -> bool:
    """A run entering `target` cancels its pending items (its leases stay with their workers)."""
    return target == "cancelled"


def stops_work(run_state: str) -> bool:
    """A heartbeat lists a lease as cancelled when its run is: the worker should stop and report."""
    return run_state == "cancelled"


# ---- time and tokens ------------------------------------------------------------------------------


def new_token() -> str:
    """A fresh lease token: every claim's, and the one an override fences the old lease off with."""
    return secrets.token_urlsafe(18)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter: half the capped delay fixed, half random."""
    if base <= 0:
        return 0.0
    capped = min(cap, base * 2 ** max(0, attempt - 1))
    r = (rng or random).random()
    return float(capped / 2 + r * capped / 2)


def lease_expires(now: float, lease_seconds: float) -> float:
    """When a lease taken or extended now runs out."""
    return now + float(lease_seconds)


def duration(started_at: float | None, now: float) -> float | None:
    """Seconds an attempt ran (never negative); None when it never started."""
    return None if started_at is None else max(0.0, now - started_at)


# ---- a failure report -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailureOutcome:
    """What a failure report does: back to pending after `delay` seconds, or final (failed/cancelled)."""

    target: Status
    delay: float = 0.0

    @property
    def retries(self) -> bool:
        return self.target == "pending"


def failure_outcome(
    *,
    retryable: bool,
    attempts: int,
    max_attempts: int,
    run_state: str,
    backoff: Callable[[int], float],
) -> FailureOutcome:
    """A retryable failure with attempts left in a run not cancelled retries after backoff(attempts);
    otherwise the item is final: cancelled when its run is and the failure was retryable, else failed."""
    if retryable and attempts < max_attempts and run_state != "cancelled":
        return FailureOutcome("pending", max(0.0, float(backoff(attempts))))
    return FailureOutcome("cancelled" if run_state == "cancelled" and retryable else "failed")


# ---- lease expiry ---------------------------------------------------------------------------------


def lease_expired(status: str, lease_expires_at: float | None, now: float) -> bool:
    """A lease has run out: the item is still generating and its expiry is at or before now."""
    return status == "generating" and lease_expires_at is not None and lease_expires_at <= now


def lease_expiry(*, run_state: str, attempts: int, max_attempts: int) -> Status | None:
    """Where an expired lease's item goes: back to pending while attempts are left, failed once they are
    spent; None in a cancelled run (its leases are left for the worker to see `cancelled` and report)."""
    if run_state == "cancelled":
        return None
    return "failed" if attempts >= max_attempts else "pending"


def lease_expired_error(target: Status, attempts: int) -> str:
    """The error_message an expired lease leaves on its item."""
    return LEASE_EXPIRED if target == "pending" else f"lease expired after {attempts} attempts"


def queued(status: Status) -> bool:
    """Whether an item with this status is still in the work queue (claimable or leased); complete,
    failed and cancelled items are done with it until a retry or an override puts them back."""
    return status in ("pending", "generating")


def final_status(status: Status) -> Status | None:
    """What an item's queue record keeps of its status: the final one once it is out of the queue
    (complete, failed, cancelled), None while it is queued (pending or leased)."""
    return None if queued(status) else status


# ---- moves of many items at once ------------------------------------------------------------------

# (from, to) of the set-based transitions: a claim leases pending items, a cancel ends the pending ones,
# a retry puts failed ones back
CLAIMED_MOVE: tuple[Status, Status] = ("pending", "generating")
CANCEL_MOVE: tuple[Status, Status] = ("pending", "cancelled")
RETRY_MOVE: tuple[Status, Status] = ("failed", "pending")


@dataclass(frozen=True, slots=True)
class Move:
    """A set-based transition: the items of a run in status `old` (all of them, or those chosen) go to
    `new` with these column values, and each package's counters move by the number of its items."""

    old: Status
    new: Status
    values: Mapping[str, Any]


def cancel(now: float) -> Move:
    """A run entering cancelled (`cancels_pending`) ends its pending items now; its leases stay with their
    workers (they see `cancelled` on their next heartbeat)."""
    return Move(*CANCEL_MOVE, {"status": CANCEL_MOVE[1], "updated_at": now, "completed_at": now})


def has_earlier_attempts(attempt: int, *, retried: bool) -> bool:
    """Whether a claimed item was tried before, so its claim reads the earlier attempts for the briefing: its
    attempt number is above 1, or a retry reset the count (`retried`: the failure's error, which a retry
    keeps until the next attempt ends, is still on the item)."""
    return attempt > 1 or retried


def retry(now: float) -> Move:
    """A retry (`check_retry` allowed it) puts failed items back: pending from now with their attempts
    spent reset and their end cleared; the error message stays until the next attempt ends. The event is
    `requeued` with the ids moved."""
    values = {
        "status": RETRY_MOVE[1],
        "attempts": 0,
        "available_at": now,
        "completed_at": None,
        "duration_seconds": None,
        "updated_at": now,
    }
    return Move(*RETRY_MOVE, values)


# ---- transitions of one item: what changes, in one value ------------------------------------------


@dataclass(frozen=True, slots=True)
class Contribution:
    """A complete item's share of its package's summary sums and duration histogram: added (sign +1) when it
    becomes complete, taken away (-1) when it leaves complete."""

    metrics: Mapping[str, Any]
    duration: float | None
    sign: int


@dataclass(frozen=True, slots=True)
class MinuteDelta:
    """What a transition adds to its run's per-minute throughput."""

    completed: int = 0
    failed: int = 0
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """The attempt (the lease under `lease_token`) a transition ends, with its final status and error."""

    lease_token: str
    status: Status
    error: str | None


@dataclass(frozen=True, slots=True)
class AttemptReview:
    """review_item's decision on the attempt under `lease_token` (the one that ended in_review): its status
    becomes `status` (complete, or failed with the note as its error), with the decision, note and reviewer."""

    lease_token: str
    decision: ReviewDecision
    note: str | None
    reviewed_by: str | None
    status: Status
    error: str | None


@dataclass(frozen=True, slots=True)
class AttemptStart:
    """The attempt a claim starts: its number, under the new lease token, by the worker."""

    attempt: int
    lease_token: str
    worker: str


@dataclass(frozen=True, slots=True)
class Transition:
    """Everything one transition of one item does, decided here; a store applies it in its own dialect
    (SQLite: `counters.apply`, PostgreSQL: `_Tx.apply`) without deciding anything.

    `values` are the outcome row's new column values (JSON columns as text); the package counters move one
    item from `old` to `new`; `contributions` add or take away summary sums; `metric_rows`, when set, are
    the metrics whose numeric values become the item's metric rows (after the old ones are removed when
    `clear_metric_rows`); `start`, the attempt a claim begins."""

    outcome_id: str
    run_id: str
    package_id: int
    old: Status
    new: Status
    values: Mapping[str, Any]
    event: Ev
    contributions: tuple[Contribution, ...] = ()
    minute: MinuteDelta | None = None
    attempt: AttemptEnd | None = None
    metric_rows: Mapping[str, Any] | None = None
    clear_metric_rows: bool = False
    start: AttemptStart | None = None
    review: AttemptReview | None = None
    usage: Usage | None = None  # what the ended attempt reported: kept on it, rolled up (rules.spend)

    @property
    def queue_token(self) -> str | None:
        """The lease token the item's queue record keeps: its lease's while generating, else none."""
        return self.values.get("lease_token") if self.new == "generating" else None

    @property
    def claimable_from(self) -> float | None:
        """When the item can be claimed again: pending items from their `available_at`, others never."""
        return self.values["available_at"] if self.new == "pending" else None

    def row(self, row: RowLike) -> dict[str, Any]:
        """The item's row as this transition leaves it (no re-read)."""
        done = dict(row)
        done.update(self.values)
        return done


# compact, keys sorted; one encoder for every call (json.dumps with these options builds one per call)
_JSON_TEXT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def json_text(value: Any) -> str:
    """A JSON column's text (metrics, metadata, details): compact, keys sorted."""
    if type(value) is dict and not value:  # the usual metrics / metadata of a report: skip the encoder
        return "{}"
    return _JSON_TEXT.encode(value)


def _where(row: RowLike) -> tuple[str, str, int]:
    return row["id"], row["run_id"], int(row["package_id"])


def claim(
    row: RowLike,
    *,
    run_id: str,
    package_id: int,
    package: str,
    worker: str,
    token: str,
    lease_seconds: float,
    now: float,
) -> Transition:
    """A claim leases the pending item `row` (its id, item and attempts) to `worker`: generating under
    `token` until the run's lease runs out, one attempt more, started now; the item moves from pending to
    generating (rules.CLAIMED_MOVE) and the event says who took it. PostgreSQL's claim statement writes the
    same values set-based (a property test in tests/rules/test_rules.py holds it to this)."""
    attempt = int(row["attempts"]) + 1
    values = {
        "status": CLAIMED_MOVE[1],
        "attempts": attempt,
        "worker": worker,
        "lease_token": token,
        "lease_expires_at": lease_expires(now, lease_seconds),
        "started_at": now,
        "updated_at": now,
    }
    return Transition(
        outcome_id=row["id"],
        run_id=run_id,
        package_id=package_id,
        old=CLAIMED_MOVE[0],
        new=CLAIMED_MOVE[1],
        values=values,
        event=claimed(package=package, item=row["item"], worker=worker, attempt=attempt),
        start=AttemptStart(attempt, token, worker),
    )


@dataclass(frozen=True, slots=True)
class Extension:
    """A heartbeat on a lease that holds: the item's new column values (its lease runs on from now), and
    whether the worker is to stop (its run is cancelled: the lease is also listed `cancelled`)."""

    values: Mapping[str, Any]
    stops: bool
    note: str | None = None  # the lease's checkpoint note: its attempt keeps the last one given

    @property
    def lease_expires_at(self) -> float:
        return float(self.values["lease_expires_at"])


def heartbeat(
    row: RowLike,
    *,
    token: str,
    run_state: str,
    lease_seconds: float,
    now: float,
    keys_kept: bool = True,
    note: str | None = None,
) -> Extension | None:
    """A heartbeat for the lease `token` on the item `row` (status, lease_token): extended by the run's
    lease_seconds when the lease holds, else None (the lease is lost). No event, no counter moves; a
    `note` replaces its attempt's last note.

    `keys_kept`: false when the lease ran out and another lease took one of its lock keys since (a claim may
    take the key of a lease that ran out before the sweep sends its item back). Such a lease is lost too:
    extending it would give two live leases one key, and what the key guards may have changed meanwhile."""
    if not lease_holds(row["status"], row["lease_token"], token) or not keys_kept:
        return None
    return Extension(
        {"lease_expires_at": lease_expires(now, lease_seconds), "updated_at": now},
        stops_work(run_state),
        note,
    )


def complete(
    row: RowLike,
    *,
    lease_token: str,
    report: Any,
    now: float,
    encoded: tuple[str, str] | None = None,
    review: bool = False,
) -> Transition:
    """A report completes the leased item (after `check_complete` said so): the report's fields replace the
    row's (its outcome_path only when given), the attempt ends complete, the completion counts. `encoded`:
    the report's metrics and metadata as JSON text, when the caller has them already. With `review`
    (rules.review_required), the item goes in_review instead: the lease and the attempt end, the usage is
    kept, but nothing is counted as complete and no dependent moves until review_item approves."""
    outcome_id, run_id, package_id = _where(row)
    took = duration(row["started_at"], now)
    new: Status = "in_review" if review else "complete"
    event = (
        in_review_event(package=row["package_name"], item=row["item"], attempt=int(row["attempts"]))
        if review
        else completed(package=row["package_name"], item=row["item"], duration=took)
    )
    values = {
        "status": new,
        "completed_at": now,
        "duration_seconds": took,
        "updated_at": now,
        "lease_expires_at": None,
        "error_message": None,
        "metrics": encoded[0] if encoded is not None else json_text(report.metrics),
        "metadata": encoded[1] if encoded is not None else json_text(report.metadata),
        "outcome_path": report.outcome_path if report.outcome_path is not None else row["outcome_path"],
        "content_sha256": report.content_sha256,
        "content_bytes": report.content_bytes,
        "mime_type": report.mime_type,
    }
    # under review nothing counts yet: no summary sums, no completion this minute, no metric rows
    return Transition(
        outcome_id=outcome_id,
        run_id=run_id,
        package_id=package_id,
        old="generating",
        new=new,
        values=values,
        event=event,
        contributions=() if review else (Contribution(report.metrics, took, +1),),
        minute=None if review else MinuteDelta(completed=1, duration=took),
        attempt=AttemptEnd(lease_token, new, None),
        metric_rows=None if review else report.metrics,
        usage=getattr(report, "usage", None),
    )


def _failure(
    row: RowLike,
    *,
    target: Status,
    available_at: float,
    error: str,
    attempt: AttemptEnd,
    event: Ev,
    now: float,
) -> Transition:
    """A leased item leaving its lease by failing (a report or an expiry): back to pending from
    `available_at`, or final (its attempt's end and duration recorded; a failure counts per minute)."""
    outcome_id, run_id, package_id = _where(row)
    values: dict[str, Any]
    if target == "pending":
        values = {"status": target, "available_at": available_at}
    else:
        values = {"status": target, "completed_at": now, "duration_seconds": duration(row["started_at"], now)}
    values.update(lease_expires_at=None, error_message=error, updated_at=now)
    return Transition(
        outcome_id=outcome_id,
        run_id=run_id,
        package_id=package_id,
        old="generating",
        new=target,
        values=values,
        event=event,
        minute=MinuteDelta(failed=1) if target == "failed" else None,
        attempt=attempt,
    )


def fail(
    row: RowLike,
    *,
    lease_token: str,
    error: str,
    retryable: bool,
    backoff: Callable[[int], float],
    run_state: str,
    max_attempts: int,
    now: float,
    usage: Usage | None = None,
) -> Transition:
    """A failure report on the leased item (its lease holds): where `failure_outcome` sends it; the
    attempt keeps its `usage`."""
    attempts = int(row["attempts"])
    decided = failure_outcome(
        retryable=retryable,
        attempts=attempts,
        max_attempts=max_attempts,
        run_state=run_state,
        backoff=backoff,
    )
    t = _failure(
        row,
        target=decided.target,
        available_at=now + decided.delay,
        error=error,
        attempt=AttemptEnd(lease_token, "failed", error),
        event=failure_reported(
            package=row["package_name"], item=row["item"], attempt=attempts, error=error, outcome=decided
        ),
        now=now,
    )
    return t if usage is None else replace(t, usage=usage)


def expire(row: RowLike, *, run_state: str, max_attempts: int, now: float) -> Transition | None:
    """An expired lease (`lease_expired` said so) on its item: where `lease_expiry` sends it, or None (a
    cancelled run's leases stay)."""
    target = lease_expiry(run_state=run_state, attempts=int(row["attempts"]), max_attempts=max_attempts)
    return None if target is None else expire_to(row, target, now)


def expire_to(row: RowLike, target: Status, now: float) -> Transition:
    """The expiry of the lease on `row` once its target is known (PostgreSQL's sweep decides it in SQL)."""
    attempts = int(row["attempts"])
    return _failure(
        row,
        target=target,
        available_at=now,
        error=lease_expired_error(target, attempts),
        attempt=AttemptEnd(row["lease_token"], "failed", LEASE_EXPIRED),
        event=lease_expired_event(
            package=row["package_name"], item=row["item"], attempt=attempts, target=target
        ),
        now=now,
    )


def override(
    row: RowLike,
    *,
    new: Status,
    error_message: str | None,
    report: Any,
    now: float,
    created_by: str | None = None,
    token: str | None = None,
) -> Transition:
    """update_outcome_status on the item's locked row (with its run's lease_seconds). The report's non-empty
    metrics/metadata replace the row's, its content fields where given; generating starts a fresh lease now;
    a final status entered now ends the attempt now (re-setting the same final status keeps its times);
    pending clears the end. A complete item carries no error. Any override fences off whoever held the lease
    with a fresh token. Counters: the old contribution goes when the item was complete, the new one comes
    when it is; a minute counts only a status entered now."""
    outcome_id, run_id, package_id = _where(row)
    old: Status = row["status"]
    old_metrics = _loads(row["metrics"])
    metrics = report.metrics if report is not None and report.metrics else old_metrics
    metadata = report.metadata if report is not None and report.metadata else _loads(row["metadata"])
    started, completed_at, took = row["started_at"], row["completed_at"], row["duration_seconds"]
    expires = None
    if new == "generating":
        started, completed_at, took, expires = now, None, None, lease_expires(now, row["lease_seconds"])
    elif new in ("complete", "failed", "cancelled"):
        if old != new:
            completed_at, took = now, duration(started, now)
    else:
        completed_at = took = None

    def given(name: str) -> Any:
        value = getattr(report, name) if report is not None else None
        return row[name] if value is None else value

    values = {
        "status": new,
        "error_message": error_message if new != "complete" else None,
        "metrics": json_text(metrics),
        "metadata": json_text(metadata),
        "outcome_path": given("outcome_path"),
        "content_sha256": given("content_sha256"),
        "content_bytes": given("content_bytes"),
        "mime_type": given("mime_type"),
        "started_at": started,
        "completed_at": completed_at,
        "duration_seconds": took,
        "lease_token": token if token is not None else new_token(),
        "lease_expires_at": expires,
        "available_at": now,
        "created_by": row["created_by"] if row["created_by"] is not None else created_by,
        "updated_at": now,
    }
    contributions = []
    if old == "complete":
        contributions.append(Contribution(old_metrics, row["duration_seconds"], -1))
    minute = None
    if new == "complete":
        contributions.append(Contribution(metrics, took, +1))
        if old != "complete":
            minute = MinuteDelta(completed=1, duration=took)
    elif new == "failed" and old != "failed":
        minute = MinuteDelta(failed=1)
    return Transition(
        outcome_id=outcome_id,
        run_id=run_id,
        package_id=package_id,
        old=old,
        new=new,
        values=values,
        event=status_updated(package=row["package_name"], item=row["item"], old=old, new=new),
        contributions=tuple(contributions),
        minute=minute,
        metric_rows=metrics if new == "complete" else None,
        clear_metric_rows=old == "complete" or new == "complete",
    )


def record_is_plain(status: Status, *, report_given: bool, error_message: str | None) -> bool:
    """record_outcome of a new item: pending with no report and no error is the row as inserted; anything
    else is then set by an override (`override`)."""
    return status == "pending" and not report_given and error_message is None


# ---- claim policy: dependencies, priorities, lock keys, caps ---------------------------------------

MAX_LOCKS_PER_ITEM = 32
MAX_LOCK_KEY_LENGTH = 200
WAITS_FOR_SHOWN = 100  # unmet prerequisites get_outcome lists
CANCELLED_IDS_IN_EVENT = 100

# a prerequisite as resolved: (package, item), item None for every item of the package ("package/*")
Ref = tuple[str, str | None]


def ref_text(ref: Ref) -> str:
    """A resolved prerequisite as shown: "package/item" or "package/*"."""
    package, item = ref
    return f"{package}/{'*' if item is None else item}"


def ref_candidates(ref: Any, package: str, field: str) -> tuple[Ref, ...]:
    """What the `after` reference `ref` of an item of `package` may name, in the order it resolves:
    "p/*" is every item of package p; otherwise each split at a "/" (left to right) as package/item, then
    the whole text as an item of the same package. Names may hold "/" themselves: the first candidate the
    plan (then the run) has is the one meant. A reference that can name nothing is an InputError on `field`."""
    if not isinstance(ref, str) or not ref.strip():
        raise InputError("must be a non-empty reference: 'package/item', 'item' or 'package/*'", field)
    if "\x00" in ref:
        raise InputError("may not contain NUL characters", field)
    if ref.endswith("/*"):
        if len(ref) == 2:
            raise InputError("'/*' names no package: write 'package/*'", field)
        return ((ref[:-2], None),)
    if ref == "*":
        raise InputError("'*' names no package: write 'package/*'", field)
    out: list[Ref] = []
    at = ref.find("/")
    while at != -1:
        if 0 < at < len(ref) - 1:
            out.append((ref[:at], ref[at + 1 :]))
        at = ref.find("/", at + 1)
    out.append((package, ref))
    return tuple(out)


def package_candidates(ref: Any, field: str) -> tuple[Ref, ...]:
    """A package's `after` entry: a package name (every item of that package)."""
    if not isinstance(ref, str) or not ref.strip():
        raise InputError("must be a non-empty package name", field)
    if "\x00" in ref:
        raise InputError("may not contain NUL characters", field)
    return ((ref, None),)


def self_reference(field: str, ref: Ref) -> InputError:
    what = "a package cannot wait for itself" if ref[1] is None else "an item cannot wait for itself"
    return InputError(f"{what} ({ref_text(ref)!r})", field)


def unknown_reference(ref: str, field: str) -> InputError:
    """A prerequisite neither the plan nor the run has (one line, naming the field)."""
    return InputError(f"unknown reference {ref!r}: no such item or package in this plan or run", field)


def too_many_edges(limit: int) -> InputError:
    return InputError(
        f"more than {limit} dependency edges in one plan (MATRIX_MAX_EDGES_PER_PLAN)", "packages"
    )


def check_locks(keys: Sequence[Any], field: str) -> tuple[str, ...]:
    """An item's lock keys: 1..MAX_LOCK_KEY_LENGTH printable characters each, at most MAX_LOCKS_PER_ITEM
    (a key given twice counts once)."""
    out: dict[str, None] = {}
    for k, key in enumerate(keys):
        if not isinstance(key, str) or not key:
            raise InputError("must be a non-empty resource key such as 'file:src/db.py'", f"{field}[{k}]")
        if len(key) > MAX_LOCK_KEY_LENGTH:
            raise InputError(f"longer than {MAX_LOCK_KEY_LENGTH} characters", f"{field}[{k}]")
        if not key.isprintable():
            raise InputError("may hold printable characters only", f"{field}[{k}]")
        out[key] = None
    if len(out) > MAX_LOCKS_PER_ITEM:
        raise InputError(f"more than {MAX_LOCKS_PER_ITEM} lock keys on one item", field)
    return tuple(out)


Node = tuple[str, str | None]  # an item (package, item) or a package's hub (package, None)


def find_cycle(nodes: Iterable[Node], waits_for: Callable[[Node], Iterable[Node]]) -> list[Node] | None:
    """A cycle of the graph (`waits_for(node)`: what it waits for), as the path from a node back to itself,
    or None. A package's hub (package, None) waits for each of the package's items: "a/x" waiting for
    "b/*" is the edge a/x → b/*, and b/* → b/y for each item b/y. Iterative: deep chains are fine."""
    state: dict[Node, int] = {}  # 1 on the current path, 2 finished
    for root in nodes:
        if root in state:
            continue
        state[root] = 1
        path = [root]
        stack = [iter(waits_for(root))]
        while stack:
            for nxt in stack[-1]:
                seen = state.get(nxt)
                if seen is None:
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append(iter(waits_for(nxt)))
                    break
                if seen == 1:
                    return [*path[path.index(nxt) :], nxt]
            else:
                stack.pop()
                state[path.pop()] = 2
    return None


def dependency_cycle(cycle: Sequence[Node]) -> InputError:
    """The one-line error naming a cycle: "dependency cycle: a/x → b/* → b/y → a/x"."""
    return InputError("dependency cycle: " + " → ".join(ref_text(n) for n in cycle), "packages")


def check_settable(status: str) -> None:
    """An override or a record sets any status but blocked: only unmet dependencies block an item (one set
    by hand would wait for nothing)."""
    if status == "blocked":
        raise InputError("an item is blocked only by its dependencies; it cannot be set by hand", "status")
    if status == "in_review":
        raise InputError(
            "an item is in_review only by a completion under review; it cannot be set by hand", "status"
        )


def initial_status(waiting: int) -> Status:
    """A new item with `waiting` unmet prerequisites is blocked until they are met, else pending."""
    return "blocked" if waiting > 0 else "pending"


def lock_held(
    *, status: str, lease_token: str | None, lock_token: str, lease_expires_at: float | None, now: float
) -> bool:
    """A lock key's holder row still holds it: its outcome is generating under the lease the lock was taken
    with, and that lease has not run out. Anything else is a dead holder a claim may replace."""
    return (
        status == "generating"
        and lease_token == lock_token
        and lease_expires_at is not None
        and lease_expires_at > now
    )


def under_cap(generating: int, cap: int | None) -> bool:
    """One more item may start under a max_concurrent cap (None: no cap)."""
    return cap is None or generating < cap


def claim_eligible(
    *,
    status: str,
    available_at: float,
    now: float,
    locks_free: bool,
    package_generating: int,
    package_cap: int | None,
    run_generating: int,
    run_cap: int | None,
) -> bool:
    """An item a claim may lease now: pending (not blocked: its dependencies are complete), available, none
    of its lock keys held by a live lease anywhere in the store, and under its package's and its run's
    max_concurrent."""
    return (
        status == "pending"
        and available_at <= now
        and locks_free
        and under_cap(package_generating, package_cap)
        and under_cap(run_generating, run_cap)
    )


def claim_order(
    *,
    package_priority: int,
    item_priority: int,
    last_claim: int,
    available_at: float,
    position: int,
    package_position: int = 0,
) -> tuple[int, int, int, int, float, int]:
    """The sort key of eligible items (smallest first): package priority, then item priority, highest
    first; then today's order: the packages in turn (least recently served first, `last_claim`; never
    served: plan order of the packages), then within the package available_at, then plan order."""
    return (-package_priority, -item_priority, last_claim, package_position, available_at, position)


def enters_complete(old: str, new: str) -> bool:
    """A transition that readies dependents: the item enters complete (a report, an override)."""
    return new == "complete" and old != "complete"


def leaves_complete(old: str, new: str) -> bool:
    """An override taking an item out of complete: its dependents were readied and stay so (a readied item
    is not re-blocked; its prerequisite was met when it was made ready)."""
    return old == "complete" and new != "complete"


def package_done(complete: int, total: int) -> bool:
    """Every item of a package is complete: its "package/*" dependents' prerequisite is met."""
    return complete >= total


def readied(status: str, waiting: int) -> bool:
    """A dependent whose last prerequisite was just met moves from blocked to pending (event `ready`)."""
    return status == "blocked" and waiting <= 0


READY_MOVE: tuple[Status, Status] = ("blocked", "pending")
CASCADE_MOVE: tuple[Status, Status] = ("blocked", "cancelled")
REBLOCK_MOVE: tuple[Status, Status] = ("cancelled", "blocked")


def ready(now: float) -> Move:
    """Dependents whose prerequisites are all met: pending, claimable from now."""
    return Move(*READY_MOVE, {"status": READY_MOVE[1], "available_at": now, "updated_at": now})


def enters_failed(old: str, new: str) -> bool:
    """A transition that ends an item for good as failed (a report or an expiry with attempts spent, an
    override): its dependents can never be readied by it."""
    return new == "failed" and old != "failed"


def cascades(on_dependency_failure: str) -> bool:
    """Whether an item failed for good cancels its blocked transitive dependents ('cancel'), or leaves them
    blocked until it is retried ('block')."""
    return on_dependency_failure == "cancel"


def dependency_failed(failed: Ref) -> str:
    """The error_message of an item cancelled because a prerequisite failed for good."""
    return f"dependency {ref_text(failed)!r} failed"


def cascade(*, failed: Ref, failed_n: int, now: float) -> Move:
    """The failure cascade: blocked transitive dependents of the failed item `failed` (its row number
    `failed_n`) are cancelled now, with the reason and `cancelled_by` (a retry of it re-blocks them)."""
    values = {
        "status": CASCADE_MOVE[1],
        "error_message": dependency_failed(failed),
        "cancelled_by": failed_n,
        "completed_at": now,
        "updated_at": now,
    }
    return Move(*CASCADE_MOVE, values)


def reblock(now: float) -> Move:
    """A retry of a failed item: the dependents its failure cancelled (cancelled_by its n) wait again,
    blocked, with their prerequisites' count as it was (still above zero)."""
    values = {
        "status": REBLOCK_MOVE[1],
        "error_message": None,
        "cancelled_by": None,
        "completed_at": None,
        "updated_at": now,
    }
    return Move(*REBLOCK_MOVE, values)


def cancel_blocked(now: float) -> Move:
    """A run entering cancelled ends its blocked items too (they could never start)."""
    return Move("blocked", "cancelled", {"status": "cancelled", "updated_at": now, "completed_at": now})


# ---- why a claim came back short ------------------------------------------------------------------

# which time tells a short claim when to ask again: the earliest `available_at` of a pending item, the
# earliest `lease_expires_at` of the run's leased items, of the live leases holding the lock keys its ready
# items need (`lock_holders`), or of the leased items of the capped package or run (`cap_holders`)
Waiting = Literal["available_at", "lease_expires_at", "lock_holders", "cap_holders"] | None


def why_nothing(
    *,
    pending: int,
    generating: int,
    total: int,
    blocked: int = 0,
    capped: bool = False,
    locked: bool = False,
    in_review: int = 0,
) -> tuple[ClaimReason, Waiting]:
    """The reason a claim found fewer items than asked, and which time tells when to ask again.

    `capped`: items ready now were held back by a max_concurrent cap (run or package); `locked`: items ready
    now were held back by lock keys another live lease holds; `blocked`: items waiting for dependencies;
    `in_review`: completed items waiting for a review (a rejection sends one back). A cap speaks first
    (nothing ready can start until a lease ends), then locks, then backoff; with nothing pending, blocked
    items say `blocked` (ask again when a lease ends, or never when none is running and none is in review).
    Items in review are not done: with nothing else to wait on, `in_review` (no time: a review comes when
    it comes)."""
    if capped:
        return "capped", "cap_holders"
    if locked:
        return "locked", "lock_holders"
    if pending:
        return "backing_off", "available_at"
    if blocked and (generating or not in_review):
        return "blocked", ("lease_expires_at" if generating else None)
    if generating:
        return "all_leased", "lease_expires_at"
    if in_review:
        return "in_review", None
    return ("done" if total else "empty"), None


def worth_waiting(reason: ClaimReason | None, retry_after: float | None) -> bool:
    """Whether a claim that came back short waits (claim_items' wait_seconds) for a change that can hand it an
    item: a lease that ends (all_leased, locked, capped, blocked while something runs), a backoff that runs
    out, or a review that lands. Blocked with nothing running (no time) waits on a retry or an override only,
    and done, empty, paused and cancelled on nothing a worker can wait for."""
    if reason == "blocked":
        return retry_after is not None
    return reason in ("all_leased", "backing_off", "in_review", "locked", "capped")


# ---- review gates, carried-over notes, usage and budgets -------------------------------------------

NOTE_IN_EVENT = 500  # characters of a review note an event carries
REJECTED_IN_REVIEW = "rejected in review"


def review_required(run_review: str, package_review: str | None) -> bool:
    """Whether a completion waits in_review: the package's setting, or the run's where the package has none."""
    return (package_review or run_review) == "required"


def not_in_review(row: RowLike) -> Conflict:
    return Conflict(
        f"outcome '{row['id']}' is {row['status']}, not in_review; only an item awaiting review can be reviewed",
        field="outcome_id",
    )


def check_review(row: RowT | None, outcome_id: str) -> RowT:
    """The locked row of a review: it exists and is in_review."""
    if row is None:
        raise unknown_outcome(outcome_id)
    if row["status"] != "in_review":
        raise not_in_review(row)
    return row


def review(
    row: RowLike,
    *,
    decision: ReviewDecision,
    note: str | None,
    reviewed_by: str | None,
    max_attempts: int,
    backoff: Callable[[int], float],
    now: float,
    run_state: str = "active",
) -> Transition:
    """review_item on an item in_review (`check_review` said so), its attempt the one under the row's
    lease_token. Approve: complete now — its metrics count, a completion counts this minute, dependents
    move (the dialect readies them). Reject: a new attempt, pending after the backoff (a failure's), or
    failed with the note as its error when the attempts are spent (a failure counts; the cascade applies);
    in a cancelled run, cancelled (its pending items were)."""
    outcome_id, run_id, package_id = _where(row)
    token, attempts = row["lease_token"], int(row["attempts"])
    package, item = row["package_name"], row["item"]
    if decision == "approve":
        metrics = _loads(row["metrics"])
        took = row["duration_seconds"]
        return Transition(
            outcome_id=outcome_id,
            run_id=run_id,
            package_id=package_id,
            old="in_review",
            new="complete",
            values={"status": "complete", "updated_at": now},
            event=approved_event(package=package, item=item, attempt=attempts, note=note),
            contributions=(Contribution(metrics, took, +1),),
            minute=MinuteDelta(completed=1, duration=took),
            metric_rows=metrics,
            review=AttemptReview(token, decision, note, reviewed_by, "complete", None),
        )
    error = note or REJECTED_IN_REVIEW
    target: Status = "pending" if attempts < max_attempts else "failed"
    if target == "pending" and not retry_allowed(run_state):
        target = "cancelled"
    values: dict[str, Any] = {"status": target, "error_message": error, "updated_at": now}
    if target == "pending":
        values.update(available_at=now + backoff(attempts), completed_at=None, duration_seconds=None)
        values.update(metrics="{}", metadata="{}")  # the rejected report's: the next attempt reports anew
    else:
        values.update(completed_at=now)
    return Transition(
        outcome_id=outcome_id,
        run_id=run_id,
        package_id=package_id,
        old="in_review",
        new=target,
        values=values,
        event=rejected_event(package=package, item=item, attempt=attempts, note=note, now=target),
        minute=MinuteDelta(failed=1) if target == "failed" else None,
        review=AttemptReview(token, decision, note, reviewed_by, "failed", error),
    )


# update_policy's fields, as the run's columns
POLICY_FIELDS = ("max_cost_usd", "max_tokens", "max_concurrent", "review", "lease_seconds", "max_attempts")


def review_verdict(
    row: RowLike, verdict: Any, *, reviewed_by: str | None, run_state: str, now: float
) -> Transition:
    """`review` for a review_item's verdict (store.params.ReviewVerdict: decision, note, backoff), the
    attempts allowed read from the row's run policy (its max_attempts)."""
    return review(
        row,
        decision=verdict.decision,
        note=verdict.note,
        reviewed_by=reviewed_by,
        max_attempts=int(row["max_attempts"]),
        backoff=verdict.backoff,
        run_state=run_state,
        now=now,
    )


def policy_changes(update: Any) -> dict[str, Any]:
    """The run columns an update_policy sets (fields given, then those cleared to NULL), in a fixed order."""
    changes = {name: getattr(update, name) for name in POLICY_FIELDS if getattr(update, name) is not None}
    changes.update({name: None for name in POLICY_FIELDS if name in update.clear})
    return changes


def usage_values(usage: Usage | None) -> tuple[int, int, int, int, float]:
    """A report's usage as the five summed columns (input, output, cache read, cache creation, cost)."""
    if usage is None:
        return (0, 0, 0, 0, 0.0)
    return (
        usage.input_tokens or 0,
        usage.output_tokens or 0,
        usage.cache_read_tokens or 0,
        usage.cache_creation_tokens or 0,
        usage.cost_usd or 0.0,
    )


def has_usage(usage: Usage | None) -> bool:
    """A report whose usage adds anything (a usage of zeros or only a model name moves no sum)."""
    return usage is not None and any(usage_values(usage))


def budgets_crossed(
    *,
    max_cost_usd: float | None,
    max_tokens: int | None,
    cost_before: float,
    cost_after: float,
    tokens_before: int,
    tokens_after: int,
) -> list[Ev]:
    """The budgets a report's usage takes the run past (spent > limit now, not before): one
    `budget_exceeded` event each. Only the crossing trips: a run resumed past its budget goes on until the
    budget is raised and crossed again."""
    out: list[Ev] = []
    if max_cost_usd is not None and cost_before <= max_cost_usd < cost_after:
        out.append(budget_exceeded(budget="max_cost_usd", limit=max_cost_usd, spent=cost_after))
    if max_tokens is not None and tokens_before <= max_tokens < tokens_after:
        out.append(budget_exceeded(budget="max_tokens", limit=max_tokens, spent=tokens_after))
    return out


def budget_pause(run_state: str) -> bool:
    """A budget crossed pauses the run when it is active (a paused or cancelled run stays as it is)."""
    return run_state == "active"


def budget_reason(budget: str, limit: float) -> str:
    """The run's paused_reason when a budget paused it."""
    return f"budget {budget} {limit:g} exceeded; raise it with update_policy, then resume"


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "…"


def previous_attempt(
    *, attempt: int, status: Status, error: str | None, note: str | None, review_note: str | None
) -> PreviousAttempt:
    """An earlier attempt as its next worker reads it, each thing said once and nothing empty: the status
    only when the attempt did not fail (a failed attempt says how by its error, or, rejected in review, by
    its review note); the error only when it is not the review note (a rejection keeps its note as its
    error, `review`)."""
    review_note = review_note or None
    return PreviousAttempt(
        attempt=attempt,
        status=None if status == "failed" else status,
        error=None if not error or error == review_note else error,
        note=note or None,
        review_note=review_note,
    )


def briefing(attempts: Sequence[PreviousAttempt], max_bytes: int) -> tuple[list[PreviousAttempt], int]:
    """What a claim shows of an item's earlier attempts (newest first): each text cut to at most a quarter of
    `max_bytes`, then the newest that fit in `max_bytes` as JSON; how many older ones were left out. The
    newest alone is cut further until it fits."""
    shown: list[PreviousAttempt] = []
    used = 2  # []
    cap = max(16, max_bytes // 4)

    def cut_to(a: PreviousAttempt, cap: int) -> tuple[PreviousAttempt, int]:
        """`a` with each text cut to `cap`, and its size as a JSON array member (its comma)."""
        cut = a.model_copy(
            update={
                "error": _cut(a.error, cap),
                "note": _cut(a.note, cap),
                "review_note": _cut(a.review_note, cap),
            }
        )
        return cut, len(cut.model_dump_json(exclude_none=True).encode()) + 1

    for i, a in enumerate(attempts):
        cut, size = cut_to(a, cap)
        while not shown and used + size > max_bytes and cap > 16:
            cap //= 2
            cut, size = cut_to(a, cap)
        if used + size > max_bytes:
            return shown, len(attempts) - i
        shown.append(cut)
        used += size
    return shown, 0


# ---- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ev:
    """One change-feed event: its kind and payload. Built only by the functions below."""

    kind: str
    data: Mapping[str, Any]

    def payload(self) -> str:
        """The stored JSON text, with the acting principal (see matrix_mcp.audit)."""
        return _JSON_TEXT.encode(stamped(self.kind, dict(self.data)))


def planned(*, created: bool, packages: Sequence[str], items: int) -> Ev:
    """`packages`: the names of the packages this plan added."""
    return Ev("run_planned" if created else "run_extended", {"packages": list(packages), "items": items})


def run_controlled(action: RunAction, cancelled_items: int | None) -> Ev:
    kind = "run_cancelled" if action == "cancel" else f"run_{action}d"
    return Ev(kind, {} if cancelled_items is None else {"cancelled_items": cancelled_items})


def claimed(*, package: str, item: str, worker: str, attempt: int) -> Ev:
    return Ev("claimed", {"package": package, "item": item, "worker": worker, "attempt": attempt})


def completed(*, package: str, item: str, duration: float | None) -> Ev:
    return Ev("completed", {"package": package, "item": item, "duration": duration})


def failure_reported(*, package: str, item: str, attempt: int, error: str, outcome: FailureOutcome) -> Ev:
    data: dict[str, Any] = {"package": package, "item": item, "attempt": attempt}
    if outcome.retries:
        data["delay"] = round(outcome.delay, 3)
    data["error"] = error[:ERROR_IN_EVENT]
    return Ev("retry_scheduled" if outcome.retries else outcome.target, data)


def lease_expired_event(*, package: str, item: str, attempt: int, target: Status) -> Ev:
    return Ev("lease_expired", {"package": package, "item": item, "attempt": attempt, "now": target})


def requeued(outcome_ids: Sequence[str]) -> Ev:
    return Ev(
        "requeued", {"count": len(outcome_ids), "outcome_ids": list(outcome_ids[:REQUEUED_IDS_IN_EVENT])}
    )


def ready_event(*, package: str, item: str) -> Ev:
    """A blocked item became pending: its last prerequisite completed (webhooks: `outcome.ready`)."""
    return Ev("ready", {"package": package, "item": item})


def dependents_cancelled(*, failed: Ref, outcome_ids: Sequence[str]) -> Ev:
    """One failure cascade: how many dependents of `failed` were cancelled, and the first ids."""
    return Ev(
        "dependents_cancelled",
        {
            "failed": ref_text(failed),
            "count": len(outcome_ids),
            "outcome_ids": list(outcome_ids[:CANCELLED_IDS_IN_EVENT]),
        },
    )


def in_review_event(*, package: str, item: str, attempt: int) -> Ev:
    """A completion waits for review_item (webhooks: `outcome.in_review`)."""
    return Ev("in_review", {"package": package, "item": item, "attempt": attempt})


def _review_data(package: str, item: str, attempt: int, note: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"package": package, "item": item, "attempt": attempt}
    if note:
        data["note"] = note[:NOTE_IN_EVENT]
    return data


def approved_event(*, package: str, item: str, attempt: int, note: str | None) -> Ev:
    """A reviewer approved the item: it is complete (webhooks: `outcome.approved`)."""
    return Ev("approved", _review_data(package, item, attempt, note))


def rejected_event(*, package: str, item: str, attempt: int, note: str | None, now: Status) -> Ev:
    """A reviewer rejected the item: pending for a new attempt, or failed (webhooks: `outcome.rejected`)."""
    return Ev("rejected", {**_review_data(package, item, attempt, note), "now": now})


def budget_exceeded(*, budget: str, limit: float, spent: float) -> Ev:
    """A report took the run past a budget (webhooks: `run.budget_exceeded`)."""
    return Ev("budget_exceeded", {"budget": budget, "limit": limit, "spent": spent})


def policy_updated(changes: Mapping[str, Any]) -> Ev:
    """update_policy changed the run's policy: the fields set, with their new values."""
    return Ev("policy_updated", dict(changes))


def recorded(*, package: str, item: str, status: Status) -> Ev:
    return Ev("recorded", {"package": package, "item": item, "status": status})


def status_updated(*, package: str, item: str, old: str, new: Status) -> Ev:
    return Ev("status_updated", {"package": package, "item": item, "from": old, "to": new})


def integration_calls(*, integration_type: str, action: str, status: str, count: int) -> Ev:
    """A round of calls to one integration sink (events out), counted by type, action and status."""
    data = {"integration_type": integration_type, "action": action, "status": status, "count": count}
    return Ev("integration", data)


def integration(*, integration_type: str, action: str, status: str) -> Ev:
    return Ev("integration", {"integration_type": integration_type, "action": action, "status": status})
