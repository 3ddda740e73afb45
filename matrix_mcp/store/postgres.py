"""The PostgreSQL outcome store on psycopg 3 (async) and psycopg_pool: many processes, one board.

- Semantics are those of the SQLite store, transition for transition (same errors, events, reasons).
- Group commit: one writer per process merges concurrent requests into one transaction; each
  request runs in its own SAVEPOINT so a bad request rolls back alone. Transient errors
  (serialization failure, deadlock, lost connection, admin shutdown, pool timeout) retry the whole
  batch with jittered backoff; past a short budget the callers get `Unavailable` (retryable).
- Claims are one `UPDATE … RETURNING` over a MATERIALIZED CTE with `FOR UPDATE SKIP LOCKED`;
  fairness across packages comes from each outcome's `claim_seq` (a global sequence), so no
  package or run row is written on the claim path.
- Counters without a hot row: each batch appends one aggregated row per touched package (and
  bucket, and minute) to `package_deltas`; one roller at a time (advisory lock) folds them into
  `packages` (the duration histogram too, as sorted arrays on the package row). Readers add the unrolled deltas (views `package_counters`, `package_hist`, `run_minutes`).
- Events get their sequence numbers in commit order (an advisory lock held from the insert to the
  commit), so a reader that saw seq S has seen every event ≤ S. One debounced NOTIFY per batch wakes
  long-polls in other processes; a poll is the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import operator
import random
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import TypeAdapter

from matrix_mcp.audit import acting_as, current_principal, stamped
from matrix_mcp.config import redact_text, redact_url, url_password
from matrix_mcp.models import (
    STATUSES,
    Event,
    HeartbeatResult,
    HourBucket,
    IntegrationEvent,
    LeaseRef,
    LeaseState,
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
    ts,
)
from matrix_mcp.store import rows as R
from matrix_mcp.store.base import (
    ApiKey,
    Cell,
    Claim,
    ClaimBatch,
    Conflict,
    ContentFile,
    MinuteCount,
    NewPackage,
    NextClaim,
    NotFound,
    OutcomeFilter,
    Report,
    Reported,
    RunOverview,
    StaleLease,
    StoreError,
    Unavailable,
)
from matrix_mcp.store.postgres_schema import (
    EVENTS_LOCK,
    MIGRATION_LOCK,
    MIGRATIONS,
    NOTIFY_CHANNEL,
    ROLLUP_LOCK,
)

if TYPE_CHECKING:
    from matrix_mcp.store.postgres_hooks import PostgresHooks

log = logging.getLogger("matrix_mcp.store.postgres")
T = TypeVar("T")

# answers of the writes that journal them (see _recover_answers)
_PLAN_ANSWER = TypeAdapter(PlanResult)
_RUN_ANSWER = TypeAdapter(Run)
_OUTCOME_ANSWER = TypeAdapter(Outcome)
_REPORTED_ANSWER = TypeAdapter(Reported)
_IDS_ANSWER = TypeAdapter(list[str])
_RECORD_ANSWER = TypeAdapter(tuple[Outcome, bool])
_INTEGRATION_ANSWER = TypeAdapter(IntegrationEvent)
Row = dict[str, Any]
Conn = AsyncConnection[Row]

POOL_MIN = 2
POOL_MAX = 10
POOL_WAIT = 2.0  # seconds a call waits for a connection before the retry budget counts it
RETRY_BUDGET = 4.0  # seconds of transient-error retries before answering Unavailable
ROLL_INTERVAL = 0.5
ROLL_CHUNK = 50_000
NOTIFY_DEBOUNCE = 0.01
POLL_FALLBACK = 0.5
SWEEP_LIMIT = 500
# a journaled answer is needed only while its write is being retried (RETRY_BUDGET); kept far longer
ANSWERS_KEEP = 600.0
ANSWERS_PRUNE_INTERVAL = 60.0

DELTA_COLUMNS = (
    "total",
    "pending",
    "generating",
    "complete",
    "failed",
    "cancelled",
    "duration_sum",
    "duration_n",
    "lines_sum",
    "quality_sum",
    "quality_n",
    "bucket_n",
    "m_completed",
    "m_failed",
    "m_duration_sum",
    "m_duration_n",
)
_FLOAT_COLUMNS = {"duration_sum", "lines_sum", "quality_sum", "m_duration_sum"}
_COL = {c: i for i, c in enumerate(DELTA_COLUMNS)}
_COUNTER_COLUMNS = ("duration_sum", "duration_n", "lines_sum", "quality_sum", "quality_n")
DeltaKey = tuple[str, int | None, int | None, int | None]  # run_id, package_id, bucket, minute


def _build_delta_insert() -> str:
    """One parameter: the batch's delta rows as a JSON array of arrays (key columns, then DELTA_COLUMNS);
    a plain string query, so psycopg converts it once and dumps a single text value per batch."""
    types = ["text", "int8", "int4", "int8"] + [
        "float8" if c in _FLOAT_COLUMNS else "int8" for c in DELTA_COLUMNS
    ]
    cols = ", ".join(("run_id", "package_id", "bucket", "minute", *DELTA_COLUMNS))
    values = ", ".join(f"(e->>{i})::{t}" for i, t in enumerate(types))
    return f"INSERT INTO package_deltas ({cols}) SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS d(e)"


_DELTA_INSERT = _build_delta_insert()
_DELTA_INSERT_ARRAYS = (
    "INSERT INTO package_deltas ("
    + ", ".join(("run_id", "package_id", "bucket", "minute", *DELTA_COLUMNS))
    + ") SELECT * FROM unnest("
    + ", ".join(
        f"%b::{t}[]"
        for t in ["text", "int8", "int4", "int8"]
        + ["float8" if c in _FLOAT_COLUMNS else "int8" for c in DELTA_COLUMNS]
    )
    + ")"
)
_DELTA_INT = tuple(c not in _FLOAT_COLUMNS for c in DELTA_COLUMNS)

_RUN_SELECT = """
SELECT r.*, COUNT(p.id)::bigint AS packages,
       COALESCE(SUM(p.pending), 0)::bigint AS pending, COALESCE(SUM(p.generating), 0)::bigint AS generating,
       COALESCE(SUM(p.complete), 0)::bigint AS complete, COALESCE(SUM(p.failed), 0)::bigint AS failed,
       COALESCE(SUM(p.cancelled), 0)::bigint AS cancelled
FROM runs r LEFT JOIN package_counters p ON p.run_id = r.id
"""

# One run with its summed counters, set-based: the rolled package rows plus the run's unrolled deltas
# (two aggregates over index ranges instead of one per package). %(where)s picks the run.
_ONE_RUN_SQL = """
SELECT r.*, p.packages,
       p.pending + COALESCE(d.pending, 0) AS pending, p.generating + COALESCE(d.generating, 0) AS generating,
       p.complete + COALESCE(d.complete, 0) AS complete, p.failed + COALESCE(d.failed, 0) AS failed,
       p.cancelled + COALESCE(d.cancelled, 0) AS cancelled
FROM runs r
CROSS JOIN LATERAL (
    SELECT COUNT(*)::int8 AS packages, COALESCE(SUM(pending), 0)::int8 AS pending,
           COALESCE(SUM(generating), 0)::int8 AS generating, COALESCE(SUM(complete), 0)::int8 AS complete,
           COALESCE(SUM(failed), 0)::int8 AS failed, COALESCE(SUM(cancelled), 0)::int8 AS cancelled
    FROM packages WHERE run_id = r.id
) p
CROSS JOIN LATERAL (
    SELECT SUM(pending)::int8 AS pending, SUM(generating)::int8 AS generating, SUM(complete)::int8 AS complete,
           SUM(failed)::int8 AS failed, SUM(cancelled)::int8 AS cancelled
    FROM package_deltas WHERE run_id = r.id AND package_id IS NOT NULL AND bucket IS NULL
) d
"""

_OUTCOME_SELECT = """
SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, p.name AS package_name
FROM outcomes o JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = o.package_id
"""

_SUMMARY_SELECT = """
SELECT p.*, r.name AS run_name,
       ARRAY(SELECT h.bucket FROM package_hist h WHERE h.package_id = p.id AND h.n > 0 ORDER BY h.bucket) AS hb,
       ARRAY(SELECT h.n FROM package_hist h WHERE h.package_id = p.id AND h.n > 0 ORDER BY h.bucket) AS hn
FROM package_counters p JOIN runs r ON r.id = p.run_id
"""

# All summaries of one run in one pass: rolled counters + this run's unrolled deltas. Histograms: the
# rolled buckets as arrays per package (read in key order, no aggregation over numeric sums), plus the few unrolled delta
# buckets, added up in Python.
_RUN_SUMMARIES_SQL = """
WITH pk AS MATERIALIZED (SELECT * FROM packages WHERE run_id = %(run)s),
d AS (
    SELECT package_id, SUM(total)::int8 AS total, SUM(pending)::int8 AS pending, SUM(generating)::int8 AS generating,
           SUM(complete)::int8 AS complete, SUM(failed)::int8 AS failed, SUM(cancelled)::int8 AS cancelled,
           SUM(duration_sum) AS duration_sum, SUM(duration_n)::int8 AS duration_n, SUM(lines_sum) AS lines_sum,
           SUM(quality_sum) AS quality_sum, SUM(quality_n)::int8 AS quality_n
    FROM package_deltas WHERE run_id = %(run)s AND package_id IS NOT NULL AND bucket IS NULL
    GROUP BY package_id
),
hd AS (
    SELECT package_id, array_agg(bucket) AS db, array_agg(bucket_n) AS dn
    FROM package_deltas WHERE run_id = %(run)s AND bucket IS NOT NULL
    GROUP BY package_id
)
SELECT pk.id, pk.name, pk.description, pk.position, r.name AS run_name,
       pk.total + COALESCE(d.total, 0) AS total, pk.pending + COALESCE(d.pending, 0) AS pending,
       pk.generating + COALESCE(d.generating, 0) AS generating,
       pk.complete + COALESCE(d.complete, 0) AS complete,
       pk.failed + COALESCE(d.failed, 0) AS failed,
       pk.cancelled + COALESCE(d.cancelled, 0) AS cancelled,
       pk.duration_sum + COALESCE(d.duration_sum, 0) AS duration_sum,
       pk.duration_n + COALESCE(d.duration_n, 0) AS duration_n,
       pk.lines_sum + COALESCE(d.lines_sum, 0) AS lines_sum,
       pk.quality_sum + COALESCE(d.quality_sum, 0) AS quality_sum,
       pk.quality_n + COALESCE(d.quality_n, 0) AS quality_n,
       pk.hist_b AS hb, pk.hist_n AS hn, hd.db, hd.dn
