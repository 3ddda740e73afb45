"""The board's rules (matrix_mcp.rules) on their own, and the PostgreSQL lease sweep — the one rule written as
SQL for speed — held against the Python rule it must agree with, row for row, over generated rows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matrix_mcp import rules
from matrix_mcp.audit import acting_as
from matrix_mcp.errors import Conflict, NotFound, StaleLease
from matrix_mcp.models import RunPolicy
from matrix_mcp.store.params import Report

# ---- pure rules -----------------------------------------------------------------------------------


def test_control_targets() -> None:
    assert rules.control_target("active", "pause") == "paused"
    assert rules.control_target("paused", "resume") == "active"
    assert rules.control_target("paused", "cancel") == "cancelled"
    assert rules.control_target("cancelled", "cancel") == "cancelled"
    for action in ("pause", "resume"):
        with pytest.raises(Conflict) as err:
            rules.control_target("cancelled", action)  # type: ignore[arg-type]
        assert err.value.field == "action"


@given(
    retryable=st.booleans(),
    attempts=st.integers(1, 10),
    max_attempts=st.integers(1, 10),
    run_state=st.sampled_from(["active", "paused", "cancelled"]),
    delay=st.floats(-5, 1000, allow_nan=False),
)
def test_failure_outcome(
    retryable: bool, attempts: int, max_attempts: int, run_state: str, delay: float
) -> None:
    got = rules.failure_outcome(
        retryable=retryable,
        attempts=attempts,
        max_attempts=max_attempts,
        run_state=run_state,
        backoff=lambda n: delay,
    )
    if retryable and attempts < max_attempts and run_state != "cancelled":
        assert got.target == "pending" and got.retries and got.delay == max(0.0, delay)
    else:
        assert not got.retries and got.delay == 0.0
        assert got.target == ("cancelled" if retryable and run_state == "cancelled" else "failed")
    ev = rules.failure_reported(package="p", item="i", attempt=attempts, error="x" * 600, outcome=got)
    assert ev.kind == ("retry_scheduled" if got.retries else got.target)
    assert len(ev.data["error"]) == rules.ERROR_IN_EVENT
    assert ("delay" in ev.data) == got.retries


@given(
    old=st.sampled_from(["pending", "generating", "complete", "failed", "cancelled"]),
    new=st.sampled_from(["pending", "generating", "complete", "failed", "cancelled"]),
    started=st.none() | st.floats(0, 100),
    now=st.floats(0, 200),
    report_metrics=st.sampled_from([{}, {"lines_generated": 3}]),
)
def test_override(
    old: str, new: Any, started: float | None, now: float, report_metrics: dict[str, Any]
) -> None:
    row = {
        "id": "o",
        "run_id": "r",
        "package_id": 7,
        "package_name": "p",
        "item": "i",
        "status": old,
        "metrics": '{"quality_score":1}',
        "metadata": None,
        "outcome_path": "a.md",
        "content_sha256": None,
        "content_bytes": None,
        "mime_type": None,
        "created_by": None,
        "started_at": started,
        "completed_at": 1.0,
        "duration_seconds": 2.0,
        "lease_seconds": 30,
    }
    report = Report(metrics=report_metrics)
    t = rules.override(row, new=new, error_message="e", report=report, now=now, created_by="me", token="t9")
    v = t.values
    metrics = report_metrics or {"quality_score": 1}
    assert t.old == old and t.new == new and v["status"] == new
    assert v["metrics"] == rules.json_text(metrics) and v["metadata"] == "{}"
    assert v["outcome_path"] == "a.md" and v["created_by"] == "me" and v["lease_token"] == "t9"
    assert v["error_message"] == (None if new == "complete" else "e")
    assert t.queue_token == ("t9" if new == "generating" else None)
    if new == "generating":
        assert (v["started_at"], v["completed_at"], v["lease_expires_at"]) == (now, None, now + 30)
    elif new == "pending":
        assert v["completed_at"] is None and v["duration_seconds"] is None and v["lease_expires_at"] is None
    elif new == old:
        assert (v["completed_at"], v["duration_seconds"]) == (1.0, 2.0)
    else:
        assert v["completed_at"] == now and v["duration_seconds"] == rules.duration(started, now)
        assert v["duration_seconds"] is None or v["duration_seconds"] >= 0
    # the counters: the old contribution leaves with `complete`, the new one comes with it; a minute counts
    # only a status entered now
    signs = [c.sign for c in t.contributions]
    assert signs == ([-1] if old == "complete" else []) + ([+1] if new == "complete" else [])
    assert t.clear_metric_rows == (old == "complete" or new == "complete")
    assert (t.metric_rows is not None) == (new == "complete")
    entered = new != old
    assert t.minute == (
        rules.MinuteDelta(completed=1, duration=v["duration_seconds"])
        if new == "complete" and entered
        else rules.MinuteDelta(failed=1)
        if new == "failed" and entered
        else None
    )
    assert t.event.kind == "status_updated" and t.attempt is None


def test_override_fences_with_a_fresh_token() -> None:
    row = {
        "id": "o", "run_id": "r", "package_id": 1, "package_name": "p", "item": "i", "status": "generating",
        "metrics": None, "metadata": None, "outcome_path": None, "content_sha256": None, "content_bytes": None,
        "mime_type": None, "created_by": None, "started_at": 1.0, "completed_at": None, "duration_seconds": None,
        "lease_seconds": 30, "lease_token": "old",
    }  # fmt: skip
    tokens = {rules.override(row, new="pending", error_message=None, report=None, now=2.0).values["lease_token"]
              for _ in range(3)}  # fmt: skip
    assert len(tokens) == 3 and "old" not in tokens
    assert all(len(t) == len(rules.new_token()) for t in tokens)


def test_why_nothing() -> None:
    assert rules.why_nothing(pending=1, generating=3, total=4) == ("backing_off", "available_at")
    assert rules.why_nothing(pending=0, generating=3, total=4) == ("all_leased", "lease_expires_at")
    assert rules.why_nothing(pending=0, generating=0, total=4) == ("done", None)
    assert rules.why_nothing(pending=0, generating=0, total=0) == ("empty", None)


def test_events_carry_the_package_and_the_principal() -> None:
    """Every per-item event names its package and item (the drift issue 10 found cannot recur: both stores
    store Ev.payload()); a principal acting is stamped, except on system events."""
    per_item = [
        rules.claimed(package="p", item="i", worker="w", attempt=1),
        rules.completed(package="p", item="i", duration=None),
        rules.failure_reported(
            package="p", item="i", attempt=1, error="e", outcome=rules.FailureOutcome("failed")
        ),
        rules.lease_expired_event(package="p", item="i", attempt=1, target="pending"),
        rules.recorded(package="p", item="i", status="pending"),
        rules.status_updated(package="p", item="i", old="pending", new="complete"),
    ]
    for ev in per_item:
        assert ev.data["package"] == "p" and ev.data["item"] == "i"
    with acting_as("key:ci"):
        assert '"principal":"key:ci"' in rules.completed(package="p", item="i", duration=1.0).payload()
        assert (
            "principal"
            not in rules.lease_expired_event(package="p", item="i", attempt=1, target="failed").payload()
        )
    assert "principal" not in rules.completed(package="p", item="i", duration=1.0).payload()
    assert rules.run_controlled("cancel", 3).data == {"cancelled_items": 3}
    assert rules.run_controlled("pause", None).kind == "run_paused"
    assert rules.run_controlled("resume", None).kind == "run_resumed"
    assert rules.requeued([str(i) for i in range(150)]).data["count"] == 150


def test_claim_leases_the_item_for_the_runs_lease() -> None:
    row = {"id": "o", "item": "i", "attempts": 2}
    t = rules.claim(
        row, run_id="r", package_id=7, package="p", worker="w", token="t", lease_seconds=30, now=100.0
    )
    assert (t.old, t.new) == rules.CLAIMED_MOVE and t.queue_token == "t"
    assert t.values == {
        "status": "generating",
        "attempts": 3,
        "worker": "w",
        "lease_token": "t",
        "lease_expires_at": 130.0,
        "started_at": 100.0,
        "updated_at": 100.0,
    }
    assert t.start == rules.AttemptStart(3, "t", "w") and t.attempt is None
    assert t.event == rules.claimed(package="p", item="i", worker="w", attempt=3)
    assert t.contributions == () and t.minute is None and t.metric_rows is None


@given(
    status=st.sampled_from(["pending", "generating", "complete", "failed", "cancelled"]),
    current=st.sampled_from(["a", "b", None]),
    token=st.sampled_from(["a", "b"]),
    run_state=st.sampled_from(["active", "paused", "cancelled"]),
)
def test_heartbeat_extends_a_lease_that_holds(
    status: str, current: str | None, token: str, run_state: str
) -> None:
    row = {"status": status, "lease_token": current}
    held = rules.heartbeat(row, token=token, run_state=run_state, lease_seconds=45, now=10.0)
    if not rules.lease_holds(status, current, token):
        assert held is None
        return
    assert held is not None and held.values == {"lease_expires_at": 55.0, "updated_at": 10.0}
    assert held.lease_expires_at == 55.0 and held.stops == (run_state == "cancelled")


def test_set_based_moves() -> None:
    cancel = rules.cancel(5.0)
    assert (cancel.old, cancel.new) == rules.CANCEL_MOVE
    assert cancel.values == {"status": "cancelled", "updated_at": 5.0, "completed_at": 5.0}
    retry = rules.retry(5.0)
    assert (retry.old, retry.new) == rules.RETRY_MOVE
    assert retry.values == {
        "status": "pending",
        "attempts": 0,
        "available_at": 5.0,
        "completed_at": None,
        "duration_seconds": None,
        "updated_at": 5.0,
    }
    assert rules.plan_allowed("cancelled", False) and not rules.plan_allowed("cancelled", True)
    assert rules.retry_allowed("paused") and not rules.retry_allowed("cancelled")
    assert [rules.claim_blocked(s) for s in ("active", "paused", "cancelled")] == [
        None,
        "paused",
        "cancelled",
    ]
    with pytest.raises(NotFound):
        rules.check_retry(None, "r")
    with pytest.raises(Conflict):
        rules.check_retry("cancelled", "r")
    with pytest.raises(Conflict):
        rules.check_plan("cancelled", True, "r")


def test_lease_checks() -> None:
    row = {"status": "complete", "worker": "w", "attempts": 2, "lease_token": "t1"}
    assert rules.check_lease(row, "o", "t1") is row
    with pytest.raises(StaleLease) as err:
        rules.check_lease(row, "o", "t0")
    assert "already complete" in str(err.value) and err.value.field == "lease_token"
    with pytest.raises(NotFound):
        rules.check_lease(None, "o", "t0")


# ---- the PostgreSQL sweep statement against rules.lease_expiry ------------------------------------

ROW = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["pending", "generating", "complete", "failed", "cancelled"]),
        "attempts": st.integers(0, 5),
        "lease_expires_at": st.none() | st.sampled_from([90.0, 99.5, 100.0, 100.5, 200.0]),
        "started_at": st.none() | st.sampled_from([10.0, 100.0, 150.0]),
    }
)


@pytest.mark.postgres
def test_postgres_sweep_sql_is_the_python_rule(postgres_database: str) -> None:
    import psycopg
    from psycopg.rows import dict_row

    from matrix_mcp.store.params import NewItem, NewPackage
    from matrix_mcp.store.postgres import PostgresStore
    from matrix_mcp.store.postgres.sql import SWEEP_SQL
    from matrix_mcp.store.postgres.work import SWEEP_LIMIT

    async def populate() -> str:
        store = await PostgresStore.open(postgres_database)
        try:
            plan = await store.plan(
                name="sweep",
                goal=None,
                policy=RunPolicy(),
                packages=[NewPackage("p", None, [NewItem(f"i{k}") for k in range(6)])],
                now=1.0,
            )
            return plan.run.id
        finally:
            await store.close()

    run_id = anyio.run(populate)
    with psycopg.connect(postgres_database, row_factory=dict_row) as conn:
        ids = [r["id"] for r in conn.execute("SELECT id FROM outcomes ORDER BY n").fetchall()]
        conn.rollback()

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            rows=st.lists(ROW, min_size=len(ids), max_size=len(ids)),
            run_state=st.sampled_from(["active", "paused", "cancelled"]),
            max_attempts=st.integers(1, 4),
            now=st.sampled_from([99.5, 100.0, 100.25]),
        )
        def check(rows: list[dict[str, Any]], run_state: str, max_attempts: int, now: float) -> None:
            try:
                conn.execute(
                    "UPDATE runs SET state = %s, max_attempts = %s WHERE id = %s",
                    (run_state, max_attempts, run_id),
                )
                for oid, r in zip(ids, rows, strict=True):
                    conn.execute(
                        "UPDATE outcomes SET status = %s, attempts = %s, lease_expires_at = %s, started_at = %s,"
                        " lease_token = %s, completed_at = NULL, duration_seconds = NULL, error_message = NULL"
                        " WHERE id = %s",
                        (
                            r["status"],
                            r["attempts"],
                            r["lease_expires_at"],
                            r["started_at"],
                            "tok-" + oid,
                            oid,
                        ),
                    )
                    # the narrow queue row the store keeps beside it (leased only while generating)
                    leased = r["status"] == "generating"
                    conn.execute(
                        "UPDATE outcome_queue SET lease_token = %s, lease_expires_at = %s, final = %s"
                        " WHERE n = (SELECT n FROM outcomes WHERE id = %s)",
                        (
                            "tok-" + oid if leased else None,
                            r["lease_expires_at"] if leased else None,
                            rules.final_status(r["status"]),
                            oid,
                        ),
                    )
                swept = conn.execute(SWEEP_SQL, {"run": run_id, "now": now, "limit": SWEEP_LIMIT}).fetchall()
                after = {
                    r["id"]: r
                    for r in conn.execute(
                        "SELECT o.id, o.status, o.error_message, o.completed_at, o.duration_seconds,"
                        " o.lease_expires_at, q.lease_token AS q_token, q.final AS q_final"
                        " FROM outcomes o JOIN outcome_queue q ON q.n = o.n"
                    ).fetchall()
                }
                expected_swept = set()
                for oid, r in zip(ids, rows, strict=True):
                    target = (
                        rules.lease_expiry(
                            run_state=run_state, attempts=r["attempts"], max_attempts=max_attempts
                        )
                        if rules.lease_expired(r["status"], r["lease_expires_at"], now)
                        else None
                    )
                    got = after[oid]
                    # the queue row says the status the outcome row has, swept or not
                    assert got["q_final"] == rules.final_status(got["status"]), (r, got)
                    assert (got["q_token"] is not None) == (got["status"] == "generating"), (r, got)
                    if target is None:
                        assert got["status"] == r["status"], (oid, r, got)
                        assert got["error_message"] is None
                        continue
                    expected_swept.add(oid)
                    assert got["status"] == target, (r, run_state, max_attempts, now, got)
                    assert got["error_message"] == rules.lease_expired_error(target, r["attempts"])
                    assert got["lease_expires_at"] is None
                    if target == "pending":
                        assert got["completed_at"] is None and got["duration_seconds"] is None
                    else:
                        assert got["completed_at"] == now
                        assert got["duration_seconds"] == rules.duration(r["started_at"], now)
                assert {r["id"] for r in swept} == expected_swept
                for r in swept:
                    assert r["target"] == after[r["id"]]["status"]
            finally:
                conn.rollback()

        check()


# ---- the PostgreSQL statements that restate the lease and duration rules --------------------------
# COMPLETE_SQL, COMPLETE_MANY_SQL and the heartbeat decide in SQL (one statement on the hot path) whether
# a lease holds and how long an attempt ran; these hold them to rules.lease_holds, rules.duration and
# rules.lease_expires over generated rows, as the sweep test above does for rules.lease_expiry.

LEASED = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["pending", "generating", "complete", "failed", "cancelled"]),
        "token": st.sampled_from(["a", "b", None]),
        "started_at": st.none() | st.sampled_from([10.0, 99.75, 100.0, 150.0]),
    }
)
ASKED = st.sampled_from(["a", "b"])
PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _leased_items(postgres_database: str, n: int) -> tuple[str, list[str]]:
    """A run of `n` items on a fresh database: its id and the items' ids in order."""
    from matrix_mcp.store.params import NewItem, NewPackage
    from matrix_mcp.store.postgres import PostgresStore

    async def populate() -> str:
        store = await PostgresStore.open(postgres_database)
        try:
            plan = await store.plan(
                name="leases",
                goal=None,
                policy=RunPolicy(lease_seconds=45),
                packages=[NewPackage("p", None, [NewItem(f"i{k}") for k in range(n)])],
                now=1.0,
            )
            return plan.run.id
        finally:
            await store.close()

    run_id = anyio.run(populate)
    import psycopg

    with psycopg.connect(postgres_database) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM outcomes ORDER BY n").fetchall()]
    return run_id, ids


