"""The seed's tracking API: outcome records written and read directly, summaries, system metrics,
integration events and exports."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp_types import CallToolResult

from matrix_mcp.engine.content import INLINE_DEFAULT_BYTES
from matrix_mcp.mcp.spec import (
    BOTH,
    ORCHESTRATOR,
    PLAN,
    READ,
    Endpoint,
    PageSize,
    ToolSpec,
)
from matrix_mcp.mcp.state import state_of
from matrix_mcp.models import (
    ExportResult,
    IntegrationEvent,
    Outcome,
    OutcomeDetail,
    OutcomePage,
    PackageSummary,
    RecordResult,
    SettableStatus,
    Status,
    SystemMetrics,
)


async def record_outcome(
    ctx: Context,
    run: str,
    package: str,
    item: str,
    status: SettableStatus = "pending",
    outcome_type: str | None = None,
    outcome_path: str | None = None,
    specifications: dict[str, Any] | str | None = None,
    metrics: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    error_message: str | None = None,
    created_by: str | None = None,
) -> Annotated[CallToolResult, RecordResult]:
    """Create or update an outcome record directly (no lease), adding the package if needed."""
    s = state_of(ctx)
    return await s.call(
        s.engine().record_outcome(
            run=run,
            package=package,
            item=item,
            status=status,
            outcome_type=outcome_type,
            outcome_path=outcome_path,
            specifications=specifications,
            metrics=metrics,
            metadata=metadata,
            error_message=error_message,
            created_by=created_by,
        )
    )


async def update_outcome_status(
    ctx: Context,
    outcome_id: str,
    status: SettableStatus,
    error_message: str | None = None,
    metrics: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Annotated[CallToolResult, Outcome]:
    """Set an outcome's status by hand (overrides and fences off any lease holder)."""
    s = state_of(ctx)
    return await s.call(
        s.engine().update_outcome_status(
            outcome_id=outcome_id,
            status=status,
            error_message=error_message,
            metrics=metrics,
            metadata=metadata,
        )
    )


async def get_outcome(
    ctx: Context, outcome_id: str, include_content: bool = False, max_bytes: int = INLINE_DEFAULT_BYTES
) -> Annotated[CallToolResult, OutcomeDetail]:
    """One outcome with its attempt history; include_content=true adds `content` (first max_bytes:
    data, encoding utf-8|base64, truncated)."""
    s = state_of(ctx)
    # max_bytes (1 to 1 MiB) is checked by the engine, not stated in the schema: the worker toolset's budget
    return await s.call(
        s.engine().get_outcome(outcome_id=outcome_id, include_content=include_content, max_bytes=max_bytes)
    )


async def list_outcomes(
    ctx: Context,
    run: str | None = None,
    package: str | None = None,
    status: Status | None = None,
    worker: str | None = None,
    limit: PageSize = 100,
    cursor: str | None = None,
) -> Annotated[CallToolResult, OutcomePage]:
    """Outcomes in creation order, filtered; pass next_cursor back for the next page."""
    s = state_of(ctx)
    return await s.call(
        s.engine().list_outcomes(
            run=run, package=package, status=status, worker=worker, limit=limit, cursor=cursor
        )
    )


async def package_summary(
    ctx: Context, package: str, run: str | None = None
) -> Annotated[CallToolResult, PackageSummary]:
    """A package's totals, success rate, durations (avg, p50/p90/p99), lines generated, quality."""
    s = state_of(ctx)
    return await s.call(s.engine().package_summary(package=package, run=run))


async def system_metrics(ctx: Context, run: str | None = None) -> Annotated[CallToolResult, SystemMetrics]:
    """Totals by status, average generation time and outcomes by hour (one run or all)."""
    s = state_of(ctx)
    return await s.call(s.engine().system_metrics(run=run))


async def record_integration_event(
    ctx: Context,
    integration_type: str,
    action: str,
    status: str = "success",
    run: str | None = None,
    outcome_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> Annotated[CallToolResult, IntegrationEvent]:
    """Log an action taken in another system (Slack message, Jira issue…) for a run or outcome."""
    s = state_of(ctx)
    return await s.call(
        s.engine().record_integration_event(
            integration_type=integration_type,
            action=action,
            status=status,
            run=run,
            outcome_id=outcome_id,
            details=details,
        )
    )


async def export_outcomes(
    ctx: Context, run: str, format: Literal["jsonl", "csv"] = "jsonl"
) -> Annotated[CallToolResult, ExportResult]:
    """Write every outcome of a run to a JSONL or CSV file under the artifacts root; returns its path."""
    s = state_of(ctx)
    return await s.call(s.engine().export_outcomes(run=run, format=format))


SPECS = (
    ToolSpec(
        record_outcome,
        null_free=True,
        scope=PLAN,
        toolsets=ORCHESTRATOR,
        rest=Endpoint("POST", "/outcomes", "Create or update an outcome record directly.", body=True),
    ),
    ToolSpec(
        update_outcome_status,
        null_free=True,
        scope=PLAN,
        toolsets=ORCHESTRATOR,
        rest=Endpoint("PATCH", "/outcomes/{outcome_id}", "Set an outcome's status.", body=True),
    ),
    ToolSpec(
        get_outcome,
        null_free=True,
        scope=READ,
        toolsets=BOTH,
        rest=Endpoint(
            "GET",
            "/outcomes/{outcome_id}",
            "One outcome with its attempt history; its content inline with include_content=true.",
            query=("include_content", "max_bytes"),
        ),
    ),
    ToolSpec(
        list_outcomes,
        null_free=True,
        scope=READ,
        toolsets=ORCHESTRATOR,
        rest=Endpoint(
            "GET",
            "/outcomes",
            "Outcomes in creation order, filtered; pass next_cursor back as cursor.",
            query=("run", "package", "status", "worker", "limit", "cursor"),
        ),
    ),
    ToolSpec(
        package_summary,
        null_free=True,
        scope=READ,
        toolsets=ORCHESTRATOR,
        rest=Endpoint("GET", "/runs/{run}/packages/{package}", "One package's summary."),
    ),
    ToolSpec(
        system_metrics,
        null_free=True,
        scope=READ,
        toolsets=ORCHESTRATOR,
        rest=Endpoint("GET", "/metrics/system", "Totals, averages, outcomes by hour.", query=("run",)),
    ),
    ToolSpec(
        record_integration_event,
        null_free=True,
        scope=PLAN,
        toolsets=ORCHESTRATOR,
        rest=Endpoint(
            "POST",
            "/integration-events",
            "Log an action taken in another system.",
            body=True,
        ),
    ),
    ToolSpec(export_outcomes, null_free=True, scope=PLAN, toolsets=ORCHESTRATOR),
)
