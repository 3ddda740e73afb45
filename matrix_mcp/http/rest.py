"""The seed's REST API under /api/v1/, beside /mcp.

Each endpoint is an MCP tool reached over plain HTTP: its arguments come from the path, the query
string and a JSON body, and go through `MCPServer.call_tool` — the tool's own argument model (bounds,
unknown arguments refused, text kept verbatim), the same engine call, the same result model. The scope
an endpoint needs is the tool's, from the one scope map. Errors keep their class: 400 naming the field,
404, 409 (stale lease, conflict), 403 (scope), 401, 429 (the guard's rate limiter), 503 (retryable).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from matrix_mcp.app import App
from matrix_mcp.audit import current_principal
from matrix_mcp.engine import MAX_SEQ, MEDIA_TYPE_ERROR, MEDIA_TYPE_PATTERN, Engine, json_depth
from matrix_mcp.errors import (
    Conflict,
    InputError,
    MatrixError,
    NotFound,
    StaleLease,
    Unavailable,
)
from matrix_mcp.http.access import Caller, Identify
from matrix_mcp.http.endpoints import ENDPOINTS, PREFIX, Endpoint
from matrix_mcp.http.paths import param, params
from matrix_mcp.http.scopes import READ, tool_scope

log = logging.getLogger("matrix_mcp.http.rest")

SSE_BATCH = 500
SSE_KEEPALIVE_SECONDS = 10.0
RECHECK_SECONDS = 5.0
BODY_DEPTH_SLACK = 8


@dataclass
class ApiError(Exception):
    status: int
    code: str
    message: str
    field: str | None = None
    headers: dict[str, str] | None = None

    def response(self) -> Response:
        body: dict[str, Any] = {"error": self.code, "error_description": self.message}
        if self.field:
            body["field"] = self.field
        return json_response(body, self.status, self.headers)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


# Each error type's status and code, the most specific first (a StaleLease is also a Conflict). An error
# is answered by its type, never by its message text: a message may say anything.
ERROR_ANSWERS: tuple[tuple[type[MatrixError], int, str], ...] = (
    (Unavailable, 503, "unavailable"),
    (StaleLease, 409, "stale_lease"),
    (Conflict, 409, "conflict"),
    (NotFound, 404, "not_found"),
    (InputError, 400, "invalid_argument"),
    (MatrixError, 400, "invalid_argument"),  # any other refusal: an artifact that cannot be written...
)


def answer(error: MatrixError, message: str) -> ApiError:
    """The HTTP answer for `error` (by its type), saying `message`."""
    status, code = next((s, c) for kind, s, c in ERROR_ANSWERS if isinstance(error, kind))
    headers = {"Retry-After": "1"} if status == 503 else None
    return ApiError(status, code, message, error.field, headers)


def classify(exc: BaseException) -> ApiError:
    """The HTTP answer for what a tool call raised (walking the chain the SDK and our tools build)."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__
    for i, e in enumerate(chain):
        if isinstance(e, ValidationError):
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            return ApiError(400, "invalid_argument", f"{field}: {first['msg']}", field)
        if isinstance(e, MatrixError):
            # the tool's own ToolError (just above it) carries the redacted, field-named text
            above = chain[i - 1] if i > 0 and isinstance(chain[i - 1], ToolError) else None
            return answer(e, str(above) if above is not None else (f"{e.field}: {e}" if e.field else str(e)))
    last = chain[-1]
    if isinstance(last, ToolError):  # the SDK's own (an unknown tool, arguments its schema refuses)
        text = str(last)
        head = text.split(":", 1)[0]
        return ApiError(400, "invalid_argument", text, head if ":" in text and " " not in head else None)
    log.error("REST call failed", exc_info=exc)
    return ApiError(500, "internal_error", "internal error; see the server log")