def _set_rows(conn: Any, ids: list[str], rows: list[dict[str, Any]]) -> None:
    for oid, r in zip(ids, rows, strict=True):
        conn.execute(
            "UPDATE outcomes SET status = %s, lease_token = %s, started_at = %s, lease_expires_at = %s,"
            " completed_at = NULL, duration_seconds = NULL WHERE id = %s",
            (r["status"], r["token"], r["started_at"], 500.0 if r["status"] == "generating" else None, oid),
        )
        leased = r["status"] == "generating"
        conn.execute(
            "UPDATE outcome_queue SET lease_token = %s, lease_expires_at = %s, final = %s"
            " WHERE n = (SELECT n FROM outcomes WHERE id = %s)",
            (r["token"] if leased else None, 500.0 if leased else None, rules.final_status(r["status"]), oid),
        )


@pytest.mark.postgres
def test_postgres_complete_sql_is_the_python_rule(postgres_database: str) -> None:
    import psycopg
    from psycopg.rows import dict_row

    from matrix_mcp.store.postgres.sql import COMPLETE_SQL

    _, ids = _leased_items(postgres_database, 1)
    with psycopg.connect(postgres_database, row_factory=dict_row) as conn:

        @PROPERTY
        @given(row=LEASED, token=ASKED, now=st.sampled_from([99.5, 100.0, 100.25]))
        def check(row: dict[str, Any], token: str, now: float) -> None:
            report = Report(metrics={"lines_generated": 2})
            try:
                _set_rows(conn, ids, [row])
                got = conn.execute(
                    COMPLETE_SQL,
                    {
                        "now": now,
                        "metrics": rules.json_text(report.metrics),
                        "metadata": "{}",
                        "path": None,
                        "sha": None,
                        "bytes": None,
                        "mime": None,
                        "id": ids[0],
                        "token": token,
                        "names": ["lines_generated"],
                        "values": [2.0],
                        "body": None,
                    },
                ).fetchone()
                assert got is not None
                holds = rules.lease_holds(row["status"], row["token"], token)
                assert got["done"] == holds, (row, token)
                after = conn.execute(
                    "SELECT status, duration_seconds FROM outcomes WHERE id = %s", (ids[0],)
                ).fetchone()
                assert after is not None
                if holds:
                    # the Python rule on the row as it was decides the same, and says how long it ran
                    assert rules.check_complete(got, ids[0], token, report) is True
                    assert got["new_duration"] == rules.duration(row["started_at"], now)
                    assert after["status"] == "complete"
                    assert after["duration_seconds"] == rules.duration(row["started_at"], now)
                else:
                    assert after["status"] == row["status"] and got["new_duration"] is None
            finally:
                conn.rollback()

        check()


