"""The REST API over real uvicorn on 127.0.0.1: every endpoint, every error class, scopes, SSE resume,
the OpenAPI document, and agreement with the MCP tools on the same server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from openapi_spec_validator import validate

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.http.app import max_body_bytes
from matrix_mcp.http.endpoints import ENDPOINTS, PREFIX
from matrix_mcp.http.scopes import TOOL_SCOPES
from matrix_mcp.sdk.compat import ToolServer
from tests.conftest import assert_consistent
from tests.support.http_helpers import client, create_key, serving

pytestmark = pytest.mark.anyio


def api(base: str, token: str | None = None) -> httpx2.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx2.AsyncClient(base_url=base + PREFIX, headers=headers, timeout=30)


async def test_every_endpoint_end_to_end(settings: Settings) -> None:
    planner = await create_key(settings, "planner", "matrix:plan", "matrix:read")
    worker = await create_key(settings, "worker", "matrix:work")
    async with serving(settings, auth=True) as (base, _), api(base, planner) as p, api(base, worker) as w:
        plan = await p.post(
            "/runs",
            json={
                "name": "r",
                "goal": "docs",
                "packages": [{"name": "pa", "items": ["a", "b", {"name": "c", "specifications": {"k": 1}}]}],
                "max_attempts": 1,
            },
        )
        assert plan.status_code == 201, plan.text
        assert plan.json()["items"] == 3 and plan.json()["created"] is True
        runs = await p.get("/runs")
        assert [r["name"] for r in runs.json()["runs"]] == ["r"]
        status = await p.get("/runs/r")
        assert status.json()["counts"]["pending"] == 3 and status.json()["latest_seq"] >= 1

        claim = await w.post("/runs/r/claim", json={"worker": "w1", "limit": 3})
        assert claim.status_code == 200, claim.text
        items = claim.json()["items"]
        assert {i["item"] for i in items} == {"a", "b", "c"}
        by_name = {i["item"]: i for i in items}
        beat = await w.post(
            "/leases/heartbeat",
            json={
                "leases": [{"outcome_id": i["outcome_id"], "lease_token": i["lease_token"]} for i in items]
            },
        )
        assert beat.json()["lost"] == [] and beat.json()["lease_expires_at"]
        a, b, c = by_name["a"], by_name["b"], by_name["c"]
        done = await w.post(
            f"/outcomes/{a['outcome_id']}/complete",
            json={"lease_token": a["lease_token"], "content": "# A\n", "metrics": {"lines_generated": 1}},
        )
        assert done.status_code == 200 and done.json()["status"] == "complete"
        failed = await w.post(
            f"/outcomes/{b['outcome_id']}/fail", json={"lease_token": b["lease_token"], "error": "boom"}
        )
        assert failed.json()["status"] == "failed"

        got = await p.get(f"/outcomes/{a['outcome_id']}")
        assert got.json()["history"][0]["worker"] == "w1"
        content = await p.get(f"/outcomes/{a['outcome_id']}/content")
        assert content.content == b"# A\n" and content.headers["x-content-type-options"] == "nosniff"
        assert content.headers["content-disposition"] == "attachment"
        page = await p.get("/outcomes", params={"run": "r", "status": "failed"})
        assert [o["item"] for o in page.json()["outcomes"]] == ["b"]
        first = await p.get("/outcomes", params={"run": "r", "limit": 2})
        second = await p.get(
            "/outcomes", params={"run": "r", "limit": 2, "cursor": first.json()["next_cursor"]}
        )
        assert len(first.json()["outcomes"]) + len(second.json()["outcomes"]) == 3
        summary = await p.get("/runs/r/packages/pa")
        assert summary.json()["completed_items"] == 1 and summary.json()["failed_items"] == 1
        system = await p.get("/metrics/system", params={"run": "r"})
        assert system.json()["outcomes_complete"] == 1

        retry = await p.post("/runs/r/retry", json={"package": "pa"})
        assert retry.json()["requeued"] == 1
        patched = await p.patch(f"/outcomes/{c['outcome_id']}", json={"status": "complete"})
        assert patched.json()["status"] == "complete"
        recorded = await p.post("/outcomes", json={"run": "r", "package": "pb", "item": "x"})
        assert recorded.json()["created"] is True
        logged = await p.post(
            "/integration-events", json={"integration_type": "slack", "action": "posted", "run": "r"}
        )
        assert logged.json()["integration_type"] == "slack"
        paused = await p.post("/runs/r/control", json={"action": "pause"})
        assert paused.json()["state"] == "paused"
        assert (await p.post("/runs/r/control", json={"action": "resume"})).json()["state"] == "active"
        cancelled = await p.post("/runs/r/control", json={"action": "cancel"})
        assert cancelled.json()["state"] == "cancelled"
    engine = await Engine.open(settings)
    try:
        await assert_consistent(engine)
        assert (await engine.run_status("r")).counts.complete == 2
    finally:
        await engine.close()


async def test_answers_equal_the_mcp_tools(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with serving(settings, auth=False) as (base, _), api(base) as h:
        await h.post("/runs", json={"name": "r", "packages": [{"name": "p", "items": ["a"]}]})
        async with client(base, None) as c:
            for tool, path, args in (
                ("list_runs", "/runs", {}),
                ("package_summary", "/runs/r/packages/p", {"run": "r", "package": "p"}),
                ("list_outcomes", "/outcomes?run=r", {"run": "r"}),
            ):
                mcp = await c.call_tool(tool, args)
                rest = await h.get(path)
                assert rest.json() == mcp.structured_content, tool


async def test_error_classes(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    key = await create_key(settings, "all", "matrix:plan", "matrix:read", "matrix:work")
    reader = await create_key(settings, "reader", "matrix:read")
    async with serving(settings, auth=True) as (base, _), api(base, key) as h, api(base, reader) as r:
        await h.post("/runs", json={"name": "r", "packages": [{"name": "p", "items": ["a", "b"]}]})

        async def error(response: httpx2.Response, status: int, code: str, field: str | None = None) -> None:
            assert response.status_code == status, response.text
            body = response.json()
            assert body["error"] == code, body
            assert body.get("field") == field, body
            if field:
                assert body["error_description"].startswith(f"{field}: "), body

        # 400 naming the field: pydantic bounds, engine validation, unknown arguments, query, JSON, path clash
        await error(
            await h.post("/runs", json={"name": "x", "packages": [], "max_attempts": 0}),
            400,
            "invalid_argument",
            "max_attempts",
        )
        dup = {"name": "x", "packages": [{"name": "p", "items": ["a", "a"]}]}
        await error(await h.post("/runs", json=dup), 400, "invalid_argument", "packages[0].items[1]")
        await error(
            await h.post("/runs", json={"name": "x", "packages": [], "lease_second": 5}),
            400,
            "invalid_argument",
            "lease_second",
        )
        await error(await h.get("/outcomes", params={"limit": "many"}), 400, "invalid_argument", "limit")
        await error(await h.get("/outcomes", params={"colour": "red"}), 400, "invalid_argument", "colour")
        await error(await h.post("/runs", content=b"{not json"), 400, "invalid_argument", "body")
        await error(await h.post("/runs", json=[1]), 400, "invalid_argument", "body")
        await error(
            await h.post("/runs/r/claim", json={"run": "other", "worker": "w"}),
            400,
            "invalid_argument",
            "run",
        )
        await error(
            await h.post("/runs", content=b'{"name": "\\ud800", "packages": []}'),
            400,
            "invalid_argument",
            "name",
        )
        # 413: the same body bound as /mcp (room for the content cap, base64-encoded)
        huge = b'{"name": "' + b"x" * (max_body_bytes(settings) + 10) + b'"}'
        # declared too large: answered at once from the headers, before any of the body is read
        host, port = base.split("://")[1].split("/")[0].split(":")
        async with await anyio.connect_tcp(host, int(port)) as sock:
            await sock.send(
                f"POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(huge)}\r\n\r\n".encode()
            )
            answer = b""
            with anyio.fail_after(10):
                while b"request_too_large" not in answer:
                    chunk = await sock.receive()
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        # 404
        await error(await h.get("/runs/nope"), 404, "not_found", "run")
        await error(
            await h.get("/outcomes/00000000-0000-0000-0000-000000000000"), 404, "not_found", "outcome_id"
        )
        await error(await h.get("/runs/r/packages/nope"), 404, "not_found", "package")
        # 409: a stale lease, and a report that contradicts the item's state
        claim = (await h.post("/runs/r/claim", json={"worker": "w", "limit": 1})).json()["items"][0]
        oid = claim["outcome_id"]
        await error(
            await h.post(f"/outcomes/{oid}/complete", json={"lease_token": "stale"}),
            409,
            "stale_lease",
            "lease_token",
        )
        ok = await h.post(
            f"/outcomes/{oid}/complete", json={"lease_token": claim["lease_token"], "content": "x"}
        )
        assert ok.status_code == 200
        again = await h.post(
            f"/outcomes/{oid}/complete", json={"lease_token": claim["lease_token"], "content": "y"}
        )
        assert again.status_code == 409 and again.json()["error"] in ("conflict", "stale_lease")
        # content of an item without content
        other = (await h.get("/outcomes", params={"run": "r", "status": "pending"})).json()["outcomes"][0][
            "id"
        ]
        await error(await h.get(f"/outcomes/{other}/content"), 404, "not_found", "outcome_id")
        # 401 without or with a bad credential; 403 outside the scope (naming the scope)
        async with api(base) as anonymous, api(base, "mtx_wrong") as wrong:
            for c in (anonymous, wrong):
                refused = await c.get("/runs")
                assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
                assert refused.headers["www-authenticate"].startswith("Bearer ")
        forbidden = await r.post("/runs/r/control", json={"action": "cancel"})
        await error(forbidden, 403, "insufficient_scope")
        assert "matrix:plan" in forbidden.json()["error_description"]
        assert 'scope="matrix:plan"' in forbidden.headers["www-authenticate"]
        await error(await r.post("/runs/r/claim", json={"worker": "w"}), 403, "insufficient_scope")
        assert (await r.get("/runs/r")).status_code == 200
        async with api(base, await create_key(settings, "w", "matrix:work")) as w:
            await error(await w.get("/runs/r/events"), 403, "insufficient_scope")
            await error(await w.get(f"/outcomes/{oid}/content"), 403, "insufficient_scope")
    engine = await Engine.open(settings)
    try:
        assert (await engine.run_status("r")).state == "active"  # the reader's cancel changed nothing
    finally:
        await engine.close()


async def test_rate_limit_429_per_principal(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    one = await create_key(settings, "one", "matrix:read")
    two = await create_key(settings, "two", "matrix:read")
    async with (
        serving(settings, auth=True, rate_limit="3/minute") as (base, _),
        api(base, one) as a,
        api(base, two) as b,
    ):
        codes = [(await a.get("/runs")).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = await a.get("/runs")
        assert limited.json()["error"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        assert (await b.get("/runs")).status_code == 200  # another principal has its own budget


class Sse:
    """Reads events (id, event, data) from an open event-stream response."""

    def __init__(self, response: httpx2.Response) -> None:
        assert response.headers["content-type"].startswith("text/event-stream")
        self.lines = response.aiter_lines()

    async def next(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        current: dict[str, Any] = {}
        with anyio.fail_after(timeout):
            async for line in self.lines:
                if line == "":
                    if "data" in current:
                        events.append(current)
                        if len(events) == count:
                            return events
                    current = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    current[name] = value.lstrip(" ")
                    if name == "data":
                        current["event"] = json.loads(current["data"])["kind"]
        return events


async def test_sse_streams_the_event_log_and_resumes(settings: Settings) -> None:
    key = await create_key(settings, "k", "matrix:plan", "matrix:read", "matrix:work")
    async with serving(settings, auth=True) as (base, _), api(base, key) as h:
        await h.post("/runs", json={"name": "r", "packages": [{"name": "p", "items": ["a", "b", "c"]}]})
        await h.post("/runs", json={"name": "other", "packages": [{"name": "q", "items": ["z"]}]})
        async with h.stream("GET", "/runs/r/events", params={"since": 0}) as stream:
            sse = Sse(stream)
            first = await sse.next(1)
            assert first[0]["event"] == "run_planned"
            claim = (await h.post("/runs/r/claim", json={"worker": "w", "limit": 2})).json()["items"]
            await h.post(
                f"/outcomes/{claim[0]['outcome_id']}/complete", json={"lease_token": claim[0]["lease_token"]}
            )
            live = await sse.next(3)
        assert [e["event"] for e in live] == ["claimed", "claimed", "completed"]
        assert all(json.loads(e["data"])["run"] == "r" for e in live)  # the other run's events are not here
        seqs = [int(e["id"]) for e in first + live]
        assert seqs == sorted(seqs)
        # disconnected; more happens; a reconnect with Last-Event-ID gets exactly what it missed
        await h.post(
            f"/outcomes/{claim[1]['outcome_id']}/fail",
            json={"lease_token": claim[1]["lease_token"], "error": "e"},
        )
        headers = {"Last-Event-ID": live[-1]["id"]}
        async with h.stream("GET", "/runs/r/events", headers=headers) as stream:
            missed = await Sse(stream).next(1)
        assert missed[0]["event"] in ("retry_scheduled", "failed")
        assert int(missed[0]["id"]) > int(live[-1]["id"])
        assert json.loads(missed[0]["data"])["outcome_id"] == claim[1]["outcome_id"]
        # every run's feed
        async with h.stream("GET", "/events", params={"since": 0}) as stream:
            everything = await Sse(stream).next(2)
        assert {json.loads(e["data"])["run"] for e in everything} == {"r", "other"}
        bad = await h.get("/runs/r/events", headers={"Last-Event-ID": "x"})
        assert bad.status_code == 400 and bad.json()["field"] == "Last-Event-ID"
        assert (await h.get("/runs/nope/events")).status_code == 404


async def test_openapi_document_is_valid_and_matches_the_tools(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with serving(settings, auth=False) as (base, service), api(base) as h:
        doc = (await h.get("/openapi.json")).json()
        validate(doc)
        assert doc["openapi"] == "3.1.0"
        assert isinstance(service.mcp, ToolServer)
        tools = service.mcp.tool_definitions()
        for ep in ENDPOINTS:
            operation = doc["paths"][PREFIX + ep.path][ep.method.lower()]
            assert operation["operationId"] == ep.tool
            assert TOOL_SCOPES[ep.tool] in operation["description"]
            props = tools[ep.tool].parameters["properties"]
            named = {p["name"] for p in operation.get("parameters", [])}
            body = (
                operation.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema", {})
            )
            assert named | set(body.get("properties", {})) == set(props), ep.tool  # every argument, once
        for path in ("/runs/{run}/events", "/outcomes/{outcome_id}/content"):
            assert "get" in doc["paths"][PREFIX + path]


async def test_sse_ends_when_the_key_is_revoked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matrix_mcp.http import rest

    monkeypatch.setattr(rest, "SSE_KEEPALIVE_SECONDS", 0.3)
    monkeypatch.setattr(rest, "RECHECK_SECONDS", 0.2)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    key = await create_key(settings, "k", "matrix:read", "matrix:plan")
    async with serving(settings, auth=True, key_cache_seconds=0.1) as (base, _), api(base, key) as h:
        await h.post("/runs", json={"name": "r", "packages": [{"name": "p", "items": ["a"]}]})
        async with h.stream("GET", "/runs/r/events", params={"since": 0}) as stream:
            sse = Sse(stream)
            assert (await sse.next(1))[0]["event"] == "run_planned"
            engine = await Engine.open(settings)
            try:
                await engine.store.revoke_api_key("k", now=time.time())
            finally:
                await engine.close()
            with anyio.fail_after(10):
                rest_of_stream = [line async for line in sse.lines]
            assert all(not line.startswith("data:") for line in rest_of_stream)  # it ended, no more events


def test_classify_maps_what_the_server_cannot_answer_now_and_hides_crashes() -> None:
    """503 for a store that is down (through the tool's own wrapping), 500 without detail for a crash."""
    from mcp.server.mcpserver.exceptions import ToolError

    from matrix_mcp.errors import STARTING, Unavailable
    from matrix_mcp.http.rest import classify

    def wrapped(inner: BaseException) -> BaseException:
        ours = ToolError(f"retryable: {inner}")
        ours.__cause__ = inner
        outer = ToolError(f"Error executing tool run_status: {ours}")
        outer.__cause__ = ours
        return outer

    down = classify(wrapped(Unavailable("the database did not answer")))
    assert (down.status, down.code, down.headers) == (503, "unavailable", {"Retry-After": "1"})
    assert down.message == "retryable: the database did not answer"
    starting = ToolError(STARTING)  # what a tool raises while the server has no engine: by its cause's type
    starting.__cause__ = Unavailable(STARTING)
    assert (classify(starting).status, classify(starting).message) == (503, STARTING)
    crash = RuntimeError("secret internals")
    outer = ToolError("Error executing tool x")
    outer.__cause__ = crash
    err = classify(outer)
    assert err.status == 500 and "secret" not in err.message
    unexpected = classify(ValueError("password=hunter2"))
    assert unexpected.status == 500 and "hunter2" not in unexpected.message


async def test_names_with_slashes_and_escapes_are_one_path_parameter(tmp_path: Path) -> None:
    """A run or package name holding `/`, `%`, `?`, `#` or spaces is addressable percent-encoded."""
    from urllib.parse import quote

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    run, package = "team/docs 100% ?#é", "api/v2%2F"
    r, p = quote(run, safe=""), quote(package, safe="")
    async with serving(settings, auth=False) as (base, _), api(base) as h:
        plain = await h.post("/runs", json={"name": "team", "packages": [{"name": "x", "items": ["i"]}]})
        assert plain.status_code == 201
        plan = await h.post("/runs", json={"name": run, "packages": [{"name": package, "items": ["a", "b"]}]})
        assert plan.status_code == 201, plan.text
        status = await h.get(f"/runs/{r}")
        assert status.status_code == 200, status.text
        assert status.json()["run"] == run and status.json()["counts"]["total"] == 2
        summary = await h.get(f"/runs/{r}/packages/{p}")
        assert summary.status_code == 200 and summary.json()["package"] == package
        claim = await h.post(f"/runs/{r}/claim", json={"worker": "w", "limit": 1})
        assert claim.status_code == 200 and claim.json()["items"][0]["package"] == package
        paused = await h.post(f"/runs/{r}/control", json={"action": "pause"})
        assert paused.status_code == 200 and paused.json()["state"] == "paused"
        assert (await h.get("/runs/team")).json()["counts"]["total"] == 1  # the prefix is another run
        async with h.stream("GET", f"/runs/{r}/events", headers={"Last-Event-ID": "0"}) as events:
            assert events.status_code == 200
            async for line in events.aiter_lines():
                if line.startswith("data:"):
                    assert json.loads(line[5:])["run"] == run
                    break
        # unencoded, the slash splits the name: that is another (unknown) path, not this run
        assert (await h.get("/runs/team/docs")).status_code == 404
    async with serving(settings, auth=False) as (base, _), httpx2.AsyncClient(base_url=base) as ui:
        page = await ui.get(f"/ui/runs/{r}")
        assert page.status_code == 200
        assert '<span id="run-name">team/docs 100% ?#é</span>' in page.text
        grid = await ui.get(f"/ui/runs/{r}/grid")
        assert grid.json()["run"] == run and grid.json()["packages"][0]["name"] == package
