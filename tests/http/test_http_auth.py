"""The team service over real HTTP: API keys, scopes, 401/403/421/429, revocation, safe defaults."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.http.app import decide_auth
from matrix_mcp.http.options import ServiceOptions
from matrix_mcp.http.scopes import TOOL_SCOPES
from tests.support.http_helpers import MCP_HEADERS, client, create_key, post_init, serving

pytestmark = pytest.mark.anyio

READ_TOOLS = {t for t, s in TOOL_SCOPES.items() if s == "matrix:read"}
WORK_TOOLS = {t for t, s in TOOL_SCOPES.items() if s == "matrix:work"}
PLAN_TOOLS = {t for t, s in TOOL_SCOPES.items() if s == "matrix:plan"}


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_keys_and_scopes_decide_what_a_caller_sees_and_may_call(
    sqlite_settings: Settings, mode: str
) -> None:
    planner = await create_key(sqlite_settings, "planner", "matrix:plan", "matrix:read")
    worker = await create_key(sqlite_settings, "worker", "matrix:work")
    async with serving(sqlite_settings, auth=True) as (base, _):
        async with client(base, planner, mode) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert names == READ_TOOLS | PLAN_TOOLS
            plan = await c.call_tool(
                "plan_run", {"name": "r", "packages": [{"name": "p", "items": ["a", "b"]}]}
            )
            assert not plan.is_error, plan.content
            refused = await c.call_tool("claim_items", {"run": "r", "worker": "w"})
            assert refused.is_error
            text = (refused.structured_content or {})["error"]
            assert "insufficient_scope" in text and "matrix:work" in text and "claim_items" in text
            runs = await c.read_resource("matrix://runs")
            assert '"r"' in runs.contents[0].text  # type: ignore[union-attr]
        async with client(base, worker, mode) as c:
            assert {t.name for t in (await c.list_tools()).tools} == WORK_TOOLS
            got = await c.call_tool("claim_items", {"run": "r", "worker": "w", "limit": 2})
            assert not got.is_error, got.content
            for item in (got.structured_content or {})["items"]:
                done = await c.call_tool(
                    "complete_item", {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]}
                )
                assert not done.is_error
            status = await c.call_tool("run_status", {"run": "r"})
            assert status.is_error and "matrix:read" in (status.structured_content or {})["error"]
            with pytest.raises(Exception, match=r"insufficient_scope.*matrix:read"):
                await c.read_resource("matrix://runs")
            with pytest.raises(Exception, match="insufficient_scope"):
                await c.list_prompts()
    engine = await Engine.open(sqlite_settings)
    try:
        assert (await engine.run_status("r")).counts.complete == 2
        keys = {k.name: k for k in await engine.store.list_api_keys()}
        assert keys["worker"].last_used_at is not None and keys["planner"].last_used_at is not None
    finally:
        await engine.close()


async def test_401_carries_the_resource_metadata_which_is_served(sqlite_settings: Settings) -> None:
    await create_key(sqlite_settings, "k", "matrix:read")
    async with serving(sqlite_settings, auth=True) as (base, _), httpx2.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer mtx_wrong"}, {"Authorization": "Bearer not-a-jwt"}):
            r = await post_init(http, base, **headers)
            assert r.status_code == 401
            challenge = r.headers["www-authenticate"]
            assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
            assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in challenge
        meta = await http.get(f"{base}/.well-known/oauth-protected-resource/mcp")
        assert meta.status_code == 200 and meta.json()["resource"] == f"{base}/mcp"
        assert meta.json()["scopes_supported"] == [
            "matrix:read",
            "matrix:work",
            "matrix:plan",
            "matrix:admin",
        ]
        assert meta.json()["bearer_methods_supported"] == ["header"]
        # health is not behind authentication
        assert (await http.get(f"{base}/healthz")).json() == {"status": "ok"}


async def test_dns_rebinding_protection_421_and_403(sqlite_settings: Settings) -> None:
    key = await create_key(sqlite_settings, "k", "matrix:read")
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        serving(sqlite_settings, auth=True, allowed_hosts=("matrix.example",)) as (base, _),
        httpx2.AsyncClient() as http,
    ):
        assert (await post_init(http, base, **auth)).status_code == 200
        assert (await post_init(http, base, **auth, Host="evil.example")).status_code == 421
        assert (await post_init(http, base, **auth, Host="matrix.example")).status_code == 200
        bad_origin = await post_init(http, base, **auth, Origin="http://evil.example")
        assert bad_origin.status_code == 403


async def test_rate_limits_answer_429_with_retry_after(sqlite_settings: Settings) -> None:
    key = await create_key(sqlite_settings, "k", "matrix:read")
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        serving(sqlite_settings, auth=True, rate_limit="4/minute", auth_failure_limit="3/minute") as (
            base,
            _,
        ),
        httpx2.AsyncClient() as http,
    ):
        codes = [(await post_init(http, base, **auth)).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 200, 429]
        limited = await post_init(http, base, **auth)
        assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["error"] == "rate_limited"
        # failed authentications have their own, lower limit per address
        bad = [(await post_init(http, base, Authorization="Bearer mtx_nope")).status_code for _ in range(4)]
        assert bad == [401, 401, 401, 429]
        exposition = (await http.get(f"{base}/metrics")).text
        assert "matrix_rate_limited_total 3.0" in exposition
        assert "matrix_auth_failures_total 3.0" in exposition
        assert 'matrix_http_requests_total{code="429"} 3.0' in exposition


async def test_open_service_limits_per_address(sqlite_settings: Settings) -> None:
    async with (
        serving(sqlite_settings, auth=False, rate_limit="2/minute") as (base, _),
        httpx2.AsyncClient() as http,
    ):
        codes = [(await post_init(http, base)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]


async def test_revocation_is_seen_within_the_cache_time(sqlite_settings: Settings) -> None:
    key = await create_key(sqlite_settings, "temp", "matrix:read")
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        serving(sqlite_settings, auth=True, key_cache_seconds=0.5) as (base, _),
        httpx2.AsyncClient() as http,
    ):
        assert (await post_init(http, base, **auth)).status_code == 200
        engine = await Engine.open(sqlite_settings)
        try:
            await engine.store.revoke_api_key("temp", now=time.time())
        finally:
            await engine.close()
        deadline = time.monotonic() + 5
        while (await post_init(http, base, **auth)).status_code == 200:
            assert time.monotonic() < deadline, "the revoked key was still accepted after 5 s"
            await anyio.sleep(0.1)
        assert (await post_init(http, base, **auth)).status_code == 401


async def test_body_size_is_bounded(tmp_path: Path) -> None:
    from matrix_mcp.config import Limits

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'm.db'}",
        artifacts_dir=tmp_path / "a",
        limits=Limits(max_content_bytes=1000, max_json_bytes=1000),
    )
    async with serving(settings, auth=False) as (base, _), httpx2.AsyncClient() as http:
        big = b'{"jsonrpc":"2.0","id":1,"method":"ping","pad":"' + b"x" * 200_000 + b'"}'
        r = await http.post(f"{base}/mcp", content=big, headers=MCP_HEADERS)
        assert r.status_code == 413
        assert r.json()["error"] == "request_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused as the bytes arrive
            for _ in range(100):
                yield b"x" * 10_000

        try:  # the server answers and closes while the client still sends: it may see only the reset
            streamed = await http.post(f"{base}/mcp", content=chunks(), headers=MCP_HEADERS)
            assert streamed.status_code == 413
        except httpx2.TransportError:
            pass
        counted = (await http.get(f"{base}/metrics")).text
        assert 'matrix_http_requests_total{code="413"} 2.0' in counted


async def test_safe_defaults_decide_whether_authentication_is_required(
    sqlite_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    loopback = ServiceOptions(host="127.0.0.1")
    assert await decide_auth(sqlite_settings.database_url, loopback) is False
    assert "serving OPEN" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"refusing to serve on 0\.0\.0\.0 without authentication"):
        await decide_auth(sqlite_settings.database_url, ServiceOptions(host="0.0.0.0"))
    assert (
        await decide_auth(sqlite_settings.database_url, ServiceOptions(host="0.0.0.0", insecure_no_auth=True))
        is False
    )
    assert "--insecure-no-auth" in capsys.readouterr().err
    assert (
        await decide_auth(sqlite_settings.database_url, ServiceOptions(host="0.0.0.0", jwt_secret="s" * 32))
        is True
    )
    await create_key(sqlite_settings, "k", "matrix:read")
    assert await decide_auth(sqlite_settings.database_url, ServiceOptions(host="0.0.0.0")) is True
    engine = await Engine.open(sqlite_settings)
    try:
        await engine.store.revoke_api_key("k", now=time.time())
    finally:
        await engine.close()
    with pytest.raises(ValueError, match="without authentication"):  # a revoked key is no key
        await decide_auth(sqlite_settings.database_url, ServiceOptions(host="10.1.2.3"))


async def test_the_principal_is_recorded_on_the_events_it_causes(settings: Settings) -> None:
    """On both backends: every event a key's calls cause names the key; the open service names none."""
    planner = await create_key(settings, "planner", "matrix:plan", "matrix:read")
    worker = await create_key(settings, "worker", "matrix:work")
    async with serving(settings, auth=True) as (base, _):
        async with client(base, planner) as c:
            await c.call_tool(
                "plan_run", {"name": "a", "packages": [{"name": "p", "items": ["x", "y", "z"]}]}
            )
        async with client(base, worker) as c:
            got = await c.call_tool("claim_items", {"run": "a", "worker": "w", "limit": 2})
            items = (got.structured_content or {})["items"]
            await c.call_tool(
                "complete_item",
                {"outcome_id": items[0]["outcome_id"], "lease_token": items[0]["lease_token"]},
            )
            await c.call_tool(
                "fail_item",
                {"outcome_id": items[1]["outcome_id"], "lease_token": items[1]["lease_token"], "error": "e"},
            )
        async with client(base, planner) as c:
            await c.call_tool("control_run", {"run": "a", "action": "cancel"})
            status = await c.call_tool("run_status", {"run": "a", "since": 0})
    events = (status.structured_content or {})["events"]
    by_kind = {e["kind"]: e["data"].get("principal") for e in events}
    assert by_kind["run_planned"] == "key:planner" and by_kind["run_cancelled"] == "key:planner", events
    assert by_kind["claimed"] == "key:worker" and by_kind["completed"] == "key:worker", events
    assert all(e["data"].get("principal") for e in events), events
    async with serving(settings, auth=False) as (base, _), client(base, None) as c:
        await c.call_tool("plan_run", {"name": "b", "packages": [{"name": "p", "items": ["x"]}]})
        status = await c.call_tool("run_status", {"run": "b", "since": 0})
    assert all("principal" not in e["data"] for e in (status.structured_content or {})["events"])


