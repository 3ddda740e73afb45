"""The team service: one ASGI app per process — /mcp (Streamable HTTP, bearer auth by the SDK),
/.well-known/oauth-protected-resource/mcp (RFC 9728), /healthz, /readyz, /metrics — behind a guard
that applies rate limits, a body deadline and counts responses (`Guard`, http/guard.py).

Authentication is the SDK's: `AuthSettings` + our `TokenVerifier` make it answer 401 with
`WWW-Authenticate: Bearer … resource_metadata=…` and serve the metadata; scopes are checked per MCP
request by `ScopeGate` (server middleware), which also filters `tools/list`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp.server import MCPServer
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Scope

from matrix_mcp.app import App
from matrix_mcp.config import Settings
from matrix_mcp.http.guard import MCP_PATH, Guard, rejected_challenge
from matrix_mcp.http.health import healthz, readyz_endpoint
from matrix_mcp.http.keys import ApiKeyVerifier, looks_like_key
from matrix_mcp.http.metrics import Metrics, ToolMetrics, metrics_endpoint
from matrix_mcp.http.options import ServiceOptions, is_loopback
from matrix_mcp.http.parts import Parts
from matrix_mcp.http.ratelimit import RateLimits, parse_rate
from matrix_mcp.http.scopes import ALL_SCOPES, TOOL_SCOPES, ScopeGate

if TYPE_CHECKING:
    from matrix_mcp.engine.access import Access

log = logging.getLogger("matrix_mcp.http")

LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]")
LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")


class Verifiers:
    """API keys (`mtx_…`) go to the key verifier, anything else to the JWT verifier."""

    def __init__(self, keys: TokenVerifier | None, jwt: TokenVerifier | None) -> None:
        self.keys = keys
        self.jwt = jwt

    async def verify_token(self, token: str) -> AccessToken | None:
        verifier = self.keys if looks_like_key(token) else self.jwt
        return None if verifier is None else await verifier.verify_token(token)


@dataclass
class Service:
    app: ASGIApp
    mcp: MCPServer[Any]
    metrics: Metrics
    auth: bool


def transport_security(options: ServiceOptions) -> TransportSecuritySettings:
    """DNS-rebinding protection stays on for every bind: loopback names always, the bind address when it
    is a specific one, plus --allowed-hosts / --allowed-origins (a bare host allows any port)."""
    hosts = list(LOOPBACK_HOSTS)
    if options.host not in ("0.0.0.0", "::", "") and not is_loopback(options.host):
        bracketed = f"[{options.host}]" if ":" in options.host else options.host
        hosts += [bracketed, f"{bracketed}:*"]
    for h in options.allowed_hosts:
        hosts += [h] if h.endswith(":*") or h.rsplit(":", 1)[-1].isdigit() else [h, f"{h}:*"]
    origins = list(LOOPBACK_ORIGINS) + list(options.allowed_origins)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def build_service(
    make_server: Callable[[AuthSettings | None, TokenVerifier | None], MCPServer[Any]],
    access: Callable[[], Access | None] | None,
    options: ServiceOptions,
    *,
    auth: bool,
    max_body_bytes: int,
    gauges: bool = True,
    resource_name: str = "Matrix MCP",
    mount: Callable[[Parts], Callable[[Scope], Awaitable[str | None]]] | None = None,
) -> Service:
    """Assemble the ASGI app around the server `make_server` builds (given the SDK's auth settings).
    `access` gives the engine's access use cases (API keys, sessions, readiness, gauges) once the server's
    lifespan has opened its store; None for a server without one (JWT only; /readyz is then /healthz)."""
    verifier: Verifiers | None = None
    auth_settings: AuthSettings | None = None
    if auth:
        jwt = None
        if options.jwt_configured:  # PyJWT and its algorithms load only then (start-up time)
            from matrix_mcp.http.jwt_auth import JwtVerifier

            jwt = JwtVerifier(
                audience=options.jwt_audience or options.resource_url,
                secret=options.jwt_secret,
                jwks_url=options.jwt_jwks_url,
                issuer=options.jwt_issuer,
                leeway=options.jwt_leeway,
            )
        keys = ApiKeyVerifier(access, options.key_cache_seconds) if access is not None else None
        verifier = Verifiers(keys, jwt)
        auth_settings = AuthSettings(
            # with API keys alone there is no separate authorization server: the service names itself
            issuer_url=options.jwt_issuer or options.base_url,  # type: ignore[arg-type]
            resource_server_url=options.resource_url,  # type: ignore[arg-type]
            validate_token_resource=False,  # the JWT verifier checks `aud` itself; API keys have none
        )
    mcp = make_server(auth_settings, verifier)
    # the tools the scope map knows, and packages with unfinished work up to the cap: bounded label sets
    metrics = Metrics(lambda: TOOL_SCOPES, options.metrics_max_packages)
    mcp.middleware.append(ToolMetrics(metrics))  # outside the gate: refused calls count as errors
    if auth:
        mcp.middleware.append(ScopeGate())
    mcp.custom_route("/healthz", methods=["GET"])(healthz)
    mcp.custom_route("/readyz", methods=["GET"])(readyz_endpoint(access) if access is not None else healthz)
    gauge_access = access if gauges and access is not None else (lambda: None)
    security = transport_security(options)
    mcp.custom_route("/metrics", methods=["GET"])(
        metrics_endpoint(metrics, gauge_access, options.metrics_token, security)
    )
    limits = None
    if options.rate_limit or options.auth_failure_limit:
        limits = RateLimits(
            parse_rate(options.rate_limit, "MATRIX_RATE_LIMIT") if options.rate_limit else [],
            parse_rate(options.auth_failure_limit, "MATRIX_AUTH_FAILURE_LIMIT")
            if options.auth_failure_limit
            else [],
        )
    # routes beside /mcp (REST, dashboard): their credential may also come from a session cookie
    routes_token = None
    if mount is not None:
        parts = Parts(
            mcp=mcp,
            verifier=verifier,
            limits=limits,
            metrics=metrics,
            options=options,
            access=access or (lambda: None),
            security=security,
            max_body_bytes=max_body_bytes,
        )
        routes_token = mount(parts)
    inner = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=options.stateless,
        transport_security=security,
        max_request_body_size=max_body_bytes,
        host=options.host,
    )
    rejected = None
    if auth_settings is not None:
        from mcp.server.auth.routes import build_resource_metadata_url

        resource_url = auth_settings.resource_server_url
        assert resource_url is not None  # set just above, from the options
        rejected = rejected_challenge(build_resource_metadata_url(resource_url))
        # the SDK's RFC 9728 metadata, with the scopes this service understands (it would list none):
        # ahead of the SDK's own route for the same path
        from mcp.server.auth.routes import create_protected_resource_routes

        for route in reversed(
            create_protected_resource_routes(
                resource_url=auth_settings.resource_server_url,  # type: ignore[arg-type]
                authorization_servers=[auth_settings.issuer_url],
                scopes_supported=list(ALL_SCOPES),
                resource_name=resource_name,
            )
        ):
            inner.routes.insert(0, route)
    guard = Guard(
        inner,
        rejected=rejected,
        verifier=verifier,
        limits=limits,
        metrics=metrics,
        body_timeout=options.body_timeout,
        max_body_bytes=max_body_bytes,
        routes_token=routes_token,
        max_requests=options.max_connections,
    )
    return Service(app=guard, mcp=mcp, metrics=metrics, auth=auth)


def max_body_bytes(settings: Settings) -> int:
    """Room for the largest content a report may carry, base64-encoded, plus its JSON envelope."""
    limits = settings.limits
    return limits.max_content_bytes * 4 // 3 + 2 * limits.max_json_bytes + 64 * 1024


def notice(text: str) -> None:
    print(f"matrix-mcp: {text}", file=sys.stderr, flush=True)


def matrix_service(app: App, options: ServiceOptions, *, auth: bool) -> Service:
    """The Matrix server over `app` (the composition root) as a team service: the MCP server, the REST API
    and the board all receive the one App; its lifespan (the MCP server's) runs it."""
    from matrix_mcp.http.web import mount
    from matrix_mcp.mcp.server import create_server

    def make(auth_settings: AuthSettings | None, verifier: TokenVerifier | None) -> MCPServer[Any]:
        return create_server(app=app, auth=auth_settings, token_verifier=verifier)

    return build_service(
        make,
        app.access,
        options,
        auth=auth,
        max_body_bytes=max_body_bytes(app.settings),
        mount=lambda parts: mount(parts, app),
    )


async def decide_auth(keys: str | Access | None, options: ServiceOptions) -> bool:
    """Authentication is on when `keys` (the engine or other access to a store, or the store's URL) holds
    an API key that is not revoked
    or a JWT verifier is configured. Without either: open on a loopback address (said on stderr); refused
    elsewhere unless --insecure-no-auth. Raises ValueError with the one-line reason."""
    if options.jwt_configured:
        return True
    if isinstance(keys, str):
        from matrix_mcp.engine.access import open_access

        async with open_access(keys) as access:
            return await decide_auth(access, options)
    if keys is not None and await keys.has_live_api_keys():
        return True
    if is_loopback(options.host):
        notice(
            f"serving OPEN (no authentication) on {options.host}:{options.port}: no API key or JWT is "
            "configured; anyone on this machine can call every tool (matrix-mcp keys create NAME --scope …)"
        )
        return False
    if options.insecure_no_auth:
        notice(
            f"WARNING: serving OPEN (no authentication) on {options.host}:{options.port} because of "
            "--insecure-no-auth: anyone who can reach it can call every tool"
        )
        return False
    raise ValueError(
        f"refusing to serve on {options.host} without authentication: create an API key "
        "(matrix-mcp keys create NAME --scope read --scope work) or set MATRIX_JWT_SECRET / "
        "MATRIX_JWT_JWKS_URL; --insecure-no-auth serves open anyway"
    )


async def serve(settings: Settings, options: ServiceOptions) -> None:
    from matrix_mcp.engine import Engine

    # opened once before serving, to decide authentication, and so that a store or artifacts folder that
    # cannot be opened is a one-line error here rather than uvicorn's traceback from the lifespan
    engine = await Engine.open(settings)
    try:
        auth = await decide_auth(engine, options)
    finally:
        await engine.close()
    if auth:
        how = ["API keys"] + (["JWT"] if options.jwt_configured else [])
        notice(f"serving {options.resource_url} with authentication ({' and '.join(how)})")
    base = options.base_url
    notice(f"board: {base}/ui/ · REST API: {base}/api/v1/ (OpenAPI: {base}/api/v1/openapi.json)")
    await run_uvicorn(matrix_service(App(settings), options, auth=auth).app, options)


async def run_uvicorn(app: ASGIApp, options: ServiceOptions) -> None:
    import uvicorn

    from matrix_mcp.http.connections import uvicorn_config

    if not is_loopback(options.host) and not options.allowed_hosts:
        notice(
            "DNS-rebinding protection admits only loopback names and the bind address as Host; "
            "pass --allowed-hosts (MATRIX_ALLOWED_HOSTS) with the name clients use"
        )
    await uvicorn.Server(uvicorn_config(app, options)).serve()
