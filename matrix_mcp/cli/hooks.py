"""`matrix-mcp hooks add|list|update|rm|test|deliveries|redeliver|rotate-key` and `matrix-mcp dispatch`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from matrix_mcp.config import Settings


def add_parsers(sub: Any) -> None:
    hooks = sub.add_parser(
        "hooks", help="webhook, Slack subscriptions: add, list, update, rm, test, deliveries…"
    )
    hsub = hooks.add_subparsers(dest="hooks_command", required=True)
    add = hsub.add_parser("add", help="subscribe a URL; prints the signing secret once")
    add.add_argument("url", help="where events are POSTed (https://…, or a Slack/Jira/GitHub endpoint)")
    add.add_argument("--events", default="*", help="comma-separated event types, or * (default)")
    add.add_argument("--run", help="only this run's events")
    add.add_argument("--kind", choices=["webhook", "slack", "jira", "github"], default="webhook")
    add.add_argument("--secret", help="a whsec_… secret to use (default: generated)")
    add.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    add.add_argument("--description")
    add.add_argument(
        "--token", help="slack bot token (else the URL is an incoming webhook), jira or github token"
    )
    add.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="slack: channel; jira: project, email, issue_type, done_transition; github: repository, base_branch",
    )
    hsub.add_parser("list", help="subscriptions and their state")
    up = hsub.add_parser("update", help="change a subscription")
    up.add_argument("id", help="the subscription's id (hooks list)")
    up.add_argument("--active", choices=["true", "false"])
    up.add_argument("--events")
    up.add_argument("--url")
    up.add_argument("--rotate-secret", action="store_true")
    rm = hsub.add_parser("rm", help="remove a subscription")
    rm.add_argument("id", help="the subscription's id (hooks list)")
    test = hsub.add_parser("test", help="send a ping")
    test.add_argument("id", help="the subscription's id (hooks list)")
    dl = hsub.add_parser("deliveries", help="list deliveries")
    dl.add_argument("--webhook")
    dl.add_argument("--status", choices=["pending", "succeeded", "failed"])
    dl.add_argument("--limit", type=int, default=100)
    dl.add_argument("--cursor")
    rd = hsub.add_parser("redeliver", help="send a delivery, or a webhook's deliveries since a time, again")
    rd.add_argument("--delivery")
    rd.add_argument("--webhook")
    rd.add_argument("--since", help="ISO time (with --webhook)")
    hsub.add_parser(
        "rotate-key",
        help="re-encrypt every secret with the first MATRIX_ENCRYPTION_KEY (or a new key file key)",
    )
    sub.add_parser("dispatch", help="deliver webhooks (standalone; every server process also does)")


def _print(model: Any) -> None:
    print(json.dumps(model.model_dump(mode="json", exclude_none=True), indent=1, ensure_ascii=False))


async def run(settings: Settings, args: argparse.Namespace) -> None:
    from matrix_mcp.errors import StoreError

    if args.command == "dispatch":
        from matrix_mcp.integrations.runner import dispatch_standalone

        await dispatch_standalone(
            settings.database_url,
            deadline=settings.db_deadline_seconds,
            artifacts_dir=Path(settings.artifacts_dir),
        )
        return
    from matrix_mcp.integrations.service import open_hooks

    async with open_hooks(settings.database_url, deadline=settings.db_deadline_seconds) as hooks:
        try:
            await _hooks(hooks, args)
        except StoreError as exc:
            sys.exit(f"matrix-mcp: {exc.field + ': ' if exc.field else ''}{exc}")


async def _hooks(hooks: Any, args: argparse.Namespace) -> None:
    cmd = args.hooks_command
    if cmd == "add":
        headers = {}
        for h in args.header:
            name, sep, value = h.partition("=")
            if not sep:
                sys.exit(f"matrix-mcp: --header: expected NAME=VALUE, got {h!r}")
            headers[name] = value
        options = {}
        for o in args.option:
            name, sep, value = o.partition("=")
            if not sep:
                sys.exit(f"matrix-mcp: --option: expected KEY=VALUE, got {o!r}")
            options[name] = value
        events = [e.strip() for e in args.events.split(",") if e.strip()]
        _print(
            await hooks.add(
                args.url,
                events=events,
                run=args.run,
                kind=args.kind,
                secret=args.secret,
                headers=headers or None,
                description=args.description,
                token=args.token,
                options=options,
            )
        )
    elif cmd == "list":
        _print(await hooks.list_all())
    elif cmd == "update":
        active = None if args.active is None else args.active == "true"
        changed = [e.strip() for e in args.events.split(",")] if args.events else None
        _print(
            await hooks.update(
                args.id, active=active, events=changed, url=args.url, rotate_secret=args.rotate_secret
            )
        )
    elif cmd == "rm":
        _print(await hooks.remove(args.id))
    elif cmd == "test":
        ping = await hooks.test(args.id)
        _print(ping)
        if not ping.ok:
            sys.exit(f"matrix-mcp: hooks test: {args.id}: {ping.error or f'HTTP {ping.status_code}'}")
    elif cmd == "deliveries":
        _print(
            await hooks.deliveries(
                webhook=args.webhook, status=args.status, cursor=args.cursor, limit=args.limit
            )
        )
    elif cmd == "redeliver":
        since = datetime.fromisoformat(args.since).timestamp() if args.since else None
        _print(await hooks.redeliver(delivery_id=args.delivery, webhook=args.webhook, since=since))
    elif cmd == "rotate-key":
        n, where = await hooks.rotate_key()
        print(f"re-encrypted the credentials of {n} subscription(s) with {where}")
