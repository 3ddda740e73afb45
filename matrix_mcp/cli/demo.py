"""`matrix-mcp demo`: the main job end to end, through real MCP clients and server processes.

An orchestrator client plans a 5×3 run on one stdio server; several worker clients, each with its own
server process on the same store, claim items, write a small artifact and report. The first attempt at
one item fails on purpose (a transient error the demo injects) to show the retry with backoff.
"""

from __future__ import annotations

import json
import random
import shlex
import sys
import time
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from matrix_mcp.cli.format import format_status, server_command
from matrix_mcp.cli.progress import LiveLine, progress_line
from matrix_mcp.config import DEFAULT_DATABASE_URL, Settings, redact_url

PACKAGES = ["auth-service", "billing-service", "catalog-service", "orders-service", "search-service"]
ITEMS = ["models", "api", "tests"]
FLAKY = ("orders-service", "api")


def _params(settings: Settings) -> StdioServerParameters:
    command, args = server_command(settings)
    return StdioServerParameters(command=command, args=args)


def _data(result: Any) -> dict[str, Any]:
    if result.is_error:  # the error's one line is in its structured content (the text is that, as JSON)
        error = (result.structured_content or {}).get("error")
        raise RuntimeError(error or " ".join(getattr(c, "text", "") for c in result.content))
    return dict(result.structured_content or {})


def _generate(package: str, item: str, spec: dict[str, Any]) -> str:
    cls = "".join(part.capitalize() for part in package.split("-"))
    return (
        f'"""{item} for {package}: {spec.get("brief", "")}"""\n\n\n'
        f"class {cls}{item.capitalize()}:\n"
        f"    name = {package!r}\n"
        f"    part = {item!r}\n\n"
        f"    def describe(self) -> str:\n"
        f"        return f'{{self.name}}/{{self.part}}'\n"
    )


async def _worker(settings: Settings, run: str, name: str, injected: set[str], log: list[str]) -> int:
    done = 0
    async with Client(_params(settings)) as client:
        while True:
            claim = _data(
                await client.call_tool("claim_items", {"run": run, "worker": name, "wait_seconds": 5})
            )
            if not claim["items"]:
                if claim.get("reason") in ("done", "cancelled", "empty"):
                    return done
                continue
            for item in claim["items"]:
                key = f"{item['package']}/{item['item']}"
                await anyio.sleep(random.uniform(0.2, 0.6))  # the "generation" of this demo
                if (item["package"], item["item"]) == FLAKY and key not in injected:
                    injected.add(key)
                    await client.call_tool(
                        "fail_item",
                        {
                            "outcome_id": item["outcome_id"],
                            "lease_token": item["lease_token"],
                            "error": "demo: injected transient error on the first attempt",
                        },
                    )
                    log.append(f"{name}: {key} attempt {item['attempt']} failed (injected), will be retried")
                    continue
                content = _generate(item["package"], item["item"], item.get("specifications") or {})
                _data(
                    await client.call_tool(
                        "complete_item",
                        {
                            "outcome_id": item["outcome_id"],
                            "lease_token": item["lease_token"],
                            "content": content,
                            "outcome_path": f"{item['package']}/{item['item']}.py",  # inside the run's folder
                            "metrics": {
                                "lines_generated": content.count("\n"),
                                "quality_score": round(random.uniform(0.8, 1.0), 2),
                            },
                            "metadata": {"worker": name, "attempt": item["attempt"]},
                        },
                    )
                )
                done += 1


async def run_demo(settings: Settings, workers: int = 3, run: str | None = None) -> int:
    run = run or time.strftime("demo-%Y%m%d-%H%M%S")
    out = sys.stdout
    print(
        f"Matrix demo: run '{run}' on {redact_url(settings.database_url)}, {workers} worker processes",
        file=out,
    )
    started = time.monotonic()
    async with Client(_params(settings)) as orchestrator:
        plan = _data(
            await orchestrator.call_tool(
                "plan_run",
                {
                    "name": run,
                    "goal": "Scaffold five microservices: models, API and tests for each.",
                    "packages": [
                        {
                            "name": p,
                            "description": f"The {p.split('-')[0]} service.",
                            "items": [
                                {"name": i, "specifications": {"brief": f"{i} layer of {p}"}} for i in ITEMS
                            ],
                        }
                        for p in PACKAGES
                    ],
                    "lease_seconds": 30,
                    "backoff_seconds": 0.5,
                    "outcome_schema": {
                        "type": "object",
                        "properties": {
                            "metrics": {
                                "type": "object",
                                "properties": {
                                    "quality_score": {"type": "number", "minimum": 0, "maximum": 1}
                                },
                                "required": ["lines_generated"],
                            }
                        },
                    },
                },
            )
        )
        print(f"planned {plan['packages']} packages × {len(ITEMS)} items = {plan['items']} items", file=out)
        injected: set[str] = set()
        notes: list[str] = []
        counts: dict[str, int] = {}

        async def watch(done: anyio.Event) -> None:
            seq = 0
            live = LiveLine(out, every=0.0)  # the demo is short: every redraw is shown
            while not done.is_set():
                status = _data(
                    await orchestrator.call_tool("run_status", {"run": run, "since": seq, "wait_seconds": 1})
                )
                seq = status["latest_seq"]
                c = status["counts"]
                for note in notes:
                    live.note(note)
                notes.clear()
                live.show(progress_line(c))
                counts.update(c)
                if c["pending"] + c["generating"] == 0:
                    break
            live.close()

        finished = anyio.Event()
        results: list[int] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, finished)

            async def one(n: int) -> None:
                results.append(await _worker(settings, run, f"worker-{n}", injected, notes))

            async with anyio.create_task_group() as workers_tg:
                for n in range(1, workers + 1):
                    workers_tg.start_soon(one, n)
            finished.set()
        final = _data(await orchestrator.call_tool("run_status", {"run": run}))
        print(file=out)
        print(_render(final), file=out)
        elapsed = time.monotonic() - started
        c = final["counts"]
        print(
            f"\n{c['complete']}/{c['total']} complete, {c['failed']} failed in {elapsed:.1f} s; "
            f"items per worker: {sorted(results, reverse=True)}",
            file=out,
        )
        print(
            f"artifacts under {settings.artifacts_dir}/{run}/ · details: {status_command(settings, run)}",
            file=out,
        )
        return 0 if c["complete"] == c["total"] else 1


def status_command(settings: Settings, run: str) -> str:
    """The `matrix-mcp status` command that shows this run: with --database-url unless it is the default
    (a password is shown as *** — put it back, or set MATRIX_DATABASE_URL)."""
    command = ["matrix-mcp", "status", run]
    if settings.database_url != DEFAULT_DATABASE_URL:
        command += ["--database-url", redact_url(settings.database_url)]
    return shlex.join(command)


def _render(status: dict[str, Any]) -> str:
    from matrix_mcp.models import RunStatus

    return format_status(RunStatus.model_validate_json(json.dumps(status)))
