"""Which tools a connection lists: `--toolset worker|orchestrator|all` (env MATRIX_TOOLSET).

A worker agent pays for every tool definition in its context on every turn; its connection needs only the
work loop. One mapping, applied once when the server is built (`in_toolset` chooses the tools it is built
with), so other filters (such as an HTTP caller's scopes) compose with it by name.
"""

from __future__ import annotations

from typing import Literal

Toolset = Literal["worker", "orchestrator", "all"]
TOOLSET_NAMES: tuple[Toolset, ...] = ("worker", "orchestrator", "all")

WORKER_TOOLS = frozenset({"claim_items", "complete_item", "fail_item", "heartbeat", "get_outcome"})
ORCHESTRATOR_TOOLS = frozenset(
    {
        # planning and control
        "plan_run",
        "retry_items",
        "control_run",
        # status
        "list_runs",
        "run_status",
        "list_outcomes",
        "get_outcome",
        "package_summary",
        "system_metrics",
        "export_outcomes",
        # the seed's tracking API
        "record_outcome",
        "update_outcome_status",
        "record_integration_event",
        # schema analysis of the store
        "analyze_schema",
        "generate_table_ddl",
        "find_relationships",
        "generate_api_schema",
    }
)


def in_toolset(toolset: Toolset, tool: str) -> bool:
    """Whether `tool` is listed (and callable) on a connection with this toolset."""
    if toolset == "worker":
        return tool in WORKER_TOOLS
    if toolset == "orchestrator":
        return tool in ORCHESTRATOR_TOOLS
    return True


def parse_toolset(value: str, source: str) -> Toolset:
    """`value` as a toolset; the ValueError names `source` (the flag or variable it came from)."""
    for name in TOOLSET_NAMES:
        if value == name:
            return name
    raise ValueError(f"{source} must be one of {', '.join(TOOLSET_NAMES)}, got {value!r}")
