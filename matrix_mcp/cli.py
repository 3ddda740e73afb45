"""Command line: serve (stdio / streamable-http), demo, status, export.

`matrix-mcp` with no command serves stdio. Only the serve path is imported eagerly enough to
keep cold start fast; the demo and reports import what they need when they run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from matrix_mcp import __version__
from matrix_mcp.config import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="matrix-mcp",
        description="Durable N×M orchestration for AI agents over MCP. With no command: serve stdio.",
    )
    p.add_argument("--version", action="version", version=f"matrix-mcp {__version__}")
    p.add_argument("--database-url", help="sqlite:///path.db or postgresql://… (env MATRIX_DATABASE_URL)")
    p.add_argument("--artifacts-dir", help="where outcome content is stored (env MATRIX_ARTIFACTS_DIR)")
    p.add_argument("--log-level", default=os.environ.get("MATRIX_LOG_LEVEL", "WARNING"))
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve MCP (default: stdio)")
    serve.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    demo = sub.add_parser("demo", help="run a 5×3 job end to end with concurrent worker processes")
    demo.add_argument("--workers", type=int, default=3)
    demo.add_argument("--run", default=None, help="run name (default: demo-<time>)")
    status = sub.add_parser("status", help="print runs, or one run's per-package progress")
    status.add_argument("run", nargs="?")
    status.add_argument("--check", action="store_true", help="also verify the counters against a recount")
    export = sub.add_parser("export", help="write a run's outcomes to stdout")
    export.add_argument("run")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    gc = sub.add_parser("gc", help="delete stored content no outcome refers to (left by rejected reports)")
    gc.add_argument(
        "--older-than",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="untouched this long (default 3600)",
    )
    from matrix_mcp.integrations.cli import add_parsers

    add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        settings = Settings.from_env(database_url=args.database_url, artifacts_dir=args.artifacts_dir)
    except ValueError as exc:
        sys.exit(f"matrix-mcp: {exc}")
    command = args.command or "serve"
    if command == "serve":
        from matrix_mcp.server import create_server

        server = create_server(settings)
        transport = getattr(args, "transport", "stdio")
        if transport == "stdio":
            server.run()
        else:
            server.run("streamable-http", host=args.host, port=args.port)
        return
    import anyio

    if command == "demo":
        from matrix_mcp.demo import run_demo

        sys.exit(anyio.run(run_demo, settings, args.workers, args.run))
    if command == "status":
        anyio.run(_status, settings, args.run, args.check)
    elif command == "export":
        anyio.run(_export, settings, args.run, args.format)
    elif command == "gc":
        anyio.run(_gc, settings, args.older_than)
    elif command in ("hooks", "dispatch"):
        from matrix_mcp.integrations import cli as hooks_cli

        anyio.run(hooks_cli.run, settings, args)


async def _status(settings: Settings, run: str | None, check: bool) -> None:
    from matrix_mcp.config import sqlite_path
    from matrix_mcp.engine import Engine
    from matrix_mcp.store.base import StoreError

    path = sqlite_path(settings.database_url)
    if path is not None and str(path) != ":memory:" and not path.exists():
        # reading must not create a store (and a .matrix/ folder) where nothing has run
        if run is None:
            print(f"no runs: there is no store at {path} (nothing has run here yet)")
            return
        sys.exit(f"matrix-mcp: unknown run '{run}': there is no store at {path}")
    engine = await Engine.open(settings)
    try:
        if run is None:
            runs = (await engine.list_runs()).runs
            if not runs:
                print(f"no runs in {engine.store.url_for_display}")
            else:
                print(f"{'run':<30} {'state':<9} {'complete':>13}")
            for r in runs:
                c = r.counts
                print(
                    f"{r.name:<30} {r.state:<9} {c.complete:>6}/{c.total:<6} complete  "
                    f"{c.generating} generating  {c.pending} pending  {c.failed} failed  {c.cancelled} cancelled"
                )
            return
        try:
            status = await engine.run_status(run)
        except StoreError as exc:
            sys.exit(f"matrix-mcp: {exc}")
        print(format_status(status))
        if check:
            report = await engine.store.recount(status.run_id)
            print(
                "counters: consistent"
                if report.consistent
                else "counters: MISMATCH\n  " + "\n  ".join(report.mismatches)
            )
    finally:
        await engine.close()


def format_status(status: Any) -> str:
    c = status.counts
    lines = [
        f"run {status.run} ({status.state}) — {c.complete}/{c.total} complete, {c.failed} failed, "
        f"{c.generating} generating, {c.pending} pending, {c.cancelled} cancelled"
    ]
    if status.throughput_per_minute:
        lines.append(
            f"throughput {status.throughput_per_minute:.1f} items/min, ETA {status.eta_seconds or 0:.0f} s"
        )
    lines.append(
        f"{'package':<24} {'done':>9} {'failed':>6} {'success':>8} {'avg s':>7} {'p90 s':>7} {'lines':>7} {'quality':>7}"
    )
    for p in status.packages:
        lines.append(
            f"{p.package[:24]:<24} {p.completed_items:>4}/{p.total_items:<4} {p.failed_items:>6} "
            f"{_fmt(p.success_rate, '{:.0%}'):>8} {_fmt(p.avg_duration_seconds, '{:.2f}'):>7} "
            f"{_fmt(p.p90_duration_seconds, '{:.2f}'):>7} {p.total_lines_generated:>7.0f} "
            f"{_fmt(p.average_quality_score, '{:.2f}'):>7}"
        )
    return "\n".join(lines)


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


async def _export(settings: Settings, run: str, fmt: str) -> None:
    from matrix_mcp.engine import Engine

    engine = await Engine.open(settings)
    try:
        info = await engine.run_info(run)
        data, count = await engine.export_bytes(info.id, fmt)  # type: ignore[arg-type]
        sys.stdout.buffer.write(data)
        print(f"exported {count} outcomes", file=sys.stderr)
    finally:
        await engine.close()


async def _gc(settings: Settings, older_than: float) -> None:
    from matrix_mcp.engine import Engine
    from matrix_mcp.store.base import StoreError

    engine = await Engine.open(settings)
    try:
        report = await engine.collect_garbage(older_than)
    except StoreError as exc:
        sys.exit(f"matrix-mcp: {exc}")
    finally:
        await engine.close()
    print(
        f"removed {report.removed} unreferenced blob(s), {report.removed_bytes} bytes;"
        f" kept {report.kept} under {engine.artifacts.root}"
    )


def server_command(settings: Settings) -> tuple[str, list[str]]:
    """How to start this server as a subprocess with the same store (used by the demo and tests)."""
    return sys.executable, [
        "-m",
        "matrix_mcp",
        "--database-url",
        settings.database_url,
        "--artifacts-dir",
        str(Path(settings.artifacts_dir).absolute()),
    ]
