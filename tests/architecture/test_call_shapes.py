"""Calls that cannot be swapped silently: engine and store methods take at most one identity argument
positionally, the rest by keyword, the parameter objects that carry fields through the layers are
frozen and built by keyword, and so is every record of six fields or more in integrations/ and http/."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from dataclasses import replace
from typing import Any, Protocol

import pytest

import matrix_mcp.http
import matrix_mcp.integrations
from matrix_mcp.engine import Engine
from matrix_mcp.integrations.service import Hooks
from matrix_mcp.models import PackageSpec
from matrix_mcp.rules import new_token
from matrix_mcp.store.delegate import DialectStore, on_db
from matrix_mcp.store.hooks import (
    AttemptResult,
    CallLog,
    CursorMove,
    DeliveryQuery,
    DeliveryRow,
    EndpointState,
    HookStore,
    NewDelivery,
    Redelivery,
    RoundRecord,
    SubscriptionRow,
)
from matrix_mcp.store.params import ClaimRequest, Failure, NewRecord, NextClaim, Report
from matrix_mcp.store.postgres import PostgresStore
from matrix_mcp.store.postgres.hooks import PostgresHooks
from matrix_mcp.store.protocol import Store
from matrix_mcp.store.sqlite import SQLiteStore
from matrix_mcp.store.sqlite.hooks import SQLiteHooks

pytestmark = pytest.mark.anyio

POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _positional(fn: Any) -> list[str]:
    """The parameters of a method (self excluded) that a caller may pass by position."""
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in POSITIONAL][1:]


def _public_methods(cls: type) -> dict[str, Any]:
    """Public methods `cls` defines or gains from the project's classes it is built of (the Engine facade
    from its use cases), not those of `Protocol` or `object`."""
    own = {c.__qualname__ for c in cls.__mro__ if c.__module__.startswith("matrix_mcp.")}
    return {
        name: fn
        for name, fn in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_") and fn.__qualname__.split(".")[0] in own
    }


def test_every_public_engine_method_takes_at_most_one_argument_by_position() -> None:
    methods = _public_methods(Engine)
    assert {"complete_item", "fail_item", "record_outcome", "claim_items", "plan_run"} <= set(methods)
    too_many = {name: _positional(fn) for name, fn in methods.items() if len(_positional(fn)) > 1}
    assert too_many == {}


def test_every_store_method_takes_at_most_one_argument_by_position() -> None:
    methods = _public_methods(Store)  # type: ignore[type-abstract]
    assert {"claim", "complete", "fail", "record_outcome", "update_status", "plan"} <= set(methods)
    too_many = {name: _positional(fn) for name, fn in methods.items() if len(_positional(fn)) > 1}
    assert too_many == {}


def test_every_hook_store_method_takes_at_most_one_argument_by_position() -> None:
    methods = _public_methods(HookStore)  # type: ignore[type-abstract]
    assert {"materialize", "record", "lease", "list_deliveries", "redeliver", "set_link"} <= set(methods)
    too_many = {name: _positional(fn) for name, fn in methods.items() if len(_positional(fn)) > 1}
    assert too_many == {}


def test_every_webhook_service_method_takes_at_most_one_argument_by_position() -> None:
    """The Hooks service (integrations/service.py) the webhook tools and `matrix-mcp hooks` call: a
    subscription's url or id by position, every option by keyword."""
    methods = _public_methods(Hooks)
    assert {"add", "update", "deliveries", "redeliver", "remove"} <= set(methods)
    too_many = {name: _positional(fn) for name, fn in methods.items() if len(_positional(fn)) > 1}
    assert too_many == {}


