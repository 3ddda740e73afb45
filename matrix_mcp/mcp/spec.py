"""What a tool's spec says: the facts the MCP server, the HTTP scopes, the toolsets and the REST API read;
and what a resource's spec says: its URI, what resources/list shows, and its scope.

A `ToolSpec` is written once, beside its tool function in `mcp/tools/<noun>.py`; `mcp/registry.py` lists them
all, and every table keyed by tool name (`http/scopes.py` TOOL_SCOPES, `mcp/toolsets.py`,
`http/endpoints.py` ENDPOINTS) is derived from that list. A spec cannot leave its scope out, so no tool can
be unmapped. A `ResourceSpec` likewise sits beside its reader and is listed in the registry, which answers
each resource URI's scope (`registry.resource_scope`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Annotated, Any, Literal

from mcp.server.mcpserver.resources import FunctionResource
from mcp.shared.uri_template import UriTemplate
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
# claim_next (0..max, the engine says so) only enforced: the worker toolset's definitions stay within their budget (8 KiB)
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


@dataclass(frozen=True, kw_only=True)
class ResourceSpec:
    """A resource and its facts, written beside its reader. `uri`: the resource's URI, or a URI template
    ({names}) for a family of them. `name`, `title`, `description`, `mime_type`: what resources/list (or
    resources/templates/list) shows. `scope`: what an HTTP caller needs to read it, subscribe to it or see it
    listed; required, as a tool's is."""

    uri: str
    name: str
    description: str
    mime_type: str = "application/json"
    title: str | None = None
    scope: Scope

    def __post_init__(self) -> None:
        if self.scope not in ALL_SCOPES:
            raise ValueError(f"scope: unknown scope {self.scope!r} for resource {self.uri!r}")

    @cached_property
    def template(self) -> UriTemplate | None:
        """The URI template, for a family of resources; None for one resource."""
        return UriTemplate.parse(self.uri) if "{" in self.uri else None

    def matches(self, uri: str) -> bool:
        """Whether `uri` is this resource (or one of this template's)."""
        return uri == self.uri if self.template is None else self.template.match(uri) is not None

    def resource(self, fn: Callable[[], Any], **more: Any) -> FunctionResource:
        """The resource read by `fn` (a resource without parameters), as the SDK lists it."""
        return FunctionResource(
            uri=self.uri,
            name=self.name,
            title=self.title,
            description=self.description,
            mime_type=self.mime_type,
            fn=fn,
            **more,
        )
