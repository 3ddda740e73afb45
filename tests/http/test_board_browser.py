"""The live board in a real browser: headless Chromium (Debian's, driven by Playwright) against the service
on 127.0.0.1. Skipped when Chromium or Playwright is missing here; CI installs both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest

from matrix_mcp.config import Settings
from tests.support.http_helpers import client, create_key, serving

pytestmark = pytest.mark.anyio

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"
EVIL_NAME = "<script>window.__pwned=1</script>"
EVIL_ITEM = '<img src=x onerror="window.__pwned=2">'
EVIL_CONTENT = '<script>window.__pwned=3</script><img src=x onerror="window.__pwned=4"> & plain text'
GREEN = (22, 163, 74)  # complete
GREY = (229, 231, 235)  # pending


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")


async def new_page(browser: Any) -> tuple[Any, list[str]]:
    # Playwright's wait_for_function evaluates strings, which the board's CSP forbids: the tests run
    # without that safety net, so they show the script itself never runs untrusted text (the CSP
    # header is checked in test_board.py)
    page = await browser.new_page(viewport={"width": 1200, "height": 900}, bypass_csp=True)
    seen: list[str] = []
    page.on("dialog", lambda d: seen.append(f"dialog: {d.message}"))
    page.on("pageerror", lambda e: seen.append(f"error: {e}"))
    return page, seen


async def sign_in(page: Any, base: str, key: str) -> None:
    await page.goto(base + "/ui/")
    assert page.url.endswith("/ui/signin")
    await page.fill("#token", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/ui/")


async def pixel(page: Any, outcome_id: str) -> tuple[int, int, int]:
    """The colour at the centre of an item's cell, read back from the canvas."""
    rgb = await page.evaluate(
        """(id) => {
            const cell = window.matrixBoard.cell(id);
            const canvas = document.getElementById("grid");
            const ratio = canvas.width / parseFloat(canvas.style.width);
            const x = Math.floor((cell.x + cell.size / 2) * ratio);
            const y = Math.floor((cell.y + cell.size / 2) * ratio);
            const d = canvas.getContext("2d").getImageData(x, y, 1, 1).data;
            return [d[0], d[1], d[2]];
        }""",
        outcome_id,
    )
    return (rgb[0], rgb[1], rgb[2])


async def test_sign_in_watch_a_cell_retry_from_the_ui_and_untrusted_text(
    browser: Any, sqlite_settings: Settings
) -> None:
    planner = await create_key(sqlite_settings, "planner", "matrix:plan", "matrix:read")
    worker = await create_key(sqlite_settings, "worker", "matrix:work")
    async with (
        serving(sqlite_settings, auth=True) as (base, _),
        httpx2.AsyncClient(base_url=base + "/api/v1", headers={"Authorization": f"Bearer {planner}"}) as api,
    ):
        packages = [{"name": f"pkg{i}", "items": [f"item{j}" for j in range(4)]} for i in range(3)]
        packages.append({"name": EVIL_NAME, "items": [EVIL_ITEM]})
        plan = await api.post("/runs", json={"name": "board", "packages": packages, "max_attempts": 1})
        assert plan.status_code == 201, plan.text
        async with client(base, worker) as mcp:
            claimed = await mcp.call_tool("claim_items", {"run": "board", "worker": "w1", "limit": 3})
            items = (claimed.structured_content or {})["items"]
            watched, failing, _ = items
            await mcp.call_tool(
                "fail_item",
                {"outcome_id": failing["outcome_id"], "lease_token": failing["lease_token"], "error": "boom"},
            )

            page, seen = await new_page(browser)
            await sign_in(page, base, planner)
            await page.click("text=board")
            await page.wait_for_function("window.matrixBoard && document.body.dataset.gridPainted")
            await page.wait_for_function("document.getElementById('live').classList.contains('on')")
            assert (
                await page.evaluate("(id) => window.matrixBoard.status(id)", watched["outcome_id"])
                == "generating"
            )

            # a worker completes an item over MCP: its cell turns complete on the page
            done = await mcp.call_tool(
                "complete_item", {"outcome_id": watched["outcome_id"], "lease_token": watched["lease_token"]}
            )
            assert not done.is_error
            await page.wait_for_function(
                "(id) => window.matrixBoard.status(id) === 'complete'",
                arg=watched["outcome_id"],
                timeout=5000,
            )
            await page.wait_for_timeout(100)  # the repaint is the next animation frame
            assert await pixel(page, watched["outcome_id"]) == GREEN

            # retry the failed item from the UI: select it in the failures view, confirm
            page.on("dialog", lambda d: d.accept())
            await page.wait_for_selector("#failures input[type=checkbox]")
            await page.check("#failures input[type=checkbox]")
            await page.click("[data-action=retry-selected]")
            await page.wait_for_function(
                "document.getElementById('action-result').textContent.includes('1 items re-queued')"
            )
            await page.wait_for_function(
                "(id) => window.matrixBoard.status(id) === 'pending'", arg=failing["outcome_id"], timeout=5000
            )
            await page.wait_for_timeout(100)
            assert await pixel(page, failing["outcome_id"]) == GREY
            assert (await api.get(f"/outcomes/{failing['outcome_id']}")).json()["status"] == "pending"

            # untrusted names and content render as text
            evil = await mcp.call_tool("claim_items", {"run": "board", "worker": "w2", "package": EVIL_NAME})
            evil_item = (evil.structured_content or {})["items"][0]
            await mcp.call_tool(
                "complete_item",
                {
                    "outcome_id": evil_item["outcome_id"],
                    "lease_token": evil_item["lease_token"],
                    "content": EVIL_CONTENT,
                },
            )
        await page.wait_for_function(
            "(id) => window.matrixBoard.status(id) === 'complete'", arg=evil_item["outcome_id"], timeout=5000
        )
        cell = await page.evaluate("(id) => window.matrixBoard.cell(id)", evil_item["outcome_id"])
        await page.click("#grid", position={"x": cell["x"] + 2, "y": cell["y"] + 2})
        await page.wait_for_function(
            "document.getElementById('d-content').textContent.includes('plain text')"
        )
        assert await page.text_content("#d-title") == f"{EVIL_NAME} / {EVIL_ITEM}"
        assert await page.text_content("#d-content") == EVIL_CONTENT
        assert EVIL_NAME in (await page.text_content("#packages") or "")
        assert await page.evaluate("window.__pwned") is None
        assert await page.evaluate("document.querySelectorAll('script').length") == 1  # board.js alone
        assert await page.evaluate("document.querySelectorAll('main img').length") == 0
        assert not [s for s in seen if not s.startswith("dialog: Retry")], seen
        await page.close()


