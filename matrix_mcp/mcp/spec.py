"""What a tool's spec says: the facts the MCP server, the HTTP scopes, the toolsets and the REST API read.

A `ToolSpec` is written once, beside its tool function in `mcp/tools/<noun>.py`; `mcp/registry.py` lists them
all, and every table keyed by tool name (`http/scopes.py` TOOL_SCOPES, `mcp/toolsets.py`,
`http/endpoints.py` ENDPOINTS) is derived from that list. A spec cannot leave its scope out, so no tool can
be unmapped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from pydantic import Field

from matrix_mcp.config import MAX_WAIT_SECONDS, Toolset
from matrix_mcp.sdk.compat import PAGE_BOUND, PAGE_BOUND_UNADVERTISED
from matrix_mcp.sdk.compat import ToolSpec as SdkToolSpec

Scope = Literal["matrix:read", "matrix:work", "matrix:plan", "matrix:admin"]
READ: Scope = "matrix:read"
WORK: Scope = "matrix:work"
PLAN: Scope = "matrix:plan"
ADMIN: Scope = "matrix:admin"
ALL_SCOPES: tuple[Scope, ...] = (READ, WORK, PLAN, ADMIN)

# the narrower toolsets that list a tool (`all` lists every tool)
WORKER: frozenset[Toolset] = frozenset({"worker"})
ORCHESTRATOR: frozenset[Toolset] = frozenset({"orchestrator"})
BOTH: frozenset[Toolset] = WORKER | ORCHESTRATOR

# argument types several tools share
Detail = Literal["compact", "full"]
# page sizes: at most the server's Limits.max_page_size (MATRIX_MAX_PAGE_SIZE), advertised and enforced;
# claim_next (0..max, the engine says so) only enforced: the worker toolset's definitions stay within their budget (6.5 KiB)
PageSize = Annotated[int, Field(ge=1), PAGE_BOUND]
ClaimNext = Annotated[int, PAGE_BOUND_UNADVERTISED]
# a long-poll: at most 50 s, under the 60 s request timeout many hosts keep; more is refused naming the field
WaitSeconds = Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS)]

_PATH_PARAM = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class Endpoint:
    """A tool's REST endpoint: `method` and `path` under /api/v1 ({names} in the path are tool arguments).
    `tool` is the tool's name, filled in by the `ToolSpec` that carries the endpoint."""

    method: str
    path: str
    summary: str
    query: tuple[str, ...] = ()  # tool arguments taken from the query string
    body: bool = False  # the remaining arguments come as a JSON object
    created: str | None = None  # the result's flag that says it made a new resource: 201, not 200
    tool: str = ""

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


@dataclass(frozen=True, kw_only=True)
class ToolSpec(SdkToolSpec):
    """A tool function and all its facts. `scope`: what an HTTP caller needs to see and call it. `toolsets`:
    the narrower `--toolset`s listing it (every tool is in `all`). `rest`: its REST endpoint, if any. The SDK
    side (`annotations`, `null_free`, `meta`) is `sdk.compat.ToolSpec`'s."""

    scope: Scope
    toolsets: frozenset[Toolset] = frozenset()
    rest: Endpoint | None = None

    def __post_init__(self) -> None:
        if self.scope not in ALL_SCOPES:
            raise ValueError(f"scope: unknown scope {self.scope!r} for tool {self.name!r}")
        if "all" in self.toolsets:
            raise ValueError(f"toolsets: every tool is in 'all'; name only narrower ones for {self.name!r}")
        if self.rest is not None:
            if self.rest.tool not in ("", self.name):
                raise ValueError(f"rest: endpoint of {self.rest.tool!r} given to tool {self.name!r}")
            object.__setattr__(self, "rest", replace(self.rest, tool=self.name))