@pytest.mark.postgres
def test_postgres_complete_many_sql_is_the_python_rule(postgres_database: str) -> None:
    import psycopg
    from psycopg.rows import dict_row

    from matrix_mcp.store.postgres.sql import COMPLETE_MANY_SQL
    from matrix_mcp.store.postgres.usage import reported

    _, ids = _leased_items(postgres_database, 5)
    with psycopg.connect(postgres_database, row_factory=dict_row) as conn:

        @PROPERTY
        @given(
            rows=st.lists(LEASED, min_size=5, max_size=5),
            tokens=st.lists(ASKED, min_size=5, max_size=5),
            now=st.sampled_from([99.5, 100.0, 100.25]),
        )
        def check(rows: list[dict[str, Any]], tokens: list[str], now: float) -> None:
            k = len(ids)
            try:
                _set_rows(conn, ids, rows)
                got = conn.execute(
                    COMPLETE_MANY_SQL,
                    {
                        "ids": ids,
                        "tokens": tokens,
                        "nows": [now] * k,
                        "metrics": ["{}"] * k,
                        "metadata": ["{}"] * k,
                        "paths": [None] * k,
                        "shas": [None] * k,
                        "bytes": [None] * k,
                        "mimes": [None] * k,
                        "bodies": [None] * k,
                        "mreq": [],
                        "mnames": [],
                        "mvalues": [],
                        **reported([None] * k),
                    },
                ).fetchall()
                done = {r["id"]: r for r in got}
                for oid, r, token in zip(ids, rows, tokens, strict=True):
                    assert (oid in done) == rules.lease_holds(r["status"], r["token"], token), (r, token)
                    if oid in done:
                        assert done[oid]["duration_seconds"] == rules.duration(r["started_at"], now)
                        t = rules.complete(done[oid], lease_token=token, report=Report(), now=now)
                        assert t.values["duration_seconds"] == done[oid]["duration_seconds"]
            finally:
                conn.rollback()

        check()


