"""`matrix-mcp keys create|list|revoke`: API keys for the HTTP service, kept (hashed) in the store
(through the engine's access use cases)."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.errors import StoreError
from matrix_mcp.http.keys import KEY_PREFIX, hash_key, new_key
from matrix_mcp.http.scopes import parse_scopes

if TYPE_CHECKING:
    from matrix_mcp.store.params import ApiKey

KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
GIVEN_KEY = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{32,200}")
MAX_KEY_FILE_BYTES = 4096


async def run_keys(settings: Settings, args: argparse.Namespace) -> int:
    try:
        scopes = parse_scopes(args.scope) if args.keys_command == "create" else ()
        if args.keys_command == "create" and not KEY_NAME.fullmatch(args.name):
            raise ValueError(f"name: {args.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        given = read_key_file(args.key_file) if getattr(args, "key_file", None) else None
    except ValueError as exc:
        print(f"matrix-mcp: {exc}", file=sys.stderr)
        return 2
    engine = await Engine.open(settings)
    try:
        if args.keys_command == "create" and given is not None:
            record = await engine.add_given_api_key(args.name, key_hash=hash_key(given), scopes=scopes)
            if record is None:
                print(f"key '{args.name}' is already stored with this value: unchanged", file=sys.stderr)
            else:
                print(f"key '{record.name}' stored with {' '.join(record.scopes)}", file=sys.stderr)
        elif args.keys_command == "create":
            key = new_key()
            record = await engine.create_api_key(args.name, key_hash=hash_key(key), scopes=scopes)
            print(key)
            print(
                f"key '{record.name}' created with {' '.join(record.scopes)}; this is the only time it is "
                "shown (the store keeps a hash)",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            keys = await engine.list_api_keys()
            if getattr(args, "json", False):
                from matrix_mcp.cli.steer import print_json

                print_json({"keys": [_key_json(k) for k in keys]})
                return 0
            if not keys:
                print(f"no API keys in {engine.url_for_display}")
            for k in keys:
                state = f"revoked {_when(k.revoked_at)}" if k.revoked_at is not None else "active"
                print(
                    f"{k.name:<24} {' '.join(k.scopes):<48} created {_when(k.created_at)}  "
                    f"last used {_when(k.last_used_at)}  {state}"
                )
        else:
            record = await engine.revoke_api_key(args.name)
            print(f"key '{record.name}' revoked (every replica refuses it within seconds)")
    except StoreError as exc:
        where = f"{exc.field}: " if exc.field else ""
        print(f"matrix-mcp: keys {args.keys_command}: {where}{exc}", file=sys.stderr)
        return 1
    finally:
        await engine.close()
    return 0


def read_key_file(path: str) -> str:
    """The key in the file at `path` (surrounding white space dropped). Raises ValueError naming --key-file
    when it cannot be read or is not a key this service accepts (never echoing the file's content)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"--key-file: cannot read {path!r} ({exc.strerror or exc})") from None
    key = raw.decode("utf-8", "replace").strip()
    if len(raw) > MAX_KEY_FILE_BYTES or not GIVEN_KEY.fullmatch(key):
        raise ValueError(
            f"--key-file: {path!r} does not hold a key: {KEY_PREFIX} followed by 32-200 letters, digits, "
            "'-' or '_' (e.g. python3 -c 'import secrets; print(\"mtx_\" + secrets.token_urlsafe(32))')"
        )
    return key


def _key_json(k: ApiKey) -> dict[str, object]:
    """A key's record as `keys list --json` prints it: never the key (nor its hash)."""
    return {
        "name": k.name,
        "scopes": list(k.scopes),
        "created_at": _iso(k.created_at),
        "last_used_at": _iso(k.last_used_at),
        "revoked_at": _iso(k.revoked_at),
        "active": k.revoked_at is None,
    }


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def _when(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
