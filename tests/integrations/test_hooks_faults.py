"""Events out under faults, with real processes on both backends: dispatchers SIGKILLed with deliveries
in flight and restarted (every event delivered at least once), and two processes dispatching one
subscription (nothing sent twice, except what was in flight at a kill)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.integrations.crypto import new_key
from matrix_mcp.integrations.service import Hooks
from matrix_mcp.integrations.settings import HookSettings
from matrix_mcp.models import PackageSpec
from tests.integrations.test_hooks_dispatch import until
from tests.support.hooks_helpers import Receiver

pytestmark = pytest.mark.anyio


def env_for(database_url: str, tmp_path: Path, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATRIX_")}
    env.update(
        MATRIX_DATABASE_URL=database_url,
        MATRIX_ARTIFACTS_DIR=str(tmp_path / "a"),
        MATRIX_ENCRYPTION_KEY=key,
        MATRIX_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        MATRIX_WEBHOOK_LEASE_SECONDS="1",
        MATRIX_WEBHOOK_POLL_SECONDS="0.2",
        MATRIX_WEBHOOK_BUSY_PAUSE="0.05",
        MATRIX_WEBHOOK_CIRCUIT_RECOVERY="0.5",
        MATRIX_WEBHOOK_RETRY_SCHEDULE=",".join(["0.1"] * 20),
    )
    return env


def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "matrix_mcp", "dispatch"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def produce(engine: Engine, run: str, n: int, pause: float = 0.0) -> list[str]:
    await engine.plan_run(run, packages=[PackageSpec(name="p", items=[f"i{i}" for i in range(n)])])
    done: list[str] = []
    while len(done) < n:
        for c in (await engine.claim_items(run, worker="w", limit=10)).items:
            await engine.complete_item(c.outcome_id, lease_token=c.lease_token, content="x")
            done.append(c.outcome_id)
        if pause:
            await anyio.sleep(pause)
    return done


async def test_sigkill_with_deliveries_in_flight_loses_nothing(database_url: str, tmp_path: Path) -> None:
    key = new_key()
    env = env_for(database_url, tmp_path, key)
    settings = Settings(database_url=database_url, artifacts_dir=tmp_path / "a")
    engine = await Engine.open(settings)
    # the receiver is slow and fails 30 % of the time: deliveries are in flight and in retry at each kill
    rng = random.Random(14)
    with Receiver(status=lambda n, b: 500 if rng.random() < 0.3 else 200, delay=0.05) as rx:
        hooks = Hooks(engine.store, database_url, HookSettings.from_env(env))
        await hooks.add(rx.url, events=["outcome.completed"])
        procs = [start(env)]
        try:
            async with anyio.create_task_group() as tg:

                async def killer() -> None:
                    for _ in range(3):
                        await anyio.sleep(1.0)
                        procs[-1].send_signal(signal.SIGKILL)
                        procs[-1].wait()
                        procs.append(start(env))

                tg.start_soon(killer)
                expected = set(await produce(engine, "r", 300, pause=0.1))
            try:
                await until(lambda: expected <= delivered(rx), timeout=30)
            except AssertionError:
                missing = expected - delivered(rx)
                page = await hooks.deliveries(limit=1000)
                st = Counter(d.status for d in page.deliveries)
                subs = (await hooks.list_all()).webhooks
                raise AssertionError(
                    f"missing {len(missing)} of {len(expected)}; deliveries {st}; {len(page.deliveries)}; subs {subs}"
                ) from None
        finally:
            for p in procs:
                p.kill()
                p.wait()
            await engine.close()
    assert expected <= delivered(rx) and len(procs) == 4
    assert 500 in rx.codes.values()


def delivered(rx: Receiver) -> set[str]:
    """Outcomes whose event the receiver accepted (answered 200) at least once."""
    with rx.lock:
        pairs = [(rx.requests[i], code) for i, code in rx.codes.items()]
    return {r[2]["data"]["outcome_id"] for r, code in pairs if code == 200}


async def test_two_processes_one_subscription_no_duplicates(database_url: str, tmp_path: Path) -> None:
    key = new_key()
    env = env_for(database_url, tmp_path, key)
    settings = Settings(database_url=database_url, artifacts_dir=tmp_path / "a")
    engine = await Engine.open(settings)
    with Receiver() as rx:
        hooks = Hooks(engine.store, database_url, HookSettings.from_env(env))
        await hooks.add(rx.url, events=["outcome.completed"])
        procs = [start(env), start(env)]
        try:
            expected = set(await produce(engine, "r", 200))
            await until(lambda: len(rx.requests) >= 200, timeout=60)
            await anyio.sleep(1.5)  # past a lease expiry: a second sender would show up now
            # then kill the holder, whoever it is, and carry on: the other one takes over
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            more = set(await produce(engine, "r2", 100))
            await until(lambda: len(rx.requests) >= 300, timeout=60)
            await anyio.sleep(1.5)
        finally:
            for p in procs:
                p.kill()
                p.wait()
            await engine.close()
    ids = Counter(h["webhook-id"] for h, _, _, _ in rx.requests)
    got = {b["data"]["outcome_id"] for b in rx.bodies()}
    assert expected | more <= got
    duplicates = sum(n - 1 for n in ids.values())
    # only a round in flight at the kill may be sent twice; here the kill comes once the first 200 were
    # delivered and recorded, so next to nothing
    assert duplicates <= 8, duplicates
