"""Board sessions end on the server: after sign-out the old cookie is refused by this replica and by
every other one on the same store (SQLite and PostgreSQL)."""

from __future__ import annotations

import re

import httpx2
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.http.access import COOKIE, SESSION_SECONDS, Sessions
from tests.support.http_helpers import create_key, serving

pytestmark = pytest.mark.anyio


async def test_sign_out_ends_the_session_on_every_replica(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MATRIX_SESSION_SECRET", "one secret the replicas share " * 2)
    key = await create_key(settings, "lead", "read", "plan")
    async with (
        serving(settings, auth=True) as (first, _),
        serving(settings, auth=True) as (second, _),
        httpx2.AsyncClient(timeout=10) as http,
    ):
        signed = await http.post(f"{first}/ui/signin", data={"token": key}, follow_redirects=False)
        assert signed.status_code == 303
        found = re.match(rf"{COOKIE}=([^;]+);", signed.headers["set-cookie"])
        assert found
        cookie = {"Cookie": f"{COOKIE}={found.group(1)}"}
        for base in (first, second):  # a shared secret: either replica accepts the session
            assert (await http.get(f"{base}/api/v1/runs", headers=cookie)).status_code == 200
        page = (await http.get(f"{first}/ui/", headers=cookie)).text
        csrf = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page)
        assert csrf
        out = await http.post(
            f"{first}/ui/signout", data={"csrf": csrf.group(1)}, headers=cookie, follow_redirects=False
        )
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
        # the same session spelt another way (base64 decoding skips a stray character): refused too
        respelt = {"Cookie": f"{COOKIE}={found.group(1)[:10]}.{found.group(1)[10:]}"}
        for base in (first, second):  # the old cookie, kept by whoever copied it
            refused = await http.get(f"{base}/api/v1/runs", headers=cookie)
            assert refused.status_code == 401, base
            assert (await http.get(f"{base}/api/v1/runs", headers=respelt)).status_code == 401
            assert (await http.get(f"{base}/ui/", headers=cookie)).headers["location"] == "/ui/signin"
            events = await http.get(f"{base}/api/v1/events", headers=cookie)
            assert events.status_code == 401
        # signing in again is a new session, which works
        again = await http.post(f"{second}/ui/signin", data={"token": key}, follow_redirects=False)
        renewed = re.match(rf"{COOKIE}=([^;]+);", again.headers["set-cookie"])
        assert renewed
        fresh = {"Cookie": f"{COOKIE}={renewed.group(1)}"}
        assert (await http.get(f"{first}/api/v1/runs", headers=fresh)).status_code == 200


async def test_signed_out_sessions_are_kept_until_they_would_have_expired(
    settings: Settings,
) -> None:
    sessions = Sessions("s" * 40, secure=False)
    old, live = sessions.seal("mtx_a"), sessions.seal("mtx_b")
    engine = await Engine.open(settings)
    try:
        store = engine.store
        await store.revoke_session(Sessions.session_id(old), expires_at=1000.0, now=10.0)
        await store.revoke_session(Sessions.session_id(old), expires_at=1000.0, now=10.0)  # twice: fine
        assert await store.session_revoked(Sessions.session_id(old))
        assert not await store.session_revoked(Sessions.session_id(live))
        # a later sign-out forgets sessions past their expiry
        await store.revoke_session(Sessions.session_id(live), expires_at=1000.0 + SESSION_SECONDS, now=1001.0)
        assert not await store.session_revoked(Sessions.session_id(old))
        assert await store.session_revoked(Sessions.session_id(live))
    finally:
        await engine.close()
