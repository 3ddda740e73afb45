"""The live board over real HTTP (no browser): pages and their security headers, sign-in and the session
cookie, CSRF, scopes deciding the actions, escaping, the grid data."""

from __future__ import annotations

import re
import time
from pathlib import Path

import anyio
import httpx2
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import STATUSES
from tests.support.http_helpers import create_key, serving

pytestmark = pytest.mark.anyio

EVIL = "<script>alert(1)</script>"
EVIL_RUN = '<img src=x onerror="alert(2)">'


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html)
    assert found, html[:500]
    return found.group(1)


async def test_open_loopback_server_needs_no_sign_in(sqlite_settings: Settings) -> None:
    async with serving(sqlite_settings, auth=False) as (base, _), httpx2.AsyncClient(base_url=base) as h:
        await h.post("/api/v1/runs", json={"name": "r", "packages": [{"name": EVIL, "items": ["a", EVIL]}]})
        await h.post("/api/v1/runs", json={"name": EVIL_RUN, "packages": [{"name": "p", "items": ["a"]}]})
        page = await h.get("/ui/")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "'unsafe-inline'" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        run = await h.get(f"/ui/runs/{EVIL_RUN}")
        assert run.status_code == 200
        assert "<img" not in run.text and "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in run.text
        assert 'data-action="cancel"' in run.text  # open: every scope
        for name in ("board.js", "board.css"):
            static = await h.get(f"/ui/static/{name}")
            assert static.status_code == 200 and len(static.content) > 1000
        assert (await h.get("/ui/static/../app.py")).status_code == 404
        assert (await h.get("/ui/signin", follow_redirects=False)).status_code == 303
        grid = (await h.get("/ui/runs/r/grid")).json()
        # status codes index STATUSES: statuses added later come last, so earlier codes keep their meaning
        assert grid["statuses"] == list(STATUSES) and STATUSES.index("in_review") == len(STATUSES) - 1
        assert grid["packages"][0]["name"] == EVIL and grid["packages"][0]["items"] == ["a", EVIL]
        assert grid["packages"][0]["status"] == "00" and len(grid["packages"][0]["ids"]) == 2
        # a browser's state-changing request to the open server needs the page's CSRF token; a script's not
        token = csrf_of(page.text)
        origin = {"Origin": base}
        refused = await h.post("/api/v1/runs/r/control", json={"action": "pause"}, headers=origin)
        assert refused.status_code == 403 and refused.json()["error"] == "csrf"
        other_site = {"Origin": "http://evil.example", "X-CSRF-Token": "0" * 64}
        assert (
            await h.post("/api/v1/runs/r/control", json={"action": "pause"}, headers=other_site)
        ).status_code == 403
        ok = await h.post(
            "/api/v1/runs/r/control", json={"action": "pause"}, headers={**origin, "X-CSRF-Token": token}
        )
        assert ok.status_code == 200 and ok.json()["state"] == "paused"
        assert (await h.post("/api/v1/runs/r/control", json={"action": "resume"})).status_code == 200