class Rest:
    """The REST handlers over one MCP server and its App: each endpoint calls the server's tool; what is not
    a tool (an outcome's content, the event stream) calls the App's engine."""

    def __init__(
        self,
        mcp: MCPServer[Any],
        identify: Identify,
        app: App,
        max_body_bytes: int,
    ) -> None:
        self.mcp = mcp
        self.identify = identify
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._contracts: dict[tuple[str, str], Contract] | None = None

    async def authorize(self, request: Request, scope: str, what: str) -> Caller:
        caller = await self.identify(request)
        if caller is None:
            raise ApiError(
                401,
                "invalid_token",
                "a valid API key or JWT is required (Authorization: Bearer …)",
                headers={"WWW-Authenticate": 'Bearer realm="matrix", error="invalid_token"'},
            )
        if scope not in caller.scopes:
            have = ", ".join(sorted(caller.scopes)) or "no scopes"
            raise ApiError(
                403,
                "insufficient_scope",
                f"insufficient_scope: {what} needs {scope}; this credential has {have}",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
            )
        refusal = self.identify.csrf_refusal(request, caller)
        if refusal is not None:
            raise ApiError(403, "csrf", refusal, "x-csrf-token")
        return caller

    def handler(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        what = f"{endpoint.method} {PREFIX}{endpoint.path}"

        async def handle(request: Request) -> Response:
            try:
                caller = await self.authorize(request, tool_scope(endpoint.tool), what)
                arguments = await self._arguments(request, endpoint)
                return await self.call(endpoint.tool, arguments, caller, endpoint.created)
            except ApiError as err:
                return err.response()

        return handle

    async def call(
        self, tool: str, arguments: dict[str, Any], caller: Caller, created: str | None = None
    ) -> Response:
        """Call `tool` as `caller`; the answer is its structured result, 201 when the result's `created`
        flag is true."""
        token = current_principal.set(caller.principal)
        try:
            result = await self.mcp.call_tool(tool, arguments)
        except Exception as exc:
            raise classify(exc) from exc
        finally:
            current_principal.reset(token)
        structured = getattr(result, "structured_content", None)
        if getattr(result, "is_error", False) or structured is None:
            raise ApiError(500, "internal_error", "the tool returned no result")
        return json_response(structured, 201 if created and structured.get(created) is True else 200)

    def _contract(self, endpoint: Endpoint) -> Contract:
        """The endpoint's parameters and body as the OpenAPI document states them (built once)."""
        if self._contracts is None:
            from matrix_mcp.http.openapi import document

            self._contracts = contracts(document(self.mcp, self.app.settings.limits))
        return self._contracts[endpoint.method, PREFIX + endpoint.path]

    async def _arguments(self, request: Request, endpoint: Endpoint) -> dict[str, Any]:
        contract = self._contract(endpoint)
        arguments: dict[str, Any] = params(request)
        for name, value in arguments.items():
            contract.check_parameter(name, value)
        for name, value in request.query_params.multi_items():
            if name not in endpoint.query:
                allowed = ", ".join(endpoint.query) or "none"
                raise ApiError(
                    400, "invalid_argument", f"{name}: unknown query parameter; takes {allowed}", name
                )
            if name in arguments:
                raise ApiError(400, "invalid_argument", f"{name}: given more than once", name)
            arguments[name] = contract.check_parameter(name, value)
        if endpoint.body:
            raw = await read_body(request, self.max_body_bytes)
            if raw.strip():
                depth = self._max_depth()
                try:
                    body = json.loads(raw)
                except RecursionError as exc:  # the parser's own bound (about 1,000 levels)
                    raise ApiError(
                        400, "invalid_argument", f"body: nested deeper than {depth} levels", "body"
                    ) from exc
                except ValueError as exc:
                    raise ApiError(400, "invalid_argument", f"body: not valid JSON ({exc})", "body") from exc
                if not isinstance(body, dict):
                    raise ApiError(400, "invalid_argument", "body: must be a JSON object", "body")
                for name, value in body.items():
                    if json_depth(value, depth) > depth:  # before validation walks it recursively
                        raise ApiError(
                            400, "invalid_argument", f"{name}: nested deeper than {depth} levels", name
                        )
                for name in body:
                    if name in arguments:
                        raise ApiError(
                            400, "invalid_argument", f"{name}: given in the path or query; omit it", name
                        )
                contract.check_body(body)
                arguments.update(body)
        return arguments

    def _max_depth(self) -> int:
        """How deep an argument of a JSON body may nest: the engine's JSON depth cap (MATRIX_MAX_JSON_DEPTH,
        which it checks per field) plus room for the structure around such a field (a plan's
        packages[].items[].specifications)."""
        return self.app.settings.limits.max_json_depth + BODY_DEPTH_SLACK

    # ---- not tools: an outcome's content, and the event stream -----------------------------------

    async def content(self, request: Request) -> Response:
        try:
            await self.authorize(request, READ, "GET /api/v1/outcomes/{outcome_id}/content")
            try:
                engine = self.app.engine
                data, mime = await engine.outcome_content(param(request, "outcome_id"))
            except MatrixError as exc:  # Unavailable while starting; NotFound without stored content
                raise classify(exc) from exc
        except ApiError as err:
            return err.response()
        # untrusted bytes: never rendered by a browser as a page of this origin
        return Response(
            data,
            media_type=mime,
            headers={
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "sandbox; default-src 'none'",
                "Content-Disposition": "attachment",
                "Cache-Control": "no-store",
            },
        )

    async def events(self, request: Request) -> Response:
        """`text/event-stream` of the store's event log (one run, or all): `data` is the Event as JSON and
        `id` its sequence number,
        so a reconnecting EventSource resumes after `Last-Event-ID`; `?since=S` starts after S; without
        either the stream starts at the present."""
        try:
            await self.authorize(request, READ, "GET /api/v1/runs/{run}/events")
            try:
                engine = self.app.engine
                run_id = None
                if "run" in request.path_params:
                    run_id = (await engine.run_info(param(request, "run"))).id
                since = _since(request)
                if since is None:
                    since = await engine.latest_seq()
            except MatrixError as exc:  # Unavailable while starting; NotFound for a run
                raise classify(exc) from exc
        except ApiError as err:
            return err.response()

        async def allowed() -> bool:
            caller = await self.identify(request, again=True)
            return caller is not None and READ in caller.scopes

        return StreamingResponse(
            event_stream(engine, run_id, since, allowed),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


def _by_method(
    handlers: dict[str, Callable[[Request], Awaitable[Response]]],
) -> Callable[[Request], Awaitable[Response]]:
    async def dispatch(request: Request) -> Response:
        # the router admitted only these methods (and HEAD for GET, answered like GET without a body)
        return await handlers.get(request.method, handlers.get("GET", _no_method))(request)

    return dispatch


async def _no_method(request: Request) -> Response:
    return Response(status_code=405)


class Contract:
    """One operation of the OpenAPI document, enforced: what the document refuses is a 400 naming the field
    (never echoing the value: it may be a lease token), so the document and the server cannot disagree."""

    def __init__(self, parameters: dict[str, Any], body: Any) -> None:
        self.parameters = parameters  # name -> validator of its (coerced) value
        self.body = body  # validator of the JSON body, or None

    def check_parameter(self, name: str, raw: str) -> Any:
        validator = self.parameters.get(name)
        if validator is None:
            return raw
        value = _coerce(raw, validator.schema)
        if value is _INVALID:
            raise ApiError(400, "invalid_argument", f"{name}: {_expected(validator.schema)}", name)
        for error in validator.iter_errors(value):
            raise ApiError(400, "invalid_argument", f"{name}: {_explain(error)}", name)
        return value

    def check_body(self, body: dict[str, Any]) -> None:
        if self.body is None:
            return
        error = min(self.body.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)), default=None)
        if error is None:
            return
        field = _field(error)
        raise ApiError(
            400, "invalid_argument", f"{field}: {_explain(error)}", field.split(".")[0].split("[")[0]
        )


