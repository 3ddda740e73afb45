"""The tool registry: every tool the Matrix server serves, in `tools/list` order, each with all its facts.

A tool is written once, in `mcp/tools/<noun>.py`, with its `ToolSpec` (`mcp/spec.py`) in that module's
`SPECS`: its scope, the toolsets that list it, its REST endpoint, how the SDK registers it. Everything keyed by
tool name is derived from `TOOLS`: the scope map (`http/scopes.py`), the toolsets (`mcp/toolsets.py`) and the
REST endpoint table (`http/endpoints.py`). Adding a tool touches its tool module, the engine and a test.
"""

from __future__ import annotations

from matrix_mcp.mcp.spec import Endpoint, Scope, ToolSpec
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