async def test_sign_in_session_cookie_csrf_and_revocation(sqlite_settings: Settings) -> None:
    planner = await create_key(sqlite_settings, "planner", "matrix:plan", "matrix:read")
    reader = await create_key(sqlite_settings, "reader", "matrix:read")
    async with serving(sqlite_settings, auth=True, key_cache_seconds=0.2) as (base, _):
        async with httpx2.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {planner}"}) as p:
            await p.post("/api/v1/runs", json={"name": "r", "packages": [{"name": "p", "items": ["a"]}]})
        async with httpx2.AsyncClient(base_url=base) as h:
            assert (await h.get("/ui/")).headers["location"] == "/ui/signin"
            assert (await h.get("/ui/runs/r/grid")).status_code == 401
            assert "API key or JWT" in (await h.get("/ui/signin")).text
            bad = await h.post("/ui/signin", data={"token": "mtx_wrong"})
            assert bad.status_code == 401 and "set-cookie" not in bad.headers
            forged = await h.post(
                "/ui/signin", data={"token": planner}, headers={"Origin": "http://evil.example"}
            )
            assert forged.status_code == 403 and "set-cookie" not in forged.headers
            signed = await h.post("/ui/signin", data={"token": planner}, headers={"Origin": base})
            assert signed.status_code == 303
            cookie = signed.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
            assert planner not in cookie and planner[4:20] not in cookie  # sealed, not the key
            page = await h.get("/ui/runs/r")
            assert page.status_code == 200 and 'data-action="retry-all"' in page.text
            assert "key:planner" in page.text
            token = csrf_of(page.text)
            # the cookie authenticates the REST API for the page; changes need the CSRF token
            assert (await h.get("/api/v1/runs/r")).status_code == 200
            no_csrf = await h.post("/api/v1/runs/r/control", json={"action": "pause"})
            assert no_csrf.status_code == 403 and no_csrf.json()["field"] == "x-csrf-token"
            wrong = await h.post(
                "/api/v1/runs/r/control", json={"action": "pause"}, headers={"X-CSRF-Token": "f" * 64}
            )
            assert wrong.status_code == 403
            ok = await h.post(
                "/api/v1/runs/r/control", json={"action": "pause"}, headers={"X-CSRF-Token": token}
            )
            assert ok.status_code == 200
            # a tampered cookie is no session
            h.cookies.clear()
            h.cookies.set("matrix_session", "gAAAAA" + "x" * 80)
            assert (await h.get("/api/v1/runs")).status_code == 401
        async with httpx2.AsyncClient(base_url=base) as r:
            await r.post("/ui/signin", data={"token": reader})
            page = await r.get("/ui/runs/r")
            assert page.status_code == 200 and "data-action" not in page.text  # a reader sees no actions
            token = csrf_of(page.text)
            refused = await r.post(
                "/api/v1/runs/r/control", json={"action": "cancel"}, headers={"X-CSRF-Token": token}
            )
            assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
            # revoking the key ends the browser session too
            engine = await Engine.open(sqlite_settings)
            try:
                await engine.store.revoke_api_key("reader", now=time.time())
            finally:
                await engine.close()
            await anyio.sleep(0.3)
            assert (await r.get("/api/v1/runs")).status_code == 401
            assert (await r.get("/ui/")).status_code == 303
            # sign-out needs the page's token, and clears the cookie
            await r.post("/ui/signin", data={"token": planner})
            token = csrf_of((await r.get("/ui/")).text)
            assert (await r.post("/ui/signout", data={"csrf": "nope"})).status_code == 403
            out = await r.post("/ui/signout", data={"csrf": token})
            assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    engine = await Engine.open(sqlite_settings)
    try:
        assert (await engine.run_status("r")).state == "paused"
    finally:
        await engine.close()


async def test_a_credential_without_read_sees_no_board(sqlite_settings: Settings) -> None:
    worker = await create_key(sqlite_settings, "w", "matrix:work")
    async with serving(sqlite_settings, auth=True) as (base, _), httpx2.AsyncClient(base_url=base) as h:
        await h.post("/ui/signin", data={"token": worker})
        assert (await h.get("/ui/")).status_code == 403
        assert (await h.get("/ui/runs/x/grid")).status_code == 403


async def test_store_cells_match_the_outcomes(engine: Engine) -> None:
    """The grid's one read (both backends): every outcome of the run, in creation order, with its status."""
    from matrix_mcp.models import PackageSpec

    await engine.plan_run(
        "g", packages=[PackageSpec(name="p", items=["a", "b"]), PackageSpec(name=EVIL, items=["c"])]
    )
    await engine.plan_run("other", packages=[PackageSpec(name="p", items=["z"])])
    claimed = (await engine.claim_items("g", worker="w", limit=2)).items
    await engine.complete_item(claimed[0].outcome_id, lease_token=claimed[0].lease_token)
    await engine.fail_item(
        claimed[1].outcome_id, lease_token=claimed[1].lease_token, error="e", retryable=False
    )
    run_id = (await engine.run_info("g")).id
    cells = await engine.store.cells(run_id)
    outcomes = [o async for o in engine.store.iter_outcomes(run_id)]
    assert [(c.outcome_id, c.package, c.item, c.status) for c in cells] == [
        (o.id, o.package, o.item, o.status) for o in outcomes
    ]
    assert sorted(c.status for c in cells) == ["complete", "failed", "pending"]
    assert await engine.store.cells((await engine.run_info("other")).id) != []


