"""Contract suite for the events-out store (store/hooks.py), on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json

import pytest

from matrix_mcp.engine import Engine
from matrix_mcp.errors import NotFound, StoreError
from matrix_mcp.models import PackageSpec
from matrix_mcp.store.hooks import (
    AttemptResult,
    CallLog,
    CursorMove,
    DeliveryQuery,
    DeliveryStatus,
    EndpointState,
    NewDelivery,
    Redelivery,
    RoundRecord,
    SubscriptionChange,
    SubscriptionRow,
)

pytestmark = pytest.mark.anyio


def sub(sid: str = "wh_1", **kw: object) -> SubscriptionRow:
    return SubscriptionRow(
        id=sid, kind="webhook", target="https://example.test/hook", credentials="enc", **kw
    )  # type: ignore[arg-type]


def new(sid: str, seq: int, kind: str = "outcome.completed") -> NewDelivery:
    return NewDelivery(
        id=f"msg_{sid}_{seq}",
        seq=seq,
        event_type=kind,
        run="r",
        body=json.dumps({"type": kind}, separators=(",", ":")),
    )


def move(owner: str, cursor_from: int, cursor_to: int, deliveries: list[NewDelivery]) -> CursorMove:
    return CursorMove(owner=owner, cursor_from=cursor_from, cursor_to=cursor_to, deliveries=deliveries)


def result(
    delivery_id: str,
    status: DeliveryStatus,
    *,
    attempts: int,
    due: float,
    code: int,
    error: str | None = None,
    now: float,
) -> AttemptResult:
    return AttemptResult(
        delivery_id=delivery_id,
        status=status,
        attempts=attempts,
        next_attempt_at=due,
        status_code=code,
        error=error,
        now=now,
    )


def delivered(run: str | None, status: str, details: dict[str, object]) -> CallLog:
    """A webhook delivery's call log at 2.0."""
    return CallLog(
        run=run, integration_type="webhook", action="deliver", status=status, details=details, created_at=2.0
    )


async def test_subscription_lifecycle_and_cursor_starts_at_latest_event(engine: Engine) -> None:
    hooks = engine.store.hooks
    assert not await hooks.any_active()
    await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a", "b"])])
    latest = await engine.store.latest_seq()
    assert latest > 0
    row = await hooks.add_subscription(sub(events=["outcome.failed"], run="r", config={"x": 1}), now=100.0)
    assert row.cursor == latest
    assert row.events == ["outcome.failed"] and row.run == "r" and row.config == {"x": 1}
    assert row.active and row.created_at == 100.0 and row.credentials == "enc"
    assert await hooks.any_active()
    assert [s.id for s in await hooks.list_subscriptions()] == ["wh_1"]
    changed = await hooks.update_subscription("wh_1", change=SubscriptionChange(active=False), now=101.0)
    assert not changed.active and changed.disabled_reason == "disabled by request"
    assert not await hooks.any_active()
    assert await hooks.list_subscriptions(active_only=True) == []
    changed = await hooks.update_subscription(
        "wh_1", change=SubscriptionChange(active=True, events=["*"], target="https://b.test/"), now=102.0
    )
    assert changed.active and changed.disabled_reason is None and changed.events == ["*"]
    assert changed.target == "https://b.test/" and changed.updated_at == 102.0
    with pytest.raises(NotFound) as err:
        await hooks.get_subscription("nope")
    assert err.value.field == "webhook"
    await hooks.remove_subscription("wh_1")
    with pytest.raises(NotFound):
        await hooks.remove_subscription("wh_1")
    assert await hooks.list_subscriptions() == []


async def test_one_lease_holder_at_a_time(engine: Engine) -> None:
    hooks = engine.store.hooks
    await hooks.add_subscription(sub(), now=0.0)
    assert (await hooks.lease("wh_1", owner="a", now=10.0, ttl=30.0)) is not None
    assert await hooks.lease("wh_1", owner="b", now=20.0, ttl=30.0) is None  # held by a
    assert (await hooks.lease("wh_1", owner="a", now=20.0, ttl=30.0)) is not None  # renewed
    assert await hooks.lease("wh_1", owner="b", now=49.0, ttl=30.0) is None
    taken = await hooks.lease("wh_1", owner="b", now=50.0, ttl=30.0)  # a's lease expired at 50
    assert taken is not None and taken.lease_owner == "b"
    await hooks.release("wh_1", owner="a")  # not a's any more: nothing changes
    assert await hooks.lease("wh_1", owner="a", now=51.0, ttl=30.0) is None
    await hooks.release("wh_1", owner="b")
    assert await hooks.lease("wh_1", owner="a", now=51.0, ttl=30.0) is not None
    await hooks.update_subscription("wh_1", change=SubscriptionChange(active=False), now=52.0)
    # an inactive subscription is not dispatched
    assert await hooks.lease("wh_1", owner="a", now=53.0, ttl=30.0) is None


