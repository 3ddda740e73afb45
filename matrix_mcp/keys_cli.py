"""`matrix-mcp keys create|list|revoke`: API keys for the HTTP service, kept (hashed) in the store."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.errors import StoreError
from matrix_mcp.http.keys import hash_key, new_key
from matrix_mcp.http.scopes import parse_scopes

KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


async def run_keys(settings: Settings, args: argparse.Namespace) -> int:
    try:
        scopes = parse_scopes(args.scope) if args.keys_command == "create" else ()
        if args.keys_command == "create" and not KEY_NAME.fullmatch(args.name):
            raise ValueError(f"name: {args.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    except ValueError as exc:
        print(f"matrix-mcp: {exc}", file=sys.stderr)
        return 2
    engine = await Engine.open(settings)
    try:
        store = engine.store
        if args.keys_command == "create":
            key = new_key()
            record = await store.create_api_key(
                args.name, key_hash=hash_key(key), scopes=scopes, now=time.time()
            )
            print(key)
            print(
                f"key '{record.name}' created with {' '.join(record.scopes)}; this is the only time it is "
                "shown (the store keeps a hash)",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            keys = await store.list_api_keys()
            if not keys:
                print(f"no API keys in {store.url_for_display}")
            for k in keys:
                state = f"revoked {_when(k.revoked_at)}" if k.revoked_at is not None else "active"
                print(
                    f"{k.name:<24} {' '.join(k.scopes):<48} created {_when(k.created_at)}  "
                    f"last used {_when(k.last_used_at)}  {state}"
                )
        else:
            record = await store.revoke_api_key(args.name, now=time.time())
            print(f"key '{record.name}' revoked (every replica refuses it within seconds)")
    except StoreError as exc:
        where = f"{exc.field}: " if exc.field else ""
        print(f"matrix-mcp: keys {args.keys_command}: {where}{exc}", file=sys.stderr)
        return 1
    finally:
        await engine.close()
    return 0


def _when(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
