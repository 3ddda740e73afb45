"""Which tools a connection lists: `--toolset worker|orchestrator|all` (env MATRIX_TOOLSET).

A worker agent pays for every tool definition in its context on every turn; its connection needs only the
work loop. Each tool's `ToolSpec.toolsets` names the narrower toolsets listing it (`mcp/registry.py`); the
sets below are derived from it and applied once when the server is built (`in_toolset` chooses the tools it
is built with), so other filters (such as an HTTP caller's scopes) compose with it by name.
"""

from __future__ import annotations

from matrix_mcp.config import Toolset
from matrix_mcp.mcp.registry import TOOLS

WORKER_TOOLS = frozenset(spec.name for spec in TOOLS if "worker" in spec.toolsets)
ORCHESTRATOR_TOOLS = frozenset(spec.name for spec in TOOLS if "orchestrator" in spec.toolsets)


def in_toolset(toolset: Toolset, tool: str) -> bool:
    """Whether `tool` is listed (and callable) on a connection with this toolset."""
    if toolset == "worker":
        return tool in WORKER_TOOLS
    if toolset == "orchestrator":
        return tool in ORCHESTRATOR_TOOLS
    return True
