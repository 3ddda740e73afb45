"""Command line: serve (stdio / streamable-http), demo, status, export.

`matrix-mcp` with no command serves stdio. Only the serve path is imported eagerly enough to
keep cold start fast; the demo and reports import what they need when they run.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from matrix_mcp import __version__
from matrix_mcp.cli.format import RUNS_ROW, format_status
from matrix_mcp.config import ArgumentParser, Settings, add_serve_flags, load_secret_files, setup_logging

TERMINAL_HINT = (
    "matrix-mcp: an MCP server on stdio, waiting for a client's JSON-RPC on stdin (Ctrl-D ends it); "
    "for a first look run `matrix-mcp demo`, and `matrix-mcp --help` lists the commands"
)
STEERING = ("plan", "pause", "resume", "cancel", "retry", "policy")  # matrix_mcp.cli.steer


def _global_flags(p: argparse.ArgumentParser, suppress: bool = False) -> argparse.ArgumentParser:
    """The flags every command takes, before or after its name. On a subcommand their default is SUPPRESS, so
    a flag given before the name is not overwritten by the subcommand's default."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument(
        "--database-url",
        default=default(None),
        help="sqlite:///path.db or postgresql://… (env MATRIX_DATABASE_URL)",
    )
    p.add_argument(
        "--artifacts-dir",
        default=default(None),
        help="where outcome content is stored (env MATRIX_ARTIFACTS_DIR)",
    )
    p.add_argument("--log-level", default=default(os.environ.get("MATRIX_LOG_LEVEL", "WARNING")))
    p.add_argument(
        "--toolset",
        choices=["worker", "orchestrator", "all"],
        default=default(None),
        help="tools a connection lists (env MATRIX_TOOLSET, default all)",
    )
    return p


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="matrix-mcp",
        description="Durable N×M orchestration for AI agents over MCP. With no command: serve stdio.",
    )
    p.add_argument("--version", action="version", version=f"matrix-mcp {__version__}")
    _global_flags(p)
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve MCP (default: stdio)")
    add_serve_flags(serve, port=8000)
    keys = sub.add_parser("keys", help="API keys for the HTTP service: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_create = keys_sub.add_parser("create", help="create a key and print it (once)")
    keys_create.add_argument("name", help="the key's name (shown in logs and `keys list`; never the key)")
    keys_create.add_argument(
        "--scope", action="append", required=True, help="read, work, plan or admin (repeat for several)"
    )
    keys_create.add_argument(
        "--key-file",
        metavar="PATH",
        help="store this key (mtx_ + at least 32 characters, e.g. a container secret) instead of a new one; "
        "a key of that name and value already there is left as it is",
    )
    keys_list = keys_sub.add_parser("list", help="names, scopes, created, last used (never the keys)")
    keys_list.add_argument("--json", action="store_true", help="print the keys as JSON (never the keys)")
    keys_revoke = keys_sub.add_parser("revoke", help="revoke a key on every replica (within seconds)")
    keys_revoke.add_argument("name", help="the name of the key to revoke")
    demo = sub.add_parser("demo", help="run a 5×3 job end to end with concurrent worker processes")
    demo.add_argument("--workers", type=int, default=3)
    demo.add_argument("--run", default=None, help="run name (default: demo-<time>)")
    status = sub.add_parser("status", help="print runs, or one run's per-package progress")
    status.add_argument("run", nargs="?", help="the run to show (default: every run, one line each)")
    status.add_argument("--check", action="store_true", help="also verify the counters against a recount")
    status.add_argument(
        "--json", action="store_true", help="print JSON: list_runs' result, or run_status' for RUN"
    )
    export = sub.add_parser("export", help="write a run's outcomes to stdout")
    export.add_argument("run", help="the run whose outcomes are written")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    work = sub.add_parser(
        "work",
        usage="matrix-mcp work RUN [options] -- COMMAND [ARGS…]",
        help="run COMMAND once per item of RUN, N at a time (the item as env and JSON on stdin; stdout = content)",
    )
    work.add_argument("run", help="the run whose items are worked")
    work.add_argument("--package", help="only this package's items")
    work.add_argument("-j", "--jobs", type=int, default=1, help="commands at a time (default 1)")
    work.add_argument("--timeout", type=float, metavar="SECONDS", help="kill a command after this long")
    work.add_argument("--worker", help="worker name (default: host-pid)")
    work.add_argument(
        "--no-retry-exit", metavar="CODES", help="exit codes that fail an item for good, e.g. 2,3"
    )
    work.add_argument("--grace", type=float, default=10.0, metavar="SECONDS", help="on SIGINT/SIGTERM")
    work.add_argument(
        "--verify",
        metavar="COMMAND",
        help="run after a successful command with its output on stdin: exit 0 approves, non-zero rejects "
        "(its stderr is the note); e.g. --verify 'pytest -q'",
    )
    gc = sub.add_parser("gc", help="delete stored content no outcome refers to (left by rejected reports)")
    gc.add_argument(
        "--older-than",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="untouched this long (default 3600)",
    )
    gc.add_argument(
        "--repair",
        action="store_true",
        help="first restore the file of every complete outcome that is missing (a process killed mid-report)"
        " or holds other bytes than its stored content (every file is read)",
    )
    sub.add_parser(
        "schema",
        add_help=False,
        usage="matrix-mcp schema [matrix-schema-mcp's options]",
        help="serve the database-schema server: the same as matrix-schema-mcp, with the same options",
    )
    from matrix_mcp.cli.hooks import add_parsers
    from matrix_mcp.cli.steer import add_parsers as add_steering

    add_steering(sub)
    add_parsers(sub)
    for command in sub.choices.values():  # global flags are accepted after the command's name too
        _global_flags(command, suppress=True)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # The package's second server, for hosts that run only a package's first script (the registry entry).
    if argv[:1] == ["schema"]:
        from servers.database_schema import main as schema_main

        schema_main(argv[1:])
        return
    trailing: list[str] = []  # after `--`: the command `work` runs, passed on untouched
    if "--" in argv:
        argv, trailing = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = _parser().parse_args(argv)
    setup_logging(args.log_level, "matrix-mcp")
    try:
        load_secret_files(os.environ)
        settings = Settings.from_env(
            database_url=args.database_url, artifacts_dir=args.artifacts_dir, toolset=args.toolset
        )
    except ValueError as exc:
        sys.exit(f"matrix-mcp: {exc}")
    from matrix_mcp import tracing

    try:  # OTEL_EXPORTER_OTLP_ENDPOINT: export traces; unset, nothing of the OpenTelemetry SDK is loaded
        exporting = tracing.start()
    except ValueError as exc:
        sys.exit(f"matrix-mcp: {exc}")
    try:
        _dispatch(args, settings, trailing)
    except Exception as exc:  # every error a person can act on is one line on stderr, never a traceback
        problem = user_error(exc)
        if problem is None:
            raise
        sys.exit(f"matrix-mcp: {problem}")
    finally:
        if exporting is not None:
            exporting.shutdown()  # sends the spans still queued


def user_error(exc: BaseException) -> str | None:
    """The one-line message for an error the user can act on (a bad setting, an unknown run, an unreachable
    or refusing database, a file that cannot be written), found inside exception groups (a server's lifespan
    fails inside task groups); None for a bug, which keeps its traceback."""
    import sqlite3

    from matrix_mcp.config import redact_text
    from matrix_mcp.errors import StoreError

    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = user_error(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, StoreError | ValueError | OSError | sqlite3.Error):
        return redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return None


def _dispatch(args: argparse.Namespace, settings: Settings, trailing: list[str]) -> None:
    command = args.command or "serve"
    if args.command is None and sys.stdin.isatty():
        # a person typed the bare name: say what this is, then serve as asked
        print(TERMINAL_HINT, file=sys.stderr, flush=True)
    if trailing and command != "work":
        sys.exit("matrix-mcp: arguments after -- are only taken by `matrix-mcp work`")
    if command == "serve":
        transport = getattr(args, "transport", "stdio")
        if transport != "stdio":
            _serve_http(settings, args)
            return
        from matrix_mcp.mcp.server import create_server

        server = create_server(settings)
        server.run()  # a start-up failure surfaces here, in exception groups: user_error unwraps it
        return
    import anyio

    if command == "demo":
        from matrix_mcp.cli.demo import run_demo

        sys.exit(anyio.run(run_demo, settings, args.workers, args.run))
    if command == "work":
        from matrix_mcp.cli.work import run_work, work_options

        try:
            options = work_options(args, trailing)
        except ValueError as exc:
            sys.exit(f"matrix-mcp work: {exc}")
        sys.exit(anyio.run(run_work, settings, options))
    if command in STEERING:
        from matrix_mcp.cli.steer import run_command

        anyio.run(run_command, settings, args)
    elif command == "status":
        anyio.run(_status, settings, args.run, args.check, args.json)
    elif command == "export":
        anyio.run(_export, settings, args.run, args.format)
    elif command == "gc":
        anyio.run(_gc, settings, args.older_than, args.repair)
    elif command == "keys":
        from matrix_mcp.cli.keys import run_keys

        sys.exit(anyio.run(run_keys, settings, args))
    elif command in ("hooks", "dispatch"):
        from matrix_mcp.cli import hooks as hooks_cli

        anyio.run(hooks_cli.run, settings, args)


def _serve_http(settings: Settings, args: argparse.Namespace) -> None:
    """The team service (HTTP): authentication, scopes, limits, health and metrics (matrix_mcp.http)."""
    import anyio

    from matrix_mcp.http.app import serve
    from matrix_mcp.http.options import ServiceOptions

    try:
        options = ServiceOptions.from_args(args)
        anyio.run(serve, settings, options)
    except ValueError as exc:
        sys.exit(f"matrix-mcp: {exc}")
    except KeyboardInterrupt:
        pass


async def _status(settings: Settings, run: str | None, check: bool, as_json: bool = False) -> None:
    """Every run, one line each, or one run's per-package progress; with `as_json`, the result of the MCP
    tool list_runs or run_status (with --check, plus `counters`: consistent, mismatches)."""
    from matrix_mcp.cli.steer import missing_store, print_json
    from matrix_mcp.engine import Engine
    from matrix_mcp.errors import StoreError

    path = missing_store(settings)
    if path is not None:
        # reading must not create a store (and a .matrix/ folder) where nothing has run
        if run is None:
            if as_json:
                print_json({"runs": []})
            else:
                print(f"no runs: there is no store at {path} (nothing has run here yet)")
            return
        sys.exit(f"matrix-mcp: unknown run '{run}': there is no store at {path}")
    engine = await Engine.open(settings)
    try:
        if run is None:
            listed = await engine.list_runs()
            if as_json:
                print_json(listed)
                return
            runs = listed.runs
            if not runs:
                print(f"no runs in {engine.url_for_display}")
            else:
                print(
                    RUNS_ROW.format(
                        "run", "state", "complete", "generating", "pending", "blocked", "failed", "cancelled"
                    )
                )
            for r in runs:
                c = r.counts
                done = f"{c.complete}/{c.total}"
                print(
                    RUNS_ROW.format(
                        r.name, r.state, done, c.generating, c.pending, c.blocked, c.failed, c.cancelled
                    )
                )
            return
        try:
            status = await engine.run_status(run)
        except StoreError as exc:
            sys.exit(f"matrix-mcp: {exc}")
        report = await engine.recount(status.run_id) if check else None
        if as_json:
            data = status.model_dump(mode="json", exclude_none=True)
            if report is not None:
                data["counters"] = {"consistent": report.consistent, "mismatches": list(report.mismatches)}
            print_json(data)
            return
        print(format_status(status))
        if report is not None:
            print(
                "counters: consistent"
                if report.consistent
                else "counters: MISMATCH\n  " + "\n  ".join(report.mismatches)
            )
    finally:
        await engine.close()


async def _export(settings: Settings, run: str, fmt: str) -> None:
    from matrix_mcp.engine import Engine

    engine = await Engine.open(settings)
    try:
        info = await engine.run_info(run)
        data, count = await engine.export_bytes(info.id, format=fmt)  # type: ignore[arg-type]
        sys.stdout.buffer.write(data)
        print(f"exported {count} outcomes", file=sys.stderr)
    finally:
        await engine.close()


async def _gc(settings: Settings, older_than: float, repair: bool = False) -> None:
    from matrix_mcp.engine import Engine
    from matrix_mcp.errors import StoreError

    engine = await Engine.open(settings)
    try:
        if repair:
            fixed = await engine.repair_files(verify=True)
            shared = (
                f"; {fixed.skipped} share their path with an earlier item and were left to it"
                if fixed.skipped
                else ""
            )
            print(
                f"repaired {fixed.repaired} missing or altered outcome file(s) of {fixed.checked} complete"
                f" outcome(s) with content; {fixed.unrepairable} cannot be restored (content gone){shared}"
            )
        report = await engine.collect_garbage(older_than_seconds=older_than)
    except StoreError as exc:
        sys.exit(f"matrix-mcp: {exc}")
    finally:
        await engine.close()
    print(
        f"removed {report.removed} unreferenced blob(s), {report.removed_bytes} bytes;"
        f" kept {report.kept} under {engine.artifacts.root}"
    )
    print(
        f"removed {report.contents_removed} unreferenced content row(s) kept in the store,"
        f" {report.contents_removed_bytes} bytes"
    )
