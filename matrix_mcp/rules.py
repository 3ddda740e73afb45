"""The board's rules, once: every decision about a row's next state, every event and every message.

Pure: no I/O, no SQL, no clock. Both stores lock the rows inside their transaction, ask these functions
what happens next, and write the answer in their own dialect. What a function decides is what both
backends do, so the two cannot drift (the PostgreSQL lease sweep is one SQL statement; a property test
holds it against `lease_expiry`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from matrix_mcp.audit import stamped
from matrix_mcp.errors import Conflict, NotFound, StaleLease
from matrix_mcp.models import ClaimReason, RunAction, Status

# A database row read by column name: sqlite3.Row or a psycopg dict row.
RowLike = Any
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


def check_lease(row: RowLike | None, outcome_id: str, token: str) -> RowLike:
    """The locked row of a report: it must exist and carry this lease token."""
    if row is None:
        raise unknown_outcome(outcome_id)
    if row["lease_token"] != token:
        raise stale_token(row)
    return row


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


# ---- time -----------------------------------------------------------------------------------------


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


# ---- manual override (update_outcome_status) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Override:
    """An item set to a status by hand: the values its row takes (the report's fields, where given, are
    written over the row's with COALESCE by the store)."""

    old: Status
    new: Status
    old_metrics: dict[str, Any]
    metrics: dict[str, Any]
    metadata: dict[str, Any]
    error_message: str | None
    started_at: float | None
    completed_at: float | None
    duration_seconds: float | None
    lease_expires_at: float | None


def override(row: RowLike, *, new: Status, error_message: str | None, report: Any, now: float) -> Override:
    """update_outcome_status on the item's locked row (with its run's lease_seconds). The report's non-empty metrics/metadata replace the
    row's; generating starts a fresh lease now; a final status entered now ends the attempt now (re-setting
    the same final status keeps its times); pending clears the end. A complete item carries no error."""
    old: Status = row["status"]
    old_metrics = _loads(row["metrics"])
    metrics = report.metrics if report is not None and report.metrics else old_metrics
    metadata = report.metadata if report is not None and report.metadata else _loads(row["metadata"])
    started, completed, took = row["started_at"], row["completed_at"], row["duration_seconds"]
    expires = None
    if new == "generating":
        started, completed, took, expires = now, None, None, now + float(row["lease_seconds"])
    elif new in ("complete", "failed", "cancelled"):
        if old != new:
            completed, took = now, duration(started, now)
    else:
        completed = took = None
    return Override(
        old=old,
        new=new,
        old_metrics=old_metrics,
        metrics=metrics,
        metadata=metadata,
        error_message=error_message if new != "complete" else None,
        started_at=started,
        completed_at=completed,
        duration_seconds=took,
        lease_expires_at=expires,
    )


# ---- why a claim came back short ------------------------------------------------------------------

Waiting = Literal["available_at", "lease_expires_at"] | None


def why_nothing(*, pending: int, generating: int, total: int) -> tuple[ClaimReason, Waiting]:
    """The reason a claim found fewer items than asked, and which time tells when to ask again (the
    earliest `available_at` of a pending item, or `lease_expires_at` of a leased one)."""
    if pending:
        return "backing_off", "available_at"
    if generating:
        return "all_leased", "lease_expires_at"
    return ("done" if total else "empty"), None


# ---- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ev:
    """One change-feed event: its kind and payload. Built only by the functions below."""

    kind: str
    data: Mapping[str, Any]

    def payload(self) -> str:
        """The stored JSON text, with the acting principal (see matrix_mcp.audit)."""
        return json.dumps(
            stamped(self.kind, dict(self.data)), separators=(",", ":"), ensure_ascii=False, sort_keys=True
        )


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
