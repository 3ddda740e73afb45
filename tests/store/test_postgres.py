"""PostgreSQL scale-out: several stdio server processes on one database behave as one board.

- concurrent workers across 3 server processes drain a 2,000-item run: every item completed exactly
  once, counters equal a recount — while every server backend is killed (pg_terminate_backend) mid-run;
- the servers recover without a restart; a password in the URL never reaches tool results or logs.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from psycopg import sql

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec
from tests.conftest import assert_consistent

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def server(url: str, artifacts: Path, log: Path) -> StdioServerParameters:
    """A matrix-mcp stdio server whose stderr (its log, at DEBUG) goes to `log`."""
    cmd = [sys.executable, "-m", "matrix_mcp", "--database-url", url, "--artifacts-dir", str(artifacts)]
    cmd += ["--log-level", "DEBUG"]
    return StdioServerParameters(
        command="/bin/sh",
        args=["-c", "exec " + shlex.join(cmd) + " 2>>" + shlex.quote(str(log))],
        env={**os.environ},
    )


async def call(client: Client, tool: str, args: dict[str, Any], retries: int = 60) -> dict[str, Any]:
    """Call a tool; a retryable error (database unavailable) is retried after a short pause."""
    for _ in range(retries):
        result = await client.call_tool(tool, args)
        if not result.is_error:
            return dict(result.structured_content or {})
        text = " ".join(getattr(c, "text", "") for c in result.content)
        if "retryable" not in text:
            raise AssertionError(f"{tool} failed: {text}")
        await anyio.sleep(0.1)
    raise AssertionError(f"{tool} kept failing")


def kill_backends(url: str) -> int:
    """Terminate every other backend connected to this test's database (the servers' pools, LISTEN)."""
    dbname = urlsplit(url).path.lstrip("/")
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)


async def test_servers_drain_2000_items_exactly_once_through_backend_kills(
    postgres_database: str, tmp_path: Path
) -> None:
    url = postgres_database
    n_servers, workers_per_server, packages, per_package = 3, 4, 20, 100
    total = packages * per_package
    completed_by: dict[str, list[str]] = {}
    done = 0
    killed: list[int] = []
    logs = [tmp_path / f"server{i}.log" for i in range(n_servers)]

    async with Client(server(url, tmp_path / "a", logs[0])) as orchestrator:
        plan = await call(
            orchestrator,
            "plan_run",
            {
                "name": "big",
                "packages": [
                    {"name": f"p{i:02d}", "items": [f"i{j:03d}" for j in range(per_package)]}
                    for i in range(packages)
                ],
                # long leases: a claim whose answer a kill swallowed must come back to its worker on
                # the retry, not sit orphaned until its lease expires (that would stall the drain)
                "lease_seconds": 600,
            },
        )
        assert plan["items"] == total

        async def worker(client: Client, name: str) -> None:
            nonlocal done
            while True:
                got = await call(
                    client, "claim_items", {"run": "big", "worker": name, "limit": 5, "wait_seconds": 2}
                )
                if not got["items"]:
                    if got.get("reason") == "done":
                        return
                    continue
                for item in got["items"]:
                    await call(
                        client,
                        "complete_item",
                        {
                            "outcome_id": item["outcome_id"],
                            "lease_token": item["lease_token"],
                            "metrics": {"lines_generated": 2, "quality_score": 0.5},
                        },
                    )
                    completed_by.setdefault(item["outcome_id"], []).append(name)
                    done += 1

        async def killer() -> None:
            for threshold in (total // 4, total // 2):
                while done < threshold:  # noqa: ASYNC110 - polling a counter the workers bump
                    await anyio.sleep(0.02)
                killed.append(await anyio.to_thread.run_sync(kill_backends, url))

        clients = [orchestrator]
        async with (
            Client(server(url, tmp_path / "a", logs[1])) as c1,
            Client(server(url, tmp_path / "a", logs[2])) as c2,
        ):
            clients += [c1, c2]
            with anyio.fail_after(150):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(killer)
                    for s, client in enumerate(clients):
                        for w in range(workers_per_server):
                            tg.start_soon(worker, client, f"s{s}w{w}")
            # every server still answers after the kills, without a restart
            for client in clients:
                status = await call(client, "run_status", {"run": "big"})
                assert status["counts"]["complete"] == total

    assert len(killed) == 2 and all(k > 0 for k in killed), killed
    assert done == total and len(completed_by) == total
    assert all(len(names) == 1 for names in completed_by.values())

    engine = await Engine.open(Settings(database_url=url, artifacts_dir=tmp_path / "a"))
    try:
        run = await engine.get_run("big")
        assert run.counts.complete == total and run.state == "done"
        await assert_consistent(engine)
        with psycopg.connect(url) as conn:
            per_outcome = conn.execute(
                "SELECT o.id, count(a.*) FILTER (WHERE a.status = 'complete') AS completions"
                " FROM outcomes o LEFT JOIN outcome_attempts a ON a.outcome_id = o.id GROUP BY o.id"
            ).fetchall()
            attempts = Counter(r[0] for r in conn.execute("SELECT attempts FROM outcomes").fetchall())
            events = Counter(
                r[0]
                for r in conn.execute("SELECT outcome_id FROM events WHERE kind = 'completed'").fetchall()
            )
        assert len(per_outcome) == total and all(c == 1 for _, c in per_outcome)
        # no lease was orphaned by a kill: every item was claimed exactly once
        assert attempts == {1: total}, attempts
        assert len(events) == total and set(events.values()) == {1}
        summary = await engine.package_summary("p00", run="big")
        assert summary.completed_items == per_package and summary.total_lines_generated == 2 * per_package
        metrics = await engine.system_metrics("big")
        assert metrics.outcomes_complete == total and metrics.total_lines_generated == 2 * total
    finally:
        await engine.close()


def _with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def test_password_never_leaks_and_pool_recovers(postgres_database: str, tmp_path: Path) -> None:
    role = "matrix_pw_" + uuid.uuid4().hex[:8]
    password = "Pw-" + uuid.uuid4().hex
    dbname = urlsplit(postgres_database).path.lstrip("/")
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(dbname), sql.Identifier(role))
        )
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
    url = _with_credentials(postgres_database, role, password)
    log = tmp_path / "server.log"
    seen: list[str] = []
    try:
        async with Client(server(url, tmp_path / "a", log)) as client:
            await call(client, "plan_run", {"name": "r", "packages": [{"name": "p", "items": ["a", "b"]}]})
            # the database refuses this role now: every tool answers a clear, retryable error, quickly
            with psycopg.connect(postgres_database, autocommit=True) as conn:
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
            await anyio.to_thread.run_sync(kill_backends, postgres_database)
            for tool, args in [
                ("claim_items", {"run": "r", "worker": "w"}),
                ("list_runs", {}),
                ("package_summary", {"package": "p", "run": "r"}),
            ]:
                t0 = anyio.current_time()
                result = await client.call_tool(tool, args)
                elapsed = anyio.current_time() - t0
                text = " ".join(getattr(c, "text", "") for c in result.content)
                seen.append(text + repr(result.structured_content))
                assert result.is_error and "retryable" in text and "unavailable" in text, text
                assert elapsed < 10, elapsed
            # the database is back: the same server recovers without a restart
            with psycopg.connect(postgres_database, autocommit=True) as conn:
                conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
            got = await call(client, "claim_items", {"run": "r", "worker": "w", "limit": 2})
            assert len(got["items"]) == 2
            seen.append(repr(got))
            seen.append(repr(await call(client, "list_runs", {})))
    finally:
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    text = log.read_text(errors="replace")
    assert text, "the server logged at DEBUG"
    for chunk in [*seen, text]:
        assert password not in chunk


async def test_libpq_variables_alone_select_postgres(postgres_database: str, tmp_path: Path) -> None:
    """No MATRIX_DATABASE_URL, no DB_*: libpq's PGHOST/PGPORT/PGUSER/PGDATABASE point the stdio server at
    PostgreSQL, and what it plans lands in that database (not in an embedded SQLite file)."""
    parts = urlsplit(postgres_database)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MATRIX_", "DB_", "PG"))}
    env |= {
        "PGHOST": parts.hostname or "127.0.0.1",
        "PGPORT": str(parts.port or 5432),
        "PGUSER": parts.username or "postgres",
        "PGDATABASE": parts.path.lstrip("/"),
    }
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "matrix_mcp", "--artifacts-dir", str(tmp_path / "a")],
        env=env,
        cwd=tmp_path,
    )
    async with Client(params) as client:
        planned = await call(
            client, "plan_run", {"name": "via-libpq", "packages": [{"name": "p", "items": ["a"]}]}
        )
        assert planned["created"] and planned["items"] == 1
    with psycopg.connect(postgres_database) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE name = 'via-libpq'").fetchone() == (1,)
    assert not (tmp_path / ".matrix").exists()


async def test_another_process_write_wakes_a_long_poll_through_listen_notify(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stores on one database (as two server processes): a long-poll in one wakes on the other's write
    through LISTEN/NOTIFY — with the polling fallback pushed out to 60 s, so only a notification can wake it
    in time. A write inside the debounce window (stretched to 1 s here) sends no NOTIFY of its own; the
    trailing NOTIFY after the window still wakes the watcher."""
    from matrix_mcp.store.postgres import connection

    monkeypatch.setattr(connection, "POLL_FALLBACK", 60.0)
    monkeypatch.setattr(connection, "NOTIFY_DEBOUNCE", 1.0)
    writer = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    watcher = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))

    async def woken_by(write: str) -> int:
        since = await watcher.store.latest_seq()
        got: list[int] = []
        woke = anyio.Event()

        async def wait() -> None:
            got.append(await watcher.store.wait_for_change(since, timeout=30.0))
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.2)
            await writer.record_integration_event(integration_type="ci", action=write)
            with anyio.fail_after(10):  # far below the 60 s poll
                await woke.wait()
        assert got[0] > since, (write, got)
        return got[0]

    try:
        await watcher.store.wait_for_change(0, timeout=0.01)  # starts the LISTEN connection
        await anyio.sleep(0.5)  # ... and lets it subscribe
        await woken_by("first")  # a lone write: its own NOTIFY
        await woken_by("inside the debounce window")  # no NOTIFY of its own: the trailing one
        await assert_consistent(writer)
    finally:
        await watcher.close()
        await writer.close()