async def test_a_reader_sees_no_actions(browser: Any, sqlite_settings: Settings) -> None:
    reader = await create_key(sqlite_settings, "reader", "matrix:read")
    planner = await create_key(sqlite_settings, "planner", "matrix:plan")
    async with serving(sqlite_settings, auth=True) as (base, _):
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {planner}"}) as api:
            await api.post(
                base + "/api/v1/runs", json={"name": "r", "packages": [{"name": "p", "items": ["a"]}]}
            )
        page, seen = await new_page(browser)
        await sign_in(page, base, reader)
        # the runs list: rows for the runs, and a run planned meanwhile appears by itself
        await page.wait_for_selector("#runs tbody tr")
        assert await page.locator("#runs tbody tr").count() == 1
        await page.wait_for_function("document.getElementById('live').classList.contains('on')")
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {planner}"}) as api:
            await api.post(
                base + "/api/v1/runs", json={"name": "later", "packages": [{"name": "p", "items": ["x"]}]}
            )
        await page.wait_for_function("document.querySelectorAll('#runs tbody tr').length === 2", timeout=5000)
        await page.goto(base + "/ui/runs/r")
        await page.wait_for_function("document.body.dataset.gridPainted")
        assert await page.locator("[data-action]").count() == 0
        assert await page.locator("#actions").count() == 0
        await page.wait_for_function("document.getElementById('run-state').textContent === 'active'")
        assert not seen, seen
        await page.close()


async def test_grid_screenshot_for_the_readme(browser: Any, sqlite_settings: Settings) -> None:
    """Writes docs/grid.png: a 12 × 40 run part-way through, as the board shows it."""
    async with (
        serving(sqlite_settings, auth=False) as (base, _),
        httpx2.AsyncClient(base_url=base + "/api/v1") as api,
    ):
        packages = [
            {"name": f"service-{i:02d}", "items": [f"module-{j:02d}" for j in range(40)]} for i in range(12)
        ]
        await api.post("/runs", json={"name": "docs-demo", "packages": packages, "max_attempts": 1})
        claimed = (await api.post("/runs/docs-demo/claim", json={"worker": "w", "limit": 300})).json()[
            "items"
        ]
        for n, item in enumerate(claimed):
            ref = {"lease_token": item["lease_token"]}
            if n % 11 == 5:
                await api.post(
                    f"/outcomes/{item['outcome_id']}/fail",
                    json={**ref, "error": "timeout", "retryable": False},
                )
            elif n % 5 != 4:
                metrics = {"lines_generated": 40 + n % 30, "quality_score": 0.7 + (n % 3) / 10}
                await api.post(
                    f"/outcomes/{item['outcome_id']}/complete",
                    json={**ref, "content": "ok", "metrics": metrics},
                )
        page, seen = await new_page(browser)
        await page.goto(base + "/ui/runs/docs-demo")
        await page.wait_for_function("document.body.dataset.gridPainted")
        await page.wait_for_selector("#packages tr")
        await page.wait_for_timeout(300)
        DOCS.mkdir(exist_ok=True)
        shot = DOCS / "grid.png"
        # the grid section alone: no times or rates in it, so the image is the same on every run
        await page.locator("section.grid-wrap").screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        assert not seen, seen
        await page.close()


