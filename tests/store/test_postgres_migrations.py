"""PostgreSQL migrations: a database at the schema before the narrow queue (migration 8), populated as the
release before it wrote its rows, opens, upgrades in place and keeps every item, lease and counter."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import psycopg
import pytest

from matrix_mcp.errors import StaleLease
from matrix_mcp.models import RunPolicy
from matrix_mcp.rules import new_token
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import ClaimRequest, NewItem, NewPackage, OutcomeFilter, Report
from matrix_mcp.store.postgres import PostgresStore
from matrix_mcp.store.postgres.migrations import MIGRATIONS

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

QUEUE = 8  # the migration that adds the narrow queue
NOW = time.time()
BODY = b"print('hello')\n"
SHA = hashlib.sha256(BODY).hexdigest()


def apply_before_queue(conn: psycopg.Connection[Any]) -> None:
    """The schema as the migration runner left it at version QUEUE - 1."""
    conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at double precision NOT NULL)"
    )
    for version, script in MIGRATIONS:
        if version >= QUEUE:
            break
        for statement in (s.strip() for s in script.split(";\n")):
            if statement:
                conn.execute(statement.encode())
        conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, NOW))


# the items as the release before the queue left them: (package, item, status, attempts, lease token,
# lease expiry, worker, claim_seq, available_at, duration, metrics)
ITEMS: list[
    tuple[
        str,
        str,
        str,
        int,
        str | None,
        float | None,
        str | None,
        int | None,
        float,
        float | None,
        dict[str, Any],
    ]
] = [
    ("p1", "a", "pending", 0, None, None, None, None, NOW - 50, None, {}),
    # failed once, requeued: its last token stays on the row
    ("p1", "b", "pending", 1, "tok-b-old", None, "w0", 4097, NOW - 10, None, {}),
    # leased, the lease still live
    ("p1", "c", "generating", 1, "tok-c", NOW + 600, "w1", 8193, NOW - 50, None, {}),
    # leased, the lease long expired (its worker died): the first claim after the upgrade sweeps it back
    ("p1", "h", "generating", 1, "tok-h", NOW - 5, "w2", 8194, NOW - 50, None, {}),
    (
        "p1",
        "d",
        "complete",
        1,
        "tok-d",
        None,
        "w1",
        4098,
        NOW - 50,
        2.0,
        {"lines_generated": 10, "quality_score": 0.5},
    ),
    ("p1", "e", "failed", 3, "tok-e", None, "w3", 4099, NOW - 50, 1.0, {}),
    ("p2", "f", "pending", 0, None, None, None, None, NOW - 50, None, {}),
    ("p2", "g", "complete", 1, "tok-g", None, "w2", 4100, NOW - 50, 4.0, {"lines_generated": 3}),
]


def populate(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """A run with two packages and items in every state, their attempts, metrics, inline content, events
    and rolled-up counters, written with the statements and values the release before the queue used."""
    conn.execute(
        "INSERT INTO runs (id, name, outcome_type, lease_seconds, max_attempts, backoff_seconds,"
        " backoff_cap_seconds, created_at, updated_at) VALUES ('r1', 'old', 'code', 600, 3, 5, 300, %s, %s)",
        (NOW - 100, NOW - 100),
    )
    pids = {}
    for pos, name in enumerate(("p1", "p2")):
        pids[name] = conn.execute(
            "INSERT INTO packages (run_id, name, position) VALUES ('r1', %s, %s) RETURNING id", (name, pos)
        ).fetchone()[0]  # type: ignore[index]
    ids: dict[str, str] = {}
    counters: dict[str, dict[str, float]] = {p: {} for p in pids}
    hist: dict[str, dict[int, int]] = {p: {} for p in pids}
    for pos, (pkg, item, status, attempts, token, expires, worker, seq, avail, took, metrics) in enumerate(
        ITEMS
    ):
        oid = f"o-{item}"
        ids[item] = oid
        started = NOW - 20 if attempts else None
        final = status in ("complete", "failed")
        conn.execute(
            "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type, attempts,"
            " worker, error_message, metrics, content_sha256, content_bytes, mime_type, lease_token,"
            " lease_expires_at, available_at, claim_seq, created_at, updated_at, started_at, completed_at,"
            " duration_seconds) VALUES (%s, 'r1', %s, %s, %s, %s, 'code', %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s, %s, %s, %s, %s)",
            (
                oid,
                pids[pkg],
                item,
                pos,
                status,
                attempts,
                worker,
                "boom" if status == "failed" or item == "b" else None,
                R.dumps(metrics),
                SHA if item == "d" else None,
                len(BODY) if item == "d" else None,
                "text/x-python" if item == "d" else None,
                token,
                expires,
                avail,
                seq,
                NOW - 100,
                NOW - 20,
                started,
                NOW - 18 if final else None,
                took,
            ),
        )
        c = counters[pkg]
        c["total"] = c.get("total", 0) + 1
        c[status] = c.get(status, 0) + 1
        if status == "complete":
            for k, v in R.contribution(metrics, took).items():
                c[k] = c.get(k, 0) + v
            b = R.duration_bucket(took or 0.0)
            hist[pkg][b] = hist[pkg].get(b, 0) + 1
            conn.execute(
                "INSERT INTO outcome_metrics (outcome_id, name, value) SELECT %s, k, v"
                " FROM unnest(%s::text[], %s::float8[]) AS m(k, v)",
                (oid, list(metrics), [float(v) for v in metrics.values()]),
            )
        if token is not None:
            conn.execute(
                "INSERT INTO outcome_attempts (outcome_id, attempt, lease_token, worker, principal, status,"
                " error, started_at, ended_at) VALUES (%s, %s, %s, %s, NULL, %s, %s, %s, %s)",
                (
                    oid,
                    attempts,
                    token,
                    worker,
                    "failed" if item == "b" else status,
                    "boom" if status == "failed" or item == "b" else None,
                    started,
                    None if status == "generating" else NOW - 18,
                ),
            )
        conn.execute(
            "INSERT INTO events (run_id, outcome_id, kind, data, created_at) VALUES ('r1', %s, 'claimed', %s, %s)",
            (oid, R.dumps({"package": pkg, "item": item}), NOW - 20),
        )
    conn.execute("INSERT INTO contents (sha256, body) VALUES (%s, %s)", (SHA, BODY))
    for pkg, c in counters.items():
        buckets = sorted(hist[pkg])
        conn.execute(
            "UPDATE packages SET total = %s, pending = %s, generating = %s, complete = %s, failed = %s,"
            " duration_sum = %s, duration_n = %s, lines_sum = %s, quality_sum = %s, quality_n = %s,"
            " hist_b = %s::int4[], hist_n = %s::int8[] WHERE id = %s",
            (
                c["total"],
                c.get("pending", 0),
                c.get("generating", 0),
                c.get("complete", 0),
                c.get("failed", 0),
                c.get("duration_sum", 0.0),
                round(c.get("duration_n", 0)),
                c.get("lines_sum", 0.0),
                c.get("quality_sum", 0.0),
                round(c.get("quality_n", 0)),
                buckets,
                [hist[pkg][b] for b in buckets],
                pids[pkg],
            ),
        )
    # one counter change not yet rolled up, as a batch leaves it between two roller passes
    conn.execute(
        "UPDATE packages SET pending = pending + 1, generating = generating - 1 WHERE id = %s", (pids["p1"],)
    )
    conn.execute(
        "INSERT INTO package_deltas (run_id, package_id, pending, generating) VALUES ('r1', %s, -1, 1)",
        (pids["p1"],),
    )
    return ids


async def test_database_before_the_queue_upgrades_in_place(postgres_database: str) -> None:
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        apply_before_queue(conn)
        ids = populate(conn)
    store = await PostgresStore.open(postgres_database)
    try:
        with psycopg.connect(postgres_database) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
            assert versions == [v for v, _ in MIGRATIONS]
            queue = {
                r[0]: r[1:]
                for r in conn.execute(
                    "SELECT o.item, q.lease_token, q.lease_expires_at, q.final, q.claim_seq, q.available_at"
                    " FROM outcome_queue q JOIN outcomes o ON o.n = q.n"
                )
            }
            gone = conn.execute(
                "SELECT count(*) FROM pg_class WHERE relname IN"
                " ('outcomes_claimable', 'outcomes_leased', 'outcomes_last_claim', 'outcomes_run_status')"
            ).fetchone()
        assert gone == (0,)
        # every item has its queue row: leases as they were, done items with their final status, claim
        # order kept
        assert set(queue) == {item for _, item, *_ in ITEMS}
        by_item = {i[1]: i for i in ITEMS}
        for item, (token, expires, final, seq, avail) in queue.items():
            _, _, status, _, old_token, old_expires, _, old_seq, old_avail, _, _ = by_item[item]
            assert final == (status if status in ("complete", "failed", "cancelled") else None), item
            assert token == (old_token if status == "generating" else None), item
            assert expires == (old_expires if status == "generating" else None), item
            assert (seq, avail) == (old_seq, old_avail), item

        # nothing lost: statuses, counters, metrics, content, attempt history
        assert (await store.recount()).consistent
        run = await store.get_run("old")
        assert (run.counts.pending, run.counts.generating, run.counts.complete, run.counts.failed) == (
            3,
            2,
            2,
            1,
        )
        page = await store.list_outcomes(OutcomeFilter(run_id="r1"), limit=100)
        assert {o.item: o.status for o in page.outcomes} == {i[1]: i[2] for i in ITEMS}
        leased = await store.list_outcomes(OutcomeFilter(run_id="r1", status="generating"), limit=100)
        assert sorted(o.item for o in leased.outcomes) == ["c", "h"]
        # listings by status read the backfilled queue: each status lists exactly its items
        for status in ("pending", "complete", "failed", "cancelled"):
            listed = await store.list_outcomes(OutcomeFilter(run_id="r1", status=status), limit=100)
            assert sorted(o.item for o in listed.outcomes) == sorted(i[1] for i in ITEMS if i[2] == status)
        d = await store.get_outcome(ids["d"], history=True)
        assert d.metrics == {"lines_generated": 10, "quality_score": 0.5} and d.content_sha256 == SHA
        assert await store.inline_content(SHA) == BODY
        (p1, p2) = await store.package_summaries("r1")
        assert p1.completed_items == 1 and p1.total_lines_generated == 10 and p2.total_lines_generated == 3
        assert p1.p50_duration_seconds is not None
        cells = {c.item: c.status for c in await store.cells("r1")}
        assert cells["c"] == "generating" and cells["e"] == "failed"

        # the live lease still completes with its token, and only with it
        with pytest.raises(StaleLease):
            await store.complete(ids["c"], lease_token="tok-wrong", report=Report(), now=time.time())
        done = await store.complete(
            ids["c"], lease_token="tok-c", report=Report(metrics={"lines_generated": 1}), now=time.time()
        )
        assert done.outcome.status == "complete" and done.outcome.attempts == 1
        # the requeued item's old token is stale, not a live lease
        with pytest.raises(StaleLease):
            await store.complete(ids["b"], lease_token="tok-b-old", report=Report(), now=time.time())

        # pending items are claimed, the expired lease goes back to pending and is claimed again
        got = await store.claim(
            ClaimRequest(run_id="r1", worker="w9", limit=10, package=None, token_factory=new_token),
            now=time.time(),
        )
        assert sorted(c.item for c in got.claims) == ["a", "b", "f", "h"]
        attempts = {c.item: c.attempt for c in got.claims}
        assert attempts == {"a": 1, "b": 2, "f": 1, "h": 2}
        for c in got.claims:
            await store.complete(c.outcome_id, lease_token=c.lease_token, report=Report(), now=time.time())
        nothing = await store.claim(
            ClaimRequest(run_id="r1", worker="w9", limit=1, package=None, token_factory=new_token),
            now=time.time(),
        )
        assert not nothing.claims and nothing.reason == "done"
        run = await store.get_run("old")
        assert (run.counts.complete, run.counts.failed, run.counts.pending, run.counts.generating) == (
            7,
            1,
            0,
            0,
        )
        assert (await store.recount()).consistent
        # requeue the failed item: back in the queue, claimable
        assert await store.retry("r1", now=time.time()) == [ids["e"]]
        again = await store.claim(
            ClaimRequest(run_id="r1", worker="w9", limit=5, package=None, token_factory=new_token),
            now=time.time(),
        )
        assert [c.item for c in again.claims] == ["e"]
    finally:
        await store.close()

    # reopening applies nothing twice
    with psycopg.connect(postgres_database) as conn:
        before = conn.execute("SELECT count(*), max(applied_at) FROM schema_migrations").fetchone()
        rows = conn.execute("SELECT count(*) FROM outcome_queue").fetchone()
    again_store = await PostgresStore.open(postgres_database)
    try:
        assert (await again_store.recount()).consistent
    finally:
        await again_store.close()
    with psycopg.connect(postgres_database) as conn:
        assert conn.execute("SELECT count(*), max(applied_at) FROM schema_migrations").fetchone() == before
        assert conn.execute("SELECT count(*) FROM outcome_queue").fetchone() == rows


async def test_new_items_on_an_upgraded_database_are_queued(postgres_database: str) -> None:
    """Plan on an upgraded database: new items join the queue beside the migrated ones, in position order."""
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        apply_before_queue(conn)
        populate(conn)
    store = await PostgresStore.open(postgres_database)
    try:
        await store.plan(
            name="old",
            goal=None,
            policy=RunPolicy(),
            packages=[NewPackage("p2", None, [NewItem("z")])],
            now=time.time(),
        )
        with psycopg.connect(postgres_database) as conn:
            row = conn.execute(
                "SELECT q.position, o.position, q.final FROM outcome_queue q JOIN outcomes o ON o.n = q.n"
                " WHERE o.item = 'z'"
            ).fetchone()
        assert row is not None and row[0] == row[1] and row[2] is None
        got = await store.claim(
            ClaimRequest(run_id="r1", worker="w", limit=10, package="p2", token_factory=new_token),
            now=time.time(),
        )
        assert [c.item for c in got.claims] == ["f", "z"]
        assert (await store.recount()).consistent
    finally:
        await store.close()
