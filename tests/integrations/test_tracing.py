"""Traces end to end, checked at an OTLP/HTTP receiver on 127.0.0.1 (tests/support/otlp_receiver.py decodes the
protobuf): the MCP client's span → the SDK's tool-call span (parented from `_meta.traceparent`) → the
engine's claim/complete spans; the dispatcher's delivery spans; `matrix-mcp work` handing each command
the TRACEPARENT of its item's span; the OTEL_* switch over stdio; and nothing of the OpenTelemetry SDK
loaded when the switch is off."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from opentelemetry import trace

from matrix_mcp import tracing
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.integrations.service import Hooks
from matrix_mcp.mcp.server import create_server
from matrix_mcp.models import PackageSpec
from tests.integrations.test_hooks_dispatch import dispatching, fast
from tests.support.hooks_helpers import Receiver
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan

pytestmark = pytest.mark.anyio

SERVER, CLIENT = 2, 3  # opentelemetry.proto SpanKind
CONTENT = "the generated module: SECRET-CONTENT-7f3a"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any OTEL_* or TRACEPARENT setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k not in ("TRACEPARENT",)}
    return {**env, **extra}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def exporting(receiver: OTLPReceiver) -> Iterator[tracing.Tracing]:
    """This process exports to the receiver, configured the way `matrix-mcp` is: by OTEL_* variables.
    (A process has one tracer provider: set once for the module, shut down after it.)"""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        mp.setenv("OTEL_SERVICE_NAME", "matrix-mcp-tests")
        mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        mp.setenv("OTEL_TRACES_SAMPLER_ARG", "1")  # the default sampler, keeping every trace begun here
        started = tracing.start()
    assert started is not None
    yield started
    started.shutdown()


def by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def only(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def assert_nothing_secret(spans: list[ReceivedSpan], *secrets: str) -> None:
    shown = json.dumps([[s.name, s.attributes, s.events] for s in spans])
    for secret in secrets:
        assert secret not in shown


async def call(
    client: Client, tool: str, args: dict[str, Any], meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    result = await client.call_tool(tool, args, meta=meta)  # type: ignore[arg-type]
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_tool_call_parents_the_claim_and_complete_spans(
    mode: str, settings: Settings, exporting: tracing.Tracing, receiver: OTLPReceiver
) -> None:
    tracer = trace.get_tracer("tests")
    # an agent's span, sent as the requests' `_meta.traceparent`. On the modern era the in-memory client
    # calls the server directly (no wire, no client span): the span is not made current, so only `_meta`
    # can parent the server's. On the legacy era the client's own span (child of the agent's) is injected.
    root = tracer.start_span("agent turn")
    meta = {
        "traceparent": f"00-{root.get_span_context().trace_id:032x}-{root.get_span_context().span_id:016x}-01"
    }
    async with Client(create_server(settings), mode=mode) as client:
        await call(client, "plan_run", {"name": "traced", "packages": [{"name": "api", "items": ["users"]}]})
        with trace.use_span(root, end_on_exit=True) if mode == "legacy" else contextlib.nullcontext():
            claimed = (await call(client, "claim_items", {"run": "traced", "worker": "agent-7"}, meta))[
                "items"
            ][0]
            args = {
                "outcome_id": claimed["outcome_id"],
                "lease_token": claimed["lease_token"],
                "content": CONTENT,
            }
            await call(client, "complete_item", args, meta)
    root.end()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    exporting.flush()
    expected = 7 if mode == "legacy" else 5
    receiver.wait_for(lambda s: sum(x.trace_id == trace_id for x in s) >= expected)
    spans = receiver.trace(trace_id)
    ids = by_id(spans)
    for tool, ours in (("claim_items", "matrix.claim"), ("complete_item", "matrix.complete")):
        served = only(spans, f"tools/call {tool}")  # the SDK's span in the server
        assert served.kind == SERVER and served.attributes["gen_ai.tool.name"] == tool
        if mode == "legacy":
            sent = ids[served.parent_span_id]  # the client's span, injected into _meta
            assert sent.name == f"MCP send tools/call {tool}" and sent.kind == CLIENT
            assert sent.parent_span_id == f"{root.get_span_context().span_id:016x}"
        else:
            assert served.parent_span_id == f"{root.get_span_context().span_id:016x}"
        engine_span = only(spans, ours)
        assert engine_span.parent_span_id == served.span_id
        assert engine_span.service == "matrix-mcp-tests"
    claim = only(spans, "matrix.claim").attributes
    assert claim == {
        "matrix.run": "traced",
        "matrix.worker": "agent-7",
        "matrix.claimed": 1,
        "matrix.outcome_id": claimed["outcome_id"],
        "matrix.package": "api",
        "matrix.item": "users",
    }
    complete = only(spans, "matrix.complete").attributes
    assert complete == {
        "matrix.outcome_id": claimed["outcome_id"],
        "matrix.run": "traced",
        "matrix.package": "api",
        "matrix.item": "users",
        "matrix.worker": "agent-7",
        "matrix.status": "complete",
        "matrix.attempt": 1,
    }
    assert_nothing_secret(spans, claimed["lease_token"], "SECRET-CONTENT")


async def test_plan_fail_and_refused_reports_have_spans(
    engine: Engine, exporting: tracing.Tracing, receiver: OTLPReceiver
) -> None:
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("orchestrator") as root:
        await engine.plan_run("fails", packages=[PackageSpec(name="p", items=["a", "b", "c"])])
        claimed = (await engine.claim_items("fails", worker="w", limit=3)).items
        await engine.fail_item(claimed[0].outcome_id, lease_token=claimed[0].lease_token, error="boom")
        with pytest.raises(Exception, match="lease"):
            await engine.complete_item(claimed[1].outcome_id, lease_token="not-the-token-SECRET")
    trace_id = format(root.get_span_context().trace_id, "032x")
    exporting.flush()
    spans = receiver.wait_for(lambda s: sum(x.trace_id == trace_id for x in s) >= 5)
    spans = receiver.trace(trace_id)
    plan = only(spans, "matrix.plan").attributes
    assert (plan["matrix.run"], plan["matrix.packages"], plan["matrix.items"], plan["matrix.created"]) == (
        "fails",
        1,
        3,
        True,
    )
    claim = only(spans, "matrix.claim")
    assert claim.attributes["matrix.claimed"] == 3 and "matrix.item" not in claim.attributes
    assert sorted(e[1]["matrix.item"] for e in claim.events if e[0] == "matrix.item.claimed") == [
        "a",
        "b",
        "c",
    ]
    fail = only(spans, "matrix.fail").attributes
    assert (fail["matrix.item"], fail["matrix.status"], fail["matrix.outcome_id"]) == (
        "a",
        "pending",
        claimed[0].outcome_id,
    )
    refused = only(spans, "matrix.complete")
    assert refused.status_code == 2 and refused.attributes["error.type"] == "StaleLease"
    assert_nothing_secret(spans, "boom", "not-the-token", *(c.lease_token for c in claimed))


async def test_each_delivery_attempt_is_a_span_with_the_host_only(
    engine: Engine, exporting: tracing.Tracing, receiver: OTLPReceiver
) -> None:
    settings = fast()
    hooks = Hooks(engine.store, engine.settings.database_url, settings)
    answers = {1: 500}  # the first attempt fails and is retried

    with Receiver(status=lambda n, body: answers.get(n, 200), path="/hooks/SECRET-PATH") as rx:
        created = await hooks.add(rx.url + "?token=SECRET-QUERY", events=["run.planned"])
        async with dispatching(engine, settings):
            await engine.plan_run("delivered", packages=[PackageSpec(name="p", items=["a"])])
            for _ in range(500):  # until the second attempt's result is recorded (not only sent)
                page = await hooks.deliveries(webhook=created.webhook.id)
                if page.deliveries and page.deliveries[0].status == "succeeded":
                    break
                await anyio.sleep(0.02)
    exporting.flush()

    def attempts(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.name == "matrix.deliver" and s.attributes.get("matrix.webhook") == created.webhook.id
        ]

    found = sorted(
        attempts(receiver.wait_for(lambda s: len(attempts(s)) >= 2)),
        key=lambda s: s.attributes["matrix.attempt"],
    )
    first, second = found[:2]
    assert first.kind == CLIENT and first.attributes["server.address"] == "127.0.0.1"
    assert (first.attributes["http.response.status_code"], first.attributes["matrix.delivery.outcome"]) == (
        500,
        "pending",
    )
    assert first.status_code == 2
    assert (second.attributes["http.response.status_code"], second.attributes["matrix.delivery.outcome"]) == (
        200,
        "succeeded",
    )
    assert second.attributes["matrix.delivery"] == first.attributes["matrix.delivery"]
    assert second.attributes["matrix.run"] == "delivered"
    assert (second.attributes["matrix.event_type"], second.attributes["matrix.sink"]) == (
        "run.planned",
        "webhook",
    )
    assert_nothing_secret(found, "SECRET-PATH", "SECRET-QUERY", "/hooks")


ECHO = "import os, sys; sys.stdout.write(os.environ.get('TRACEPARENT', 'none'))"


def work(settings: Settings, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "matrix_mcp", "--database-url", settings.database_url]
    argv += [
        "--artifacts-dir",
        str(settings.artifacts_dir),
        "work",
        "w",
        "-j",
        "2",
        "--",
        sys.executable,
        "-c",
        ECHO,
    ]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


async def contents(engine: Engine) -> dict[str, str]:
    """item → what its command printed."""
    page = await engine.list_outcomes(run="w")
    return {o.item: (await engine.outcome_content(o.id))[0].decode() for o in page.outcomes}


async def test_work_gives_each_command_the_traceparent_of_its_item_span(
    engine: Engine, receiver: OTLPReceiver
) -> None:
    await engine.plan_run("w", packages=[PackageSpec(name="p", items=["a", "b", "c"])])
    outer_trace, outer_span = secrets.token_hex(16), secrets.token_hex(8)  # the trace `work` runs in
    done = work(
        engine.settings,
        clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, TRACEPARENT=f"00-{outer_trace}-{outer_span}-01"
        ),
    )
    assert done.returncode == 0, done.stderr
    seen = await contents(engine)
    spans = receiver.wait_for(
        lambda s: sum(x.name == "matrix.work.item" and x.trace_id == outer_trace for x in s) >= 3
    )
    spans = receiver.trace(outer_trace)
    ids = by_id(spans)
    for item, traceparent in seen.items():
        version, trace_id, span_id, flags = traceparent.split("-")
        assert (version, trace_id, flags) == ("00", outer_trace, "01")
        span = ids[span_id]  # the span TRACEPARENT names is the item's span
        assert span.name == "matrix.work.item" and span.parent_span_id == outer_span
        assert span.service == "matrix-mcp"
        assert (span.attributes["matrix.item"], span.attributes["matrix.run"]) == (item, "w")
        assert span.attributes["process.exit.code"] == 0 and span.attributes["matrix.worker"]
        report = [s for s in spans if s.name == "matrix.complete" and s.parent_span_id == span_id]
        assert len(report) == 1 and report[0].attributes["matrix.item"] == item
    assert "TRACEPARENT" not in done.stderr


async def test_work_without_the_switch_passes_its_own_traceparent_on(engine: Engine) -> None:
    await engine.plan_run("w", packages=[PackageSpec(name="p", items=["a"])])
    outer = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    done = work(engine.settings, clean_env(TRACEPARENT=outer))
    assert done.returncode == 0, done.stderr
    assert await contents(engine) == {"a": outer}


def stdio(settings: Settings, env: dict[str, str]) -> StdioServerParameters:
    args = [
        "-m",
        "matrix_mcp",
        "--database-url",
        settings.database_url,
        "--artifacts-dir",
        str(settings.artifacts_dir),
    ]
    return StdioServerParameters(command=sys.executable, args=args, env=env)


@pytest.mark.parametrize("variables", ["endpoint", "traces endpoint, service name, headers"])
async def test_the_env_switch_over_stdio_exports_and_flushes_at_exit(
    tmp_path: Path, variables: str, exporting: tracing.Tracing, receiver: OTLPReceiver
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "artifacts")
    # a batch delay far longer than the test: only the flush at shutdown can send the server's spans
    if variables == "endpoint":
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="600000")
        service = "matrix-mcp"
    else:
        env = clean_env(
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.endpoint + "/v1/traces",
            OTEL_SERVICE_NAME="board-eu",
            OTEL_EXPORTER_OTLP_HEADERS="x-tenant=matrix-tests",
            OTEL_BSP_SCHEDULE_DELAY="600000",
        )
        service = "board-eu"
    requests_before = len(receiver.headers)
    tracer = trace.get_tracer("tests")
    async with Client(stdio(settings, env)) as c:
        await call(c, "plan_run", {"name": "stdio", "packages": [{"name": "p", "items": ["a"]}]})
        with tracer.start_as_current_span("agent over stdio") as root:
            claimed = (await call(c, "claim_items", {"run": "stdio", "worker": "w"}))["items"][0]
            await call(
                c,
                "complete_item",
                {"outcome_id": claimed["outcome_id"], "lease_token": claimed["lease_token"]},
            )
    trace_id = format(root.get_span_context().trace_id, "032x")
    exporting.flush()
    names = {"matrix.claim", "matrix.complete", "tools/call claim_items", "tools/call complete_item"}
    spans = receiver.wait_for(
        lambda s: names <= {x.name for x in s if x.trace_id == trace_id and x.service == service}
    )
    spans = receiver.trace(trace_id)
    ids = by_id(spans)
    served = only(spans, "tools/call complete_item")
    assert (
        served.service == service and ids[served.parent_span_id].name == "MCP send tools/call complete_item"
    )
    assert ids[served.parent_span_id].service == "matrix-mcp-tests"  # this process: the client
    assert only(spans, "matrix.complete").parent_span_id == served.span_id
    if variables != "endpoint":
        assert any(h.get("x-tenant") == "matrix-tests" for h in receiver.headers[requests_before:])


def run_cli(code: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_the_endpoint_without_the_extra_is_a_one_line_error(tmp_path: Path) -> None:
    # the extra's packages made unimportable, as on an install without `matrix-mcp[tracing]`
    code = """
        import sys
        sys.modules["opentelemetry.sdk"] = None
        sys.modules["opentelemetry.exporter"] = None
        from matrix_mcp.cli import main
        main(["status"])
    """
    done = run_cli(code, clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9"), tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "matrix-mcp: OTEL_EXPORTER_OTLP_ENDPOINT is set, but the tracing extra is not installed"
        ": pip install 'matrix-mcp[tracing]', or unset it"
    ]


def test_a_protocol_other_than_http_protobuf_is_refused(tmp_path: Path) -> None:
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    done = run_cli("from matrix_mcp.cli import main; main(['status'])", env, tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "matrix-mcp: OTEL_EXPORTER_OTLP_PROTOCOL=grpc: matrix-mcp exports traces over OTLP http/protobuf only"
    )


def test_switched_off_nothing_of_the_sdk_or_exporter_is_loaded(tmp_path: Path) -> None:
    """A server built and a command run with no endpoint set: the OpenTelemetry SDK and exporter stay
    unimported (start-up stays fast); with one set, they are loaded (the check can fail)."""
    code = """
        import sys
        from matrix_mcp.cli import main
        from matrix_mcp.config import Settings
        from matrix_mcp.mcp.server import create_server
        create_server(Settings(database_url="sqlite:///m.db", artifacts_dir="a"))
        try:
            main(["--database-url", "sqlite:///m.db", "gc"])
        finally:
            loaded = [m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))]
            print(len(loaded), file=sys.stderr)
    """
    off = run_cli(code, clean_env(), tmp_path)
    assert off.returncode == 0, off.stderr
    assert off.stderr.strip().splitlines()[-1] == "0"
    on = run_cli(
        code,
        clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_BSP_SCHEDULE_DELAY="600000"),
        tmp_path,
    )
    assert on.returncode == 0, on.stderr
    assert int(on.stderr.strip().splitlines()[-1]) > 0


def test_configured_honours_the_standard_off_switches() -> None:
    assert tracing.configured({}) is None
    assert tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}) is None
    assert (
        tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    both = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/v1/traces",
    }
    assert tracing.configured(both) == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    assert tracing.configured({**both, "OTEL_SDK_DISABLED": "true"}) is None
    assert tracing.configured({**both, "OTEL_TRACES_EXPORTER": "none"}) is None
    assert (
        tracing.endpoint_host("https://user:pw@hooks.example.test:8443/T0/B1/secret?token=x")
        == "hooks.example.test"
    )


def test_the_default_sampler_follows_the_caller_and_keeps_a_share_of_request_roots() -> None:
    from opentelemetry.sdk.trace.sampling import Decision

    assert tracing.default_sampler({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}) == (None, None)
    assert tracing.default_sampler({})[1] == tracing.DEFAULT_RATIO == 0.1
    with pytest.raises(ValueError, match=r"^OTEL_TRACES_SAMPLER_ARG=ten: must be a sampling ratio"):
        tracing.default_sampler({"OTEL_TRACES_SAMPLER_ARG": "ten"})
    with pytest.raises(ValueError, match=r"^OTEL_TRACES_SAMPLER_ARG=1.5: "):
        tracing.default_sampler({"OTEL_TRACES_SAMPLER_ARG": "1.5"})
    sampler, ratio = tracing.default_sampler({"OTEL_TRACES_SAMPLER_ARG": "0"})
    assert sampler is not None and ratio == 0.0
    trace_id = int(secrets.token_hex(16), 16)

    def kept(name: str, parent_flags: int | None = None) -> bool:
        context = None
        if parent_flags is not None:
            parent = trace.SpanContext(
                trace_id, 7, is_remote=True, trace_flags=trace.TraceFlags(parent_flags)
            )
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        return sampler.should_sample(context, trace_id, name).decision == Decision.RECORD_AND_SAMPLE

    assert not kept("tools/call claim_items")  # a request begun here: at the ratio (0 here)
    assert all(kept(name) for name in ("matrix.plan", "matrix.deliver", "matrix.work.item"))
    assert kept("tools/call claim_items", parent_flags=1)  # the caller's decision, both ways
    assert not kept("matrix.work.item", parent_flags=0)


async def test_the_engine_spans_follow_their_parent_and_the_ratio_without_one(
    engine: Engine, exporting: tracing.Tracing, receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "_hot_ratio", 0.0)  # the default sampler at ratio 0: roots dropped
    unsampled = trace.NonRecordingSpan(
        trace.SpanContext(int(secrets.token_hex(16), 16), 7, is_remote=True, trace_flags=trace.TraceFlags(0))
    )
    tracer = trace.get_tracer("tests")
    runs = {"no-parent": None, "unsampled-parent": unsampled, "sampled-parent": "root"}
    for run, parent in runs.items():
        await engine.plan_run(run, packages=[PackageSpec(name="p", items=["a"])])
        context = (
            trace.use_span(unsampled)
            if parent is unsampled
            else tracer.start_as_current_span("orchestrator")
            if parent
            else contextlib.nullcontext()
        )
        with context:
            item = (await engine.claim_items(run, worker="w")).items[0]
            await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
    exporting.flush()
    spans = receiver.wait_for(
        lambda s: sum(x.attributes.get("matrix.run") == "sampled-parent" for x in s) >= 3
    )
    engine_spans = {
        (x.attributes["matrix.run"], x.name)
        for x in spans
        if x.name in ("matrix.claim", "matrix.complete") and x.attributes.get("matrix.run") in runs
    }
    assert engine_spans == {("sampled-parent", "matrix.claim"), ("sampled-parent", "matrix.complete")}
