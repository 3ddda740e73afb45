"""OpenTelemetry traces: the export switch, and the spans of the work loop, the dispatcher and `work`.

The MCP SDK already opens a span per request (parented from the request's `_meta.traceparent`); this
module adds the Matrix's own spans beneath it and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, exports all of them over OTLP/HTTP (protobuf).

Only the OpenTelemetry API is imported here (the SDK imports it anyway): with no endpoint set, the
spans below are the API's no-op spans and neither the OpenTelemetry SDK nor the exporter is loaded.
`start` imports them, from the optional extra `matrix-mcp[tracing]`, when an endpoint is set.

Attributes name things (run, package, item, outcome id, worker, an endpoint's host), never content,
secrets, URLs' paths or queries, or error texts that may quote a caller's input.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ParamSpec
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

    from matrix_mcp.models import ClaimedItem, ClaimResult, PlanResult, ReportResult

P = ParamSpec("P")

SERVICE_NAME = "matrix-mcp"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
# The default sampler (when OTEL_TRACES_SAMPLER is unset): a trace a caller sends is kept or dropped as the
# caller decided; of the traces that start here, those of the request path (MCP tool calls and engine calls
# made without a trace) are kept at DEFAULT_RATIO by trace id, and these few, low-volume ones always.
DEFAULT_RATIO = 0.1
ALWAYS_SAMPLED_ROOTS = frozenset({"matrix.plan", "matrix.deliver", "matrix.work.item"})
# The engine's per-item spans: with the default sampler, decided before the SDK is asked (see _hot_span)
HOT_PATH = frozenset({"matrix.claim", "matrix.complete", "matrix.fail"})
# The default sampler's ratio while it is installed (set by `start`); None: the SDK decides every span
_hot_ratio: float | None = None
_tracer = trace.get_tracer("matrix_mcp")
_propagator = TraceContextTextMapPropagator()


# ---- the switch ---------------------------------------------------------------------------------


class Tracing:
    """The installed exporter: `shutdown` flushes the spans still queued (call it once, at exit)."""

    def __init__(self, provider: TracerProvider, endpoint_variable: str) -> None:
        self.provider = provider
        self.endpoint_variable = endpoint_variable

    def flush(self, timeout_millis: int = 5000) -> bool:
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.provider.shutdown()


def configured(environ: Mapping[str, str]) -> str | None:
    """The variable that turns export on (the traces-only endpoint first), or None: off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    return next((name for name in ENDPOINT_VARIABLES if environ.get(name, "").strip()), None)


