"""SQL text of the PostgreSQL store: the set-based hot-path statements (claim, complete, sweep, roll-up)
and the selects more than one module uses."""

from __future__ import annotations

from functools import cache

from psycopg import sql as pgsql

from matrix_mcp import rules
from matrix_mcp.models import STATUSES, Status
from matrix_mcp.store import rows as R
from matrix_mcp.store.postgres.migrations import NOTIFY_CHANNEL

# the run/package counters, one per status (models.STATUSES, in its order), then the sums
DELTA_COLUMNS = (
    "total",
    *STATUSES,
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
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "cost_usd",
)


_FLOAT_COLUMNS = {"duration_sum", "lines_sum", "quality_sum", "m_duration_sum", "cost_usd"}


COL = {c: i for i, c in enumerate(DELTA_COLUMNS)}


COUNTER_COLUMNS = ("duration_sum", "duration_n", "lines_sum", "quality_sum", "quality_n")


# the statuses the counter tables keep a column for (in their column order)
COUNTED_STATUSES: tuple[Status, ...] = STATUSES


# the usage sums a package (and a run's totals row) keeps, moved through package_deltas like the counters
USAGE_COLUMNS = R.USAGE_COLUMNS


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


DELTA_INSERT = _build_delta_insert()


DELTA_INSERT_ARRAYS = (
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


DELTA_INT = tuple(c not in _FLOAT_COLUMNS for c in DELTA_COLUMNS)


# a run with its summed package counters, and when its last event was written (a finished run's
# updated_at: see rows.run_from)
RUN_SELECT = """
SELECT r.*, COUNT(p.id)::bigint AS packages,
       COALESCE(SUM(p.pending), 0)::bigint AS pending, COALESCE(SUM(p.generating), 0)::bigint AS generating,
       COALESCE(SUM(p.complete), 0)::bigint AS complete, COALESCE(SUM(p.failed), 0)::bigint AS failed,
       COALESCE(SUM(p.cancelled), 0)::bigint AS cancelled, COALESCE(SUM(p.blocked), 0)::bigint AS blocked,
       COALESCE(SUM(p.in_review), 0)::bigint AS in_review,
       (SELECT e.created_at FROM events e WHERE e.run_id = r.id ORDER BY e.seq DESC LIMIT 1) AS last_event_at
FROM runs r LEFT JOIN package_counters p ON p.run_id = r.id
"""


# One run with its summed counters, set-based: the rolled package rows plus the run's unrolled deltas
# (two aggregates over index ranges instead of one per package). %(where)s picks the run.
ONE_RUN_SQL = """
SELECT r.*, p.packages,
       p.pending + COALESCE(d.pending, 0) AS pending, p.generating + COALESCE(d.generating, 0) AS generating,
       p.complete + COALESCE(d.complete, 0) AS complete, p.failed + COALESCE(d.failed, 0) AS failed,
       p.cancelled + COALESCE(d.cancelled, 0) AS cancelled, p.blocked + COALESCE(d.blocked, 0) AS blocked,
       p.in_review + COALESCE(d.in_review, 0) AS in_review,
       (SELECT e.created_at FROM events e WHERE e.run_id = r.id ORDER BY e.seq DESC LIMIT 1) AS last_event_at
FROM runs r
CROSS JOIN LATERAL (
    SELECT COUNT(*)::int8 AS packages, COALESCE(SUM(pending), 0)::int8 AS pending,
           COALESCE(SUM(generating), 0)::int8 AS generating, COALESCE(SUM(complete), 0)::int8 AS complete,
           COALESCE(SUM(failed), 0)::int8 AS failed, COALESCE(SUM(cancelled), 0)::int8 AS cancelled,
           COALESCE(SUM(blocked), 0)::int8 AS blocked, COALESCE(SUM(in_review), 0)::int8 AS in_review
    FROM packages WHERE run_id = r.id
) p
CROSS JOIN LATERAL (
    SELECT SUM(pending)::int8 AS pending, SUM(generating)::int8 AS generating, SUM(complete)::int8 AS complete,
           SUM(failed)::int8 AS failed, SUM(cancelled)::int8 AS cancelled, SUM(blocked)::int8 AS blocked,
           SUM(in_review)::int8 AS in_review
    FROM package_deltas WHERE run_id = r.id AND package_id IS NOT NULL AND bucket IS NULL
) d
"""


OUTCOME_SELECT = """
SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, p.name AS package_name
FROM outcomes o JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = o.package_id
"""


# Outcomes of one status, driven by the narrow queue in `n` order (q.n > cursor ... ORDER BY q.n LIMIT): the
# pending and final rows of a run are a range of outcome_queue_status, the leased ones come from
# outcome_queue_leased; each is then joined to its outcome row, so a listing of a few failed items among a
# million complete ones reads those few, not the run.
QUEUED_OUTCOME_SELECT = """
SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, p.name AS package_name
FROM outcome_queue q JOIN outcomes o ON o.n = q.n JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = o.package_id
"""


def queue_status_filter(status: Status, *, one_run: bool) -> tuple[str, str]:
    """The condition on the queue row (q) of an item in `status` — leased (generating), neither leased nor
    final (pending), or out of the queue with this final status — and the ORDER BY that lists them in `n`
    order. The status is a constant of the SQL text, not a parameter: a prepared statement's generic plan
    must still see that a few failed items are few (a `final = $1` plan, costed for an average status,
    walked the whole run). Within one run, pending and final rows are ordered by the columns of
    outcome_queue_status: with `final` and `run_id` pinned that is `n` order, and it is the order that index
    reads. A final status is pinned by a closed range, not `=`: an equality makes `final` a constant to the
    planner, the ORDER BY collapses to `n` and the queue's primary key offers that order too — a plan that
    walks it from the cursor through every other run's rows (10 ms behind one 10,000-item run, measured);
    `final IS NULL` (pending) is no such constant either."""
    if status == "generating":
        return "q.lease_token IS NOT NULL", "q.n"
    final = rules.final_status(status)
    condition = "q.lease_token IS NULL AND q.final IS NULL" if final is None else _FINAL_CONDITION[final]
    return condition, "q.final, q.run_id, q.n" if one_run else "q.n"


_FINAL_CONDITION: dict[Status, str] = {
    status: f"q.lease_token IS NULL AND q.final >= '{status}' AND q.final <= '{status}'"
    for status in ("complete", "failed", "cancelled", "blocked", "in_review")
}


SUMMARY_SELECT = """
SELECT p.*, r.name AS run_name,
       ARRAY(SELECT h.bucket FROM package_hist h WHERE h.package_id = p.id AND h.n > 0 ORDER BY h.bucket) AS hb,
       ARRAY(SELECT h.n FROM package_hist h WHERE h.package_id = p.id AND h.n > 0 ORDER BY h.bucket) AS hn
FROM package_counters p JOIN runs r ON r.id = p.run_id
"""


# All summaries of one run in one pass: rolled counters + this run's unrolled deltas. Histograms: the
# rolled buckets as arrays per package (read in key order, no aggregation over numeric sums), plus the few unrolled delta
# buckets, added up in Python.
RUN_SUMMARIES_SQL = """
WITH pk AS MATERIALIZED (SELECT * FROM packages WHERE run_id = %(run)s),
d AS (
    SELECT package_id, SUM(total)::int8 AS total, SUM(pending)::int8 AS pending, SUM(generating)::int8 AS generating,
           SUM(complete)::int8 AS complete, SUM(failed)::int8 AS failed, SUM(cancelled)::int8 AS cancelled,
           SUM(blocked)::int8 AS blocked, SUM(duration_sum) AS duration_sum, SUM(duration_n)::int8 AS duration_n, SUM(lines_sum) AS lines_sum,
           SUM(quality_sum) AS quality_sum, SUM(quality_n)::int8 AS quality_n, SUM(in_review)::int8 AS in_review,
           SUM(input_tokens)::int8 AS input_tokens, SUM(output_tokens)::int8 AS output_tokens,
           SUM(cache_read_tokens)::int8 AS cache_read_tokens, SUM(cache_creation_tokens)::int8 AS cache_creation_tokens,
           SUM(cost_usd) AS cost_usd
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
       pk.blocked + COALESCE(d.blocked, 0) AS blocked,
       pk.in_review + COALESCE(d.in_review, 0) AS in_review,
       pk.input_tokens + COALESCE(d.input_tokens, 0) AS input_tokens,
       pk.output_tokens + COALESCE(d.output_tokens, 0) AS output_tokens,
       pk.cache_read_tokens + COALESCE(d.cache_read_tokens, 0) AS cache_read_tokens,
       pk.cache_creation_tokens + COALESCE(d.cache_creation_tokens, 0) AS cache_creation_tokens,
       pk.cost_usd + COALESCE(d.cost_usd, 0) AS cost_usd,
       pk.priority, pk.max_concurrent, pk.after, pk.review,
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


THROUGHPUT_SQL = "SELECT COALESCE(SUM(completed + failed), 0)::bigint AS n FROM run_minutes WHERE run_id = %s AND minute >= %s"


LATEST_SEQ_SQL = "SELECT COALESCE(MAX(seq), 0) AS s FROM events"


def _claim_sql(gated: bool) -> str:
    """The claim statement: up to %(limit)s ready items of the run in rules.claim_order (package priority, item
    priority, then the packages in turn by their last claim, then available_at and plan order), each leased
    under the token of its slot (rank).

    The unit of the round robin is a package's priority level: each level of each package with a ready item
    (one probe of the claimable index per level; a package whose items share one priority, `prio_lo =
    prio_hi`, has one). Levels are ranked by package priority, item priority and their package's last claim;
    each locks at most its share of the slots (FOR UPDATE SKIP LOCKED on the narrow queue): the round-robin
    share among the levels of its tier. A level that offers fewer items than its share (`fetched` <
    `quota`: it has no more for this call) leaves its tier's others more than theirs, so nothing ranked
    below that tier is taken in this statement; the caller asks again without the dry levels (`exhausted`,
    `levels`). One row per level (pk_id, ip, quota, fetched) with its claimed items.

    gated=False (CLAIM_SQL): the run must have no lock keys and no caps (`runs.gated` false); a gated run
    gets one row with `gated` true and nothing claimed, and the claim asks CLAIM_GATED_SQL instead.
    gated=True (CLAIM_GATED_SQL), after the caps of the run and its capped packages were locked (CAP_LOCK_SQL): a
    package takes no more than its cap leaves room for (its leased items counted in the queue), the run no
    more than its own; an item whose keys a live lease holds is passed over; of two items wanting one key
    only the better ranked goes on, and the keys are taken by INSERT .. ON CONFLICT, replacing a holder
    only when its lease has run out (the key's row decides, not this statement's snapshot). An item that
    lost a key to a concurrent claim is not claimed; the keys it did take come back in `orphans`, for the
    caller to drop in the same transaction. A level whose items are held back offered fewer than its quota,
    and the levels ranked below it had theirs counted on its slots: so nothing is taken below the best tier
    with a level that may have more (_CLAIM_OPEN), and the caller asks again while the batch is short and a
    round took something or ran a level dry (work.ask_again; `lim`: what the run's cap left room for)."""
    g = gated
    leased = _CLAIM_LEASED if g else ""
    lim = _CLAIM_RUN_ROOM if g else "%(limit)s::int"
    room = ", p.max_concurrent - COALESCE(rl.n, 0) AS room" if g else ""
    join_r = "r.lim > 0" if g else "NOT r.gated"
    join_rl = "\n    LEFT JOIN rl ON rl.package_id = p.id" if g else ""
    under_cap = "\n      AND (p.max_concurrent IS NULL OR p.max_concurrent > COALESCE(rl.n, 0))" if g else ""
    cap_quota = "LEAST(pk.room, " if g else "("
    edge = _CLAIM_OPEN if g else _CLAIM_UNEVEN
    lock_col = ", c.locks, pq.room" if g else ""
    q_lock_col = ", q.locks" if g else ""
    free = _CLAIM_KEYS_FREE if g else ""
    x_locks = " x.locks, x.room, x.pp," if g else ""
    gate = _CLAIM_GATE if g else _CLAIM_UNGATED
    orphans = _CLAIM_ORPHANS if g else ""
    return f"""
WITH RECURSIVE {leased}r AS MATERIALIZED (
    SELECT name, lease_seconds, gated, COALESCE({lim}, %(limit)s::int) AS lim
    FROM runs WHERE id = %(run)s AND state = 'active'
),
pk0 AS MATERIALIZED (
    SELECT p.id, p.name, p.description, p.position, p.priority AS pp, has.priority AS top,
           COALESCE(lc.last, 0) AS last, p.prio_lo IS DISTINCT FROM p.prio_hi AS mixed{room}
    FROM packages p
    JOIN r ON {join_r}
    -- one index probe per package (a LATERAL ... LIMIT 1 is never flattened into a semi-join, which
    -- with a fresh run's stale statistics scanned every pending row of the run for every package);
    -- the first ready item in the claimable index's order has the package's top ready priority
    CROSS JOIN LATERAL (
        SELECT q.priority FROM outcome_queue q
        WHERE q.package_id = p.id AND q.lease_token IS NULL AND q.final IS NULL AND q.available_at <= %(now)s
        ORDER BY q.priority DESC, q.available_at, q.position
        LIMIT 1
    ) has
    LEFT JOIN LATERAL (
        SELECT max(q.claim_seq) AS last FROM outcome_queue q
        WHERE q.package_id = p.id AND q.claim_seq IS NOT NULL
    ) lc ON true{join_rl}
    WHERE p.run_id = %(run)s
      AND (%(package)s::text IS NULL OR p.name = %(package)s::text){under_cap}
),
-- the lower priority levels with a ready item of the packages whose items differ in priority, one probe each
lv AS (
    SELECT pk0.id, pk0.top AS ip, pk0.mixed FROM pk0
    UNION ALL
    SELECT lv.id, nx.priority, lv.mixed FROM lv CROSS JOIN LATERAL (
        SELECT q.priority FROM outcome_queue q
        WHERE q.package_id = lv.id AND q.lease_token IS NULL AND q.final IS NULL AND q.available_at <= %(now)s
          AND q.priority < lv.ip
        ORDER BY q.priority DESC, q.available_at, q.position
        LIMIT 1
    ) nx
    WHERE lv.mixed
),
pk AS MATERIALIZED (
    SELECT pk0.*, lv.ip,
           (row_number() OVER (ORDER BY pk0.pp DESC, lv.ip DESC, pk0.last, pk0.position) - 1)::int AS rr,
           (row_number() OVER (PARTITION BY pk0.pp, lv.ip ORDER BY pk0.last, pk0.position) - 1)::int AS ord,
           (count(*) OVER (PARTITION BY pk0.pp, lv.ip))::int AS np
    FROM lv JOIN pk0 ON pk0.id = lv.id
    WHERE NOT EXISTS (
        SELECT 1 FROM unnest(%(exhausted)b::bigint[], %(levels)b::int4[]) AS e(p, i) WHERE e.p = lv.id AND e.i = lv.ip
    )
),
pq AS MATERIALIZED (
    SELECT pk.*, {cap_quota}LEAST(GREATEST(0, r.lim - pk.rr), GREATEST(0, (r.lim - pk.ord + pk.np - 1) / pk.np))) AS quota
    FROM pk CROSS JOIN r
),
cand AS MATERIALIZED (
    SELECT c.n, pq.ip, c.available_at, c.position AS ipos, pq.id AS package_id, pq.pp, pq.last,
           pq.position AS ppos{lock_col}
    FROM pq CROSS JOIN LATERAL (
        SELECT q.n, q.available_at, q.position{q_lock_col} FROM outcome_queue q
        WHERE q.package_id = pq.id AND q.priority = pq.ip AND q.lease_token IS NULL AND q.final IS NULL
          AND q.available_at <= %(now)s{free}
        ORDER BY q.available_at, q.position
        LIMIT pq.quota
        FOR UPDATE SKIP LOCKED
    ) c
),
pf AS MATERIALIZED (
    SELECT pq.*, (SELECT count(*) FROM cand WHERE cand.package_id = pq.id AND cand.ip = pq.ip)::int AS fetched
    FROM pq
),
{edge}cut AS MATERIALIZED (
    SELECT u.pp, max(u.ip) AS ip FROM uneven u WHERE u.pp = (SELECT max(v.pp) FROM uneven v) GROUP BY u.pp
),
picked AS MATERIALIZED (
    SELECT x.n, x.package_id, x.ip,{x_locks}
           row_number() OVER (ORDER BY x.pp DESC, x.ip DESC, x.k, x.last, x.ppos) AS rank
    FROM (
        SELECT cand.*,
               row_number() OVER (PARTITION BY cand.package_id, cand.ip ORDER BY cand.available_at, cand.ipos) AS k
        FROM cand
    ) x
    WHERE NOT EXISTS (SELECT 1 FROM cut WHERE (x.pp, x.ip) < (cut.pp, cut.ip))
),
{gate}clk AS (SELECT nextval('claim_clock') AS v),
-- the narrow row first (its lock is held already), then the outcome row: a HOT update, no index names
-- a column it changes
uq AS (
    UPDATE outcome_queue q
    SET lease_token = (%(tokens)b::text[])[chosen.rank],
        lease_expires_at = (%(nows)b::float8[])[chosen.rank] + r.lease_seconds,
        claim_seq = clk.v * 4096 + chosen.rank
    FROM chosen, clk, r
    WHERE q.n = chosen.n
    RETURNING q.n, q.lease_token, q.lease_expires_at, q.claim_seq, q.priority, chosen.rank
),
upd AS (
    UPDATE outcomes o
    SET status = 'generating', attempts = o.attempts + 1, worker = (%(workers)b::text[])[uq.rank],
        lease_token = uq.lease_token, lease_expires_at = uq.lease_expires_at,
        started_at = (%(nows)b::float8[])[uq.rank], updated_at = (%(nows)b::float8[])[uq.rank],
        claim_seq = uq.claim_seq
    FROM uq
    WHERE o.n = uq.n
    RETURNING o.id, o.item, o.attempts, o.outcome_type, o.specifications, o.outcome_path, o.worker,
              o.started_at, o.lease_token, o.lease_expires_at, o.package_id, uq.priority, uq.rank,
              o.error_message IS NOT NULL AS retried
),
att AS (
    INSERT INTO outcome_attempts (outcome_id, attempt, lease_token, worker, principal, status, started_at)
    SELECT upd.id, upd.attempts, upd.lease_token, upd.worker, (%(principals)b::text[])[upd.rank], 'generating',
           upd.started_at
    FROM upd
)
SELECT pf.id AS pk_id, pf.ip, pf.quota, pf.fetched, pf.name AS package_name, pf.description AS package_description,
       upd.id, upd.item, upd.attempts, upd.outcome_type, upd.specifications, upd.outcome_path,
       upd.lease_token, upd.lease_expires_at, upd.rank, upd.retried, r.name AS run_name, r.gated{orphans}
FROM r LEFT JOIN pf ON true LEFT JOIN upd ON upd.package_id = pf.id AND upd.priority = pf.ip
ORDER BY upd.rank NULLS LAST
"""


_CLAIM_UNEVEN = """-- a level that offered less than its share leaves the others of its tier (those that offered theirs) more:
-- nothing ranked below that tier is taken in this statement (the next round shares again)
uneven AS MATERIALIZED (
    SELECT f.pp, f.ip FROM pf f GROUP BY f.pp, f.ip
    HAVING bool_or(f.fetched < f.quota) AND bool_or(f.quota > 0 AND f.fetched >= f.quota)
),
"""


# a gated claim's levels that may have more eligible items than they offered: they offered their whole quota,
# and their package (through this level, in priority order) did not fetch what its cap has room for. Above
# the best such tier every level offered all it had; nothing ranked below it is taken in this statement
# (its quota was counted on slots the levels above may leave empty: keys held, a cap filled by a better
# level), so an eligible item is never passed over for a lower one. The next round ranks again.
_CLAIM_OPEN = """uneven AS MATERIALIZED (
    SELECT f.pp, f.ip FROM (
        SELECT pf.*, sum(pf.fetched) OVER (PARTITION BY pf.id ORDER BY pf.ip DESC) AS through FROM pf
    ) f
    WHERE f.quota > 0 AND f.fetched >= f.quota AND (f.room IS NULL OR f.through < f.room)
),
"""


# a gated run's leased items by package: what its caps have room for
_CLAIM_LEASED = """rl AS MATERIALIZED (
    SELECT q.package_id, count(*)::int AS n FROM outcome_queue q
    WHERE q.run_id = %(run)s AND q.lease_token IS NOT NULL GROUP BY q.package_id
),
"""


_CLAIM_RUN_ROOM = (
    "GREATEST(0, LEAST(%(limit)s::int, max_concurrent - (SELECT COALESCE(sum(n), 0) FROM rl)::int))"
)


_CLAIM_KEYS_FREE = """
          AND (q.locks IS NULL OR NOT EXISTS (
              SELECT 1 FROM resource_locks l WHERE l.key = ANY(q.locks) AND l.expires_at > %(now)s))"""


_CLAIM_ORPHANS = """, r.lim,
       (SELECT array_agg(t.key) FROM took t WHERE NOT EXISTS (SELECT 1 FROM chosen c WHERE c.n = t.n)) AS orphans,
       (SELECT count(*) FROM losers)::int + (SELECT count(*) FROM within)::int - (SELECT count(*) FROM chosen)::int
           AS lost"""


_CLAIM_UNGATED = """chosen AS (SELECT picked.n, picked.rank FROM picked CROSS JOIN r WHERE picked.rank <= r.lim),
"""


# the keys each candidate wants; a candidate that shares one with a better ranked candidate waits for a later
# claim; the keys of those within the limit are taken (in key order: two claims never wait on each other
# for keys) where free or dead, and a candidate goes on only with every key it wants
_CLAIM_GATE = """wants AS MATERIALIZED (
    SELECT p.n, p.rank, k.key FROM picked p CROSS JOIN LATERAL unnest(p.locks) AS k(key)
),
losers AS MATERIALIZED (
    SELECT DISTINCT p.n, p.pp, p.ip FROM picked p
    JOIN wants w ON w.n = p.n JOIN wants v ON v.key = w.key AND v.rank < w.rank
),
-- a loser's level may have had more items than it offered: as for a dry level, nothing below its tier
lostcut AS MATERIALIZED (
    SELECT l.pp, max(l.ip) AS ip FROM losers l WHERE l.pp = (SELECT max(m.pp) FROM losers m) GROUP BY l.pp
),
eligible AS MATERIALIZED (
    SELECT y.n, y.locks, row_number() OVER (ORDER BY y.rank) AS rank
    FROM (
        SELECT p.*, row_number() OVER (PARTITION BY p.package_id ORDER BY p.rank) AS nth FROM picked p
        WHERE NOT EXISTS (SELECT 1 FROM losers l WHERE l.n = p.n)
          AND NOT EXISTS (SELECT 1 FROM lostcut c WHERE (p.pp, p.ip) < (c.pp, c.ip))
    ) y
    WHERE y.room IS NULL OR y.nth <= y.room  -- a package's levels share its cap's room
),
within AS MATERIALIZED (SELECT e.* FROM eligible e CROSS JOIN r WHERE e.rank <= r.lim),
took AS (
    INSERT INTO resource_locks AS l (key, n, lease_token, run_id, expires_at)
    SELECT w.key, w.n, (%(tokens)b::text[])[c.rank], %(run)s, (%(nows)b::float8[])[c.rank] + r.lease_seconds
    FROM wants w JOIN within c ON c.n = w.n CROSS JOIN r
    ORDER BY w.key
    ON CONFLICT (key) DO UPDATE SET n = EXCLUDED.n, lease_token = EXCLUDED.lease_token, run_id = EXCLUDED.run_id,
        expires_at = EXCLUDED.expires_at
    WHERE l.expires_at <= %(now)s
    RETURNING l.key, l.n
),
chosen AS MATERIALIZED (
    SELECT c.n, c.rank FROM within c
    WHERE c.locks IS NULL OR cardinality(c.locks) = (SELECT count(*) FROM took t WHERE t.n = c.n)
),
"""


CLAIM_SQL = _claim_sql(False)


CLAIM_GATED_SQL = _claim_sql(True)


# a gated claim's first statement: the run's cap when it has one, then its capped packages' (one package when the
# claim names it), each an advisory lock held to the end of the claim transaction, taken in key order: two
# claims of one capped package or run take turns, and the second counts the first's leases in a snapshot taken
# after. Nothing else writes for these keys (the counter roller updates the packages rows a row lock would
# hold). Keys are the two-int4 form (a key space apart from the store's one-bigint locks, migrations.py):
# (0x6D617651, hashtext of the run id) and (0x6D617650, hashint8 of the package id); two that hash alike only
# take turns.
CAP_LOCK_SQL = """
SELECT count(*) AS locks FROM (
    SELECT pg_advisory_xact_lock(k.c, k.h) FROM (
        SELECT 1835103825 AS c, hashtext(id) AS h FROM runs WHERE id = %(run)s AND max_concurrent IS NOT NULL
        UNION ALL
        SELECT 1835103824, hashint8(id) FROM packages
        WHERE run_id = %(run)s AND max_concurrent IS NOT NULL AND (%(package)s::text IS NULL OR name = %(package)s::text)
        ORDER BY 1, 2
    ) k
) l
"""


# the keys a gated claim took for an item that then lost another key to a concurrent claim
DROP_ORPHAN_LOCKS = "DELETE FROM resource_locks WHERE key = ANY(%s::text[]) AND lease_token = ANY(%s::text[])"


# the leases that hold (rules.heartbeat) run on from now: their lock keys first, each while its row is still
# this lease's (a claim may have taken the key of a lease that ran out: the row as it stands decides), then
# the lease itself, unless it ran out and lost one of its keys that way (rules.heartbeat's keys_kept)
HEARTBEAT_SQL = """
WITH l AS MATERIALIZED (SELECT * FROM unnest(%(ids)b::text[], %(tokens)b::text[]) AS l(id, tok)),
hk AS (
    UPDATE resource_locks k SET expires_at = %(now)s + r.lease_seconds
    FROM l JOIN outcomes o ON o.id = l.id JOIN outcome_queue q ON q.n = o.n JOIN runs r ON r.id = o.run_id
    WHERE o.locks IS NOT NULL AND o.lease_token = l.tok AND o.status = 'generating'
      AND k.key = ANY(q.locks) AND k.n = o.n AND k.lease_token = l.tok
    RETURNING k.n
),
h AS (
    UPDATE outcomes o SET lease_expires_at = %(now)s + r.lease_seconds, updated_at = %(now)s
    FROM runs r, l
    WHERE o.id = l.id AND o.lease_token = l.tok AND o.status = 'generating' AND r.id = o.run_id
      AND (o.locks IS NULL OR o.lease_expires_at > %(now)s
           OR (SELECT count(*) FROM hk WHERE hk.n = o.n)
              = (SELECT cardinality(q.locks) FROM outcome_queue q WHERE q.n = o.n))
    RETURNING o.n, o.id, o.lease_token, o.lease_expires_at, r.state
),
hq AS (UPDATE outcome_queue q SET lease_expires_at = h.lease_expires_at FROM h WHERE q.n = h.n)
SELECT id, lease_token, lease_expires_at, state FROM h
"""


# HEARTBEAT_SQL when a lease gives a note: the same, and each held lease's attempt keeps its note (the last one
# given; a lease without one keeps what it had)
HEARTBEAT_NOTE_SQL = HEARTBEAT_SQL.replace(
    "unnest(%(ids)b::text[], %(tokens)b::text[]) AS l(id, tok)",
    "unnest(%(ids)b::text[], %(tokens)b::text[], %(notes)b::text[]) AS l(id, tok, note)",
).replace(
    "\nSELECT id, lease_token, lease_expires_at, state FROM h",
    """,
hn AS (
    UPDATE outcome_attempts a SET note = l.note FROM h JOIN l ON l.id = h.id AND l.tok = h.lease_token
    WHERE l.note IS NOT NULL AND a.outcome_id = h.id AND a.lease_token = h.lease_token
)
SELECT id, lease_token, lease_expires_at, state FROM h""",
)


COMPLETE_SQL = """
WITH cur AS MATERIALIZED (
    SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, p.name AS package_name,
           r.review AS run_review, p.review AS package_review,
           CASE WHEN COALESCE(p.review, r.review) = 'required' THEN 'in_review' ELSE 'complete' END AS reported
    FROM outcomes o JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = o.package_id
    WHERE o.id = %(id)s
    FOR UPDATE OF o
),
u AS (
    UPDATE outcomes o SET status = cur.reported, completed_at = %(now)s,
        duration_seconds = CASE WHEN cur.started_at IS NULL THEN NULL
                                ELSE GREATEST(0.0, %(now)s - cur.started_at) END,
        updated_at = %(now)s, lease_expires_at = NULL, error_message = NULL,
        metrics = %(metrics)s, metadata = %(metadata)s, outcome_path = COALESCE(%(path)s, o.outcome_path),
        content_sha256 = %(sha)s, content_bytes = %(bytes)s, mime_type = %(mime)s
    FROM cur
    WHERE o.n = cur.n AND cur.lease_token = %(token)s AND cur.status = 'generating'
    RETURNING o.duration_seconds
),
uq AS (
    UPDATE outcome_queue q SET lease_token = NULL, lease_expires_at = NULL, final = cur.reported
    FROM cur WHERE q.n = cur.n AND cur.lease_token = %(token)s AND cur.status = 'generating'
    RETURNING q.locks IS NOT NULL AS q_locks, q.dependents AS q_dependents, q.gate AS q_gate
),
a AS (
    UPDATE outcome_attempts a SET status = cur.reported, error = NULL, ended_at = %(now)s
    FROM cur WHERE a.outcome_id = %(id)s AND a.lease_token = %(token)s AND EXISTS (SELECT 1 FROM u)
),
-- an item in_review keeps its metric rows as they were: review_item's approval writes them
md AS (
    DELETE FROM outcome_metrics
    WHERE outcome_id = %(id)s AND NOT (name = ANY(%(names)b::text[])) AND EXISTS (SELECT 1 FROM u)
      AND EXISTS (SELECT 1 FROM cur WHERE cur.reported = 'complete')
),
mi AS (
    INSERT INTO outcome_metrics (outcome_id, name, value)
    SELECT %(id)s, m.k, m.v FROM unnest(%(names)b::text[], %(values)b::float8[]) AS m(k, v)
    WHERE EXISTS (SELECT 1 FROM u) AND EXISTS (SELECT 1 FROM cur WHERE cur.reported = 'complete')
    ON CONFLICT (outcome_id, name) DO UPDATE SET value = EXCLUDED.value
),
ins AS (
    INSERT INTO contents (sha256, body)
    SELECT %(sha)s, %(body)b::bytea WHERE %(body)b::bytea IS NOT NULL AND EXISTS (SELECT 1 FROM u)
    ON CONFLICT (sha256) DO NOTHING
)
SELECT cur.*, EXISTS (SELECT 1 FROM u) AS done, (SELECT duration_seconds FROM u) AS new_duration, uq.*
FROM cur LEFT JOIN uq ON true
"""


# Every complete of one group-commit batch in one statement: the UPDATE itself takes each row whose token
# still holds (its WHERE is re-checked on the row's latest version, so no separate FOR UPDATE pass and no
# lock record), closes its queue row and attempt and writes its metrics. Requests not returned (stale
# token, repeat, unknown id) are answered one by one afterwards.
COMPLETE_MANY_SQL = """
WITH inp AS MATERIALIZED (
    SELECT * FROM unnest(%(ids)b::text[], %(tokens)b::text[], %(nows)b::float8[], %(metrics)b::text[],
                         %(metadata)b::text[], %(paths)b::text[], %(shas)b::text[], %(bytes)b::int8[],
                         %(mimes)b::text[], %(bodies)b::bytea[], %(u_in)b::int8[], %(u_out)b::int8[],
                         %(u_cr)b::int8[], %(u_cc)b::int8[], %(u_cost)b::float8[], %(u_model)b::text[])
        WITH ORDINALITY AS u(id, tok, now, metrics, metadata, path, sha, nbytes, mime, body, u_in, u_out, u_cr,
                             u_cc, u_cost, u_model, i)
),
u AS (
    UPDATE outcomes o SET status = CASE WHEN COALESCE(p.review, r.review) = 'required' THEN 'in_review'
                                        ELSE 'complete' END,
        completed_at = inp.now,
        duration_seconds = CASE WHEN o.started_at IS NULL THEN NULL
                                ELSE GREATEST(0.0, inp.now - o.started_at) END,
        updated_at = inp.now, lease_expires_at = NULL, error_message = NULL,
        metrics = inp.metrics, metadata = inp.metadata, outcome_path = COALESCE(inp.path, o.outcome_path),
        content_sha256 = inp.sha, content_bytes = inp.nbytes, mime_type = inp.mime
    FROM inp, runs r, packages p
    WHERE o.id = inp.id AND o.lease_token = inp.tok AND o.status = 'generating' AND r.id = o.run_id
      AND p.id = o.package_id
    RETURNING o.*, inp.i AS req, r.review AS run_review, p.review AS package_review
),
uq AS (
    UPDATE outcome_queue q SET lease_token = NULL, lease_expires_at = NULL, final = u.status
    FROM u WHERE q.n = u.n
    RETURNING q.n, q.locks, q.locks IS NOT NULL AS q_locks, q.dependents AS q_dependents, q.gate AS q_gate
),
-- the claim policy's part, without a statement of its own: the lock keys each lease held are let go (as
-- RELEASE_LOCKS), and the rows of the packages whose "package/*" dependents these completions may move are
-- locked in id order (as LOCK_PACKAGES: policy.completed_many reads their counters in a later statement)
rl AS (
    DELETE FROM resource_locks l USING u JOIN uq ON uq.n = u.n
    WHERE uq.q_locks AND l.key = ANY(uq.locks) AND l.n = u.n AND l.lease_token = u.lease_token
),
pl AS MATERIALIZED (
    SELECT p.id FROM packages p
    WHERE p.id = ANY(ARRAY(SELECT u.package_id FROM u JOIN uq ON uq.n = u.n WHERE uq.q_gate AND u.status = 'complete'))
    ORDER BY p.id FOR NO KEY UPDATE
),
-- the attempt ends with the usage its report gave (ATTEMPT_USAGE's columns; NULL where not given)
a AS (
    UPDATE outcome_attempts a SET status = u.status, error = NULL, ended_at = u.completed_at,
        input_tokens = COALESCE(inp.u_in, a.input_tokens), output_tokens = COALESCE(inp.u_out, a.output_tokens),
        cache_read_tokens = COALESCE(inp.u_cr, a.cache_read_tokens),
        cache_creation_tokens = COALESCE(inp.u_cc, a.cache_creation_tokens),
        cost_usd = COALESCE(inp.u_cost, a.cost_usd), model = COALESCE(inp.u_model, a.model)
    FROM u JOIN inp ON inp.i = u.req WHERE a.outcome_id = u.id AND a.lease_token = u.lease_token
),
mv AS (
    SELECT m.req, m.k, m.v FROM unnest(%(mreq)b::int8[], %(mnames)b::text[], %(mvalues)b::float8[]) AS m(req, k, v)
),
-- an item in_review keeps its metric rows as they were: review_item's approval writes them
md AS (
    DELETE FROM outcome_metrics om USING u
    WHERE om.outcome_id = u.id AND u.status = 'complete'
      AND NOT EXISTS (SELECT 1 FROM mv WHERE mv.req = u.req AND mv.k = om.name)
),
mi AS (
    INSERT INTO outcome_metrics (outcome_id, name, value)
    SELECT u.id, mv.k, mv.v FROM mv JOIN u ON u.req = mv.req WHERE u.status = 'complete'
    ON CONFLICT (outcome_id, name) DO UPDATE SET value = EXCLUDED.value
),
ins AS (
    INSERT INTO contents (sha256, body)
    SELECT DISTINCT ON (inp.sha) inp.sha, inp.body FROM u JOIN inp ON inp.i = u.req WHERE inp.body IS NOT NULL
    ON CONFLICT (sha256) DO NOTHING
)
SELECT u.*, r.name AS run_name, r.max_attempts AS max_attempts, p.name AS package_name, uq.q_locks,
       uq.q_dependents, uq.q_gate, (SELECT count(*) FROM pl) AS gates_locked
FROM u JOIN runs r ON r.id = u.run_id JOIN packages p ON p.id = u.package_id JOIN uq ON uq.n = u.n
"""


SWEEP_SQL = """
WITH exp AS MATERIALIZED (
    -- the narrow queue's leased rows (partial index outcome_queue_leased); both rows locked or skipped,
    -- so the sweep never waits on a report that holds the outcome row
    SELECT q.n, q.lease_token AS tok, q.locks, q.dependents, q.gate FROM outcome_queue q JOIN outcomes o ON o.n = q.n
    WHERE q.run_id = %(run)s AND q.lease_token IS NOT NULL AND q.lease_expires_at <= %(now)s
      AND EXISTS (SELECT 1 FROM runs WHERE id = %(run)s AND state <> 'cancelled')
    LIMIT %(limit)s
    FOR UPDATE OF q, o SKIP LOCKED
),
r AS (SELECT max_attempts, on_dependency_failure FROM runs WHERE id = %(run)s),
-- the lock keys the expired leases held
rel AS (
    DELETE FROM resource_locks l USING exp
    WHERE exp.locks IS NOT NULL AND l.key = ANY(exp.locks) AND l.n = exp.n AND l.lease_token = exp.tok
),
-- rules.lease_expiry and rules.lease_expired_error, in SQL (tests/rules/test_rules.py holds them together)
t AS (
    SELECT o.n, CASE WHEN o.attempts >= r.max_attempts THEN 'failed' ELSE 'pending' END AS target
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
    RETURNING o.n, o.id, o.run_id, o.item, o.package_id, o.attempts, o.lease_token, o.started_at, t.target
),
uq AS (
    UPDATE outcome_queue q SET lease_token = NULL, lease_expires_at = NULL,
        final = CASE WHEN t.target = 'pending' THEN NULL ELSE t.target END,
        available_at = CASE WHEN t.target = 'pending' THEN %(now)s ELSE q.available_at END
    FROM t WHERE q.n = t.n
),
att AS (
    UPDATE outcome_attempts a SET status = 'failed', error = 'lease expired', ended_at = %(now)s
    FROM upd WHERE a.outcome_id = upd.id AND a.lease_token = upd.lease_token
)
SELECT upd.*, p.name AS package_name, exp.dependents AS q_dependents, exp.gate AS q_gate,
       (SELECT on_dependency_failure FROM r) AS on_dependency_failure
FROM upd JOIN packages p ON p.id = upd.package_id JOIN exp ON exp.n = upd.n ORDER BY upd.n
"""


# one chunk of deltas folded in one statement; each package's histogram deltas travel with its row of `c`
# (a correlated lookup in a CTE of the chunk scanned the whole chunk once per package: a 20,000-package
# plan's chunk never finished inside the deadline, and its deltas were never rolled)
ROLLUP_SQL = """
WITH d AS (
    DELETE FROM package_deltas
    WHERE id IN (SELECT id FROM package_deltas ORDER BY id LIMIT %(chunk)s)
    RETURNING *
),
c AS (
    SELECT package_id, SUM(total) AS total, SUM(pending) AS pending, SUM(generating) AS generating,
           SUM(complete) AS complete, SUM(failed) AS failed, SUM(cancelled) AS cancelled, SUM(blocked) AS blocked,
           SUM(duration_sum) AS duration_sum, SUM(duration_n) AS duration_n, SUM(lines_sum) AS lines_sum,
           SUM(quality_sum) AS quality_sum, SUM(quality_n) AS quality_n, SUM(in_review) AS in_review,
           SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens,
           SUM(cache_read_tokens) AS cache_read_tokens, SUM(cache_creation_tokens) AS cache_creation_tokens,
           SUM(cost_usd) AS cost_usd,
           array_agg(bucket) FILTER (WHERE bucket IS NOT NULL) AS hb,
           array_agg(bucket_n) FILTER (WHERE bucket IS NOT NULL) AS hn
    FROM d WHERE package_id IS NOT NULL GROUP BY package_id
),
u AS (
    UPDATE packages p SET
        total = p.total + c.total, pending = p.pending + c.pending, generating = p.generating + c.generating,
        complete = p.complete + c.complete, failed = p.failed + c.failed, cancelled = p.cancelled + c.cancelled,
        blocked = p.blocked + c.blocked,
        duration_sum = p.duration_sum + c.duration_sum, duration_n = p.duration_n + c.duration_n,
        lines_sum = p.lines_sum + c.lines_sum, quality_sum = p.quality_sum + c.quality_sum,
        quality_n = p.quality_n + c.quality_n, in_review = p.in_review + c.in_review,
        input_tokens = p.input_tokens + c.input_tokens, output_tokens = p.output_tokens + c.output_tokens,
        cache_read_tokens = p.cache_read_tokens + c.cache_read_tokens,
        cache_creation_tokens = p.cache_creation_tokens + c.cache_creation_tokens,
        cost_usd = p.cost_usd + c.cost_usd,
        (hist_b, hist_n) = (
            SELECT COALESCE(array_agg(y.b ORDER BY y.b), '{}'), COALESCE(array_agg(y.n ORDER BY y.b), '{}')
            FROM (
                SELECT x.b, SUM(x.n)::int8 AS n FROM (
                    SELECT h.b, h.n FROM unnest(p.hist_b, p.hist_n) AS h(b, n)
                    UNION ALL
                    SELECT k.b, k.n FROM unnest(c.hb, c.hn) AS k(b, n)
                ) x GROUP BY x.b HAVING SUM(x.n) <> 0
            ) y
        )
    FROM c WHERE p.id = c.package_id
),
rc AS (
    INSERT INTO run_counters AS t (run_id, pending, generating, complete, failed, cancelled, blocked, in_review,
                                   input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, cost_usd)
    SELECT run_id, SUM(pending), SUM(generating), SUM(complete), SUM(failed), SUM(cancelled), SUM(blocked),
           SUM(in_review), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens),
           SUM(cache_creation_tokens), SUM(cost_usd) FROM d
    WHERE package_id IS NOT NULL AND run_id IN (SELECT id FROM runs) GROUP BY run_id
    ON CONFLICT (run_id) DO UPDATE SET
        pending = t.pending + EXCLUDED.pending, generating = t.generating + EXCLUDED.generating,
        complete = t.complete + EXCLUDED.complete, failed = t.failed + EXCLUDED.failed,
        cancelled = t.cancelled + EXCLUDED.cancelled, blocked = t.blocked + EXCLUDED.blocked,
        in_review = t.in_review + EXCLUDED.in_review, input_tokens = t.input_tokens + EXCLUDED.input_tokens,
        output_tokens = t.output_tokens + EXCLUDED.output_tokens,
        cache_read_tokens = t.cache_read_tokens + EXCLUDED.cache_read_tokens,
        cache_creation_tokens = t.cache_creation_tokens + EXCLUDED.cache_creation_tokens,
        cost_usd = t.cost_usd + EXCLUDED.cost_usd
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


# when a short claim may ask again: the earliest time of the column rules.why_nothing names
EARLIEST = {
    "available_at": "SELECT MIN(available_at) AS t FROM outcome_queue"
    " WHERE package_id IN (SELECT id FROM packages WHERE run_id = %s) AND lease_token IS NULL AND final IS NULL",
    "lease_expires_at": "SELECT MIN(lease_expires_at) AS t FROM outcome_queue"
    " WHERE run_id = %s AND lease_token IS NOT NULL",
}


RECOVER_CLAIMS_SQL = (
    "SELECT o.id, o.item, o.attempts, o.outcome_type, o.specifications, o.outcome_path, o.lease_token,"
    " o.lease_expires_at, o.error_message IS NOT NULL AS retried, p.name AS package_name,"
    " p.description AS package_description, r.name AS run_name"
    " FROM outcome_queue q JOIN outcomes o ON o.n = q.n JOIN packages p ON p.id = o.package_id"
    " JOIN runs r ON r.id = o.run_id"
    # the run's leased rows only (partial index outcome_queue_leased), not a scan of every outcome
    " WHERE q.run_id = ANY(%s::text[]) AND q.lease_token IS NOT NULL AND q.lease_token = ANY(%s::text[])"
    " AND o.status = 'generating' ORDER BY q.claim_seq"
)


# a cancelled run's pending and blocked items (its leases are left for their workers): the narrow rows first
# (pending by the claim index, blocked by the status index), re-checked as they are updated, then the
# outcome rows; by package and former status
CANCEL_PENDING_SQL = """
WITH old AS MATERIALIZED (
    SELECT q.n, 'pending' AS was FROM outcome_queue q
    WHERE q.package_id IN (SELECT id FROM packages WHERE run_id = %(run)s) AND q.lease_token IS NULL
      AND q.final IS NULL
    UNION ALL
    SELECT q.n, 'blocked' FROM outcome_queue q
    WHERE q.run_id = %(run)s AND q.lease_token IS NULL AND q.final >= 'blocked' AND q.final <= 'blocked'
),
cq AS (
    UPDATE outcome_queue q SET final = 'cancelled' FROM old
    WHERE q.n = old.n AND q.lease_token IS NULL AND q.final IS NOT DISTINCT FROM NULLIF(old.was, 'pending')
    RETURNING q.n, old.was
),
u AS (
    UPDATE outcomes o SET status = 'cancelled', updated_at = %(now)s, completed_at = %(now)s
    FROM cq WHERE o.n = cq.n AND o.status = cq.was
    RETURNING o.package_id, cq.was
)
SELECT package_id, was, count(*) AS n FROM u GROUP BY package_id, was
"""


RECOVER_ANSWERS_SQL = "SELECT key, answer FROM write_answers WHERE key = ANY(%s::text[])"


HELD_SQL = (
    "SELECT o.id, o.item, o.attempts, o.outcome_type, o.specifications, o.outcome_path, o.lease_token,"
    " o.lease_expires_at, o.error_message IS NOT NULL AS retried, p.name AS package_name,"
    " p.description AS package_description, r.name AS run_name"
    " FROM outcome_queue q JOIN outcomes o ON o.n = q.n JOIN packages p ON p.id = o.package_id"
    " JOIN runs r ON r.id = o.run_id"
    " WHERE q.run_id = %s AND q.lease_token IS NOT NULL AND o.status = 'generating' AND o.worker = %s"
    " AND o.started_at = %s ORDER BY q.claim_seq LIMIT %s"
)


@cache
def update_outcome(columns: tuple[str, ...]) -> str:
    """The UPDATE of one outcome row (by `n`) that a rules.Transition's values make: one text per transition
    shape, so each stays a prepared statement. Column names come from rules, never from input."""
    return "UPDATE outcomes SET " + ", ".join(c + " = %s" for c in columns) + " WHERE n = %s"


END_ATTEMPT = "UPDATE outcome_attempts SET status = %s, error = %s, ended_at = %s WHERE outcome_id = %s AND lease_token = %s"


# Tx.apply_many, set-based: the types of the outcome columns a rules.Transition sets (the names come from rules)
OUTCOME_COLUMN_TYPES = {
    "status": "text",
    "updated_at": "float8",
    "error_message": "text",
    "available_at": "float8",
    "completed_at": "float8",
    "duration_seconds": "float8",
    "started_at": "float8",
    "lease_expires_at": "float8",
    "lease_token": "text",
    "worker": "text",
    "created_by": "text",
    "attempts": "int4",
    "metrics": "text",
    "metadata": "text",
    "outcome_path": "text",
    "content_sha256": "text",
    "content_bytes": "int8",
    "mime_type": "text",
}


@cache
def update_outcomes(columns: tuple[str, ...]) -> str:
    """update_outcome for many rows of one transition shape: their `n`, then one array per column."""
    arrays = ", ".join(f"%b::{OUTCOME_COLUMN_TYPES[c]}[]" for c in columns)
    return (
        "UPDATE outcomes o SET "
        + ", ".join(f"{c} = v.{c}" for c in columns)
        + f" FROM unnest(%b::int8[], {arrays}) AS v(n, {', '.join(columns)}) WHERE o.n = v.n"
    )


END_ATTEMPTS = (
    "UPDATE outcome_attempts a SET status = v.status, error = v.error, ended_at = v.ended_at"
    " FROM unnest(%b::text[], %b::text[], %b::float8[], %b::text[], %b::text[])"
    " AS v(status, error, ended_at, id, tok) WHERE a.outcome_id = v.id AND a.lease_token = v.tok"
)


# REQUEUE for many rows (their flags come back with their `n`)
REQUEUE_MANY = (
    "UPDATE outcome_queue q SET lease_token = v.tok, lease_expires_at = v.expires, final = v.final,"
    " available_at = COALESCE(v.avail, q.available_at)"
    " FROM unnest(%b::int8[], %b::text[], %b::float8[], %b::text[], %b::float8[]) AS v(n, tok, expires, final, avail)"
    " WHERE q.n = v.n"
    " RETURNING q.n, q.locks IS NOT NULL AS q_locks, q.dependents AS q_dependents, q.gate AS q_gate"
)


CLEAR_METRICS_MANY = "DELETE FROM outcome_metrics WHERE outcome_id = ANY(%b::text[])"


INSERT_METRICS_MANY = (
    "INSERT INTO outcome_metrics (outcome_id, name, value)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::float8[]) AS m(id, k, v)"
    " ON CONFLICT (outcome_id, name) DO UPDATE SET value = EXCLUDED.value"
)


# the narrow queue row of an outcome whose status changed outside a claim: leased under a token
# (generating), claimable from available_at (pending) or out of the queue with its final status
REQUEUE = (
    "UPDATE outcome_queue SET lease_token = %s, lease_expires_at = %s, final = %s,"
    " available_at = COALESCE(%s, available_at) WHERE n = %s"
    " RETURNING locks IS NOT NULL AS q_locks, dependents AS q_dependents, gate AS q_gate"
)


CLEAR_METRICS = "DELETE FROM outcome_metrics WHERE outcome_id = %s"


INSERT_METRICS = (
    "INSERT INTO outcome_metrics (outcome_id, name, value)"
    " SELECT %s, k, v FROM unnest(%b::text[], %b::float8[]) AS m(k, v)"
    " ON CONFLICT (outcome_id, name) DO UPDATE SET value = EXCLUDED.value"
)


# ---- runs.py ----------------------------------------------------------------------------------------


PLAN_SELECT_RUNS = "SELECT id, state, outcome_type FROM runs WHERE name = %s FOR NO KEY UPDATE"


PLAN_INSERT_RUNS = (
    "INSERT INTO runs (id, name, goal, outcome_type, lease_seconds, max_attempts, backoff_seconds, "
    "backoff_cap_seconds, outcome_schema, max_concurrent, on_dependency_failure, review, max_cost_usd, max_tokens,"
    " gated, created_at, updated_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING id"
)


PLAN_SELECT_PACKAGES = (
    "SELECT id, name, has_dependents FROM packages WHERE run_id = %s AND name = ANY(%b::text[])"
)


PLAN_SELECT_PACKAGES_2 = "SELECT COALESCE(MAX(position) + 1, 0) AS pos FROM packages WHERE run_id = %s"


PLAN_INSERT_PACKAGES = (
    "INSERT INTO packages (run_id, name, description, position, priority, max_concurrent, after, review)"
    " SELECT %s, n, d, %s + i - 1, pr, mc, af, rv FROM unnest(%b::text[], %b::text[], %b::int4[], %b::int4[],"
    " %b::text[], %b::text[]) WITH ORDINALITY AS u(n, d, pr, mc, af, rv, i) RETURNING id, name"
)


PLAN_SELECT_OUTCOMES = (
    "SELECT package_id, MAX(position) + 1 AS pos FROM outcomes WHERE package_id = ANY(%b::bigint[]) "
    "GROUP BY package_id"
)


# a plan's items, each pending or blocked (rules.initial_status of its `waiting`) with its priority and lock
# keys (JSON on the outcome, an array on the queue row), and its queue flags; the items inserted (an item
# the package has already is left as it is)
PLAN_INSERT_OUTCOMES = """
WITH u AS MATERIALIZED (
    SELECT * FROM unnest(%(pids)b::bigint[], %(items)b::text[], %(pos)b::int[], %(specs)b::text[],
                         %(prios)b::int4[], %(locks)b::text[], %(waiting)b::int4[], %(deps)b::bool[],
                         %(gates)b::bool[])
        WITH ORDINALITY AS u(pid, item, pos, spec, prio, locks, waiting, deps, gate, i)
),
ins AS (
    INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type, specifications,
                          available_at, created_at, updated_at, priority, locks, waiting)
    SELECT gen_random_uuid()::text, %(run)s, u.pid, u.item, u.pos,
           CASE WHEN u.waiting > 0 THEN 'blocked' ELSE 'pending' END, %(ot)s, u.spec, %(now)s, %(now)s,
           %(now)s, u.prio, u.locks, u.waiting
    FROM u ORDER BY u.i
    ON CONFLICT (package_id, item) DO NOTHING
    RETURNING n, package_id, item, position, status, priority, locks
),
q AS (
    INSERT INTO outcome_queue (n, run_id, package_id, position, available_at, final, priority, locks, dependents,
                               gate)
    SELECT ins.n, %(run)s, ins.package_id, ins.position, %(now)s, NULLIF(ins.status, 'pending'), ins.priority,
           CASE WHEN ins.locks IS NOT NULL THEN ARRAY(SELECT jsonb_array_elements_text(ins.locks::jsonb)) END,
           u.deps, u.gate
    FROM ins JOIN u ON u.pid = ins.package_id AND u.item = ins.item ORDER BY ins.n
)
SELECT n, package_id, item, status, priority FROM ins
"""


PLAN_UPDATE_RUNS = "UPDATE runs SET updated_at = %s WHERE id = %s"


CONTROL_RUN_SELECT_RUNS = "SELECT state FROM runs WHERE id = %s FOR NO KEY UPDATE"


# a state set by hand says no reason (a budget's pause says its own: RUN_PAUSE_FOR_BUDGET)
CONTROL_RUN_UPDATE_RUNS = "UPDATE runs SET state = %s, updated_at = %s, paused_reason = NULL WHERE id = %s"


# ---- work.py ----------------------------------------------------------------------------------------


RUN_STATE = "SELECT state FROM runs WHERE id = %s"


# EARLIEST narrowed to one package of the run (run_id, name)
IN_PACKAGE = " AND package_id IN (SELECT id FROM packages WHERE run_id = %s AND name = %s)"


NEXT_CLAIMS_SELECT_OUTCOME_ATTEMPTS = (
    "SELECT ended_at, worker FROM outcome_attempts WHERE outcome_id = %s AND lease_token = %s"
)


LEASED_ROW_SELECT_OUTCOMES = (
    "SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, r.state AS run_state,"
    " r.on_dependency_failure, p.name AS package_name FROM outcomes o JOIN runs r ON r.id = o.run_id JOIN packages p ON p.id = "
    "o.package_id WHERE o.id = %s FOR UPDATE OF o"
)


WHY_NOTHING_SELECT_PACKAGE_COUNTERS = (
    "SELECT COALESCE(SUM(pending),0)::bigint AS pending, COALESCE(SUM(generating),0)::bigint AS "
    "generating, COALESCE(SUM(blocked),0)::bigint AS blocked, COUNT(*) AS n,"
    " COALESCE(SUM(in_review),0)::bigint AS in_review,"
    " COALESCE(SUM(total),0)::bigint AS total FROM package_counters WHERE "
    "run_id = %s AND (%s::text IS NULL OR name = %s::text)"
)


WHY_NOTHING_SELECT_PACKAGE_COUNTERS_2 = (
    "SELECT COALESCE(SUM(total),0)::bigint AS total FROM package_counters WHERE run_id = %s"
)


FAIL_SELECT_OUTCOME_ATTEMPTS = (
    "SELECT status, error FROM outcome_attempts WHERE outcome_id = %s AND lease_token = %s"
)


PACKAGE_ID = "SELECT id, has_dependents FROM packages WHERE run_id = %s AND name = %s"


RETRY_REQUEUE_FAILED = (
    "WITH u AS (UPDATE outcomes SET status = 'pending', attempts = 0, available_at = %(now)s, "
    "completed_at = NULL, duration_seconds = NULL, updated_at = %(now)s WHERE run_id = %(run)s AND "
    "status = 'failed' AND (%(pid)s::bigint IS NULL OR package_id = %(pid)s::bigint) AND "
    "(%(ids)b::text[] IS NULL OR id = ANY(%(ids)b::text[])) RETURNING n, id, package_id), q AS "
    "(UPDATE outcome_queue q SET final = NULL, lease_token = NULL, lease_expires_at = NULL, "
    "available_at = %(now)s FROM u WHERE q.n = u.n) SELECT n, id, package_id FROM u"
)


# ---- tracking.py ------------------------------------------------------------------------------------


SET_STATUS_SELECT_OUTCOME_QUEUE = (
    "SELECT 1 FROM outcome_queue WHERE n = (SELECT n FROM outcomes WHERE id = %s) FOR UPDATE"
)


SET_STATUS_SELECT_OUTCOMES = (
    "SELECT o.*, r.lease_seconds, r.on_dependency_failure, p.name AS package_name FROM outcomes o"
    " JOIN runs r ON r.id = "
    "o.run_id JOIN packages p ON p.id = o.package_id WHERE o.id = %s FOR UPDATE OF o"
)


RECORD_OUTCOME_SELECT_RUNS = "SELECT outcome_type, state FROM runs WHERE id = %s FOR NO KEY UPDATE"


RECORD_OUTCOME_INSERT_PACKAGES = (
    "INSERT INTO packages (run_id, name, position) SELECT %s, %s, COALESCE(MAX(position) + 1, 0) "
    "FROM packages WHERE run_id = %s RETURNING id"
)


RECORD_OUTCOME_SELECT_OUTCOMES = "SELECT id FROM outcomes WHERE package_id = %s AND item = %s"


RECORD_OUTCOME_INSERT_OUTCOMES = (
    "WITH ins AS (INSERT INTO outcomes (id, run_id, package_id, item, position, status, "
    "outcome_type, specifications, created_by, available_at, created_at, updated_at) SELECT %s, %s, "
    "%s, %s, COALESCE(MAX(position) + 1, 0), 'pending', %s, %s, %s, %s, %s, %s FROM outcomes WHERE "
    "package_id = %s RETURNING n, run_id, package_id, position, available_at),"
    # the item's queue row carries its package's flag; the package's priority range takes in its 0
    " p AS (UPDATE packages SET prio_lo = LEAST(prio_lo, 0), prio_hi = GREATEST(prio_hi, 0) WHERE id = %s"
    " RETURNING id, has_dependents)"
    " INSERT INTO outcome_queue (n, run_id, package_id, position, available_at, gate) SELECT ins.n, ins.run_id,"
    " ins.package_id, ins.position, ins.available_at, COALESCE((SELECT has_dependents FROM p), false) FROM ins"
)


# a package's counters before record_outcome adds an item to it (policy.grew)
RECORD_OUTCOME_PACKAGE_DONE = "SELECT id, complete, total, has_dependents FROM package_counters WHERE id = %s"


RECORD_INTEGRATION_SELECT_OUTCOMES = "SELECT 1 FROM outcomes WHERE id = %s"


RECORD_INTEGRATION_INSERT_INTEGRATION_LOGS = (
    "WITH l AS (INSERT INTO integration_logs (run_id, outcome_id, integration_type, action, status, "
    "details, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *) SELECT l.*, r.name AS "
    "run_name FROM l LEFT JOIN runs r ON r.id = l.run_id"
)


GET_OUTCOME_SELECT_OUTCOME_ATTEMPTS = (
    "SELECT attempt, worker, principal, status, error, started_at, ended_at, note, input_tokens, output_tokens,"
    " cache_read_tokens, cache_creation_tokens, cost_usd, model, review_decision, review_note, reviewed_by"
    " FROM outcome_attempts WHERE outcome_id = %s ORDER BY started_at, attempt"
)


CELLS_SELECT_OUTCOMES = (
    "SELECT o.id, p.name AS package, o.item, o.status FROM outcomes o JOIN packages p ON p.id = "
    "o.package_id WHERE o.run_id = %s ORDER BY o.n"
)


# ---- keys.py ----------------------------------------------------------------------------------------


CREATE_API_KEY_INSERT_API_KEYS = (
    "INSERT INTO api_keys (name, key_hash, scopes, created_at) VALUES (%s, %s, %s, %s) ON CONFLICT "
    "(name) DO NOTHING RETURNING name"
)


LIST_API_KEYS_SELECT_API_KEYS = "SELECT * FROM api_keys ORDER BY name"


REVOKE_API_KEY_UPDATE_API_KEYS = (
    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE name = %s RETURNING *"
)


API_KEY_BY_HASH_SELECT_API_KEYS = "SELECT * FROM api_keys WHERE key_hash = %s"


TOUCH_API_KEY_UPDATE_API_KEYS = (
    "UPDATE api_keys SET last_used_at = GREATEST(COALESCE(last_used_at, 0), %s) WHERE name = %s"
)


REVOKE_SESSION_DELETE_REVOKED_SESSIONS = "DELETE FROM revoked_sessions WHERE expires_at < %s"


REVOKE_SESSION_INSERT_REVOKED_SESSIONS = (
    "INSERT INTO revoked_sessions (session_id, expires_at) VALUES (%s, %s) ON CONFLICT (session_id) "
    "DO NOTHING"
)


SESSION_REVOKED_SELECT_REVOKED_SESSIONS = "SELECT 1 FROM revoked_sessions WHERE session_id = %s"


# ---- content.py -------------------------------------------------------------------------------------


INLINE_CONTENT_SELECT_CONTENTS = "SELECT body FROM contents WHERE sha256 = %s"


CONTENT_HASHES_SELECT_OUTCOMES = (
    "SELECT DISTINCT content_sha256 FROM outcomes WHERE content_sha256 IS NOT NULL"
)


COLLECT_CONTENTS_SELECT_CONTENTS = (
    "SELECT c.sha256 FROM contents c WHERE NOT EXISTS (SELECT 1 FROM outcomes o WHERE "
    "o.content_sha256 = c.sha256)"
)


COLLECT_CONTENTS_DELETE_CONTENTS = (
    "DELETE FROM contents WHERE sha256 = ANY(%(c)s) AND sha256 NOT IN (SELECT content_sha256 FROM "
    "outcomes WHERE content_sha256 = ANY(%(c)s)) RETURNING octet_length(body) AS size"
)


CONTENT_FILES_SELECT_EVENTS = (
    "SELECT e.seq, o.id, o.outcome_path, o.content_sha256 FROM events e JOIN outcomes o ON o.id = "
    "e.outcome_id WHERE e.seq > %s AND e.kind = 'completed' AND o.status = 'complete' AND "
    "o.content_sha256 IS NOT NULL AND o.outcome_path IS NOT NULL ORDER BY e.seq LIMIT %s"
)


# ---- counters.py ------------------------------------------------------------------------------------


PACKAGE_TRUTH_SELECT_OUTCOMES = (
    "SELECT status, COUNT(*) AS n FROM outcomes WHERE package_id = %s GROUP BY status"
)


PACKAGE_TRUTH_SELECT_OUTCOMES_2 = (
    "SELECT metrics, duration_seconds FROM outcomes WHERE package_id = %s AND status = 'complete'"
)


RECOUNT_ROWS_SELECT_PACKAGE_COUNTERS = (
    "SELECT p.*, r.name AS run_name FROM package_counters p JOIN runs r ON r.id = p.run_id "
)


RECOUNT_ROWS_SELECT_PACKAGE_HIST = "SELECT bucket, n FROM package_hist WHERE package_id = %s AND n <> 0"


REBUILD_ROWS_SELECT_PACKAGES = "SELECT id FROM packages "


REBUILD_ROWS_SELECT_RUNS = "SELECT id FROM runs"


REBUILD_ROWS_DELETE_PACKAGE_DELTAS = "DELETE FROM package_deltas WHERE package_id = ANY(%b::bigint[])"


# after a rebuild (whose packages have no deltas left), each rebuilt run's totals are its packages' sums
REBUILD_RUN_COUNTERS = (
    "INSERT INTO run_counters AS t (run_id, pending, generating, complete, failed, cancelled, blocked, in_review,"
    " input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, cost_usd)"
    " SELECT r.id, COALESCE(SUM(p.pending), 0), COALESCE(SUM(p.generating), 0), COALESCE(SUM(p.complete), 0),"
    " COALESCE(SUM(p.failed), 0), COALESCE(SUM(p.cancelled), 0), COALESCE(SUM(p.blocked), 0),"
    " COALESCE(SUM(p.in_review), 0), COALESCE(SUM(p.input_tokens), 0), COALESCE(SUM(p.output_tokens), 0),"
    " COALESCE(SUM(p.cache_read_tokens), 0), COALESCE(SUM(p.cache_creation_tokens), 0),"
    " COALESCE(SUM(p.cost_usd), 0) FROM runs r LEFT JOIN packages p ON p.run_id = r.id"
    " WHERE r.id = ANY(%s::text[]) GROUP BY r.id ON CONFLICT (run_id) DO UPDATE SET pending = EXCLUDED.pending,"
    " generating = EXCLUDED.generating, complete = EXCLUDED.complete, failed = EXCLUDED.failed,"
    " cancelled = EXCLUDED.cancelled, blocked = EXCLUDED.blocked, in_review = EXCLUDED.in_review,"
    " input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,"
    " cache_read_tokens = EXCLUDED.cache_read_tokens, cache_creation_tokens = EXCLUDED.cache_creation_tokens,"
    " cost_usd = EXCLUDED.cost_usd"
)


# what each run's totals row (with the deltas not rolled) says, beside the sum of its packages' counters
RECOUNT_RUN_COUNTERS = (
    "SELECT r.id, r.name, COALESCE(t.pending, 0) + COALESCE(d.pending, 0) AS pending,"
    " COALESCE(t.generating, 0) + COALESCE(d.generating, 0) AS generating,"
    " COALESCE(t.complete, 0) + COALESCE(d.complete, 0) AS complete,"
    " COALESCE(t.failed, 0) + COALESCE(d.failed, 0) AS failed,"
    " COALESCE(t.cancelled, 0) + COALESCE(d.cancelled, 0) AS cancelled,"
    " COALESCE(t.blocked, 0) + COALESCE(d.blocked, 0) AS blocked,"
    " COALESCE(t.in_review, 0) + COALESCE(d.in_review, 0) AS in_review,"
    " p.pending AS p_pending, p.generating AS p_generating, p.complete AS p_complete, p.failed AS p_failed,"
    " p.cancelled AS p_cancelled, p.blocked AS p_blocked, p.in_review AS p_in_review FROM runs r LEFT JOIN run_counters t ON t.run_id = r.id"
    " LEFT JOIN LATERAL (SELECT SUM(x.pending) AS pending, SUM(x.generating) AS generating,"
    " SUM(x.complete) AS complete, SUM(x.failed) AS failed, SUM(x.cancelled) AS cancelled,"
    " SUM(x.blocked) AS blocked, SUM(x.in_review) AS in_review FROM package_deltas x"
    " WHERE x.run_id = r.id AND x.package_id IS NOT NULL) d ON true"
    " LEFT JOIN LATERAL (SELECT COALESCE(SUM(c.pending), 0) AS pending, COALESCE(SUM(c.generating), 0) AS generating,"
    " COALESCE(SUM(c.complete), 0) AS complete, COALESCE(SUM(c.failed), 0) AS failed,"
    " COALESCE(SUM(c.cancelled), 0) AS cancelled, COALESCE(SUM(c.blocked), 0) AS blocked,"
    " COALESCE(SUM(c.in_review), 0) AS in_review FROM package_counters c WHERE c.run_id = r.id) p ON true"
    " WHERE r.id = ANY(%s::text[]) OR %s::text[] IS NULL ORDER BY r.name"
)


REBUILD_ROWS_UPDATE_PACKAGES = (
    "UPDATE packages SET total = %s, pending = %s, generating = %s, complete = %s, failed = %s, "
    "cancelled = %s, blocked = %s, in_review = %s, duration_sum = %s, duration_n = %s, lines_sum = %s,"
    " quality_sum = %s, quality_n = %s, input_tokens = %s, output_tokens = %s, cache_read_tokens = %s,"
    " cache_creation_tokens = %s, cost_usd = %s, hist_b = %b::int4[], hist_n = %b::int8[] WHERE id = %s"
)


RUN_MINUTES_SELECT_RUN_MINUTES = (
    "SELECT minute, completed::bigint AS completed, failed::bigint AS failed FROM run_minutes WHERE "
    "run_id = %s AND minute >= %s ORDER BY minute"
)


FINISHED_SPAN_SELECT_OUTCOMES = (
    "SELECT COUNT(*)::bigint AS n, MIN(started_at) AS first, MAX(completed_at) AS last FROM outcomes "
    "WHERE run_id = %s AND status IN ('complete', 'failed')"
)


SYSTEM_METRICS_SELECT_PACKAGE_COUNTERS = (
    "SELECT COALESCE(SUM(pending),0)::bigint AS pending, COALESCE(SUM(generating),0)::bigint AS "
    "generating, COALESCE(SUM(complete),0)::bigint AS complete, COALESCE(SUM(failed),0)::bigint AS "
    "failed, COALESCE(SUM(cancelled),0)::bigint AS cancelled, COALESCE(SUM(blocked),0)::bigint AS blocked, "
    "COALESCE(SUM(in_review),0)::bigint AS in_review, COALESCE(SUM(duration_sum),0)::float8 "
    "AS ds, COALESCE(SUM(duration_n),0)::bigint AS dn, COALESCE(SUM(lines_sum),0)::float8 AS ls, "
    "COALESCE(SUM(quality_sum),0)::float8 AS qs, COALESCE(SUM(quality_n),0)::bigint AS qn, "
    "COALESCE(SUM(input_tokens),0)::bigint AS input_tokens, COALESCE(SUM(output_tokens),0)::bigint AS output_tokens, "
    "COALESCE(SUM(cache_read_tokens),0)::bigint AS cache_read_tokens, "
    "COALESCE(SUM(cache_creation_tokens),0)::bigint AS cache_creation_tokens, "
    "COALESCE(SUM(cost_usd),0)::float8 AS cost_usd FROM package_counters "
)


SYSTEM_METRICS_SELECT_RUN_MINUTES = (
    "SELECT minute / 60 AS hour, SUM(completed)::bigint AS completed, SUM(failed)::bigint AS failed, "
    "SUM(duration_sum)::float8 AS ds, SUM(duration_n)::bigint AS dn FROM run_minutes WHERE minute >= "
    "%s"
)


SYSTEM_METRICS_SELECT_RUNS = "SELECT name FROM runs WHERE id = %s"


STATUS_COUNTS_SELECT_PACKAGE_COUNTERS = (
    "SELECT name, SUM(pending) AS pending, SUM(generating) AS generating, SUM(complete) AS complete, "
    "SUM(failed) AS failed, SUM(cancelled) AS cancelled, SUM(blocked) AS blocked, SUM(in_review) AS in_review"
    " FROM package_counters GROUP BY name ORDER BY "
    "name"
)


# /metrics: totals over every package row, and the first `limit` names with unfinished work
STATUS_SUMS = (
    "SUM(pending) AS pending, SUM(generating) AS generating, SUM(complete) AS complete,"
    " SUM(failed) AS failed, SUM(cancelled) AS cancelled, SUM(blocked) AS blocked, SUM(in_review) AS in_review"
)


# planned on estimates that count every package, these cheap statements cross the JIT threshold:
# compiling took 0.6-1.6 s here for 10 ms of work
JIT_OFF = "SET LOCAL jit = off"


# totals: each run's rolled counters (one row per run) plus the package deltas not rolled yet
ACTIVE_TOTALS = (
    f"SELECT {STATUS_SUMS} FROM (SELECT pending, generating, complete, failed, cancelled, blocked, in_review"
    " FROM run_counters UNION ALL SELECT pending, generating, complete, failed, cancelled, blocked, in_review"
    " FROM package_deltas WHERE bucket IS NULL AND package_id IS NOT NULL) t"
)


ACTIVE_NAMES = (
    "SELECT p.name FROM package_counters p JOIN runs r ON r.id = p.run_id"
    " WHERE r.state <> 'cancelled' AND p.pending + p.generating + p.blocked + p.in_review > 0 LIMIT %s"
)


# the chosen names' rows first (by the name index: `IN (SELECT unnest(...))`, planned as a hash join,
# scanned every package, 7.5 ms at 20,000), then their deltas by index
ACTIVE_COUNTS = (
    "WITH chosen AS MATERIALIZED (SELECT id, name, pending, generating, complete, failed, cancelled, blocked,"
    " in_review"
    " FROM packages WHERE name = ANY(%s::text[]))"
    " SELECT c.name, SUM(c.pending + COALESCE(d.pending, 0)) AS pending,"
    " SUM(c.generating + COALESCE(d.generating, 0)) AS generating,"
    " SUM(c.complete + COALESCE(d.complete, 0)) AS complete,"
    " SUM(c.failed + COALESCE(d.failed, 0)) AS failed,"
    " SUM(c.cancelled + COALESCE(d.cancelled, 0)) AS cancelled,"
    " SUM(c.blocked + COALESCE(d.blocked, 0)) AS blocked,"
    " SUM(c.in_review + COALESCE(d.in_review, 0)) AS in_review"
    " FROM chosen c LEFT JOIN LATERAL (SELECT SUM(x.pending) AS pending,"
    " SUM(x.generating) AS generating, SUM(x.complete) AS complete, SUM(x.failed) AS failed,"
    " SUM(x.cancelled) AS cancelled, SUM(x.blocked) AS blocked, SUM(x.in_review) AS in_review"
    " FROM package_deltas x"
    " WHERE x.package_id = c.id AND x.bucket IS NULL) d ON true GROUP BY c.name ORDER BY c.name"
)


ROLLUP_LOCK_TAKE = "SELECT pg_advisory_lock(%s)"


ROLLUP_LOCK_RELEASE = "SELECT pg_advisory_unlock(%s)"


OUTCOME_BY_ID = OUTCOME_SELECT + " WHERE o.id = %s"


ONE_RUN_BY_ID = ONE_RUN_SQL + " WHERE r.id = %s"


# a run by id or name (the id wins when a name equals another run's id)
ONE_RUN_BY_REF = (
    ONE_RUN_SQL
    + " WHERE r.id = (SELECT id FROM runs WHERE id = %s OR name = %s ORDER BY (id = %s) DESC LIMIT 1)"
)


RUN_LIST = RUN_SELECT + " GROUP BY r.id ORDER BY r.created_at, r.name"


# the outcome whose readable file a path is (outcome_paths: one outcome per path)
PATH_HOLDER = (
    "SELECT o.id, o.run_id, p.name, o.item FROM outcome_paths h JOIN outcomes o ON o.id = h.outcome_id"
    " JOIN packages p ON p.id = o.package_id WHERE h.path = %s"
)


# ---- hooks.py ---------------------------------------------------------------------------------------


HOOKS_SUBSCRIPTION_BY_ID = "SELECT * FROM hook_subscriptions WHERE id = %s"


HOOKS_DELIVERY_BY_ID = "SELECT * FROM hook_deliveries WHERE id = %s"


HOOKS_INSERT_SUBSCRIPTION = (
    "INSERT INTO hook_subscriptions (id, kind, target, description, events, run_name, config, "
    "credentials, active, cursor, created_at, updated_at) SELECT %s, %s, %s, %s, %s, %s, %s, %s, "
    "%s, COALESCE(MAX(seq), 0), %s, %s FROM events"
)


HOOKS_SUBSCRIPTIONS = "SELECT * FROM hook_subscriptions ORDER BY created_at, id"


HOOKS_ACTIVE_SUBSCRIPTIONS = "SELECT * FROM hook_subscriptions WHERE active ORDER BY created_at, id"


@cache
def hooks_update_subscription(columns: tuple[str, ...]) -> pgsql.Composed:
    """The UPDATE of a subscription's changed columns (names from H.change_columns, quoted as identifiers)."""
    return pgsql.SQL("UPDATE hook_subscriptions SET {}, updated_at = %s WHERE id = %s").format(
        pgsql.SQL(", ").join(pgsql.SQL("{} = %s").format(pgsql.Identifier(name)) for name in columns)
    )


@cache
def hooks_deliveries_page(pinned: tuple[str, ...]) -> str:
    """A page of deliveries after a cursor (`n > %s`), with the columns H.delivery_filter pins bound."""
    where = " AND ".join(["n > %s", *(f"{column} = %s" for column in pinned)])
    return "SELECT * FROM hook_deliveries WHERE " + where + " ORDER BY n LIMIT %s"


_REDELIVER = (
    "UPDATE hook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = %s, updated_at = %s"
)


HOOKS_REDELIVER_ONE = _REDELIVER + " WHERE id = %s"


HOOKS_REDELIVER_SINCE = _REDELIVER + " WHERE subscription_id = %s AND created_at >= %s"


HOOKS_ANY_ACTIVE = "SELECT 1 FROM hook_subscriptions WHERE active LIMIT 1"


HOOKS_REMOVE_SUBSCRIPTION = "DELETE FROM hook_subscriptions WHERE id = %s"


HOOKS_LEASE = (
    "UPDATE hook_subscriptions SET lease_owner = %s, lease_expires_at = %s WHERE id = %s AND active "
    "AND (lease_owner IS NULL OR lease_owner = %s OR lease_expires_at <= %s) RETURNING *"
)


HOOKS_RELEASE = (
    "UPDATE hook_subscriptions SET lease_owner = NULL, lease_expires_at = NULL WHERE id = %s AND "
    "lease_owner = %s"
)


HOOKS_MOVE_CURSOR = (
    "UPDATE hook_subscriptions SET cursor = %s WHERE id = %s AND lease_owner = %s AND cursor = %s"
)


HOOKS_INSERT_DELIVERIES = (
    "INSERT INTO hook_deliveries (id, subscription_id, seq, event_type, run_name, body, status, "
    "next_attempt_at, created_at, updated_at) SELECT i, sub, s, t, r, b, 'pending', %s, %s, %s FROM "
    "unnest(%s::text[], %s::text[], %s::int8[], %s::text[], %s::text[], %s::text[]) AS u(i, sub, s, "
    "t, r, b) ON CONFLICT (id) DO NOTHING"
)


HOOKS_INSERT_DELIVERY = (
    "INSERT INTO hook_deliveries (id, subscription_id, seq, event_type, run_name, body, status, "
    "next_attempt_at, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s, %s, %s)"
)


HOOKS_DUE_DELIVERIES = (
    "SELECT * FROM hook_deliveries WHERE subscription_id = %s AND status = 'pending' AND "
    "next_attempt_at <= %s ORDER BY next_attempt_at, seq LIMIT %s"
)


HOOKS_NEXT_DUE = (
    "SELECT MIN(next_attempt_at) AS t FROM hook_deliveries WHERE subscription_id = %s AND status = 'pending'"
)


HOOKS_RECORD_ENDPOINT = (
    "UPDATE hook_subscriptions SET failures = %s, failing_since = %s, circuit_open_until = %s, "
    "last_success_at = %s, active = active AND %s, disabled_reason = COALESCE(%s, disabled_reason), "
    "updated_at = %s WHERE id = %s AND lease_owner = %s"
)


HOOKS_RECORD_RESULTS = (
    "UPDATE hook_deliveries d SET status = u.st, attempts = u.a, next_attempt_at = u.na, "
    "last_status_code = u.code, last_error = u.err, updated_at = u.t, delivered_at = CASE WHEN u.st "
    "= 'succeeded' THEN u.t ELSE d.delivered_at END FROM unnest(%s::text[], %s::int4[], "
    "%s::float8[], %s::int4[], %s::text[], %s::float8[], %s::text[]) AS u(st, a, na, code, err, t, "
    "i) WHERE d.id = u.i AND d.subscription_id = %s"
)


HOOKS_INSERT_CALL_LOGS = (
    "INSERT INTO integration_logs (run_id, outcome_id, integration_type, action, status, details, "
    "created_at) SELECT (SELECT id FROM runs WHERE name = u.r), NULL, u.t, u.a, u.s, u.d, u.c FROM "
    "unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[]) AS u(r, t, a, "
    "s, d, c)"
)


XACT_LOCK = "SELECT pg_advisory_xact_lock(%s)"


HOOKS_INSERT_SYSTEM_EVENT = (
    "INSERT INTO events (run_id, outcome_id, kind, data, created_at) VALUES (NULL, NULL, %s, %s, %s)"
)


NOTIFY = "SELECT pg_notify(%s, '')"


HOOKS_OUTCOME_FACTS = (
    "SELECT o.id, o.item, o.attempts, o.metrics, o.error_message, p.name AS package_name FROM "
    "outcomes o JOIN packages p ON p.id = o.package_id WHERE o.id = ANY(%s)"
)


HOOKS_GET_LINK = "SELECT value FROM hook_links WHERE subscription_id = %s AND ref = %s"


HOOKS_SET_LINK = (
    "INSERT INTO hook_links (subscription_id, ref, value) VALUES (%s, %s, %s) ON CONFLICT "
    "(subscription_id, ref) DO UPDATE SET value = EXCLUDED.value"
)


HOOKS_ALL_CREDENTIALS = "SELECT id, credentials FROM hook_subscriptions ORDER BY id"


HOOKS_SET_CREDENTIALS = "UPDATE hook_subscriptions SET credentials = %s, updated_at = %s WHERE id = %s"


# ---- connection.py, batch.py and the other transactions ------------------------------------------


# the session settings of every pooled connection (name, value) and the hot statements' plans
SET_SESSION_SETTING = "SELECT set_config(%s, %s, false)"


GENERIC_PLANS = "SET plan_cache_mode = force_generic_plan"


CREATE_SCHEMA_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at double precision"
    " NOT NULL)"
)


