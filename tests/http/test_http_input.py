"""Crafted input to the REST API (and the same arguments over /mcp): a 400 naming the field, the same on
both backends, never a 500 or a dropped connection."""

from __future__ import annotations

import httpx2
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.http.endpoints import PREFIX
from tests.support.http_helpers import client, create_key, serving

pytestmark = pytest.mark.anyio

TOO_BIG_SEQ = str(2**63)


def api(base: str, token: str) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        base_url=base + PREFIX, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def refused(response: httpx2.Response, field: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:300])
    body = response.json()
    assert body["error"] == "invalid_argument" and body["field"] == field, body
    assert body["error_description"].startswith(f"{field}: "), body
    assert "\n" not in body["error_description"]


async def test_deeply_nested_json_bodies_are_400_naming_the_field(settings: Settings) -> None:
    key = await create_key(settings, "all", "matrix:plan", "matrix:read", "matrix:work")
    async with serving(settings, auth=True) as (base, _), api(base, key) as h:
        await h.post("/runs", json={"name": "r", "packages": [{"name": "p", "items": ["a"]}]})
        item = (await h.post("/runs/r/claim", json={"worker": "w"})).json()["items"][0]
        path = f"/outcomes/{item['outcome_id']}/complete"
        token = item["lease_token"]
        for depth in (900, 1_000, 5_000, 100_000):
            nested = "[" * depth + "]" * depth
            raw = f'{{"lease_token": "{token}", "metrics": {{"deep": {nested}}}}}'
            answer = await h.post(path, content=raw.encode(), headers={"Content-Type": "application/json"})
            refused(answer, "metrics" if depth < 1_000 else "body")
        spec = {"k": 1}
        for _ in range(500):
            spec = {"k": spec}
        plan = {"name": "deep", "packages": [{"name": "p", "items": [{"name": "a", "specifications": spec}]}]}
        refused(await h.post("/runs", json=plan), "packages")
        # the item is still claimable and the server still answers: nothing was half-written
        done = await h.post(path, json={"lease_token": token, "metrics": {"deep": [[1]]}})
        assert done.status_code == 200, done.text


async def test_event_cursors_past_2_63_are_400_on_both_backends(settings: Settings) -> None:
    key = await create_key(settings, "all", "matrix:plan", "matrix:read")
    async with serving(settings, auth=True) as (base, _), api(base, key) as h:
        await h.post("/runs", json={"name": "r", "packages": [{"name": "p", "items": ["a"]}]})
        refused(await h.get("/runs/r", params={"since": TOO_BIG_SEQ}), "since")
        refused(await h.get("/runs/r", params={"since": TOO_BIG_SEQ, "wait_seconds": "1"}), "since")
        refused(await h.get("/runs/r/events", params={"since": TOO_BIG_SEQ}), "since")
        refused(await h.get("/events", params={"since": "9" * 40}), "since")
        refused(await h.get("/runs/r/events", headers={"Last-Event-ID": TOO_BIG_SEQ}), "Last-Event-ID")
        largest = await h.get("/runs/r", params={"since": str(2**63 - 1)})
        assert largest.status_code == 200 and largest.json()["events"] == [], largest.text
        chart = await h.get(f"{base}/ui/runs/r/throughput", params={"since": TOO_BIG_SEQ})
        assert chart.status_code == 200 and chart.json()["minutes"] == [], chart.text
        async with client(base, key) as c:
            mcp = await c.call_tool("run_status", {"run": "r", "since": 2**63})
            assert mcp.is_error and "since" in (mcp.structured_content or {})["error"]


@pytest.mark.parametrize(
    "mime_type",
    [
        "text/plain\r\nX-Injected: 1",
        "text/html\n",
        'text/plain; a="b\rc"',
        "nonsense",
        "",
        "é/x",
        "text/" + "x" * 300,
    ],
)
async def test_a_mime_type_that_is_no_media_type_is_refused_at_report_time(
    settings: Settings, mime_type: str
) -> None:
    key = await create_key(settings, "all", "matrix:plan", "matrix:read", "matrix:work")
    async with serving(settings, auth=True) as (base, _), api(base, key) as h:
        await h.post("/runs", json={"name": "r", "packages": [{"name": "p", "items": ["a", "b"]}]})
        items = (await h.post("/runs/r/claim", json={"worker": "w", "limit": 2})).json()["items"]
        report = {"lease_token": items[0]["lease_token"], "content": "# hi", "mime_type": mime_type}
        rest = await h.post(f"/outcomes/{items[0]['outcome_id']}/complete", json=report)
        refused(rest, "mime_type")
        async with client(base, key) as c:
            arguments = {
                **report,
                "outcome_id": items[1]["outcome_id"],
                "lease_token": items[1]["lease_token"],
            }
            mcp = await c.call_tool("complete_item", arguments)
            assert mcp.is_error
            # one error line on every face: the tool's `error` is REST's error_description
            assert (mcp.structured_content or {})["error"] == rest.json()["error_description"]
        # nothing was stored: the item is still leased, and a good media type is served as given
        good = {**report, "mime_type": 'text/markdown; charset="utf-8"'}
        assert (await h.post(f"/outcomes/{items[0]['outcome_id']}/complete", json=good)).status_code == 200
        content = await h.get(f"/outcomes/{items[0]['outcome_id']}/content")
        assert content.status_code == 200 and content.content == b"# hi"
        assert content.headers["content-type"] == 'text/markdown; charset="utf-8"'


async def test_a_rest_long_poll_past_the_latest_event_waits_and_answers(settings: Settings) -> None:
    """run_status over REST with `since` past the latest event long-polls like the tool (it was a 500: the
    wait sent progress notifications to an MCP session a REST call does not have)."""
    key = await create_key(settings, "all", "matrix:plan", "matrix:read")
    async with serving(settings, auth=True) as (base, _), api(base, key) as h:
        await h.post("/runs", json={"name": "r", "packages": [{"name": "p", "items": ["a"]}]})
        status = await h.get("/runs/r", params={"since": "717", "wait_seconds": "0.5"})
        assert status.status_code == 200, status.text
        assert status.json()["events"] == []