def start(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Install the OTLP/HTTP exporter when an endpoint variable is set; None (nothing imported) when not.

    Everything else is the OpenTelemetry SDK's own environment handling: the endpoint, headers,
    timeout, compression and certificates (OTEL_EXPORTER_OTLP_[TRACES_]*), the batch processor
    (OTEL_BSP_*), the sampler (OTEL_TRACES_SAMPLER[_ARG]) and the resource (OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES); the service name is `matrix-mcp` unless those name one.

    Raises:
        ValueError: one line, when an endpoint is set but the `tracing` extra is not installed, or
            when the configured OTLP protocol is not http/protobuf.
    """
    env = os.environ if environ is None else environ
    variable = configured(env)
    if variable is None:
        return None
    for name in PROTOCOL_VARIABLES:
        protocol = env.get(name, "").strip()
        if protocol:
            if protocol != "http/protobuf":
                raise ValueError(f"{name}={protocol}: matrix-mcp exports traces over OTLP http/protobuf only")
            break
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ValueError(
            f"{variable} is set, but the tracing extra is not installed: pip install 'matrix-mcp[tracing]',"
            " or unset it"
        ) from None
    from matrix_mcp import __version__

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME, "service.version": __version__}))
    global _hot_ratio
    sampler, ratio = default_sampler(env)
    provider = TracerProvider(resource=resource, sampler=sampler)
    # endpoint, headers, timeout, compression, certificates from OTEL_EXPORTER_OTLP_*; batching from OTEL_BSP_*
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _hot_ratio = ratio
    return Tracing(provider, variable)


def default_sampler(environ: Mapping[str, str]) -> tuple[Sampler | None, float | None]:
    """(None, None) when OTEL_TRACES_SAMPLER is set: the SDK reads it and its argument. Else the Matrix's
    default and its ratio: parent-based, its roots kept at OTEL_TRACES_SAMPLER_ARG (default DEFAULT_RATIO),
    by trace id, except ALWAYS_SAMPLED_ROOTS, always kept, and HOT_PATH roots, which `_hot_span` draws at
    that ratio before the SDK sees them.

    Why not the SDK's default (keep everything): each kept span costs the SDK's work on the calling thread
    and its encoding on the exporter's, 100-150 µs of CPU, which is 10-50 % of an in-process claim +
    complete (docs/benchmarks.md); a dropped one costs under 10 µs.

    Raises:
        ValueError: one line, when OTEL_TRACES_SAMPLER_ARG is not a number from 0 to 1.
    """
    if environ.get("OTEL_TRACES_SAMPLER", "").strip():
        return None, None
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_ON,
        ParentBased,
        SamplingResult,
        TraceIdRatioBased,
    )
    from opentelemetry.sdk.trace.sampling import Sampler as SamplerBase

    text = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(text) if text else DEFAULT_RATIO
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={text}: must be a sampling ratio from 0 to 1")
    by_trace_id = TraceIdRatioBased(ratio)

    class Roots(SamplerBase):
        """A trace's first span: ALWAYS_SAMPLED_ROOTS kept, the others by trace id at the ratio."""

        def should_sample(
            self, parent_context: Context | None, trace_id: int, name: str, *args: Any, **kwargs: Any
        ) -> SamplingResult:
            chosen = ALWAYS_ON if name in ALWAYS_SAMPLED_ROOTS or name in HOT_PATH else by_trace_id
            return chosen.should_sample(parent_context, trace_id, name, *args, **kwargs)

        def get_description(self) -> str:
            return f"MatrixRoots{{always:{','.join(sorted(ALWAYS_SAMPLED_ROOTS))};{by_trace_id.get_description()}}}"

    return ParentBased(root=Roots()), ratio


def _hot_span(name: str) -> Span | None:
    """A span of the engine's per-item path, or None when it would not be recorded.

    With the default sampler, decided here without the SDK, which would otherwise build a non-recording
    span for each dropped call (about 10 µs, twice per claim + complete): under a parent, the parent's
    decision (what ParentBased does); as a root, a draw at the ratio (what TraceIdRatioBased does for a
    fresh random trace id; the span is a leaf, never made current, so nothing else sees its trace id).
    """
    ratio = _hot_ratio
    if ratio is not None:
        parent = trace.get_current_span().get_span_context()
        if parent.is_valid:
            if not parent.trace_flags.sampled:
                return None
        elif ratio < 1.0 and random.random() >= ratio:
            return None
    return _tracer.start_span(name, record_exception=False, set_status_on_exception=False)


# ---- spans of the engine's use cases ------------------------------------------------------------
# Built for the hot path (each costs a few percent of an in-process claim + complete, see the README):
# a leaf span, never made current (no context switch), its attributes set once, at the end; nothing
# built when the span does not record (tracing off, or not sampled).


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    """A method's argument, given by position (after self) or by name."""
    return args[index] if len(args) > index else kwargs.get(name)


def _failed(span: Span, attributes: dict[str, Any], exc: BaseException) -> None:
    """The error's kind (and the field it names), never its text: messages can quote a caller's input."""
    attributes["error.type"] = type(exc).__qualname__
    field = getattr(exc, "field", None)
    if isinstance(field, str):
        attributes["matrix.error.field"] = field
    span.set_attributes(attributes)
    span.set_status(StatusCode.ERROR)


def _item_events(span: Span, items: list[ClaimedItem]) -> None:
    for c in items:  # one event per item, so that no attribute changes its type with the count
        span.add_event(
            "matrix.item.claimed",
            {"matrix.outcome_id": c.outcome_id, "matrix.package": c.package, "matrix.item": c.item},
        )


def plan_span(fn: Callable[P, Awaitable[PlanResult]]) -> Callable[P, Awaitable[PlanResult]]:
    """`matrix.plan` around `Engine.plan_run(name, …)`: the run and how many packages and items it has."""

    @functools.wraps(fn)
    async def traced(*args: P.args, **kwargs: P.kwargs) -> PlanResult:
        span = _tracer.start_span("matrix.plan", record_exception=False, set_status_on_exception=False)
        try:
            if not span.is_recording():
                return await fn(*args, **kwargs)
            attributes: dict[str, Any] = {"matrix.run": str(_arg(args, kwargs, 1, "name"))}
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                _failed(span, attributes, exc)
                raise
            attributes.update(
                {
                    "matrix.run_id": result.run.id,
                    "matrix.created": result.created,
                    "matrix.packages": result.packages,
                    "matrix.items": result.items,
                    "matrix.added_items": result.added_items,
                }
            )
            span.set_attributes(attributes)
            return result
        finally:
            span.end()

    return traced


def claim_span(fn: Callable[P, Awaitable[ClaimResult]]) -> Callable[P, Awaitable[ClaimResult]]:
    """`matrix.claim` around `Engine.claim_items(run, *, worker, package, …)`: who asked, what it got."""

    @functools.wraps(fn)
    async def traced(*args: P.args, **kwargs: P.kwargs) -> ClaimResult:
        span = _hot_span("matrix.claim")
        if span is None:
            return await fn(*args, **kwargs)
        try:
            if not span.is_recording():
                return await fn(*args, **kwargs)
            run = _arg(args, kwargs, 1, "run")
            attributes: dict[str, Any] = {"matrix.run": str(run)}
            worker, package = kwargs.get("worker"), kwargs.get("package")
            if isinstance(worker, str):
                attributes["matrix.worker"] = worker
            if isinstance(package, str):
                attributes["matrix.package"] = package
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                _failed(span, attributes, exc)
                raise
            # the run's name, whether the caller gave its name or its id (cached by the call: no I/O)
            attributes["matrix.run"] = (await args[0].run_info(run)).name  # type: ignore[attr-defined]
            attributes["matrix.claimed"] = len(result.items)
            if len(result.items) == 1:
                c = result.items[0]
                attributes.update(
                    {"matrix.outcome_id": c.outcome_id, "matrix.package": c.package, "matrix.item": c.item}
                )
            else:
                _item_events(span, result.items)
            if result.reason is not None:
                attributes["matrix.reason"] = result.reason
            span.set_attributes(attributes)
            return result
        finally:
            span.end()

    return traced


def report_span(
    name: str,
) -> Callable[[Callable[P, Awaitable[ReportResult]]], Callable[P, Awaitable[ReportResult]]]:
    """`name` (`matrix.complete`, `matrix.fail`) around a report `Engine.…(outcome_id, *, …)`: the item
    it was about, the status it left the item in, and the items leased by the same call (`claim_next`)."""

    def decorate(fn: Callable[P, Awaitable[ReportResult]]) -> Callable[P, Awaitable[ReportResult]]:
        @functools.wraps(fn)
        async def traced(*args: P.args, **kwargs: P.kwargs) -> ReportResult:
            span = _hot_span(name)
            if span is None:
                return await fn(*args, **kwargs)
            try:
                if not span.is_recording():
                    return await fn(*args, **kwargs)
                attributes: dict[str, Any] = {"matrix.outcome_id": str(_arg(args, kwargs, 1, "outcome_id"))}
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    _failed(span, attributes, exc)
                    raise
                attributes["matrix.status"] = result.status
                attributes["matrix.attempt"] = result.attempt
                o = result.outcome
                if o is not None:
                    attributes["matrix.run"] = o.run
                    attributes["matrix.package"] = o.package
                    attributes["matrix.item"] = o.item
                    if o.worker is not None:
                        attributes["matrix.worker"] = o.worker
                span.set_attributes(attributes)
                if result.next:
                    _item_events(span, result.next)
                return result
            finally:
                span.end()

        return traced

    return decorate


# ---- the dispatcher's deliveries ----------------------------------------------------------------


class Delivery:
    """What one delivery attempt's span records once the attempt is over."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def answered(self, status_code: int | None, outcome: str, ok: bool) -> None:
        """`outcome`: succeeded, pending (to be retried) or failed (for good)."""
        if not self.span.is_recording():
            return
        if status_code is not None:
            self.span.set_attribute("http.response.status_code", status_code)
        self.span.set_attribute("matrix.delivery.outcome", outcome)
        if not ok:
            self.span.set_attribute(
                "error.type", str(status_code) if status_code is not None else "no_response"
            )
            self.span.set_status(StatusCode.ERROR)


def endpoint_host(target: str) -> str:
    """The host of a subscription's target: never its path, query or credentials (they can be secret)."""
    try:
        return urlsplit(target).hostname or ""
    except ValueError:
        return ""


@contextmanager
def delivery_span(
    *,
    sink: str,
    target: str,
    subscription: str,
    delivery: str,
    event_type: str,
    attempt: int,
    run: str | None,
) -> Iterator[Delivery]:
    """`matrix.deliver`, one per attempt at one delivery (kind CLIENT)."""
    with _tracer.start_as_current_span(
        "matrix.deliver", kind=SpanKind.CLIENT, record_exception=False, set_status_on_exception=False
    ) as span:
        if span.is_recording():
            attributes: dict[str, Any] = {
                "server.address": endpoint_host(target),
                "matrix.sink": sink,
                "matrix.webhook": subscription,
                "matrix.delivery": delivery,
                "matrix.event_type": event_type,
                "matrix.attempt": attempt,
            }
            if run is not None:
                attributes["matrix.run"] = run
            span.set_attributes(attributes)
        try:
            yield Delivery(span)
        except BaseException as exc:  # cancelled mid-attempt (the delivery stays due): say so
            if span.is_recording():
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(StatusCode.ERROR)
            raise


# ---- `matrix-mcp work` --------------------------------------------------------------------------


def parent_from_env(environ: Mapping[str, str]) -> Context | None:
    """The trace `work` itself runs in, from TRACEPARENT/TRACESTATE (W3C) in its environment, if any."""
    carrier = {k.lower(): v for k, v in environ.items() if k in ("TRACEPARENT", "TRACESTATE")}
    if "traceparent" not in carrier:
        return None
    context = _propagator.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


@contextmanager
def work_item_span(*, run: str, item: ClaimedItem, worker: str, parent: Context | None) -> Iterator[Span]:
    """`matrix.work.item`: one item run by `matrix-mcp work`, from its command's start to its report."""
    with _tracer.start_as_current_span(
        "matrix.work.item", context=parent, record_exception=False, set_status_on_exception=False
    ) as span:
        if span.is_recording():
            span.set_attributes(
                {
                    "matrix.run": run,
                    "matrix.package": item.package,
                    "matrix.item": item.item,
                    "matrix.outcome_id": item.outcome_id,
                    "matrix.worker": worker,
                    "matrix.attempt": item.attempt,
                }
            )
        yield span


def command_exited(span: Span, returncode: int | None, stopped: str | None) -> None:
    if not span.is_recording():
        return
    if returncode is not None:
        span.set_attribute("process.exit.code", returncode)
    if stopped is not None:
        span.set_attribute("matrix.stopped", stopped)
    if returncode != 0 or stopped is not None:
        span.set_status(StatusCode.ERROR)


def traceparent_env() -> dict[str, str]:
    """TRACEPARENT (and TRACESTATE) naming the current span, for a child process; {} when not tracing."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return {key.upper(): value for key, value in carrier.items()}
