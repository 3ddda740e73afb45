"""PostgreSQL outages in the middle of a run (backends terminated, the database refusing connections, and —
opt-in, because it disturbs everyone sharing the cluster — a cluster restart): clear retryable errors while it
is down, recovery without restarting servers, nothing lost. And secrets: a password in the database URL never
appears in any tool result, log line or error captured here."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
import pytest
from mcp.client import Client
from psycopg import sql

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.mcp.server import create_server
from matrix_mcp.models import PackageSpec, RunPolicy
from matrix_mcp.store.postgres import PostgresStore
from matrix_mcp.store.postgres.connection import Database
from tests.conftest import PG_URL, assert_consistent
from tests.reliability.test_reliability_faults import plan
from tests.support.reliability_helpers import (
    ROOT,
    WorkerProcess,
    check_store,
    completions_per_outcome,
    run_counts,
)

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

RESTART = os.environ.get("MATRIX_RELIABILITY_PG_RESTART") == "1"


def dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def admin(statement: sql.Composable | str, *args: object) -> None:
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(statement, args or None)  # type: ignore[arg-type]


def terminate(db: str) -> None:
    admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        db,
    )


def allow_connections(db: str, allow: bool) -> None:
    admin(
        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(db), sql.SQL("true" if allow else "false")
        )
    )


def restart_cluster() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True, timeout=120
    )


async def outage(db: str, kind: str, seconds: float) -> None:
    if kind == "terminate":
        terminate(db)
    elif kind == "refuse":
        allow_connections(db, False)
        try:
            terminate(db)
            await anyio.sleep(seconds)
        finally:
            allow_connections(db, True)
    else:
        await anyio.to_thread.run_sync(restart_cluster)


def outage_plan() -> list[str]:
    return ["terminate", "refuse", "terminate", "refuse"] + (["restart"] if RESTART else [])


async def run_through_outages(
    url: str, artifacts: Path, logs: Path, kinds: list[str], seed: int = 0
) -> dict[str, int]:
    """Three worker processes work a run while the database goes away `len(kinds)` times."""
    rng = random.Random(seed)
    total = 4 * 25
    await plan(url, artifacts, "r", 4, 25, lease=2.0)
    workers = [
        WorkerProcess(logs, f"pgw{n}", url, artifacts, "--run", "r", "--worker", f"pgw{n}", "--hold", "0.25")
        for n in range(3)
    ]
    try:
        for w in workers:
            await w.wait_for("ready")
        await workers[0].wait_for("completed")
        for kind in kinds:
            await outage(dbname(url), kind, rng.uniform(1.0, 3.0))
            await anyio.sleep(rng.uniform(0.5, 1.5))
        for w in workers:
            assert await w.wait_exit(240) == 0, w.stderr()[-3000:]  # recovered without a restart
    finally:
        for w in workers:
            if w.alive():
                w.kill()
    errors = [e for w in workers for e in w.events() if e["ev"] == "error"]
    unclear = [e for e in errors if "retryable" not in e["text"] and "lease_token" not in e["text"]]
    assert unclear == [], unclear[:5]
    assert run_counts(url, "r") == {"complete": total}
    assert set(completions_per_outcome(url).values()) == {1}
    assert await check_store(url, artifacts) == []
    return {
        "outages": len(kinds),
        "retryable_errors": sum("retryable" in e["text"] for e in errors),
        "items": total,
    }


class AnswerLoss:
    """Wraps one of the store's batch methods: once armed, the next batch commits and then its answer is
    lost as if the backend died right after COMMIT. `lost` lists the sizes of the batches it hit."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, db: Database, method: str) -> None:
        self.real = getattr(db, method)
        self.armed = False
        self.lost: list[int] = []
        monkeypatch.setattr(db, method, self._run)

    def arm(self) -> None:
        self.armed = True

    async def _run(self, batch: Any) -> None:
        await self.real(batch)  # committed
        if self.armed:
            self.armed = False
            self.lost.append(len(batch))
            raise psycopg.OperationalError("server closed the connection unexpectedly")