async def test_the_principal_that_claimed_is_in_the_outcome_history(settings: Settings) -> None:
    """On both backends: claims by a key (claim_items, and claim_next inside a report) show `key:NAME` in
    get_outcome history; attempts claimed on the open service carry no principal."""
    planner = await create_key(settings, "planner", "matrix:plan", "matrix:read")
    worker = await create_key(settings, "worker", "matrix:work")
    async with serving(settings, auth=True) as (base, _):
        async with client(base, planner) as c:
            await c.call_tool("plan_run", {"name": "a", "packages": [{"name": "p", "items": ["x", "y"]}]})
        async with client(base, worker) as c:
            got = await c.call_tool("claim_items", {"run": "a", "worker": "w", "limit": 1})
            first = (got.structured_content or {})["items"][0]
            done = await c.call_tool(
                "complete_item",
                {"outcome_id": first["outcome_id"], "lease_token": first["lease_token"], "claim_next": 1},
            )
            second = (done.structured_content or {})["next"][0]
        async with client(base, planner) as c:
            details = [
                (await c.call_tool("get_outcome", {"outcome_id": o["outcome_id"]})).structured_content or {}
                for o in (first, second)
            ]
    for d in details:
        assert [h.get("principal") for h in d["history"]] == ["key:worker"], d
    async with serving(settings, auth=False) as (base, _), client(base, None) as c:
        await c.call_tool("plan_run", {"name": "b", "packages": [{"name": "p", "items": ["x"]}]})
        got = await c.call_tool("claim_items", {"run": "b", "worker": "w", "limit": 1})
        oid = (got.structured_content or {})["items"][0]["outcome_id"]
        d = (await c.call_tool("get_outcome", {"outcome_id": oid})).structured_content or {}
    assert len(d["history"]) == 1 and "principal" not in d["history"][0], d


