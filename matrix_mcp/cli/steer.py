"""Planning and steering from the command line: `plan`, `pause`, `resume`, `cancel`, `retry`, `policy`.

Each command is the engine call its MCP tool makes (plan_run, control_run, retry_items, update_policy), so it
is idempotent
where the tool is; it prints one line, or with --json the tool's result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from matrix_mcp.config import Settings, sqlite_path
from matrix_mcp.errors import StoreError

if TYPE_CHECKING:
    from matrix_mcp.cli.plans import Plan
    from matrix_mcp.engine import Engine

STEER_ACTIONS = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}


def add_parsers(sub: Any) -> None:
    """The planning and steering subcommands, on the CLI's subparsers."""
    plan = sub.add_parser(
        "plan",
        help="create a run, or add packages and items to it (idempotent: items already there are kept)",
        description="Plan RUN from a file or from --package/--items; planning again adds only what is new.",
    )
    plan.add_argument("run", metavar="RUN", help="the run's name (created if new)")
    source = plan.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        help="a plan: .json or .yaml/.yml in the plan_run shape ({packages: [{name, items}], goal, "
        "max_attempts, …; items and packages may carry after, priority, locks, max_concurrent), .csv rows "
        "package,item (a header row may add after, priority, locks columns), or any other file with lines "
        "package/item",
    )
    source.add_argument("--package", metavar="NAME", help="one package, with --items")
    plan.add_argument("--items", metavar="A,B,C", help="the package's items, separated by commas")
    _json_flag(plan)
    for action, done in STEER_ACTIONS.items():
        what = {
            "pause": "pause a run: claims come back empty (reason paused) until it is resumed",
            "resume": "resume a paused run",
            "cancel": "cancel a run for good: its pending items are cancelled, workers are told",
        }[action]
        steer = sub.add_parser(action, help=what, description=what[0].upper() + what[1:] + ".")
        steer.add_argument("run", metavar="RUN", help=f"the run to be {done}")
        _json_flag(steer)
    retry = sub.add_parser(
        "retry",
        help="re-queue a run's failed items with fresh attempts",
        description="Re-queue the failed items of RUN (or of one package) with fresh attempts.",
    )
    retry.add_argument("run", metavar="RUN", help="the run whose failed items are re-queued")
    retry.add_argument("--package", metavar="NAME", help="only this package's failed items")
    _json_flag(retry)
    policy = sub.add_parser(
        "policy",
        help="change a run's budgets, cap, review, lease or attempts",
        description="Change RUN's policy; a run its budget paused stays paused until `resume`.",
    )
    policy.add_argument("run", metavar="RUN", help="the run whose policy changes")
    policy.add_argument("--max-cost-usd", type=float, metavar="USD", help="the cost budget")
    policy.add_argument("--max-tokens", type=int, metavar="N", help="the token budget (all tokens)")
    policy.add_argument("--max-concurrent", type=int, metavar="N", help="items generating at once")
    policy.add_argument("--review", choices=("none", "required"), help="whether completions wait for review")
    policy.add_argument("--lease-seconds", type=float, metavar="S", help="the lease length")
    policy.add_argument("--max-attempts", type=int, metavar="N", help="attempts per item")
    policy.add_argument(
        "--clear",
        action="append",
        choices=("max_cost_usd", "max_tokens", "max_concurrent"),
        default=[],
        help="remove this limit (repeatable)",
    )
    _json_flag(policy)


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON (the MCP tool's result)")


def print_json(model: BaseModel | dict[str, Any] | list[Any]) -> None:
    """A result as the MCP tool returns it: JSON without null fields (datetimes ISO 8601)."""
    data = model.model_dump(mode="json", exclude_none=True) if isinstance(model, BaseModel) else model
    print(json.dumps(data, ensure_ascii=False, indent=2))


def missing_store(settings: Settings) -> Path | None:
    """The SQLite file the settings name when it does not exist (a command that only reads or steers must
    not create a store where nothing has run); None when there is one, or the store is PostgreSQL."""
    path = sqlite_path(settings.database_url)
    if path is not None and str(path) != ":memory:" and not path.exists():
        return path
    return None


async def run_command(settings: Settings, args: argparse.Namespace) -> None:
    """`plan`, `pause`, `resume`, `cancel` or `retry`; a problem raises ValueError or StoreError (one line)."""
    from matrix_mcp.engine import Engine

    command: str = args.command
    plan = None
    if command == "plan":
        plan = _plan_of(args)
    else:
        path = missing_store(settings)
        if path is not None:
            raise ValueError(f"unknown run '{args.run}': there is no store at {path}")
    engine = await Engine.open(settings)
    try:
        await _steer(engine, args, plan)
    except StoreError as exc:  # the field, as the tool names it; for a plan file, the file too
        source = f"{args.from_file}: " if plan is not None and args.from_file else ""
        field = f"{exc.field}: " if exc.field else ""
        raise ValueError(f"{source}{field}{exc}") from None
    finally:
        await engine.close()


async def _steer(engine: Engine, args: argparse.Namespace, plan: Plan | None) -> None:
    command: str = args.command
    if plan is not None:
        result = await engine.plan_run(plan.name, packages=plan.packages, goal=plan.goal, policy=plan.policy)
        if args.json:
            print_json(result)
        elif result.created:
            blocked = result.run.counts.blocked
            waiting = f", {blocked} blocked (waiting for dependencies)" if blocked else ""
            print(
                f"planned run '{result.run.name}': {result.packages} package(s), {result.items} item(s){waiting}"
            )
        elif result.added_items or result.added_packages:
            print(
                f"run '{result.run.name}': added {result.added_items} item(s)"
                f" ({len(result.added_packages)} new package(s)); now {result.items} item(s)"
            )
        else:
            print(f"run '{result.run.name}' already has every item: nothing added")
    elif command in STEER_ACTIONS:
        run = await engine.control_run(args.run, action=command)  # type: ignore[arg-type]
        if args.json:
            print_json(run)
        else:
            c = run.counts
            print(
                f"run '{run.name}' {STEER_ACTIONS[command]}: now {run.state}; "
                f"{c.complete}/{c.total} complete, {c.pending} pending, {c.generating} generating"
            )
    elif command == "policy":
        run = await engine.update_policy(
            args.run,
            max_cost_usd=args.max_cost_usd,
            max_tokens=args.max_tokens,
            max_concurrent=args.max_concurrent,
            review=args.review,
            lease_seconds=args.lease_seconds,
            max_attempts=args.max_attempts,
            clear=args.clear,
        )
        if args.json:
            print_json(run)
        else:
            p = run.policy
            budgets = ", ".join(
                f"{name} {value:g}"
                for name, value in (("max_cost_usd", p.max_cost_usd), ("max_tokens", p.max_tokens))
                if value is not None
            )
            print(
                f"run '{run.name}' policy updated: review {p.review}, budgets {budgets or 'none'}, "
                f"max_concurrent {p.max_concurrent or 'none'}, lease {p.lease_seconds:g} s; now {run.state}"
            )
    else:
        retried = await engine.retry_items(args.run, package=args.package)
        if args.json:
            print_json(retried)
        else:
            where = f" of package '{args.package}'" if args.package else ""
            print(f"run '{retried.run}': re-queued {retried.requeued} failed item(s){where}")


def _plan_of(args: argparse.Namespace) -> Plan:
    from matrix_mcp.cli.plans import plan_from_items, read_plan

    if args.from_file is not None:
        if args.items is not None:
            raise ValueError("--items: goes with --package, not with --from")
        return read_plan(args.run, args.from_file)
    if args.items is None:
        raise ValueError("--items: required with --package (e.g. --items a,b,c)")
    return plan_from_items(args.run, args.package, args.items)