async def test_the_board_reconnects_and_catches_up_after_a_restart(
    browser: Any, sqlite_settings: Settings
) -> None:
    """The server goes away under an open page; meanwhile an item completes; a new server process comes
    up on the same port: the page reconnects by itself and shows the change it missed."""
    from matrix_mcp.app import App
    from matrix_mcp.engine import Engine
    from matrix_mcp.http.app import matrix_service
    from matrix_mcp.http.options import ServiceOptions
    from matrix_mcp.models import PackageSpec
    from tests.support.http_helpers import free_port, running

    engine = await Engine.open(sqlite_settings)
    try:
        await engine.plan_run("r", packages=[PackageSpec(name="p", items=["a", "b"])])
        item = (await engine.claim_items("r", worker="w")).items[0]
    finally:
        await engine.close()
    port = free_port()
    options = ServiceOptions(host="127.0.0.1", port=port)
    page, seen = await new_page(browser)
    async with running(
        matrix_service(App(sqlite_settings), options, auth=False).app, port, graceful=1
    ) as base:
        await page.goto(base + "/ui/runs/r")
        await page.wait_for_function("document.getElementById('live').classList.contains('on')")
        assert await page.evaluate("(id) => window.matrixBoard.status(id)", item.outcome_id) == "generating"
    await page.wait_for_function("!document.getElementById('live').classList.contains('on')", timeout=10_000)
    engine = await Engine.open(sqlite_settings)
    try:
        await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
    finally:
        await engine.close()
    async with running(matrix_service(App(sqlite_settings), options, auth=False).app, port, graceful=1):
        await page.wait_for_function(
            "(id) => window.matrixBoard.status(id) === 'complete'", arg=item.outcome_id, timeout=15_000
        )
        await page.wait_for_function("document.getElementById('live').classList.contains('on')")
    assert not [s for s in seen if "error:" in s], seen
    await page.close()


async def test_a_run_named_with_a_slash_and_its_throughput_history(
    browser: Any, sqlite_settings: Settings
) -> None:
    """A run whose name holds `/` and `%` opens from the runs list (its link percent-encoded); the
    throughput chart opens with what finished before the page did, then grows live."""
    run = "team/docs 100%"
    async with serving(sqlite_settings, auth=False) as (base, _), client(base, None) as mcp:
        plan = await mcp.call_tool(
            "plan_run",
            {
                "name": run,
                "packages": [{"name": "p/q", "items": [f"i{j}" for j in range(5)]}],
                "max_attempts": 1,
            },
        )
        assert not plan.is_error
        claimed = await mcp.call_tool("claim_items", {"run": run, "worker": "w", "limit": 4})
        items = (claimed.structured_content or {})["items"]
        for item in items[:2]:
            await mcp.call_tool(
                "complete_item", {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]}
            )
        await mcp.call_tool(
            "fail_item",
            {"outcome_id": items[2]["outcome_id"], "lease_token": items[2]["lease_token"], "error": "x"},
        )

        page, seen = await new_page(browser)
        await page.goto(base + "/ui/")
        link = page.locator("#runs tbody a", has_text=run)
        assert await link.get_attribute("href") == "/ui/runs/team%2Fdocs%20100%25"
        await link.click()
        await page.wait_for_function("window.matrixBoard && document.body.dataset.gridPainted")
        assert page.url == base + "/ui/runs/team%2Fdocs%20100%25"
        assert await page.text_content("#run-name") == run
        assert "p/q" in (await page.text_content("#packages") or "")
        # history: the three finished before the page opened are on the chart at once
        await page.wait_for_function("window.matrixBoard.chart().length > 0")
        chart = await page.evaluate("window.matrixBoard.chart()")
        assert sum(p["v"] for p in chart) == 3 and 1 <= len(chart) <= 60
        assert "3 in all" in (await page.text_content("#chart-note") or "")
        # live: one more finishes over MCP and the chart extends
        await page.wait_for_function("document.getElementById('live').classList.contains('on')")
        last = items[3]
        await mcp.call_tool(
            "complete_item", {"outcome_id": last["outcome_id"], "lease_token": last["lease_token"]}
        )
        await page.wait_for_function(
            "window.matrixBoard.chart().reduce((n, p) => n + p.v, 0) === 4", timeout=5000
        )
        assert await page.evaluate("(id) => window.matrixBoard.status(id)", last["outcome_id"]) == "complete"
        assert not seen, seen
        await page.close()