APPLIED_MIGRATIONS = "SELECT version FROM schema_migrations"


RECORD_MIGRATION = "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)"


BEGIN = "BEGIN"


COMMIT = "COMMIT"


ROLLBACK = "ROLLBACK"


# reads that must agree with each other (one snapshot)
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


SET_REPEATABLE_READ = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"


# a batch's events, numbered in commit order (the events lock is held), and one NOTIFY with the last seq
INSERT_EVENTS = (
    "WITH ins AS (INSERT INTO events (run_id, outcome_id, kind, data, created_at) SELECT r, o, k, d, t"
    " FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::float8[]) WITH ORDINALITY"
    " AS u(r, o, k, d, t, i) ORDER BY i RETURNING seq) SELECT CASE WHEN %s THEN pg_notify(%s,"
    " max(seq)::text) END FROM ins"
)


JOURNAL_ANSWERS = (
    "INSERT INTO write_answers (key, answer, created_at)"
    " SELECT k, a, %s FROM unnest(%b::text[], %b::text[]) AS u(k, a)"
)


PRUNE_ANSWERS = "DELETE FROM write_answers WHERE created_at < %s"


TRY_XACT_LOCK = "SELECT pg_try_advisory_xact_lock(%s) AS ok"


PING = "SELECT 1"