@pytest.mark.parametrize(
    ("protocol", "dialect"),
    [(Store, SQLiteStore), (Store, PostgresStore), (HookStore, SQLiteHooks), (HookStore, PostgresHooks)],
)
def test_both_dialects_take_the_protocols_arguments_the_protocols_way(protocol: type, dialect: type) -> None:
    """The protocol being keyword-only is not enough: a dialect that still accepts a field by position
    satisfies it for the type checker, and a positional caller of that dialect would go unnoticed. A store
    method bound by store/delegate.py is checked here rather than by mypy (the store class subclasses the
    protocol), so its defaults and annotations must read as the protocol's too."""
    methods = _public_methods(protocol)
    for name, proto in methods.items():
        impl = getattr(dialect, name)
        want = [(p.name, p.kind) for p in inspect.signature(proto).parameters.values()]
        got = [(p.name, p.kind) for p in inspect.signature(impl).parameters.values()]
        assert got == want, name
        if isinstance(inspect.getattr_static(dialect, name), on_db):
            assert _typed(impl) == _typed(proto), name


def _typed(fn: Any) -> tuple[list[tuple[str, Any, Any]], Any]:
    """A signature's defaults and annotations (as written: the modules use postponed annotations)."""
    sig = inspect.signature(fn)
    params = [(p.name, p.default, p.annotation) for p in sig.parameters.values()][1:]
    return params, sig.return_annotation


def test_a_store_method_with_no_function_or_two_fails_at_import() -> None:
    """store/delegate.py binds each protocol method to exactly one function of the noun modules."""
    import types

    from matrix_mcp.store.delegate import delegated

    class Tiny(Protocol):
        async def plan(self) -> None: ...

    one, two = types.ModuleType("one"), types.ModuleType("two")

    async def plan(db: object) -> None: ...

    plan.__module__ = "one"
    one.plan = plan  # type: ignore[attr-defined]
    bound = delegated(one, protocol=Tiny)(type("Bound", (Tiny,), {}))
    assert isinstance(inspect.getattr_static(bound, "plan"), on_db)
    with pytest.raises(TypeError, match=r"Missing\.plan: 0 functions"):
        delegated(two, protocol=Tiny)(type("Missing", (Tiny,), {}))
    twin = types.FunctionType(plan.__code__, {}, "plan")
    twin.__module__ = "two"
    two.plan = twin  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"Twice\.plan: 2 functions"):
        delegated(one, two, protocol=Tiny)(type("Twice", (Tiny,), {}))


def test_each_store_method_sits_in_the_same_named_module_in_both_dialects() -> None:
    """A Store method is the function of the same name in the module of its noun (store/delegate.py's
    on_db), and that module has the same name in both dialects: a reader finds `fail` in work.py twice."""
    home: dict[str, set[str]] = {}
    for dialect in (SQLiteStore, PostgresStore):
        for name in _public_methods(Store):  # type: ignore[type-abstract]
            impl = inspect.getattr_static(dialect, name)
            if name in vars(DialectStore) or name == "hooks":  # written once for both, or a property
                continue
            assert isinstance(impl, on_db), (dialect.__name__, name)
            assert impl.fn.__name__ == name
            home.setdefault(name, set()).add(impl.fn.__module__.rsplit(".", 1)[1])
    assert {name: modules for name, modules in home.items() if len(modules) != 1} == {}


FRESH = EndpointState(failures=0, failing_since=None, circuit_open_until=None, last_success_at=None)

PARAMETER_OBJECTS = [
    ClaimRequest,
    NextClaim,
    Failure,
    NewRecord,
    Report,
    CursorMove,
    RoundRecord,
    DeliveryQuery,
    Redelivery,
    NewDelivery,
    AttemptResult,
    EndpointState,
    CallLog,
    SubscriptionRow,
    DeliveryRow,
]


@pytest.mark.parametrize("cls", PARAMETER_OBJECTS)
def test_parameter_objects_are_frozen(cls: type) -> None:
    assert dataclasses.is_dataclass(cls)
    obj = _example(cls)
    field = dataclasses.fields(obj)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, field, None)


@pytest.mark.parametrize("cls", PARAMETER_OBJECTS)
def test_parameter_objects_are_built_by_keyword(cls: type) -> None:
    values = [getattr(_example(cls), f.name) for f in dataclasses.fields(cls)]
    with pytest.raises(TypeError):
        cls(*values)