async def finished_run_with_failures(settings: Settings) -> dict[str, str]:
    """Run "finished": 2 × 5 items, 6 complete, 3 failed at once (not retryable), 1 failed after all 3
    attempts; run "stopped": 1 × 4 items, 1 complete, then cancelled. Answers outcome ids by role."""
    from matrix_mcp.engine import Engine
    from matrix_mcp.models import PackageSpec, RunPolicy

    engine = await Engine.open(settings)
    try:
        policy = RunPolicy(max_attempts=3, backoff_seconds=0, backoff_cap_seconds=0)
        packages = [PackageSpec(name=f"pkg-{i}", items=[f"item-{j}" for j in range(5)]) for i in range(2)]
        await engine.plan_run("finished", packages=packages, policy=policy)
        claimed = (await engine.claim_items("finished", worker="w", limit=10)).items
        for item in claimed[:6]:
            await engine.complete_item(item.outcome_id, lease_token=item.lease_token)
        for item in claimed[6:9]:
            await engine.fail_item(
                item.outcome_id, lease_token=item.lease_token, error="bad spec", retryable=False
            )
        spent = claimed[9]
        for _ in range(3):
            await engine.fail_item(spent.outcome_id, lease_token=spent.lease_token, error="flaky")
            again = (await engine.claim_items("finished", worker="w")).items
            if again:
                spent = again[0]
        await engine.plan_run("stopped", packages=[PackageSpec(name="p", items=["a", "b", "c", "d"])])
        first = (await engine.claim_items("stopped", worker="w")).items[0]
        await engine.complete_item(first.outcome_id, lease_token=first.lease_token)
        await engine.control_run("stopped", action="cancel")
        status = await engine.run_status("finished")
        assert (status.state, status.counts.complete, status.counts.failed) == ("done", 6, 4)
        return {
            "complete": claimed[0].outcome_id,
            "not_retried": claimed[6].outcome_id,
            "spent": claimed[9].outcome_id,
        }
    finally:
        await engine.close()


async def shares(page: Any, bar: str) -> dict[str, float]:
    """The width of each segment of a progress bar, as a share of the bar's width (from the layout)."""
    got: dict[str, float] = await page.evaluate(
        """(sel) => {
            const bar = document.querySelector(sel);
            const whole = bar.getBoundingClientRect().width;
            const out = {};
            for (const part of ["complete", "failed", "cancelled"]) {
                out[part] = bar.querySelector(".bar." + part).getBoundingClientRect().width / whole;
            }
            return out;
        }""",
        bar,
    )
    return got


async def offered(page: Any) -> set[str]:
    """The actions a planner is offered: the action buttons that are visible."""
    names: list[str] = await page.evaluate(
        """() => Array.from(document.querySelectorAll("[data-action]"))
            .filter((b) => b.offsetParent !== null).map((b) => b.getAttribute("data-action"))"""
    )
    return set(names)


