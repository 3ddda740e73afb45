"""The Matrix server's resources: runs, packages, outcomes and their content (with its own mime type), the
system metrics; the schema and webhook resources come from their tool modules. Each reads through the
server's state (`state.read` maps errors to protocol codes)."""

from __future__ import annotations

from functools import partial
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.resources import Resource
from mcp.server.mcpserver.resources.types import BinaryResource, TextResource
from mcp.shared.uri_template import UriTemplate

from matrix_mcp.mcp.spec import READ, ResourceSpec
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


# the resources, each with its scope (mcp/registry.py lists them; the HTTP scope gate reads them from there)
RUNS = ResourceSpec(
    uri="matrix://runs", name="runs_resource", description="All runs with counts.", scope=READ
)
METRICS = ResourceSpec(
    uri="matrix://metrics", name="metrics_resource", description="System metrics over all runs.", scope=READ
)
RUN = ResourceSpec(
    uri="matrix://runs/{run}", name="run_resource", description="A run's status and packages.", scope=READ
)
PACKAGE = ResourceSpec(
    uri="matrix://runs/{run}/packages/{package}",
    name="package_resource",
    description="One package summary.",
    scope=READ,
)
OUTCOME = ResourceSpec(
    uri="matrix://outcomes/{outcome_id}",
    name="outcome_resource",
    description="An outcome record.",
    scope=READ,
)
CONTENT = ResourceSpec(
    uri="matrix://outcomes/{outcome_id}/content",
    name="content_resource",
    description="The outcome's artifact, served with its own mime type.",
    mime_type="application/octet-stream",
    scope=READ,
)
CONTENT_TEMPLATE = UriTemplate.parse(CONTENT.uri)


async def content_resource(outcome_id: str, ctx: Context) -> TextResource | BinaryResource:
    s = state_of(ctx)
    return await outcome_content(s, outcome_id)


async def outcome_content(state: ServerState, outcome_id: str) -> TextResource | BinaryResource:
    """The outcome's artifact as a resource with its own mime type (text when it decodes as such)."""
    data, mime = await state.read(state.engine().outcome_content(outcome_id=outcome_id))
    uri = CONTENT.uri.replace("{outcome_id}", outcome_id)
    if mime.startswith("text/") or mime in ("application/json", "application/xml", "application/yaml"):
        try:
            return TextResource(uri=uri, name=outcome_id, mime_type=mime, text=data.decode("utf-8"))  # type: ignore[arg-type]
        except UnicodeDecodeError:
            pass
    return BinaryResource(uri=uri, name=outcome_id, mime_type=mime, data=data)  # type: ignore[arg-type]


TEMPLATES = (
    (RUN, run_resource),
    (PACKAGE, package_resource),
    (OUTCOME, outcome_resource),
    (CONTENT, content_resource),
)
SPECS = (RUNS, METRICS, RUN, PACKAGE, OUTCOME, CONTENT)


def static_resources(state: ServerState) -> list[Resource]:
    """The resources without parameters, bound to `state` (in resources/list order)."""
    return [
        RUNS.resource(partial(runs_resource, state)),
        METRICS.resource(partial(metrics_resource, state)),
        *schema_resources(state.schema),
        *hook_resources(state),
    ]


def add_templates(mcp: MCPServer[Any]) -> None:
    for spec, fn in TEMPLATES:
        mcp.resource(spec.uri, name=spec.name, description=spec.description, mime_type=spec.mime_type)(fn)
    add_schema_templates(mcp)
