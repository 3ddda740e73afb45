"""The HTTP service's settings: flags > environment > defaults. Nothing here opens a connection."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from matrix_mcp.config import positive_number

DEFAULT_RATE_LIMIT = "3000/minute"
DEFAULT_AUTH_FAILURE_LIMIT = "30/minute"
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_KEY_CACHE_SECONDS = 5.0
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds a connection has to send a request's head
IDLE_TIMEOUT = 5  # seconds a kept-alive connection may sit idle between requests
DEFAULT_METRICS_MAX_PACKAGES = 100  # as metrics.DEFAULT_MAX_PACKAGES
DEFAULT_JWT_LEEWAY_SECONDS = 30  # as jwt_auth.LEEWAY_SECONDS


@dataclass(frozen=True, kw_only=True)
class ServiceOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    stateless: bool = False
    insecure_no_auth: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    public_url: str | None = None
    rate_limit: str | None = DEFAULT_RATE_LIMIT  # None: off
    auth_failure_limit: str | None = DEFAULT_AUTH_FAILURE_LIMIT
    jwt_secret: str | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: int = DEFAULT_JWT_LEEWAY_SECONDS  # seconds past exp (and before nbf), the same on every route
    metrics_token: str | None = None
    metrics_max_packages: int = DEFAULT_METRICS_MAX_PACKAGES  # packages /metrics labels by name
    key_cache_seconds: float = DEFAULT_KEY_CACHE_SECONDS
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    trusted_proxies: tuple[str, ...] = ()  # addresses / networks whose X-Forwarded-For is believed

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServiceOptions:
        """From the flags `config.add_serve_flags` defines, over the environment's settings."""

        def split(values: list[str] | None) -> tuple[str, ...] | None:
            return tuple(p.strip() for v in values for p in v.split(",") if p.strip()) if values else None

        return cls.from_env(
            host=args.host,
            port=args.port,
            stateless=args.stateless or None,
            insecure_no_auth=args.insecure_no_auth or None,
            allowed_hosts=split(args.allowed_hosts),
            allowed_origins=split(args.allowed_origins),
            public_url=args.public_url.rstrip("/") if args.public_url else None,
            header_timeout=args.header_timeout,
            trusted_proxies=split(args.trusted_proxies),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags: object) -> ServiceOptions:
        env = os.environ if env is None else env
        options = cls(
            allowed_hosts=_list(env.get("MATRIX_ALLOWED_HOSTS")),
            allowed_origins=_list(env.get("MATRIX_ALLOWED_ORIGINS")),
            public_url=(env.get("MATRIX_PUBLIC_URL") or "").rstrip("/") or None,
            rate_limit=_rate(env, "MATRIX_RATE_LIMIT", DEFAULT_RATE_LIMIT),
            auth_failure_limit=_rate(env, "MATRIX_AUTH_FAILURE_LIMIT", DEFAULT_AUTH_FAILURE_LIMIT),
            jwt_secret=env.get("MATRIX_JWT_SECRET") or None,
            jwt_jwks_url=env.get("MATRIX_JWT_JWKS_URL") or None,
            jwt_issuer=env.get("MATRIX_JWT_ISSUER") or None,
            jwt_audience=env.get("MATRIX_JWT_AUDIENCE") or None,
            jwt_leeway=_seconds(env, "MATRIX_JWT_LEEWAY_SECONDS", DEFAULT_JWT_LEEWAY_SECONDS),
            metrics_token=env.get("MATRIX_METRICS_TOKEN") or None,
            metrics_max_packages=int(
                positive_number(env, "MATRIX_METRICS_MAX_PACKAGES", DEFAULT_METRICS_MAX_PACKAGES)
            ),
            key_cache_seconds=positive_number(env, "MATRIX_KEY_CACHE_SECONDS", DEFAULT_KEY_CACHE_SECONDS),
            body_timeout=positive_number(env, "MATRIX_HTTP_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT),
            max_connections=int(positive_number(env, "MATRIX_HTTP_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)),
            header_timeout=positive_number(env, "MATRIX_HTTP_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT),
            trusted_proxies=_list(env.get("MATRIX_TRUSTED_PROXIES")),
        )
        clean: dict[str, object] = {k: v for k, v in flags.items() if v is not None}
        for name in ("allowed_hosts", "allowed_origins", "trusted_proxies"):
            if name in clean:
                clean[name] = getattr(options, name) + tuple(clean[name])  # type: ignore[arg-type]
        options = replace(options, **clean)  # type: ignore[arg-type]
        from matrix_mcp.http.ratelimit import parse_rate

        if options.rate_limit:
            parse_rate(options.rate_limit, "MATRIX_RATE_LIMIT")
        if options.auth_failure_limit:
            parse_rate(options.auth_failure_limit, "MATRIX_AUTH_FAILURE_LIMIT")
        if not options.header_timeout > 0:
            raise ValueError(f"--header-timeout must be positive, got {options.header_timeout:g}")
        options = replace(options, trusted_proxies=tuple(_proxy(p) for p in options.trusted_proxies))
        if options.jwt_secret and options.jwt_jwks_url:
            raise ValueError("MATRIX_JWT_SECRET and MATRIX_JWT_JWKS_URL: set one, not both")
        if options.jwt_secret is not None and len(options.jwt_secret) < 32:
            raise ValueError("MATRIX_JWT_SECRET: use at least 32 characters")
        if options.jwt_jwks_url is not None:
            from matrix_mcp.http.jwt_auth import check_jwks_url

            check_jwks_url(options.jwt_jwks_url)
        return options

    @property
    def jwt_configured(self) -> bool:
        return bool(self.jwt_secret or self.jwt_jwks_url)

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def resource_url(self) -> str:
        """This server's MCP endpoint: the resource in the protected-resource metadata and the default
        JWT audience."""
        return self.base_url + "/mcp"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _proxy(raw: str) -> str:
    """An address as given, or a network (`10.0.0.0/8`; host bits are dropped)."""
    try:
        return str(ipaddress.ip_network(raw, strict=False)) if "/" in raw else str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError(
            f"MATRIX_TRUSTED_PROXIES / --trusted-proxies: {raw!r} is not an IP address or network such as 10.0.0.0/8"
        ) from None


def _list(raw: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (raw or "").split(",") if p.strip())


def _rate(env: Mapping[str, str], name: str, default: str) -> str | None:
    raw = env.get(name, "").strip()
    if raw.lower() in ("off", "none", "0"):
        return None
    return raw or default


def _seconds(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) > 3600:
        raise ValueError(f"{name} must be a whole number of seconds from 0 to 3600, got {raw!r}")
    return int(raw)