async def test_materialize_is_fenced_and_idempotent(engine: Engine) -> None:
    hooks = engine.store.hooks
    row = await hooks.add_subscription(sub(), now=0.0)
    c0 = row.cursor
    await hooks.lease("wh_1", owner="a", now=1.0, ttl=30.0)
    assert not await hooks.materialize(
        "wh_1", move=move("b", c0, c0 + 2, [new("wh_1", c0 + 1)]), now=1.0
    )  # not the holder
    assert not await hooks.materialize(
        "wh_1", move=move("a", c0 + 5, c0 + 6, [new("wh_1", c0 + 6)]), now=1.0
    )  # stale cursor
    assert await hooks.materialize(
        "wh_1", move=move("a", c0, c0 + 2, [new("wh_1", c0 + 1), new("wh_1", c0 + 2)]), now=1.0
    )
    assert (await hooks.get_subscription("wh_1")).cursor == c0 + 2
    # a crash after sending but before the cursor moved re-materializes the same events: no new rows
    assert await hooks.materialize(
        "wh_1", move=move("a", c0 + 2, c0 + 3, [new("wh_1", c0 + 2), new("wh_1", c0 + 3)]), now=2.0
    )
    page = await hooks.list_deliveries(DeliveryQuery(subscription_id="wh_1", limit=10))
    assert [d.seq for d in page.deliveries] == [c0 + 1, c0 + 2, c0 + 3]
    d = page.deliveries[0]
    assert (
        d.status == "pending"
        and d.attempts == 0
        and d.next_attempt_at == 1.0
        and d.event_type == "outcome.completed"
    )
    assert d.body == '{"type":"outcome.completed"}' and d.run == "r" and d.subscription_id == "wh_1"


async def test_record_results_due_and_circuit_state(engine: Engine) -> None:
    hooks = engine.store.hooks
    row = await hooks.add_subscription(sub(), now=0.0)
    c0 = row.cursor
    await hooks.lease("wh_1", owner="a", now=1.0, ttl=30.0)
    await hooks.materialize(
        "wh_1", move=move("a", c0, c0 + 3, [new("wh_1", c0 + i) for i in (1, 2, 3)]), now=1.0
    )
    due = await hooks.due_deliveries("wh_1", now=1.0, limit=2)
    assert [d.seq for d in due] == [c0 + 1, c0 + 2]
    ok = result(due[0].id, "succeeded", attempts=1, due=1.0, code=200, now=2.0)
    retry = result(due[1].id, "pending", attempts=1, due=10.0, code=500, error="HTTP 500", now=2.0)
    state = EndpointState(failures=1, failing_since=2.0, circuit_open_until=None, last_success_at=2.0)
    await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a"])])
    logs = [
        delivered("r", "success", {"delivery_id": due[0].id}),
        delivered("r", "failure", {"delivery_id": due[1].id, "status_code": 500}),
        delivered(None, "failure", {}),
    ]
    before = await engine.store.latest_seq()
    assert not await hooks.record(
        "wh_1", record=RoundRecord(owner="b", state=state, results=[ok, retry], logs=logs), now=2.0
    )  # not the holder
    assert await engine.store.latest_seq() == before
    assert await hooks.record(
        "wh_1", record=RoundRecord(owner="a", state=state, results=[ok, retry], logs=logs), now=2.0
    )
    # the calls' integration_logs rows, and one event per (type, action, status), identical on both backends
    events = await engine.store.events_after(since=before, run_id=None, limit=10)
    assert [(e.kind, e.data, e.run) for e in events] == [
        (
            "integration",
            {"integration_type": "webhook", "action": "deliver", "status": "failure", "count": 2},
            None,
        ),
        (
            "integration",
            {"integration_type": "webhook", "action": "deliver", "status": "success", "count": 1},
            None,
        ),
    ]
    first = await hooks.get_delivery(due[0].id)
    assert first.status == "succeeded" and first.delivered_at == 2.0 and first.last_status_code == 200
    second = await hooks.get_delivery(due[1].id)
    assert second.status == "pending" and second.attempts == 1 and second.next_attempt_at == 10.0
    assert second.last_error == "HTTP 500" and second.delivered_at is None
    assert [d.seq for d in await hooks.due_deliveries("wh_1", now=5.0, limit=10)] == [c0 + 3]
    assert await hooks.next_due("wh_1") == 1.0
    s = await hooks.get_subscription("wh_1")
    assert (s.failures, s.failing_since, s.last_success_at, s.active) == (1, 2.0, 2.0, True)
    # auto-disable sets the reason; the dispatcher's view never re-activates a subscription
    dead = EndpointState(
        failures=6,
        failing_since=2.0,
        circuit_open_until=99.0,
        last_success_at=2.0,
        active=False,
        disabled_reason="gone",
    )
    assert await hooks.record("wh_1", record=RoundRecord(owner="a", state=dead, results=[]), now=3.0)
    s = await hooks.get_subscription("wh_1")
    assert (s.active, s.disabled_reason, s.circuit_open_until) == (False, "gone", 99.0)
    assert await hooks.record("wh_1", record=RoundRecord(owner="a", state=state, results=[]), now=4.0)
    assert not (await hooks.get_subscription("wh_1")).active
    with pytest.raises(NotFound) as err:
        await hooks.get_delivery("nope")
    assert err.value.field == "delivery_id"