FROM pk JOIN runs r ON r.id = pk.run_id
LEFT JOIN d ON d.package_id = pk.id LEFT JOIN hd ON hd.package_id = pk.id
ORDER BY pk.position
"""

_THROUGHPUT_SQL = "SELECT COALESCE(SUM(completed + failed), 0)::bigint AS n FROM run_minutes WHERE run_id = %s AND minute >= %s"
_LATEST_SEQ_SQL = "SELECT COALESCE(MAX(seq), 0) AS s FROM events"

_CLAIM_SQL = """
WITH r AS MATERIALIZED (
    SELECT name, lease_seconds FROM runs WHERE id = %(run)s AND state = 'active'
),
pk AS MATERIALIZED (
    SELECT p.id, p.name, p.description, p.position,
           (row_number() OVER (ORDER BY COALESCE(lc.last, 0), p.position) - 1)::int AS ord,
           (count(*) OVER ())::int AS np
    FROM packages p
    JOIN r ON true
    -- one index probe per package (a LATERAL ... LIMIT 1 is never flattened into a semi-join, which
    -- with a fresh run's stale statistics scanned every pending row of the run for every package)
    CROSS JOIN LATERAL (
        SELECT 1 FROM outcomes o
        WHERE o.package_id = p.id AND o.status = 'pending' AND o.available_at <= %(now)s
        LIMIT 1
    ) has
    LEFT JOIN LATERAL (
        SELECT max(o.claim_seq) AS last FROM outcomes o
        WHERE o.package_id = p.id AND o.claim_seq IS NOT NULL
    ) lc ON true
    WHERE p.run_id = %(run)s
      AND (%(package)s::text IS NULL OR p.name = %(package)s::text)
      AND NOT (p.id = ANY(%(exhausted)b::bigint[]))
),
cand AS MATERIALIZED (
    SELECT c.n, c.available_at, c.position AS ipos, pk.id AS package_id, pk.ord
    FROM pk CROSS JOIN LATERAL (
        SELECT o.n, o.available_at, o.position FROM outcomes o
        WHERE o.package_id = pk.id AND o.status = 'pending' AND o.available_at <= %(now)s
        ORDER BY o.available_at, o.position
        LIMIT GREATEST(0, (%(limit)s - pk.ord + pk.np - 1) / pk.np)
        FOR UPDATE SKIP LOCKED
    ) c
),
picked AS (
    SELECT x.n, x.package_id, row_number() OVER (ORDER BY x.k, x.ord) AS rank
    FROM (
        SELECT cand.*, row_number() OVER (PARTITION BY cand.package_id ORDER BY cand.available_at, cand.ipos) AS k
        FROM cand
    ) x
),
clk AS (SELECT nextval('claim_clock') AS v),
upd AS (
    UPDATE outcomes o
    SET status = 'generating', attempts = o.attempts + 1, worker = (%(workers)b::text[])[picked.rank],
        lease_token = (%(tokens)b::text[])[picked.rank],
        lease_expires_at = (%(nows)b::float8[])[picked.rank] + r.lease_seconds,
        started_at = (%(nows)b::float8[])[picked.rank], updated_at = (%(nows)b::float8[])[picked.rank],
        claim_seq = clk.v * 4096 + picked.rank
    FROM picked, clk, r
    WHERE o.n = picked.n
    RETURNING o.id, o.item, o.attempts, o.outcome_type, o.specifications, o.outcome_path, o.worker,
              o.started_at, o.lease_token, o.lease_expires_at, o.package_id, picked.rank
),
att AS (
    INSERT INTO outcome_attempts (outcome_id, attempt, lease_token, worker, status, started_at)
    SELECT upd.id, upd.attempts, upd.lease_token, upd.worker, 'generating', upd.started_at FROM upd
)
SELECT pk.id AS pk_id, pk.ord, pk.np, pk.name AS package_name, pk.description AS package_description,
       upd.id, upd.item, upd.attempts, upd.outcome_type, upd.specifications, upd.outcome_path,
       upd.lease_token, upd.lease_expires_at, upd.rank, (SELECT name FROM r) AS run_name
FROM pk LEFT JOIN upd ON upd.package_id = pk.id
ORDER BY upd.rank NULLS LAST
"""

_COMPLETE_SQL = """
WITH cur AS MATERIALIZED (
    SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, p.name AS package_name
    FROM outcomes o JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = o.package_id
    WHERE o.id = %(id)s
    FOR UPDATE OF o
),
u AS (
    UPDATE outcomes o SET status = 'complete', completed_at = %(now)s,
        duration_seconds = CASE WHEN cur.started_at IS NULL THEN NULL
                                ELSE GREATEST(0.0, %(now)s - cur.started_at) END,
        updated_at = %(now)s, lease_expires_at = NULL, error_message = NULL,
        metrics = %(metrics)s, metadata = %(metadata)s, outcome_path = COALESCE(%(path)s, o.outcome_path),
        content_sha256 = %(sha)s, content_bytes = %(bytes)s, mime_type = %(mime)s
    FROM cur
    WHERE o.n = cur.n AND cur.lease_token = %(token)s AND cur.status = 'generating'
    RETURNING o.duration_seconds
),
a AS (
    UPDATE outcome_attempts SET status = 'complete', error = NULL, ended_at = %(now)s
    WHERE outcome_id = %(id)s AND lease_token = %(token)s AND EXISTS (SELECT 1 FROM u)
),
md AS (
    DELETE FROM outcome_metrics
    WHERE outcome_id = %(id)s AND NOT (name = ANY(%(names)b::text[])) AND EXISTS (SELECT 1 FROM u)
),
mi AS (
    INSERT INTO outcome_metrics (outcome_id, name, value)
    SELECT %(id)s, m.k, m.v FROM unnest(%(names)b::text[], %(values)b::float8[]) AS m(k, v)
    WHERE EXISTS (SELECT 1 FROM u)
    ON CONFLICT (outcome_id, name) DO UPDATE SET value = EXCLUDED.value
)
SELECT cur.*, EXISTS (SELECT 1 FROM u) AS done, (SELECT duration_seconds FROM u) AS new_duration FROM cur
"""


# Every complete of one group-commit batch in one statement: rows whose token still holds are locked in
# a fixed order (no deadlock between two processes), updated, their attempts closed and metrics written.
# Requests not returned (stale token, repeat, unknown id) are answered one by one afterwards.
_COMPLETE_MANY_SQL = """
WITH inp AS MATERIALIZED (
    SELECT * FROM unnest(%(ids)b::text[], %(tokens)b::text[], %(nows)b::float8[], %(metrics)b::text[],
                         %(metadata)b::text[], %(paths)b::text[], %(shas)b::text[], %(bytes)b::int8[],
                         %(mimes)b::text[])
        WITH ORDINALITY AS u(id, tok, now, metrics, metadata, path, sha, nbytes, mime, i)
),
cur AS MATERIALIZED (
    SELECT o.n, o.started_at, inp.i FROM outcomes o JOIN inp ON o.id = inp.id
    WHERE o.lease_token = inp.tok AND o.status = 'generating'
    ORDER BY o.n
    FOR UPDATE OF o
),
u AS (
    UPDATE outcomes o SET status = 'complete', completed_at = inp.now,
        duration_seconds = CASE WHEN cur.started_at IS NULL THEN NULL
                                ELSE GREATEST(0.0, inp.now - cur.started_at) END,
        updated_at = inp.now, lease_expires_at = NULL, error_message = NULL,
        metrics = inp.metrics, metadata = inp.metadata, outcome_path = COALESCE(inp.path, o.outcome_path),
        content_sha256 = inp.sha, content_bytes = inp.nbytes, mime_type = inp.mime
    FROM cur JOIN inp ON inp.i = cur.i
    WHERE o.n = cur.n
    RETURNING o.*, inp.i AS req
),
a AS (
    UPDATE outcome_attempts a SET status = 'complete', error = NULL, ended_at = u.completed_at
    FROM u WHERE a.outcome_id = u.id AND a.lease_token = u.lease_token
),
mv AS (
    SELECT m.req, m.k, m.v FROM unnest(%(mreq)b::int8[], %(mnames)b::text[], %(mvalues)b::float8[]) AS m(req, k, v)
),
md AS (
    DELETE FROM outcome_metrics om USING u
    WHERE om.outcome_id = u.id AND NOT EXISTS (SELECT 1 FROM mv WHERE mv.req = u.req AND mv.k = om.name)
),
mi AS (
    INSERT INTO outcome_metrics (outcome_id, name, value)
    SELECT u.id, mv.k, mv.v FROM mv JOIN u ON u.req = mv.req
    ON CONFLICT (outcome_id, name) DO UPDATE SET value = EXCLUDED.value
)
SELECT u.*, r.name AS run_name, r.max_attempts AS max_attempts, p.name AS package_name
FROM u JOIN runs r ON r.id = u.run_id JOIN packages p ON p.id = u.package_id
"""

_SWEEP_SQL = """
WITH exp AS MATERIALIZED (
    SELECT o.n FROM outcomes o
    WHERE o.run_id = %(run)s AND o.status = 'generating' AND o.lease_expires_at <= %(now)s
      AND EXISTS (SELECT 1 FROM runs WHERE id = %(run)s AND state <> 'cancelled')
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
r AS (SELECT state, max_attempts FROM runs WHERE id = %(run)s),
t AS (
    SELECT o.n,
           CASE WHEN r.state = 'cancelled' THEN 'cancelled'
                WHEN o.attempts >= r.max_attempts THEN 'failed'
                ELSE 'pending' END AS target
    FROM outcomes o JOIN exp ON exp.n = o.n CROSS JOIN r
),
upd AS (
    UPDATE outcomes o
    SET status = t.target,
        available_at = CASE WHEN t.target = 'pending' THEN %(now)s ELSE o.available_at END,
        lease_expires_at = NULL,
        completed_at = CASE WHEN t.target = 'pending' THEN o.completed_at ELSE %(now)s END,
        duration_seconds = CASE
            WHEN t.target = 'pending' THEN o.duration_seconds
            WHEN o.started_at IS NULL THEN NULL
            ELSE GREATEST(0.0, %(now)s - o.started_at) END,
        error_message = CASE WHEN t.target = 'pending' THEN 'lease expired'
            ELSE 'lease expired after ' || o.attempts || ' attempts' END,
        updated_at = %(now)s
    FROM t WHERE o.n = t.n
    RETURNING o.n, o.id, o.item, o.package_id, o.attempts, o.lease_token, t.target
),
att AS (
    UPDATE outcome_attempts a SET status = 'failed', error = 'lease expired', ended_at = %(now)s
    FROM upd WHERE a.outcome_id = upd.id AND a.lease_token = upd.lease_token
)
SELECT upd.*, p.name AS package_name FROM upd JOIN packages p ON p.id = upd.package_id ORDER BY upd.n
"""

_ROLLUP_SQL = """
WITH d AS (
    DELETE FROM package_deltas
    WHERE id IN (SELECT id FROM package_deltas ORDER BY id LIMIT %(chunk)s)
    RETURNING *
),
c AS (
    SELECT package_id, SUM(total) AS total, SUM(pending) AS pending, SUM(generating) AS generating,
           SUM(complete) AS complete, SUM(failed) AS failed, SUM(cancelled) AS cancelled,
           SUM(duration_sum) AS duration_sum, SUM(duration_n) AS duration_n, SUM(lines_sum) AS lines_sum,
           SUM(quality_sum) AS quality_sum, SUM(quality_n) AS quality_n
    FROM d WHERE package_id IS NOT NULL GROUP BY package_id
),
hd AS (
    SELECT package_id, bucket, SUM(bucket_n) AS n FROM d
    WHERE package_id IS NOT NULL AND bucket IS NOT NULL GROUP BY package_id, bucket
),
u AS (
    UPDATE packages p SET
        total = p.total + c.total, pending = p.pending + c.pending, generating = p.generating + c.generating,
        complete = p.complete + c.complete, failed = p.failed + c.failed, cancelled = p.cancelled + c.cancelled,
        duration_sum = p.duration_sum + c.duration_sum, duration_n = p.duration_n + c.duration_n,
        lines_sum = p.lines_sum + c.lines_sum, quality_sum = p.quality_sum + c.quality_sum,
        quality_n = p.quality_n + c.quality_n,
        (hist_b, hist_n) = (
            SELECT COALESCE(array_agg(y.b ORDER BY y.b), '{}'), COALESCE(array_agg(y.n ORDER BY y.b), '{}')
            FROM (
                SELECT x.b, SUM(x.n)::int8 AS n FROM (
                    SELECT h.b, h.n FROM unnest(p.hist_b, p.hist_n) AS h(b, n)
                    UNION ALL
                    SELECT hd.bucket, hd.n FROM hd WHERE hd.package_id = p.id
                ) x GROUP BY x.b HAVING SUM(x.n) <> 0
            ) y
        )
    FROM c WHERE p.id = c.package_id
),
m AS (
    INSERT INTO outcome_minutes (run_id, minute, completed, failed, duration_sum, duration_n)
    SELECT run_id, minute, SUM(m_completed), SUM(m_failed), SUM(m_duration_sum), SUM(m_duration_n) FROM d
    WHERE minute IS NOT NULL AND run_id IN (SELECT id FROM runs)
    GROUP BY run_id, minute
    ON CONFLICT (run_id, minute) DO UPDATE SET
        completed = outcome_minutes.completed + EXCLUDED.completed,
        failed = outcome_minutes.failed + EXCLUDED.failed,
        duration_sum = outcome_minutes.duration_sum + EXCLUDED.duration_sum,
        duration_n = outcome_minutes.duration_n + EXCLUDED.duration_n
)
SELECT count(*) AS n FROM d
"""


def _transient(exc: BaseException) -> bool:
    """Errors worth retrying the whole transaction for: the database, not the request, is at fault."""
    return isinstance(exc, psycopg.OperationalError)


async def _configure(conn: Conn) -> None:
    # the hot statements are prepared (psycopg prepares after 5 uses); their plans do not depend on
    # parameter values, so skip re-planning every execution
    await conn.execute("SET plan_cache_mode = force_generic_plan")


_IN_TRANSACTION = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)
_RETURNED: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()
CHECK_IDLE = 1.0  # seconds idle after which a pooled connection is pinged before use


async def _note_return(conn: Conn) -> None:
    _RETURNED[conn] = time.monotonic()


async def _check(conn: Conn) -> None:
    """Ping a connection that sat idle (the server may have gone away); a connection returned moments
    ago is used as is — if it broke since, the call's transient-error retry takes another one."""
    if time.monotonic() - _RETURNED.get(conn, 0.0) > CHECK_IDLE:
        await AsyncConnectionPool.check_connection(conn)


async def _one(c: Conn, query: Any, params: Any = None) -> Row | None:
    cur = await c.execute(query, params)
    return await cur.fetchone()


async def _all(c: Conn, query: Any, params: Any = None) -> list[Row]:
    cur = await c.execute(query, params)
    return await cur.fetchall()


class _NeedSafe(Exception):
    """An atomic request failed after writing: re-run the batch with a savepoint per request."""


class _Batch:
    """What a group-commit batch has accumulated from the requests that succeeded so far."""

    __slots__ = ("deltas", "events", "swept")

    def __init__(self) -> None:
        self.deltas: dict[DeltaKey, list[float]] = {}
        self.events: list[tuple[str | None, str | None, str, str, float]] = []
        self.swept: dict[str, float] = {}


def _merge(into: dict[DeltaKey, list[float]], other: dict[DeltaKey, list[float]]) -> None:
    for key, values in other.items():
        row = into.get(key)
        if row is None:
            into[key] = list(values)
        else:
            for i, v in enumerate(values):
                row[i] += v


class _Tx:
    """One request inside a batch: its connection (inside a savepoint), its counter deltas and events."""

    def __init__(self, conn: Conn, batch: _Batch) -> None:
        self.conn = conn
        self.batch = batch
        self.deltas: dict[DeltaKey, list[float]] = {}
        self.events: list[tuple[str | None, str | None, str, str, float]] = []
        self.taken: dict[DeltaKey, list[float]] = {}
        self.wrote = False  # set by atomic requests once they changed a row

    async def one(self, query: Any, params: Any = None) -> Row | None:
        return await _one(self.conn, query, params)

    async def all(self, query: Any, params: Any = None) -> list[Row]:
        return await _all(self.conn, query, params)

    async def execute(self, query: Any, params: Any = None) -> None:
        await self.conn.execute(query, params)

    def event(
        self, run_id: str | None, outcome_id: str | None, kind: str, data: dict[str, Any], now: float
    ) -> None:
        self.events.append((run_id, outcome_id, kind, R.dumps(stamped(kind, data)), float(now)))

    def add(self, key: DeltaKey, **values: float) -> None:
        row = self.deltas.get(key)
        if row is None:
            row = self.deltas[key] = [0.0] * len(DELTA_COLUMNS)
        for name, v in values.items():
            row[_COL[name]] += v

    def move(self, run_id: str, package_id: int, old: Status, new: Status, n: int = 1) -> None:
        if old == new or n == 0:
            return
        self.add((run_id, package_id, None, None), **{old: -n, new: n})

    def contribution(
        self, run_id: str, package_id: int, metrics: dict[str, Any], duration: float | None, sign: int
    ) -> None:
        contrib = R.contribution(metrics, duration)
        self.add((run_id, package_id, None, None), **{k: sign * contrib[k] for k in _COUNTER_COLUMNS})
        if duration is not None:
            self.add((run_id, package_id, R.duration_bucket(duration), None), bucket_n=sign)

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

    async def flush(self) -> None:
        """Write the batch's and this request's deltas now, before reading counters in this transaction.

        The batch's part is remembered: if this request rolls back, it goes back to the batch."""
        pending = dict(self.batch.deltas)
        _merge(self.taken, self.batch.deltas)
        _merge(pending, self.deltas)
        self.batch.deltas = {}
        self.deltas = {}
        await _write_deltas(self.conn, pending)

    def succeeded(self) -> None:
        _merge(self.batch.deltas, self.deltas)
        self.batch.events.extend(self.events)

    def failed(self) -> None:
        _merge(self.batch.deltas, self.taken)


async def _write_deltas(c: Conn, deltas: dict[DeltaKey, list[float]]) -> None:
    rows = [
        [*k, *(round(x) if integral else float(x) for x, integral in zip(v, _DELTA_INT, strict=True))]
        for k, v in deltas.items()
        if any(v)
    ]
    if not rows:
        return
    try:
        payload = json.dumps(rows, allow_nan=False)
    except ValueError:  # a sum overflowed to infinity: JSON cannot carry it, float8 arrays can
        await c.execute(_DELTA_INSERT_ARRAYS, [list(col) for col in zip(*rows, strict=True)])
        return
    await c.execute(_DELTA_INSERT, (payload,))


@dataclass(frozen=True, slots=True)
class _ClaimArgs:
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
class _CompleteArgs:
    outcome_id: str
    lease_token: str
    report: Report
    now: float
    metrics: str
    metadata: str
    values: list[tuple[str, float]]


class _Request:
    __slots__ = (
        "atomic",
        "done",
        "error",
        "fn",
        "handled",
        "journal",
        "key",
        "merge",
        "principal",
        "rest",
        "tried",
        "value",
    )

    def __init__(
        self,
        fn: Callable[[_Tx], Awaitable[Any]],
        atomic: bool,
        merge: _ClaimArgs | _CompleteArgs | None = None,
        journal: TypeAdapter[Any] | None = None,
    ) -> None:
        self.fn = fn
        self.principal = current_principal.get()  # who queued it: its events record them
        self.atomic = atomic
        self.merge = merge  # set-based fast path: the batch merges these into one statement per kind
        # writes that must not run twice (see _recover_answers) journal their answer under `key`
        self.journal = journal
        self.key = uuid.uuid4().hex if journal is not None else ""
        self.tried = False
        self.done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.handled = False  # answered by the merged statement
        self.rest: Callable[[_Tx], Awaitable[Any]] | None = None  # what is left to do one by one


def _claims_from(tx: _Tx, run_id: str, worker: str, rows: Sequence[Row], now: float) -> list[Claim]:
    """Claims (with their events and counter moves) from claim-statement rows of one request."""
    claims: list[Claim] = []
    per_package: dict[int, int] = defaultdict(int)
    for o in rows:
        per_package[int(o["pk_id"])] += 1
        tx.event(
            run_id,
            o["id"],
            "claimed",
            {"package": o["package_name"], "item": o["item"], "worker": worker, "attempt": o["attempts"]},
            now,
        )
        claims.append(_claim(o))
    for pid, n in per_package.items():
        tx.move(run_id, pid, "pending", "generating", n)
    if rows:
        tx.wrote = True
    return claims


def _claim(o: Row) -> Claim:
    return Claim(
        outcome_id=o["id"],
        run=o["run_name"],
        package=o["package_name"],
        package_description=o["package_description"],
        item=o["item"],
        attempt=int(o["attempts"]),
        lease_token=o["lease_token"],
        lease_expires_at=float(o["lease_expires_at"]),
        outcome_type=o["outcome_type"],
        specifications=R.loads(o["specifications"]),
        outcome_path=o["outcome_path"],
    )


_RECOVER_CLAIMS_SQL = (
    "SELECT o.id, o.item, o.attempts, o.outcome_type, o.specifications, o.outcome_path, o.lease_token,"
    " o.lease_expires_at, p.name AS package_name, p.description AS package_description, r.name AS run_name"
    " FROM outcomes o JOIN packages p ON p.id = o.package_id JOIN runs r ON r.id = o.run_id"
    # the run's leased rows only (partial index outcomes_leased), not a scan of every outcome
    " WHERE o.run_id = ANY(%s::text[]) AND o.status = 'generating' AND o.lease_token = ANY(%s::text[])"
    " ORDER BY o.claim_seq"
)


async def _recover_claims(conn: Conn, batch: list[_Request]) -> None:
    """Before a batch is re-run after a transient error: claims an earlier attempt committed although
    its answer was lost (the connection died after COMMIT) are still leased under the tokens that
    attempt handed out. Those leases go to their request now — their events and counters were
    committed with them — instead of staying orphaned until they expire."""
    retried = [(req, req.merge) for req in batch if isinstance(req.merge, _ClaimArgs) and req.merge.issued]
    if not retried:
        return
    runs = sorted({a.run_id for _, a in retried})
    tokens = [t for _, a in retried for t in a.issued]
    by_token = {r["lease_token"]: r for r in await _all(conn, _RECOVER_CLAIMS_SQL, (runs, tokens))}
    for req, a in retried:
        got = [_claim(by_token[t]) for t in a.issued if t in by_token]
        if not got:
            continue
        log.info("recovered %d claim(s) committed by an attempt whose answer was lost", len(got))
        if len(got) >= a.limit:
            req.value = ClaimBatch(got)
            req.handled = True
        else:
            req.rest = _claim_op(a, got)


_RECOVER_ANSWERS_SQL = "SELECT key, answer FROM write_answers WHERE key = ANY(%s::text[])"


async def _recover_answers(conn: Conn, batch: list[_Request]) -> None:
    """Before a batch is re-run after a transient error: a journaled write whose earlier attempt
    committed (the connection died before its answer came back) gets the answer that attempt
    journaled with it, instead of running again — which would log a second integration event,
    answer `created: false` for the run or outcome it created, or call its own lease lost."""
    keys = [req.key for req in batch if req.journal is not None and req.tried]
    if not keys:
        return
    found = {r["key"]: r["answer"] for r in await _all(conn, _RECOVER_ANSWERS_SQL, (keys,))}
    for req in batch:
        answer = found.get(req.key) if req.journal is not None else None
        if answer is not None:
            assert req.journal is not None
            log.info("recovered the answer of a write committed by an attempt whose answer was lost")
            req.value = req.journal.validate_json(answer)
            req.handled = True


async def _journal_answers(conn: Conn, batch: list[_Request]) -> None:
    rows = [
        (req.key, req.journal.dump_json(req.value).decode())
        for req in batch
        if req.journal is not None and req.error is None and not req.handled
    ]
    if rows:
        await conn.execute(
            "INSERT INTO write_answers (key, answer, created_at)"
            " SELECT k, a, %s FROM unnest(%s::text[], %s::text[]) AS u(k, a)",
            (time.time(), [k for k, _ in rows], [a for _, a in rows]),
        )


def _claim_params(
    run_id: str, package: str | None, exhausted: list[int], cutoff: float, slots: list[tuple[str, float, str]]
) -> dict[str, Any]:
    """Parameters of _CLAIM_SQL: one (worker, now, token) slot per item wanted, handed out by rank."""
    return {
        "run": run_id,
        "package": package,
        "exhausted": exhausted,
        "now": cutoff,
        "limit": len(slots),
        "workers": [w for w, _, _ in slots],
        "nows": [float(t) for _, t, _ in slots],
        "tokens": [k for _, _, k in slots],
    }


class PostgresStore:
    """See the module docstring. Open with `await PostgresStore.open(url)`."""

    def __init__(self, url: str, pool: AsyncConnectionPool[Conn]) -> None:
        self._url = url
        self._secret = url_password(url) or ""
        self.url_for_display = redact_url(url)
        self._pool = pool
        self._queue: list[_Request] = []
        self._leading = False
        self._changed = anyio.Event()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._last_notify = 0.0
        self._notify_owed = False

    # ---- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        if url.startswith("postgresql+psycopg://"):
            url = "postgresql://" + url[len("postgresql+psycopg://") :]
        from matrix_mcp.store.postgres_connect import check_connect

        await check_connect(url, url_password(url) or "")  # a refusal at once, an unreachable server briefly
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            open=False,
            timeout=POOL_WAIT,
            kwargs={"autocommit": True, "row_factory": dict_row},
            check=_check,
            reset=_note_return,
            configure=_configure,
            reconnect_timeout=30.0,
            name="matrix",
        )
        store = cls(url, pool)
        try:
            await pool.open(wait=True, timeout=10.0)
            await store._migrate()
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, psycopg.Error):
                raise Unavailable(store._unavailable_text(exc)) from None
            raise
        store._tasks.append(asyncio.create_task(store._roller(), name="matrix-pg-roller"))
        return store

    @property
    def hooks(self) -> PostgresHooks:
        """Subscriptions and deliveries for events out (store/hooks.py)."""
        from matrix_mcp.store.postgres_hooks import PostgresHooks

        return PostgresHooks(self)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await self._pool.close()

    async def _migrate(self) -> None:
        async with self._pool.connection() as c, c.transaction():
            await c.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await c.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version integer PRIMARY KEY, applied_at double precision NOT NULL)"
            )
            done = {r["version"] for r in await _all(c, "SELECT version FROM schema_migrations")}
            for version, script in MIGRATIONS:
                if version in done:
                    continue
                for statement in (s.strip() for s in script.split(";\n")):
                    if statement:
                        await c.execute(statement.encode())
                await c.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                    (version, time.time()),
                )
                log.info("applied migration %s", version)

    def _unavailable_text(self, exc: BaseException) -> str:
        detail = redact_text(
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, (self._secret,)
        )
        return f"the PostgreSQL database is unavailable ({detail}); retry the call"

    # ---- plumbing -------------------------------------------------------------------------------

    async def _with_retry(self, attempt_fn: Callable[[], Awaitable[T]]) -> T:
        """Run attempt_fn, retrying transient database errors with jittered backoff for a short budget."""
        deadline = time.monotonic() + RETRY_BUDGET
        delay = 0.02
        while True:
            if self._closed:
                raise Unavailable("the store is closed")
            try:
                return await attempt_fn()
            except psycopg.Error as exc:
                if not _transient(exc):
                    raise StoreError(f"database error: {redact_text(str(exc), (self._secret,))}") from None
                if time.monotonic() + delay > deadline:
                    raise Unavailable(self._unavailable_text(exc)) from None
                log.info("transient database error, retrying: %s", redact_text(str(exc), (self._secret,)))
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)

    async def _write(
        self,
        fn: Callable[[_Tx], Awaitable[T]],
        atomic: bool = False,
        merge: _ClaimArgs | _CompleteArgs | None = None,
        journal: TypeAdapter[T] | None = None,
    ) -> T:
        """Run `fn` in the next group-commit batch; its effects commit with the batch or not at all.

        atomic=True: fn either raises before changing any row or sets `tx.wrote` after its only write,
        so it runs without a SAVEPOINT (two round trips fewer); if it fails after writing, the batch
        is rolled back and re-run with a savepoint around every request.

        journal: for writes that must not run twice — the answer is stored with the batch, and a
        retry after a lost answer returns it instead of running `fn` again."""
        if self._closed:
            raise Unavailable("the store is closed")
        request = _Request(fn, atomic, merge, journal)
        self._queue.append(request)
        if not self._leading:
            self._leading = True
            try:
                with anyio.CancelScope(shield=True):
                    while self._queue:
                        batch, self._queue = self._queue, []
                        try:
                            await self._with_retry(functools.partial(self._run_batch, batch))
                        except StoreError as exc:
                            for req in batch:
                                req.error = exc
                        except BaseException as exc:  # pragma: no cover - defensive
                            for req in batch:
                                req.error = Unavailable(self._unavailable_text(exc))
                        for req in batch:
                            req.done.set()
                        self._wake()
            finally:
                self._leading = False
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.value  # type: ignore[no-any-return]

    async def _run_batch(self, batch: list[_Request]) -> None:
        try:
            if all(req.atomic for req in batch):
                await self._run_batch_pipelined(batch)
            else:
                await self._run_batch_once(batch, safe=False)
        except _NeedSafe:
            await self._run_batch_once(batch, safe=True)

    async def _run_batch_pipelined(self, batch: list[_Request]) -> None:
        """A batch of atomic requests (claims, completes, heartbeats) in pipeline mode: BEGIN goes out
        with the first statement, the deltas, the events and COMMIT with one Sync, so a lone claim or
        complete costs two round trips. A database error rolls the whole batch back (non-transient
        ones re-run it with a savepoint per request, outside pipeline mode)."""
        async with self._pool.connection() as conn:
            try:
                async with conn.pipeline():
                    await conn.execute("BEGIN")
                    notify = await self._batch_body(conn, batch, safe=False, pipelined=True)
                    await conn.execute("COMMIT")
            except BaseException:
                if conn.info.transaction_status in _IN_TRANSACTION:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute("ROLLBACK")
                raise
        self._after_commit(notify)

    async def _run_batch_once(self, batch: list[_Request], safe: bool) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            notify = await self._batch_body(conn, batch, safe, pipelined=False)
        self._after_commit(notify)

    async def _batch_body(
        self, conn: Conn, batch: list[_Request], safe: bool, pipelined: bool
    ) -> bool | None:
        """Run the batch's requests and write its deltas and events; returns None when it wrote no
        event, else whether its events statement sent the NOTIFY."""
        state = _Batch()
        for req in batch:
            req.error = None
            req.value = None
            req.handled = False
            req.rest = None
        await _recover_claims(conn, batch)
        await _recover_answers(conn, batch)
        for req in batch:
            req.tried = True
        if not safe and any(req.merge is not None for req in batch):
            try:
                await _merged(conn, state, batch)
            except psycopg.Error as exc:
                if _transient(exc):
                    raise
                raise _NeedSafe from exc
            except Exception as exc:
                raise _NeedSafe from exc
        for req in batch:
            if req.handled:
                continue
            tx = _Tx(conn, state)
            if req.atomic and not safe:
                try:
                    with acting_as(req.principal):
                        req.value = await (req.rest or req.fn)(tx)
                except psycopg.Error as exc:
                    if _transient(exc):
                        raise
                    raise _NeedSafe from exc  # the transaction is aborted: redo with savepoints
                except Exception as exc:
                    if tx.wrote:
                        raise _NeedSafe from exc
                    tx.failed()
                    req.error = exc
                else:
                    tx.succeeded()
                continue
            try:
                async with conn.transaction():
                    with acting_as(req.principal):
                        req.value = await (req.rest or req.fn)(tx)
            except psycopg.Error as exc:
                if _transient(exc):
                    raise
                tx.failed()
                req.error = StoreError(f"database error: {redact_text(str(exc), (self._secret,))}")
            except Exception as exc:
                tx.failed()
                req.error = exc
            else:
                tx.succeeded()
        if not state.events:
            async with contextlib.nullcontext() if pipelined else conn.pipeline():
                await _journal_answers(conn, batch)
                await _write_deltas(conn, state.deltas)
            return None
        cols = list(zip(*state.events, strict=True))
        notify = time.monotonic() - self._last_notify >= NOTIFY_DEBOUNCE
        async with contextlib.nullcontext() if pipelined else conn.pipeline():
            await _journal_answers(conn, batch)
            await _write_deltas(conn, state.deltas)
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))
            await conn.execute(
                "WITH ins AS (INSERT INTO events (run_id, outcome_id, kind, data, created_at)"
                " SELECT r, o, k, d, t FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[],"
                " %b::float8[]) WITH ORDINALITY AS u(r, o, k, d, t, i) ORDER BY i RETURNING seq)"
                " SELECT CASE WHEN %s THEN pg_notify(%s, max(seq)::text) END FROM ins",
                [*(list(c) for c in cols), notify, NOTIFY_CHANNEL],
            )
        return notify

    def _after_commit(self, notify: bool | None) -> None:
        if notify is None:
            return
        if notify:
            self._last_notify = time.monotonic()
        elif not self._notify_owed:
            self._notify_owed = True
            self._tasks.append(asyncio.create_task(self._trailing_notify()))

    async def _trailing_notify(self) -> None:
        """A debounced NOTIFY skipped during a burst is sent once the burst window has passed."""
        try:
            await asyncio.sleep(NOTIFY_DEBOUNCE)
            self._notify_owed = False
            self._last_notify = time.monotonic()
            async with self._pool.connection(timeout=POOL_WAIT) as c:
                await c.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
        except Exception:  # the poll fallback covers a lost notification
            self._notify_owed = False
        finally:
            task = asyncio.current_task()
            if task in self._tasks:
                self._tasks.remove(task)  # type: ignore[arg-type]

    async def _read(self, fn: Callable[[Conn], Awaitable[T]], snapshot: bool = False) -> T:
        """Run fn on a pooled connection: autocommit (one statement = one snapshot) or, with
        snapshot=True, inside a REPEATABLE READ READ ONLY transaction."""

        async def attempt() -> T:
            async with self._pool.connection() as conn:
                if not snapshot:
                    return await fn(conn)
                await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    value = await fn(conn)
                except BaseException:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")
                return value

        return await self._with_retry(attempt)

    def _wake(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    # ---- background: counter roll-up and LISTEN ------------------------------------------------

    async def _roller(self) -> None:
        pruned = time.monotonic()
        while not self._closed:
            await asyncio.sleep(ROLL_INTERVAL * (0.75 + random.random() / 2))
            try:
                await self.roll_up()
                if time.monotonic() - pruned >= ANSWERS_PRUNE_INTERVAL:
                    await self.prune_answers(time.time() - ANSWERS_KEEP)
                    pruned = time.monotonic()
            except Exception as exc:  # retried next round; the deltas stay readable meanwhile
                log.debug("counter roll-up skipped: %s", redact_text(str(exc), (self._secret,)))

    async def prune_answers(self, before: float) -> int:
        """Drop journaled write answers (see _recover_answers) written before `before`; returns how many."""
        async with self._pool.connection(timeout=POOL_WAIT) as c:
            cur = await c.execute("DELETE FROM write_answers WHERE created_at < %s", (before,))
            return cur.rowcount

    async def roll_up(self) -> int:
        """Fold the appended counter deltas into the package rows; returns how many deltas were folded.
        At most one roller runs at a time across all processes (the others skip)."""
        folded = 0
        async with self._pool.connection(timeout=POOL_WAIT) as c:
            while True:
                async with c.transaction():
                    got = await _one(c, "SELECT pg_try_advisory_xact_lock(%s) AS ok", (ROLLUP_LOCK,))
                    if not got or not got["ok"]:
                        return folded
                    row = await _one(c, _ROLLUP_SQL, {"chunk": ROLL_CHUNK})
                    n = int(row["n"]) if row else 0
                folded += n
                if n < ROLL_CHUNK:
                    return folded

    async def _listen(self) -> None:
        delay = 0.2
        while not self._closed:
            try:
                conn = await AsyncConnection.connect(self._url, autocommit=True, connect_timeout=3)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                    delay = 0.2
                    self._wake()  # anything missed while not listening is picked up by the poll
                    async for _ in conn.notifies():
                        self._wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("LISTEN connection lost: %s", redact_text(str(exc), (self._secret,)))
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    # ---- runs and planning ----------------------------------------------------------------------

    async def plan(
        self, name: str, goal: str | None, policy: RunPolicy, packages: Sequence[NewPackage], now: float
    ) -> PlanResult:
        async def op(tx: _Tx) -> PlanResult:
            row = await tx.one(
                "SELECT id, state, outcome_type FROM runs WHERE name = %s FOR NO KEY UPDATE", (name,)
            )
            created = row is None
            if row is None:
                run_id = str(uuid.uuid4())
                inserted = await tx.one(
                    "INSERT INTO runs (id, name, goal, outcome_type, lease_seconds, max_attempts,"
                    " backoff_seconds, backoff_cap_seconds, outcome_schema, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING"
                    " RETURNING id",
                    (
                        run_id,
                        name,
                        goal,
                        policy.outcome_type,
                        policy.lease_seconds,
                        policy.max_attempts,
                        policy.backoff_seconds,
                        policy.backoff_cap_seconds,
                        R.spec_dumps(policy.outcome_schema),
                        now,
                        now,
                    ),
                )
                if inserted is None:  # another process created it just now
                    row = await tx.one(
                        "SELECT id, state, outcome_type FROM runs WHERE name = %s FOR NO KEY UPDATE", (name,)
                    )
                    created = False
                outcome_type = policy.outcome_type
            if row is not None:
                run_id = row["id"]
                outcome_type = row["outcome_type"]
                if row["state"] == "cancelled" and any(p.items for p in packages):
                    raise Conflict(f"run '{name}' is cancelled; plan a new run", field="name")
            names = [p.name for p in packages]
            existing = {
                r["name"]: int(r["id"])
                for r in await tx.all(
                    "SELECT id, name FROM packages WHERE run_id = %s AND name = ANY(%b::text[])",
                    (run_id, names),
                )
            }
            added_packages = [p.name for p in packages if p.name not in existing]
            ids = dict(existing)
            if added_packages:
                top = await tx.one(
                    "SELECT COALESCE(MAX(position) + 1, 0) AS pos FROM packages WHERE run_id = %s", (run_id,)
                )
                first = int(top["pos"]) if top else 0
                descriptions = {p.name: p.description for p in packages}
                for r in await tx.all(
                    "INSERT INTO packages (run_id, name, description, position)"
                    " SELECT %s, n, d, %s + i - 1 FROM unnest(%b::text[], %b::text[]) WITH ORDINALITY AS u(n, d, i)"
                    " RETURNING id, name",
                    (run_id, first, added_packages, [descriptions[n] for n in added_packages]),
                ):
                    ids[r["name"]] = int(r["id"])
            starts: dict[int, int] = {}
            if existing:
                for r in await tx.all(
                    "SELECT package_id, MAX(position) + 1 AS pos FROM outcomes"
                    " WHERE package_id = ANY(%b::bigint[]) GROUP BY package_id",
                    (list(existing.values()),),
                ):
                    starts[int(r["package_id"])] = int(r["pos"])
            pids: list[int] = []
            items: list[str] = []
            positions: list[int] = []
            specs: list[str | None] = []
            for pkg in packages:
                pid = ids[pkg.name]
                base = starts.get(pid, 0)
                for i, item in enumerate(pkg.items):
                    pids.append(pid)
                    items.append(item.name)
                    positions.append(base + i)
                    specs.append(R.spec_dumps(item.specifications))
            added_items = 0
            if items:
                for r in await tx.all(
                    "WITH ins AS (INSERT INTO outcomes (id, run_id, package_id, item, position, status,"
                    " outcome_type, specifications, available_at, created_at, updated_at)"
                    " SELECT gen_random_uuid()::text, %(run)s, u.pid, u.item, u.pos, 'pending', %(ot)s, u.spec,"
                    " %(now)s, %(now)s, %(now)s"
                    " FROM unnest(%(pids)b::bigint[], %(items)b::text[], %(pos)b::int[], %(specs)b::text[])"
                    " WITH ORDINALITY AS u(pid, item, pos, spec, i) ORDER BY u.i"
                    " ON CONFLICT (package_id, item) DO NOTHING RETURNING package_id)"
                    " SELECT package_id, count(*) AS n FROM ins GROUP BY package_id",
                    {
                        "run": run_id,
                        "ot": outcome_type,
                        "now": now,
                        "pids": pids,
                        "items": items,
                        "pos": positions,
                        "specs": specs,
                    },
                ):
                    n = int(r["n"])
                    tx.add((run_id, int(r["package_id"]), None, None), total=n, pending=n)
                    added_items += n
            if created or added_items or added_packages:
                await tx.execute("UPDATE runs SET updated_at = %s WHERE id = %s", (now, run_id))
                tx.event(
                    run_id,
                    None,
                    "run_planned" if created else "run_extended",
                    {"packages": added_packages, "items": added_items},
                    now,
                )
            await tx.flush()
            run = await _run(tx.conn, run_id)
            return PlanResult(
                run=run,
                created=created,
                packages=run.packages,
                items=run.counts.total,
                added_packages=added_packages,
                added_items=added_items,
            )

        return await self._write(op, journal=_PLAN_ANSWER)

    async def get_run(self, ref: str) -> Run:
        async def op(c: Conn) -> Run:
            row = await _one(
                c,
                _ONE_RUN_SQL
                + " WHERE r.id = (SELECT id FROM runs WHERE id = %s OR name = %s ORDER BY (id = %s) DESC LIMIT 1)",
                (ref, ref, ref),
            )
            if row is None:
                raise NotFound(f"unknown run '{ref}'", field="run")
            return R.run_from(row)

        return await self._read(op)

    async def list_runs(self) -> list[Run]:
        async def op(c: Conn) -> list[Run]:
            rows = await _all(c, _RUN_SELECT + " GROUP BY r.id ORDER BY r.created_at, r.name")
            return [R.run_from(r) for r in rows]

        return await self._read(op)

    async def control_run(self, run_id: str, action: RunAction, now: float) -> Run:
        async def op(tx: _Tx) -> Run:
            state = await tx.one("SELECT state FROM runs WHERE id = %s FOR NO KEY UPDATE", (run_id,))
            if state is None:
                raise NotFound(f"unknown run '{run_id}'", field="run")
            current = state["state"]
            if action == "pause":
                if current == "cancelled":
                    raise Conflict("the run is cancelled; it cannot be paused", field="action")
                target = "paused"
            elif action == "resume":
                if current == "cancelled":
                    raise Conflict("the run is cancelled; cancellation is final", field="action")
                target = "active"
            else:
                target = "cancelled"
            if target != current:
                await tx.execute(
                    "UPDATE runs SET state = %s, updated_at = %s WHERE id = %s", (target, now, run_id)
                )
                extra: dict[str, Any] = {}
                if target == "cancelled":
                    extra["cancelled_items"] = await _cancel_pending(tx, run_id, now)
                tx.event(
                    run_id, None, f"run_{action}d" if action != "cancel" else "run_cancelled", extra, now
                )
            await tx.flush()
            return await _run(tx.conn, run_id)

        return await self._write(op, journal=_RUN_ANSWER)

    # ---- the work loop --------------------------------------------------------------------------

    async def claim(
        self,
        run_id: str,
        worker: str,
        limit: int,
        package: str | None,
        now: float,
        token_factory: Callable[[], str],
    ) -> ClaimBatch:
        args = _ClaimArgs(run_id, worker, limit, package, now, token_factory)
        return await self._write(_claim_op(args, []), atomic=True, merge=args)

    async def heartbeat(self, leases: Sequence[LeaseRef], now: float) -> HeartbeatResult:
        async def op(tx: _Tx) -> HeartbeatResult:
            rows = await tx.all(
                "UPDATE outcomes o SET lease_expires_at = %(now)s + r.lease_seconds, updated_at = %(now)s"
                " FROM runs r, unnest(%(ids)b::text[], %(tokens)b::text[]) AS l(id, tok)"
                " WHERE o.id = l.id AND o.lease_token = l.tok AND o.status = 'generating' AND r.id = o.run_id"
                " RETURNING o.id, o.lease_token, o.lease_expires_at, r.state",
                {
                    "now": now,
                    "ids": [lease.outcome_id for lease in leases],
                    "tokens": [lease.lease_token for lease in leases],
                },
            )
            tx.wrote = bool(rows)
            held = {(r["id"], r["lease_token"]): r for r in rows}
            extended: list[LeaseState] = []
            lost: list[str] = []
            cancelled: list[str] = []
            for lease in leases:
                r = held.get((lease.outcome_id, lease.lease_token))
                if r is None:
                    lost.append(lease.outcome_id)
                    continue
                if r["state"] == "cancelled":
                    cancelled.append(lease.outcome_id)
                extended.append(
                    LeaseState(outcome_id=lease.outcome_id, lease_expires_at=ts(r["lease_expires_at"]))  # type: ignore[arg-type]
                )
            return HeartbeatResult(extended=extended, lost=lost, cancelled=cancelled)

        return await self._write(op, atomic=True)

    async def complete(
        self,
        outcome_id: str,
        lease_token: str,
        report: Report,
        now: float,
        next_claim: NextClaim | None = None,
    ) -> Reported:
        metrics, metadata = R.dumps(report.metrics), R.dumps(report.metadata)
        values = R.numeric_metrics(report.metrics)
        params = {
            "now": now,
            "metrics": metrics,
            "metadata": metadata,
            "path": report.outcome_path,
            "sha": report.content_sha256,
            "bytes": report.content_bytes,
            "mime": report.mime_type,
            "id": outcome_id,
            "token": lease_token,
            "names": [k for k, _ in values],
            "values": [v for _, v in values],
        }

        async def op(tx: _Tx) -> Outcome:
            row = await tx.one(_COMPLETE_SQL, params)
            if row is None:
                raise NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")
            if not row["done"]:
                if row["lease_token"] != lease_token:
                    raise StaleLease(R.stale_token_message(row), field="lease_token")
                if row["status"] == "complete":
                    if R.same_report(row, report):
                        return R.outcome_from(row)
                    raise Conflict(
                        "the item is already complete with a different report; repeat the identical report or "
                        "use update_outcome_status",
                        field="outcome_id",
                    )
                raise StaleLease(R.lost_lease_message(row), field="lease_token")
            tx.wrote = True
            duration = row["new_duration"]
            run_id, pid = row["run_id"], int(row["package_id"])
            tx.move(run_id, pid, "generating", "complete")
            tx.contribution(run_id, pid, report.metrics, duration, +1)
            tx.minute(run_id, now, completed=1, duration=duration)
            tx.event(
                run_id,
                outcome_id,
                "completed",
                {"package": row["package_name"], "item": row["item"], "duration": duration},
                now,
            )
            row.update(
                status="complete",
                completed_at=now,
                duration_seconds=duration,
                updated_at=now,
                lease_expires_at=None,
                error_message=None,
                metrics=metrics,
                metadata=metadata,
                outcome_path=report.outcome_path if report.outcome_path is not None else row["outcome_path"],
                content_sha256=report.content_sha256,
                content_bytes=report.content_bytes,
                mime_type=report.mime_type,
            )
            return R.outcome_from(row)

        if next_claim is None:
            merge = _CompleteArgs(outcome_id, lease_token, report, now, metrics, metadata, values)
            return Reported(await self._write(op, atomic=True, merge=merge))
        claim = next_claim

        async def then(tx: _Tx) -> Reported:
            outcome = await op(tx)  # sets tx.wrote only when this report completed the item
            return Reported(outcome, await _next_claims(tx, outcome, lease_token, claim, now, tx.wrote))

        # journaled: a retry after a lost answer returns these leases instead of taking more
        return await self._write(then, atomic=True, journal=_REPORTED_ANSWER)

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
        async def op(tx: _Tx) -> Reported:
            row = await _leased_row(tx, outcome_id, lease_token)
            if row["status"] != "generating":
                attempt = await tx.one(
                    "SELECT status, error FROM outcome_attempts WHERE outcome_id = %s AND lease_token = %s",
                    (outcome_id, lease_token),
                )
                if attempt is not None and attempt["status"] == "failed" and attempt["error"] == error:
                    repeated = R.outcome_from(row)  # the identical report, repeated
                    return Reported(
                        repeated, await _next_claims(tx, repeated, lease_token, next_claim, now, False)
                    )
                raise StaleLease(R.lost_lease_message(row), field="lease_token")
            run_id, pid = row["run_id"], int(row["package_id"])
            attempts = int(row["attempts"])
            await _end_attempt(tx, outcome_id, lease_token, "failed", error, now)
            if retryable and attempts < int(row["max_attempts"]) and row["run_state"] != "cancelled":
                delay = max(0.0, float(backoff(attempts)))
                await tx.execute(
                    "UPDATE outcomes SET status = 'pending', available_at = %s, lease_expires_at = NULL,"
                    " error_message = %s, updated_at = %s WHERE n = %s",
                    (now + delay, error, now, row["n"]),
                )
                tx.move(run_id, pid, "generating", "pending")
                tx.event(
                    run_id,
                    outcome_id,
                    "retry_scheduled",
                    {
                        "package": row["package_name"],
                        "item": row["item"],
                        "attempt": attempts,
                        "delay": round(delay, 3),
                        "error": error[:500],
                    },
                    now,
                )
                row.update(
                    status="pending",
                    available_at=now + delay,
                    lease_expires_at=None,
                    error_message=error,
                    updated_at=now,
                )
            else:
                target: Status = "cancelled" if row["run_state"] == "cancelled" and retryable else "failed"
                duration = max(0.0, now - row["started_at"]) if row["started_at"] is not None else None
                await tx.execute(
                    "UPDATE outcomes SET status = %s, completed_at = %s, duration_seconds = %s,"
                    " lease_expires_at = NULL, error_message = %s, updated_at = %s WHERE n = %s",
                    (target, now, duration, error, now, row["n"]),
                )
                tx.move(run_id, pid, "generating", target)
                if target == "failed":
                    tx.minute(run_id, now, failed=1)
                tx.event(
                    run_id,
                    outcome_id,
                    target,
                    {
                        "package": row["package_name"],
                        "item": row["item"],
                        "attempt": attempts,
                        "error": error[:500],
                    },
                    now,
                )
                row.update(
                    status=target,
                    completed_at=now,
                    duration_seconds=duration,
                    lease_expires_at=None,
                    error_message=error,
                    updated_at=now,
                )
            outcome = R.outcome_from(row)
            return Reported(outcome, await _next_claims(tx, outcome, lease_token, next_claim, now, True))

        return await self._write(op, journal=_REPORTED_ANSWER)

    async def retry(
        self, run_id: str, package: str | None, outcome_ids: Sequence[str] | None, now: float
    ) -> list[str]:
        async def op(tx: _Tx) -> list[str]:
            state = await tx.one("SELECT state FROM runs WHERE id = %s", (run_id,))
            if state is None:
                raise NotFound(f"unknown run '{run_id}'", field="run")
            if state["state"] == "cancelled":
                raise Conflict("the run is cancelled; plan a new run to redo its items", field="run")
            pid: int | None = None
            if package is not None:
                prow = await tx.one(
                    "SELECT id FROM packages WHERE run_id = %s AND name = %s", (run_id, package)
                )
                if prow is None:
                    raise NotFound(f"unknown package '{package}' in this run", field="package")
                pid = int(prow["id"])
            rows = await tx.all(
                "UPDATE outcomes SET status = 'pending', attempts = 0, available_at = %(now)s, completed_at = NULL,"
                " duration_seconds = NULL, updated_at = %(now)s"
                " WHERE run_id = %(run)s AND status = 'failed'"
                " AND (%(pid)s::bigint IS NULL OR package_id = %(pid)s::bigint)"
                " AND (%(ids)b::text[] IS NULL OR id = ANY(%(ids)b::text[]))"
                " RETURNING n, id, package_id",
                {
                    "now": now,
                    "run": run_id,
                    "pid": pid,
                    "ids": list(outcome_ids) if outcome_ids is not None else None,
                },
            )
            rows.sort(key=lambda r: int(r["n"]))
            per_package: dict[int, int] = defaultdict(int)
            for r in rows:
                per_package[int(r["package_id"])] += 1
            for p, n in per_package.items():
                tx.move(run_id, p, "failed", "pending", n)
            ids = [r["id"] for r in rows]
            if ids:
                tx.event(run_id, None, "requeued", {"count": len(ids), "outcome_ids": ids[:100]}, now)
            return ids

        return await self._write(op, journal=_IDS_ANSWER)

    # ---- the seed's tracking API ----------------------------------------------------------------

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
    ) -> tuple[Outcome, bool]:
        async def op(tx: _Tx) -> tuple[Outcome, bool]:
            run = await tx.one(
                "SELECT outcome_type, state FROM runs WHERE id = %s FOR NO KEY UPDATE", (run_id,)
            )
            if run is None:
                raise NotFound(f"unknown run '{run_id}'", field="run")
            prow = await tx.one("SELECT id FROM packages WHERE run_id = %s AND name = %s", (run_id, package))
            if prow is None:
                created_pkg = await tx.one(
                    "INSERT INTO packages (run_id, name, position) SELECT %s, %s,"
                    " COALESCE(MAX(position) + 1, 0) FROM packages WHERE run_id = %s RETURNING id",
                    (run_id, package, run_id),
                )
                assert created_pkg is not None
                package_id = int(created_pkg["id"])
            else:
                package_id = int(prow["id"])
            existing = await tx.one(
                "SELECT id FROM outcomes WHERE package_id = %s AND item = %s", (package_id, item)
            )
            if existing is not None:
                return await _update_status(
                    tx, existing["id"], status, error_message, report, now, created_by
                ), False
            outcome_id = str(uuid.uuid4())
            await tx.execute(
                "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type,"
                " specifications, created_by, available_at, created_at, updated_at)"
                " SELECT %s, %s, %s, %s, COALESCE(MAX(position) + 1, 0), 'pending', %s, %s, %s, %s, %s, %s"
                " FROM outcomes WHERE package_id = %s",
                (
                    outcome_id,
                    run_id,
                    package_id,
                    item,
                    outcome_type or run["outcome_type"],
                    R.spec_dumps(specifications),
                    created_by,
                    now,
                    now,
                    now,
                    package_id,
                ),
            )
            tx.add((run_id, package_id, None, None), total=1, pending=1)
            tx.event(
                run_id, outcome_id, "recorded", {"package": package, "item": item, "status": status}, now
            )
            if status == "pending" and report == Report() and error_message is None:
                return await _outcome(tx.conn, outcome_id), True
            return await _update_status(tx, outcome_id, status, error_message, report, now, created_by), True

        return await self._write(op, journal=_RECORD_ANSWER)

    async def update_status(
        self, outcome_id: str, status: Status, error_message: str | None, report: Report | None, now: float
    ) -> Outcome:
        return await self._write(
            lambda tx: _update_status(tx, outcome_id, status, error_message, report, now, None),
            journal=_OUTCOME_ANSWER,
        )

    async def get_outcome(self, outcome_id: str, history: bool = False) -> OutcomeDetail:
        async def op(c: Conn) -> OutcomeDetail:
            row = await _one(c, _OUTCOME_SELECT + " WHERE o.id = %s", (outcome_id,))
            if row is None:
                raise NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")
            hist: list[Row] = []
            if history:
                hist = await _all(
                    c,
                    "SELECT attempt, worker, status, error, started_at, ended_at FROM outcome_attempts"
                    " WHERE outcome_id = %s ORDER BY started_at, attempt",
                    (outcome_id,),
                )
            return R.detail_from(row, hist)

        return await self._read(op, snapshot=history)

    async def list_outcomes(self, flt: OutcomeFilter, limit: int, cursor: str | None) -> OutcomePage:
        after = R.decode_cursor(cursor)

        async def op(c: Conn) -> OutcomePage:
            where = ["o.n > %s"]
            args: list[Any] = [after]
            if flt.run_id is not None:
                where.append("o.run_id = %s")
                args.append(flt.run_id)
            if flt.package is not None:
                where.append("p.name = %s")
                args.append(flt.package)
            if flt.status is not None:
                where.append("o.status = %s")
                args.append(flt.status)
            if flt.worker is not None:
                where.append("o.worker = %s")
                args.append(flt.worker)
            rows = await _all(
                c,
                _OUTCOME_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY o.n LIMIT %s",
                [*args, limit + 1],
            )
            more = len(rows) > limit
            rows = rows[:limit]
            return OutcomePage(
                outcomes=[R.outcome_from(r) for r in rows],
                next_cursor=R.encode_cursor(int(rows[-1]["n"])) if more and rows else None,
            )

        return await self._read(op)

    async def iter_outcomes(self, run_id: str) -> AsyncIterator[Outcome]:
        cursor: str | None = None
        while True:
            page = await self.list_outcomes(OutcomeFilter(run_id=run_id), 1000, cursor)
            for outcome in page.outcomes:
                yield outcome
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cells(self, run_id: str) -> list[Cell]:
        async def op(c: Conn) -> list[Cell]:
            rows = await _all(
                c,
                "SELECT o.id, p.name AS package, o.item, o.status FROM outcomes o"
                " JOIN packages p ON p.id = o.package_id WHERE o.run_id = %s ORDER BY o.n",
                [run_id],
            )
            return [Cell(str(r["id"]), r["package"], r["item"], r["status"]) for r in rows]

        return await self._read(op)

    async def package_summaries(self, run_id: str) -> list[PackageSummary]:
        async def op(c: Conn) -> list[PackageSummary]:
            return [_summary(r) for r in await _all(c, _RUN_SUMMARIES_SQL, {"run": run_id})]

        return await self._read(op)

    async def package_summary(self, package: str, run_id: str | None) -> PackageSummary:
        async def op(c: Conn) -> PackageSummary:
            if run_id is not None:
                found = await _summaries(c, "p.run_id = %s AND p.name = %s", [run_id, package])
            else:
                found = await _summaries(c, "p.name = %s", [package])
            if not found:
                raise NotFound(f"unknown package '{package}'", field="package")
            if len(found) > 1:
                runs = ", ".join(sorted(s.run for s in found))
                raise Conflict(f"package '{package}' exists in several runs ({runs}); pass run", field="run")
            return found[0]

        return await self._read(op)

    async def system_metrics(self, run_id: str | None, now: float) -> SystemMetrics:
        async def op(c: Conn) -> SystemMetrics:
            where, args = ("WHERE run_id = %s", [run_id]) if run_id else ("", [])
            t = await _one(
                c,
                "SELECT COALESCE(SUM(pending),0)::bigint AS pending, COALESCE(SUM(generating),0)::bigint AS generating,"
                " COALESCE(SUM(complete),0)::bigint AS complete, COALESCE(SUM(failed),0)::bigint AS failed,"
                " COALESCE(SUM(cancelled),0)::bigint AS cancelled, COALESCE(SUM(duration_sum),0)::float8 AS ds,"
                " COALESCE(SUM(duration_n),0)::bigint AS dn, COALESCE(SUM(lines_sum),0)::float8 AS ls,"
                " COALESCE(SUM(quality_sum),0)::float8 AS qs, COALESCE(SUM(quality_n),0)::bigint AS qn"
                " FROM package_counters " + where,
                args,
            )
            assert t is not None
            since_minute = int(now // 60) - 7 * 24 * 60
            hours = await _all(
                c,
                "SELECT minute / 60 AS hour, SUM(completed)::bigint AS completed, SUM(failed)::bigint AS failed,"
                " SUM(duration_sum)::float8 AS ds, SUM(duration_n)::bigint AS dn FROM run_minutes"
                " WHERE minute >= %s"
                + (" AND run_id = %s" if run_id else "")
                + " GROUP BY minute / 60 ORDER BY hour",
                [since_minute, *args],
            )
            counts = R.counts_from(t)
            finished = counts.complete + counts.failed
            run_name = None
            if run_id:
                r = await _one(c, "SELECT name FROM runs WHERE id = %s", (run_id,))
                run_name = r["name"] if r else None
            return SystemMetrics(
                run=run_name,
                outcomes_total=counts.total,
                outcomes_pending=counts.pending,
                outcomes_generating=counts.generating,
                outcomes_complete=counts.complete,
                outcomes_failed=counts.failed,
                outcomes_cancelled=counts.cancelled,
                avg_generation_time=round(t["ds"] / t["dn"], 6) if t["dn"] else None,
                success_rate=round(counts.complete / finished, 6) if finished else None,
                total_lines_generated=float(t["ls"]),
                average_quality_score=round(t["qs"] / t["qn"], 6) if t["qn"] else None,
                outcomes_by_hour=[
                    HourBucket(
                        hour=ts(int(h["hour"]) * 3600),  # type: ignore[arg-type]
                        completed=int(h["completed"]),
                        failed=int(h["failed"]),
                        avg_duration_seconds=round(h["ds"] / h["dn"], 6) if h["dn"] else None,
                    )
                    for h in hours
                ],
            )

        return await self._read(op, snapshot=True)

    async def run_overview(self, run_id: str, since: float) -> RunOverview:
        """The run, its package summaries, its recent throughput and the latest event, in one snapshot
        and one round trip (pipeline mode: BEGIN, the four reads and COMMIT go out together)."""

        async def attempt() -> RunOverview:
            async with self._pool.connection() as conn:
                try:
                    async with conn.pipeline():
                        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        run_cur = await conn.execute(_ONE_RUN_SQL + " WHERE r.id = %s", (run_id,))
                        summaries_cur = await conn.execute(_RUN_SUMMARIES_SQL, {"run": run_id})
                        finished_cur = await conn.execute(_THROUGHPUT_SQL, (run_id, int(since // 60)))
                        seq_cur = await conn.execute(_LATEST_SEQ_SQL)
                        await conn.execute("COMMIT")
                        run_row = await run_cur.fetchone()
                        summary_rows = await summaries_cur.fetchall()
                        finished = await finished_cur.fetchone()
                        seq = await seq_cur.fetchone()
                except BaseException:
                    if conn.info.transaction_status in _IN_TRANSACTION:
                        with contextlib.suppress(psycopg.Error):
                            await conn.execute("ROLLBACK")
                    raise
            if run_row is None:
                raise NotFound(f"unknown run '{run_id}'", field="run")
            return RunOverview(
                R.run_from(run_row),
                [_summary(r) for r in summary_rows],
                int(finished["n"]) if finished else 0,
                int(seq["s"]) if seq else 0,
            )

        return await self._with_retry(attempt)

    async def run_minutes(self, run_id: str, since_minute: int) -> list[MinuteCount]:
        async def op(c: Conn) -> list[MinuteCount]:
            rows = await _all(
                c,
                "SELECT minute, completed::bigint AS completed, failed::bigint AS failed FROM run_minutes"
                " WHERE run_id = %s AND minute >= %s ORDER BY minute",
                (run_id, since_minute),
            )
            return [MinuteCount(int(r["minute"]), int(r["completed"]), int(r["failed"])) for r in rows]

        return await self._read(op)

    async def record_integration(
        self,
        run_id: str | None,
        outcome_id: str | None,
        integration_type: str,
        action: str,
        status: str,
        details: dict[str, Any],
        now: float,
    ) -> IntegrationEvent:
        async def op(tx: _Tx) -> IntegrationEvent:
            if (
                outcome_id is not None
                and await tx.one("SELECT 1 FROM outcomes WHERE id = %s", (outcome_id,)) is None
            ):
                raise NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")
            row = await tx.one(
                "WITH l AS (INSERT INTO integration_logs (run_id, outcome_id, integration_type, action, status,"
                " details, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *)"
                " SELECT l.*, r.name AS run_name FROM l LEFT JOIN runs r ON r.id = l.run_id",
                (run_id, outcome_id, integration_type, action, status, R.dumps(details), now),
            )
            tx.event(
                run_id,
                outcome_id,
                "integration",
                {"integration_type": integration_type, "action": action, "status": status},
                now,
            )
            return R.integration_from(row)

        return await self._write(op, journal=_INTEGRATION_ANSWER)

    # ---- API keys -------------------------------------------------------------------------------

    async def create_api_key(self, name: str, key_hash: str, scopes: Sequence[str], now: float) -> ApiKey:
        async def op(tx: _Tx) -> ApiKey:
            row = await tx.one(
                "INSERT INTO api_keys (name, key_hash, scopes, created_at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING RETURNING name",
                (name, key_hash, R.dumps(list(scopes)), now),
            )
            if row is None:
                raise Conflict(f"a key named '{name}' exists (revoked keys keep their name)", field="name")
            tx.wrote = True
            return ApiKey(name=name, scopes=tuple(scopes), created_at=now)

        return await self._write(op, atomic=True)

    async def list_api_keys(self) -> list[ApiKey]:
        async def op(c: Conn) -> list[ApiKey]:
            return [R.api_key_from(r) for r in await _all(c, "SELECT * FROM api_keys ORDER BY name")]

        return await self._read(op)

    async def revoke_api_key(self, name: str, now: float) -> ApiKey:
        async def op(tx: _Tx) -> ApiKey:
            row = await tx.one(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE name = %s RETURNING *",
                (now, name),
            )
            if row is None:
                raise NotFound(f"unknown key '{name}'", field="name")
            tx.wrote = True
            return R.api_key_from(row)

        return await self._write(op, atomic=True)

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        async def op(c: Conn) -> ApiKey | None:
            row = await _one(c, "SELECT * FROM api_keys WHERE key_hash = %s", (key_hash,))
            return None if row is None else R.api_key_from(row)

        return await self._read(op)

    async def touch_api_key(self, name: str, now: float) -> None:
        async def op(c: Conn) -> None:
            await c.execute(
                "UPDATE api_keys SET last_used_at = GREATEST(COALESCE(last_used_at, 0), %s) WHERE name = %s",
                (now, name),
            )

        # autocommit, outside the group commit: a use stamp must not wait behind (or slow) the work loop
        await self._read(op)

    async def status_counts(self) -> dict[str, dict[Status, int]]:
        async def op(c: Conn) -> dict[str, dict[Status, int]]:
            rows = await _all(
                c,
                "SELECT name, SUM(pending) AS pending, SUM(generating) AS generating,"
                " SUM(complete) AS complete, SUM(failed) AS failed, SUM(cancelled) AS cancelled"
                " FROM package_counters GROUP BY name ORDER BY name",
            )
            return R.status_counts_from(rows)

        return await self._read(op)

    # ---- change feed ----------------------------------------------------------------------------

    async def latest_seq(self) -> int:
        async def op(c: Conn) -> int:
            row = await _one(c, _LATEST_SEQ_SQL)
            return int(row["s"]) if row else 0

        return await self._read(op)

    async def events_after(self, since: int, run_id: str | None, limit: int) -> list[Event]:
        async def op(c: Conn) -> list[Event]:
            q = "SELECT e.*, r.name AS run_name FROM events e LEFT JOIN runs r ON r.id = e.run_id WHERE e.seq > %s"
            args: list[Any] = [since]
            if run_id is not None:
                q += " AND e.run_id = %s"
                args.append(run_id)
            rows = await _all(c, q + " ORDER BY e.seq LIMIT %s", [*args, limit])
            return [R.event_from(r) for r in rows]

        return await self._read(op)

    async def wait_for_change(self, since: int, timeout: float) -> int:
        """Wakes on this process's commits at once, on other processes' through LISTEN/NOTIFY, and
        polls every POLL_FALLBACK seconds in case a notification is lost."""
        if self._listener is None and not self._closed:
            self._listener = asyncio.create_task(self._listen(), name="matrix-pg-listen")
        deadline = anyio.current_time() + timeout
        while True:
            changed = self._changed
            latest = await self.latest_seq()
            remaining = deadline - anyio.current_time()
            if latest > since or remaining <= 0:
                return latest
            with anyio.move_on_after(min(POLL_FALLBACK, remaining)):
                await changed.wait()

    # ---- maintenance ----------------------------------------------------------------------------

    async def recount(self, run_id: str | None = None) -> RecountReport:
        return await self._read(lambda c: _recount(c, run_id), snapshot=True)

    async def content_hashes(self) -> set[str]:
        async def op(c: Conn) -> set[str]:
            rows = await _all(
                c, "SELECT DISTINCT content_sha256 FROM outcomes WHERE content_sha256 IS NOT NULL"
            )
            return {r["content_sha256"] for r in rows}

        return await self._read(op)

    async def content_files(self, since_seq: int, limit: int) -> list[ContentFile]:
        async def op(c: Conn) -> list[ContentFile]:
            rows = await _all(
                c,
                "SELECT e.seq, o.id, o.outcome_path, o.content_sha256 FROM events e JOIN outcomes o ON o.id = e.outcome_id"
                " WHERE e.seq > %s AND e.kind = 'completed' AND o.status = 'complete'"
                " AND o.content_sha256 IS NOT NULL AND o.outcome_path IS NOT NULL ORDER BY e.seq LIMIT %s",
                (since_seq, limit),
            )
            return [ContentFile(int(r["seq"]), r["id"], r["outcome_path"], r["content_sha256"]) for r in rows]

        return await self._read(op)

    async def rebuild_counters(self, run_id: str | None = None) -> None:
        async def attempt() -> None:
            async with self._pool.connection() as c:
                await c.execute("SELECT pg_advisory_lock(%s)", (ROLLUP_LOCK,))
                try:
                    async with c.transaction():
                        await c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                        await _rebuild(c, run_id)
                finally:
                    await c.execute("SELECT pg_advisory_unlock(%s)", (ROLLUP_LOCK,))

        await self._with_retry(attempt)
        self._wake()


# ---- helpers that run inside a transaction ------------------------------------------------------


MERGE_SLOTS = 4000  # items one merged claim statement may hand out (claim_seq leaves 4096 per statement)


def _claim_op(args: _ClaimArgs, already: list[Claim]) -> Callable[[_Tx], Awaitable[ClaimBatch]]:
    """One claim request on its own: `already` holds what the batch's merged statement gave it."""
    run_id, package, now = args.run_id, args.package, args.now

    async def op(tx: _Tx) -> ClaimBatch:
        claims = list(already)
        if claims:
            tx.wrote = True
        if run_id not in tx.batch.swept:  # once per batch and run: expired leases go back first
            tx.batch.swept[run_id] = now
            if await _sweep(tx, run_id, now):
                tx.wrote = True
        exhausted: list[int] = []
        while len(claims) < args.limit:
            want = args.limit - len(claims)
            rows = await tx.all(
                _CLAIM_SQL,
                _claim_params(
                    run_id,
                    package,
                    exhausted,
                    now,
                    [(args.worker, now, args.token()) for _ in range(want)],
                ),
            )
            quota: dict[int, int] = {}
            got: dict[int, int] = defaultdict(int)
            for o in rows:
                np_, ord_ = int(o["np"]), int(o["ord"])
                quota[int(o["pk_id"])] = max(0, (want - ord_ + np_ - 1) // np_)
                if o["id"] is not None:
                    got[int(o["pk_id"])] += 1
            claims += _claims_from(tx, run_id, args.worker, [o for o in rows if o["id"] is not None], now)
            # a package that gave less than its share has nothing more for this call (or the rest
            # is locked by other claimers); the next round shares what is left among the others
            short = [pid for pid, q in quota.items() if got.get(pid, 0) < q]
            if not short or len(short) == len(quota):
                break
            exhausted += short
        if len(claims) >= args.limit:
            return ClaimBatch(claims)
        run = await tx.one("SELECT state FROM runs WHERE id = %s", (run_id,))
        if run is None:
            raise NotFound(f"unknown run '{run_id}'", field="run")
        if run["state"] in ("cancelled", "paused"):
            return ClaimBatch(claims, run["state"])
        await tx.flush()
        return ClaimBatch(claims, *await _why_nothing(tx, run_id, package))

    return op


_HELD_SQL = (
    "SELECT o.id, o.item, o.attempts, o.outcome_type, o.specifications, o.outcome_path, o.lease_token,"
    " o.lease_expires_at, p.name AS package_name, p.description AS package_description, r.name AS run_name"
    " FROM outcomes o JOIN packages p ON p.id = o.package_id JOIN runs r ON r.id = o.run_id"
    " WHERE o.run_id = %s AND o.status = 'generating' AND o.worker = %s AND o.started_at = %s"
    " ORDER BY o.claim_seq LIMIT %s"
)


async def _next_claims(
    tx: _Tx, outcome: Outcome, token: str, next_claim: NextClaim | None, now: float, fresh: bool
) -> ClaimBatch | None:
    """The next leases of a report: claimed now when the report is fresh; for a repeat of the identical
    report, the leases the first one took that its worker still holds (claimed at that report's time)."""
    if next_claim is None:
        return None
    if fresh:
        args = _ClaimArgs(
            outcome.run_id,
            outcome.worker or "",
            next_claim.limit,
            next_claim.package,
            now,
            next_claim.token_factory,
        )
        return await _claim_op(args, [])(tx)
    first = await tx.one(
        "SELECT ended_at, worker FROM outcome_attempts WHERE outcome_id = %s AND lease_token = %s",
        (outcome.id, token),
    )
    if first is None or first["ended_at"] is None:
        return ClaimBatch([])
    rows = await tx.all(_HELD_SQL, (outcome.run_id, first["worker"], first["ended_at"], next_claim.limit))
    return ClaimBatch([_claim(r) for r in rows])


async def _merged(conn: Conn, state: _Batch, batch: list[_Request]) -> None:
    """The set-based fast path of a batch: all claims of one run (and package filter) in one statement,
    handed out in request order; all completes in one statement. A request the merged statement cannot
    answer whole (short claim, stale or repeated report) is finished one by one afterwards."""
    groups: dict[tuple[str, str | None], list[list[tuple[_Request, _ClaimArgs]]]] = {}
    completes: list[tuple[_Request, _CompleteArgs]] = []
    for req in batch:
        a = req.merge
        if req.handled or req.rest is not None:  # recovered from a lost answer
            continue
        if isinstance(a, _ClaimArgs):
            chunks = groups.setdefault((a.run_id, a.package), [[]])
            if chunks[-1] and sum(x.limit for _, x in chunks[-1]) + a.limit > MERGE_SLOTS:
                chunks.append([])
            chunks[-1].append((req, a))
        elif isinstance(a, _CompleteArgs):
            completes.append((req, a))
    for (run_id, package), chunks in groups.items():
        for chunk in chunks:
            cutoff = min(a.now for _, a in chunk)
            swept = None
            if run_id not in state.swept:  # sent with the claim, without waiting for its answer
                state.swept[run_id] = cutoff
                swept = await conn.execute(_SWEEP_SQL, _sweep_params(run_id, cutoff))
            slots = [(a.worker, a.now, a.token()) for _, a in chunk for _ in range(a.limit)]
            claimed = await conn.execute(_CLAIM_SQL, _claim_params(run_id, package, [], cutoff, slots))
            if swept is not None:
                sweep = _Tx(conn, state)
                _swept(sweep, run_id, cutoff, await swept.fetchall())
                sweep.succeeded()
            rows = await claimed.fetchall()
            got = [o for o in rows if o["id"] is not None]  # ranks 1..len(got), in rank order
            pos = 0
            for req, a in chunk:
                mine = got[pos : pos + a.limit]
                pos += len(mine)
                tx = _Tx(conn, state)
                with acting_as(req.principal):
                    claims = _claims_from(tx, run_id, a.worker, mine, a.now)
                tx.succeeded()
                if len(claims) == a.limit:
                    req.value = ClaimBatch(claims)
                    req.handled = True
                else:
                    req.rest = _claim_op(a, claims)
    if completes:
        await _complete_many(conn, state, completes)


async def _complete_many(conn: Conn, state: _Batch, completes: list[tuple[_Request, _CompleteArgs]]) -> None:
    seen: set[str] = set()
    todo: list[tuple[_Request, _CompleteArgs]] = []
    for req, a in completes:
        if a.outcome_id not in seen:  # a repeat of the same report in this batch goes one by one
            seen.add(a.outcome_id)
            todo.append((req, a))
    mreq: list[int] = []
    mnames: list[str] = []
    mvalues: list[float] = []
    for i, (_, a) in enumerate(todo, start=1):
        for k, v in a.values:
            mreq.append(i)
            mnames.append(k)
            mvalues.append(v)
    rows = await _all(
        conn,
        _COMPLETE_MANY_SQL,
        {
            "ids": [a.outcome_id for _, a in todo],
            "tokens": [a.lease_token for _, a in todo],
            "nows": [float(a.now) for _, a in todo],
            "metrics": [a.metrics for _, a in todo],
            "metadata": [a.metadata for _, a in todo],
            "paths": [a.report.outcome_path for _, a in todo],
            "shas": [a.report.content_sha256 for _, a in todo],
            "bytes": [a.report.content_bytes for _, a in todo],
            "mimes": [a.report.mime_type for _, a in todo],
            "mreq": mreq,
            "mnames": mnames,
            "mvalues": mvalues,
        },
    )
    for row in sorted(rows, key=lambda r: int(r["req"])):
        req, a = todo[int(row["req"]) - 1]
        tx = _Tx(conn, state)
        duration = row["duration_seconds"]
        run_id, pid = row["run_id"], int(row["package_id"])
        tx.move(run_id, pid, "generating", "complete")
        tx.contribution(run_id, pid, a.report.metrics, duration, +1)
        tx.minute(run_id, a.now, completed=1, duration=duration)
        with acting_as(req.principal):
            tx.event(
                run_id,
                a.outcome_id,
                "completed",
                {"package": row["package_name"], "item": row["item"], "duration": duration},
                a.now,
            )
        tx.succeeded()
        req.value = R.outcome_from(row)
        req.handled = True


async def _run(c: Conn, run_id: str) -> Run:
    row = await _one(c, _ONE_RUN_SQL + " WHERE r.id = %s", (run_id,))
    if row is None:
        raise NotFound(f"unknown run '{run_id}'", field="run")
    return R.run_from(row)


async def _outcome(c: Conn, outcome_id: str) -> Outcome:
    row = await _one(c, _OUTCOME_SELECT + " WHERE o.id = %s", (outcome_id,))
    if row is None:
        raise NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")
    return R.outcome_from(row)


async def _leased_row(tx: _Tx, outcome_id: str, token: str) -> Row:
    row = await tx.one(
        "SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, r.state AS run_state,"
        " p.name AS package_name FROM outcomes o JOIN runs r ON r.id = o.run_id"
        " JOIN packages p ON p.id = o.package_id WHERE o.id = %s FOR UPDATE OF o",
        (outcome_id,),
    )
    if row is None:
        raise NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")
    if row["lease_token"] != token:
        raise StaleLease(R.stale_token_message(row), field="lease_token")
    return row


async def _end_attempt(
    tx: _Tx, outcome_id: str, token: str, status: str, error: str | None, now: float
) -> None:
    await tx.execute(
        "UPDATE outcome_attempts SET status = %s, error = %s, ended_at = %s WHERE outcome_id = %s AND lease_token = %s",
        (status, error, now, outcome_id, token),
    )


async def _sweep(tx: _Tx, run_id: str, now: float) -> int:
    """Expired leases go back to pending (or failed when attempts are spent, cancelled when the run is).
    Every process sweeps; SKIP LOCKED keeps two sweepers off the same row."""
    rows = await tx.all(_SWEEP_SQL, _sweep_params(run_id, now))
    _swept(tx, run_id, now, rows)
    return len(rows)


def _sweep_params(run_id: str, now: float) -> dict[str, Any]:
    return {"run": run_id, "now": now, "limit": SWEEP_LIMIT}


def _swept(tx: _Tx, run_id: str, now: float, rows: Sequence[Row]) -> None:
    """The counter moves and events of the leases a sweep statement returned."""
    for r in rows:
        target: Status = r["target"]
        if target == "failed":
            tx.minute(run_id, now, failed=1)
        tx.move(run_id, int(r["package_id"]), "generating", target)
        tx.event(
            run_id,
            r["id"],
            "lease_expired",
            {"package": r["package_name"], "item": r["item"], "attempt": r["attempts"], "now": target},
            now,
        )


async def _cancel_pending(tx: _Tx, run_id: str, now: float) -> int:
    total = 0
    for r in await tx.all(
        "WITH u AS (UPDATE outcomes SET status = 'cancelled', updated_at = %s, completed_at = %s"
        " WHERE run_id = %s AND status = 'pending' RETURNING package_id)"
        " SELECT package_id, count(*) AS n FROM u GROUP BY package_id",
        (now, now, run_id),
    ):
        n = int(r["n"])
        tx.move(run_id, int(r["package_id"]), "pending", "cancelled", n)
        total += n
    return total


async def _why_nothing(tx: _Tx, run_id: str, package: str | None) -> tuple[Any, float | None]:
    row = await tx.one(
        "SELECT COALESCE(SUM(pending),0)::bigint AS pending, COALESCE(SUM(generating),0)::bigint AS generating,"
        " COUNT(*) AS n, COALESCE(SUM(total),0)::bigint AS total FROM package_counters"
        " WHERE run_id = %s AND (%s::text IS NULL OR name = %s::text)",
        (run_id, package, package),
    )
    assert row is not None
    if package is not None and row["n"] == 0:
        raise NotFound(f"unknown package '{package}' in this run", field="package")
    pkg_filter = (
        ""
        if package is None
        else " AND package_id IN (SELECT id FROM packages WHERE run_id = %s AND name = %s)"
    )
    pkg_args = [] if package is None else [run_id, package]
    if row["pending"]:
        m = await tx.one(
            "SELECT MIN(available_at) AS t FROM outcomes WHERE run_id = %s AND status = 'pending'"
            + pkg_filter,
            [run_id, *pkg_args],
        )
        return "backing_off", m["t"] if m else None
    if row["generating"]:
        m = await tx.one(
            "SELECT MIN(lease_expires_at) AS t FROM outcomes WHERE run_id = %s AND status = 'generating'"
            + pkg_filter,
            [run_id, *pkg_args],
        )
        return "all_leased", m["t"] if m else None
    total = await tx.one(
        "SELECT COALESCE(SUM(total),0)::bigint AS total FROM package_counters WHERE run_id = %s", (run_id,)
    )
    return ("done" if total and total["total"] else "empty"), None


async def _update_status(
    tx: _Tx,
    outcome_id: str,
    status: Status,
    error_message: str | None,
    report: Report | None,
    now: float,
    created_by: str | None,
) -> Outcome:
    row = await tx.one(
        "SELECT o.*, r.lease_seconds, p.name AS package_name FROM outcomes o JOIN runs r ON r.id = o.run_id"
        " JOIN packages p ON p.id = o.package_id WHERE o.id = %s FOR UPDATE OF o",
        (outcome_id,),
    )
    if row is None:
        raise NotFound(f"unknown outcome '{outcome_id}'", field="outcome_id")
    run_id, pid = row["run_id"], int(row["package_id"])
    old = row["status"]
    old_metrics = R.loads(row["metrics"], {})
    metrics = report.metrics if report is not None and report.metrics else old_metrics
    metadata = report.metadata if report is not None and report.metadata else R.loads(row["metadata"], {})
    started = row["started_at"]
    completed_at = row["completed_at"]
    duration = row["duration_seconds"]
    lease_expires = None
    token = str(uuid.uuid4())  # any override fences off whoever held the lease
    if status == "generating":
        started = now
        lease_expires = now + float(row["lease_seconds"])
        completed_at = duration = None
    elif status in ("complete", "failed", "cancelled"):
        if old != status:
            completed_at = now
            duration = max(0.0, now - started) if started is not None else None
    else:  # pending
        completed_at = duration = None
    if old == "complete":
        tx.contribution(run_id, pid, old_metrics, row["duration_seconds"], -1)
    await tx.execute(
        "UPDATE outcomes SET status = %s, error_message = %s, metrics = %s, metadata = %s,"
        " outcome_path = COALESCE(%s, outcome_path), content_sha256 = COALESCE(%s, content_sha256),"
        " content_bytes = COALESCE(%s, content_bytes), mime_type = COALESCE(%s, mime_type),"
        " started_at = %s, completed_at = %s, duration_seconds = %s, lease_token = %s, lease_expires_at = %s,"
        " available_at = %s, created_by = COALESCE(created_by, %s), updated_at = %s WHERE id = %s",
        (
            status,
            error_message if status != "complete" else None,
            R.dumps(metrics),
            R.dumps(metadata),
            report.outcome_path if report else None,
            report.content_sha256 if report else None,
            report.content_bytes if report else None,
            report.mime_type if report else None,
            started,
            completed_at,
            duration,
            token,
            lease_expires,
            now,
            created_by,
            now,
            outcome_id,
        ),
    )
    tx.move(run_id, pid, old, status)
    if status == "complete":
        tx.contribution(run_id, pid, metrics, duration, +1)
        values = R.numeric_metrics(metrics)
        await tx.execute("DELETE FROM outcome_metrics WHERE outcome_id = %s", (outcome_id,))
        if values:
            await tx.execute(
                "INSERT INTO outcome_metrics (outcome_id, name, value)"
                " SELECT %s, k, v FROM unnest(%b::text[], %b::float8[]) AS m(k, v)",
                (outcome_id, [k for k, _ in values], [v for _, v in values]),
            )
        if old != "complete":
            tx.minute(run_id, now, completed=1, duration=duration)
    elif status == "failed" and old != "failed":
        tx.minute(run_id, now, failed=1)
    tx.event(
        run_id,
        outcome_id,
        "status_updated",
        {"package": row["package_name"], "item": row["item"], "from": old, "to": status},
        now,
    )
    return await _outcome(tx.conn, outcome_id)


_SUMMARY_FIELDS = (
    "id",
    "name",
    "description",
    "position",
    "run_name",
    "total",
    "pending",
    "generating",
    "complete",
    "failed",
    "cancelled",
    "duration_sum",
    "duration_n",
    "lines_sum",
    "quality_sum",
    "quality_n",
)
_summary_key = operator.itemgetter(*_SUMMARY_FIELDS)
_SUMMARY_MEMO: dict[tuple[Any, ...], PackageSummary] = {}
SUMMARY_MEMO_SIZE = 4096


def _summary(row: Row) -> PackageSummary:
    """R.summary_from for a _RUN_SUMMARIES_SQL row. A package whose counters and histogram are unchanged
    since the last call gets a copy of the summary built then (status polls see mostly unchanged rows)."""
    hb, hn, db, dn = row["hb"] or (), row["hn"] or (), row["db"] or (), row["dn"] or ()
    key = (*_summary_key(row), tuple(hb), tuple(hn), tuple(db), tuple(dn))
    found = _SUMMARY_MEMO.get(key)
    if found is not None:
        return _shallow_copy(found)
    hist: dict[int, int] = dict(zip(hb, hn, strict=True))
    for b, n in zip(db, dn, strict=True):
        hist[b] = hist.get(b, 0) + n
    summary = R.summary_from(row, {b: n for b, n in sorted(hist.items()) if n > 0})
    if len(_SUMMARY_MEMO) >= SUMMARY_MEMO_SIZE:
        _SUMMARY_MEMO.clear()
    _SUMMARY_MEMO[key] = summary.model_copy()
    return summary


def _shallow_copy(m: PackageSummary) -> PackageSummary:
    """What `model_copy()` makes (a shallow copy), without its generic path: a hundred per status poll."""
    if m.__pydantic_extra__ is not None or m.__pydantic_private__ is not None:
        return m.model_copy()
    new = PackageSummary.__new__(PackageSummary)
    object.__setattr__(new, "__dict__", m.__dict__.copy())
    object.__setattr__(new, "__pydantic_fields_set__", m.__pydantic_fields_set__.copy())
    object.__setattr__(new, "__pydantic_extra__", None)
    object.__setattr__(new, "__pydantic_private__", None)
    return new


async def _summaries(c: Conn, where: str, args: list[Any]) -> list[PackageSummary]:
    rows = await _all(c, _SUMMARY_SELECT + " WHERE " + where + " ORDER BY r.created_at, p.position", args)
    return [R.summary_from(r, {int(b): int(n) for b, n in zip(r["hb"], r["hn"], strict=True)}) for r in rows]


async def _truth(c: Conn, package_id: int) -> dict[str, Any]:
    truth: dict[str, Any] = dict.fromkeys(STATUSES, 0)
    for r in await _all(
        c, "SELECT status, COUNT(*) AS n FROM outcomes WHERE package_id = %s GROUP BY status", (package_id,)
    ):
        truth[r["status"]] = int(r["n"])
    truth["total"] = sum(truth[s] for s in STATUSES)
    sums = dict.fromkeys(_COUNTER_COLUMNS, 0.0)
    hist: dict[int, int] = defaultdict(int)
    async with c.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        await cur.execute(
            "SELECT metrics, duration_seconds FROM outcomes WHERE package_id = %s AND status = 'complete'",
            (package_id,),
        )
        async for metrics, duration in cur:
            for k, v in R.contribution(R.loads(metrics, {}), duration).items():
                sums[k] += v
            if duration is not None:
                hist[R.duration_bucket(duration)] += 1
    truth.update(sums)
    truth["hist"] = dict(hist)
    return truth


async def _recount(c: Conn, run_id: str | None) -> RecountReport:
    where, args = ("WHERE p.run_id = %s", [run_id]) if run_id else ("", [])
    mismatches: list[str] = []
    packages = await _all(
        c,
        "SELECT p.*, r.name AS run_name FROM package_counters p JOIN runs r ON r.id = p.run_id " + where,
        args,
    )
    for p in packages:
        truth = await _truth(c, int(p["id"]))
        label = f"{p['run_name']}/{p['name']}"
        for key in ("total", *STATUSES):
            if int(p[key]) != truth[key]:
                mismatches.append(f"{label}: {key} counter {p[key]} != rows {truth[key]}")
        for key in _COUNTER_COLUMNS:
            if abs(float(p[key]) - float(truth[key])) > 1e-6 * max(1.0, abs(float(truth[key]))):
                mismatches.append(f"{label}: {key} counter {p[key]} != rows {truth[key]}")
        hist = {
            int(h["bucket"]): int(h["n"])
            for h in await _all(
                c, "SELECT bucket, n FROM package_hist WHERE package_id = %s AND n <> 0", (p["id"],)
            )
        }
        if hist != truth["hist"]:
            mismatches.append(f"{label}: duration histogram {hist} != rows {truth['hist']}")
    return RecountReport(consistent=not mismatches, mismatches=mismatches)


async def _rebuild(c: Conn, run_id: str | None) -> None:
    where, args = ("WHERE run_id = %s", [run_id]) if run_id else ("", [])
    ids = [int(r["id"]) for r in await _all(c, "SELECT id FROM packages " + where, args)]
    await c.execute("DELETE FROM package_deltas WHERE package_id = ANY(%b::bigint[])", (ids,))
    for pid in ids:
        truth = await _truth(c, pid)
        buckets = sorted(b for b, n in truth["hist"].items() if n)
        await c.execute(
            "UPDATE packages SET total = %s, pending = %s, generating = %s, complete = %s, failed = %s,"
            " cancelled = %s, duration_sum = %s, duration_n = %s, lines_sum = %s, quality_sum = %s,"
            " quality_n = %s, hist_b = %b::int4[], hist_n = %b::int8[] WHERE id = %s",
            (
                truth["total"],
                *(truth[s] for s in STATUSES),
                truth["duration_sum"],
                round(truth["duration_n"]),
                truth["lines_sum"],
                truth["quality_sum"],
                round(truth["quality_n"]),
                buckets,
                [truth["hist"][b] for b in buckets],
                pid,
            ),
        )


__all__ = ["PostgresStore"]
