"""The board's rules (matrix_mcp.rules) on their own, and the PostgreSQL lease sweep — the one rule written as
SQL for speed — held against the Python rule it must agree with, row for row, over generated rows."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matrix_mcp import rules
from matrix_mcp.audit import acting_as
from matrix_mcp.errors import Conflict, NotFound, StaleLease
from matrix_mcp.models import RunPolicy
from matrix_mcp.store.base import Report

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
        "status": old,
        "metrics": '{"quality_score":1}',
        "metadata": None,
        "started_at": started,
        "completed_at": 1.0,
        "duration_seconds": 2.0,
        "lease_seconds": 30,
    }
    report = Report(metrics=report_metrics)
    t = rules.override(row, new=new, error_message="e", report=report, now=now)
    assert t.old == old and t.old_metrics == {"quality_score": 1}
    assert t.metrics == (report_metrics or {"quality_score": 1}) and t.metadata == {}
    assert t.error_message == (None if new == "complete" else "e")
    if new == "generating":
        assert (t.started_at, t.completed_at, t.lease_expires_at) == (now, None, now + 30)
    elif new == "pending":
        assert t.completed_at is None and t.duration_seconds is None and t.lease_expires_at is None
    elif new == old:
        assert (t.completed_at, t.duration_seconds) == (1.0, 2.0)
    else:
        assert t.completed_at == now and t.duration_seconds == rules.duration(started, now)
        assert t.duration_seconds is None or t.duration_seconds >= 0


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

    from matrix_mcp.store.base import NewItem, NewPackage
    from matrix_mcp.store.postgres import PostgresStore
    from matrix_mcp.store.postgres.sql import _SWEEP_SQL
    from matrix_mcp.store.postgres.transitions import SWEEP_LIMIT

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
                swept = conn.execute(_SWEEP_SQL, {"run": run_id, "now": now, "limit": SWEEP_LIMIT}).fetchall()
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
