"""Prometheus metrics for one service process, and the /metrics endpoint.

No unbounded labels: tools are the registered ones (anything else counts as `other`), HTTP codes,
integration services and statuses are small vocabularies; `package` names only packages with work
pending or generating, at most `MATRIX_METRICS_MAX_PACKAGES` of them, and everything else is summed
under `package="other"` (no run names, outcome ids or workers). A plan of 20,000 packages therefore
costs a scrape the same as one of 20. `matrix_active_outcomes` is read from the store's counters at
scrape time, so every replica on one database reports the same numbers. /metrics answers only to the
Host names /mcp does (DNS-rebinding protection). `matrix_tokens_total{kind}` and `matrix_cost_usd_total`
are what every report over all runs spent (the packages' usage sums, read at scrape time like the gauge).
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Callable, Container, Iterable
from typing import TYPE_CHECKING, Any

import prometheus_client
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from prometheus_client import CollectorRegistry, Counter, Histogram, Metric, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from matrix_mcp.errors import StoreError

if TYPE_CHECKING:
    from matrix_mcp.engine.access import Access
from matrix_mcp.models import STATUSES, Status, UsageTotals
from matrix_mcp.telemetry import add_generation_sink, add_integration_sink

GENERATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DEFAULT_MAX_PACKAGES = 100  # MATRIX_METRICS_MAX_PACKAGES
OTHER = "other"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The metric families of one app (its own registry, so several apps can live in one process)."""

    def __init__(
        self, known_tools: Callable[[], Container[str]], max_packages: int = DEFAULT_MAX_PACKAGES
    ) -> None:
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # fewer lines to scrape
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._known_tools = known_tools
        self.max_packages = max_packages
        # (package, outcome_type) label pairs of the generation histogram -> shown by a scrape since their
        # last observation (then, once the package has no unfinished work, the pair is dropped)
        self._generation_labels: dict[tuple[str, str], bool] = {}
        self.generation = Histogram(
            "matrix_outcome_generation_seconds",
            "Time from claim to completion of each outcome completed through this process.",
            ["package", "outcome_type"],
            buckets=GENERATION_BUCKETS,
            registry=r,
        )
        self.active = ActiveOutcomes()  # formatted by exposition(), not through the registry (below)
        self.spent = Spent()
        r.register(self.spent)
        self.integration_calls = Counter(
            "matrix_integration_calls", "Outbound integration calls.", ["service", "status"], registry=r
        )
        self.integration_duration = Histogram(
            "matrix_integration_duration_seconds",
            "Duration of outbound integration calls.",
            ["service"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tool_calls = Counter("matrix_tool_calls", "MCP tool calls.", ["tool", "result"], registry=r)
        self.tool_duration = Histogram(
            "matrix_tool_call_duration_seconds",
            "MCP tool call duration.",
            ["tool"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter("matrix_http_requests", "HTTP responses by code.", ["code"], registry=r)
        self.rate_limited = Counter("matrix_rate_limited", "Requests refused with 429.", registry=r)
        self.auth_failures = Counter(
            "matrix_auth_failures", "Requests with a missing or invalid credential.", registry=r
        )
        add_integration_sink(self.observe_integration_call)
        add_generation_sink(self.observe_generation)

    def observe_generation(self, package: str, outcome_type: str, seconds: float) -> None:
        key = (package, outcome_type)
        if key not in self._generation_labels and len(self._generation_labels) >= self.max_packages:
            key = (OTHER, OTHER)  # over the cap: counted, not labelled
        self._generation_labels[key] = False
        self.generation.labels(*key).observe(seconds)

    def observe_integration_call(self, service: str, status: str, seconds: float) -> None:
        self.integration_calls.labels(service, status).inc()
        self.integration_duration.labels(service).observe(seconds)

    def tool_label(self, name: object) -> str:
        return name if isinstance(name, str) and name in self._known_tools() else "other"

    async def refresh_active(self, access: Access) -> None:
        self.active.totals, self.active.counts = await access.active_status_counts(self.max_packages)
        self.spent.usage = await access.usage_totals()

    def exposition(self) -> bytes:
        # a histogram pair already scraped, not observed since, whose package has no unfinished work left
        # (or that a store never vouched for) stops being a series; the others are marked as scraped
        active = self.active.counts
        for key, scraped in list(self._generation_labels.items()):
            if scraped and key[0] not in active and key != (OTHER, OTHER):
                del self._generation_labels[key]
                self.generation.remove(*key)
        text = generate_latest(self.registry) + self.active.exposition()
        for key in self._generation_labels:
            self._generation_labels[key] = True
        return text


ACTIVE_NAME = "matrix_active_outcomes"
ACTIVE_HELP = (
    "Outcomes by status over all runs, from the store's counters; by package for packages with "
    "work pending or generating (at most MATRIX_METRICS_MAX_PACKAGES), the rest as package=other."
)


class ActiveOutcomes(Collector):
    """`matrix_active_outcomes{package,status}` from the counts the last scrape read from the store: the
    packages with unfinished work by name (at most the cap), everything else as `other`, so that the sum
    over packages is the total over all runs.

    Its up to len(STATUSES) × (cap + 1) lines are formatted here (`exposition`), in the text format prometheus_client
    writes: through `generate_latest` they cost 15 µs a line, 7.8 ms of a 20 ms scrape at the default cap."""

    def __init__(self) -> None:
        self.totals: dict[Status, int] = {}
        self.counts: dict[str, dict[Status, int]] = {}

    def samples(self) -> Iterable[tuple[str, Status, int]]:
        """(package, status, count) of every series, the `other` rest last."""
        rest = dict(self.totals)
        for package, by_status in self.counts.items():
            if package == OTHER:
                continue  # a package called "other" stays in the rest
            for status in STATUSES:
                yield package, status, by_status.get(status, 0)
                rest[status] = rest.get(status, 0) - by_status.get(status, 0)
        if self.totals:
            for status in STATUSES:
                yield OTHER, status, max(0, rest.get(status, 0))

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(ACTIVE_NAME, ACTIVE_HELP, labels=["package", "status"])
        for package, status, n in self.samples():
            family.add_metric([package, status], n)
        yield family

    def exposition(self) -> bytes:
        """The family in the Prometheus text format (version 0.0.4), as `generate_latest` writes it."""
        lines = [f"# HELP {ACTIVE_NAME} {_escape_help(ACTIVE_HELP)}", f"# TYPE {ACTIVE_NAME} gauge"]
        labels: dict[str, str] = {}
        for package, status, n in self.samples():
            prefix = labels.get(package)
            if prefix is None:
                prefix = labels[package] = f'{ACTIVE_NAME}{{package="{_escape_label(package)}",status="'
            lines.append(f'{prefix}{status}"}} {floatToGoString(n)}')  # type: ignore[no-untyped-call]
        return ("\n".join(lines) + "\n").encode()


TOKEN_KINDS = ("input", "output", "cache_read", "cache_creation")


class Spent(Collector):
    """`matrix_tokens_total{kind}` and `matrix_cost_usd_total`: the usage every report reported, over all
    runs, as the last scrape read it from the store (counters: the sums only grow)."""

    def __init__(self) -> None:
        self.usage: UsageTotals | None = None  # None before the first read: no series

    def collect(self) -> Iterable[Metric]:
        if self.usage is None:
            return
        tokens = CounterMetricFamily(
            "matrix_tokens", "Tokens the reports used, by kind, over all runs.", labels=["kind"]
        )
        for kind in TOKEN_KINDS:
            tokens.add_metric([kind], getattr(self.usage, f"{kind}_tokens"))
        yield tokens
        yield CounterMetricFamily(
            "matrix_cost_usd", "Cost in USD the reports reported, over all runs.", value=self.usage.cost_usd
        )


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class ToolMetrics:
    """Server middleware: counts and times tool calls (the engine feeds the generation histogram)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        tool = self.metrics.tool_label(ctx.params.get("name") if isinstance(ctx.params, dict) else None)
        start = time.perf_counter()
        result: HandlerResult = None
        try:
            result = await call_next(ctx)
        finally:
            self.metrics.tool_duration.labels(tool).observe(time.perf_counter() - start)
            error = _is_error(result)
            self.metrics.tool_calls.labels(tool, "error" if error else "ok").inc()
        return result


def _is_error(result: HandlerResult) -> bool:
    """Whether a tools/call result is an error, as a model or as its wire mapping."""
    if result is None:
        return True
    if isinstance(result, dict):
        return bool(result.get("isError"))
    return bool(getattr(result, "is_error", False))


def metrics_endpoint(
    metrics: Metrics,
    access: Callable[[], Access | None],
    token: str | None,
    security: TransportSecuritySettings | None = None,
) -> Callable[[Request], Any]:
    hosts = None if security is None else TransportSecurityMiddleware(security)

    async def endpoint(request: Request) -> Response:
        if hosts is not None:  # the Host / Origin checks of /mcp: a rebound DNS name cannot read it
            refusal = await hosts.validate_request(request, is_post=False)
            if refusal is not None:
                return refusal
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse(
                    {"error": "invalid_token", "error_description": "MATRIX_METRICS_TOKEN required"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        current = access()
        if current is not None:
            with contextlib.suppress(StoreError):  # gauges keep their last values; /readyz tells
                await metrics.refresh_active(current)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return endpoint
