"""The Matrix server's resources: runs, packages, outcomes and their content (with its own mime type), the
system metrics; the schema and webhook resources come from their tool modules. Each reads through the
server's state (`state.read` maps errors to protocol codes)."""

from __future__ import annotations

from functools import partial
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.resources import FunctionResource, Resource
from mcp.server.mcpserver.resources.types import BinaryResource, TextResource
from mcp.shared.uri_template import UriTemplate

from matrix_mcp.mcp.state import ServerState, state_of
from matrix_mcp.mcp.tools.schema import add_schema_templates, schema_resources
from matrix_mcp.mcp.tools.webhooks import hook_resources
from matrix_mcp.models import OutcomeDetail, PackageSummary, RunList, RunStatus, SystemMetrics


async def runs_resource(state: ServerState) -> RunList:
    return await state.read(state.engine().list_runs())


async def metrics_resource(state: ServerState) -> SystemMetrics:
    return await state.read(state.engine().system_metrics(run=None))


async def run_resource(run: str, ctx: Context) -> RunStatus:
    s = state_of(ctx)
    return await s.read(s.engine().run_status(run=run))


async def package_resource(run: str, package: str, ctx: Context) -> PackageSummary:
    s = state_of(ctx)
    return await s.read(s.engine().package_summary(package=package, run=run))


async def outcome_resource(outcome_id: str, ctx: Context) -> OutcomeDetail:
    s = state_of(ctx)
    return await s.read(s.engine().get_outcome(outcome_id=outcome_id))


CONTENT_URI = "matrix://outcomes/{outcome_id}/content"

CONTENT_TEMPLATE = UriTemplate.parse(CONTENT_URI)


async def content_resource(outcome_id: str, ctx: Context) -> TextResource | BinaryResource:
    s = state_of(ctx)
    return await outcome_content(s, outcome_id)


async def outcome_content(state: ServerState, outcome_id: str) -> TextResource | BinaryResource:
    """The outcome's artifact as a resource with its own mime type (text when it decodes as such)."""
    data, mime = await state.read(state.engine().outcome_content(outcome_id=outcome_id))
    uri = f"matrix://outcomes/{outcome_id}/content"
    if mime.startswith("text/") or mime in ("application/json", "application/xml", "application/yaml"):
        try:
            return TextResource(uri=uri, name=outcome_id, mime_type=mime, text=data.decode("utf-8"))  # type: ignore[arg-type]
        except UnicodeDecodeError:
            pass
    return BinaryResource(uri=uri, name=outcome_id, mime_type=mime, data=data)  # type: ignore[arg-type]


def static_resources(state: ServerState) -> list[Resource]:
    """The resources without parameters, bound to `state` (in resources/list order)."""
    runs = FunctionResource(
        uri="matrix://runs",
        name="runs_resource",
        description="All runs with counts.",
        mime_type="application/json",
        fn=partial(runs_resource, state),
    )
    metrics = FunctionResource(
        uri="matrix://metrics",
        name="metrics_resource",
        description="System metrics over all runs.",
        mime_type="application/json",
        fn=partial(metrics_resource, state),
    )
    return [runs, metrics, *schema_resources(state.schema), *hook_resources(state)]


def add_templates(mcp: MCPServer[Any]) -> None:
    mcp.resource(
        "matrix://runs/{run}", mime_type="application/json", description="A run's status and packages."
    )(run_resource)
    mcp.resource(
        "matrix://runs/{run}/packages/{package}",
        mime_type="application/json",
        description="One package summary.",
    )(package_resource)
    mcp.resource(
        "matrix://outcomes/{outcome_id}", mime_type="application/json", description="An outcome record."
    )(outcome_resource)
    mcp.resource(
        CONTENT_URI,
        mime_type="application/octet-stream",
        description="The outcome's artifact, served with its own mime type.",
    )(content_resource)
    add_schema_templates(mcp)
