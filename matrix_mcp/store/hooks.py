"""What events out (webhooks, Slack, Jira, GitHub) needs from the outcome store: the HookStore protocol.

Both dialects (`sqlite/hooks.py`, `postgres/hooks.py`) implement it with identical semantics and pass
one contract suite (tests/store/test_hooks_store.py). Each store exposes it as `store.hooks`.

- A subscription keeps a `cursor` into the events log. The dispatcher holding the subscription's lease
  reads the events after the cursor, turns them into deliveries and advances the cursor in one
  transaction (`materialize`), so the claim/complete hot path writes nothing for webhooks.
- One dispatcher at a time per subscription, across processes and hosts: `lease` takes or renews a
  time-limited lease; `materialize` and `record` change nothing unless the caller still holds it.
- A delivery's id is derived from the subscription and the event, so it is stable across retries and
  re-materializing an event (after a crash) inserts nothing new.
- Credentials arrive here already encrypted; the store never sees a secret in clear.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, TypeVar

from matrix_mcp import rules
from matrix_mcp.pagination import DELIVERY_CURSOR, keyset_page
from matrix_mcp.store.rows import pinned

DeliveryStatus = Literal["pending", "succeeded", "failed"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "succeeded", "failed")
R = TypeVar("R", "SubscriptionRow", "DeliveryRow")


@dataclass(frozen=True, kw_only=True)
class SubscriptionRow:
    id: str
    kind: str
    target: str  # what may be shown: the URL's scheme and host only (`https://host/…`)
    credentials: str  # encrypted (Fernet token): URL, signing secrets, headers, tokens
    events: list[str] = field(default_factory=lambda: ["*"])
    run: str | None = None
    description: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    active: bool = True
    disabled_reason: str | None = None
    cursor: int = 0
    failures: int = 0
    failing_since: float | None = None
    circuit_open_until: float | None = None
    last_success_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class SubscriptionChange:
    """Fields to change on a subscription; None leaves a field as it is."""

    active: bool | None = None
    events: list[str] | None = None
    run: str | None = None
    target: str | None = None
    credentials: str | None = None
    description: str | None = None
    config: dict[str, Any] | None = None
    disabled_reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class NewDelivery:
    id: str
    seq: int
    event_type: str
    run: str | None
    body: str


@dataclass(frozen=True, kw_only=True)
class DeliveryRow:
    n: int
    id: str
    subscription_id: str
    seq: int
    event_type: str
    run: str | None
    body: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    last_status_code: int | None
    last_error: str | None
    created_at: float
    updated_at: float
    delivered_at: float | None


@dataclass(frozen=True, kw_only=True)
class AttemptResult:
    """The outcome of one attempt at one delivery, decided by the dispatcher's rules."""

    delivery_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    status_code: int | None
    error: str | None
    now: float


@dataclass(frozen=True, kw_only=True)
class CallLog:
    """One outbound call, for the seed's integration_logs (written with the attempt results)."""

    run: str | None  # run name
    integration_type: str
    action: str
    status: str
    details: dict[str, Any]
    created_at: float


def log_events(logs: Sequence[CallLog]) -> list[rules.Ev]:
    """The events of a round of calls: one per (type, action, status), with a count — built by
    matrix_mcp.rules, identical on both backends."""
    groups: dict[tuple[str, str, str], int] = {}
    for log in logs:
        key = (log.integration_type, log.action, log.status)
        groups[key] = groups.get(key, 0) + 1
    return [
        rules.integration_calls(integration_type=t, action=a, status=st, count=n)
        for (t, a, st), n in sorted(groups.items())
    ]


@dataclass(frozen=True)
class OutcomeFacts:
    """What a delivery body tells about an outcome beyond its event: read in one batch per round."""

    package: str
    item: str
    attempts: int
    metrics: dict[str, Any]
    error: str | None


@dataclass(frozen=True, kw_only=True)
class EndpointState:
    """A subscription's circuit breaker and health after a round of attempts."""

    failures: int
    failing_since: float | None
    circuit_open_until: float | None
    last_success_at: float | None
    active: bool = True
    disabled_reason: str | None = None


@dataclass(frozen=True)
class DeliveryPage:
    deliveries: list[DeliveryRow]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class CursorMove:
    """What `materialize` does for the dispatcher holding the lease: move the cursor from cursor_from to
    cursor_to and insert the deliveries of the events in between."""

    owner: str
    cursor_from: int
    cursor_to: int
    deliveries: Sequence[NewDelivery] = ()


