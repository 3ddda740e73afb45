"""Who is calling the routes beside /mcp (the REST API and the dashboard), and whether a browser's
request is its own.

A caller presents a bearer token (API key or JWT) or, in a browser, the dashboard's session cookie:
the token, encrypted with Fernet (the raw key never sits in the cookie), HttpOnly, SameSite=Strict.
Either way the same verifier decides (so a revoked key stops working in the browser too) and the same
scope map applies. A request made with the cookie, or by a browser to an open server, must carry the
page's CSRF token (`X-CSRF-Token`), which is an HMAC of the session the page was served with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from matrix_mcp.http.scopes import ALL_SCOPES

if TYPE_CHECKING:
    from matrix_mcp.engine.access import Access

ACCESS_KEY = "matrix.access"  # the ASGI scope key holding the AccessToken the guard verified
COOKIE = "matrix_session"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SIGNIN_PATH = "/ui/signin"
SIGNIN_MAX_BYTES = 8192  # the sign-in form's body: one API key or JWT, form-encoded


@dataclass(frozen=True)
class Caller:
    principal: str | None  # None: the service runs open
    scopes: frozenset[str]
    cookie: str | None = None  # the session cookie this request was authenticated by, if any


class Sessions:
    """Seals tokens into session cookies and derives CSRF tokens. The key comes from
    MATRIX_SESSION_SECRET (every replica that shares it accepts the others' cookies) or is drawn at
    start-up (sessions then end with the process). Sign-out ends a session in the store, so every
    replica on it refuses the cookie from then on."""

    def __init__(
        self, secret: str | None, *, secure: bool, access: Callable[[], Access | None] | None = None
    ) -> None:
        raw = hashlib.sha256((secret or secrets.token_hex(32)).encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(raw))
        self._mac_key = hashlib.sha256(b"csrf:" + raw).digest()
        self.secure = secure
        self._access = access or (lambda: None)

    def seal(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def unseal(self, cookie: str) -> str | None:
        try:
            return self._fernet.decrypt(cookie.encode(), ttl=SESSION_SECONDS).decode()
        except (InvalidToken, ValueError):
            return None

    @staticmethod
    def session_id(cookie: str) -> str:
        """What the store keeps of a signed-out session: a SHA-256 of the cookie's decoded bytes (the
        bytes Fernet authenticates, so re-encoding the cookie text does not make another session)."""
        return hashlib.sha256(base64.urlsafe_b64decode(cookie.encode())).hexdigest()

    async def open_session(self, cookie: str) -> str | None:
        """The token sealed in a live session cookie; None when forged, expired or signed out."""
        token = self.unseal(cookie)
        if token is None:
            return None
        access = self._access()
        if access is not None and await access.session_revoked(self.session_id(cookie)):
            return None
        return token

    async def end(self, cookie: str) -> bool:
        """Sign-out: the session is refused from now on (kept in the store until it would have expired
        anyway). False when there is no store to keep it in (the cookie is only cleared then)."""
        access = self._access()
        if access is None or self.unseal(cookie) is None:
            return False
        expires_at = self._fernet.extract_timestamp(cookie.encode()) + SESSION_SECONDS
        await access.revoke_session(self.session_id(cookie), expires_at=expires_at)
        return True

    def csrf(self, cookie: str | None) -> str:
        """The CSRF token of a session (or of the open server, when there is no session)."""
        return hmac.new(self._mac_key, (cookie or "open").encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, request: Request, cookie: str | None) -> bool:
        given = request.headers.get(CSRF_HEADER, "")
        return hmac.compare_digest(given.encode(), self.csrf(cookie).encode())

    def cookie_header(self, value: str, max_age: int = SESSION_SECONDS) -> str:
        parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Strict", f"Max-Age={max_age}"]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)

    async def token_of(self, scope: Scope) -> str | None:
        """The credential of a request beside /mcp: its bearer token, else its session's token."""
        bearer = bearer_token(scope)
        if bearer is not None:
            return bearer
        cookie = session_cookie(scope)
        return None if cookie is None else await self.open_session(cookie)


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = value.decode("latin-1")
            return text[7:].strip() or None if text[:7].lower() == "bearer " else None
    return None


def session_cookie(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is no session
                return None
            morsel = jar.get(COOKIE)
            if morsel is not None and morsel.value:
                return morsel.value
    return None


def from_browser(request: Request) -> bool:
    """Browsers send Origin on every cross-origin request and on same-origin POSTs, and Sec-Fetch-*
    everywhere; scripts (curl, httpx) send neither unless told to."""
    headers = request.headers
    return "origin" in headers or "sec-fetch-site" in headers or "cookie" in headers


class Identify:
    """Resolves the caller of a request beside /mcp (None: not authenticated)."""

    def __init__(
        self,
        verifier: TokenVerifier | None,
        sessions: Sessions,
        security: TransportSecuritySettings | None = None,
    ) -> None:
        self.verifier = verifier
        self.sessions = sessions
        self._security = None if security is None else TransportSecurityMiddleware(security)

    def hosted(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """`handler` behind the same Host / Origin checks as /mcp (421 / 403): a page that rebinds a DNS name
        to this address cannot read the board or its CSRF token, nor call the API."""

        async def checked(request: Request) -> Response:
            if self._security is not None:
                refusal = await self._security.validate_request(request, is_post=False)
                if refusal is not None:
                    return refusal
            return await handler(request)

        return checked

    @property
    def open(self) -> bool:
        return self.verifier is None

    async def __call__(self, request: Request, *, again: bool = False) -> Caller | None:
        """`again`: verify the credential anew rather than take the guard's verdict from the request's
        start (a long-lived event stream asks again now and then)."""
        if self.verifier is None:
            return Caller(None, frozenset(ALL_SCOPES))
        access: AccessToken | None = None if again else request.scope.get(ACCESS_KEY)
        bearer = bearer_token(request.scope)
        cookie = None if bearer is not None else session_cookie(request.scope)
        if access is None:  # not verified by the guard (it verifies whenever it can): do it here
            token = (
                bearer
                if bearer is not None
                else (await self.sessions.open_session(cookie) if cookie else None)
            )
            access = await self.verifier.verify_token(token) if token else None
        if access is None:
            return None
        return Caller(str(access.client_id), frozenset(access.scopes), cookie)

    def csrf_refusal(self, request: Request, caller: Caller) -> str | None:
        """Why a state-changing request must be refused as cross-site, or None."""
        if request.method in SAFE_METHODS:
            return None
        if caller.cookie is None and not (self.open and from_browser(request)):
            return None  # a bearer token, which no other site can make a browser send
        if not self.sessions.csrf_ok(request, caller.cookie):
            return f"{CSRF_HEADER}: missing or wrong; reload the page"
        return None


def session_secret() -> str | None:
    return os.environ.get("MATRIX_SESSION_SECRET") or None