async def test_a_finished_run_with_failures_shows_its_shares_its_endings_and_only_retry(
    browser: Any, sqlite_settings: Settings
) -> None:
    ids = await finished_run_with_failures(sqlite_settings)
    async with serving(sqlite_settings, auth=False) as (base, _):
        page, seen = await new_page(browser)
        # the runs list: complete, failed and cancelled shares side by side, the numbers in the title
        await page.goto(base + "/ui/")
        await page.wait_for_selector("#runs tbody tr")
        row = page.locator("#runs tbody tr", has_text="finished")
        title = await row.locator(".progress").get_attribute("title")
        assert title == "100.0% finished: 6 complete, 4 failed, 0 cancelled of 10 items"
        assert await row.locator(".progress").get_attribute("aria-label") == title
        got = await shares(page, "#runs tbody tr:nth-child(1) .progress")
        if (await page.locator("#runs tbody tr:nth-child(1) a").text_content()) != "finished":
            got = await shares(page, "#runs tbody tr:nth-child(2) .progress")
        assert got == {
            "complete": pytest.approx(0.6, abs=0.02),
            "failed": pytest.approx(0.4, abs=0.02),
            "cancelled": 0,
        }
        stopped = page.locator("#runs tbody tr", has_text="stopped").locator(".progress")
        assert (
            await stopped.get_attribute("title")
            == "100.0% finished: 1 complete, 0 failed, 3 cancelled of 4 items"
        )

        # the run page: the same bar; only the retry actions (nothing left to pause, resume or cancel)
        await page.goto(base + "/ui/runs/finished")
        await page.wait_for_function("document.body.dataset.gridPainted")
        await page.wait_for_function("document.getElementById('actions').dataset.ready === '1'")
        assert await page.get_attribute("#progress", "title") == title
        got = await shares(page, "#progress")
        assert got == {
            "complete": pytest.approx(0.6, abs=0.02),
            "failed": pytest.approx(0.4, abs=0.02),
            "cancelled": 0,
        }
        assert await offered(page) == {"retry-all", "retry-package", "retry-selected"}
        assert "ETA –" in (await page.text_content("#counts") or "")

        # the item detail names how each item ended, and why a failed one was not retried
        async def detail(outcome_id: str) -> dict[str, str]:
            cell = await page.evaluate("(id) => window.matrixBoard.cell(id)", outcome_id)
            await page.click("#grid", position={"x": cell["x"] + 3, "y": cell["y"] + 3})
            await page.wait_for_function(
                "(id) => Array.from(document.querySelectorAll('#d-fields dd')).some((d) => d.textContent === id)",
                arg=outcome_id,
            )
            fields: dict[str, str] = await page.evaluate(
                """() => Object.fromEntries(Array.from(document.querySelectorAll("#d-fields dt"))
                    .map((dt) => [dt.textContent, dt.nextElementSibling.textContent]))"""
            )
            return fields

        spent = await detail(ids["spent"])
        assert spent["attempts"] == "3 of 3" and "failed" in spent and "completed" not in spent
        done = await detail(ids["complete"])
        assert done["attempts"] == "1 of 3" and done["completed"] and "failed" not in done
        failed = await detail(ids["not_retried"])
        assert failed["status"] == "failed" and "completed" not in failed and failed["failed"]
        assert failed["attempts"] == "failed for good after 1 of up to 3 attempts"

        await page.screenshot(path="/tmp/matrix-run-finished-with-failures.png", full_page=True)

        # a cancelled run offers nothing: no failed item to retry, and cancellation is final
        await page.goto(base + "/ui/runs/stopped")
        await page.wait_for_function("document.getElementById('actions').dataset.ready === '1'")
        assert await offered(page) == set()
        got = await shares(page, "#progress")
        assert got == {
            "complete": pytest.approx(0.25, abs=0.02),
            "failed": 0,
            "cancelled": pytest.approx(0.75, abs=0.02),
        }
        assert not seen, seen
        await page.close()


async def test_actions_follow_the_run_state_and_an_eta_needs_something_generating(
    browser: Any, sqlite_settings: Settings
) -> None:
    async with (
        serving(sqlite_settings, auth=False) as (base, _),
        httpx2.AsyncClient(base_url=base + "/api/v1") as api,
    ):
        await api.post(
            "/runs", json={"name": "live", "packages": [{"name": "p", "items": ["a", "b", "c", "d"]}]}
        )
        first = (await api.post("/runs/live/claim", json={"worker": "w"})).json()["items"][0]
        done = await api.post(
            f"/outcomes/{first['outcome_id']}/complete", json={"lease_token": first["lease_token"]}
        )
        assert done.status_code == 200, done.text
        status = (await api.get("/runs/live")).json()
        # the API still estimates from the recent rate; with nothing generating the board shows none
        assert status["counts"]["generating"] == 0 and status["eta_seconds"] is not None

        page, seen = await new_page(browser)
        await page.goto(base + "/ui/")
        await page.wait_for_selector("#runs tbody tr")
        assert (
            await page.locator("#runs tbody tr td").nth(11).text_content()
        ) == "–"  # ETA, after the blocked and in-review columns
        await page.goto(base + "/ui/runs/live")
        await page.wait_for_function("document.getElementById('actions').dataset.ready === '1'")
        await page.wait_for_function("document.getElementById('live').classList.contains('on')")
        assert (await page.text_content("#counts") or "").endswith("ETA –")
        assert await offered(page) == {"pause", "cancel"}  # active: nothing to resume, nothing failed

        # an item generating: an ETA again
        await api.post("/runs/live/claim", json={"worker": "w"})
        await page.wait_for_function(
            "!document.getElementById('counts').textContent.endsWith('ETA –')", timeout=5000
        )
        # paused: resume or cancel it, not pause it again
        assert (await api.post("/runs/live/control", json={"action": "pause"})).status_code == 200
        await page.wait_for_function(
            "document.getElementById('run-state').textContent === 'paused'", timeout=5000
        )
        await page.wait_for_function("!document.querySelector('[data-action=resume]').hidden", timeout=5000)
        assert await offered(page) == {"resume", "cancel"}
        assert not seen, seen
        await page.close()


