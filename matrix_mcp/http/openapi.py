"""The OpenAPI 3.1 document of the REST API, generated from the tools it calls: each endpoint's
parameters and body are the tool's input schema, its answer the tool's output schema (the same pydantic
models the MCP surface advertises), so the two cannot drift apart."""

from __future__ import annotations

import copy
from typing import Any

from mcp.server import MCPServer

from matrix_mcp import __version__
from matrix_mcp.config import MAX_WAIT_SECONDS, Limits
from matrix_mcp.engine import MAX_SEQ
from matrix_mcp.engine.content import INLINE_MAX_BYTES
from matrix_mcp.http.endpoints import ENDPOINTS, PREFIX
from matrix_mcp.http.scopes import READ, tool_scope
from matrix_mcp.models import Event

ERROR_CODES = {
    "400": "Invalid argument; `field` names it.",
    "401": "Missing or invalid credential.",
    "403": "The credential lacks the scope (or a browser request lacks its CSRF token).",
    "404": "No such run, package or outcome.",
    "409": "Stale lease (re-claimed or expired) or a conflicting report.",
    "413": "The request body is larger than the service's bound.",
    "429": "Rate limited; see Retry-After.",
    "503": "Store unavailable or the server is starting; retry.",
}


# Arguments the engine checks as names (`Engine._name`): non-empty, not only white space, no NUL, at most
# MATRIX_MAX_NAME_LENGTH characters. The tools' own schemas leave that to the engine (the worker toolset's
# definitions are kept small); the document says it, so a client generated from it sends what is accepted.
NAME_ARGUMENTS = frozenset(
    {"run", "name", "outcome_type", "worker", "package", "outcome_id", "lease_token", "item", "action"}
    | {"integration_type", "status"}
)
NAME_PATTERN = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"


def _name_schema(schema: dict[str, Any], max_length: int) -> dict[str, Any]:
    """A string schema made a name's (other schemas unchanged)."""
    if schema.get("type") == "string" and "enum" not in schema and "format" not in schema:
        return {**schema, "minLength": 1, "maxLength": max_length, "pattern": NAME_PATTERN}
    if "anyOf" in schema:
        return {**schema, "anyOf": [_name_schema(s, max_length) for s in schema["anyOf"]]}
    return schema


# JSON arguments the engine checks (`Engine._json`): no NUL anywhere, in keys or strings
JSON_ARGUMENTS = frozenset({"metrics", "metadata", "specifications", "details", "outcome_schema"})
NO_NUL = "^[^\\u0000]*$"
JSON_VALUE = {
    "anyOf": [
        {"type": "string", "pattern": NO_NUL},
        {"type": ["number", "boolean", "null"]},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        },
    ]
}


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") == "object" and schema.get("additionalProperties", True) is True:
        rest = {k: v for k, v in schema.items() if k != "additionalProperties"}
        return {**rest, "propertyNames": {"pattern": NO_NUL}, "additionalProperties": JSON_VALUE}
    if "anyOf" in schema:
        return {**schema, "anyOf": [_json_schema(s) for s in schema["anyOf"]]}
    if schema == {} or set(schema) <= {"title", "description", "default"}:  # any JSON value
        return {**schema, **JSON_VALUE}
    return schema


BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def _names(
    node: Any,
    max_length: int,
    max_wait: float = MAX_WAIT_SECONDS,
    bounds: dict[str, int] | None = None,
    max_page: int = 1000,
) -> Any:
    """Every property named in NAME_ARGUMENTS, and a package's item names, as names; JSON arguments
    without NUL; waits and page sizes bounded as the server bounds them."""
    if isinstance(node, list):
        return [_names(n, max_length, max_wait, bounds, max_page) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _names(v, max_length, max_wait, bounds, max_page) for k, v in node.items()}
    props = out.get("properties")
    if isinstance(props, dict):
        for key, sub in props.items():
            if not isinstance(sub, dict):
                continue
            if key == "wait_seconds" and sub.get("type") == "number":
                props[key] = {**sub, "maximum": min(sub.get("maximum", max_wait), max_wait)}
            elif bounds and key in bounds and sub.get("type") == "integer":
                limit = min(sub.get("maximum", bounds[key]), bounds[key])
                props[key] = {**sub, "minimum": sub.get("minimum", 0), "maximum": limit}
            elif key == "max_bytes" and sub.get("type") == "integer":  # get_outcome's: the engine's bounds
                props[key] = {**sub, "minimum": 1, "maximum": INLINE_MAX_BYTES}
            elif key == "mime_type":
                props[key] = _media_schema(sub)
            elif key == "outcome_path":
                props[key] = _path_schema(sub)
            elif key == "leases" and sub.get("type") == "array":  # the engine: 1 to the page size
                props[key] = {**sub, "minItems": 1, "maxItems": max_page}
            elif key in JSON_ARGUMENTS:
                props[key] = _json_schema(sub)
            elif key in NAME_ARGUMENTS:
                props[key] = _name_schema(sub, max_length)
            elif key == "error" and sub.get("type") == "string":  # a failure's text: described, any length
                props[key] = {**sub, "minLength": 1, "pattern": "\\S"}
            elif key == "items" and isinstance(sub, dict) and isinstance(sub.get("items"), dict):
                props[key] = {**sub, "items": _name_schema(sub["items"], max_length)}
        if "content" in props and "content_encoding" in props:  # base64 content must decode
            out["if"] = {
                "properties": {"content_encoding": {"const": "base64"}},
                "required": ["content_encoding"],
            }
            out["then"] = {"properties": {"content": {"pattern": BASE64_PATTERN}}}
    return out