@pytest.mark.postgres
def test_postgres_heartbeat_sql_is_the_python_rule(postgres_database: str) -> None:
    import psycopg
    from psycopg.rows import dict_row

    from matrix_mcp.store.postgres.sql import HEARTBEAT_SQL

    run_id, ids = _leased_items(postgres_database, 4)
    with psycopg.connect(postgres_database, row_factory=dict_row) as conn:

        @PROPERTY
        @given(
            rows=st.lists(LEASED, min_size=4, max_size=4),
            tokens=st.lists(ASKED, min_size=4, max_size=4),
            run_state=st.sampled_from(["active", "paused", "cancelled"]),
            now=st.sampled_from([99.5, 100.0]),
        )
        def check(rows: list[dict[str, Any]], tokens: list[str], run_state: str, now: float) -> None:
            try:
                conn.execute("UPDATE runs SET state = %s WHERE id = %s", (run_state, run_id))
                _set_rows(conn, ids, rows)
                got = conn.execute(HEARTBEAT_SQL, {"now": now, "ids": ids, "tokens": tokens}).fetchall()
                held = {r["id"]: r for r in got}
                for oid, r, token in zip(ids, rows, tokens, strict=True):
                    assert (oid in held) == rules.lease_holds(r["status"], r["token"], token), (r, token)
                    if oid in held:
                        assert held[oid]["lease_expires_at"] == rules.lease_expires(now, 45)
                        assert rules.stops_work(held[oid]["state"]) == (run_state == "cancelled")
                        queue = conn.execute(
                            "SELECT lease_expires_at FROM outcome_queue"
                            " WHERE n = (SELECT n FROM outcomes WHERE id = %s)",
                            (oid,),
                        ).fetchone()
                        assert queue is not None and queue["lease_expires_at"] == rules.lease_expires(now, 45)
            finally:
                conn.rollback()

        check()


# ---- review gates and notes in the PostgreSQL statements ------------------------------------------
# COMPLETE_SQL and COMPLETE_MANY_SQL decide in SQL whether a completion waits in_review (the package's review
# setting, else the run's); HEARTBEAT_NOTE_SQL keeps each held lease's note on its attempt. These hold them to
# rules.review_required, rules.complete and rules.heartbeat.

REVIEWS = st.fixed_dictionaries(
    {"run": st.sampled_from(["none", "required"]), "package": st.sampled_from([None, "none", "required"])}
)


def _set_review(conn: Any, run_id: str, review: dict[str, Any]) -> None:
    conn.execute("UPDATE runs SET review = %s WHERE id = %s", (review["run"], run_id))
    conn.execute("UPDATE packages SET review = %s WHERE run_id = %s", (review["package"], run_id))


def _reported(conn: Any, oid: str) -> dict[str, Any]:
    """The item's status, its queue record's final status, its attempt's status, its metric rows."""
    row = conn.execute(
        "SELECT o.status, q.final, (SELECT a.status FROM outcome_attempts a WHERE a.outcome_id = o.id"
        " AND a.lease_token = o.lease_token) AS attempt,"
        " (SELECT count(*) FROM outcome_metrics m WHERE m.outcome_id = o.id) AS metric_rows"
        " FROM outcomes o JOIN outcome_queue q ON q.n = o.n WHERE o.id = %s",
        (oid,),
    ).fetchone()
    assert row is not None
    return dict(row)


def _attempts_for(conn: Any, ids: list[str], tokens: tuple[str, ...] = ("a", "b")) -> None:
    for oid in ids:
        for tok in tokens:
            conn.execute(
                "INSERT INTO outcome_attempts (outcome_id, attempt, lease_token, status, note)"
                " VALUES (%s, 1, %s, 'generating', 'before')",
                (oid, tok),
            )


@pytest.mark.postgres
def test_postgres_complete_sql_under_review_is_the_python_rule(postgres_database: str) -> None:
    import psycopg
    from psycopg.rows import dict_row

    from matrix_mcp.store.postgres.sql import COMPLETE_MANY_SQL, COMPLETE_SQL
    from matrix_mcp.store.postgres.usage import reported

    run_id, ids = _leased_items(postgres_database, 2)
    with psycopg.connect(postgres_database, row_factory=dict_row) as conn:

        @PROPERTY
        @given(review=REVIEWS, many=st.booleans())
        def check(review: dict[str, Any], many: bool) -> None:
            report = Report(metrics={"lines_generated": 2})
            try:
                _set_review(conn, run_id, review)
                _set_rows(conn, ids, [{"status": "generating", "token": "a", "started_at": 10.0}] * 2)
                _attempts_for(conn, ids, ("a",))
                if many:
                    got = conn.execute(
                        COMPLETE_MANY_SQL,
                        {
                            "ids": ids,
                            "tokens": ["a", "a"],
                            "nows": [100.0, 100.0],
                            "metrics": ['{"lines_generated": 2}'] * 2,
                            "metadata": ["{}"] * 2,
                            "paths": [None] * 2,
                            "shas": [None] * 2,
                            "bytes": [None] * 2,
                            "mimes": [None] * 2,
                            "bodies": [None] * 2,
                            "mreq": [1, 2],
                            "mnames": ["lines_generated"] * 2,
                            "mvalues": [2.0, 2.0],
                            **reported([None] * 2),
                        },
                    ).fetchall()
                    rows = {r["id"]: r for r in got}
                else:
                    one = conn.execute(
                        COMPLETE_SQL,
                        {
                            "now": 100.0,
                            "metrics": '{"lines_generated": 2}',
                            "metadata": "{}",
                            "path": None,
                            "sha": None,
                            "bytes": None,
                            "mime": None,
                            "id": ids[0],
                            "token": "a",
                            "names": ["lines_generated"],
                            "values": [2.0],
                            "body": None,
                        },
                    ).fetchone()
                    assert one is not None and one["done"]
                    rows = {ids[0]: one}
                for oid, row in rows.items():
                    required = rules.review_required(row["run_review"], row["package_review"])
                    assert required == ((review["package"] or review["run"]) == "required")
                    t = rules.complete(row, lease_token="a", report=report, now=100.0, review=required)
                    after = _reported(conn, oid)
                    assert after["status"] == t.new == ("in_review" if required else "complete")
                    assert after["final"] == rules.final_status(t.new)
                    assert t.attempt is not None and after["attempt"] == t.attempt.status
                    # the metric rows are written only when the item completes (approval writes them later)
                    assert (after["metric_rows"] > 0) == (t.metric_rows is not None)
            finally:
                conn.rollback()

        check()