async def test_many_processes_starting_at_once_migrate_once(postgres_database: str, tmp_path: Path) -> None:
    """Eight stores (eight pools, as eight server processes) opening one empty database at the same moment:
    the advisory lock makes one apply the migrations and the rest find them applied; all of them work."""
    from matrix_mcp.store.postgres.migrations import MIGRATIONS

    engines: list[Engine] = []

    async def start() -> None:
        engines.append(
            await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
        )

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(start)
        assert len(engines) == 8
        with psycopg.connect(postgres_database) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [v for v, _ in MIGRATIONS]
        await engines[0].plan_run("r", packages=[PackageSpec(name="p", items=[str(i) for i in range(8)])])
        got = [await e.claim_items("r", worker=f"w{n}") for n, e in enumerate(engines)]
        assert len({c.items[0].outcome_id for c in got}) == 8
        await assert_consistent(engines[-1])
    finally:
        for e in engines:
            await e.close()


async def test_high_churn_tables_carry_their_autovacuum_settings(
    postgres_database: str, tmp_path: Path
) -> None:
    """The outcomes table and its narrow queue are rewritten on every claim and report: they keep free space
    for HOT updates (an outcome row is updated twice and its attempt once after the insert that filled the
    page: at fillfactor 80 / 85 about one update in eight, and 59 % of the attempts' closes, left the page;
    at 55 / 50 all stay HOT) and are
    vacuumed after 2 % of its rows changed (the default 20 % lets a 1,000,000-row table bloat by 200,000 dead
    rows first); the append-and-fold delta table and the answer journal are vacuumed by row count."""
    engine = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    await engine.close()
    with psycopg.connect(postgres_database) as conn:
        rows = conn.execute(
            "SELECT relname, reloptions FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
        ).fetchall()
    options = {name: dict(o.split("=", 1) for o in (opts or [])) for name, opts in rows}
    assert options["outcomes"]["fillfactor"] == "55"
    assert options["outcome_attempts"]["fillfactor"] == "50"
    assert options["outcome_queue"]["fillfactor"] == "70"
    assert float(options["outcome_queue"]["autovacuum_vacuum_scale_factor"]) == 0.02
    assert float(options["outcomes"]["autovacuum_vacuum_scale_factor"]) == 0.02
    assert float(options["outcome_attempts"]["autovacuum_vacuum_scale_factor"]) == 0.02
    for table in ("package_deltas", "write_answers"):
        assert float(options[table]["autovacuum_vacuum_scale_factor"]) == 0.0
        assert int(options[table]["autovacuum_vacuum_threshold"]) == 1000


