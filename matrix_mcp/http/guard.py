"""The service's outermost ASGI layer, `Guard`: requests in progress, rate limits, failed-authentication
limits, body size and deadline, and response counts, in front of /mcp and the routes beside it (REST, the
dashboard). It answers what it refuses itself (401 for a bearer token not accepted, 413, 429, 503), each
as one JSON object naming the error.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.auth.provider import TokenVerifier
from starlette.types import ASGIApp, Receive, Scope, Send

from matrix_mcp.http.access import ACCESS_KEY, SIGNIN_MAX_BYTES, SIGNIN_PATH
from matrix_mcp.http.metrics import Metrics
from matrix_mcp.http.ratelimit import BodyTooLarge, RateLimits, read_body, replay

MCP_PATH = "/mcp"
UNGUARDED = frozenset({"/healthz", "/readyz", "/metrics"})
ROUTES_BESIDE = ("/api/", "/ui/")  # REST and the dashboard: rate-limited per principal like /mcp


REJECTED_TOKEN = "the bearer token was not accepted (unknown, revoked or expired)"


def rejected_challenge(resource_metadata: object) -> bytes:
    """The WWW-Authenticate value for /mcp when a bearer token was given but not accepted: the SDK's shape
    for a missing one (error, error_description, resource_metadata), with its own description — which
    says nothing of which keys exist."""
    return (
        f'Bearer error="invalid_token", error_description="{REJECTED_TOKEN}", '
        f'resource_metadata="{resource_metadata}"'
    ).encode()


class Guard:
    """Outermost ASGI layer: requests in progress (all but the health checks) up to `max_requests`,
    rate limits (per principal, or per address when open / unauthenticated), failed-authentication limit
    per address, body size and deadline, response counts by code.

    A body is read only once the request may have it: with a verified credential (or on an open
    service), to /mcp or the routes beside it. A request beside /mcp that brings no credential is
    answered 401 before its body is read, except the sign-in form, whose body is capped at
    `SIGNIN_MAX_BYTES`; /mcp without a token is the SDK's 401 and with a token not accepted this guard's
    (a distinct description), its body unread either way; other paths are
    not read at all (they are 404, 405 or the metadata's GET)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TokenVerifier | None,
        limits: RateLimits | None,
        metrics: Metrics,
        body_timeout: float,
        max_body_bytes: int,
        routes_token: Callable[[Scope], Awaitable[str | None]] | None = None,
        max_requests: int | None = None,
        rejected: bytes | None = None,
    ) -> None:
        self.app = app
        self.rejected = rejected  # /mcp's challenge for a token given but not accepted
        self.max_body_bytes = max_body_bytes
        self.routes_token = routes_token
        self.verifier = verifier
        self.limits = limits
        self.metrics = metrics
        self.body_timeout = body_timeout
        self.max_requests = max_requests
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        counter = self.metrics.http_requests

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                counter.labels(str(message["status"])).inc()
            await send(message)

        path: str = scope["path"]
        if self.routes_token is not None and path.startswith(ROUTES_BESIDE):
            from matrix_mcp.http.paths import keep_escaped

            keep_escaped(scope)  # a name holding `/` stays one path parameter
            path = scope["path"]
        if path in UNGUARDED:  # answered however busy the service is
            await self.app(scope, receive, counted)
            return
        if self.max_requests is not None and self.in_progress >= self.max_requests:
            await _answer(
                counted, 503, "unavailable", "too many requests in progress", retry_after=1, close=True
            )
            return
        self.in_progress += 1
        try:
            await self._guarded(scope, receive, counted, path)
        finally:
            self.in_progress -= 1

    async def _guarded(self, scope: Scope, receive: Receive, counted: Send, path: str) -> None:
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        key = f"address:{address}"
        beside = self.routes_token is not None and path.startswith(ROUTES_BESIDE)
        body_limit = self.max_body_bytes
        if self.verifier is not None and (path == MCP_PATH or beside):
            if self.limits is not None:
                blocked = await self.limits.auth_blocked(address)
                if not blocked.allowed:
                    await self._too_many(counted, blocked.retry_after, "too many failed authentications")
                    return
            token = await self.routes_token(scope) if beside and self.routes_token else _bearer(scope)
            access = await self.verifier.verify_token(token) if token else None
            if access is None and (token or not beside):
                # /mcp: the SDK answers a missing token 401 with WWW-Authenticate, and this guard a token
                # not accepted (in the same shape, told apart); beside it, the route answers; none reads
                # the body
                self.metrics.auth_failures.inc()
                if self.limits is not None:
                    await self.limits.auth_failed(address)
                if token and not beside and self.rejected is not None:
                    await _answer(
                        counted,
                        401,
                        "invalid_token",
                        REJECTED_TOKEN,
                        close=_has_body(scope),
                        extra=[(b"www-authenticate", self.rejected)],
                    )
                    return
                await self.app(scope, receive, counted)
                return
            if access is not None:
                scope[ACCESS_KEY] = access  # verified once: the routes beside /mcp read it here
                key = f"principal:{access.client_id}"
            elif path == SIGNIN_PATH:
                body_limit = SIGNIN_MAX_BYTES  # a key or a JWT, form-encoded
            elif _has_body(scope):
                await _answer(
                    counted,
                    401,
                    "invalid_token",
                    "a valid API key or JWT is required (Authorization: Bearer …)",
                    close=True,
                    extra=[(b"www-authenticate", b'Bearer realm="matrix", error="invalid_token"')],
                )
                return
        if self.limits is not None:
            verdict = await self.limits.hit(key)
            if not verdict.allowed:
                await self._too_many(counted, verdict.retry_after, "rate limit exceeded")
                return
        if path != MCP_PATH and not beside:
            await self.app(scope, receive, counted)  # no route here reads a body: leave it unread
            return
        if _declared_length(scope) > body_limit:
            await _answer(counted, 413, "request_too_large", "the request body is too large", close=True)
            return
        try:
            body = await read_body(receive, self.body_timeout, body_limit)
        except BodyTooLarge:
            await _answer(counted, 413, "request_too_large", "the request body is too large", close=True)
            return
        if body is None:
            await _answer(
                counted, 408, "request_timeout", "the request body did not arrive in time", close=True
            )
            return
        await self.app(scope, replay(body, receive), counted)

    async def _too_many(self, send: Send, retry_after: int, why: str) -> None:
        self.metrics.rate_limited.inc()
        await _answer(send, 429, "rate_limited", why, retry_after=retry_after)


async def _answer(
    send: Send,
    status: int,
    error: str,
    why: str,
    *,
    retry_after: int | None = None,
    close: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": error, "error_description": why}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += extra or []
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _has_body(scope: Scope) -> bool:
    return _declared_length(scope) > 0 or any(name == b"transfer-encoding" for name, _ in scope["headers"])


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                return text[7:].strip() or None
            return None
    return None