def _example(cls: type) -> Any:
    examples: dict[type, Any] = {
        ClaimRequest: ClaimRequest(run_id="r", worker="w", limit=2, package="p", token_factory=new_token),
        NextClaim: NextClaim(limit=2, package="p", token_factory=new_token),
        Failure: Failure(error="boom", retryable=False, backoff=lambda n: 1.0),
        NewRecord: NewRecord(run_id="r", package="p", item="i"),
        Report: Report(outcome_path="a.txt"),
        CursorMove: CursorMove(owner="a", cursor_from=1, cursor_to=2),
        RoundRecord: RoundRecord(owner="a", state=FRESH),
        DeliveryQuery: DeliveryQuery(limit=10, subscription_id="wh_1"),
        Redelivery: Redelivery(subscription_id="wh_1", since=1.0),
        NewDelivery: NewDelivery(id="msg_1", seq=1, event_type="ping", run=None, body="{}"),
        AttemptResult: AttemptResult(
            delivery_id="msg_1",
            status="pending",
            attempts=1,
            next_attempt_at=9.0,
            status_code=500,
            error="x",
            now=1.0,
        ),
        EndpointState: FRESH,
        SubscriptionRow: SubscriptionRow(
            id="wh_1", kind="webhook", target="https://example.test/", credentials="x"
        ),
        DeliveryRow: DeliveryRow(
            n=1,
            id="msg_1",
            subscription_id="wh_1",
            seq=1,
            event_type="ping",
            run=None,
            body="{}",
            status="pending",
            attempts=0,
            next_attempt_at=1.0,
            last_status_code=None,
            last_error=None,
            created_at=1.0,
            updated_at=1.0,
            delivered_at=None,
        ),
        CallLog: CallLog(
            run=None,
            integration_type="webhook",
            action="deliver",
            status="failure",
            details={},
            created_at=1.0,
        ),
    }
    return examples[cls]


def _records(*packages: Any, min_fields: int) -> list[type]:
    """The dataclasses defined in the modules of `packages` with at least `min_fields` fields to give."""
    found: list[type] = []
    for package in packages:
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                own = cls.__module__ == module.__name__ and dataclasses.is_dataclass(cls)
                if own and len([f for f in dataclasses.fields(cls) if f.init]) >= min_fields:
                    found.append(cls)
    return found


RECORDS = _records(matrix_mcp.integrations, matrix_mcp.http, min_fields=6)


def test_the_records_of_integrations_and_http_are_found() -> None:
    names = {cls.__name__ for cls in RECORDS}
    assert {"Parts", "ServiceOptions", "HookSettings", "SinkContext", "PublicEvent"} <= names


