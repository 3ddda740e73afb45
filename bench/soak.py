"""Soak mode of the reliability suite: the same scenarios and checks as tests/reliability/test_reliability_*.py, longer.

    python bench/soak.py --rounds 5 [--backends sqlite,postgres] [--pg-restart]

Prints one line of counts per scenario and round, then a JSON summary; exits 1 on any violation.
`--pg-restart` also restarts the PostgreSQL cluster mid-run (it disturbs everyone sharing the cluster).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import PG_URL, _with_dbname
from tests.reliability.test_reliability_contention import contend
from tests.reliability.test_reliability_faults import kill_workers_until_done, kill_writers, plan
from tests.reliability.test_reliability_postgres import run_through_outages
from tests.support.reliability_helpers import check_store, completions_per_outcome


def new_database(backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'matrix.db'}"
    import psycopg
    from psycopg import sql

    name = "matrix_soak_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _with_dbname(PG_URL, name)


def drop_database(url: str) -> None:
    if url.startswith("sqlite"):
        return
    import psycopg
    from psycopg import sql

    name = url.rsplit("/", 1)[-1]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def worker_kills(url: str, tmp: Path, rnd: int, scale: int) -> dict[str, Any]:
    await plan(url, tmp / "a", "r", 4, 10 * scale, lease=1.0)
    counts = await kill_workers_until_done(url, tmp / "a", tmp / "logs", "r", 40 * scale, 6 * scale, seed=rnd)
    once = set(completions_per_outcome(url).values()) == {1}
    problems = await check_store(url, tmp / "a")
    return {**counts, "items": 40 * scale, "complete_exactly_once": once, "problems": problems}


async def writer_kills(url: str, tmp: Path, rnd: int, scale: int) -> dict[str, Any]:
    kills = await kill_writers(url, tmp / "a", tmp / "logs", 5 * scale, seed=rnd)
    return {"kills": kills, "problems": []}  # kill_writers asserts check_store after every kill


async def outages(url: str, tmp: Path, rnd: int, scale: int, restart: bool) -> dict[str, Any]:
    kinds = ["terminate", "refuse"] * (2 * scale) + (["restart"] if restart else [])
    counts = await run_through_outages(url, tmp / "a", tmp / "logs", kinds, seed=rnd)
    return {**counts, "problems": []}


async def contention(url: str, tmp: Path, rnd: int, scale: int) -> dict[str, Any]:
    report = await contend(url, tmp / "a", tmp / "logs", 8, 8.0 * scale)
    problems = list(report.pop("errors")) + await check_store(url, tmp / "a")
    return {**report, "problems": problems}


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scale", type=int, default=2, help="multiplies items, kills, outages and seconds")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--scenarios", default="worker_kills,writer_kills,outages,contention")
    p.add_argument("--pg-restart", action="store_true")
    a = p.parse_args()
    scenarios: dict[str, Callable[[str, Path, int, int], Awaitable[dict[str, Any]]]] = {
        "worker_kills": worker_kills,
        "writer_kills": writer_kills,
        "outages": lambda u, t, r, s: outages(u, t, r, s, a.pg_restart),
        "contention": contention,
    }
    results: list[dict[str, Any]] = []
    failed = 0
    for rnd in range(a.rounds):
        for backend in a.backends.split(","):
            for name in a.scenarios.split(","):
                if name == "outages" and backend != "postgres":
                    continue
                with tempfile.TemporaryDirectory() as d:
                    tmp = Path(d)
                    (tmp / "logs").mkdir()
                    url = new_database(backend, tmp)
                    t0 = time.monotonic()
                    try:
                        out = await scenarios[name](url, tmp, rnd, a.scale)
                    except Exception as exc:
                        out = {"problems": [f"{type(exc).__name__}: {exc}"[:2000]]}
                        traceback.print_exc()
                    finally:
                        drop_database(url)
                    out.update(
                        round=rnd, backend=backend, scenario=name, seconds=round(time.monotonic() - t0, 1)
                    )
                    failed += bool(out["problems"])
                    results.append(out)
                    print(json.dumps(out), flush=True)
    print(json.dumps({"runs": len(results), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