async def tip_over(page: Any, outcome_id: str) -> tuple[bool, bool]:
    """Hovers an item's cell: whether the tooltip then lies inside the grid box's visible part, and
    inside the viewport."""
    cell = await page.evaluate("(id) => window.matrixBoard.cell(id)", outcome_id)
    await page.hover("#grid", position={"x": cell["x"] + cell["size"] / 2, "y": cell["y"] + cell["size"] / 2})
    await page.wait_for_function("!document.getElementById('tip').hidden")
    await page.wait_for_timeout(50)  # placed in the next animation frame
    box: dict[str, list[float]] = await page.evaluate(
        """() => {
            const box = document.getElementById("grid-box");
            const b = box.getBoundingClientRect();
            const t = document.getElementById("tip").getBoundingClientRect();
            const left = b.left + box.clientLeft, top = b.top + box.clientTop;
            return {
                tip: [t.left, t.top, t.right, t.bottom],
                box: [left, top, left + box.clientWidth, top + box.clientHeight],
                viewport: [0, 0, document.documentElement.clientWidth, document.documentElement.clientHeight],
            };
        }"""
    )

    def within(outer: list[float]) -> bool:
        tip = box["tip"]
        return (
            outer[0] - 0.5 <= tip[0]
            and outer[1] - 0.5 <= tip[1]
            and tip[2] <= outer[2] + 0.5
            and tip[3] <= outer[3] + 0.5
        )

    return within(box["box"]), within(box["viewport"])


async def test_the_grid_names_its_columns_and_keeps_its_tooltip_in_view(
    browser: Any, sqlite_settings: Settings
) -> None:
    async with (
        serving(sqlite_settings, auth=False) as (base, _),
        httpx2.AsyncClient(base_url=base + "/api/v1") as api,
    ):
        items = [
            "alpha",
            "beta",
            EVIL_ITEM,
            "a-rather-long-item-name-that-does-not-fit-the-header-band-at-all-x",
        ]
        packages = [{"name": f"pkg-{i}", "items": items} for i in range(3)]
        packages.append({"name": "odd", "items": ["alpha", "other", EVIL_ITEM]})
        await api.post("/runs", json={"name": "named", "packages": packages})
        wide = [{"name": f"w{i}", "items": [f"i{j}" for j in range(150)]} for i in range(3)]
        await api.post("/runs", json={"name": "wide", "packages": wide})

        page, seen = await new_page(browser)
        await page.goto(base + "/ui/runs/named")
        await page.wait_for_function("document.body.dataset.gridPainted")
        columns = await page.evaluate("window.matrixBoard.columns()")
        labels = columns["labels"]
        # a column every package names alike is labelled with that name (drawn, so markup stays text);
        # "beta" vs "other" differ, so that column is left to the tooltip; a long name is shortened
        assert labels[:2] == ["alpha", ""]
        for label, name in zip(labels[2:], items[2:], strict=True):
            assert label.endswith("…") and name.startswith(label[:-1]) and len(label) > 5
        assert 20 < columns["header"] <= 120
        # the header band holds ink above a labelled column, none above the unlabelled one
        ink = await page.evaluate(
            """(col) => {
                const canvas = document.getElementById("grid");
                const ratio = canvas.width / parseFloat(canvas.style.width);
                const cell = window.matrixBoard.cell(col);
                const { header } = window.matrixBoard.columns();
                const d = canvas.getContext("2d").getImageData(
                    Math.floor(cell.x * ratio), 0, Math.floor(cell.size * ratio), Math.floor(header * ratio)).data;
                let dark = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 128 && d[i] < 128) dark++;
                return dark;
            }""",
            (await api.get("/outcomes", params={"run": "named", "package": "pkg-0", "limit": 10})).json()[
                "outcomes"
            ][0]["id"],
        )
        assert ink > 20
        assert await page.evaluate("window.__pwned") is None

        # the tooltip over the last row stays inside the visible box (below the grid there is no room)
        odd = (await api.get("/outcomes", params={"run": "named", "package": "odd", "limit": 10})).json()
        for outcome in odd["outcomes"]:
            assert await tip_over(page, outcome["id"]) == (True, True), outcome["item"]
            assert (await page.text_content("#tip") or "").startswith("odd / " + outcome["item"])

        # cells too small to label: no header band, the tooltip alone names the item
        await page.goto(base + "/ui/runs/wide")
        await page.wait_for_function("document.body.dataset.gridPainted")
        assert await page.evaluate("window.matrixBoard.columns()") == {"header": 0, "labels": []}
        await page.hover("#grid", position={"x": 3, "y": 3})
        await page.wait_for_function("!document.getElementById('tip').hidden")
        assert (await page.text_content("#tip") or "").startswith("w0 / i0 — pending")
        corner = (await api.get("/outcomes", params={"run": "wide", "package": "w2", "limit": 200})).json()
        assert await tip_over(page, corner["outcomes"][-1]["id"]) == (True, True)  # bottom right
        assert not seen, seen
        await page.close()


