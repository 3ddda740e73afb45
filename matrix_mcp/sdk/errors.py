"""Tool errors as results a host passes to the model: hosts that read only `structuredContent` (Claude Code
and VS Code when a result has both) must see an error's text too. Every failed `tools/call` answers with
`isError`, structured content `{"error": <the one line>, "kind": <its class>, "field"?: <the argument>}`,
and that JSON serialized in its text block, as a successful result carries its own.

`kind` follows the error's type (`matrix_mcp.errors.kind_of`), the same codes the REST API answers with:
invalid_argument, not_found, conflict, stale_lease, unavailable, insufficient_scope, internal_error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import mcp_types as types
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from pydantic import ValidationError

from matrix_mcp.errors import MatrixError, kind_of

# The exception a tools/call raised, recorded where it is raised (ToolServer.call_tool) for the middleware
# that shapes the result (the SDK turns it into a text-only result in between).
raised: ContextVar[list[BaseException] | None] = ContextVar("matrix_tool_raised", default=None)


def record(exc: BaseException) -> None:
    """Remember `exc` as what the current tools/call raised (a no-op outside a tools/call)."""
    box = raised.get()
    if box is not None:
        box.append(exc)


def error_content(text: str, kind: str, field: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"error": text, "kind": kind}
    if field:
        data["field"] = field
    return data


def error_result(text: str, kind: str, field: str | None = None) -> types.CallToolResult:
    """A failed call's result: the structured error and its JSON as text."""
    data = error_content(text, kind, field)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=_dumps(data))], structured_content=data, is_error=True
    )


def describe(exc: BaseException | None, text: str) -> dict[str, Any]:
    """The structured error for what a call raised (`exc`, walked down its causes), saying `text` — or, for
    arguments the tool's model refused, the first refusal as one line `field: message`, as REST says it."""
    chain: list[BaseException] = []
    e = exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__
    for i, e in enumerate(chain):
        if isinstance(e, ValidationError):  # the SDK's text spans lines: one line naming the field instead
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "arguments"
            return error_content(f"{field}: {first['msg']}", "invalid_argument", field)
        if isinstance(e, MatrixError):
            # the tool's own ToolError just above it says the redacted, field-named line, as REST answers it
            # (the SDK's above that prefixes "Error executing tool <name>: ")
            above = chain[i - 1] if i > 0 and isinstance(chain[i - 1], ToolError) else None
            return error_content(str(above) if above is not None else text, kind_of(e), e.field)
    if exc is None or (isinstance(exc, ToolError) and not isinstance(exc, UnexpectedToolError)):
        head = text.split(":", 1)[0]  # the SDK's and the argument checks' own: `field: what is wrong`
        return error_content(text, "invalid_argument", head if ":" in text and " " not in head else None)
    return error_content(text, "internal_error")


class StructuredErrors:
    """Server middleware (outermost): a failed tools/call result without structured content gets it."""

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Any]) -> Any:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        box: list[BaseException] = []
        token = raised.set(box)
        try:
            result = await call_next(ctx)
        finally:
            raised.reset(token)
        return shaped(result, box[-1] if box else None)


def shaped(result: Any, exc: BaseException | None) -> Any:
    """`result` with structured content if it is an error without any (a model or its wire mapping)."""
    if isinstance(result, types.CallToolResult):
        if not result.is_error or result.structured_content is not None:
            return result
        data = describe(exc, _text(result.content))
        return result.model_copy(
            update={
                "structured_content": data,
                "content": [types.TextContent(type="text", text=_dumps(data))],
            }
        )
    if isinstance(result, dict) and result.get("isError") and result.get("structuredContent") is None:
        blocks = result.get("content") or []
        text = " ".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict))
        data = describe(exc, text)
        return {**result, "structuredContent": data, "content": [{"type": "text", "text": _dumps(data)}]}
    return result


def _text(blocks: list[Any]) -> str:
    return " ".join(getattr(b, "text", "") for b in blocks if getattr(b, "text", None))


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