@pytest.mark.parametrize("cls", RECORDS, ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_records_of_integrations_and_http_are_built_by_keyword(cls: type) -> None:
    """Six fields or more, several of one type (URLs, names, times): a positional call could swap two."""
    by_position = [f.name for f in dataclasses.fields(cls) if f.init and not f.kw_only]
    assert by_position == []


def test_next_claim_asks_for_the_same_limit_package_and_tokens() -> None:
    asked = NextClaim(limit=3, package="docs", token_factory=new_token).request("run-id", "w1")
    assert asked == ClaimRequest(
        run_id="run-id", worker="w1", limit=3, package="docs", token_factory=new_token
    )


async def test_a_positional_report_is_refused_before_anything_changes(engine: Engine) -> None:
    """complete_item(outcome_id, lease_token, content, outcome_path, ...) by position was how a swapped
    content/outcome_path would have been written; now it is a TypeError and the lease is untouched."""
    await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a", "b"])])
    (item,) = (await engine.claim_items("r", worker="w")).items
    with pytest.raises(TypeError):
        await engine.complete_item(item.outcome_id, item.lease_token, "content", "a.txt")  # type: ignore[misc]
    with pytest.raises(TypeError):
        await engine.fail_item(item.outcome_id, item.lease_token, "boom", False)  # type: ignore[misc]
    with pytest.raises(TypeError):
        await engine.claim_items("r", "w", 1)  # type: ignore[misc]
    assert (await engine.get_outcome(item.outcome_id)).status == "generating"
    assert (await engine.get_run("r")).counts.generating == 1

    done = await engine.complete_item(item.outcome_id, lease_token=item.lease_token, content="content")
    assert done.status == "complete"


async def test_a_positional_store_call_is_refused_before_anything_changes(engine: Engine) -> None:
    await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a"])])
    run_id = (await engine.run_info("r")).id
    store: Any = engine.store  # as an untyped caller sees it: only the signature stands in the way
    with pytest.raises(TypeError):
        await store.record_outcome(run_id, "p", "new", "complete", None, None, Report(), None, None, 1.0)
    with pytest.raises(TypeError):
        await store.claim(run_id, "w", 1, None, 1.0, new_token)
    assert [o.item for o in (await engine.list_outcomes(run="r")).outcomes] == ["a"]
    assert (await engine.get_run("r")).counts.generating == 0

    (item,) = (
        await store.claim(ClaimRequest(run_id=run_id, worker="w", token_factory=new_token), now=engine.now())
    ).claims
    with pytest.raises(TypeError):
        await store.fail(item.outcome_id, item.lease_token, "boom", True, 2.0, lambda n: 0.0)
    failure = Failure(error="boom", retryable=False, backoff=lambda n: 0.0)
    reported = await store.fail(
        item.outcome_id, lease_token=item.lease_token, failure=failure, now=engine.now()
    )
    assert (reported.outcome.status, reported.outcome.error_message) == ("failed", "boom")


async def test_a_positional_hook_store_call_is_refused_before_anything_changes(engine: Engine) -> None:
    """materialize(sid, owner, cursor_from, cursor_to, ...) and record(sid, owner, results, state, ...) by
    position were how a swapped cursor pair or owner would have been written: now a TypeError, and the
    cursor, the lease and the deliveries are as they were."""
    hooks: Any = engine.store.hooks  # as an untyped caller sees it
    row = await hooks.add_subscription(
        SubscriptionRow(id="wh_1", kind="webhook", target="https://example.test/", credentials="enc"), now=0.0
    )
    c0 = row.cursor
    with pytest.raises(TypeError):
        await hooks.lease("wh_1", "a", 1.0, 30.0)
    assert (await hooks.get_subscription("wh_1")).lease_owner is None
    assert await hooks.lease("wh_1", owner="a", now=1.0, ttl=30.0) is not None
    ping = NewDelivery(id="msg_1", seq=c0 + 1, event_type="outcome.completed", run=None, body="{}")
    with pytest.raises(TypeError):
        await hooks.materialize("wh_1", "a", c0, c0 + 1, [ping], 1.0)
    with pytest.raises(TypeError):
        await hooks.record("wh_1", "a", [], replace(FRESH, failures=5, circuit_open_until=99.0), 1.0)
    with pytest.raises(TypeError):
        await hooks.due_deliveries("wh_1", 1.0, 10)
    with pytest.raises(TypeError):
        await hooks.redeliver("wh_1", None, None, 1.0)
    with pytest.raises(TypeError):
        await hooks.set_link("wh_1", "run:r", "1")
    with pytest.raises(TypeError):
        await hooks.add_delivery("wh_1", ping, 1.0)
    after = await hooks.get_subscription("wh_1")
    assert (after.cursor, after.failures, after.circuit_open_until) == (c0, 0, None)
    assert (await hooks.list_deliveries(DeliveryQuery(limit=10))).deliveries == []
    assert await hooks.get_link("wh_1", ref="run:r") is None

    move = CursorMove(owner="a", cursor_from=c0, cursor_to=c0 + 1, deliveries=[ping])
    assert await hooks.materialize("wh_1", move=move, now=1.0)
    assert (await hooks.get_subscription("wh_1")).cursor == c0 + 1
    assert [d.id for d in await hooks.due_deliveries("wh_1", now=1.0, limit=10)] == ["msg_1"]