@pytest.mark.postgres
def test_postgres_heartbeat_note_sql_is_the_python_rule(postgres_database: str) -> None:
    import psycopg
    from psycopg.rows import dict_row

    from matrix_mcp.store.postgres.sql import HEARTBEAT_NOTE_SQL

    _, ids = _leased_items(postgres_database, 4)
    with psycopg.connect(postgres_database, row_factory=dict_row) as conn:

        @PROPERTY
        @given(
            rows=st.lists(LEASED, min_size=4, max_size=4),
            tokens=st.lists(ASKED, min_size=4, max_size=4),
            notes=st.lists(st.none() | st.sampled_from(["3 of 5", "x" * 2000]), min_size=4, max_size=4),
        )
        def check(rows: list[dict[str, Any]], tokens: list[str], notes: list[str | None]) -> None:
            try:
                _set_rows(conn, ids, rows)
                _attempts_for(conn, ids)
                got = conn.execute(
                    HEARTBEAT_NOTE_SQL, {"now": 100.0, "ids": ids, "tokens": tokens, "notes": notes}
                ).fetchall()
                held = {r["id"] for r in got}
                for oid, r, token, note in zip(ids, rows, tokens, notes, strict=True):
                    ext = rules.heartbeat(
                        {"status": r["status"], "lease_token": r["token"]},
                        token=token,
                        run_state="active",
                        lease_seconds=45,
                        now=100.0,
                        note=note,
                    )
                    holds = ext is not None
                    assert (oid in held) == holds, (r, token)
                    kept = {
                        a["lease_token"]: a["note"]
                        for a in conn.execute(
                            "SELECT lease_token, note FROM outcome_attempts WHERE outcome_id = %s", (oid,)
                        )
                    }
                    # a held lease's attempt keeps the note given (rules.heartbeat: the last one replaces it);
                    # every other attempt keeps what it had
                    for tok, kept_note in kept.items():
                        changed = ext is not None and ext.note is not None and tok == token
                        assert kept_note == (note if changed else "before"), (r, token, tok, note)
            finally:
                conn.rollback()

        check()


# ---- the set-based PostgreSQL statements: claim, retry, cancel ------------------------------------
# CLAIM_SQL leases many items in one statement, RETRY_REQUEUE_FAILED and CANCEL_PENDING_SQL move many; each
# writes the column values rules.claim, rules.retry and rules.cancel decide for one item.

QUEUED = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["pending", "generating", "complete", "failed", "cancelled"]),
        "attempts": st.integers(0, 3),
        "available_at": st.sampled_from([50.0, 100.0, 150.0]),
    }
)
OUTCOME_COLUMNS = (
    "status, attempts, worker, lease_token, lease_expires_at, started_at, completed_at, duration_seconds,"
    " available_at, updated_at"
)


def _set_queued(conn: Any, ids: list[str], rows: list[dict[str, Any]]) -> None:
    for oid, r in zip(ids, rows, strict=True):
        leased = r["status"] == "generating"
        conn.execute(
            "UPDATE outcomes SET status = %s, attempts = %s, available_at = %s, worker = NULL,"
            " lease_token = %s, lease_expires_at = %s, started_at = 1.0, completed_at = %s,"
            " duration_seconds = %s, updated_at = 1.0 WHERE id = %s",
            (
                r["status"],
                r["attempts"],
                r["available_at"],
                "old-" + oid if leased else None,
                500.0 if leased else None,
                None if rules.queued(r["status"]) else 2.0,
                None if rules.queued(r["status"]) else 1.0,
                oid,
            ),
        )
        conn.execute(
            "UPDATE outcome_queue SET lease_token = %s, lease_expires_at = %s, final = %s, available_at = %s"
            " WHERE n = (SELECT n FROM outcomes WHERE id = %s)",
            (
                "old-" + oid if leased else None,
                500.0 if leased else None,
                rules.final_status(r["status"]),
                r["available_at"],
                oid,
            ),
        )


def _outcomes(conn: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        f"SELECT o.id, o.item, {OUTCOME_COLUMNS.replace(', ', ', o.')}, o.n, q.lease_token AS q_token,"
        " q.lease_expires_at AS q_expires, q.final AS q_final, q.available_at AS q_available"
        " FROM outcomes o JOIN outcome_queue q ON q.n = o.n WHERE o.id = ANY(%s)",
        (ids,),
    ).fetchall()
    return {r["id"]: r for r in rows}


def _queue_agrees(row: dict[str, Any]) -> None:
    """The narrow queue row says what the outcome row says."""
    assert row["q_final"] == rules.final_status(row["status"]), row
    assert row["q_token"] == (row["lease_token"] if row["status"] == "generating" else None), row
    if row["status"] == "generating":
        assert row["q_expires"] == row["lease_expires_at"], row
    if row["status"] == "pending":
        assert row["q_available"] == row["available_at"], row


@pytest.mark.postgres
def test_postgres_claim_sql_is_the_python_rule(postgres_database: str) -> None:
    import psycopg
    from psycopg.rows import dict_row

    from matrix_mcp.store.postgres.batch import claim_params
    from matrix_mcp.store.postgres.sql import CLAIM_SQL

    run_id, ids = _leased_items(postgres_database, 5)
    with psycopg.connect(postgres_database, row_factory=dict_row) as conn:

        @PROPERTY
        @given(
            rows=st.lists(QUEUED, min_size=5, max_size=5),
            run_state=st.sampled_from(["active", "paused", "cancelled"]),
            now=st.sampled_from([99.5, 100.0, 120.0]),
        )
        def check(rows: list[dict[str, Any]], run_state: str, now: float) -> None:
            try:
                conn.execute("UPDATE runs SET state = %s WHERE id = %s", (run_state, run_id))
                _set_queued(conn, ids, rows)
                before = _outcomes(conn, ids)
                slots = [(f"w{k}", now, f"tok{k}", None) for k in range(len(ids))]
                got = [
                    r
                    for r in conn.execute(CLAIM_SQL, claim_params(run_id, None, [], now, slots)).fetchall()
                    if r["id"] is not None
                ]
                after = _outcomes(conn, ids)
                claimable = {
                    oid
                    for oid, r in zip(ids, rows, strict=True)
                    if r["status"] == rules.CLAIMED_MOVE[0] and r["available_at"] <= now
                }
                want = claimable if rules.claim_blocked(run_state) is None else set()
                assert {r["id"] for r in got} == want, (rows, run_state, now)
                for r in got:
                    k = int(r["rank"]) - 1
                    t = rules.claim(
                        before[r["id"]],
                        run_id=run_id,
                        package_id=int(r["pk_id"]),
                        package="p",
                        worker=f"w{k}",
                        token=f"tok{k}",
                        lease_seconds=45,
                        now=now,
                    )
                    assert {c: after[r["id"]][c] for c in t.values} == dict(t.values)
                    assert r["attempts"] == t.values["attempts"] and r["lease_token"] == t.queue_token
                for oid in ids:
                    _queue_agrees(after[oid])
                    if oid not in want:
                        assert after[oid] == before[oid]
            finally:
                conn.rollback()

        check()


