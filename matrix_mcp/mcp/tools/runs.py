"""The run tools: plan a run, steer it (retry, pause, resume, cancel), list runs and watch one.

Each tool is thin: parse, call the engine through the server's state, return its model. Results are dumped
without null fields (`null_free`, see `ServerState.call`): lean result schemas."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp_types import CallToolResult
from pydantic import Field

from matrix_mcp.apps import grid_tool_meta
from matrix_mcp.engine import MAX_SEQ
from matrix_mcp.mcp.spec import (
    ORCHESTRATOR,
    PLAN,
    READ,
    Endpoint,
    ToolSpec,
    WaitSeconds,
)
from matrix_mcp.mcp.state import progress_of, state_of
from matrix_mcp.models import (
    MAX_CAP,
    MAX_COST_USD,
    MAX_TOKENS,
    PackageSpec,
    PlanResult,
    RetryResult,
    Run,
    RunList,
    RunPolicy,
    RunStatus,
)


async def plan_run(
    ctx: Context,
    name: str,
    packages: list[PackageSpec],
    goal: str | None = None,
    outcome_type: str = "code",
    lease_seconds: Annotated[float, Field(gt=0, le=86400)] = 300,
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3,
    backoff_seconds: Annotated[float, Field(ge=0, le=86400)] = 5,
    outcome_schema: dict[str, Any] | None = None,
    max_concurrent: Annotated[int | None, Field(ge=1)] = None,
    on_dependency_failure: Literal["cancel", "block"] = "cancel",
    review: Literal["none", "required"] = "none",
    max_cost_usd: Annotated[float | None, Field(ge=0, le=MAX_COST_USD)] = None,
    max_tokens: Annotated[int | None, Field(ge=0, le=MAX_TOKENS)] = None,
) -> Annotated[CallToolResult, PlanResult]:
    """Create a run of packages × items (idempotent by name; new packages/items are added). items: names
    or {name, specifications, after, priority, locks}; an item is blocked until its `after` complete.
    max_concurrent: items generating at once. review=required: completions wait for review_item.
    max_cost_usd/max_tokens: budgets (crossed: paused). outcome_schema: JSON Schema for {"metrics",
    "metadata"} of reports."""
    s = state_of(ctx)
    policy = RunPolicy.planned(
        outcome_type=outcome_type,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        backoff_seconds=backoff_seconds,
        outcome_schema=outcome_schema,
        max_concurrent=max_concurrent,
        on_dependency_failure=on_dependency_failure,
        review=review,
        max_cost_usd=max_cost_usd,
        max_tokens=max_tokens,
    )
    return await s.call(s.engine().plan_run(name=name, packages=packages, goal=goal, policy=policy))


async def retry_items(
    ctx: Context, run: str, package: str | None = None, outcome_ids: list[str] | None = None
) -> Annotated[CallToolResult, RetryResult]:
    """Re-queue failed items (all of the run's, one package's, or the given ids) with fresh attempts."""
    s = state_of(ctx)
    return await s.call(s.engine().retry_items(run=run, package=package, outcome_ids=outcome_ids))


async def control_run(
    ctx: Context, run: str, action: Literal["pause", "resume", "cancel"]
) -> Annotated[CallToolResult, Run]:
    """Pause, resume or cancel a run. Cancel is final: pending items are cancelled; heartbeats tell workers."""
    s = state_of(ctx)
    return await s.call(s.engine().control_run(run=run, action=action))


async def list_runs(ctx: Context) -> Annotated[CallToolResult, RunList]:
    """All runs with their state, policy and counts by status."""
    s = state_of(ctx)
    return await s.call(s.engine().list_runs())


async def run_status(
    ctx: Context,
    run: str,
    since: Annotated[int | None, Field(ge=0, le=MAX_SEQ)] = None,
    wait_seconds: WaitSeconds = 0,
) -> Annotated[CallToolResult, RunStatus]:
    """Counts, per-package summaries, throughput, ETA, latest_seq. With since=S: the events after S,
    long-polling up to wait_seconds (at most 50, with progress notifications)."""
    s = state_of(ctx)
    return await s.call(
        s.engine().run_status(run=run, since=since, wait_seconds=wait_seconds, progress=progress_of(ctx))
    )


async def update_policy(
    ctx: Context,
    run: str,
    max_cost_usd: Annotated[float | None, Field(ge=0, le=MAX_COST_USD)] = None,
    max_tokens: Annotated[int | None, Field(ge=0, le=MAX_TOKENS)] = None,
    max_concurrent: Annotated[int | None, Field(ge=1, le=MAX_CAP)] = None,
    review: Literal["none", "required"] | None = None,
    lease_seconds: Annotated[float | None, Field(gt=0, le=86_400)] = None,
    max_attempts: Annotated[int | None, Field(ge=1, le=100)] = None,
    clear: list[Literal["max_cost_usd", "max_tokens", "max_concurrent"]] | None = None,
) -> Annotated[CallToolResult, Run]:
    """Change a run's policy (budgets, cap, review, lease, attempts); `clear` removes limits. A run its
    budget paused stays paused until control_run resume."""
    s = state_of(ctx)
    return await s.call(
        s.engine().update_policy(
            run=run,
            max_cost_usd=max_cost_usd,
            max_tokens=max_tokens,
            max_concurrent=max_concurrent,
            review=review,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            clear=clear or (),
        )
    )


# run_status results are shown in the grid view by hosts that render MCP Apps (matrix_mcp/apps)
SPECS = (
    ToolSpec(
        plan_run,
        null_free=True,
        scope=PLAN,
        toolsets=ORCHESTRATOR,
        rest=Endpoint(
            "POST",
            "/runs",
            "Plan a run of packages × items (idempotent by name): 201 when it created the run, else 200.",
            body=True,
            created="created",
        ),
    ),
    ToolSpec(
        retry_items,
        null_free=True,
        scope=PLAN,
        toolsets=ORCHESTRATOR,
        rest=Endpoint("POST", "/runs/{run}/retry", "Re-queue failed items.", body=True),
    ),
    ToolSpec(
        control_run,
        null_free=True,
        scope=PLAN,
        toolsets=ORCHESTRATOR,
        rest=Endpoint("POST", "/runs/{run}/control", "Pause, resume or cancel a run.", body=True),
    ),
    ToolSpec(
        update_policy,
        null_free=True,
        scope=PLAN,
        toolsets=ORCHESTRATOR,
        rest=Endpoint(
            "PATCH",
            "/runs/{run}/policy",
            "Change a run's budgets, cap, review, lease or attempts.",
            body=True,
        ),
    ),
    ToolSpec(
        list_runs,
        null_free=True,
        scope=READ,
        toolsets=ORCHESTRATOR,
        rest=Endpoint("GET", "/runs", "All runs with state, policy and counts."),
    ),
    ToolSpec(
        run_status,
        null_free=True,
        meta=grid_tool_meta(),
        scope=READ,
        toolsets=ORCHESTRATOR,
        rest=Endpoint(
            "GET",
            "/runs/{run}",
            "Counts, package summaries, throughput, ETA; events after `since` (long-poll with wait_seconds).",
            query=("since", "wait_seconds"),
        ),
    ),
)
