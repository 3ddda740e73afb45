"""One group-commit batch of the PostgreSQL store: the requests, their savepoint-scoped transaction view
(`Tx`: counter deltas and events kept until the batch commits), and the journal of answers that
lets a batch re-run after a lost answer without doing a write twice."""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import TypeAdapter

from matrix_mcp import rules
from matrix_mcp.models import IntegrationEvent, Outcome, PlanResult, Run, Status
from matrix_mcp.store import rows as R
from matrix_mcp.store.group_commit import Request
from matrix_mcp.store.params import Claim, Report, Reported, ReviewVerdict
from matrix_mcp.store.postgres import sql
from matrix_mcp.store.postgres.sql import (
    COL,
    COUNTER_COLUMNS,
    DELTA_COLUMNS,
    DELTA_INSERT,
    DELTA_INSERT_ARRAYS,
    DELTA_INT,
    RECOVER_ANSWERS_SQL,
    DeltaKey,
)

log = logging.getLogger("matrix_mcp.store.postgres")


T = TypeVar("T")


# answers of the writes that journal them (see recover_answers)
PLAN_ANSWER = TypeAdapter(PlanResult)


RUN_ANSWER = TypeAdapter(Run)


OUTCOME_ANSWER = TypeAdapter(Outcome)


REPORTED_ANSWER = TypeAdapter(Reported)


IDS_ANSWER = TypeAdapter(list[str])


RECORD_ANSWER = TypeAdapter(tuple[Outcome, bool])


INTEGRATION_ANSWER = TypeAdapter(IntegrationEvent)


Row = dict[str, Any]


Conn = AsyncConnection[Row]


def transient(exc: BaseException) -> bool:
    """Errors worth retrying the whole transaction for: the database, not the request, is at fault."""
    return isinstance(exc, psycopg.OperationalError)


async def configure(conn: Conn) -> None:
    # the hot statements are prepared (psycopg prepares after 5 uses); their plans do not depend on
    # parameter values, so skip re-planning every execution
    await conn.execute(sql.GENERIC_PLANS)


IN_TRANSACTION = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)


_RETURNED: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()


CHECK_IDLE = 1.0  # seconds idle after which a pooled connection is pinged before use


async def note_return(conn: Conn) -> None:
    _RETURNED[conn] = time.monotonic()


async def check_idle(conn: Conn) -> None:
    """Ping a connection that sat idle (the server may have gone away); a connection returned moments
    ago is used as is — if it broke since, the call's transient-error retry takes another one, and if its
    link went silent, the call's deadline cuts it off (store/postgres/deadline.py)."""
    if time.monotonic() - _RETURNED.get(conn, 0.0) > CHECK_IDLE:
        await AsyncConnectionPool.check_connection(conn)


async def fetch_one(c: Conn, query: Any, params: Any = None) -> Row | None:
    cur = await c.execute(query, params)
    return await cur.fetchone()


async def fetch_all(c: Conn, query: Any, params: Any = None) -> list[Row]:
    cur = await c.execute(query, params)
    return await cur.fetchall()


class NeedSafe(Exception):
    """An atomic request failed after writing: re-run the batch with a savepoint per request."""


class Batch:
    """What a group-commit batch has accumulated from the requests that succeeded so far."""

    __slots__ = ("capped", "deltas", "events", "swept")

    def __init__(self) -> None:
        self.deltas: dict[DeltaKey, list[float]] = {}
        self.events: list[tuple[str | None, str | None, str, str, float]] = []
        self.swept: dict[str, float] = {}
        self.capped: set[tuple[str, str | None]] = set()  # (run, package) whose capped rows this batch locked


def _merge(into: dict[DeltaKey, list[float]], other: dict[DeltaKey, list[float]]) -> None:
    for key, values in other.items():
        row = into.get(key)
        if row is None:
            into[key] = list(values)
        else:
            for i, v in enumerate(values):
                row[i] += v