async def test_no_index_of_outcomes_names_a_column_claims_or_reports_write(
    postgres_database: str, tmp_path: Path
) -> None:
    """The narrow queue's point: a claim and a report update the outcome row HOT (same page, no index entry),
    which PostgreSQL does only when no index of the table — key or predicate — names a column they change.
    The claim's indexes live on outcome_queue instead."""
    engine = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    await engine.close()
    written = {
        "status",
        "attempts",
        "worker",
        "lease_token",
        "lease_expires_at",
        "started_at",
        "updated_at",
        "claim_seq",
        "completed_at",
        "duration_seconds",
        "error_message",
        "metrics",
        "metadata",
        "outcome_path",
        "content_sha256",
        "content_bytes",
        "mime_type",
        "available_at",
    }
    with psycopg.connect(postgres_database) as conn:
        indexes = conn.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'outcomes'::regclass"
        ).fetchall()
        queue = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE i.indrelid = 'outcome_queue'::regclass"
            ).fetchall()
        }
    assert len(indexes) >= 3
    for name, definition in indexes:
        named = set(re.findall(r"[a-z_]+", definition.split(" USING ", 1)[1]))
        assert not named & written, (name, definition)
    assert {"outcome_queue_claimable", "outcome_queue_leased", "outcome_queue_last_claim"} <= queue