async def test_store_run_minutes_are_the_throughput_window(engine: Engine) -> None:
    """The chart's read (both backends): per-minute finished counts, the ones run_status's window sums."""
    from matrix_mcp.models import PackageSpec

    t = 1_800_000_000.0  # a whole minute
    engine.now = lambda: t  # type: ignore[method-assign]
    await engine.plan_run("m", packages=[PackageSpec(name="p", items=["a", "b", "c", "d"])])
    await engine.plan_run("other", packages=[PackageSpec(name="p", items=["z"])])
    claimed = (await engine.claim_items("m", worker="w", limit=4)).items
    await engine.complete_item(claimed[0].outcome_id, lease_token=claimed[0].lease_token)
    await engine.fail_item(
        claimed[1].outcome_id, lease_token=claimed[1].lease_token, error="e", retryable=False
    )
    t += 125  # two minutes on
    await engine.complete_item(claimed[2].outcome_id, lease_token=claimed[2].lease_token)
    other = (await engine.claim_items("other", worker="w")).items[0]
    await engine.complete_item(other.outcome_id, lease_token=other.lease_token)
    run_id = (await engine.run_info("m")).id
    first = 1_800_000_000 // 60
    got = [(m.minute, m.completed, m.failed) for m in await engine.store.run_minutes(run_id, since_minute=0)]
    assert got == [(first, 1, 1), (first + 2, 1, 0)]
    assert [m.minute for m in await engine.store.run_minutes(run_id, since_minute=first + 1)] == [first + 2]
    status = await engine.run_status("m")
    assert status.throughput_per_minute == round(3 / 125 * 60, 3)  # the same 3 finished, over 125 s
    assert (
        sum(m.completed + m.failed for m in await engine.store.run_minutes(run_id, since_minute=first - 4))
        == 3
    )