@pytest.mark.postgres
def test_postgres_retry_and_cancel_sql_are_the_python_rules(postgres_database: str) -> None:
    import psycopg
    from psycopg.rows import dict_row

    from matrix_mcp.store.postgres.sql import CANCEL_PENDING_SQL, RETRY_REQUEUE_FAILED

    run_id, ids = _leased_items(postgres_database, 5)
    with psycopg.connect(postgres_database, row_factory=dict_row) as conn:

        @PROPERTY
        @given(
            rows=st.lists(QUEUED, min_size=5, max_size=5),
            which=st.sampled_from(["retry", "cancel"]),
            chosen=st.none() | st.sets(st.integers(0, 4)),
            now=st.sampled_from([99.5, 100.0]),
        )
        def check(rows: list[dict[str, Any]], which: str, chosen: set[int] | None, now: float) -> None:
            try:
                _set_queued(conn, ids, rows)
                before = _outcomes(conn, ids)
                picked = None if chosen is None else [ids[k] for k in sorted(chosen)]
                if which == "retry":
                    move = rules.retry(now)
                    params = {"now": now, "run": run_id, "pid": None, "ids": picked}
                    moved = {r["id"] for r in conn.execute(RETRY_REQUEUE_FAILED, params).fetchall()}
                else:
                    move, picked = rules.cancel(now), None
                    counts = conn.execute(CANCEL_PENDING_SQL, {"now": now, "run": run_id}).fetchall()
                    moved = {
                        oid for oid in ids if _outcomes(conn, [oid])[oid]["status"] != before[oid]["status"]
                    }
                    assert sum(int(c["n"]) for c in counts) == len(moved)
                after = _outcomes(conn, ids)
                want = {
                    oid
                    for oid in ids
                    if before[oid]["status"] == move.old and (picked is None or oid in picked)
                }
                assert moved == want, (which, rows, chosen)
                for oid in ids:
                    _queue_agrees(after[oid])
                    if oid in want:
                        assert {c: after[oid][c] for c in move.values} == dict(move.values)
                        unchanged = [
                            c for c in before[oid] if c not in move.values and not c.startswith("q_")
                        ]
                        assert {c: after[oid][c] for c in unchanged} == {c: before[oid][c] for c in unchanged}
                    else:
                        assert after[oid] == before[oid]
            finally:
                conn.rollback()

        check()


# ---- the claim policy's set-based PostgreSQL statements -------------------------------------------
# The claim statements (CLAIM_SQL, and CLAIM_GATED_SQL for a run with lock keys or caps) pick items in
# rules.claim_order among those rules.claim_eligible allows (locks held per rules.lock_held); MOVE_WAITING_SQL
# readies dependents (rules.readied, rules.ready); CASCADE_SQL and REBLOCK_SQL write rules.cascade and
# rules.reblock. Each is held to the Python rule over generated rows.

POLICY_ITEMS = 4  # per package, three packages


def _policy_run(postgres_database: str) -> tuple[str, list[int], list[list[str]]]:
    """A run of three packages of POLICY_ITEMS items on a fresh database: its id, package ids, item ids."""
    from matrix_mcp.store.params import NewItem, NewPackage
    from matrix_mcp.store.postgres import PostgresStore

    async def populate() -> str:
        store = await PostgresStore.open(postgres_database)
        try:
            packages = [
                NewPackage(f"p{k}", None, [NewItem(f"i{j}") for j in range(POLICY_ITEMS)]) for k in range(3)
            ]
            plan = await store.plan(
                name="policy", goal=None, policy=RunPolicy(lease_seconds=45), packages=packages, now=1.0
            )
            return plan.run.id
        finally:
            await store.close()

    run_id = anyio.run(populate)
    import psycopg

    with psycopg.connect(postgres_database) as conn:
        pids = [int(r[0]) for r in conn.execute("SELECT id FROM packages ORDER BY position").fetchall()]
        ids = [
            [
                str(r[0])
                for r in conn.execute("SELECT id FROM outcomes WHERE package_id = %s ORDER BY n", (p,))
            ]
            for p in pids
        ]
    return run_id, pids, ids


POLICY_ITEM = st.fixed_dictionaries(
    {
        "ready": st.booleans(),
        "available_at": st.sampled_from([50.0, 100.0, 150.0]),
        "priority": st.sampled_from([0, 0, 1, 2]),
        "locks": st.sampled_from([None, ["a"], ["b"], ["a", "b"]]),
    }
)
POLICY_PACKAGE = st.fixed_dictionaries(
    {
        "priority": st.sampled_from([0, 0, 1]),
        "last": st.sampled_from([0, 1, 2, 3]),
        "cap": st.sampled_from([None, None, 1, 2]),
        "leased": st.integers(0, 2),
    }
)


def _set_policy_rows(
    conn: Any,
    pids: list[int],
    ids: list[list[str]],
    packages: list[dict[str, Any]],
    items: list[list[dict[str, Any]]],
    *,
    gated: bool,
    run_cap: int | None,
    held: dict[str, float],
) -> None:
    """Rows as generated: per package its priority, cap, last claim and `leased` items generating (its
    last items, holding the keys of `held` with those expiries); per item pending (ready) or complete."""
    conn.execute("UPDATE runs SET gated = %s, max_concurrent = %s", (gated, run_cap))
    conn.execute("DELETE FROM resource_locks")
    holders = iter(sorted(held.items()))
    for pid, oids, p, rows in zip(pids, ids, packages, items, strict=True):
        prios = [r["priority"] for r in rows]
        conn.execute(
            "UPDATE packages SET priority = %s, max_concurrent = %s, prio_lo = %s, prio_hi = %s WHERE id = %s",
            (p["priority"], p["cap"], min(prios), max(prios), pid),
        )
        for k, (oid, r) in enumerate(zip(oids, rows, strict=True)):
            leased = k >= len(oids) - p["leased"]
            status = "generating" if leased else "pending" if r["ready"] else "complete"
            expires = 1000.0
            holder = next(holders, None) if leased else None
            if holder is not None:
                expires = holder[1]
            conn.execute(
                "UPDATE outcomes SET status = %s, priority = %s, available_at = %s, lease_token = %s,"
                " lease_expires_at = %s, locks = %s WHERE id = %s",
                (
                    status,
                    r["priority"],
                    r["available_at"],
                    "held-" + oid if leased else None,
                    expires if leased else None,
                    R_dumps(r["locks"]) if r["locks"] else None,
                    oid,
                ),
            )
            conn.execute(
                "UPDATE outcome_queue SET lease_token = %s, lease_expires_at = %s, final = %s, available_at = %s,"
                " priority = %s, locks = %s, claim_seq = %s WHERE n = (SELECT n FROM outcomes WHERE id = %s)",
                (
                    "held-" + oid if leased else None,
                    expires if leased else None,
                    rules.final_status(status),
                    r["available_at"],
                    r["priority"],
                    r["locks"],
                    p["last"] if k == 0 and p["last"] else None,
                    oid,
                ),
            )
            if holder is not None:
                conn.execute(
                    "INSERT INTO resource_locks (key, n, lease_token, run_id, expires_at)"
                    " SELECT %s, n, lease_token, run_id, lease_expires_at FROM outcomes WHERE id = %s",
                    (holder[0], oid),
                )