VIOLET = (91, 33, 182)  # blocked: the bar across the cell


async def test_a_blocked_item_has_its_shape_its_detail_and_turns_pending_when_ready(
    browser: Any, sqlite_settings: Settings
) -> None:
    async with (
        serving(sqlite_settings, auth=False) as (base, _),
        httpx2.AsyncClient(base_url=base + "/api/v1") as api,
    ):
        packages = [
            {"name": "schema", "items": [{"name": "users", "locks": ["file:db.py"], "priority": 2}]},
            {"name": "services", "after": ["schema"], "max_concurrent": 1, "items": ["accounts", "rewards"]},
            {"name": "release", "items": [{"name": "tag", "after": ["services/accounts"]}]},
        ]
        assert (await api.post("/runs", json={"name": "staged", "packages": packages})).status_code == 201
        outcomes = (await api.get("/outcomes", params={"run": "staged"})).json()["outcomes"]
        ids = {o["item"]: o["id"] for o in outcomes}
        claimed = (await api.post("/runs/staged/claim", json={"worker": "w"})).json()["items"][0]
        assert claimed["item"] == "users"

        page, seen = await new_page(browser)
        await page.goto(base + "/ui/runs/staged")
        await page.wait_for_function("window.matrixBoard && document.body.dataset.gridPainted")
        await page.wait_for_function("document.getElementById('live').classList.contains('on')")
        assert await page.evaluate("(id) => window.matrixBoard.status(id)", ids["accounts"]) == "blocked"
        assert await pixel(page, ids["accounts"]) == VIOLET
        assert "blocked" in (await page.text_content(".legend") or "")
        await page.wait_for_function("document.getElementById('counts').textContent.includes('3 blocked')")
        row = await page.text_content("#packages tr:nth-child(2)")
        assert row is not None and "schema" in row  # services: after schema, capped at 1

        # the blocked item's detail says what it waits for; the claimed one, the key it holds
        cell = await page.evaluate("(id) => window.matrixBoard.cell(id)", ids["accounts"])
        await page.click("#grid", position={"x": cell["x"] + 2, "y": cell["y"] + 2})
        await page.wait_for_function(
            "document.getElementById('d-title').textContent === 'services / accounts'"
        )
        fields = await page.text_content("#d-fields")
        assert fields is not None and "waits forschema/*" in fields and "package afterschema" in fields
        cell = await page.evaluate("(id) => window.matrixBoard.cell(id)", ids["users"])
        await page.click("#grid", position={"x": cell["x"] + 2, "y": cell["y"] + 2})
        await page.wait_for_function("document.getElementById('d-title').textContent === 'schema / users'")
        fields = await page.text_content("#d-fields")
        assert fields is not None and "locks heldfile:db.py" in fields and "priority2" in fields

        # the last dependency completes: both services items turn pending live (the `ready` events)
        done = await api.post(
            f"/outcomes/{claimed['outcome_id']}/complete", json={"lease_token": claimed["lease_token"]}
        )
        assert done.status_code == 200, done.text
        for item in ("accounts", "rewards"):
            await page.wait_for_function(
                "(id) => window.matrixBoard.status(id) === 'pending'", arg=ids[item], timeout=5000
            )
        await page.wait_for_timeout(100)
        assert await pixel(page, ids["accounts"]) == GREY

        # accounts fails for good: tag, waiting on it, turns cancelled live (`dependents_cancelled`); a retry
        # of accounts puts tag back to blocked (the grid reloads: the retry's event does not name it)
        leased = (await api.post("/runs/staged/claim", json={"worker": "w", "package": "services"})).json()
        accounts = leased["items"][0]
        assert accounts["item"] == "accounts"
        failed = await api.post(
            f"/outcomes/{accounts['outcome_id']}/fail",
            json={"lease_token": accounts["lease_token"], "error": "boom", "retryable": False},
        )
        assert failed.status_code == 200, failed.text
        await page.wait_for_function(
            "(id) => window.matrixBoard.status(id) === 'cancelled'", arg=ids["tag"], timeout=5000
        )
        retried = await api.post("/runs/staged/retry", json={"outcome_ids": [accounts["outcome_id"]]})
        assert retried.json()["requeued"] == 1
        await page.wait_for_function(
            "(id) => window.matrixBoard.status(id) === 'blocked'", arg=ids["tag"], timeout=5000
        )
        assert await page.evaluate("(id) => window.matrixBoard.status(id)", ids["accounts"]) == "pending"
        assert not seen, seen
        await page.close()