async def test_throughput_endpoint(sqlite_settings: Settings) -> None:
    async with serving(sqlite_settings, auth=False) as (base, _), httpx2.AsyncClient(base_url=base) as h:
        await h.post("/api/v1/runs", json={"name": "a/b", "packages": [{"name": "p", "items": ["x"]}]})
        claim = (await h.post("/api/v1/runs/a%2Fb/claim", json={"worker": "w"})).json()["items"][0]
        done = await h.post(
            f"/api/v1/outcomes/{claim['outcome_id']}/complete", json={"lease_token": claim["lease_token"]}
        )
        assert done.status_code == 200
        got = (await h.get("/ui/runs/a%2Fb/throughput")).json()
        now = int(time.time() // 60)
        assert got["since_minute"] == got["now_minute"] - 59 and abs(got["now_minute"] - now) <= 1
        assert [row[1:] for row in got["minutes"]] == [[1, 0]]
        later = (await h.get("/ui/runs/a%2Fb/throughput", params={"since": got["now_minute"] + 1})).json()
        assert later["minutes"] == [] and later["since_minute"] == got["now_minute"] + 1
        bad = await h.get("/ui/runs/a%2Fb/throughput", params={"since": "soon"})
        assert bad.status_code == 400 and bad.json()["field"] == "since"
        assert (await h.get("/ui/runs/nope/throughput")).status_code == 404


async def test_a_jwt_signs_in_and_works_on_the_rest_api(sqlite_settings: Settings) -> None:
    import jwt

    secret = "board-secret-board-secret-board-secret"
    async with serving(sqlite_settings, auth=True, jwt_secret=secret) as (base, _):
        now = int(time.time())
        claims = {"sub": "alice", "aud": f"{base}/mcp", "iat": now, "exp": now + 300, "scope": "matrix:read"}
        token = jwt.encode(claims, secret)
        async with httpx2.AsyncClient(base_url=base) as h:
            assert (
                await h.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"})
            ).status_code == 200
            plan = await h.post(
                "/api/v1/runs",
                json={"name": "r", "packages": []},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert plan.status_code == 403 and "matrix:plan" in plan.json()["error_description"]
            wrong_aud = jwt.encode({**claims, "aud": "http://elsewhere/mcp"}, secret)
            assert (await h.post("/ui/signin", data={"token": wrong_aud})).status_code == 401
            assert (await h.post("/ui/signin", data={"token": token})).status_code == 303
            page = await h.get("/ui/")
            assert page.status_code == 200 and "jwt:alice" in page.text


async def test_dns_rebinding_protection_covers_the_board_and_the_api(sqlite_settings: Settings) -> None:
    """A page on another name that rebinds it to 127.0.0.1 cannot read the board (and its CSRF token) or
    call the API of an open loopback server: the Host and Origin checks of /mcp apply here too."""
    async with serving(sqlite_settings, auth=False) as (base, _), httpx2.AsyncClient(base_url=base) as h:
        for path in ("/ui/", "/ui/runs/r", "/ui/static/board.js", "/api/v1/runs", "/api/v1/openapi.json"):
            assert (await h.get(path, headers={"Host": "rebound.example:8000"})).status_code == 421, path
            assert (await h.get(path, headers={"Origin": "http://rebound.example"})).status_code == 403, path
        post = await h.post(
            "/api/v1/runs", json={"name": "x", "packages": []}, headers={"Host": "rebound.example"}
        )
        assert post.status_code == 421
        assert (await h.get("/ui/", headers={"Origin": base})).status_code == 200


async def test_a_finished_runs_rate_is_the_same_over_mcp_rest_and_the_cli(sqlite_settings: Settings) -> None:
    """A run that finished an hour ago: 4 items started together and finished 30 s later are 8 per
    minute on every surface, not a figure that depends on when it is asked (nor none, once the
    five-minute window has passed them)."""
    import sys

    from matrix_mcp.models import PackageSpec
    from tests.support.http_helpers import client

    t = time.time() - 3600
    engine = await Engine.open(sqlite_settings)
    try:
        engine.now = lambda: t  # type: ignore[method-assign]
        await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a", "b", "c", "d"])])
        claimed = (await engine.claim_items("r", worker="w", limit=4)).items
        t += 30
        for item in claimed:
            await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
    finally:
        await engine.close()
    async with serving(sqlite_settings, auth=False) as (base, _), httpx2.AsyncClient(base_url=base) as h:
        rest = (await h.get("/api/v1/runs/r")).json()
        async with client(base, None) as mcp:
            tool = (await mcp.call_tool("run_status", {"run": "r"})).structured_content or {}
    for got in (rest, tool):
        assert (got["state"], got["throughput_per_minute"], got.get("eta_seconds")) == ("done", 8.0, None)
    cli = await anyio.run_process(
        [
            str(Path(sys.executable).parent / "matrix-mcp"),
            "status",
            "r",
            "--database-url",
            sqlite_settings.database_url,
        ],
        cwd=Path(sqlite_settings.artifacts_dir).parent,
        check=False,
    )
    out = cli.stdout.decode()
    assert cli.returncode == 0, cli.stderr.decode()
    assert "throughput 8.0 items/min, ETA –" in out, out


def test_every_status_has_a_colour_a_shape_and_a_legend_entry() -> None:
    """The board's script colours status codes by index into STATUSES (blocked appended last), the legend
    names a shape for each, and the stylesheet has each one's swatch."""
    from matrix_mcp.http.board import SHAPES

    static = Path(__file__).resolve().parents[2] / "matrix_mcp" / "http" / "board_static"
    script = (static / "board.js").read_text(encoding="utf-8")
    for table in ("COLORS", "INK"):
        found = re.search(rf"const {table} = \[([^\]]*)\];", script)
        assert found and len(found.group(1).split(",")) == len(STATUSES), table
    assert "code === 5" in script and STATUSES.index("blocked") == 5  # the blocked shape's branch
    assert list(SHAPES) == list(STATUSES)
    css = (static / "board.css").read_text(encoding="utf-8")
    assert all(f".s-{status} " in css for status in STATUSES)