class Tx:
    """One request inside a batch: its connection (inside a savepoint), its counter deltas and events."""

    def __init__(self, conn: Conn, batch: Batch) -> None:
        self.conn = conn
        self.batch = batch
        self.deltas: dict[DeltaKey, list[float]] = {}
        self.events: list[tuple[str | None, str | None, str, str, float]] = []
        self.taken: dict[DeltaKey, list[float]] = {}
        self.wrote = False  # set by atomic requests once they changed a row

    async def one(self, query: Any, params: Any = None) -> Row | None:
        return await fetch_one(self.conn, query, params)

    async def all(self, query: Any, params: Any = None) -> list[Row]:
        return await fetch_all(self.conn, query, params)

    async def execute(self, query: Any, params: Any = None) -> None:
        await self.conn.execute(query, params)

    def event(self, run_id: str | None, outcome_id: str | None, ev: rules.Ev, now: float) -> None:
        self.events.append((run_id, outcome_id, ev.kind, ev.payload(), float(now)))

    def add(self, key: DeltaKey, **values: float) -> None:
        row = self.deltas.get(key)
        if row is None:
            row = self.deltas[key] = [0.0] * len(DELTA_COLUMNS)
        for name, v in values.items():
            row[COL[name]] += v

    def move(self, run_id: str, package_id: int, old: Status, new: Status, n: int = 1) -> None:
        if old == new or n == 0:
            return
        self.add((run_id, package_id, None, None), **{old: -n, new: n})

    def contribution(
        self, run_id: str, package_id: int, metrics: Mapping[str, Any], duration: float | None, sign: int
    ) -> None:
        contrib = R.contribution(metrics, duration)
        self.add((run_id, package_id, None, None), **{k: sign * contrib[k] for k in COUNTER_COLUMNS})
        if duration is not None:
            self.add((run_id, package_id, R.duration_bucket(duration), None), bucket_n=sign)

    async def apply(self, row: Row, t: rules.Transition, now: float) -> Row | None:
        """Write what a rules.Transition decided for the item `row` (locked in this transaction): its
        attempt's end, its row and queue record, its metric rows, then the counter moves and the event.
        Returns the queue row's claim-policy flags (q_locks, q_dependents, q_gate: policy.after)."""
        if t.attempt is not None:
            end = t.attempt
            await self.execute(sql.END_ATTEMPT, (end.status, end.error, now, t.outcome_id, end.lease_token))
        await self.execute(sql.update_outcome(tuple(t.values)), (*t.values.values(), row["n"]))
        queue = (t.queue_token, t.values.get("lease_expires_at"), rules.final_status(t.new), t.claimable_from)
        flags = await self.one(sql.REQUEUE, (*queue, row["n"]))
        if t.clear_metric_rows:
            await self.execute(sql.CLEAR_METRICS, (t.outcome_id,))
        if t.metric_rows is not None:
            values = R.numeric_metrics(t.metric_rows)
            if values:
                await self.execute(
                    sql.INSERT_METRICS, (t.outcome_id, [k for k, _ in values], [v for _, v in values])
                )
        self.effects(t, now)
        return flags

    async def apply_many(
        self, rows: Sequence[Row], ts: Sequence[rules.Transition], now: float
    ) -> dict[int, Row]:
        """Tx.apply for many items at once (`rows` locked in this transaction, `ts` their transitions, in `n`
        order): one statement per kind of write (and per shape of outcome values). Returns each queue row's
        claim-policy flags by the item's `n`."""
        ended = [t for t in ts if t.attempt is not None]
        if ended:
            await self.execute(
                sql.END_ATTEMPTS,
                (
                    [t.attempt.status for t in ended if t.attempt],
                    [t.attempt.error for t in ended if t.attempt],
                    [float(now)] * len(ended),
                    [t.outcome_id for t in ended],
                    [t.attempt.lease_token for t in ended if t.attempt],
                ),
            )
        shapes: dict[tuple[str, ...], list[tuple[Row, rules.Transition]]] = defaultdict(list)
        for row, t in zip(rows, ts, strict=True):
            shapes[tuple(t.values)].append((row, t))
        for columns, group in shapes.items():
            await self.execute(
                sql.update_outcomes(columns),
                ([int(row["n"]) for row, _ in group], *([t.values[c] for _, t in group] for c in columns)),
            )
        flags = await self.all(
            sql.REQUEUE_MANY,
            (
                [int(row["n"]) for row in rows],
                [t.queue_token for t in ts],
                [t.values.get("lease_expires_at") for t in ts],
                [rules.final_status(t.new) for t in ts],
                [t.claimable_from for t in ts],
            ),
        )
        cleared = [t.outcome_id for t in ts if t.clear_metric_rows]
        if cleared:
            await self.execute(sql.CLEAR_METRICS_MANY, (cleared,))
        ids: list[str] = []
        names: list[str] = []
        values: list[float] = []
        for t in ts:
            if t.metric_rows is not None:
                for k, v in R.numeric_metrics(t.metric_rows):
                    ids.append(t.outcome_id)
                    names.append(k)
                    values.append(v)
        if ids:
            await self.execute(sql.INSERT_METRICS_MANY, (ids, names, values))
        for t in ts:
            self.effects(t, now)
        return {int(f["n"]): f for f in flags}

    def effects(self, t: rules.Transition, now: float) -> None:
        """A transition's counter moves, minute and event (kept until the batch commits); on their own where
        a statement decided and wrote the row itself (the completes, the sweep)."""
        self.move(t.run_id, t.package_id, t.old, t.new)
        for x in t.contributions:
            self.contribution(t.run_id, t.package_id, x.metrics, x.duration, x.sign)
        if t.minute is not None:
            m = t.minute
            self.minute(t.run_id, now, completed=m.completed, failed=m.failed, duration=m.duration)
        self.event(t.run_id, t.outcome_id, t.event, now)

    def minute(
        self, run_id: str, now: float, completed: int = 0, failed: int = 0, duration: float | None = None
    ) -> None:
        self.add(
            (run_id, None, None, int(now // 60)),
            m_completed=completed,
            m_failed=failed,
            m_duration_sum=duration or 0.0,
            m_duration_n=1 if duration is not None else 0,
        )

    def pending(self, run_id: str, package_id: int, *columns: str) -> list[int]:
        """The package's counter moves of this batch and this request not written yet, one per column."""
        key = (run_id, package_id, None, None)
        rows = [d[key] for d in (self.batch.deltas, self.deltas) if key in d]
        return [round(sum(row[COL[c]] for row in rows)) for c in columns]

    async def flush(self) -> None:
        """Write the batch's and this request's deltas now, before reading counters in this transaction.

        The batch's part is remembered: if this request rolls back, it goes back to the batch."""
        pending = dict(self.batch.deltas)
        _merge(self.taken, self.batch.deltas)
        _merge(pending, self.deltas)
        self.batch.deltas = {}
        self.deltas = {}
        await write_deltas(self.conn, pending)

    def succeeded(self) -> None:
        _merge(self.batch.deltas, self.deltas)
        self.batch.events.extend(self.events)

    def failed(self) -> None:
        _merge(self.batch.deltas, self.taken)


async def write_deltas(c: Conn, deltas: dict[DeltaKey, list[float]]) -> None:
    rows = [
        [*k, *(round(x) if integral else float(x) for x, integral in zip(v, DELTA_INT, strict=True))]
        for k, v in deltas.items()
        if any(v)
    ]
    if not rows:
        return
    try:
        payload = json.dumps(rows, allow_nan=False)
    except ValueError:  # a sum overflowed to infinity: JSON cannot carry it, float8 arrays can
        await c.execute(DELTA_INSERT_ARRAYS, [list(col) for col in zip(*rows, strict=True)])
        return
    await c.execute(DELTA_INSERT, (payload,))


@dataclass(frozen=True, slots=True)
class ClaimArgs:
    run_id: str
    worker: str
    limit: int
    package: str | None
    now: float
    token_factory: Callable[[], str]
    # every lease token handed to this request's claim statements, across attempts: when an attempt's
    # COMMIT went through but its answer was lost with the connection, the retry finds its leases by
    # these tokens instead of leaving them orphaned until they expire
    issued: list[str] = field(default_factory=list)

    def token(self) -> str:
        token = self.token_factory()
        self.issued.append(token)
        return token


@dataclass(frozen=True, slots=True)
class ReviewArgs:
    outcome_id: str
    verdict: ReviewVerdict
    now: float


@dataclass(frozen=True, slots=True)
class CompleteArgs:
    outcome_id: str
    lease_token: str
    report: Report
    now: float
    metrics: str
    metadata: str
    values: list[tuple[str, float]]


class BatchRequest(Request):
    __slots__ = (
        "atomic",
        "deadline",
        "fn",
        "handled",
        "journal",
        "key",
        "merge",
        "recovered",
        "rest",
        "tried",
    )

    def __init__(
        self,
        fn: Callable[[Tx], Awaitable[Any]],
        atomic: bool,
        merge: ClaimArgs | CompleteArgs | ReviewArgs | None = None,
        journal: TypeAdapter[Any] | None = None,
        *,
        deadline: float = math.inf,
    ) -> None:
        super().__init__()
        self.deadline = (
            deadline  # monotonic time by which its writer is answered (store/postgres/deadline.py)
        )
        self.fn = fn
        self.atomic = atomic
        self.merge = merge  # set-based fast path: the batch merges these into one statement per kind
        # writes that must not run twice (see recover_answers) journal their answer under `key`
        self.journal = journal
        self.key = uuid.uuid4().hex if journal is not None else ""
        self.tried = False
        self.handled = False  # answered by the merged statement
        self.recovered = False  # answered from the journal of an attempt whose answer was lost
        self.rest: Callable[[Tx], Awaitable[Any]] | None = None  # what is left to do one by one


def claims_from(tx: Tx, run_id: str, worker: str, rows: Sequence[Row], now: float) -> list[Claim]:
    """Claims (with their events and counter moves) from claim-statement rows of one request."""
    claims: list[Claim] = []
    per_package: dict[int, int] = defaultdict(int)
    for o in rows:
        per_package[int(o["pk_id"])] += 1
        tx.event(
            run_id,
            o["id"],
            rules.claimed(package=o["package_name"], item=o["item"], worker=worker, attempt=o["attempts"]),
            now,
        )
        claims.append(R.claim_from(o))
    for pid, n in per_package.items():
        tx.move(run_id, pid, *rules.CLAIMED_MOVE, n)
    if rows:
        tx.wrote = True
    return claims


async def recover_answers(conn: Conn, batch: list[BatchRequest]) -> None:
    """Before a batch is re-run after a transient error: a journaled write whose earlier attempt
    committed (the connection died before its answer came back) gets the answer that attempt
    journaled with it, instead of running again — which would log a second integration event,
    answer `created: false` for the run or outcome it created, or call its own lease lost."""
    keys = [req.key for req in batch if req.journal is not None and req.tried]
    if not keys:
        return
    found = {r["key"]: r["answer"] for r in await fetch_all(conn, RECOVER_ANSWERS_SQL, (keys,))}
    for req in batch:
        answer = found.get(req.key) if req.journal is not None else None
        if answer is not None:
            assert req.journal is not None
            log.info("recovered the answer of a write committed by an attempt whose answer was lost")
            req.value = req.journal.validate_json(answer)
            req.handled = True
            req.recovered = True


async def journal_answers(conn: Conn, batch: list[BatchRequest]) -> None:
    rows = [
        (req.key, req.journal.dump_json(req.value).decode())
        for req in batch
        if req.journal is not None and req.error is None and not req.recovered
    ]
    if rows:
        await conn.execute(
            sql.JOURNAL_ANSWERS,
            (time.time(), [k for k, _ in rows], [a for _, a in rows]),
        )


Slot = tuple[str, float, str, str | None]  # worker, now, lease token, principal


def claim_params(
    run_id: str, package: str | None, exhausted: list[tuple[int, int]], cutoff: float, slots: list[Slot]
) -> dict[str, Any]:
    """Parameters of CLAIM_SQL: one (worker, now, token, principal) slot per item wanted, handed out by rank."""
    return {
        "run": run_id,
        "package": package,
        "exhausted": [p for p, _ in exhausted],  # (package, priority level) dry for this call
        "levels": [level for _, level in exhausted],
        "now": cutoff,
        "limit": len(slots),
        "workers": [w for w, _, _, _ in slots],
        "nows": [float(t) for _, t, _, _ in slots],
        "tokens": [k for _, _, k, _ in slots],
        "principals": [p for _, _, _, p in slots],
    }
