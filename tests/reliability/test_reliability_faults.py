"""Faults on both backends: workers SIGKILLed at random points, a frozen worker's late report, servers
killed mid-transaction in a loop. Each scenario ends with `check_store` (integrity, counters = recount,
events, artifacts). Bounded for CI; `bench/soak.py` runs the same scenarios longer."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import anyio
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import PackageSpec, RunPolicy
from tests.support.reliability_helpers import WorkerProcess, check_store, completions_per_outcome, run_counts

pytestmark = pytest.mark.anyio

KILLS = 6
WRITER_KILLS = 5


async def plan(url: str, artifacts: Path, run: str, n: int, m: int, lease: float) -> None:
    engine = await Engine.open(Settings(database_url=url, artifacts_dir=artifacts))
    try:
        packages = [PackageSpec(name=f"p{i}", items=[f"i{j}" for j in range(m)]) for i in range(n)]
        await engine.plan_run(run, packages=packages, policy=RunPolicy(lease_seconds=lease, max_attempts=100))
    finally:
        await engine.close()


async def kill_workers_until_done(
    url: str, artifacts: Path, logs: Path, run: str, total: int, kills: int, workers: int = 3, seed: int = 0
) -> dict[str, int]:
    """Run `workers` worker processes; SIGKILL a random one at a random point `kills` times (replacing it);
    wait for the run to finish. Returns counts for the report."""
    rng = random.Random(seed)
    procs: list[WorkerProcess] = []
    spawned = 0

    def spawn() -> WorkerProcess:
        nonlocal spawned
        spawned += 1
        p = WorkerProcess(
            logs, f"w{spawned}", url, artifacts, "--run", run, "--worker", f"w{spawned}", "--hold", "0.3"
        )
        procs.append(p)
        return p

    live = [spawn() for _ in range(workers)]
    done_kills = 0
    killed_holding = 0
    try:
        with anyio.fail_after(240):
            while done_kills < kills:
                await anyio.sleep(rng.uniform(0.3, 1.5))
                victim = rng.choice(live)
                evs = victim.events()
                if not any(e["ev"] == "ready" for e in evs):
                    continue
                claimed = {e["outcome_id"] for e in evs if e["ev"] == "claimed"}
                finished = {e["outcome_id"] for e in evs if e["ev"] in ("completed", "rejected")}
                killed_holding += len(claimed - finished)
                victim.kill()
                done_kills += 1
                live.remove(victim)
                live.append(spawn())
            for p in live:
                assert await p.wait_exit(240) == 0, p.stderr()[-3000:]
    finally:
        for p in procs:
            if p.alive():
                p.kill()
    counts = run_counts(url, run)
    assert counts == {"complete": total}, counts
    return {"kills": done_kills, "leases_held_when_killed": killed_holding, "processes": spawned}


async def test_workers_killed_at_random_points_lose_nothing(database_url: str, tmp_path: Path) -> None:
    artifacts, logs = tmp_path / "artifacts", tmp_path / "logs"
    logs.mkdir()
    await plan(database_url, artifacts, "r", 4, 10, lease=1.0)
    await kill_workers_until_done(database_url, artifacts, logs, "r", 40, KILLS)
    per_outcome = completions_per_outcome(database_url)
    assert len(per_outcome) == 40 and set(per_outcome.values()) == {1}  # complete exactly once
    assert await check_store(database_url, artifacts) == []
    # each artifact is the report of the attempt that completed it
    engine = await Engine.open(Settings(database_url=database_url, artifacts_dir=artifacts))
    try:
        page = await engine.list_outcomes(run="r", limit=100)
        for o in page.outcomes:
            data, _ = await engine.outcome_content(o.id)
            oid, attempt, worker = data.decode().split("|")
            assert oid == o.id and int(attempt) == o.attempts and worker == o.worker
    finally:
        await engine.close()


async def test_a_frozen_workers_late_report_is_rejected(database_url: str, tmp_path: Path) -> None:
    """A worker stopped (SIGSTOP) while holding a lease wakes after its item was re-claimed and completed:
    its report is rejected and the newer content stays."""
    artifacts, logs = tmp_path / "artifacts", tmp_path / "logs"
    logs.mkdir()
    await plan(database_url, artifacts, "r", 1, 3, lease=1.0)
    late = WorkerProcess(
        logs, "late", database_url, artifacts, "--run", "r", "--worker", "late", "--hold-first", "1.5"
    )
    fresh: WorkerProcess | None = None
    try:
        claimed = await late.wait_for("claimed")
        late.signal(signal.SIGSTOP)
        fresh = WorkerProcess(
            logs, "fresh", database_url, artifacts, "--run", "r", "--worker", "fresh", "--hold", "0"
        )
        assert await fresh.wait_exit() == 0, fresh.stderr()[-3000:]
        late.signal(signal.SIGCONT)
        assert await late.wait_exit() == 0, late.stderr()[-3000:]
        verdict = [
            e
            for e in late.events()
            if e.get("outcome_id") == claimed["outcome_id"] and e["ev"] in ("completed", "rejected")
        ]
        assert verdict and verdict[0]["ev"] == "rejected", late.events()
        errors = [e for e in late.events() if e["ev"] == "error"]
        assert errors and "lease_token" in errors[0]["text"], errors
    finally:
        for p in (late, fresh):
            if p is not None and p.alive():
                p.signal(signal.SIGCONT)
                p.kill()
    engine = await Engine.open(Settings(database_url=database_url, artifacts_dir=artifacts))
    try:
        data, _ = await engine.outcome_content(claimed["outcome_id"])
        assert data.decode().endswith("|fresh")
        assert (artifacts / "r" / "p0").exists()
        assert all(f.read_text().endswith("|fresh") for f in (artifacts / "r" / "p0").iterdir())
    finally:
        await engine.close()
    assert completions_per_outcome(database_url)[claimed["outcome_id"]] == 1
    assert await check_store(database_url, artifacts) == []


async def kill_writers(url: str, artifacts: Path, logs: Path, kills: int, seed: int = 0) -> int:
    """Start a writer process, SIGKILL it at a random point, check the store, repeat. Returns kills done."""
    rng = random.Random(seed)
    for k in range(kills):
        w = WorkerProcess(
            logs, f"writer{k}", url, artifacts, "--mode", "writer", "--run", "wr", "--worker", f"writer{k}"
        )
        try:
            await w.wait_for("ready")
            await anyio.sleep(rng.uniform(0.2, 1.5))
            assert w.alive(), w.stderr()[-3000:]
        finally:
            w.kill()
        problems = await check_store(url, artifacts)
        assert problems == [], f"after kill {k + 1}: {problems}"
    return kills


async def test_servers_killed_mid_transaction_leave_a_consistent_store(
    database_url: str, tmp_path: Path
) -> None:
    artifacts, logs = tmp_path / "artifacts", tmp_path / "logs"
    logs.mkdir()
    assert await kill_writers(database_url, artifacts, logs, WRITER_KILLS) == WRITER_KILLS
    # the writers did write: some outcomes completed with content on the shared path
    assert sum(run_counts(database_url, f"wr-{i}")["complete"] for i in range(3)) > 0