async def test_run_totals_follow_the_roller_and_a_rebuild_realigns_them(
    postgres_database: str, tmp_path: Path
) -> None:
    """/metrics' store-wide totals come from one row per run, moved by the roller beside its packages: they
    equal the packages' sums after plans, claims, reports and a cancel; a drifted row is a recount
    mismatch naming the run, and a rebuild sets it from the packages again."""
    from matrix_mcp.store.postgres.migrations import MIGRATIONS, ROLLUP_LOCK

    engine = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    try:
        store = engine.store
        for run in ("one", "two", "gone"):
            await engine.plan_run(run, packages=[PackageSpec(name="p", items=["a", "b", "c"])])
        got = await engine.claim_items(run="one", worker="w", limit=2)
        await engine.complete_item(outcome_id=got.items[0].outcome_id, lease_token=got.items[0].lease_token)
        await engine.fail_item(
            outcome_id=got.items[1].outcome_id,
            lease_token=got.items[1].lease_token,
            error="no",
            retryable=False,
        )
        await engine.control_run("gone", action="cancel")
        totals, by_name = await store.active_status_counts(10)  # before the roll: rows plus deltas
        assert (totals["pending"], totals["complete"], totals["failed"], totals["cancelled"]) == (4, 1, 1, 3)
        while await store.roll_up():
            pass
        assert (await store.active_status_counts(10)) == (totals, by_name)
        await assert_consistent(engine)
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            rows = dict(
                conn.execute("SELECT r.name, t.pending FROM run_counters t JOIN runs r ON r.id = t.run_id")
            )
            assert rows == {"one": 1, "two": 3, "gone": 0}
            conn.execute("UPDATE run_counters SET complete = complete + 5")
        report = await store.recount()
        assert not report.consistent
        assert any(m.startswith("one: run complete counter 6 != packages 1") for m in report.mismatches)
        await store.rebuild_counters()
        await assert_consistent(engine)
        assert (await store.active_status_counts(10))[0] == totals
    finally:
        await engine.close()
    # the migration's backfill holds the roller's lock, named there by its number
    assert f"pg_advisory_xact_lock({ROLLUP_LOCK})" in dict(MIGRATIONS)[12]