LISTEN = pgsql.SQL("LISTEN {}").format(pgsql.Identifier(NOTIFY_CHANNEL))


# a garbage collection of contents waits at most 2 s for writers, then holds them off
LOCK_TIMEOUT_2S = "SET LOCAL lock_timeout = '2s'"


LOCK_CONTENTS = "LOCK TABLE contents IN SHARE ROW EXCLUSIVE MODE"


_EVENTS = "SELECT e.*, r.name AS run_name FROM events e LEFT JOIN runs r ON r.id = e.run_id WHERE e.seq > %s"


EVENTS_AFTER = _EVENTS + " ORDER BY e.seq LIMIT %s"


EVENTS_AFTER_IN_RUN = _EVENTS + " AND e.run_id = %s ORDER BY e.seq LIMIT %s"


# ---- policy.py: dependencies, lock keys, caps ----------------------------------------------------------


# the lock keys a transition's item held under its lease (the keys are in its queue row): let go; `tokens`
# NULL lets go whatever lease of it holds them (an override fences every lease)
RELEASE_LOCKS = (
    "DELETE FROM resource_locks l USING unnest(%(ns)b::int8[], %(tokens)b::text[]) AS x(n, tok)"
    " JOIN outcome_queue q ON q.n = x.n"
    " WHERE q.locks IS NOT NULL AND l.key = ANY(q.locks) AND l.n = x.n AND (x.tok IS NULL OR l.lease_token = x.tok)"
)