@dataclass(frozen=True, kw_only=True)
class RoundRecord:
    """What `record` stores after a round of attempts: their results, the endpoint's state and the calls'
    integration_logs rows, on behalf of the lease holder `owner`."""

    owner: str
    state: EndpointState
    results: Sequence[AttemptResult] = ()
    logs: Sequence[CallLog] = ()


@dataclass(frozen=True, kw_only=True)
class DeliveryQuery:
    """A page of deliveries: pinned to a subscription and/or a status when given, `limit` rows after
    `cursor` (from the previous page's next_cursor) in creation order."""

    subscription_id: str | None = None
    status: DeliveryStatus | None = None
    cursor: str | None = None
    limit: int


@dataclass(frozen=True, kw_only=True)
class Redelivery:
    """Which deliveries to make due again: the one `delivery_id` names, else every delivery of
    `subscription_id` created at or after `since` (all of them when None)."""

    subscription_id: str | None = None
    delivery_id: str | None = None
    since: float | None = None


class HookStore(Protocol):
    """At most one identity argument by position, the rest by keyword (tests/architecture/test_call_shapes.py)."""

    async def add_subscription(self, row: SubscriptionRow, *, now: float) -> SubscriptionRow:
        """Insert; the cursor starts at the latest event (no history is replayed)."""
        ...

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow:
        """NotFound names the field `webhook`."""
        ...

    async def list_subscriptions(self, *, active_only: bool = False) -> list[SubscriptionRow]: ...

    async def any_active(self) -> bool:
        """One indexed read: is there anything to dispatch for at all?"""
        ...

    async def update_subscription(
        self, subscription_id: str, *, change: SubscriptionChange, now: float
    ) -> SubscriptionRow:
        """Re-activating a subscription also resets its failure count and closes its circuit."""
        ...

    async def remove_subscription(self, subscription_id: str) -> None: ...

    async def lease(
        self, subscription_id: str, *, owner: str, now: float, ttl: float
    ) -> SubscriptionRow | None:
        """Take or renew the dispatch lease; the subscription (as now stored) when held, else None."""
        ...

    async def release(self, subscription_id: str, *, owner: str) -> None: ...

    async def materialize(self, subscription_id: str, *, move: CursorMove, now: float) -> bool:
        """Insert the deliveries (ids already present are skipped) and move the cursor from move.cursor_from
        to move.cursor_to, in one transaction; False (nothing changed) unless move.owner holds the lease and
        the cursor is still cursor_from."""
        ...

    async def add_delivery(self, subscription_id: str, *, delivery: NewDelivery, now: float) -> DeliveryRow:
        """A delivery not derived from the events log (a ping), due now."""
        ...

    async def due_deliveries(self, subscription_id: str, *, now: float, limit: int) -> list[DeliveryRow]: ...

    async def next_due(self, subscription_id: str) -> float | None: ...

    async def record(self, subscription_id: str, *, record: RoundRecord, now: float) -> bool:
        """Store attempt results, the endpoint state and the calls' integration_logs rows (plus one
        `integration` event per type/action/status) in one transaction; False (nothing changed) when
        record.owner no longer holds the lease."""
        ...

    async def get_delivery(self, delivery_id: str) -> DeliveryRow: ...

    async def list_deliveries(self, query: DeliveryQuery) -> DeliveryPage:
        """InputError (field `cursor`) for a cursor this server did not issue."""
        ...

    async def redeliver(self, target: Redelivery, *, now: float) -> int:
        """Make one delivery, or every delivery of a subscription created at or after `since`, due now
        (attempts restart); returns how many. NotFound for an unknown delivery or subscription."""
        ...

    async def outcome_facts(self, outcome_ids: Sequence[str]) -> dict[str, OutcomeFacts]:
        """Package, item, attempts, metrics and last error of these outcomes (unknown ids are left out),
        in one read: the dispatcher's per-round lookup, never on the claim/complete path."""
        ...

    async def get_link(self, subscription_id: str, *, ref: str) -> str | None: ...

    async def set_link(self, subscription_id: str, *, ref: str, value: str) -> None: ...

    async def all_credentials(self) -> list[tuple[str, str]]: ...

    async def set_credentials(self, pairs: Sequence[tuple[str, str]], *, now: float) -> None:
        """Replace the encrypted credentials of several subscriptions in one transaction (key rotation)."""
        ...


# ---- row conversion, shared by both dialects -----------------------------------------------------