async def test_list_redeliver_ping_links_and_credentials(engine: Engine) -> None:
    hooks = engine.store.hooks
    row = await hooks.add_subscription(sub(), now=0.0)
    await hooks.add_subscription(sub("wh_2"), now=0.0)
    c0 = row.cursor
    await hooks.lease("wh_1", owner="a", now=1.0, ttl=30.0)
    await hooks.materialize(
        "wh_1", move=move("a", c0, c0 + 3, [new("wh_1", c0 + i) for i in (1, 2, 3)]), now=5.0
    )
    ids = [d.id for d in (await hooks.list_deliveries(DeliveryQuery(limit=10))).deliveries]
    fails = [result(i, "failed", attempts=8, due=5.0, code=500, error="gave up", now=6.0) for i in ids]
    await hooks.record(
        "wh_1",
        record=RoundRecord(
            owner="a",
            state=EndpointState(failures=8, failing_since=5.0, circuit_open_until=None, last_success_at=None),
            results=fails,
        ),
        now=6.0,
    )
    first = await hooks.list_deliveries(DeliveryQuery(subscription_id="wh_1", status="failed", limit=2))
    assert len(first.deliveries) == 2 and first.next_cursor is not None
    rest = await hooks.list_deliveries(
        DeliveryQuery(subscription_id="wh_1", status="failed", limit=2, cursor=first.next_cursor)
    )
    assert len(rest.deliveries) == 1 and rest.next_cursor is None
    assert (
        await hooks.list_deliveries(DeliveryQuery(subscription_id="wh_1", status="pending", limit=10))
    ).deliveries == []
    with pytest.raises(StoreError) as err:
        await hooks.list_deliveries(DeliveryQuery(limit=10, cursor="!!"))
    assert err.value.field == "cursor"
    assert await hooks.redeliver(Redelivery(delivery_id=ids[0]), now=7.0) == 1
    again = await hooks.get_delivery(ids[0])
    assert (again.status, again.attempts, again.next_attempt_at) == ("pending", 0, 7.0)
    assert await hooks.redeliver(Redelivery(subscription_id="wh_1", since=0.0), now=8.0) == 3
    assert await hooks.redeliver(Redelivery(subscription_id="wh_1", since=6.0), now=8.0) == 0  # made at 5.0
    with pytest.raises(NotFound):
        await hooks.redeliver(Redelivery(delivery_id="nope"), now=8.0)
    ping = await hooks.add_delivery(
        "wh_2", delivery=NewDelivery(id="msg_ping", seq=0, event_type="ping", run=None, body="{}"), now=9.0
    )
    assert ping.status == "pending" and ping.event_type == "ping" and ping.next_attempt_at == 9.0
    with pytest.raises(NotFound):
        await hooks.add_delivery(
            "nope", delivery=NewDelivery(id="msg_x", seq=0, event_type="ping", run=None, body="{}"), now=9.0
        )
    assert await hooks.get_link("wh_1", ref="run:r") is None
    await hooks.set_link("wh_1", ref="run:r", value="1.23")
    await hooks.set_link("wh_1", ref="run:r", value="4.56")
    assert await hooks.get_link("wh_1", ref="run:r") == "4.56"
    assert await hooks.get_link("wh_2", ref="run:r") is None
    assert await hooks.all_credentials() == [("wh_1", "enc"), ("wh_2", "enc")]
    await hooks.set_credentials([("wh_1", "x1"), ("wh_2", "x2")], now=10.0)
    assert await hooks.all_credentials() == [("wh_1", "x1"), ("wh_2", "x2")]
    await hooks.remove_subscription("wh_1")  # its deliveries and links go with it
    assert [d.subscription_id for d in (await hooks.list_deliveries(DeliveryQuery(limit=10))).deliveries] == [
        "wh_2"
    ]
    assert await hooks.get_link("wh_1", ref="run:r") is None


async def test_outcome_facts_in_one_read_leave_unknown_ids_out(engine: Engine) -> None:
    items = [f"i{j}" for j in range(1200)]  # more than one SQLite chunk
    await engine.plan_run("r", packages=[PackageSpec(name="p", items=items)])
    claimed = (await engine.claim_items("r", worker="w", limit=2)).items
    await engine.complete_item(
        claimed[0].outcome_id, lease_token=claimed[0].lease_token, content="x", metrics={"lines": 7}
    )
    await engine.fail_item(
        claimed[1].outcome_id, lease_token=claimed[1].lease_token, error="boom", retryable=False
    )
    ids = [o.id async for o in engine.store.iter_outcomes((await engine.store.get_run("r")).id)]
    assert len(ids) == 1200
    facts = await engine.store.hooks.outcome_facts([*ids, "missing", ids[0]])
    assert len(facts) == 1200 and "missing" not in facts
    done, failed = facts[claimed[0].outcome_id], facts[claimed[1].outcome_id]
    assert (done.package, done.item, done.attempts, done.metrics, done.error) == (
        "p",
        claimed[0].item,
        1,
        {"lines": 7},
        None,
    )
    assert (failed.attempts, failed.metrics, failed.error) == (1, {}, "boom")
    assert await engine.store.hooks.outcome_facts([]) == {}