# the packages whose "package/*" dependents a transition may move, FOR NO KEY UPDATE in id order: the one who
# takes it last sees every other item's completion (each holds it until it commits, having completed first)
LOCK_PACKAGES = "SELECT id FROM packages WHERE id = ANY(%s::int8[]) ORDER BY id FOR NO KEY UPDATE"


# their counters as they stand (read after the lock and after this batch's deltas were written)
PACKAGE_DONE = "SELECT id, complete, total FROM package_counters WHERE id = ANY(%s::int8[])"


# the dependents of items (outcome_deps) and of packages (package_deps) move by `delta` (+1 / -1) once per
# row that names them; those blocked that reach 0 become pending from now (rules.readied, rules.ready: a
# property test in tests/rules/test_rules.py holds the statement to them). Rows are locked in n order, and
# each is moved from its latest version (a dependent two completions move at once moves twice).
# Under the store's generic plans every step is an index probe, so the cost follows the dependents, not the
# table: each dependent is locked by a LATERAL primary-key probe (never hash-joined against a scan of
# outcomes), in d's n order, and the UPDATEs name their rows by `= ANY(ARRAY(...))` (an index condition).
MOVE_WAITING_SQL = """
WITH d AS MATERIALIZED (
    SELECT x.n, sum(x.c)::int AS c FROM (
        SELECT after_n AS n, count(*) AS c FROM outcome_deps WHERE before_n = ANY(%(items)b::int8[]) GROUP BY after_n
        UNION ALL
        SELECT after_n, count(*) FROM package_deps WHERE package_id = ANY(%(packages)b::int8[]) GROUP BY after_n
    ) x GROUP BY x.n ORDER BY x.n
),
lk AS MATERIALIZED (
    SELECT o.n, o.status, o.waiting + %(delta)s::int * d.c AS waiting
    FROM d CROSS JOIN LATERAL (SELECT o.n, o.status, o.waiting FROM outcomes o WHERE o.n = d.n FOR UPDATE) o
),
u AS (
    UPDATE outcomes o SET waiting = lk.waiting,
        status = CASE WHEN lk.status = 'blocked' AND lk.waiting <= 0 THEN 'pending' ELSE o.status END,
        available_at = CASE WHEN lk.status = 'blocked' AND lk.waiting <= 0 THEN %(now)s ELSE o.available_at END,
        updated_at = CASE WHEN lk.status = 'blocked' AND lk.waiting <= 0 THEN %(now)s ELSE o.updated_at END
    FROM lk WHERE o.n = lk.n AND o.n = ANY(ARRAY(SELECT n FROM lk))
    RETURNING o.n, o.id, o.item, o.run_id, o.package_id, lk.status = 'blocked' AND lk.waiting <= 0 AS readied
),
uq AS (
    UPDATE outcome_queue q SET final = NULL, available_at = %(now)s
    WHERE q.n = ANY(ARRAY(SELECT n FROM u WHERE readied))
)
SELECT u.n, u.id, u.item, u.run_id, u.package_id, p.name AS package_name
FROM u JOIN packages p ON p.id = u.package_id WHERE u.readied ORDER BY u.n
"""