_INVALID = object()


def contracts(doc: dict[str, Any]) -> dict[tuple[str, str], Contract]:
    from jsonschema import Draft202012Validator

    components = doc.get("components", {})
    out: dict[tuple[str, str], Contract] = {}

    def validator(schema: dict[str, Any]) -> Any:
        return Draft202012Validator({**schema, "components": components})

    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            parameters = {
                p["name"]: validator(p["schema"]) for p in op.get("parameters", ()) if "schema" in p
            }
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            out[method.upper(), path] = Contract(parameters, None if body is None else validator(body))
    return out


def _coerce(raw: str, schema: dict[str, Any]) -> Any:
    """A query or path value as the JSON its schema describes (integer, number, boolean or string)."""
    kinds = [schema.get("type")] + [a.get("type") for a in schema.get("anyOf", ())]
    if "integer" in kinds:
        return int(raw) if re.fullmatch(r"-?[0-9]+", raw) else _INVALID
    if "number" in kinds:
        if not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", raw):
            return _INVALID
        return float(raw)
    if "boolean" in kinds:
        return {"true": True, "false": False}.get(raw, _INVALID)
    return raw


def _expected(schema: dict[str, Any]) -> str:
    kinds = [schema.get("type")] + [a.get("type") for a in schema.get("anyOf", ())]
    for kind, text in (("integer", "a whole number"), ("number", "a number"), ("boolean", "true or false")):
        if kind in kinds:
            return f"must be {text}"
    return "is not valid here"


def _field(error: Any) -> str:
    """The field at fault as the engine names fields: `packages[0].items[1]`, the argument for a missing or
    unknown one."""
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    if error.validator == "required" and error.validator_value:
        missing = [
            n for n in error.validator_value if isinstance(error.instance, dict) and n not in error.instance
        ]
        if missing:
            return f"{text}.{missing[0]}" if text else missing[0]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            return f"{text}.{extra[0]}" if text else extra[0]
    return text or "body"


