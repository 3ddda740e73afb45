"""The OpenAPI 3.1 document of the REST API, generated from the tools it calls: each endpoint's
parameters and body are the tool's input schema, its answer the tool's output schema (the same pydantic
models the MCP surface advertises), so the two cannot drift apart."""

from __future__ import annotations

import copy
from typing import Any

from mcp.server import MCPServer

from matrix_mcp import __version__
from matrix_mcp.http.rest import ENDPOINTS, PREFIX
from matrix_mcp.http.scopes import READ, tool_scope

ERROR_CODES = {
    "400": "Invalid argument; `field` names it.",
    "401": "Missing or invalid credential.",
    "403": "The credential lacks the scope (or a browser request lacks its CSRF token).",
    "404": "No such run, package or outcome.",
    "409": "Stale lease (re-claimed or expired) or a conflicting report.",
    "429": "Rate limited; see Retry-After.",
    "503": "Store unavailable or the server is starting; retry.",
}


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def hoist(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Move a schema's `$defs` into components/schemas (renamed on a clash) and point its refs there."""
        schema = copy.deepcopy(schema)
        defs: dict[str, Any] = schema.pop("$defs", {})
        names: dict[str, str] = {}
        for name, sub in defs.items():
            final = name
            n = 2
            while final in self.schemas and self.schemas[final] != sub:
                final = f"{name}{n}"
                n += 1
            names[name] = final
        rewritten = {names[k]: _rewrite(v, names) for k, v in defs.items()}
        self.schemas.update(rewritten)
        out: dict[str, Any] = _rewrite(schema, names)
        return out


def _rewrite(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, list):
        return [_rewrite(n, names) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
            out[k] = "#/components/schemas/" + names.get(v[8:], v[8:])
        else:
            out[k] = _rewrite(v, names)
    return out


def _error_response(text: str) -> dict[str, Any]:
    return {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def document(mcp: MCPServer[Any]) -> dict[str, Any]:
    from matrix_mcp.sdk_compat import ToolServer

    if not isinstance(mcp, ToolServer):
        raise TypeError("the REST API's document describes a server built from a ToolSet")
    tools = mcp.tool_definitions()
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        tool = tools[ep.tool]
        inputs = components.hoist(tool.parameters)
        props: dict[str, Any] = inputs.get("properties", {})
        required = set(inputs.get("required", []))
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": props.get(name, {"type": "string"})}
            for name in ep.path_params
        ]
        parameters += [
            {"name": name, "in": "query", "required": name in required, "schema": props[name]}
            for name in ep.query
            if name in props
        ]
        operation: dict[str, Any] = {
            "operationId": ep.tool,
            "summary": ep.summary,
            "description": f"{tool.description or ''}\n\nScope: `{tool_scope(ep.tool)}`. MCP tool: `{ep.tool}`.",
            "tags": [ep.path.split("/")[1]],
            "security": [{"bearer": []}, {"session": []}],
            "responses": {
                "200": {
                    "description": "The tool's result.",
                    "content": {"application/json": {"schema": components.hoist(tool.output_schema or {})}},
                },
                **{code: _error_response(text) for code, text in ERROR_CODES.items()},
            },
        }
        if parameters:
            operation["parameters"] = parameters
        if ep.body:
            taken = set(ep.path_params) | set(ep.query)
            body = {
                **{k: v for k, v in inputs.items() if k not in ("properties", "required")},
                "type": "object",
                "properties": {k: v for k, v in props.items() if k not in taken},
            }
            body_required = sorted(required - taken)
            if body_required:
                body["required"] = body_required
            operation["requestBody"] = {
                "required": bool(body_required),
                "content": {"application/json": {"schema": body}},
            }
        paths.setdefault(PREFIX + ep.path, {})[ep.method.lower()] = operation
    read_only = {
        "security": [{"bearer": []}, {"session": []}],
        "tags": ["outcomes"],
    }
    paths[PREFIX + "/outcomes/{outcome_id}/content"] = {
        "get": {
            **read_only,
            "operationId": "outcome_content",
            "summary": "The outcome's stored content, served with its mime type (as an attachment).",
            "description": f"Scope: `{READ}`.",
            "parameters": [
                {"name": "outcome_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {"description": "The content bytes.", "content": {"*/*": {"schema": {}}}},
                **{c: _error_response(t) for c, t in ERROR_CODES.items() if c not in ("409",)},
            },
        }
    }
    sse = {
        "description": "Server-sent events: `id` = event sequence, `data` = the Event as JSON (its `kind` says what happened).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    resume = [
        {"name": "since", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
        {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "schema": {"type": "integer", "minimum": 0},
        },
    ]
    for path, extra, summary in (
        (
            "/runs/{run}/events",
            [{"name": "run", "in": "path", "required": True, "schema": {"type": "string"}}],
            "One run's change feed.",
        ),
        ("/events", [], "Every run's change feed."),
    ):
        paths[PREFIX + path] = {
            "get": {
                **read_only,
                "tags": ["runs"],
                "operationId": "events_" + ("run" if extra else "all"),
                "summary": summary + " Resumes after Last-Event-ID (or ?since=); otherwise starts now.",
                "description": f"Scope: `{READ}`.",
                "parameters": extra + resume,
                "responses": {
                    "200": sse,
                    **{c: _error_response(t) for c, t in ERROR_CODES.items() if c != "409"},
                },
            }
        }
    components.schemas["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "string",
                "description": "invalid_argument, not_found, stale_lease, conflict, …",
            },
            "error_description": {"type": "string"},
            "field": {"type": "string", "description": "The argument at fault, when there is one."},
        },
        "required": ["error", "error_description"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Matrix MCP REST API",
            "version": __version__,
            "description": "The Matrix's tools over plain HTTP: the same engine calls, models, scopes and limits as /mcp.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (mtx_…) or a JWT."},
                "session": {"type": "apiKey", "in": "cookie", "name": "matrix_session"},
            },
        },
    }
