"""Integration secrets at rest: Fernet, several keys for rotation (MultiFernet; the first encrypts).

Keys come from MATRIX_ENCRYPTION_KEY (comma-separated); without it, a SQLite store gets a key file
created once, mode 0600, beside the database (`<db>.key`); one owned by another user, or open to other
users, is refused. A PostgreSQL store needs the variable: its
processes may run on several hosts, and a key file on one of them would strand the others.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
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
    """The keys in `path`, one a line. Refused (one line naming the file and the fix) unless it is a plain
    file owned by this service's user that no other user may read or write: a key file another local user
    planted beforehand (or can read) would encrypt the credentials with a key they know. The checks look at
    the opened file itself (fstat), so the file read is the file checked."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyError_(
                f"MATRIX_ENCRYPTION_KEY: key file {path} is a symlink; put the key file itself there"
            ) from None
        raise KeyError_(f"MATRIX_ENCRYPTION_KEY: key file {path} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        owner = os.geteuid()
        if not stat.S_ISREG(st.st_mode):
            raise KeyError_(f"MATRIX_ENCRYPTION_KEY: key file {path} is not a regular file")
        if st.st_uid != owner:
            raise KeyError_(
                f"MATRIX_ENCRYPTION_KEY: key file {path} is owned by uid {st.st_uid}, not this service's user"
                f" (uid {owner}); if you did not put it there, delete it, else `chown {owner} {path}`"
            )
        if st.st_mode & 0o077:
            raise KeyError_(
                f"MATRIX_ENCRYPTION_KEY: key file {path} is open to other users"
                f" (mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`"
            )
        text = f.read()
    return [line.strip() for line in text.splitlines() if line.strip()]


def write_key_file(path: Path, keys: list[str]) -> None:
    """Atomically, mode 0600 from the start (never readable by others, even briefly). A temporary file
    already there (left by a crash, or planted) is removed, never written through."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
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