def R_dumps(value: Any) -> str:
    import json

    return json.dumps(value)


class _PolicyModel:
    """The claim as the rules say it, one item at a time (a claim of N is N claims of one)."""

    def __init__(
        self,
        pids: list[int],
        ids: list[list[str]],
        packages: list[dict[str, Any]],
        items: list[list[dict[str, Any]]],
        run_cap: int | None,
        held: dict[str, float],
    ) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.packages = packages
        self.last = [p["last"] for p in packages]
        self.generating = [p["leased"] for p in packages]
        self.run_cap = run_cap
        self.holders = dict(held)  # key -> lease expiry of its holder (a generating item under its token)
        for k, (oids, rows) in enumerate(zip(ids, items, strict=True)):
            for j, (oid, r) in enumerate(zip(oids, rows, strict=True)):
                leased = j >= len(oids) - packages[k]["leased"]
                self.items[oid] = {**r, "package": k, "position": j, "pending": r["ready"] and not leased}
        self.clock = 10**9

    def next(self, now: float) -> str | None:
        def free(keys: list[str] | None) -> bool:
            return all(
                not rules.lock_held(
                    status="generating",
                    lease_token="t",
                    lock_token="t",
                    lease_expires_at=self.holders[key],
                    now=now,
                )
                for key in keys or []
                if key in self.holders
            )

        best: tuple[int, int, int, int, float, int] | None = None
        found = None
        for oid, it in self.items.items():
            k = it["package"]
            ok = rules.claim_eligible(
                status="pending" if it["pending"] else "complete",
                available_at=it["available_at"],
                now=now,
                locks_free=free(it["locks"]),
                package_generating=self.generating[k],
                package_cap=self.packages[k]["cap"],
                run_generating=sum(self.generating),
                run_cap=self.run_cap,
            )
            if not ok:
                continue
            key = rules.claim_order(
                package_priority=self.packages[k]["priority"],
                item_priority=it["priority"],
                last_claim=self.last[k],
                available_at=it["available_at"],
                position=it["position"],
                package_position=k,
            )
            if best is None or key < best:
                best, found = key, oid
        if found is not None:
            it = self.items[found]
            it["pending"] = False
            self.clock += 1
            self.last[it["package"]] = self.clock
            self.generating[it["package"]] += 1
            for key in it["locks"] or []:
                self.holders[key] = rules.lease_expires(now, 45)
        return found


def _claim_rows(
    conn: Any, run_id: str, now: float, limit: int, gated: bool, tag: str
) -> list[dict[str, Any]]:
    from matrix_mcp.store.postgres.batch import claim_params
    from matrix_mcp.store.postgres.sql import CAP_LOCK_SQL, CLAIM_GATED_SQL, CLAIM_SQL
    from matrix_mcp.store.postgres.work import dry_levels

    if gated:
        conn.execute(CAP_LOCK_SQL, {"run": run_id, "package": None})
    got: list[dict[str, Any]] = []
    exhausted: list[tuple[int, int]] = []
    while len(got) < limit:  # the rounds of the store's claim (work.claim_op)
        slots = [(f"w{k}", now, f"{tag}-{len(exhausted)}-{k}", None) for k in range(limit - len(got))]
        params = claim_params(run_id, None, exhausted, now, slots)
        rows = [
            r for r in conn.execute(CLAIM_GATED_SQL if gated else CLAIM_SQL, params).fetchall() if r["pk_id"]
        ]
        got += [r for r in rows if r["id"] is not None]
        dry, offered = dry_levels(rows)
        if rows and rows[0].get("lost") and len(exhausted) < 100:
            exhausted += dry
            continue
        if not dry or len(dry) == len(offered):
            break
        exhausted += dry
    return got


@pytest.mark.postgres
def test_postgres_claim_sql_takes_items_in_the_rules_claim_order(postgres_database: str) -> None:
    import psycopg
    from psycopg.rows import dict_row

    run_id, pids, ids = _policy_run(postgres_database)
    with psycopg.connect(postgres_database, row_factory=dict_row) as conn:

        @PROPERTY
        @given(
            packages=st.lists(POLICY_PACKAGE, min_size=3, max_size=3),
            items=st.lists(
                st.lists(POLICY_ITEM, min_size=POLICY_ITEMS, max_size=POLICY_ITEMS), min_size=3, max_size=3
            ),
            gated=st.booleans(),
            run_cap=st.sampled_from([None, 2, 4]),
            held=st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from([90.0, 100.0, 200.0])),
            limit=st.sampled_from([1, 1, 3, 12]),
            now=st.sampled_from([100.0, 150.0]),
        )
        def check(
            packages: list[dict[str, Any]],
            items: list[list[dict[str, Any]]],
            gated: bool,
            run_cap: int | None,
            held: dict[str, float],
            limit: int,
            now: float,
        ) -> None:
            if not gated:  # an ungated run has no keys and no caps
                packages = [{**p, "cap": None} for p in packages]
                items = [[{**r, "locks": None} for r in rows] for rows in items]
                run_cap, held = None, {}
            held = dict(list(held.items())[: sum(p["leased"] for p in packages)])  # a holder per leased item
            try:
                _set_policy_rows(conn, pids, ids, packages, items, gated=gated, run_cap=run_cap, held=held)
                model = _PolicyModel(pids, ids, packages, items, run_cap, held)
                if limit == 1:  # one at a time: exactly the rules' choice
                    for step in range(3 * POLICY_ITEMS):
                        got = _claim_rows(conn, run_id, now, 1, gated, f"s{step}")
                        want = model.next(now)
                        assert [r["id"] for r in got] == ([want] if want else []), (step, packages, items)
                        if want is None:
                            break
                else:  # many at once: eligible items, and the same priorities the rules would take first
                    got = _claim_rows(conn, run_id, now, limit, gated, "m")
                    want = [w for w in (model.next(now) for _ in range(limit)) if w is not None]
                    assert len(got) <= len(want)
                    prio = {
                        oid: (-packages[k]["priority"], -items[k][j]["priority"])
                        for k, oids in enumerate(ids)
                        for j, oid in enumerate(oids)
                    }
                    assert sorted(prio[r["id"]] for r in got) == sorted(prio[w] for w in want)[: len(got)], (
                        packages,
                        items,
                        gated,
                        run_cap,
                        held,
                        limit,
                    )
                    # (fewer than the rules would take is a short round: the store's claim asks again)
                    keys = [k for r in got for k in (model.items[r["id"]]["locks"] or [])]
                    assert len(keys) == len(set(keys))  # no two leases of one claim share a key
                    for k, oids in enumerate(ids):  # and no cap is passed
                        mine = sum(1 for r in got if r["id"] in oids)
                        cap = packages[k]["cap"]
                        assert cap is None or mine + packages[k]["leased"] <= max(cap, packages[k]["leased"])
                    if run_cap is not None:
                        leased = sum(p["leased"] for p in packages)
                        assert len(got) + leased <= max(run_cap, leased)
            finally:
                conn.rollback()

        check()