# one step of a failure cascade: the blocked dependents of the items and packages given are cancelled with
# rules.cascade's values (the move's columns come as parameters); with their queue flags, for the next step
CASCADE_SQL = """
WITH d AS MATERIALIZED (
    SELECT after_n AS n FROM outcome_deps WHERE before_n = ANY(%(items)b::int8[])
    UNION
    SELECT after_n FROM package_deps WHERE package_id = ANY(%(packages)b::int8[])
    ORDER BY 1
),
lk AS MATERIALIZED (
    SELECT o.n FROM d CROSS JOIN LATERAL (
        SELECT o.n FROM outcomes o WHERE o.n = d.n AND o.status = 'blocked' FOR UPDATE
    ) o
),
u AS (
    UPDATE outcomes o SET status = %(status)s, error_message = %(error_message)s, cancelled_by = %(cancelled_by)s,
        completed_at = %(completed_at)s, updated_at = %(updated_at)s
    WHERE o.n = ANY(ARRAY(SELECT n FROM lk)) AND o.status = 'blocked'
    RETURNING o.n, o.id, o.package_id
),
uq AS (
    UPDATE outcome_queue q SET final = %(status)s WHERE q.n = ANY(ARRAY(SELECT n FROM u))
    RETURNING q.n, q.dependents, q.gate
)
SELECT u.n, u.id, u.package_id, uq.dependents, uq.gate FROM u JOIN uq ON uq.n = u.n ORDER BY u.n
"""


