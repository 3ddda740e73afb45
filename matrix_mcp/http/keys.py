"""API keys: random, shown once, stored as a SHA-256 hash; verified through the SDK's TokenVerifier.

Each process caches what it learnt about a key for `cache_seconds` (default 5), so a revocation made
on any replica (or with `matrix-mcp keys revoke`) is seen everywhere within that time, while a busy
agent's calls do not each read the store. Keys carry 256 random bits, so a fast hash is the right one
(a slow password hash protects guessable secrets, which these are not).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mcp.server.auth.provider import AccessToken

from matrix_mcp.errors import StoreError

if TYPE_CHECKING:
    from matrix_mcp.engine.access import Access
    from matrix_mcp.store.params import ApiKey

log = logging.getLogger("matrix_mcp.http.keys")

KEY_PREFIX = "mtx_"
CACHE_SECONDS = 5.0
TOUCH_EVERY = 60.0  # last_used is written at most this often per key and process
_CACHE_MAX = 10_000


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


@dataclass
class _Cached:
    key: ApiKey | None
    until: float


class ApiKeyVerifier:
    """TokenVerifier for API keys; the principal is `key:NAME`."""

    def __init__(self, access: Callable[[], Access | None], cache_seconds: float = CACHE_SECONDS) -> None:
        self._access = access
        self._cache_seconds = cache_seconds
        self._cache: dict[str, _Cached] = {}
        self._touched: dict[str, float] = {}

    async def verify_token(self, token: str) -> AccessToken | None:
        if not looks_like_key(token):
            return None
        digest = hash_key(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is None or hit.until <= now:
            access = self._access()
            if access is None:
                return None
            try:
                key = await access.api_key_by_hash(digest)
            except StoreError as exc:
                # the store is unreachable: a key known a moment ago stays good until it answers again
                # (nobody can revoke it meanwhile); an unknown one is refused
                log.warning("API key lookup failed: %s", exc)
                if hit is None:
                    return None
                key = hit.key
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            hit = self._cache[digest] = _Cached(key, now + self._cache_seconds)
            if key is not None and key.revoked_at is None:
                await self._touch(access, key.name)
        key = hit.key
        if key is None or key.revoked_at is not None:
            return None
        return AccessToken(token=token, client_id=f"key:{key.name}", scopes=list(key.scopes))

    async def _touch(self, access: Access, name: str) -> None:
        now = time.time()
        if now - self._touched.get(name, 0.0) < TOUCH_EVERY:
            return
        self._touched[name] = now
        try:
            await access.touch_api_key(name, now=now)
        except StoreError as exc:  # a missed use stamp must not refuse the call
            log.warning("recording the use of key %r failed: %s", name, exc)