async def test_answers_lost_after_commit_leave_no_orphaned_lease(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies after COMMIT went through but before its answer arrived (a backend killed at
    that instant): the retried claim hands out the leases the lost attempt took — not new ones beside
    them, which would sit orphaned until they expire — and a retried complete answers the outcome once."""
    engine = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    try:
        await engine.plan_run(
            "r",
            packages=[PackageSpec(name="p", items=["a", "b", "c", "d", "e"])],
            policy=RunPolicy(lease_seconds=600),
        )
        store = engine.store
        assert isinstance(store, PostgresStore)
        loss = AnswerLoss(monkeypatch, store.db, "_run_batch_pipelined")
        loss.arm()
        got = await engine.claim_items("r", worker="w1", limit=2)
        assert loss.lost == [1]
        with psycopg.connect(postgres_database) as conn:
            leased = conn.execute(
                "SELECT id, lease_token, attempts FROM outcomes WHERE status = 'generating' ORDER BY id"
            ).fetchall()
        assert sorted((c.outcome_id, c.lease_token, c.attempt) for c in got.items) == leased
        assert len(leased) == 2

        loss.arm()
        first = got.items[0]
        done = await engine.complete_item(
            first.outcome_id, lease_token=first.lease_token, metrics={"lines_generated": 3}
        )
        assert loss.lost == [1, 1] and done.status == "complete"

        rest = await engine.claim_items("r", worker="w2", limit=5)
        assert len(rest.items) == 3
        run = await engine.get_run("r")
        assert (run.counts.complete, run.counts.generating, run.counts.pending) == (1, 4, 0)
        await assert_consistent(engine)
    finally:
        await engine.close()


async def test_a_claim_recovered_after_its_answer_was_lost_carries_the_earlier_attempts(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried claim that hands out the leases the lost attempt took briefs them like any claim."""
    engine = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    try:
        await engine.plan_run(
            "r", packages=[PackageSpec(name="p", items=["a"])], policy=RunPolicy(backoff_seconds=0)
        )
        a = (await engine.claim_items("r", worker="w1")).items[0]
        await engine.fail_item(a.outcome_id, lease_token=a.lease_token, error="boom")
        store = engine.store
        assert isinstance(store, PostgresStore)
        loss = AnswerLoss(monkeypatch, store.db, "_run_batch_pipelined")
        loss.arm()
        got = await engine.claim_items("r", worker="w1")
        assert loss.lost == [1] and got.items[0].attempt == 2
        told = [x.model_dump(exclude_none=True) for x in got.items[0].previous_attempts or []]
        assert told == [{"attempt": 1, "error": "boom"}]
        await assert_consistent(engine)
    finally:
        await engine.close()


async def test_writes_whose_answer_was_lost_run_once_and_answer_as_the_first_time(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every other write, when its COMMIT went through but the answer was lost with the connection: the
    retry returns what the committed attempt answered — a created run is `created`, a failure is not
    reported as a lost lease — and the write happened once: one integration log row, one event each."""
    engine = await Engine.open(Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a"))
    try:
        store = engine.store
        assert isinstance(store, PostgresStore)
        loss = AnswerLoss(monkeypatch, store.db, "_run_batch")
        lose_next_answer = loss.arm

        def count(query: str, *args: object) -> int:
            with psycopg.connect(postgres_database) as conn:
                row = conn.execute(query, args or None).fetchone()  # type: ignore[arg-type]
            assert row is not None
            return int(row[0])

        def events(kind: str) -> int:
            return count("SELECT count(*) FROM events WHERE kind = %s", kind)

        lose_next_answer()
        planned = await engine.plan_run(
            "r",
            packages=[PackageSpec(name="p", items=["a", "b", "c"])],
            policy=RunPolicy(backoff_seconds=0.01),
        )
        assert not loss.armed and planned.created and planned.items == 3
        assert events("run_planned") == 1

        lose_next_answer()
        recorded = await engine.record_outcome(
            run="r", package="p", item="d", status="pending", created_by="tracker"
        )
        assert not loss.armed and recorded.created
        assert count("SELECT count(*) FROM outcomes WHERE item = 'd'") == 1 and events("recorded") == 1

        lose_next_answer()
        logged = await engine.record_integration_event(
            integration_type="ci", action="deploy", run="r", details={"n": 1}
        )
        assert not loss.armed and logged.action == "deploy"
        assert count("SELECT count(*) FROM integration_logs") == 1 and events("integration") == 1

        claimed = (await engine.claim_items("r", worker="w", limit=2)).items
        lose_next_answer()
        retried = await engine.fail_item(
            claimed[0].outcome_id, lease_token=claimed[0].lease_token, error="flaky"
        )
        assert not loss.armed and retried.status == "pending" and events("retry_scheduled") == 1
        gave_up = await engine.fail_item(
            claimed[1].outcome_id, lease_token=claimed[1].lease_token, error="bad", retryable=False
        )
        assert gave_up.status == "failed"

        lose_next_answer()
        requeued = await engine.retry_items("r", outcome_ids=[claimed[1].outcome_id])
        assert not loss.armed and requeued.requeued == 1 and requeued.outcome_ids == [claimed[1].outcome_id]
        assert events("requeued") == 1

        lose_next_answer()
        updated = await engine.update_outcome_status(
            recorded.outcome.id, status="complete", metrics={"lines_generated": 4}
        )
        assert not loss.armed and updated.status == "complete" and events("status_updated") == 1

        lose_next_answer()
        paused = await engine.control_run("r", action="pause")
        assert not loss.armed and paused.state == "paused" and events("run_paused") == 1

        assert await store.prune_answers(time.time() - 3600) == 0  # recent answers stay for retries
        assert await store.prune_answers(time.time() + 1) >= 7
        assert count("SELECT count(*) FROM write_answers") == 0
        await assert_consistent(engine)
    finally:
        await engine.close()


async def test_postgres_outages_mid_run_recover_without_restarting_servers(
    postgres_database: str, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    await run_through_outages(postgres_database, tmp_path / "artifacts", logs, outage_plan())


@pytest.fixture
def secret_role(postgres_database: str) -> Iterator[tuple[str, str]]:
    """A login role with a password owning the test database; yields (url with password, password)."""
    role = "matrix_secret_" + uuid.uuid4().hex[:8]
    password = "Pw-" + uuid.uuid4().hex
    db = dbname(postgres_database)
    admin(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    admin(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(db), sql.Identifier(role)))
    parts = urlsplit(postgres_database)
    netloc = f"{role}:{password}@{parts.hostname}:{parts.port or 5432}"
    url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    try:
        yield url, password
    finally:
        terminate(db)
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def test_passwords_never_appear_in_results_logs_or_errors(
    secret_role: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, password = secret_role
    wrong = "Wrong-" + uuid.uuid4().hex
    bad_url = with_password(url, wrong)
    captured: list[str] = []
    caplog.set_level("DEBUG")
    artifacts = tmp_path / "artifacts"
    # 1. in-process server: every tool result, including errors while the database refuses connections
    settings = Settings(database_url=url, artifacts_dir=artifacts, schema_database_url=None)
    async with Client(create_server(settings)) as c:

        async def call(tool: str, args: dict[str, object]) -> None:
            try:
                r = await c.call_tool(tool, args)
                captured.append(r.model_dump_json())
            except Exception as exc:
                captured.append(repr(exc))

        await call("plan_run", {"name": "r", "packages": [{"name": "p", "items": ["a", "b", "c"]}]})
        for tool, args in [
            ("list_runs", {}),
            ("run_status", {"run": "r"}),
            ("analyze_schema", {"detail": "full"}),
            ("generate_table_ddl", {"table_name": "nope"}),
            ("claim_items", {"run": "nope", "worker": "w"}),
        ]:
            await call(tool, args)
        for resource in ("matrix://runs", "matrix://metrics", "schema://tables"):
            try:
                captured.append((await c.read_resource(resource)).model_dump_json())
            except Exception as exc:
                captured.append(repr(exc))
        allow_connections(dbname(url), False)
        try:
            terminate(dbname(url))
            for tool, args in [
                ("claim_items", {"run": "r", "worker": "w"}),
                ("list_runs", {}),
                ("analyze_schema", {}),
                ("system_metrics", {}),
            ]:
                await call(tool, args)
        finally:
            allow_connections(dbname(url), True)
        await call("list_runs", {})  # recovered
    # 2. the schema tools pointed at a URL with a wrong password
    async with Client(
        create_server(Settings(database_url=url, artifacts_dir=artifacts, schema_database_url=bad_url))
    ) as c:
        for tool in ("analyze_schema", "find_relationships", "generate_api_schema"):
            captured.append((await c.call_tool(tool, {})).model_dump_json())
    # 3. processes: a worker through an outage with DEBUG logs; the CLI and the server with a wrong password
    logs = tmp_path / "logs"
    logs.mkdir()
    w = WorkerProcess(
        logs,
        "secret-worker",
        url,
        artifacts,
        "--run",
        "r",
        "--worker",
        "sw",
        env={"MATRIX_LOG_LEVEL": "DEBUG"},
    )
    try:
        await w.wait_for("ready")
        await outage(dbname(url), "refuse", 1.5)
        assert await w.wait_exit(120) == 0
    finally:
        if w.alive():
            w.kill()
    captured += [w.out_path.read_text(), w.stderr()]
    env = {**os.environ, "MATRIX_LOG_LEVEL": "DEBUG"}
    # (the test cluster trusts 127.0.0.1, so a wrong password is not refused: an unknown database and a closed
    # port, each in a URL carrying the password, make the connection fail instead)
    parts = urlsplit(bad_url)
    no_db = urlunsplit((parts.scheme, parts.netloc, "/no_such_db_" + uuid.uuid4().hex[:6], "", ""))
    closed = urlunsplit((parts.scheme, f"{parts.username}:{wrong}@127.0.0.1:1", parts.path, "", ""))
    for argv in (
        ["--database-url", bad_url, "status"],
        ["--database-url", no_db, "status"],
        ["--database-url", closed, "status", "r", "--check"],
        ["--database-url", no_db, "--artifacts-dir", str(artifacts)],  # serve: fails at start-up
        ["--database-url", closed, "export", "r"],
    ):
        with anyio.fail_after(120):
            p = await anyio.run_process(
                [sys.executable, "-m", "matrix_mcp", *argv], check=False, cwd=ROOT, env=env, input=b""
            )
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        captured += [out, err]
        assert p.returncode == 0 or err.strip(), argv  # a failure says something
    captured += [r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records]
    everything = "\n".join(captured)
    assert "retryable" in everything and "does not exist" in everything  # the errors were provoked
    assert password not in everything
    assert wrong not in everything