# blocked items with nothing left to wait for become pending from now (rules.ready)
READY_NOW_SQL = """
WITH lk AS MATERIALIZED (
    SELECT o.n FROM (SELECT DISTINCT x.n FROM unnest(%(ns)b::int8[]) AS x(n) ORDER BY x.n) d CROSS JOIN LATERAL (
        SELECT o.n FROM outcomes o WHERE o.n = d.n AND o.status = 'blocked' AND o.waiting <= 0 FOR UPDATE
    ) o
),
u AS (
    UPDATE outcomes o SET status = 'pending', available_at = %(now)s, updated_at = %(now)s
    WHERE o.n = ANY(ARRAY(SELECT n FROM lk)) AND o.status = 'blocked' AND o.waiting <= 0
    RETURNING o.n, o.id, o.item, o.run_id, o.package_id
),
uq AS (
    UPDATE outcome_queue q SET final = NULL, available_at = %(now)s WHERE q.n = ANY(ARRAY(SELECT n FROM u))
)
SELECT u.*, p.name AS package_name FROM u JOIN packages p ON p.id = u.package_id ORDER BY u.n
"""


# a retried (or overridden) failed item: what its failure cancelled waits again (rules.reblock)
REBLOCK_SQL = """
WITH u AS (
    UPDATE outcomes o SET status = %(status)s, error_message = %(error_message)s, cancelled_by = %(cancelled_by)s,
        completed_at = %(completed_at)s, updated_at = %(updated_at)s
    WHERE o.cancelled_by = ANY(%(ns)b::int8[]) AND o.status = 'cancelled'
    RETURNING o.n, o.id, o.item, o.run_id, o.package_id, o.waiting
),
uq AS (UPDATE outcome_queue q SET final = %(status)s WHERE q.n = ANY(ARRAY(SELECT n FROM u)))
SELECT u.*, p.name AS package_name FROM u JOIN packages p ON p.id = u.package_id ORDER BY u.n
"""


