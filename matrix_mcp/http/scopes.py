"""Scopes and the one map from MCP requests to the scope each needs.

A caller sees in `tools/list` only the tools its scopes allow, and a call outside them is refused with
a tool error (or, for resources/prompts/completions, a JSON-RPC error) naming the missing scope. Each tool's
scope is written in its `ToolSpec` (`mcp/registry.py`), which cannot leave it out; a name no tool has (a call
to an unknown tool) needs `matrix:admin`. Each resource's scope is written in its `ResourceSpec`, listed in the
same registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError

from matrix_mcp.audit import current_principal, current_tool_access
from matrix_mcp.mcp import registry

# the scopes, re-exported: the HTTP side names them from here
from matrix_mcp.mcp.spec import ADMIN as ADMIN
from matrix_mcp.mcp.spec import ALL_SCOPES as ALL_SCOPES
from matrix_mcp.mcp.spec import PLAN as PLAN
from matrix_mcp.mcp.spec import READ as READ
from matrix_mcp.mcp.spec import WORK as WORK
from matrix_mcp.sdk.errors import error_result

# each tool's scope, from the tool registry (a tool cannot be registered without one)
TOOL_SCOPES: Mapping[str, str] = MappingProxyType(registry.scopes())
UNMAPPED_TOOL_SCOPE = ADMIN

# each resource's scope (to read, subscribe to, or see in resources/list), from the registry too
resource_scope = registry.resource_scope
_RESOURCE_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})

# every other request method needs READ, except these, which any authenticated caller may send
_UNSCOPED_METHODS = frozenset(
    {"initialize", "ping", "server/discover", "tools/list", "logging/setLevel", "notifications/initialized"}
)


def tool_scope(tool: str) -> str:
    return TOOL_SCOPES.get(tool, UNMAPPED_TOOL_SCOPE)


def required_scope(method: str, params: Any) -> str | None:
    """The scope a request needs; None for the handshake, pings, tools/list and notifications."""
    if method == "tools/call":
        name = params.get("name") if isinstance(params, dict) else None
        return tool_scope(name if isinstance(name, str) else "")
    if method in _RESOURCE_METHODS:
        uri = params.get("uri") if isinstance(params, dict) else None
        return resource_scope(str(uri))
    if method in _UNSCOPED_METHODS or method.startswith("notifications/"):
        return None
    return READ


def parse_scopes(values: Iterable[str], field: str = "scope") -> tuple[str, ...]:
    """Accept `read` or `matrix:read`; refuse anything else naming the field."""
    out: list[str] = []
    for raw in values:
        for part in raw.replace(",", " ").split():
            scope = part if part.startswith("matrix:") else f"matrix:{part}"
            if scope not in ALL_SCOPES:
                raise ValueError(f"{field}: unknown scope {part!r}; use one of read, work, plan, admin")
            if scope not in out:
                out.append(scope)
    if not out:
        raise ValueError(f"{field}: give at least one scope (read, work, plan, admin)")
    return tuple(out)


def caller(ctx: ServerRequestContext[Any, Any]) -> tuple[str, frozenset[str]] | None:
    """(principal, scopes) of the HTTP request that carried this message; None when unauthenticated."""
    request = ctx.request
    scope = getattr(request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else None
    token = getattr(user, "access_token", None)
    if token is None:
        return None
    return str(token.client_id), frozenset(token.scopes)


class ScopeGate:
    """Server middleware: refuses requests outside the caller's scopes, filters `tools/list`, and makes
    the principal and the tools it may call known to the code below (`current_principal`,
    `current_tool_access`) while the request runs."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        who = caller(ctx)
        if who is None:  # not reached behind the SDK's RequireAuthMiddleware; stdio never installs this
            return await call_next(ctx)
        principal, scopes = who
        needed = required_scope(ctx.method, ctx.params)
        if needed is not None and needed not in scopes:
            text = f"insufficient_scope: {_what(ctx)} needs {needed}; this credential has {_list(scopes)}"
            if ctx.method == "tools/call":
                return error_result(text, "insufficient_scope")
            raise MCPError(code=types.INVALID_REQUEST, message=text)
        token = current_principal.set(principal)
        access = current_tool_access.set(lambda tool: tool_scope(tool) in scopes)
        try:
            result = await call_next(ctx)
        finally:
            current_tool_access.reset(access)
            current_principal.reset(token)
        if ctx.method == "tools/list":
            return _filter_tools(result, scopes)
        if ctx.method == "resources/list":
            return _filter_resources(result, scopes)
        return result


def _filter_tools(result: HandlerResult, scopes: frozenset[str]) -> HandlerResult:
    if isinstance(result, types.ListToolsResult):
        return result.model_copy(update={"tools": [t for t in result.tools if tool_scope(t.name) in scopes]})
    if isinstance(result, dict) and isinstance(result.get("tools"), list):
        return {**result, "tools": [t for t in result["tools"] if tool_scope(str(t.get("name"))) in scopes]}
    return result


def _filter_resources(result: HandlerResult, scopes: frozenset[str]) -> HandlerResult:
    def allowed(uri: object) -> bool:
        return resource_scope(str(uri)) in scopes

    if isinstance(result, types.ListResourcesResult):
        return result.model_copy(update={"resources": [r for r in result.resources if allowed(r.uri)]})
    if isinstance(result, dict) and isinstance(result.get("resources"), list):
        return {**result, "resources": [r for r in result["resources"] if allowed(r.get("uri"))]}
    return result


def _what(ctx: ServerRequestContext[Any, Any]) -> str:
    if ctx.method == "tools/call" and isinstance(ctx.params, dict):
        return f"tool {ctx.params.get('name')!r}"
    if ctx.method in _RESOURCE_METHODS and isinstance(ctx.params, dict):
        return f"{ctx.method} of {str(ctx.params.get('uri'))[:200]!r}"
    return ctx.method


def _list(scopes: frozenset[str]) -> str:
    return ", ".join(sorted(scopes)) or "no scopes"