async def test_a_plan_of_20000_packages_rolls_up_within_the_deadline(
    postgres_database: str, tmp_path: Path
) -> None:
    """The roller folds a chunk in one statement cut off at the deadline: a plan of 20,000 packages (one
    delta each) is folded, not retried forever (each package's histogram lookup once scanned the whole
    chunk — minutes for this plan)."""
    engine = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    try:
        specs = [PackageSpec(name=f"p{i:05d}", items=["a"]) for i in range(20_000)]
        await engine.plan_run("big", packages=specs)
        folded = 0
        while n := await engine.store.roll_up():
            folded += n
        assert folded >= 20_000
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM package_deltas").fetchone() == (0,)
            assert conn.execute("SELECT SUM(pending)::int FROM packages").fetchone() == (20_000,)
            assert conn.execute("SELECT pending FROM run_counters").fetchone() == (20_000,)
    finally:
        await engine.close()


async def test_a_budget_set_while_another_process_reports_counts_the_report_once(
    postgres_database: str, tmp_path: Path
) -> None:
    """Two stores on one database (two server processes). A run without a budget keeps no totals; update_policy
    setting one recounts what the run spent so far. A report of the other process that added its spend while
    the run had no budget and commits after that recount's snapshot would be counted by neither: the run's
    totals would stay below what its packages spent, and the budget would trip late. Here the report is held
    right before its commit (the test holds the events lock every batch takes last) while update_policy runs;
    then both commit, and the run's totals must equal its packages' sums (the recount checks them)."""
    from matrix_mcp.models import Usage
    from matrix_mcp.store.params import PolicyUpdate, Report
    from matrix_mcp.store.postgres.migrations import EVENTS_LOCK

    reporter = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    setter = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    try:
        await reporter.plan_run("r", packages=[PackageSpec(name="a", items=["x"])])
        x = (await reporter.claim_items("r", worker="w")).items[0]
        run_id = (await reporter.get_run("r")).id
        waiting = (
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        async with await psycopg.AsyncConnection.connect(postgres_database, autocommit=True) as held:
            await held.execute("BEGIN")
            await held.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))

            async def until_waiting(n: int) -> None:
                with anyio.fail_after(60):  # a guard against a hang, not a timing
                    await wait(n)

            async def wait(n: int) -> None:
                async with await psycopg.AsyncConnection.connect(postgres_database, autocommit=True) as c:
                    while True:
                        row = await (await c.execute(waiting)).fetchone()
                        if row is not None and row[0] >= n:
                            return
                        await anyio.sleep(0.01)

            async with anyio.create_task_group() as tg:
                report = Report(usage=Usage(input_tokens=7, cost_usd=1.5))
                tg.start_soon(
                    lambda: reporter.store.complete(
                        x.outcome_id, lease_token=x.lease_token, report=report, now=reporter.now()
                    )
                )
                await until_waiting(1)  # the report's batch wrote everything and waits to commit
                update = PolicyUpdate(max_cost_usd=100, max_tokens=1000)
                tg.start_soon(lambda: setter.store.update_policy(run_id, update=update, now=setter.now()))
                await until_waiting(2)  # update_policy waits too (for the report, or to commit)
                await held.execute("COMMIT")
        await assert_consistent(setter)
    finally:
        await setter.close()
        await reporter.close()
