"""Health, readiness and Prometheus metrics of the team service, over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx2
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from matrix_mcp.config import Settings
from matrix_mcp.telemetry import observe_integration_call
from tests.conftest import PG_URL
from tests.support.http_helpers import client, serving

pytestmark = pytest.mark.anyio


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_metrics_after_a_run(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with serving(settings, auth=False) as (base, _), serving(settings, auth=False) as (other, _):
        async with client(base, None) as c:
            await c.call_tool(
                "plan_run", {"name": "r", "packages": [{"name": "p", "items": ["a", "b", "c"]}]}
            )
            got = await c.call_tool("claim_items", {"run": "r", "worker": "w", "limit": 2})
            for item in (got.structured_content or {})["items"]:
                await c.call_tool(
                    "complete_item", {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]}
                )
            bad = await c.call_tool("get_outcome", {"outcome_id": "nope"})
            assert bad.is_error
        observe_integration_call("webhook", "success", 0.2)
        async with httpx2.AsyncClient() as http:
            r = await http.get(f"{base}/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            m = samples(r.text)
            assert m["matrix_tool_calls_total", (("result", "ok"), ("tool", "plan_run"))] == 1
            assert m["matrix_tool_calls_total", (("result", "ok"), ("tool", "complete_item"))] == 2
            assert m["matrix_tool_calls_total", (("result", "error"), ("tool", "get_outcome"))] == 1
            assert m["matrix_tool_call_duration_seconds_count", (("tool", "claim_items"),)] == 1
            assert (
                m["matrix_outcome_generation_seconds_count", (("outcome_type", "code"), ("package", "p"))]
                == 2
            )
            assert m["matrix_active_outcomes", (("package", "p"), ("status", "complete"))] == 2
            assert m["matrix_active_outcomes", (("package", "p"), ("status", "pending"))] == 1
            assert m["matrix_integration_calls_total", (("service", "webhook"), ("status", "success"))] == 1
            assert m["matrix_integration_duration_seconds_count", (("service", "webhook"),)] == 1
            assert m["matrix_http_requests_total", (("code", "200"),)] >= 6
            # every replica reads the gauges from the store: the other one, which served nothing, agrees
            o = samples((await http.get(f"{other}/metrics")).text)
            assert o["matrix_active_outcomes", (("package", "p"), ("status", "complete"))] == 2
            assert ("matrix_tool_calls_total", (("result", "ok"), ("tool", "plan_run"))) not in o
            # no unbounded labels: no run names, outcome ids or workers anywhere
            labels = {v for (_, ls) in m for (_, v) in ls}
            assert "r" not in labels and "w" not in labels


async def test_metrics_token_and_health(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with (
        serving(settings, auth=False, metrics_token="t0ken") as (base, _),
        httpx2.AsyncClient() as http,
    ):
        assert (await http.get(f"{base}/metrics")).status_code == 401
        assert (
            await http.get(f"{base}/metrics", headers={"Authorization": "Bearer wrong"})
        ).status_code == 401
        ok = await http.get(f"{base}/metrics", headers={"Authorization": "Bearer t0ken"})
        assert ok.status_code == 200 and "matrix_tool_calls_total" in ok.text
        assert (await http.get(f"{base}/healthz")).json() == {"status": "ok"}
        ready = await http.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"


@pytest.mark.postgres
async def test_readyz_reports_an_unreachable_database(postgres_database: str, tmp_path: Path) -> None:
    """The database goes away under a running service (dropped, connections terminated): /readyz says
    503 with the reason within its bound, /healthz still answers."""
    settings = Settings(database_url=postgres_database, artifacts_dir=tmp_path / "a")
    name = postgres_database.rsplit("/", 1)[1]
    async with serving(settings, auth=False) as (base, _), httpx2.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{base}/readyz")).status_code == 200
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(name))
            )
        start = time.monotonic()
        r = await http.get(f"{base}/readyz")
        assert r.status_code == 503, r.text
        assert r.json()["status"] == "unavailable" and "store" in r.json()["reason"]
        assert time.monotonic() - start < 10
        assert (await http.get(f"{base}/healthz")).status_code == 200
        await anyio.lowlevel.checkpoint()


async def test_metrics_labels_stay_bounded_and_the_host_is_checked(tmp_path: Path) -> None:
    """Packages are labelled only while they have unfinished work, at most MATRIX_METRICS_MAX_PACKAGES of
    them; the rest is `other`, so sums still equal the totals. /metrics answers only to allowed Host names."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with serving(settings, auth=False, metrics_max_packages=5) as (base, _):
        async with client(base, None) as c:
            big = [{"name": f"big-{i:02d}", "items": ["a"]} for i in range(40)]
            await c.call_tool("plan_run", {"name": "big", "packages": big})
            small = [{"name": f"done-{i}", "items": ["a"]} for i in range(3)]
            await c.call_tool("plan_run", {"name": "small", "packages": small})
            got = await c.call_tool("claim_items", {"run": "small", "worker": "w", "limit": 3})
            for item in (got.structured_content or {})["items"]:
                done = await c.call_tool(
                    "complete_item", {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]}
                )
                assert not done.is_error
        async with httpx2.AsyncClient() as http:
            first = samples((await http.get(f"{base}/metrics")).text)
            second = samples((await http.get(f"{base}/metrics")).text)
            rebound = await http.get(f"{base}/metrics", headers={"Host": "attacker.test"})
            assert rebound.status_code in (403, 421), rebound.status_code
            assert "matrix_" not in rebound.text

    def packages(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str) -> set[str]:
        return {dict(labels)["package"] for (name, labels) in m if name == metric}

    for m in (first, second):
        active = packages(m, "matrix_active_outcomes")
        assert len(active - {"other"}) <= 5 and "other" in active, active
        assert not any(p.startswith("done-") for p in active)  # finished: not labelled
        for status, total in (("pending", 40), ("complete", 3)):
            assert (
                sum(
                    v
                    for (n, ls), v in m.items()
                    if n == "matrix_active_outcomes" and ("status", status) in ls
                )
                == total
            )
    # the generation histogram: each finished package shown by one scrape, then no longer a series
    generated = "matrix_outcome_generation_seconds_count"
    assert packages(first, generated) == {"done-0", "done-1", "done-2"}
    assert packages(second, generated) == set()