@contextmanager
def _policy_conn(postgres_database: str) -> Iterator[tuple[Any, list[int], list[str], dict[str, int]]]:
    """`_policy_run`'s database open (dict rows): the connection, package ids, every item id (package by
    package), and each item's n."""
    import psycopg
    from psycopg.rows import dict_row

    _, pids, ids = _policy_run(postgres_database)
    flat = [oid for oids in ids for oid in oids]
    with psycopg.connect(postgres_database, row_factory=dict_row) as conn:
        ns = {r["id"]: int(r["n"]) for r in conn.execute("SELECT id, n FROM outcomes").fetchall()}
        yield conn, pids, flat, ns


@pytest.mark.postgres
def test_postgres_move_waiting_sql_is_the_python_rule(postgres_database: str) -> None:
    from matrix_mcp.store.postgres.sql import MOVE_WAITING_SQL

    with _policy_conn(postgres_database) as (conn, pids, flat, ns):

        @PROPERTY
        @given(
            rows=st.lists(
                st.fixed_dictionaries(
                    {
                        "status": st.sampled_from(["blocked", "blocked", "pending", "cancelled", "complete"]),
                        "waiting": st.integers(0, 3),
                        "item_edge": st.booleans(),
                        "package_edge": st.booleans(),
                    }
                ),
                min_size=len(flat) - 1,
                max_size=len(flat) - 1,
            ),
            package_done=st.booleans(),
            delta=st.sampled_from([-1, 1]),
            now=st.sampled_from([100.0, 150.0]),
        )
        def check(rows: list[dict[str, Any]], package_done: bool, delta: int, now: float) -> None:
            source, dependents = flat[0], flat[1:]
            try:
                conn.execute("DELETE FROM outcome_deps")
                conn.execute("DELETE FROM package_deps")
                for oid, r in zip(dependents, rows, strict=True):
                    conn.execute(
                        "UPDATE outcomes SET status = %s, waiting = %s, available_at = 1.0, updated_at = 1.0"
                        " WHERE id = %s",
                        (r["status"], r["waiting"], oid),
                    )
                    conn.execute(
                        "UPDATE outcome_queue SET final = %s, available_at = 1.0, lease_token = NULL WHERE n = %s",
                        (rules.final_status(r["status"]), ns[oid]),
                    )
                    if r["item_edge"]:
                        conn.execute("INSERT INTO outcome_deps VALUES (%s, %s)", (ns[source], ns[oid]))
                    if r["package_edge"]:
                        conn.execute("INSERT INTO package_deps VALUES (%s, %s)", (pids[0], ns[oid]))
                got = conn.execute(
                    MOVE_WAITING_SQL,
                    {
                        "items": [ns[source]],
                        "packages": [pids[0]] if package_done else [],
                        "delta": delta,
                        "now": now,
                    },
                ).fetchall()
                after = _outcomes(conn, dependents)
                waiting = {
                    r["id"]: int(r["waiting"])
                    for r in conn.execute(
                        "SELECT id, waiting FROM outcomes WHERE id = ANY(%s)", (dependents,)
                    )
                }
                ready = rules.ready(now)
                expected_ready = set()
                for oid, r in zip(dependents, rows, strict=True):
                    moves = int(r["item_edge"]) + int(r["package_edge"] and package_done)
                    new_waiting = r["waiting"] + delta * moves
                    assert waiting[oid] == (new_waiting if moves else r["waiting"]), (r, delta)
                    _queue_agrees(after[oid])
                    if moves and rules.readied(r["status"], new_waiting):
                        expected_ready.add(oid)
                        assert {c: after[oid][c] for c in ready.values} == dict(ready.values)
                    else:
                        assert after[oid]["status"] == r["status"]
                assert {r["id"] for r in got} == expected_ready
            finally:
                conn.rollback()

        check()


@pytest.mark.postgres
def test_postgres_cascade_and_reblock_sql_are_the_python_rules(postgres_database: str) -> None:
    from matrix_mcp.store.postgres.sql import CASCADE_SQL, REBLOCK_SQL

    with _policy_conn(postgres_database) as (conn, _, flat, ns):

        @PROPERTY
        @given(
            rows=st.lists(
                st.fixed_dictionaries(
                    {
                        "status": st.sampled_from(["blocked", "pending", "cancelled", "complete"]),
                        "edge": st.booleans(),
                        "cancelled_by_source": st.booleans(),
                    }
                ),
                min_size=len(flat) - 1,
                max_size=len(flat) - 1,
            ),
            which=st.sampled_from(["cascade", "reblock"]),
            now=st.sampled_from([100.0, 150.0]),
        )
        def check(rows: list[dict[str, Any]], which: str, now: float) -> None:
            source, dependents = flat[0], flat[1:]
            try:
                conn.execute("DELETE FROM outcome_deps")
                for oid, r in zip(dependents, rows, strict=True):
                    by = ns[source] if r["cancelled_by_source"] else None
                    conn.execute(
                        "UPDATE outcomes SET status = %s, cancelled_by = %s, error_message = 'x', completed_at = 2.0,"
                        " updated_at = 1.0, waiting = 1 WHERE id = %s",
                        (r["status"], by, oid),
                    )
                    conn.execute(
                        "UPDATE outcome_queue SET final = %s, lease_token = NULL WHERE n = %s",
                        (rules.final_status(r["status"]), ns[oid]),
                    )
                    if r["edge"]:
                        conn.execute("INSERT INTO outcome_deps VALUES (%s, %s)", (ns[source], ns[oid]))
                before = _outcomes(conn, dependents)
                if which == "cascade":
                    move = rules.cascade(failed=("p0", "i0"), failed_n=ns[source], now=now)
                    got = conn.execute(CASCADE_SQL, {"items": [ns[source]], "packages": [], **move.values})
                    want = {
                        o
                        for o, r in zip(dependents, rows, strict=True)
                        if r["edge"] and r["status"] == move.old
                    }
                else:
                    move = rules.reblock(now)
                    got = conn.execute(REBLOCK_SQL, {"ns": [ns[source]], **move.values})
                    want = {
                        o
                        for o, r in zip(dependents, rows, strict=True)
                        if r["cancelled_by_source"] and r["status"] == move.old
                    }
                assert {r["id"] for r in got.fetchall()} == want
                after = _outcomes(conn, dependents)
                extra = {
                    r["id"]: r
                    for r in conn.execute(
                        "SELECT id, error_message, cancelled_by FROM outcomes WHERE id = ANY(%s)",
                        (dependents,),
                    ).fetchall()
                }
                for oid in dependents:
                    _queue_agrees(after[oid])
                    if oid in want:
                        row = {**after[oid], **extra[oid]}
                        assert {c: row[c] for c in move.values} == dict(move.values)
                    else:
                        assert after[oid] == before[oid]
            finally:
                conn.rollback()

        check()
