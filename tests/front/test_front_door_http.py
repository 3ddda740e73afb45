"""What a new user trips over at the service's door: the bare address, a wrong key on /mcp, the status of
a newly planned run, and a finished run's `updated_at` — over real HTTP and on both backends."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.http.endpoints import PREFIX
from matrix_mcp.http.guard import REJECTED_TOKEN
from matrix_mcp.models import ItemSpec, PackageSpec, RunPolicy
from tests.support.http_helpers import create_key, post_init, serving

pytestmark = pytest.mark.anyio


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")


@pytest.mark.parametrize("auth", [True, False])
async def test_the_bare_address_redirects_to_the_board(sqlite_settings: Settings, auth: bool) -> None:
    if auth:
        await create_key(sqlite_settings, "reader", "matrix:read")
    async with serving(sqlite_settings, auth=auth) as (base, _), httpx2.AsyncClient() as http:
        root = await http.get(f"{base}/")
        assert root.status_code == 307 and root.headers["location"] == "/ui/"
        # the board itself still asks for a credential when the service has them
        board = await http.get(f"{base}/", follow_redirects=True)
        assert board.url.path in ("/ui/", "/ui/signin")
        assert (board.url.path == "/ui/signin") is auth
        assert (await http.post(f"{base}/")).status_code == 405


async def test_a_wrong_key_on_mcp_is_told_apart_from_a_missing_one(sqlite_settings: Settings) -> None:
    await create_key(sqlite_settings, "planner-of-secrets", "matrix:read")
    async with serving(sqlite_settings, auth=True) as (base, _), httpx2.AsyncClient() as http:
        metadata = f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"'
        missing = await post_init(http, base)
        assert missing.status_code == 401
        assert missing.json() == {"error": "invalid_token", "error_description": "Authentication required"}
        for token in ("mtx_wrong", "mtx_" + "a" * 43, "not-a-jwt", "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"):
            wrong = await post_init(http, base, Authorization=f"Bearer {token}")
            assert wrong.status_code == 401, token
            assert wrong.json() == {"error": "invalid_token", "error_description": REJECTED_TOKEN}
            challenge = wrong.headers["www-authenticate"]
            # the SDK's shape: scheme, error, description, where the metadata is
            assert challenge == (
                f'Bearer error="invalid_token", error_description="{REJECTED_TOKEN}", {metadata}'
            )
            assert "planner" not in wrong.text + challenge  # nothing about the keys that exist
        assert missing.json()["error_description"] != REJECTED_TOKEN
        assert metadata in missing.headers["www-authenticate"]
        exposition = (await http.get(f"{base}/metrics")).text
        assert "matrix_auth_failures_total 5.0" in exposition


async def test_planning_a_new_run_answers_201_and_replanning_200(settings: Settings) -> None:
    async with (
        serving(settings, auth=False) as (base, _),
        httpx2.AsyncClient(base_url=base + PREFIX) as api,
    ):
        plan = {"name": "r", "packages": [{"name": "p", "items": ["a", "b"]}]}
        created = await api.post("/runs", json=plan)
        assert created.status_code == 201, created.text
        assert created.json()["created"] is True and created.json()["added_items"] == 2
        again = await api.post("/runs", json=plan)
        assert again.status_code == 200, again.text
        assert again.json()["created"] is False and again.json()["added_items"] == 0
        extended = await api.post("/runs", json={"name": "r", "packages": [{"name": "q", "items": ["c"]}]})
        assert extended.status_code == 200, extended.text
        assert extended.json()["created"] is False and extended.json()["added_items"] == 1
        refused = await api.post("/runs", json={"name": "", "packages": []})
        assert refused.status_code == 400
        doc = (await api.get("/openapi.json")).json()
        responses = doc["paths"][f"{PREFIX}/runs"]["post"]["responses"]
        assert responses["201"]["content"] == responses["200"]["content"]
        assert "201" not in doc["paths"][f"{PREFIX}/runs/{{run}}/claim"]["post"]["responses"]


async def test_a_run_is_updated_when_its_last_item_finishes(engine: Engine) -> None:
    t = 1_000_000.0
    engine.now = lambda: t  # type: ignore[method-assign]
    await engine.plan_run(
        "r",
        packages=[PackageSpec(name="p", items=[ItemSpec(name="a"), ItemSpec(name="b")])],
        policy=RunPolicy(max_attempts=1),
    )
    planned = (await engine.get_run("r")).updated_at
    t += 10
    claim = await engine.claim_items("r", worker="w", limit=2)
    first, second = claim.items
    t += 10
    await engine.complete_item(first.outcome_id, lease_token=first.lease_token)
    assert (await engine.get_run("r")).updated_at == planned  # work is left: not finished yet
    t += 10
    await engine.fail_item(second.outcome_id, lease_token=second.lease_token, error="boom")
    run = await engine.get_run("r")
    assert run.state == "done" and run.updated_at.timestamp() == t
    assert run.updated_at > planned
    assert [r.updated_at for r in (await engine.list_runs()).runs] == [run.updated_at]

    # a cancelled run: the last item to finish (here cancelled by the cancel itself) dates it
    await engine.plan_run("c", packages=[PackageSpec(name="p", items=[ItemSpec(name="x")])])
    t += 10
    await engine.control_run("c", action="cancel")
    cancelled = await engine.get_run("c")
    assert cancelled.state == "cancelled" and cancelled.updated_at.timestamp() == t