def test_active_outcomes_lines_are_the_ones_prometheus_client_writes() -> None:
    """The scrape formats `matrix_active_outcomes` itself (15 µs a line through generate_latest): byte for
    byte what prometheus_client writes, for names that need escaping, big counts and the `other` rest."""
    from prometheus_client import CollectorRegistry, generate_latest

    from matrix_mcp.http.metrics import ActiveOutcomes

    active = ActiveOutcomes()
    active.totals = {"pending": 10**12, "generating": 3, "complete": 7, "failed": 1, "cancelled": 0}
    active.counts = {
        'quo"te\\back\nline': {"pending": 2, "complete": 7},
        "ünï / code": {"generating": 3},
        "other": {"pending": 1},
    }
    registry = CollectorRegistry()
    registry.register(active)
    assert active.exposition() == generate_latest(registry)
    m = samples(active.exposition().decode())
    assert m["matrix_active_outcomes", (("package", 'quo"te\\back\nline'), ("status", "pending"))] == 2
    assert m["matrix_active_outcomes", (("package", "other"), ("status", "pending"))] == 10**12 - 2
    active.totals, active.counts = {}, {}
    assert active.exposition() == generate_latest(registry)


async def test_metrics_count_tokens_and_cost_over_all_runs(tmp_path: Path) -> None:
    """matrix_tokens_total{kind} and matrix_cost_usd_total sum what every report spent, over all runs
    (complete and failed reports alike), read from the store at scrape time."""
    from matrix_mcp.engine import Engine
    from matrix_mcp.models import PackageSpec, Usage

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    async with serving(settings, auth=False) as (base, _), httpx2.AsyncClient() as http:
        before = samples((await http.get(f"{base}/metrics")).text)
        assert (
            before["matrix_tokens_total", (("kind", "input"),)] == 0
            and before["matrix_cost_usd_total", ()] == 0
        )
        engine = await Engine.open(settings)
        try:
            for run in ("r1", "r2"):
                await engine.plan_run(run, packages=[PackageSpec(name="p", items=["a"])])
                item = (await engine.claim_items(run, worker="w")).items[0]
                spent = Usage(input_tokens=10, output_tokens=2, cache_read_tokens=300, cost_usd=0.125)
                if run == "r1":
                    await engine.complete_item(item.outcome_id, lease_token=item.lease_token, usage=spent)
                else:
                    await engine.fail_item(
                        item.outcome_id, lease_token=item.lease_token, error="x", usage=spent
                    )
        finally:
            await engine.close()
        m = samples((await http.get(f"{base}/metrics")).text)
        assert {
            k: m["matrix_tokens_total", (("kind", k),)]
            for k in ("input", "output", "cache_read", "cache_creation")
        } == {
            "input": 20,
            "output": 4,
            "cache_read": 600,
            "cache_creation": 0,
        }
        assert m["matrix_cost_usd_total", ()] == 0.25