# a plan's prerequisites in the run: packages by name, with whether each is done (its counters) ...
PLAN_PREREQ_PACKAGES = (
    "SELECT id, name, has_dependents FROM packages WHERE run_id = %s AND name = ANY(%s::text[])"
)


# ... and items by (package, item)
PLAN_PREREQ_ITEMS = (
    "SELECT p.name AS package, o.item, o.n FROM unnest(%s::text[], %s::text[]) AS c(pn, it)"
    " JOIN packages p ON p.run_id = %s AND p.name = c.pn JOIN outcomes o ON o.package_id = p.id AND o.item = c.it"
)


# existing items that gain dependents: flagged on their queue row (a report that waits for this row reads
# the flag back) and whether each is complete now (its latest version, after any report on it committed)
PLAN_MARK_ITEMS = "UPDATE outcome_queue SET dependents = true WHERE n = ANY(%s::int8[]) RETURNING n, final"


# existing packages that gain dependents: flagged, and every item of theirs not complete flagged on its
# queue row (a report on one that waits for this plan reads the flag back; one that committed before is
# counted by the plan)
PLAN_MARK_PACKAGES = (
    "UPDATE packages SET has_dependents = true WHERE id = ANY(%s::int8[]) AND NOT has_dependents"
)


PLAN_GATE_ITEMS = (
    "UPDATE outcome_queue SET gate = true WHERE package_id = ANY(%s::int8[]) AND NOT gate"
    " AND final IS DISTINCT FROM 'complete'"
)


INSERT_ITEM_EDGES = (
    "INSERT INTO outcome_deps (before_n, after_n) SELECT * FROM unnest(%b::int8[], %b::int8[])"
    " ON CONFLICT DO NOTHING"
)


INSERT_PACKAGE_EDGES = (
    "INSERT INTO package_deps (package_id, after_n) SELECT * FROM unnest(%b::int8[], %b::int8[])"
    " ON CONFLICT DO NOTHING"
)


# the run's claims go through lock keys or caps from now on
GATE_RUN = "UPDATE runs SET gated = true WHERE id = %s AND NOT gated"


# the range of a package's item priorities, widened by items just added
WIDEN_PRIORITIES = (
    "UPDATE packages p SET prio_lo = LEAST(p.prio_lo, x.lo), prio_hi = GREATEST(p.prio_hi, x.hi)"
    " FROM unnest(%b::int8[], %b::int4[], %b::int4[]) AS x(id, lo, hi) WHERE p.id = x.id"
)


# the item's prerequisites not met now, "package/item" then "package/*" (at most %s of each)
UNMET_ITEMS = (
    "SELECT p.name, o.item FROM outcome_deps d JOIN outcomes o ON o.n = d.before_n"
    " JOIN packages p ON p.id = o.package_id WHERE d.after_n = %s AND o.status <> 'complete'"
    " ORDER BY d.before_n LIMIT %s"
)


UNMET_PACKAGES = (
    "SELECT c.name FROM package_deps d JOIN package_counters c ON c.id = d.package_id"
    " WHERE d.after_n = %s AND c.complete < c.total ORDER BY c.position LIMIT %s"
)


# the keys the item holds under its current lease
LOCKS_OF = (
    "SELECT l.key FROM outcome_queue q JOIN resource_locks l ON l.key = ANY(q.locks)"
    " WHERE q.n = %s AND l.n = q.n AND l.lease_token = %s ORDER BY l.key"
)


# why a gated claim came back short: ready items (pending, available) of the run or package, the first
# few hundred per package, held back by a cap (the run's, or their package's) or by keys a live lease holds;
# and when the leases holding them back run out
WHY_GATED_SQL = """
WITH rl AS MATERIALIZED (
    SELECT q.package_id, count(*)::int AS n, min(q.lease_expires_at) AS first FROM outcome_queue q
    WHERE q.run_id = %(run)s AND q.lease_token IS NOT NULL GROUP BY q.package_id
),
run AS MATERIALIZED (
    SELECT r.max_concurrent IS NOT NULL AND r.max_concurrent <= COALESCE((SELECT sum(n) FROM rl), 0) AS at_cap,
           (SELECT min(first) FROM rl) AS first
    FROM runs r WHERE r.id = %(run)s
),
pk AS MATERIALIZED (
    SELECT p.id, p.max_concurrent IS NOT NULL AND p.max_concurrent <= COALESCE(rl.n, 0) AS at_cap, rl.first
    FROM packages p LEFT JOIN rl ON rl.package_id = p.id
    WHERE p.run_id = %(run)s AND (%(package)s::text IS NULL OR p.name = %(package)s::text)
),
ready AS MATERIALIZED (
    SELECT pk.id, pk.at_cap, pk.first, q.locks FROM pk CROSS JOIN LATERAL (
        SELECT q.locks FROM outcome_queue q
        WHERE q.package_id = pk.id AND q.lease_token IS NULL AND q.final IS NULL AND q.available_at <= %(now)s
        ORDER BY q.priority DESC, q.available_at, q.position LIMIT 256
    ) q
),
held AS MATERIALIZED (
    SELECT min(l.expires_at) AS first, count(*) AS n FROM ready
    JOIN resource_locks l ON l.key = ANY(ready.locks) AND l.expires_at > %(now)s
    WHERE ready.locks IS NOT NULL AND NOT ready.at_cap
)
SELECT EXISTS (SELECT 1 FROM ready) AND (SELECT at_cap FROM run) AS run_capped, (SELECT first FROM run) AS run_first,
       EXISTS (SELECT 1 FROM ready WHERE ready.at_cap) AS package_capped,
       (SELECT min(ready.first) FROM ready WHERE ready.at_cap) AS package_first,
       (SELECT n > 0 FROM held) AS locked, (SELECT first FROM held) AS lock_first
"""


# each item with prerequisites (or a count, or blocked): its count beside the prerequisites not met now
_WAITING_TRUTH = (
    "SELECT r.name AS run_name, p.name AS package, o.item, o.status, o.waiting,"
    " (SELECT COUNT(*) FROM outcome_deps d JOIN outcomes b ON b.n = d.before_n"
    "  WHERE d.after_n = o.n AND b.status <> 'complete')"
    " + (SELECT COUNT(*) FROM package_deps d JOIN package_counters q ON q.id = d.package_id"
    "  WHERE d.after_n = o.n AND q.complete < q.total) AS unmet"
    " FROM outcomes o JOIN packages p ON p.id = o.package_id JOIN runs r ON r.id = o.run_id"
    " WHERE (o.waiting <> 0 OR o.status = 'blocked' OR o.n IN (SELECT after_n FROM outcome_deps)"
    " OR o.n IN (SELECT after_n FROM package_deps))"
)


