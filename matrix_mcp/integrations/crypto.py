"""Integration secrets at rest: Fernet, several keys for rotation (MultiFernet; the first encrypts).

Keys come from MATRIX_ENCRYPTION_KEY (comma-separated); without it, a SQLite store gets a key file
created once, mode 0600, beside the database (`<db>.key`). A PostgreSQL store needs the variable: its
processes may run on several hosts, and a key file on one of them would strand the others.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from matrix_mcp.config import is_postgres_url, sqlite_path


class KeyError_(ValueError):
    """A missing or unusable key; the message names the setting."""


class Keyring:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise KeyError_("MATRIX_ENCRYPTION_KEY: no key")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except ValueError:
            raise KeyError_(
                "MATRIX_ENCRYPTION_KEY: each key must be 32 url-safe base64-encoded bytes"
            ) from None

    def encrypt(self, value: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(value, separators=(",", ":")).encode()).decode()

    def decrypt(self, token: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise KeyError_(
                "MATRIX_ENCRYPTION_KEY: no configured key decrypts the stored credentials"
            ) from None
        return data

    def rotate(self, token: str) -> str:
        """Re-encrypt with the first key (what `matrix-mcp hooks rotate-key` does to every subscription)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise KeyError_(
                "MATRIX_ENCRYPTION_KEY: no configured key decrypts the stored credentials"
            ) from None


def new_key() -> str:
    return Fernet.generate_key().decode()


def key_file(database_url: str) -> Path | None:
    path = sqlite_path(database_url)
    if path is None or str(path) == ":memory:":
        return None
    return path.with_name(path.name + ".key")


def read_key_file(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def write_key_file(path: Path, keys: list[str]) -> None:
    """Atomically, mode 0600 from the start (never readable by others, even briefly)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(keys) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_keyring(database_url: str, env_keys: tuple[str, ...], create: bool = True) -> Keyring:
    if env_keys:
        return Keyring(list(env_keys))
    if is_postgres_url(database_url):
        raise KeyError_("MATRIX_ENCRYPTION_KEY: required with a PostgreSQL store (one key for every host)")
    path = key_file(database_url)
    if path is None:
        raise KeyError_("MATRIX_ENCRYPTION_KEY: required for an in-memory store")
    if not path.exists():
        if not create:
            raise KeyError_(f"MATRIX_ENCRYPTION_KEY: not set and no key file at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(new_key() + "\n")
    return Keyring(read_key_file(path))