def test_the_cli_refuses_a_non_loopback_bind_without_authentication(tmp_path: Path) -> None:
    import shutil
    import subprocess

    script = shutil.which("matrix-mcp")
    assert script
    args = [
        script,
        "--database-url",
        f"sqlite:///{tmp_path / 'm.db'}",
        "serve",
        "--transport",
        "streamable-http",
    ]
    proc = subprocess.run(
        [*args, "--host", "0.0.0.0", "--port", "1"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "matrix-mcp: refusing to serve on 0.0.0.0 without authentication: create an API key (matrix-mcp keys "
        "create NAME --scope read --scope work) or set MATRIX_JWT_SECRET / MATRIX_JWT_JWKS_URL; "
        "--insecure-no-auth serves open anyway"
    ]
    bad = subprocess.run(
        [*args, "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MATRIX_RATE_LIMIT": "lots"},
    )
    assert bad.returncode == 1 and bad.stderr.strip().startswith("matrix-mcp: MATRIX_RATE_LIMIT: 'lots'")
    assert "Traceback" not in bad.stderr


async def test_a_body_that_does_not_arrive_in_time_is_answered_408(sqlite_settings: Settings) -> None:
    async with serving(sqlite_settings, auth=False, body_timeout=0.5) as (base, _):
        stream = await anyio.connect_tcp("127.0.0.1", int(base.rsplit(":", 1)[1]))
        head = (
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n"
        )
        await stream.send(head.encode() + b'{"jsonrpc"')  # ... and never the rest
        data = b""
        with anyio.move_on_after(20):
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass  # the server closed the connection after answering
        assert data.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in data
        await stream.aclose()


def test_keys_cli(tmp_path: Path) -> None:
    import shutil
    import subprocess

    script = shutil.which("matrix-mcp")
    assert script
    base = [
        script,
        "--database-url",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--artifacts-dir",
        str(tmp_path / "a"),
        "keys",
    ]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)

    made = run("create", "ci-bot", "--scope", "work", "--scope", "matrix:read")
    assert made.returncode == 0 and made.stdout.startswith("mtx_") and len(made.stdout.strip()) > 40
    assert "only time it is shown" in made.stderr
    assert run("create", "ci-bot", "--scope", "read").stderr.strip() == (
        "matrix-mcp: keys create: name: a key named 'ci-bot' exists (revoked keys keep their name)"
    )
    assert "unknown scope 'root'" in run("create", "x", "--scope", "root").stderr
    assert "name: 'a b' must be" in run("create", "a b", "--scope", "read").stderr
    listing = run("list")
    assert (
        listing.returncode == 0 and "ci-bot" in listing.stdout and "matrix:work matrix:read" in listing.stdout
    )
    assert made.stdout.strip() not in listing.stdout + listing.stderr  # never the key
    assert "active" in listing.stdout and "last used never" in listing.stdout
    assert run("revoke", "ci-bot").returncode == 0
    assert "revoked" in run("list").stdout
    gone = run("revoke", "ghost")
    assert (
        gone.returncode == 1 and gone.stderr.strip() == "matrix-mcp: keys revoke: name: unknown key 'ghost'"
    )


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_webhook_tools_need_the_admin_scope(sqlite_settings: Settings, mode: str) -> None:
    webhook_tools = {
        "add_webhook",
        "list_webhooks",
        "update_webhook",
        "remove_webhook",
        "test_webhook",
        "list_deliveries",
        "redeliver",
    }
    planner = await create_key(sqlite_settings, "planner", "matrix:plan", "matrix:read", "matrix:work")
    admin = await create_key(sqlite_settings, "admin", "matrix:admin")
    async with serving(sqlite_settings, auth=True) as (base, _):
        async with client(base, planner, mode) as c:
            assert not webhook_tools & {t.name for t in (await c.list_tools()).tools}
            refused = await c.call_tool("add_webhook", {"url": "http://127.0.0.1:9/x", "events": ["*"]})
            assert refused.is_error
            text = (refused.structured_content or {})["error"]
            assert "insufficient_scope" in text and "matrix:admin" in text
        async with client(base, admin, mode) as c:
            assert webhook_tools <= {t.name for t in (await c.list_tools()).tools}
            listed = await c.call_tool("list_webhooks", {})
            assert not listed.is_error, listed.content