WAITING_TRUTH = _WAITING_TRUTH + " ORDER BY o.n"


WAITING_TRUTH_OF_RUN = _WAITING_TRUTH + " AND o.run_id = %s ORDER BY o.n"


# what a plan's cycle check walks (policy.check_acyclic): the items that wait for a package, and what items
# wait for as stored (their item prerequisites, and every item of their package prerequisites, with it)
PACKAGE_DEPENDENTS = "SELECT after_n FROM package_deps WHERE package_id = %s"


PREREQUISITES_OF = (
    "SELECT d.before_n AS n, d.after_n AS at, NULL::int8 AS via FROM outcome_deps d WHERE d.after_n = ANY(%s::int8[])"
    " UNION ALL SELECT o.n, d.after_n, d.package_id FROM package_deps d JOIN outcomes o ON o.package_id = d.package_id"
    " WHERE d.after_n = ANY(%s::int8[])"
)


ITEM_NAME = (
    "SELECT p.name AS package, o.item FROM outcomes o JOIN packages p ON p.id = o.package_id WHERE o.n = %s"
)


PACKAGE_NAME = "SELECT name FROM packages WHERE id = %s"


# ---- review gates, notes, usage, budgets -----------------------------------------------------------

# an item in_review for review_item, locked, with what rules.review reads
REVIEW_ROW = (
    "SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, r.state AS run_state,"
    " r.on_dependency_failure, p.name AS package_name FROM outcomes o JOIN runs r ON r.id = o.run_id"
    " JOIN packages p ON p.id = o.package_id WHERE o.id = %s FOR UPDATE OF o"
)


ATTEMPT_USAGE = (
    "UPDATE outcome_attempts SET input_tokens = %s, output_tokens = %s, cache_read_tokens = %s,"
    " cache_creation_tokens = %s, cost_usd = %s, model = %s WHERE outcome_id = %s AND lease_token = %s"
)


ATTEMPT_REVIEW = (
    "UPDATE outcome_attempts SET status = %s, error = %s, review_decision = %s, review_note = %s,"
    " reviewed_by = %s WHERE outcome_id = %s AND lease_token = %s"
)


# review_item's merged path: the items in_review of a batch's reviews, locked in `n` order (two batches never
# wait on each other's rows), with what rules.review reads
REVIEW_ROWS = (
    "SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, r.state AS run_state,"
    " r.on_dependency_failure, p.name AS package_name FROM outcomes o JOIN runs r ON r.id = o.run_id"
    " JOIN packages p ON p.id = o.package_id WHERE o.id = ANY(%b::text[]) AND o.status = 'in_review'"
    " ORDER BY o.n FOR UPDATE OF o"
)


# the review decisions of many attempts (ATTEMPT_REVIEW, set-based)
ATTEMPT_REVIEW_MANY = (
    "UPDATE outcome_attempts a SET status = v.status, error = v.error, review_decision = v.decision,"
    " review_note = v.note, reviewed_by = v.reviewed_by"
    " FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])"
    " AS v(status, error, decision, note, reviewed_by, id, tok)"
    " WHERE a.outcome_id = v.id AND a.lease_token = v.tok"
)


# the budgeted runs among a batch's spenders, locked (FOR NO KEY UPDATE, in id order) before their totals move:
# a concurrent batch's spend waits, then reads what this one left; the crossing of each report is decided on
# these totals (rules.budgets_crossed), never on a read before the write
RUN_BUDGETS_LOCK = (
    "SELECT id, state, max_cost_usd, max_tokens, spent_cost_usd, spent_tokens FROM runs"
    " WHERE id = ANY(%b::text[]) AND (max_cost_usd IS NOT NULL OR max_tokens IS NOT NULL) ORDER BY id FOR NO KEY UPDATE"
)


# the locked runs' new totals
SET_RUNS_SPENT = (
    "UPDATE runs r SET spent_cost_usd = v.cost, spent_tokens = v.tokens"
    " FROM unnest(%b::text[], %b::float8[], %b::int8[]) AS v(id, cost, tokens) WHERE r.id = v.id"
)


# what reports spent, per worker of a run, added up (one row per run and worker in the batch)
WORKER_USAGE = (
    "INSERT INTO worker_usage AS w (run_id, worker, input_tokens, output_tokens, cache_read_tokens,"
    " cache_creation_tokens, cost_usd)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::int8[], %b::int8[], %b::int8[], %b::int8[], %b::float8[])"
    " ORDER BY 1, 2"
    " ON CONFLICT (run_id, worker) DO UPDATE SET input_tokens = w.input_tokens + EXCLUDED.input_tokens,"
    " output_tokens = w.output_tokens + EXCLUDED.output_tokens,"
    " cache_read_tokens = w.cache_read_tokens + EXCLUDED.cache_read_tokens,"
    " cache_creation_tokens = w.cache_creation_tokens + EXCLUDED.cache_creation_tokens,"
    " cost_usd = w.cost_usd + EXCLUDED.cost_usd"
)


# a run's workers by what they spent, most first
WORKERS_OF_RUN = (
    "SELECT worker, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, cost_usd"
    " FROM worker_usage WHERE run_id = %s"
    " ORDER BY cost_usd DESC, input_tokens + output_tokens + cache_read_tokens + cache_creation_tokens DESC,"
    " worker LIMIT %s"
)


# the runs' spend locks (two-int4 advisory keys: 0x6D617653, hashtext of the run id), held to the end of the
# transaction: every report that spends takes its runs' shared, in key order, in a statement before
# RUN_BUDGETS_LOCK; update_policy takes its run's alone, first. So a budget set on a run without one (whose
# totals were not kept) recounts what the run spent after every report that passed RUN_BUDGETS_LOCK without a
# budget has committed, and a report after it sees the budget (its next statement's snapshot): each report is
# counted once, by the recount or by the run's totals. Two that hash alike only wait for each other.
SPEND_LOCK_SHARED = """
SELECT count(*) AS locks FROM (
    SELECT pg_advisory_xact_lock_shared(1835103827, h)
    FROM (SELECT DISTINCT hashtext(r) AS h FROM unnest(%b::text[]) AS r ORDER BY 1) k
) l
"""


SPEND_LOCK = "SELECT pg_advisory_xact_lock(1835103827, hashtext(%s))"


RUN_PAUSE_FOR_BUDGET = (
    "UPDATE runs SET state = 'paused', paused_reason = %s, updated_at = %s WHERE id = %s AND state = 'active'"
)


# what the run's packages spent in all (a budget set later starts from it)
RUN_SPENT_TRUTH = (
    "SELECT COALESCE(SUM(cost_usd), 0)::float8 AS cost,"
    " COALESCE(SUM(input_tokens + output_tokens + cache_read_tokens + cache_creation_tokens), 0)::int8 AS tokens"
    " FROM package_counters WHERE run_id = %s"
)


SET_RUN_SPENT = "UPDATE runs SET spent_cost_usd = %s, spent_tokens = %s WHERE id = %s"


RUN_POLICY_ROW = "SELECT id, max_cost_usd, max_tokens FROM runs WHERE id = %s FOR NO KEY UPDATE"


@cache
def update_run_policy(columns: tuple[str, ...]) -> str:
    """Set these policy columns of a run (bound values, then its id); a closed set of names (PolicyUpdate)."""
    return "UPDATE runs SET " + ", ".join(f"{c} = %s" for c in columns) + ", updated_at = %s WHERE id = %s"


# the earlier attempts of the items a claim leased (the ones just started left out), newest first, at most
# %(per)s each: asked only when one of them was claimed before
PREVIOUS_ATTEMPTS = """
SELECT l.id AS outcome_id, a.attempt, a.status, a.error, a.note, a.review_note
FROM unnest(%(ids)b::text[], %(tokens)b::text[]) AS l(id, tok)
CROSS JOIN LATERAL (
    SELECT x.attempt, x.status, x.error, x.note, x.review_note FROM outcome_attempts x
    WHERE x.outcome_id = l.id AND x.lease_token <> l.tok
    ORDER BY x.started_at DESC, x.attempt DESC LIMIT %(per)s
) a
"""


# a recount of a package's usage sums from its items' attempts
PACKAGE_USAGE_TRUTH = (
    "SELECT COALESCE(SUM(a.input_tokens), 0)::int8 AS input_tokens,"
    " COALESCE(SUM(a.output_tokens), 0)::int8 AS output_tokens,"
    " COALESCE(SUM(a.cache_read_tokens), 0)::int8 AS cache_read_tokens,"
    " COALESCE(SUM(a.cache_creation_tokens), 0)::int8 AS cache_creation_tokens,"
    " COALESCE(SUM(a.cost_usd), 0)::float8 AS cost_usd"
    " FROM outcome_attempts a JOIN outcomes o ON o.id = a.outcome_id WHERE o.package_id = %s"
)


# exports: each outcome's usage summed over its attempts, the latest model named (SUM of NULLs is NULL)
OUTCOME_USAGE = (
    "SELECT a.outcome_id, SUM(a.input_tokens)::int8 AS input_tokens, SUM(a.output_tokens)::int8 AS output_tokens,"
    " SUM(a.cache_read_tokens)::int8 AS cache_read_tokens,"
    " SUM(a.cache_creation_tokens)::int8 AS cache_creation_tokens, SUM(a.cost_usd)::float8 AS cost_usd,"
    " (array_agg(a.model ORDER BY a.attempt DESC) FILTER (WHERE a.model IS NOT NULL))[1] AS model"
    " FROM outcome_attempts a JOIN outcomes o ON o.id = a.outcome_id"
    " WHERE o.run_id = %s AND (a.input_tokens IS NOT NULL OR a.output_tokens IS NOT NULL"
    " OR a.cache_read_tokens IS NOT NULL OR a.cache_creation_tokens IS NOT NULL OR a.cost_usd IS NOT NULL"
    " OR a.model IS NOT NULL)"
    " GROUP BY a.outcome_id"
)


# the recount of each worker's usage sums of a run (all runs when the run id is NULL) from its attempts, and the
# sums as kept; a worker is the one its attempts name ('' for none, as a report's spend names it)
WORKER_USAGE_TRUTH = """
SELECT r.name AS run_name, COALESCE(a.worker, '') AS worker,
    COALESCE(SUM(a.input_tokens), 0)::int8 AS input_tokens, COALESCE(SUM(a.output_tokens), 0)::int8 AS output_tokens,
    COALESCE(SUM(a.cache_read_tokens), 0)::int8 AS cache_read_tokens,
    COALESCE(SUM(a.cache_creation_tokens), 0)::int8 AS cache_creation_tokens,
    COALESCE(SUM(a.cost_usd), 0)::float8 AS cost_usd
FROM outcome_attempts a JOIN outcomes o ON o.id = a.outcome_id JOIN runs r ON r.id = o.run_id
WHERE %(run)s::text IS NULL OR o.run_id = %(run)s::text
GROUP BY r.id, COALESCE(a.worker, '')
"""


WORKER_USAGE_ROWS = (
    "SELECT r.name AS run_name, w.* FROM worker_usage w JOIN runs r ON r.id = w.run_id"
    " WHERE %(run)s::text IS NULL OR w.run_id = %(run)s::text"
)


# a run's spent totals beside what its packages spent, for the runs that keep them (those with a budget)
RECOUNT_RUN_SPENT = """
SELECT r.name AS run_name, r.spent_cost_usd, r.spent_tokens, COALESCE(SUM(p.cost_usd), 0)::float8 AS cost,
    COALESCE(SUM(p.input_tokens + p.output_tokens + p.cache_read_tokens + p.cache_creation_tokens), 0)::int8 AS tokens
FROM runs r LEFT JOIN package_counters p ON p.run_id = r.id
WHERE (r.max_cost_usd IS NOT NULL OR r.max_tokens IS NOT NULL) AND (%(run)s::text IS NULL OR r.id = %(run)s::text)
GROUP BY r.id
"""


DELETE_WORKER_USAGE = "DELETE FROM worker_usage WHERE %(run)s::text IS NULL OR run_id = %(run)s::text"


# the rebuild of the workers' usage sums and the budgeted runs' totals (after the packages' sums)
REBUILD_WORKER_USAGE = """
INSERT INTO worker_usage (run_id, worker, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens,
    cost_usd)
SELECT o.run_id, COALESCE(a.worker, ''), COALESCE(SUM(a.input_tokens), 0), COALESCE(SUM(a.output_tokens), 0),
    COALESCE(SUM(a.cache_read_tokens), 0), COALESCE(SUM(a.cache_creation_tokens), 0), COALESCE(SUM(a.cost_usd), 0)
FROM outcome_attempts a JOIN outcomes o ON o.id = a.outcome_id
WHERE %(run)s::text IS NULL OR o.run_id = %(run)s::text
GROUP BY o.run_id, COALESCE(a.worker, '')
HAVING COALESCE(SUM(a.input_tokens), 0) + COALESCE(SUM(a.output_tokens), 0) + COALESCE(SUM(a.cache_read_tokens), 0)
    + COALESCE(SUM(a.cache_creation_tokens), 0) > 0 OR COALESCE(SUM(a.cost_usd), 0) > 0
"""


REBUILD_RUN_SPENT = """
UPDATE runs r SET spent_cost_usd = s.cost, spent_tokens = s.tokens
FROM (
    SELECT p.run_id, COALESCE(SUM(p.cost_usd), 0)::float8 AS cost,
        COALESCE(SUM(p.input_tokens + p.output_tokens + p.cache_read_tokens + p.cache_creation_tokens), 0)::int8
        AS tokens
    FROM packages p GROUP BY p.run_id
) s
WHERE s.run_id = r.id AND (r.max_cost_usd IS NOT NULL OR r.max_tokens IS NOT NULL)
    AND (%(run)s::text IS NULL OR r.id = %(run)s::text)
"""
