"""Configuration from the environment, password redaction, and the streamable-HTTP transport."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import anyio
import pytest
from mcp.client import Client

from matrix_mcp.config import DEFAULT_DATABASE_URL, Settings, redact_text, redact_url, url_from_parts

pytestmark = pytest.mark.anyio


def test_seed_db_variables_build_a_postgres_url() -> None:
    env = {
        "DB_HOST": "db.internal",
        "DB_PORT": "6543",
        "DB_NAME": "matrix",
        "DB_USER": "me",
        "DB_PASSWORD": "p@ss/w",
    }
    assert url_from_parts(env) == "postgresql://me:p%40ss%2Fw@db.internal:6543/matrix"
    assert Settings.from_env(env).database_url == url_from_parts(env)
    # an explicit URL wins over the seed's variables; nothing set means the embedded default
    assert (
        Settings.from_env({**env, "MATRIX_DATABASE_URL": "sqlite:///x.db"}).database_url == "sqlite:///x.db"
    )
    assert Settings.from_env({}).database_url == DEFAULT_DATABASE_URL
    # libpq's own variables select PostgreSQL too (libpq reads them); the seed's win when both are set
    assert Settings.from_env({"PGHOST": "pg.internal", "PGUSER": "me"}).database_url == "postgresql://"
    assert Settings.from_env({"PGDATABASE": "matrix"}).database_url == "postgresql://"
    assert Settings.from_env({"PGPASSWORD": "x"}).database_url == DEFAULT_DATABASE_URL
    assert Settings.from_env({**env, "PGHOST": "elsewhere"}).database_url == url_from_parts(env)
    # CLI flags (overrides) win over the environment
    assert Settings.from_env(env, database_url="sqlite:///cli.db").database_url == "sqlite:///cli.db"


def test_limits_come_from_the_environment_and_bad_values_are_named() -> None:
    s = Settings.from_env({"MATRIX_MAX_CONTENT_BYTES": "1234", "MATRIX_MAX_PAGE_SIZE": "7"})
    assert s.limits.max_content_bytes == 1234 and s.limits.max_page_size == 7
    with pytest.raises(ValueError, match="MATRIX_MAX_PAGE_SIZE"):
        Settings.from_env({"MATRIX_MAX_PAGE_SIZE": "lots"})


def test_passwords_are_redacted() -> None:
    url = "postgresql://matrix:s3cr3t!@db:5432/m"
    assert "s3cr3t" not in redact_url(url) and redact_url(url).startswith("postgresql://matrix:***@db:5432")
    text = f"connection to {url} failed; password=s3cr3t! rejected"
    assert "s3cr3t" not in redact_text(text)
    assert "hunter2" not in redact_text("boom hunter2 boom", secrets=("hunter2",))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_streamable_http_transport(tmp_path: Path) -> None:
    script = shutil.which("matrix-mcp")
    assert script
    port = _free_port()
    proc = subprocess.Popen(
        [
            script,
            "--database-url",
            f"sqlite:///{tmp_path / 'h.db'}",
            "--artifacts-dir",
            str(tmp_path / "a"),
            "serve",
            "--transport",
            "streamable-http",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "MATRIX_LOG_LEVEL": "WARNING"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the HTTP server did not start"
                await anyio.sleep(0.2)
        for mode in ("auto", "legacy"):
            async with Client(f"http://127.0.0.1:{port}/mcp", mode=mode) as c:
                plan = await c.call_tool(
                    "plan_run", {"name": f"h-{mode}", "packages": [{"name": "p", "items": ["x"]}]}
                )
                assert not plan.is_error and (plan.structured_content or {})["items"] == 1
                got = await c.call_tool("claim_items", {"run": f"h-{mode}", "worker": "w"})
                assert (got.structured_content or {})["items"][0]["item"] == "x"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "serving OPEN" in err  # the existing notice, and beside it where the board and REST API are
    assert f"board: http://127.0.0.1:{port}/ui/ · REST API: http://127.0.0.1:{port}/api/v1/" in err
