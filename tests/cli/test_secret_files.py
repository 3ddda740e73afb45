"""Secrets from files (container secrets, systemd credentials): NAME_FILE settings and `keys create
--key-file`, which lets a deployment bring its own API key and store it at every start."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from matrix_mcp.config import SettingError, load_secret_files

KEY = "mtx_" + "k" * 43


def test_a_file_fills_its_setting(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cr3t-session\n")
    env = {"MATRIX_SESSION_SECRET_FILE": str(tmp_path / "secret"), "MATRIX_METRICS_FILE": "/x/y"}
    load_secret_files(env)
    assert env["MATRIX_SESSION_SECRET"] == "s3cr3t-session"
    assert env["MATRIX_METRICS_FILE"] == "/x/y"  # not a secret setting: `work` sets it for its commands
    assert "MATRIX_METRICS" not in env


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, {}, "MATRIX_ENCRYPTION_KEY_FILE: cannot read"),
        ("\n", {}, "MATRIX_ENCRYPTION_KEY_FILE: '{path}' is empty"),
        ("x" * 70_000, {}, "MATRIX_ENCRYPTION_KEY_FILE: '{path}' is larger than 65536 bytes"),
        (
            "k",
            {"MATRIX_ENCRYPTION_KEY": "k2"},
            "MATRIX_ENCRYPTION_KEY and MATRIX_ENCRYPTION_KEY_FILE are both set",
        ),
    ],
)
def test_a_bad_secret_file_is_one_line_naming_the_variable(
    tmp_path: Path, content: str | None, extra: dict[str, str], message: str
) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_text(content)
    env = {"MATRIX_ENCRYPTION_KEY_FILE": str(path), **extra}
    with pytest.raises(SettingError) as caught:
        load_secret_files(env)
    assert str(caught.value).startswith(message.format(path=path))
    assert "k2" not in str(caught.value)


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = shutil.which("matrix-mcp")
    assert script
    base = [
        script,
        "--database-url",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--artifacts-dir",
        str(tmp_path / "a"),
    ]
    return subprocess.run(
        [*base, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_the_cli_reads_secret_files_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "url").write_text(f"sqlite:///{tmp_path / 'from-file.db'}\n")
    env = {"MATRIX_DATABASE_URL_FILE": str(tmp_path / "url")}
    script = shutil.which("matrix-mcp")
    assert script
    made = subprocess.run(
        [script, "keys", "create", "k", "--scope", "read"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, **env},
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "from-file.db").exists() and not (tmp_path / ".matrix" / "matrix.db").exists()
    missing = _cli(tmp_path, "status", env={"MATRIX_JWT_SECRET_FILE": str(tmp_path / "nope")})
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        == f"matrix-mcp: MATRIX_JWT_SECRET_FILE: cannot read '{tmp_path / 'nope'}' (No such file or directory)"
    )


async def test_keys_create_stores_a_given_key_once_and_it_authenticates(tmp_path: Path) -> None:
    from matrix_mcp.config import Settings
    from matrix_mcp.engine import Engine
    from matrix_mcp.http.keys import ApiKeyVerifier

    (tmp_path / "key").write_text(KEY + "\n")
    first = _cli(tmp_path, "keys", "create", "deploy", "--scope", "plan", "--key-file", str(tmp_path / "key"))
    assert first.returncode == 0, first.stderr
    assert first.stdout == "" and KEY not in first.stderr  # the operator has the key; it is never echoed
    again = _cli(tmp_path, "keys", "create", "deploy", "--scope", "plan", "--key-file", str(tmp_path / "key"))
    assert again.returncode == 0 and "already stored with this value: unchanged" in again.stderr

    other = tmp_path / "other"
    other.write_text("mtx_" + "o" * 43)
    taken = _cli(tmp_path, "keys", "create", "deploy", "--scope", "plan", "--key-file", str(other))
    assert taken.returncode == 1 and "name: a key named 'deploy' exists" in taken.stderr
    twice = _cli(tmp_path, "keys", "create", "again", "--scope", "plan", "--key-file", str(tmp_path / "key"))
    assert twice.returncode == 1
    assert (
        twice.stderr.strip() == "matrix-mcp: keys create: --key-file: this key is already stored as 'deploy'"
    )

    engine = await Engine.open(
        Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "a")
    )
    try:
        token = await ApiKeyVerifier(lambda: engine.store).verify_token(KEY)
        assert token is not None and "matrix:plan" in token.scopes
    finally:
        await engine.close()

    assert _cli(tmp_path, "keys", "revoke", "deploy").returncode == 0
    revoked = _cli(
        tmp_path, "keys", "create", "deploy", "--scope", "plan", "--key-file", str(tmp_path / "key")
    )
    assert revoked.returncode == 1 and "was revoked" in revoked.stderr


@pytest.mark.parametrize("content", ["not-a-key", "mtx_short", "mtx_" + "a" * 40 + " tail", ""])
def test_keys_create_refuses_a_file_without_a_key_and_never_echoes_it(tmp_path: Path, content: str) -> None:
    (tmp_path / "key").write_text(content)
    done = _cli(tmp_path, "keys", "create", "x", "--scope", "read", "--key-file", str(tmp_path / "key"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"matrix-mcp: --key-file: '{tmp_path / 'key'}' does not hold a key: mtx_")
    if content:
        assert content not in done.stderr
    assert not (tmp_path / "m.db").exists()  # refused before the store is opened