_TYPES = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "object": "an object",
    "array": "a list",
    "null": "null",
}


def _explain(error: Any) -> str:
    """What the document requires, in words, without the value given."""
    kind, value = error.validator, error.validator_value
    if kind in ("pattern", "maxLength") and str(error.schema.get("pattern", "")) == f"^{MEDIA_TYPE_PATTERN}$":
        return MEDIA_TYPE_ERROR  # the engine's words: MCP and REST refuse a mime_type alike
    if kind == "type":
        names = [str(k) for k in (value if isinstance(value, list) else [value])]
        return "must be " + " or ".join(_TYPES.get(k, k) for k in names)
    if kind in ("anyOf", "oneOf"):
        kinds = [str(s.get("type")) for s in value if isinstance(s, dict) and "type" in s]
        return (
            "must be " + " or ".join(_TYPES.get(k, str(k)) for k in kinds) if kinds else "is not valid here"
        )
    if kind == "minLength":
        return "must not be empty" if value == 1 else f"must be at least {value} characters"
    if kind == "maxLength":
        return f"longer than {value} characters"
    if kind == "pattern":
        return (
            "must hold something besides white space, and no NUL characters"
            if value.startswith("^[^")
            else "has a form that is not allowed"
        )
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        sign = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<"}[kind]
        return f"must be {sign} {value}"
    if kind in ("minItems", "maxItems"):
        return f"needs at least {value} entries" if kind == "minItems" else f"at most {value} entries"
    if kind == "enum":
        return "must be one of " + ", ".join(map(str, value))
    if kind == "const":
        return f"must be {value}"
    if kind == "required":
        return "is required"
    if kind == "additionalProperties":
        return "unknown argument"
    return f"is not valid here ({kind})"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (before reading it all)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"body: larger than {limit} bytes", "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"body: larger than {limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def _since(request: Request) -> int | None:
    for name, raw in (
        ("Last-Event-ID", request.headers.get("last-event-id")),
        ("since", request.query_params.get("since")),
    ):
        if raw is None or raw == "":
            continue
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if not 0 <= value <= MAX_SEQ:
            raise ApiError(
                400, "invalid_argument", f"{name}: must be an event sequence number from 0 to {MAX_SEQ}", name
            )
        return value
    extra = [k for k in request.query_params if k != "since"]
    if extra:
        raise ApiError(400, "invalid_argument", f"{extra[0]}: unknown query parameter; takes since", extra[0])
    return None


async def event_stream(
    engine: Engine, run_id: str | None, since: int, allowed: Callable[[], Awaitable[bool]] | None = None
) -> AsyncIterator[bytes]:
    """Events after `since`, then each new one as it is committed. `allowed` is asked again every
    RECHECK_SECONDS: a revoked key or an expired token ends the stream."""
    yield b"retry: 1000\n\n"
    last = since
    checked = time.monotonic()
    while True:
        if allowed is not None and time.monotonic() - checked > RECHECK_SECONDS:
            if not await allowed():
                return
            checked = time.monotonic()
        head = await engine.latest_seq()
        events = await engine.events(since=last, run=run_id, limit=SSE_BATCH)
        if events:
            chunk = []
            for event in events:
                data = json.dumps(event.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))
                # no `event:` line: every event is a "message" to an EventSource; `kind` is in the data
                chunk.append(f"id: {event.seq}\ndata: {data}\n\n")
                last = event.seq
            yield "".join(chunk).encode()
            if len(events) == SSE_BATCH:
                continue
        latest = await engine.wait_for_change(max(head, last), timeout=SSE_KEEPALIVE_SECONDS)
        if latest <= max(head, last):
            yield b": keep-alive\n\n"


def mount_rest(mcp: MCPServer[Any], rest: Rest) -> None:
    def route(path: str, method: str, handler: Callable[[Request], Awaitable[Response]]) -> None:
        mcp.custom_route(PREFIX + path, methods=[method])(rest.identify.hosted(handler))

    # one route per path holding all its methods: another method is a 405 whose Allow lists them all
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for endpoint in ENDPOINTS:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = rest.handler(endpoint)
    for path, handlers in by_path.items():
        mcp.custom_route(PREFIX + path, methods=list(handlers))(rest.identify.hosted(_by_method(handlers)))
    route("/outcomes/{outcome_id}/content", "GET", rest.content)
    route("/runs/{run}/events", "GET", rest.events)
    route("/events", "GET", rest.events)

    async def openapi(request: Request) -> Response:
        from matrix_mcp.http.openapi import document

        return json_response(document(mcp, rest.app.settings.limits))

    route("/openapi.json", "GET", openapi)
