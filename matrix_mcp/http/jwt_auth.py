"""JWT bearer tokens: HS256 with a shared secret, or RS256/ES256 with keys from an identity provider's
JWKS URL (cached; fetched again, at most every few seconds, when a token names an unknown `kid`).

`iss` (when configured), `aud` (default: this server's resource URL, as the MCP authorization spec
requires), `exp` and `nbf` are checked with one leeway (`MATRIX_JWT_LEEWAY_SECONDS`), which the token's
`expires_at` carries: the SDK's own expiry check on /mcp, the REST API and the board refuse a token at the
same instant. The JWKS URL must be `https` unless its host is loopback. `alg: none` and algorithms other than the configured family
are refused. Scopes come from `scope` (space-separated) or `scp` (list or string); the principal is
`jwt:SUB`.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import jwt
from mcp.server.auth.provider import AccessToken

log = logging.getLogger("matrix_mcp.http.jwt")

HMAC_ALGORITHMS = ["HS256"]
KEY_ALGORITHMS = ["RS256", "ES256"]
LEEWAY_SECONDS = 30  # the default of MATRIX_JWT_LEEWAY_SECONDS: clock skew between the provider and us
JWKS_TTL_SECONDS = 300.0
JWKS_REFETCH_SECONDS = 5.0
VERIFIED_CACHE_MAX = 10_000  # an unknown kid refetches at most this often (no fetch storm on bad tokens)


def check_jwks_url(url: str) -> str:
    """The JWKS URL, or ValueError naming the setting: signing keys fetched over plain HTTP could be swapped
    by anyone on the path, so `http` is only for a provider on this machine (a loopback address or
    `localhost`; nothing is resolved)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host:
        loopback = host == "localhost"
        if not loopback:
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
        if loopback:
            return url
        raise ValueError(
            f"MATRIX_JWT_JWKS_URL: must be https (plain http only for a loopback host), got {url!r}"
        )
    raise ValueError(f"MATRIX_JWT_JWKS_URL: must be an https:// URL, got {url!r}")


class JwksCache:
    """The identity provider's signing keys by `kid`."""

    def __init__(self, url: str, ttl: float | None = None, refetch: float | None = None) -> None:
        self.url = url
        self._ttl = JWKS_TTL_SECONDS if ttl is None else ttl
        self._refetch = JWKS_REFETCH_SECONDS if refetch is None else refetch
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = float("-inf")
        self._lock = anyio.Lock()
        self.fetches = 0

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = now - self._fetched > self._ttl
        if stale or (self._lookup(kid) is None and now - self._fetched > self._refetch):
            async with self._lock:
                if time.monotonic() - self._fetched > min(self._refetch, self._ttl):
                    await self._fetch()
        return self._lookup(kid)

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _fetch(self) -> None:
        self._fetched = time.monotonic()
        self.fetches += 1
        try:
            async with httpx2.AsyncClient(timeout=5.0, follow_redirects=False) as client:
                response = await client.get(self.url)
                response.raise_for_status()
                data = response.json()
            keys: dict[str, jwt.PyJWK] = {}
            for raw in data.get("keys", []):
                try:
                    k = jwt.PyJWK.from_dict(raw)
                except jwt.PyJWTError:
                    continue
                keys[str(raw.get("kid", ""))] = k
            self._keys = keys
        except (httpx2.HTTPError, ValueError, AttributeError) as exc:
            log.warning("fetching the JWKS from MATRIX_JWT_JWKS_URL failed: %s", type(exc).__name__)


class JwtVerifier:
    """TokenVerifier for JWTs."""

    def __init__(
        self,
        *,
        audience: str,
        secret: str | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        leeway: int = LEEWAY_SECONDS,
    ) -> None:
        if (secret is None) == (jwks_url is None):
            raise ValueError("MATRIX_JWT_SECRET or MATRIX_JWT_JWKS_URL: set exactly one")
        if jwks_url is not None:
            check_jwks_url(jwks_url)
        self.audience = audience
        self.issuer = issuer
        self._secret = secret
        self.jwks = JwksCache(jwks_url) if jwks_url else None
        self._leeway = leeway
        self._verified: dict[str, AccessToken] = {}  # a token is checked once, then reused until it expires

    async def verify_token(self, token: str) -> AccessToken | None:
        hit = self._verified.get(token)
        if hit is not None:
            if hit.expires_at is not None and hit.expires_at > time.time():
                return hit
            del self._verified[token]
        access = await self._verify(token)
        if access is not None:
            if len(self._verified) >= VERIFIED_CACHE_MAX:
                self._verified.clear()
            self._verified[token] = access
        return access

    async def _verify(self, token: str) -> AccessToken | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        alg = header.get("alg")
        key: Any
        if self.jwks is None:
            algorithms, key = HMAC_ALGORITHMS, self._secret
        else:
            algorithms = KEY_ALGORITHMS
            if alg not in algorithms:
                return None
            kid = header.get("kid")
            key = await self.jwks.key(kid if isinstance(kid, str) else None)
            if key is None:
                return None
        if alg not in algorithms:  # `none` and anything unexpected
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_iss": self.issuer is not None},
            )
        except jwt.PyJWTError as exc:
            log.info("JWT refused: %s", type(exc).__name__)
            return None
        sub = str(claims["sub"])
        return AccessToken(
            token=token,
            client_id=f"jwt:{sub}",
            scopes=token_scopes(claims),
            # the leeway is part of the expiry every layer checks (the SDK compares expires_at with now)
            expires_at=int(claims["exp"]) + self._leeway,
            subject=sub,
            claims={"iss": claims["iss"]} if "iss" in claims else None,
        )


def token_scopes(claims: dict[str, Any]) -> list[str]:
    raw = claims.get("scope", claims.get("scp", []))
    parts = raw.split() if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else []
    return list(dict.fromkeys(parts))
