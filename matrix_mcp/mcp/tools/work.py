"""The worker loop's tools: claim items, heartbeat leases, report an item done or failed (and take the next
in the same call). The worker toolset is these and `get_outcome`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp_types import CallToolResult
from pydantic import Field, WithJsonSchema

from matrix_mcp.mcp.spec import (
    ORCHESTRATOR,
    PLAN,
    WORK,
    WORKER,
    ClaimNext,
    Detail,
    Endpoint,
    PageSize,
    ToolSpec,
    WaitSeconds,
)
from matrix_mcp.mcp.state import progress_of, state_of
from matrix_mcp.models import (
    MAX_NOTE_CHARS,
    USAGE_SCHEMA,
    ClaimResult,
    HeartbeatResult,
    LeaseRef,
    ReportResult,
    ReviewResult,
)


async def claim_items(
    ctx: Context,
    run: str,
    worker: str,
    limit: PageSize = 1,
    package: str | None = None,
    wait_seconds: WaitSeconds = 0,
) -> Annotated[CallToolResult, ClaimResult]:
    """Lease up to `limit` ready items, highest priority first, fair across packages (briefing: run
    goal + package description). wait_seconds long-polls; `reason` says why none came."""
    s = state_of(ctx)
    return await s.call(
        s.engine().claim_items(
            run=run,
            worker=worker,
            limit=limit,
            package=package,
            wait_seconds=wait_seconds,
            progress=progress_of(ctx),
        )
    )


async def heartbeat(
    ctx: Context, leases: list[LeaseRef], detail: Detail = "compact"
) -> Annotated[CallToolResult, HeartbeatResult]:
    """Extend leases; lists those lost (expired, taken over, finished) and those of a cancelled
    run (stop them)."""
    s = state_of(ctx)
    return await s.call(s.engine().heartbeat(leases=leases), full=detail == "full", full_only="extended")


async def complete_item(
    ctx: Context,
    outcome_id: str,
    lease_token: str,
    content: str | None = None,
    outcome_path: str | None = None,
    metrics: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    content_encoding: Literal["utf-8", "base64"] = "utf-8",
    mime_type: str | None = None,
    claim_next: ClaimNext = 0,
    detail: Detail = "compact",
    usage: Annotated[dict[str, Any] | None, WithJsonSchema(USAGE_SCHEMA)] = None,
) -> Annotated[CallToolResult, ReportResult]:
    """Report a claimed item done; content is stored at outcome_path (run-relative). Metrics
    lines_generated, quality_score feed summaries. Idempotent. claim_next=N: your next N items
    come in `next`. usage: what the attempt spent (counted against budgets)."""
    s = state_of(ctx)
    return await s.call(
        s.engine().complete_item(
            outcome_id=outcome_id,
            lease_token=lease_token,
            content=content,
            outcome_path=outcome_path,
            metrics=metrics,
            metadata=metadata,
            content_encoding=content_encoding,
            mime_type=mime_type,
            claim_next=claim_next,
            usage=usage,
        ),
        full=detail == "full",
        full_only="outcome",
    )


async def fail_item(
    ctx: Context,
    outcome_id: str,
    lease_token: str,
    error: str,
    retryable: bool = True,
    claim_next: ClaimNext = 0,
    detail: Detail = "compact",
    usage: Annotated[dict[str, Any] | None, WithJsonSchema(USAGE_SCHEMA)] = None,
) -> Annotated[CallToolResult, ReportResult]:
    """Report a claimed item failed: retried after backoff while attempts remain, else failed.
    claim_next=N: your next N items come in `next`. usage: as for complete_item."""
    s = state_of(ctx)
    return await s.call(
        s.engine().fail_item(
            outcome_id=outcome_id,
            lease_token=lease_token,
            error=error,
            retryable=retryable,
            claim_next=claim_next,
            usage=usage,
        ),
        full=detail == "full",
        full_only="outcome",
    )


async def review_item(
    ctx: Context,
    outcome_id: str,
    decision: Literal["approve", "reject"],
    note: Annotated[str | None, Field(max_length=MAX_NOTE_CHARS)] = None,
) -> Annotated[CallToolResult, ReviewResult]:
    """Decide on an item in_review: approve → complete (dependents may start); reject → a new attempt
    that reads your note (failed, with it as the error, once attempts are spent)."""
    s = state_of(ctx)
    return await s.call(s.engine().review_item(outcome_id=outcome_id, decision=decision, note=note))


SPECS = (
    ToolSpec(
        claim_items,
        null_free=True,
        scope=WORK,
        toolsets=WORKER,
        rest=Endpoint(
            "POST",
            "/runs/{run}/claim",
            "Lease ready items (highest priority first, fair across packages).",
            body=True,
        ),
    ),
    ToolSpec(
        heartbeat,
        null_free=True,
        scope=WORK,
        toolsets=WORKER,
        rest=Endpoint("POST", "/leases/heartbeat", "Extend leases.", body=True),
    ),
    ToolSpec(
        complete_item,
        null_free=True,
        scope=WORK,
        toolsets=WORKER,
        rest=Endpoint("POST", "/outcomes/{outcome_id}/complete", "Report a claimed item done.", body=True),
    ),
    ToolSpec(
        fail_item,
        null_free=True,
        scope=WORK,
        toolsets=WORKER,
        rest=Endpoint("POST", "/outcomes/{outcome_id}/fail", "Report a claimed item failed.", body=True),
    ),
    ToolSpec(
        review_item,
        null_free=True,
        scope=PLAN,
        toolsets=ORCHESTRATOR,
        rest=Endpoint(
            "POST", "/outcomes/{outcome_id}/review", "Approve or reject an item in review.", body=True
        ),
    ),
)
