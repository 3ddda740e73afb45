"""The registry: every tool the Matrix server serves, in `tools/list` order, each with all its facts; and
every resource, each with its scope.

A tool is written once, in `mcp/tools/<noun>.py`, with its `ToolSpec` (`mcp/spec.py`) in that module's
`SPECS`: its scope, the toolsets that list it, its REST endpoint, how the SDK registers it. Everything keyed by
tool name is derived from `TOOLS`: the scope map (`http/scopes.py`), the toolsets (`mcp/toolsets.py`) and the
REST endpoint table (`http/endpoints.py`). Adding a tool touches its tool module, the engine and a test.

A resource is written beside its reader with its `ResourceSpec`; `RESOURCES` lists them and
`resource_scope` answers the scope of a URI (the HTTP scope gate's, for resources/read, subscribe and list).
"""

from __future__ import annotations

from matrix_mcp.apps import GRID
from matrix_mcp.mcp import resources
from matrix_mcp.mcp.spec import READ, Endpoint, ResourceSpec, Scope, ToolSpec
from matrix_mcp.mcp.tools import runs, schema, tracking, webhooks, work

# in tools/list order: planning, the worker loop, steering and watching, the tracking API; then the schema
# tools (they analyse the store, or MATRIX_SCHEMA_DATABASE_URL) and the webhook tools
TOOLS: tuple[ToolSpec, ...] = (
    *runs.SPECS[:1],  # plan_run
    *work.SPECS,
    *runs.SPECS[1:],
    *tracking.SPECS,
    *schema.SPECS,
    *webhooks.SPECS,
)
BY_NAME: dict[str, ToolSpec] = {spec.name: spec for spec in TOOLS}
if len(BY_NAME) != len(TOOLS):
    raise RuntimeError("two tools of the registry share a name")


def scopes() -> dict[str, Scope]:
    """Each tool's scope, by name (the HTTP scope map)."""
    return {spec.name: spec.scope for spec in TOOLS}


def endpoints() -> tuple[Endpoint, ...]:
    """The REST endpoints, in registry order (each names its tool)."""
    return tuple(spec.rest for spec in TOOLS if spec.rest is not None)


# every resource the server lists (resources/list) or serves by template (resources/templates/list)
RESOURCES: tuple[ResourceSpec, ...] = (*resources.SPECS, *schema.RESOURCES, *webhooks.RESOURCES, GRID)
_RESOURCE_SCOPES: dict[str, Scope] = {spec.uri: spec.scope for spec in RESOURCES if spec.template is None}
_TEMPLATES = tuple(spec for spec in RESOURCES if spec.template is not None)
if len({spec.uri for spec in RESOURCES}) != len(RESOURCES):
    raise RuntimeError("two resources of the registry share a URI")


def resource_scope(uri: str) -> Scope:
    """The scope reading, subscribing to or listing `uri` needs: its resource's, or its template's; READ
    for a URI no resource has (its read fails as not found)."""
    scope = _RESOURCE_SCOPES.get(uri)
    if scope is not None:
        return scope
    return next((spec.scope for spec in _TEMPLATES if spec.matches(uri)), READ)
