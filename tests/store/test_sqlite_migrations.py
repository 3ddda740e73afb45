"""SQLite migrations: a database written by an older version opens, upgrades in place and keeps its data."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from pathlib import Path

import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.rules import new_token
from matrix_mcp.store.params import ClaimRequest, Report
from matrix_mcp.store.sqlite import SQLiteStore
from matrix_mcp.store.sqlite.migrations import MIGRATIONS, SCHEMA_VERSION_BUMP

pytestmark = pytest.mark.anyio


def make_v1(path: Path) -> str:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    version, script = MIGRATIONS[0]
    assert version == 1
    for statement in (s.strip() for s in script.split(";\n") if s.strip()):
        c.execute(statement)
    c.execute("INSERT INTO schema_migrations VALUES (1, ?)", (time.time(),))
    c.execute(
        "INSERT INTO runs (id, name, outcome_type, lease_seconds, max_attempts, backoff_seconds,"
        " backoff_cap_seconds, created_at, updated_at) VALUES ('r1', 'old', 'code', 300, 3, 5, 300, 0, 0)"
    )
    c.execute(
        "INSERT INTO packages (id, run_id, name, position, total, complete, duration_sum, duration_n)"
        " VALUES (7, 'r1', 'p', 0, 3, 3, 6.5, 3)"
    )
    for i, d in enumerate((1.0, 2.0, 3.5)):
        c.execute(
            "INSERT INTO outcomes (id, run_id, package_id, item, position, status, outcome_type, available_at,"
            " created_at, updated_at, started_at, completed_at, duration_seconds)"
            " VALUES (?, 'r1', 7, ?, ?, 'complete', 'code', 0, 0, 0, 0, ?, ?)",
            (f"o{i}", f"i{i}", i, d, d),
        )
    c.executemany("INSERT INTO package_durations VALUES (7, ?, ?)", [(0, 1), (3, 1), (6, 1)])
    c.close()
    return "r1"


async def test_v1_database_upgrades_in_place(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    run_id = make_v1(db)
    store = await SQLiteStore.open(db)
    try:
        assert (await store.recount(run_id)).consistent
        (summary,) = await store.package_summaries(run_id)
        assert summary.completed_items == 3 and summary.p50_duration_seconds is not None
        assert summary.p50_duration_seconds == pytest.approx(2.0, rel=0.1)
        versions = [r[0] for r in sqlite3.connect(db).execute("SELECT version FROM schema_migrations")]
        assert versions == [v for v, _ in MIGRATIONS]
    finally:
        await store.close()
    again = await SQLiteStore.open(db)  # reopening applies nothing twice
    await again.close()


async def test_many_processes_starting_at_once_migrate_once(tmp_path: Path) -> None:
    """Eight stores opening one fresh file at the same moment (as eight server processes would): each opens,
    every migration is applied exactly once, and the board works from all of them."""
    import anyio

    db = tmp_path / "fresh.db"
    stores: list[SQLiteStore] = []

    async def start() -> None:
        stores.append(await SQLiteStore.open(db))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(start)
        assert len(stores) == 8
        versions = [r[0] for r in sqlite3.connect(db).execute("SELECT version FROM schema_migrations")]
        assert versions == [v for v, _ in MIGRATIONS]
    finally:
        for s in stores:
            await s.close()


# ---- the release before the latest migration -----------------------------------------------------

BODY = b"print('hi')\n"
BODY_SHA = hashlib.sha256(BODY).hexdigest()
KEY_HASH = hashlib.sha256(b"a key").hexdigest()
# columns the current release writes that a schema before their migration does not have yet
LATER_COLUMNS = {("outcome_attempts", "principal")}


def insert(c: sqlite3.Connection, table: str, **row: object) -> None:
    """One row as the release writes it, leaving out only columns the schema is too old to have."""
    have = {r[1] for r in c.execute(f"PRAGMA table_info({table})")}
    missing = {(table, k) for k in row if k not in have}
    assert missing <= LATER_COLUMNS, missing
    cols = [k for k in row if k in have]
    c.execute(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
        [row[k] for k in cols],
    )


def make_release(path: Path, t: float) -> dict[str, str]:
    """A file at the schema before the latest migration (MIGRATIONS[:-1]) holding what the current release
    writes for: a run of two packages with a complete item (inline content, metrics, duration), a leased item
    whose lease is live, a finally failed item and two pending ones; their attempts, counters, per-minute
    throughput, events, and an API key. Answers the ids and the live lease's token."""
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    for version, script in MIGRATIONS[:-1]:
        for statement in (s.strip() for s in script.split(";\n") if s.strip()):
            if statement == SCHEMA_VERSION_BUMP:  # as the runner does it (PRAGMA takes a literal)
                statement = f"PRAGMA schema_version = {c.execute('PRAGMA schema_version').fetchone()[0] + 1}"
            c.execute(statement)
        c.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, t - 3600 + version))
    ids = {"run": "run-1", "done": "o-done", "leased": "o-leased", "broken": "o-broken"}
    ids |= {"waiting": "o-waiting", "intro": "o-intro", "token": "tok-leased"}
    started, done_at, failed_at = t - 30, t - 20, t - 10
    duration = done_at - started
    c.execute("BEGIN")
    insert(
        c, "runs", id="run-1", name="rel", goal="ship it", state="active", outcome_type="code",
        lease_seconds=3600.0, max_attempts=1, backoff_seconds=5.0, backoff_cap_seconds=300.0,
        outcome_schema=None, claim_clock=0, created_at=t - 60, updated_at=t - 60,
    )  # fmt: skip
    hist = json.dumps([[math.floor(math.log(duration, 1.2)), 1]], separators=(",", ":"))
    insert(
        c, "packages", id=1, run_id="run-1", name="api", description="the API", position=0, last_claim=4,
        total=4, pending=1, generating=1, complete=1, failed=1, cancelled=0, duration_sum=duration,
        duration_n=1, lines_sum=12.0, quality_sum=0.9, quality_n=1, duration_hist=hist,
    )  # fmt: skip
    insert(
        c, "packages", id=2, run_id="run-1", name="docs", description=None, position=1, last_claim=0,
        total=1, pending=1, generating=0, complete=0, failed=0, cancelled=0, duration_sum=0.0,
        duration_n=0, lines_sum=0.0, quality_sum=0.0, quality_n=0, duration_hist="[]",
    )  # fmt: skip
    common = {"run_id": "run-1", "outcome_type": "code", "specifications": None, "created_by": None}
    common |= {"metadata": "{}", "available_at": t - 60, "created_at": t - 60}
    insert(
        c, "outcomes", n=1, id="o-done", package_id=1, item="done", position=0, status="complete",
        outcome_path="rel/api/done", attempts=1, worker="w1", error_message=None,
        metrics='{"lines_generated":12,"quality_score":0.9}', content_sha256=BODY_SHA,
        content_bytes=len(BODY), mime_type="text/plain", lease_token="tok-done", lease_expires_at=None,
        updated_at=done_at, started_at=started, completed_at=done_at, duration_seconds=duration, **common,
    )  # fmt: skip
    insert(
        c, "outcomes", n=2, id="o-leased", package_id=1, item="leased", position=1, status="generating",
        outcome_path=None, attempts=1, worker="w1", error_message=None, metrics="{}", content_sha256=None,
        content_bytes=None, mime_type=None, lease_token="tok-leased", lease_expires_at=started + 3600,
        updated_at=started, started_at=started, completed_at=None, duration_seconds=None, **common,
    )  # fmt: skip
    insert(
        c, "outcomes", n=3, id="o-broken", package_id=1, item="broken", position=2, status="failed",
        outcome_path=None, attempts=1, worker="w1", error_message="boom", metrics="{}", content_sha256=None,
        content_bytes=None, mime_type=None, lease_token="tok-broken", lease_expires_at=None,
        updated_at=failed_at, started_at=started, completed_at=failed_at, duration_seconds=failed_at - started,
        **common,
    )  # fmt: skip
    for n, oid, item, package_id, position in (
        (4, "o-waiting", "waiting", 1, 3),
        (5, "o-intro", "intro", 2, 0),
    ):
        insert(
            c, "outcomes", n=n, id=oid, package_id=package_id, item=item, position=position, status="pending",
            outcome_path=None, attempts=0, worker=None, error_message=None, metrics="{}", content_sha256=None,
            content_bytes=None, mime_type=None, lease_token=None, lease_expires_at=None, updated_at=t - 60,
            started_at=None, completed_at=None, duration_seconds=None, **common,
        )  # fmt: skip
    for oid, token, status, error, ended in (
        ("o-done", "tok-done", "complete", None, done_at),
        ("o-leased", "tok-leased", "generating", None, None),
        ("o-broken", "tok-broken", "failed", "boom", failed_at),
    ):
        insert(
            c, "outcome_attempts", outcome_id=oid, attempt=1, lease_token=token, worker="w1", status=status,
            error=error, started_at=started, ended_at=ended, principal="key:ci",
        )  # fmt: skip
    insert(c, "outcome_metrics", outcome_id="o-done", name="lines_generated", value=12.0)
    insert(c, "outcome_metrics", outcome_id="o-done", name="quality_score", value=0.9)
    minutes: dict[int, dict[str, float]] = {}
    for at, key in ((done_at, "completed"), (failed_at, "failed")):
        m = minutes.setdefault(
            int(at // 60), {"completed": 0, "failed": 0, "duration_sum": 0.0, "duration_n": 0}
        )
        m[key] += 1
    minutes[int(done_at // 60)].update(duration_sum=duration, duration_n=1)
    for minute, counts in minutes.items():
        insert(c, "outcome_minutes", run_id="run-1", minute=minute, **counts)
    insert(c, "contents", sha256=BODY_SHA, body=BODY)
    for seq, oid, kind, data, at in (
        (1, None, "run_planned", {"items": 5, "packages": ["api", "docs"]}, t - 60),
        (2, "o-done", "claimed", {"attempt": 1, "item": "done", "package": "api", "worker": "w1"}, started),
        (
            3,
            "o-leased",
            "claimed",
            {"attempt": 1, "item": "leased", "package": "api", "worker": "w1"},
            started,
        ),
        (
            4,
            "o-broken",
            "claimed",
            {"attempt": 1, "item": "broken", "package": "api", "worker": "w1"},
            started,
        ),
        (5, "o-done", "completed", {"duration": duration, "item": "done", "package": "api"}, done_at),
        (
            6,
            "o-broken",
            "failed",
            {"attempt": 1, "error": "boom", "item": "broken", "package": "api"},
            failed_at,
        ),
    ):
        insert(
            c, "events", seq=seq, run_id="run-1", outcome_id=oid, kind=kind,
            data=json.dumps(data, separators=(",", ":"), sort_keys=True), created_at=at,
        )  # fmt: skip
    insert(c, "api_keys", name="ci", key_hash=KEY_HASH, scopes='["read","work"]', created_at=t - 60)
    c.execute("COMMIT")
    c.close()
    return ids


def migrations_applied(path: Path) -> list[tuple[int, float]]:
    c = sqlite3.connect(path)
    try:
        return [
            (int(v), float(at)) for v, at in c.execute("SELECT version, applied_at FROM schema_migrations")
        ]
    finally:
        c.close()


async def test_the_release_before_the_latest_migration_upgrades_with_nothing_lost(tmp_path: Path) -> None:
    db = tmp_path / "release.db"
    t = time.time()
    ids = make_release(db, t)
    before = migrations_applied(db)
    assert [v for v, _ in before] == [v for v, _ in MIGRATIONS[:-1]]
    store = await SQLiteStore.open(db)  # migrates in place under BEGIN IMMEDIATE
    try:
        after = migrations_applied(db)
        assert [v for v, _ in after] == [v for v, _ in MIGRATIONS]
        assert after[: len(before)] == before  # the old versions are not applied again
        assert (await store.recount()).consistent
        statuses = {k: (await store.get_outcome(ids[k])).status for k in ("done", "leased", "broken")}
        statuses |= {k: (await store.get_outcome(ids[k])).status for k in ("waiting", "intro")}
        assert statuses == {
            "done": "complete",
            "leased": "generating",
            "broken": "failed",
            "waiting": "pending",
            "intro": "pending",
        }
        done = await store.get_outcome(ids["done"], history=True)
        assert done.metrics == {"lines_generated": 12, "quality_score": 0.9}
        assert (done.content_sha256, done.content_bytes, done.outcome_path) == (
            BODY_SHA,
            len(BODY),
            "rel/api/done",
        )
        assert [(h.attempt, h.worker, h.status) for h in done.history] == [(1, "w1", "complete")]
        assert (await store.get_outcome(ids["broken"])).error_message == "boom"
        api = await store.package_summary("api", run_id=ids["run"])
        assert (api.total_items, api.completed_items, api.failed_items, api.generating_items) == (4, 1, 1, 1)
        assert api.total_lines_generated == 12.0 and api.average_quality_score == pytest.approx(0.9)
        assert api.p50_duration_seconds == pytest.approx(10.0, rel=0.1)
        assert await store.inline_content(BODY_SHA) == BODY
        assert (
            await store.run_overview(ids["run"], since=t - 3600)
        ).finished_since == 2  # per-minute throughput
        events = await store.events_after(since=0, run_id=None, limit=100)
        assert [(e.seq, e.kind) for e in events] == [
            (1, "run_planned"),
            (2, "claimed"),
            (3, "claimed"),
            (4, "claimed"),
            (5, "completed"),
            (6, "failed"),
        ]
        assert events[4].data == {"duration": pytest.approx(10.0), "item": "done", "package": "api"}
        key = await store.api_key_by_hash(KEY_HASH)
        assert key is not None and (key.name, key.scopes, key.revoked_at) == ("ci", ("read", "work"), None)

        # the board goes on: the live lease completes with its token, the pending items are claimed
        now = time.time()
        reported = await store.complete(
            ids["leased"], lease_token=ids["token"], report=Report(metrics={"lines_generated": 3}), now=now
        )
        assert reported.outcome.status == "complete" and reported.outcome.metrics == {"lines_generated": 3}
        batch = await store.claim(
            ClaimRequest(run_id=ids["run"], worker="w2", limit=10, token_factory=new_token), now=now
        )
        assert sorted(c.item for c in batch.claims) == ["intro", "waiting"]
        assert (await store.latest_seq()) == 6 + 1 + 2  # completed, then two claimed
        assert (await store.recount()).consistent
    finally:
        await store.close()
    again = await SQLiteStore.open(db)  # reopening applies nothing twice
    try:
        assert migrations_applied(db) == after
        assert (await again.recount()).consistent
        assert await again.inline_content(BODY_SHA) == BODY
    finally:
        await again.close()
    # the engine on the migrated file serves the inline content and rebuilds its readable file
    engine = await Engine.open(Settings(database_url=f"sqlite:///{db}", artifacts_dir=tmp_path / "artifacts"))
    try:
        assert (await engine.outcome_content(ids["done"]))[0] == BODY
        await engine.repair_files()
        assert (tmp_path / "artifacts" / "rel" / "api" / "done").read_bytes() == BODY
    finally:
        await engine.close()


def _status_check_allows(db: Path, outcome_id: str, status: str, *, refuses: str) -> None:
    """The migrated file is intact and its status CHECK takes `status` but still refuses `refuses`."""
    c = sqlite3.connect(db, isolation_level=None)
    try:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        c.execute("BEGIN")
        c.execute("UPDATE outcomes SET status = ? WHERE id = ?", (status, outcome_id))
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            c.execute("UPDATE outcomes SET status = ? WHERE id = ?", (refuses, outcome_id))
        c.execute("ROLLBACK")
    finally:
        c.close()


async def test_the_claim_policy_migration_allows_blocked_and_keeps_every_row(tmp_path: Path) -> None:
    """The status CHECK is rewritten in place (writable_schema): 'blocked' is allowed, anything else still
    refused; old items keep their status with no prerequisites, no priority and no lock keys."""
    db = tmp_path / "release.db"
    ids = make_release(db, time.time())
    store = await SQLiteStore.open(db)
    try:
        waiting = await store.get_outcome(ids["waiting"])
        assert (waiting.status, waiting.priority, waiting.locks) == ("pending", 0, [])
        run = await store.get_run(ids["run"])
        assert (run.policy.max_concurrent, run.policy.on_dependency_failure) == (None, "cancel")
    finally:
        await store.close()
    _status_check_allows(db, ids["waiting"], "blocked", refuses="stalled")


async def test_the_review_migration_allows_in_review_and_keeps_every_row(tmp_path: Path) -> None:
    """'in_review' joins the status CHECK (rewritten in place as for 'blocked'); old runs need no review and
    have no budget, old packages and attempts spent nothing."""
    db = tmp_path / "release.db"
    ids = make_release(db, time.time())
    store = await SQLiteStore.open(db)
    try:
        run = await store.get_run(ids["run"])
        assert (run.policy.review, run.policy.max_cost_usd, run.policy.max_tokens, run.counts.in_review) == (
            "none",
            None,
            None,
            0,
        )
        assert all(p.usage is None and p.review is None for p in await store.package_summaries(ids["run"]))
        assert (await store.recount()).consistent
    finally:
        await store.close()
    _status_check_allows(db, ids["waiting"], "in_review", refuses="reviewing")