async def test_review_an_item_from_its_detail_and_see_what_the_run_spent(
    browser: Any, sqlite_settings: Settings
) -> None:
    """Under review, a completion turns its cell in_review; the item's detail offers Approve / Reject (a
    planner's), whose note and principal land in the attempt history beside the attempt's note and usage;
    the packages table shows what each package spent and the run's total is above the grid, and a run its
    budget paused says so, on its page and in the runs list."""
    from matrix_mcp.engine import Engine
    from matrix_mcp.models import LeaseRef, PackageSpec, RunPolicy, Usage

    planner = await create_key(sqlite_settings, "planner", "matrix:plan", "matrix:read")
    engine = await Engine.open(sqlite_settings)
    try:
        await engine.plan_run(
            "rev",
            packages=[PackageSpec(name="p", items=["a", "b"])],
            policy=RunPolicy(review="required", backoff_seconds=0, max_attempts=3, max_cost_usd=0.2),
        )
        claimed = (await engine.claim_items("rev", worker="w1", limit=2)).items
        spent = Usage(input_tokens=1000, output_tokens=200, model="m1", cost_usd=0.125)
        for item in claimed:
            await engine.heartbeat(
                [LeaseRef(outcome_id=item.outcome_id, lease_token=item.lease_token, note="half way")]
            )
            await engine.complete_item(
                item.outcome_id, lease_token=item.lease_token, content="draft", usage=spent
            )
        first, second = (c.outcome_id for c in claimed)
        async with serving(sqlite_settings, auth=True) as (base, _):
            page, seen = await new_page(browser)
            await sign_in(page, base, planner)
            await page.goto(base + "/ui/runs/rev")
            await page.wait_for_function("window.matrixBoard && document.body.dataset.gridPainted")
            assert await page.evaluate("(id) => window.matrixBoard.status(id)", first) == "in_review"
            await page.wait_for_function("document.getElementById('spent').textContent.includes('$0.2500')")
            assert await page.text_content("#spent") == "Spent: $0.2500 · 2400 tokens"
            row = await page.locator("#packages tr").first.locator("td").all_text_contents()
            assert row[7:9] == ["2", "$0.2500"], row  # in review, cost
            await page.wait_for_function("document.getElementById('paused-reason').textContent !== ''")
            assert (await page.text_content("#paused-reason") or "").startswith(
                "Paused: budget max_cost_usd 0.2 exceeded"
            )

            # reject the first with a note: a new attempt, the decision in its history
            cell = await page.evaluate("(id) => window.matrixBoard.cell(id)", first)
            await page.click("#grid", position={"x": cell["x"] + 2, "y": cell["y"] + 2})
            await page.wait_for_selector("#d-review:not([hidden])")
            await page.fill("#d-review-note", "needs tests")
            await page.click("[data-review=reject]")
            await page.wait_for_function("document.getElementById('d-review-result').textContent !== ''")
            assert await page.text_content("#d-review-result") == "rejected: pending"
            assert await page.is_hidden("#d-review")
            history = await page.locator("#d-attempts tr").first.locator("td").all_text_contents()
            assert history[2] == "failed" and history[6] == "half way"
            assert history[7] == "1000 in · 200 out · m1 · $0.1250"
            assert history[8] == "rejected · needs tests · by key:planner"
            await page.wait_for_function(
                "(id) => window.matrixBoard.status(id) === 'pending'", arg=first, timeout=5000
            )

            # approve the second: complete
            cell = await page.evaluate("(id) => window.matrixBoard.cell(id)", second)
            await page.click("#grid", position={"x": cell["x"] + 2, "y": cell["y"] + 2})
            await page.wait_for_function(
                "document.getElementById('d-title').textContent === 'p / b' && !document.getElementById('d-review').hidden"
            )
            await page.click("[data-review=approve]")
            await page.wait_for_function(
                "document.getElementById('d-review-result').textContent === 'approved: complete'"
            )
            await page.wait_for_function(
                "(id) => window.matrixBoard.status(id) === 'complete'", arg=second, timeout=5000
            )
            assert (await engine.get_outcome(second)).history[0].review_decision == "approve"
            await page.goto(base + "/ui/")
            listed = page.locator("#runs tbody tr", has_text="rev")
            await listed.wait_for()
            cells = await listed.locator("td").all_text_contents()
            assert cells[1].startswith("paused — budget max_cost_usd 0.2 exceeded") and cells[-1] == "$0.2500"
            assert not seen, seen
            await page.close()
    finally:
        await engine.close()