def _media_schema(schema: dict[str, Any]) -> dict[str, Any]:
    from matrix_mcp.engine import MAX_MEDIA_TYPE_LENGTH, MEDIA_TYPE_PATTERN

    if schema.get("type") == "string":
        return {**schema, "maxLength": MAX_MEDIA_TYPE_LENGTH, "pattern": f"^{MEDIA_TYPE_PATTERN}$"}
    if "anyOf" in schema:
        return {**schema, "anyOf": [_media_schema(s) for s in schema["anyOf"]]}
    return schema


# what `Artifacts.check_path` refuses outright (empty, NUL, backslash, absolute or `~`, `.` / `..`
# components); it also refuses reserved device names, the internal folders and over-long paths
OUTCOME_PATH_PATTERN = "^(?![/~])(?!(?:.*/)?\\.{1,2}(?:/|$))[^\\u0000\\\\]+$"


def _path_schema(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") == "string":
        return {**schema, "minLength": 1, "pattern": OUTCOME_PATH_PATTERN}
    if "anyOf" in schema:
        return {**schema, "anyOf": [_path_schema(s) for s in schema["anyOf"]]}
    return schema


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional argument's schema as a query parameter: absent is its null (`since=null` is no number)."""
    alternatives = schema.get("anyOf")
    if not isinstance(alternatives, list):
        return schema
    kept = [a for a in alternatives if a != {"type": "null"}]
    out = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    if len(kept) == 1:
        return {**out, **kept[0]}
    return {**out, "anyOf": kept}


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


def document(mcp: MCPServer[Any], limits: Limits | None = None) -> dict[str, Any]:
    """The REST API's OpenAPI document: the endpoints of `mcp`'s tools, with the bounds of `limits` (the
    server's settings; the defaults when not given)."""
    from matrix_mcp.sdk.compat import ToolServer

    if not isinstance(mcp, ToolServer):
        raise TypeError("the REST API's document describes a server built from a ToolSet")
    tools = mcp.tool_definitions()
    limits = limits or Limits()
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        tool = tools[ep.tool]
        bounds = mcp.toolset.bounds.get(ep.tool, {})
        inputs = components.hoist(
            _names(
                tool.parameters, limits.max_name_length, limits.max_wait_seconds, bounds, limits.max_page_size
            )
        )
        props: dict[str, Any] = inputs.get("properties", {})
        required = set(inputs.get("required", []))
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": props.get(name, _name_schema({"type": "string"}, limits.max_name_length)),
            }
            for name in ep.path_params
        ]
        parameters += [
            {"name": name, "in": "query", "required": name in required, "schema": _query_schema(props[name])}
            for name in ep.query
            if name in props
        ]
        result = {"application/json": {"schema": components.hoist(tool.output_schema or {})}}
        operation: dict[str, Any] = {
            "operationId": ep.tool,
            "summary": ep.summary,
            "description": f"{tool.description or ''}\n\nScope: `{tool_scope(ep.tool)}`. MCP tool: `{ep.tool}`.",
            "tags": [ep.path.split("/")[1]],
            "security": [{"bearer": []}, {"session": []}],
            "responses": {
                "200": {"description": "The tool's result.", "content": result},
                **{code: _error_response(text) for code, text in ERROR_CODES.items()},
            },
        }
        if ep.created:
            operation["responses"]["201"] = {
                "description": f"The tool's result, with `{ep.created}` true: a new resource.",
                "content": result,
            }
            operation["responses"]["200"]["description"] = f"The tool's result, with `{ep.created}` false."
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
                {
                    "name": "outcome_id",
                    "in": "path",
                    "required": True,
                    "schema": _name_schema({"type": "string"}, limits.max_name_length),
                }
            ],
            "responses": {
                "200": {"description": "The content bytes.", "content": {"*/*": {"schema": {}}}},
                **{c: _error_response(t) for c, t in ERROR_CODES.items() if c not in ("409",)},
            },
        }
    }
    event_schema = components.hoist(
        Event.model_json_schema(mode="serialization", ref_template="#/$defs/{model}")
    )
    components.schemas["Event"] = event_schema
    sse = {
        "description": "Server-sent events: `id` = event sequence, `data` = the Event as JSON (its `kind` says what happened).",
        # OpenAPI 3.1 has no itemSchema: for an event stream, `schema` describes each event
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "pattern": "^[0-9]+$"},
                        "event": {"type": "string", "enum": ["message"]},
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/Event"},
                        },
                        "retry": {"type": "integer", "minimum": 0},
                    },
                }
            }
        },
    }
    seq = {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}
    resume = [
        {"name": "since", "in": "query", "required": False, "schema": seq},
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": seq},
    ]
    for path, extra, summary in (
        (
            "/runs/{run}/events",
            [
                {
                    "name": "run",
                    "in": "path",
                    "required": True,
                    "schema": _name_schema({"type": "string"}, limits.max_name_length),
                }
            ],
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
    components.schemas["JsonValue"] = JSON_VALUE
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
