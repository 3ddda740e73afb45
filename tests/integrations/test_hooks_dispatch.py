"""The dispatcher end to end against local receivers on 127.0.0.1, on SQLite and PostgreSQL:
deliveries derived from the events log, signed (verified with standardwebhooks), retried with the
same webhook-id, 410 disabling, the circuit breaker, one sender per subscription, and a dead
endpoint that does not hold up a healthy one."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from standardwebhooks.webhooks import Webhook

from matrix_mcp.engine import Engine
from matrix_mcp.integrations.crypto import new_key
from matrix_mcp.integrations.dispatcher import Dispatcher
from matrix_mcp.integrations.service import Hooks
from matrix_mcp.integrations.settings import HookSettings
from matrix_mcp.models import ItemSpec, PackageSpec
from tests.support.hooks_helpers import Receiver

pytestmark = pytest.mark.anyio

KEY = new_key()


def fast(**kw: object) -> HookSettings:
    base: dict[str, object] = {
        "retry_schedule": (0.05, 0.05, 0.05),
        "jitter": 0.0,
        "timeout": 2.0,
        "lease_ttl": 2.0,
        "poll": 0.2,
        "busy_pause": 0.01,
        "circuit_recovery": 60.0,
        "allowed_networks": (ipaddress.ip_network("127.0.0.0/8"),),
        "encryption_keys": (KEY,),
    }
    base.update(kw)
    return HookSettings(**base)  # type: ignore[arg-type]


@asynccontextmanager
async def dispatching(engine: Engine, settings: HookSettings, n: int = 1) -> AsyncIterator[list[Dispatcher]]:
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    ds = [
        Dispatcher(
            engine.store, settings, hooks.keyring(), owner=f"d{i}", artifacts_dir=engine.artifacts.root
        )
        for i in range(n)
    ]
    async with anyio.create_task_group() as tg:
        for d in ds:
            tg.start_soon(d.run)
        try:
            yield ds
        finally:
            tg.cancel_scope.cancel()
    for d in ds:
        await d.aclose()


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await anyio.sleep(0.02)


async def work(engine: Engine, run: str, items: list[str], fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    await engine.plan_run(run, packages=[PackageSpec(name="p", items=items)])
    claimed = await engine.claim_items(run, worker="w", limit=len(items))
    for c in claimed.items:
        if c.item in fail:
            await engine.fail_item(c.outcome_id, lease_token=c.lease_token, error="boom", retryable=False)
        else:
            await engine.complete_item(
                c.outcome_id, lease_token=c.lease_token, content="x", metrics={"lines": 1}
            )


async def test_events_are_delivered_signed_and_recorded(engine: Engine) -> None:
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with Receiver() as rx:
        created = await hooks.add(rx.url, events=["*"], description="all")
        secret = created.secret
        assert secret is not None and secret.startswith("whsec_")
        assert (
            created.webhook.target == rx.url.removesuffix("hook") + "…"
            and created.webhook.circuit == "closed"
        )
        async with dispatching(engine, settings):
            await work(engine, "r1", ["a", "b"], fail={"b"})
            await until(lambda: "run.completed" in rx.types())
            await anyio.sleep(0.3)
        types = rx.types()
        assert sorted(types) == sorted(
            [
                "run.planned",
                "outcome.started",
                "outcome.started",
                "outcome.completed",
                "outcome.failed",
                "package.completed",
                "run.completed",
            ]
        ), types
        verifier = Webhook(secret)
        for headers, raw, body, _ in rx.requests:
            assert verifier.verify(raw, headers) == body
            assert headers["webhook-id"].startswith("msg_") and headers["content-type"] == "application/json"
        failed = next(b for b in rx.bodies() if b["type"] == "outcome.failed")
        assert (
            failed["data"]["item"] == "b"
            and failed["data"]["error"] == "boom"
            and failed["data"]["status"] == "failed"
        )
        assert failed["data"]["attempt"] == 1 and failed["data"]["metrics"] == {}
        done = next(b for b in rx.bodies() if b["type"] == "outcome.completed")["data"]
        assert (done["item"], done["status"], done["attempt"], done["metrics"]) == (
            "a",
            "complete",
            1,
            {"lines": 1},
        )
        planned = next(b for b in rx.bodies() if b["type"] == "run.planned")["data"]
        assert (planned["run"], planned["packages"], planned["items"], planned["extended"]) == (
            "r1",
            ["p"],
            2,
            False,
        )
        run_done = next(b for b in rx.bodies() if b["type"] == "run.completed")["data"]
        assert (run_done["total"], run_done["complete"], run_done["failed"]) == (2, 1, 1)
        page = await hooks.deliveries(webhook=created.webhook.id)
        assert len(page.deliveries) == 7 and {d.status for d in page.deliveries} == {"succeeded"}
        assert {d.id for d in page.deliveries} == {h["webhook-id"] for h, _, _, _ in rx.requests}
        records = [
            e
            for e in await engine.store.events_after(since=0, run_id=None, limit=1000)
            if e.kind == "integration"
        ]
        assert sum(e.data["count"] for e in records) == 7 and {
            e.data["integration_type"] for e in records
        } == {"webhook"}
        # nothing secret anywhere the tools can show
        shown = (await hooks.list_all()).model_dump_json() + page.model_dump_json()
        assert secret not in shown and KEY not in shown


async def test_filters_by_event_type_and_run(engine: Engine) -> None:
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    await engine.plan_run("r2", packages=[PackageSpec(name="p", items=["x"])])
    with Receiver() as rx:
        await hooks.add(rx.url, events=["outcome.completed"], run="r2")
        async with dispatching(engine, settings):
            await work(engine, "r1", ["a"])
            c = (await engine.claim_items("r2", worker="w")).items[0]
            await engine.complete_item(c.outcome_id, lease_token=c.lease_token, content="y")
            await until(lambda: len(rx.requests) >= 1)
            await anyio.sleep(0.5)
        assert rx.types() == ["outcome.completed"] and rx.bodies()[0]["data"]["run"] == "r2"


async def test_a_big_plan_is_one_run_planned_not_an_outcome_created_per_item(engine: Engine) -> None:
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    packages = [PackageSpec(name=f"p{i}", items=[f"i{j}" for j in range(200)]) for i in range(200)]
    with Receiver() as every, Receiver() as created:
        await hooks.add(every.url, events=["*"])
        await hooks.add(created.url, events=["outcome.created"])
        async with dispatching(engine, settings):
            await engine.plan_run("big", packages=packages)
            await engine.plan_run("big", packages=[PackageSpec(name="p0", items=["extra"])])
            await engine.record_outcome(run="big", package="p0", item="manual")
            await until(lambda: len(every.requests) >= 3 and len(created.requests) >= 1)
            await anyio.sleep(0.5)
        bodies = sorted(every.bodies(), key=lambda b: b["data"]["seq"])  # no global order: by seq
        assert [b["type"] for b in bodies] == ["run.planned", "run.planned", "outcome.created"], bodies
        first, second = bodies[0]["data"], bodies[1]["data"]
        assert (first["items"], len(first["packages"]), first["extended"]) == (40_000, 200, False)
        assert (second["items"], second["packages"], second["extended"]) == (1, [], True)
        assert bodies[2]["data"]["item"] == "manual"
        # an explicit outcome.created subscription hears of outcomes recorded one at a time only
        assert [b["data"]["item"] for b in created.bodies()] == ["manual"]


async def test_ready_and_a_failure_cascade_are_delivered(engine: Engine) -> None:
    """A blocked item readied is `outcome.ready`; a failure that cancels its dependents is one
    `outcome.dependents_cancelled`, after which the run, nothing blocked, is completed."""
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    items = ["a", ItemSpec(name="b", after=["a"]), ItemSpec(name="c", after=["b"])]
    with Receiver() as rx:
        await hooks.add(rx.url, events=["outcome.ready", "outcome.dependents_cancelled", "run.completed"])
        async with dispatching(engine, settings):
            await engine.plan_run("staged", packages=[PackageSpec(name="p", items=items)])
            a = (await engine.claim_items("staged", worker="w")).items[0]
            await engine.complete_item(a.outcome_id, lease_token=a.lease_token, content="x")
            b = (await engine.claim_items("staged", worker="w")).items[0]
            await engine.fail_item(b.outcome_id, lease_token=b.lease_token, error="boom", retryable=False)
            await until(lambda: "run.completed" in rx.types())
            await anyio.sleep(0.3)
        by_type = {body["type"]: body["data"] for body in rx.bodies()}
        assert sorted(rx.types()) == ["outcome.dependents_cancelled", "outcome.ready", "run.completed"]
        ready, cascade, done = (
            by_type[t] for t in ("outcome.ready", "outcome.dependents_cancelled", "run.completed")
        )
        assert (ready["package"], ready["item"], ready["status"]) == ("p", "b", "pending")
        assert (cascade["failed"], cascade["count"], len(cascade["outcome_ids"])) == ("p/b", 1, 1)
        assert (done["complete"], done["failed"], done["cancelled"]) == (1, 1, 1)


async def test_metrics_come_from_one_read_per_round(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    cls = type(engine.store.hooks)
    real = cls.outcome_facts
    calls: list[int] = []

    async def counted(self: object, ids: list[str]) -> object:
        calls.append(len(ids))
        return await real(self, ids)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "outcome_facts", counted)
    items = [f"i{j}" for j in range(50)]
    with Receiver() as rx:
        await hooks.add(rx.url, events=["outcome.completed"])
        await engine.plan_run("r1", packages=[PackageSpec(name="p", items=items)])
        for c in (await engine.claim_items("r1", worker="w", limit=50)).items:
            await engine.complete_item(
                c.outcome_id, lease_token=c.lease_token, content="x", metrics={"lines": int(c.item[1:])}
            )
        async with dispatching(engine, settings):  # the backlog: one round of events
            await until(lambda: len(rx.requests) >= 50)
            await anyio.sleep(0.3)
        assert calls == [50]  # one batched read for the 50 completions, not one per event
        got = {b["data"]["item"]: b["data"]["metrics"] for b in rx.bodies()}
        assert got == {f"i{j}": {"lines": j} for j in range(50)}


async def test_retries_keep_the_webhook_id_and_stop_after_the_schedule(engine: Engine) -> None:
    settings = fast(circuit_failures=100)
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with (
        Receiver(status=lambda n, body: 500 if n <= 2 else 200) as flaky,
        Receiver(status=lambda n, b: 500) as dead,
    ):
        ok = await hooks.add(flaky.url, events=["outcome.completed"])
        bad = await hooks.add(dead.url, events=["outcome.completed"])
        async with dispatching(engine, settings):
            await work(engine, "r1", ["a"])
            await until(lambda: len(flaky.requests) == 3 and len(dead.requests) == 4)
            await anyio.sleep(0.4)
        assert len({h["webhook-id"] for h, _, _, _ in flaky.requests}) == 1
        assert len(dead.requests) == 4  # one attempt + three retries, then it stops
        (good,) = (await hooks.deliveries(webhook=ok.webhook.id)).deliveries
        assert (good.status, good.attempts, good.last_status_code) == ("succeeded", 3, 200)
        (lost,) = (await hooks.deliveries(webhook=bad.webhook.id)).deliveries
        assert (lost.status, lost.attempts, lost.last_error) == ("failed", 4, "HTTP 500")
        # redeliver brings it back
        assert (await hooks.redeliver(delivery_id=lost.id)).redelivered == 1
        async with dispatching(engine, settings):
            await until(lambda: len(dead.requests) >= 5)


async def test_gone_disables_and_the_circuit_opens(engine: Engine) -> None:
    settings = fast(circuit_failures=2, retry_schedule=(0.01,) * 10, concurrency=1)
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with Receiver(status=lambda n, b: 410) as gone, Receiver(status=lambda n, b: 503) as down:
        g = await hooks.add(gone.url, events=["*"])
        d = await hooks.add(down.url, events=["outcome.completed"])
        async with dispatching(engine, settings):
            await work(engine, "r1", ["a", "b", "c"])
            await until(lambda: len(gone.requests) >= 1 and len(down.requests) >= 2)
            await anyio.sleep(0.6)
        assert len(gone.requests) == 1  # 410: disabled after the first answer
        view = await hooks.get(g.webhook.id)
        assert not view.active and "410" in (view.disabled_reason or "")
        assert len(down.requests) == 2  # two failures opened the circuit: no more calls until recovery
        state = await hooks.get(d.webhook.id)
        assert state.circuit == "open" and state.consecutive_failures == 2 and state.active
        pending = (await hooks.deliveries(webhook=d.webhook.id, status="pending")).deliveries
        assert len(pending) == 3


async def test_two_dispatchers_send_each_event_once(engine: Engine) -> None:
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with Receiver() as rx:
        await hooks.add(rx.url, events=["outcome.completed"])
        async with dispatching(engine, settings, n=3):
            await work(engine, "r1", [f"i{i}" for i in range(60)])
            await until(lambda: len(rx.requests) >= 60)
            await anyio.sleep(0.5)
        ids = [h["webhook-id"] for h, _, _, _ in rx.requests]
        assert len(ids) == 60 and len(set(ids)) == 60


async def test_a_dead_endpoint_does_not_delay_a_healthy_one(engine: Engine) -> None:
    settings = fast(timeout=3.0)
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with Receiver(delay=5.0) as hanging, Receiver() as healthy:
        await hooks.add(hanging.url, events=["outcome.completed"])
        await hooks.add(healthy.url, events=["outcome.completed"])
        async with dispatching(engine, settings):
            started = time.time()
            await work(engine, "r1", [f"i{i}" for i in range(5)])
            await until(lambda: len(healthy.requests) == 5, timeout=2.5)  # well inside the dead one's timeout
            # the dead endpoint is in play (its first request may reach it just after the healthy fifth)
            await until(lambda: len(hanging.requests) >= 1, timeout=2.5)
            assert len(hanging.requests) >= 1
            assert max(t for *_, t in healthy.requests) - started < 2.5


async def test_ping_update_rotate_and_remove(engine: Engine) -> None:
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with Receiver() as rx:
        created = await hooks.add(rx.url, events=["*"], headers={"X-Team": "blue"})
        ping = await hooks.test(created.webhook.id)
        assert ping.ok and ping.status_code == 200
        headers, raw, body, _ = rx.requests[0]
        assert body["type"] == "ping" and headers["x-team"] == "blue"
        old = created.secret
        assert old is not None
        Webhook(old).verify(raw, headers)
        rotated = await hooks.update(created.webhook.id, rotate_secret=True)
        new = rotated.secret
        assert new is not None and new != old
        await hooks.test(created.webhook.id)
        headers, raw, _, _ = rx.requests[1]
        Webhook(new).verify(raw, headers)
        Webhook(old).verify(raw, headers)  # the previous secret still signs during the grace period
        assert len(headers["webhook-signature"].split()) == 2
        off = await hooks.update(created.webhook.id, active=False, events=["run.completed"])
        assert not off.webhook.active and off.webhook.events == ["run.completed"] and off.secret is None
        assert (await hooks.rotate_key())[0] == 1
        await hooks.remove(created.webhook.id)
        assert (await hooks.list_all()).webhooks == []


async def test_slack_incoming_webhook_block_kit(engine: Engine) -> None:
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    with Receiver() as rx:
        created = await hooks.add(rx.url, events=["*"], kind="slack")
        assert created.secret is None and created.webhook.target.endswith("/…")  # the path is the secret
        async with dispatching(engine, settings):
            await work(engine, "r1", ["a", "b"], fail={"b"})
            await until(lambda: len(rx.requests) >= 3)
            await anyio.sleep(0.3)
        bodies = rx.bodies()
        # only what people act on: a final failure, the package and the run (no started/completed items)
        assert len(bodies) == 3 and all({"text", "blocks"} == set(b) for b in bodies)
        texts = sorted(b["text"] for b in bodies)
        assert texts[0].startswith("Item p/b in run r1 failed for good")
        assert texts[1].startswith("Package p of run r1 completed: 1/2 done, 1 failed")
        run_msg = next(b for b in bodies if b["text"].startswith("Run r1 completed"))
        assert run_msg["blocks"][0] == {
            "type": "header",
            "text": {"type": "plain_text", "text": "Run r1 completed"},
        }
        table = run_msg["blocks"][2]["text"]["text"]
        assert table.startswith("```package") and "p " in table and "50%" in table
        failed = next(b for b in bodies if "failed for good" in b["text"])
        assert (
            failed["blocks"][1]["fields"][0]["text"] == "*Attempts*\n1"
            and "boom" in failed["blocks"][2]["text"]["text"]
        )


async def test_slack_bot_token_threads_per_run_and_honours_429(engine: Engine) -> None:
    settings = fast(retry_schedule=(5.0,))
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    statuses = {1: (429, {"Retry-After": "0"})}
    with Receiver(status=lambda n, b: statuses.get(n, 200)) as rx:
        api = rx.server.url_for("/api")
        await hooks.add(
            api, events=["outcome.failed"], kind="slack", token="xoxb-test", options={"channel": "C123"}
        )
        async with dispatching(engine, settings):
            await work(engine, "r1", ["a", "b", "c"], fail={"a", "b", "c"})
            await until(lambda: len(rx.requests) >= 4, timeout=4)
        headers = [h for h, _, _, _ in rx.requests]
        assert all(h["authorization"] == "Bearer xoxb-test" for h in headers)
        bodies = rx.bodies()
        assert all(b["channel"] == "C123" for b in bodies)
        # the 429 was retried after Retry-After (0 s), not after the 5 s schedule; then one thread per run
        threaded = [b for b in bodies if "thread_ts" in b]
        assert len(threaded) == 2 and len({b["thread_ts"] for b in threaded}) == 1
