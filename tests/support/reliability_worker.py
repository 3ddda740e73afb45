"""A worker that is its own process: an MCP server (in-process `Client(create_server(...))`) plus a worker
loop, so killing this process kills the server mid-call. The reliability suite and `bench/soak.py` start
several of these, SIGKILL / SIGSTOP them at random points and check what the store kept.

Every line on stdout is one JSON object: {"ev": "ready"}, {"ev": "claimed", ...}, {"ev": "completed", ...},
{"ev": "error", "tool": ..., "text": ...}, {"ev": "stats", ...} (mixed mode, at the end).

Modes:
  work   claim → (hold) → complete, until the run is done.
  writer loop of plan / claim / complete (some on one shared path) / fail / heartbeat, forever.
  mixed  claims, reports, long-polls and summaries for --seconds, recording per-tool latency.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client

from matrix_mcp.config import Settings
from matrix_mcp.mcp.server import create_server

RETRYABLE = "retryable"


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Caller:
    def __init__(self, client: Client, worker: str) -> None:
        self.client = client
        self.worker = worker
        self.latency: dict[str, list[float]] = {}
        self.slowest: dict[str, float] = {}  # per tool, seconds: the longest any one call took to answer
        self.errors: list[str] = []

    async def call(self, tool: str, args: dict[str, Any], retry: bool = True) -> dict[str, Any] | None:
        """The structured result, or None after a tool error (emitted). Retryable errors are retried."""
        for _ in range(200):
            t0 = time.perf_counter()
            result = await self.client.call_tool(tool, args)
            took = time.perf_counter() - t0
            self.latency.setdefault(tool, []).append(took)
            self.slowest[tool] = max(self.slowest.get(tool, 0.0), took)
            if not result.is_error:
                return dict(result.structured_content or {})
            text = " ".join(getattr(c, "text", "") for c in result.content)
            emit(ev="error", tool=tool, text=text, worker=self.worker, seconds=round(took, 3))
            self.errors.append(f"{tool}: {text}")
            if retry and RETRYABLE in text:
                await anyio.sleep(0.2)
                continue
            return None
        return None


async def work(c: Caller, run: str, hold: float, hold_first: float) -> None:
    first = True
    while True:
        got = await c.call("claim_items", {"run": run, "worker": c.worker, "limit": random.randint(1, 3)})
        if got is None:
            await anyio.sleep(0.05)
            continue
        if not got["items"]:
            if got["reason"] in ("done", "cancelled"):
                emit(ev="finished", reason=got["reason"], slowest=c.slowest)
                return
            await anyio.sleep(min(0.2, got.get("retry_after_seconds") or 0.05))
            continue
        for item in got["items"]:
            emit(
                ev="claimed",
                outcome_id=item["outcome_id"],
                token=item["lease_token"],
                attempt=item["attempt"],
            )
            await anyio.sleep(hold_first if first else random.uniform(0, hold))
            first = False
            content = f"{item['outcome_id']}|{item['attempt']}|{c.worker}"
            args = {
                "outcome_id": item["outcome_id"],
                "lease_token": item["lease_token"],
                "content": content,
                "metrics": {"lines_generated": item["attempt"], "quality_score": 0.5},
            }
            emit(ev="reporting", outcome_id=item["outcome_id"], token=item["lease_token"])
            done = await c.call("complete_item", args)
            if done is not None:
                emit(
                    ev="completed", outcome_id=item["outcome_id"], token=item["lease_token"], content=content
                )
            else:
                emit(ev="rejected", outcome_id=item["outcome_id"], token=item["lease_token"])


async def writer(c: Caller, prefix: str) -> None:
    """Write as much as possible, in every shape, until killed."""
    n = 0
    while True:
        n += 1
        run = f"{prefix}-{n % 3}"
        packages = [
            {"name": f"p{i}", "items": [f"i{j}" for j in range(40)]} for i in range(random.randint(1, 4))
        ]
        await c.call("plan_run", {"name": run, "packages": packages, "lease_seconds": 0.5, "max_attempts": 3})
        got = await c.call("claim_items", {"run": run, "worker": c.worker, "limit": 12})
        items = (got or {}).get("items", [])
        async with anyio.create_task_group() as tg:
            for k, item in enumerate(items):
                ref = {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]}
                if k % 4 == 0:
                    tg.start_soon(
                        c.call, "fail_item", {**ref, "error": "injected", "retryable": k % 8 == 0}, False
                    )
                elif k % 4 == 1:
                    tg.start_soon(c.call, "heartbeat", {"leases": [ref]}, False)
                else:
                    args: dict[str, Any] = {**ref, "content": os.urandom(random.randint(1, 200_000)).hex()}
                    args["metrics"] = {"lines_generated": k, "quality_score": random.random()}
                    if k % 3 == 0:
                        args["outcome_path"] = "shared/out.txt"  # many reports race for one readable path
                    tg.start_soon(c.call, "complete_item", args, False)
        if n % 5 == 0:
            await c.call("retry_items", {"run": run}, False)
            await c.call(
                "record_integration_event", {"integration_type": "slack", "action": "post", "run": run}
            )


async def mixed(c: Caller, run: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    since = 0
    completed = 0
    while time.monotonic() < deadline:
        r = random.random()
        if r < 0.15:
            st = await c.call("run_status", {"run": run, "since": since, "wait_seconds": 0.5})
            since = (st or {}).get("latest_seq", since)
            continue
        if r < 0.25:
            await c.call("package_summary", {"package": f"p{random.randint(0, 7)}", "run": run})
            continue
        if r < 0.3:
            await c.call("system_metrics", {"run": run})
            continue
        got = await c.call(
            "claim_items",
            {"run": run, "worker": c.worker, "limit": 2, "wait_seconds": random.choice([0, 0.5])},
        )
        if got is None:
            continue
        if not got["items"] and got["reason"] in ("done", "cancelled"):
            break
        for item in got["items"]:
            ref = {"outcome_id": item["outcome_id"], "lease_token": item["lease_token"]}
            if random.random() < 0.1:
                await c.call("fail_item", {**ref, "error": "flaky", "retryable": True})
            else:
                done = await c.call("complete_item", {**ref, "content": f"{c.worker}:{item['item']}"})
                completed += done is not None
    emit(
        ev="stats",
        worker=c.worker,
        completed=completed,
        errors=c.errors,
        latency={k: v for k, v in c.latency.items()},
    )


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", required=True)
    p.add_argument("--artifacts-dir", required=True)
    p.add_argument("--mode", choices=["work", "writer", "mixed"], default="work")
    p.add_argument("--run", default="r")
    p.add_argument("--worker", default=f"w{os.getpid()}")
    p.add_argument("--hold", type=float, default=0.2)
    p.add_argument("--hold-first", type=float, default=None)
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("MATRIX_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    settings = Settings.from_env(database_url=a.database_url, artifacts_dir=Path(a.artifacts_dir))
    async with Client(create_server(settings)) as client:
        emit(ev="ready", pid=os.getpid())
        c = Caller(client, a.worker)
        if a.mode == "work":
            await work(c, a.run, a.hold, a.hold if a.hold_first is None else a.hold_first)
        elif a.mode == "writer":
            await writer(c, a.run)
        else:
            await mixed(c, a.run, a.seconds)


if __name__ == "__main__":
    anyio.run(main)
