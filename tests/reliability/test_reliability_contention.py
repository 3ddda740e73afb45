"""Contention: 8 server processes on one SQLite file and on one PostgreSQL database under a mixed load of
claims, reports, long-polls and summaries: no "database is locked", no deadlock surfaced, no error at all,
the store consistent afterwards; p50/p99 tool latency printed (never asserted: the machine is shared)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.test_reliability_faults import plan
from tests.support.reliability_helpers import WorkerProcess, check_store, percentile

pytestmark = pytest.mark.anyio

PROCESSES = 8
SECONDS = float(os.environ.get("MATRIX_CONTENTION_SECONDS", "8"))


async def contend(url: str, artifacts: Path, logs: Path, processes: int, seconds: float) -> dict[str, Any]:
    await plan(url, artifacts, "r", 8, 40, lease=300)
    procs = [
        WorkerProcess(
            logs,
            f"m{n}",
            url,
            artifacts,
            "--mode",
            "mixed",
            "--run",
            "r",
            "--worker",
            f"m{n}",
            "--seconds",
            str(seconds),
        )
        for n in range(processes)
    ]
    try:
        for p in procs:
            await p.wait_for("ready", timeout=180)
        for p in procs:
            assert await p.wait_exit(seconds + 180) == 0, p.stderr()[-3000:]
    finally:
        for p in procs:
            if p.alive():
                p.kill()
    stats = [e for p in procs for e in p.events() if e["ev"] == "stats"]
    assert len(stats) == processes
    latency: dict[str, list[float]] = {}
    for s in stats:
        for tool, values in s["latency"].items():
            latency.setdefault(tool, []).extend(values)
    errors = [e for s in stats for e in s["errors"]]
    every = [v for values in latency.values() for v in values]
    return {
        "processes": processes,
        "calls": len(every),
        "completed": sum(s["completed"] for s in stats),
        "errors": errors,
        "p50_ms": round(percentile(every, 0.5) * 1000, 1),
        "p99_ms": round(percentile(every, 0.99) * 1000, 1),
        "per_tool_p99_ms": {t: round(percentile(v, 0.99) * 1000, 1) for t, v in sorted(latency.items())},
    }


async def test_eight_server_processes_under_mixed_load(database_url: str, tmp_path: Path) -> None:
    artifacts, logs = tmp_path / "artifacts", tmp_path / "logs"
    logs.mkdir()
    report = await contend(database_url, artifacts, logs, PROCESSES, SECONDS)
    print(f"\ncontention {database_url.split(':')[0]}: {json.dumps(report)}")
    assert not [e for e in report["errors"] if "locked" in e or "deadlock" in e], report["errors"][:5]
    assert report["errors"] == []
    assert report["calls"] > PROCESSES and report["completed"] > 0
    assert await check_store(database_url, artifacts) == []
