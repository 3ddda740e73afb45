"""Two replicas on one PostgreSQL behave as one service: started with the shipped systemd unit's
ExecStart line, 16 concurrent HTTP workers alternate between them over 2,000 items; every item is
completed exactly once, the counters equal a recount, and a key revoked is refused by both."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import anyio
import httpx2
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from tests.support.http_helpers import client, create_key, free_port, post_init

pytestmark = [pytest.mark.anyio, pytest.mark.postgres, pytest.mark.slow]

UNIT = Path(__file__).parent.parent.parent / "deploy" / "matrix-mcp@.service"
WORKERS = 16
PACKAGES, ITEMS = 20, 100


def unit_command(port: int) -> list[str]:
    """The unit's ExecStart with this checkout's matrix-mcp and the instance name (%i) as the port."""
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart=").replace("%i", str(port)))
    script = shutil.which("matrix-mcp")
    assert script and argv[0].endswith("/matrix-mcp")
    return [script, *argv[1:]]


@contextmanager
def replicas(env: dict[str, str], count: int, cwd: Path) -> Iterator[list[str]]:
    ports = [free_port() for _ in range(count)]
    procs = [
        subprocess.Popen(unit_command(p), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for p in ports
    ]
    try:
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        deadline = time.monotonic() + 60
        for proc, base in zip(procs, bases, strict=True):
            while True:
                assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()[-2000:]
                try:
                    if httpx2.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                assert time.monotonic() < deadline, "a replica did not become ready"
                time.sleep(0.2)
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def test_two_replicas_one_database(postgres_database: str, tmp_path: Path) -> None:
    settings = Settings(database_url=postgres_database, artifacts_dir=tmp_path / "artifacts")
    planner = await create_key(settings, "planner", "plan", "read")
    worker_key = await create_key(settings, "workers", "matrix:work")
    temp = await create_key(settings, "temp", "matrix:read")
    env = {
        **os.environ,
        "MATRIX_DATABASE_URL": postgres_database,
        "MATRIX_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "MATRIX_RATE_LIMIT": "off",
        "MATRIX_KEY_CACHE_SECONDS": "1",
    }
    with replicas(env, 2, tmp_path) as bases:
        async with client(bases[0], planner) as c:
            packages = [
                {"name": f"p{i:02d}", "items": [f"i{j:03d}" for j in range(ITEMS)]} for i in range(PACKAGES)
            ]
            plan = await c.call_tool("plan_run", {"name": "big", "packages": packages})
            assert not plan.is_error, plan.content
            assert (plan.structured_content or {})["items"] == PACKAGES * ITEMS

        completed: list[str] = []

        async def work(n: int) -> None:
            mode = "auto" if n % 2 else "legacy"
            async with AsyncExitStack() as stack:
                # each worker alternates replicas call by call: claims on one, reports on the other
                clients = [await stack.enter_async_context(client(b, worker_key, mode)) for b in bases]
                turn = n
                while True:
                    got = await clients[turn % 2].call_tool(
                        "claim_items", {"run": "big", "worker": f"w{n}", "limit": 5}
                    )
                    turn += 1
                    assert not got.is_error, got.content
                    items = (got.structured_content or {})["items"]
                    if not items:
                        if (got.structured_content or {}).get("reason") == "done":
                            return
                        await anyio.sleep(0.05)
                        continue
                    for item in items:
                        done = await clients[turn % 2].call_tool(
                            "complete_item",
                            {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]},
                        )
                        turn += 1
                        assert not done.is_error, done.content
                        completed.append(item["outcome_id"])

        async with anyio.create_task_group() as tg:
            for n in range(WORKERS):
                tg.start_soon(work, n)

        assert len(completed) == PACKAGES * ITEMS == len(set(completed))

        # a key revoked (by the CLI, like an operator) is refused by both replicas within seconds
        async with httpx2.AsyncClient() as http:
            for base in bases:
                assert (await post_init(http, base, Authorization=f"Bearer {temp}")).status_code == 200
            revoke = await anyio.run_process(
                [shutil.which("matrix-mcp") or "matrix-mcp", "keys", "revoke", "temp"], env=env, check=False
            )
            assert revoke.returncode == 0, revoke.stderr
            deadline = time.monotonic() + 10
            for base in bases:
                while (await post_init(http, base, Authorization=f"Bearer {temp}")).status_code != 401:
                    assert time.monotonic() < deadline, f"{base} still accepts the revoked key"
                    await anyio.sleep(0.2)
            # the gauges agree across replicas
            gauges = [
                [
                    ln
                    for ln in (await http.get(f"{b}/metrics")).text.splitlines()
                    if ln.startswith("matrix_active")
                ]
                for b in bases
            ]
            # every package is finished, so none is labelled: all 2,000 items count under package="other"
            finished = 'matrix_active_outcomes{package="other",status="complete"} 2000.0'
            assert gauges[0] == gauges[1] and finished in gauges[0]

    engine = await Engine.open(settings)
    try:
        status = await engine.run_status("big")
        assert status.counts.complete == PACKAGES * ITEMS and status.state == "done"
        report = await engine.store.recount()
        assert report.consistent, report.mismatches
        attempts, cursor = [], None
        while True:
            page = await engine.list_outcomes(
                run="big", package=None, status=None, worker=None, limit=1000, cursor=cursor
            )
            attempts += [o.attempts for o in page.outcomes]
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        assert attempts == [1] * PACKAGES * ITEMS  # nobody's lease ran out, nothing ran twice
    finally:
        await engine.close()