# a row's field is the column of the same name, but for `run` (run_name); values come back typed as the
# schema declares them on both backends, except these (JSON text, SQLite's 0/1 for a boolean)
_COLUMN_OF = {"run": "run_name"}
_DECODE: dict[str, Callable[[Any], Any]] = {"events": json.loads, "config": json.loads, "active": bool}


def _from_row(cls: type[R], row: Any) -> R:
    values = {}
    for f in fields(cls):
        value = row[_COLUMN_OF.get(f.name, f.name)]
        values[f.name] = _DECODE[f.name](value) if f.name in _DECODE else value
    return cls(**values)


def subscription_from(row: Any) -> SubscriptionRow:
    return _from_row(SubscriptionRow, row)


def delivery_from(row: Any) -> DeliveryRow:
    return _from_row(DeliveryRow, row)


def subscription_values(row: SubscriptionRow) -> tuple[Any, ...]:
    """A new subscription's columns id, kind, target, description, events, run_name, config, credentials,
    active (JSON dumped); its cursor and times are added by the dialect."""
    return (
        row.id,
        row.kind,
        row.target,
        row.description,
        json.dumps(row.events),
        row.run,
        json.dumps(row.config, sort_keys=True),
        row.credentials,
        row.active,
    )


def delivery_values(subscription_id: str, d: NewDelivery) -> tuple[Any, ...]:
    """A new delivery's columns id, subscription_id, seq, event_type, run_name, body (pending, due now)."""
    return (d.id, subscription_id, d.seq, d.event_type, d.run, d.body)


def endpoint_values(state: EndpointState) -> tuple[Any, ...]:
    """What `record` writes on the subscription, in this order: failures, failing_since, circuit_open_until,
    last_success_at, then `active` (ANDed: a round never re-activates) and disabled_reason (kept when None)."""
    return (
        state.failures,
        state.failing_since,
        state.circuit_open_until,
        state.last_success_at,
        state.active,
        state.disabled_reason,
    )


def result_values(r: AttemptResult) -> tuple[Any, ...]:
    """An attempt's columns status, attempts, next_attempt_at, last_status_code, last_error, updated_at (and
    delivered_at when it succeeded), keyed by delivery_id last."""
    return (r.status, r.attempts, r.next_attempt_at, r.status_code, r.error, r.now, r.delivery_id)


def log_values(log: CallLog) -> tuple[Any, ...]:
    """A call's integration_logs columns: the run's name (the dialect looks up its id), integration_type,
    action, status, details (JSON), created_at."""
    return (log.run, log.integration_type, log.action, log.status, json.dumps(log.details), log.created_at)


def delivery_filter(subscription_id: str | None, status: DeliveryStatus | None) -> list[tuple[str, Any]]:
    """The columns a listing of deliveries pins, with their values (each dialect binds them)."""
    return pinned({"subscription_id": subscription_id, "status": status})


def delivery_page(rows: Sequence[Any], limit: int) -> DeliveryPage:
    """A page from up to limit + 1 rows in `n` order (pagination.keyset_page)."""
    page, cursor = keyset_page(rows, limit, lambda r: int(r["n"]), kind=DELIVERY_CURSOR)
    return DeliveryPage([delivery_from(r) for r in page], cursor)


def change_columns(change: SubscriptionChange) -> dict[str, Any]:
    """The columns a change sets (JSON already dumped); re-activation resets the circuit."""
    cols: dict[str, Any] = {}
    if change.events is not None:
        cols["events"] = json.dumps(change.events)
    if change.run is not None:
        cols["run_name"] = change.run or None
    if change.target is not None:
        cols["target"] = change.target
    if change.credentials is not None:
        cols["credentials"] = change.credentials
    if change.description is not None:
        cols["description"] = change.description
    if change.config is not None:
        cols["config"] = json.dumps(change.config, sort_keys=True)
    if change.active is not None:
        cols["active"] = change.active
        if change.active:
            cols.update(failures=0, failing_since=None, circuit_open_until=None, disabled_reason=None)
        else:
            cols["disabled_reason"] = change.disabled_reason or "disabled by request"
    return cols


def facts_from(row: Any) -> tuple[str, OutcomeFacts]:
    try:
        metrics = json.loads(row["metrics"] or "{}")
    except ValueError:
        metrics = {}
    return str(row["id"]), OutcomeFacts(
        str(row["package_name"]),
        str(row["item"]),
        int(row["attempts"]),
        metrics if isinstance(metrics, dict) else {},
        None if row["error_message"] is None else str(row["error_message"]),
    )


FACTS_CHUNK = 500  # ids per statement (SQLite's bound-parameter limit is far above)
