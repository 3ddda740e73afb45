"""Shared fixtures: backends (SQLite always, PostgreSQL when reachable), engines, MCP clients."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine

PG_URL = os.environ.get("MATRIX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("MATRIX_REQUIRE_POSTGRES") == "1"
_pg_state: dict[str, Any] = {}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def postgres_reachable() -> str | None:
    """None when reachable, else the reason. Cached for the session."""
    if "reason" not in _pg_state:
        try:
            import psycopg

            with psycopg.connect(PG_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_state["reason"] = None
        except Exception as exc:  # any failure to connect means "unreachable"
            _pg_state["reason"] = f"PostgreSQL unreachable at {PG_URL}: {exc}"
    reason: str | None = _pg_state["reason"]
    return reason


def require_postgres() -> None:
    reason = postgres_reachable()
    if reason is not None:
        if REQUIRE_PG:
            pytest.fail(f"MATRIX_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)


def _with_dbname(url: str, dbname: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    require_postgres()
    import psycopg

    name = "matrix_t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    try:
        yield _with_dbname(PG_URL, name)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(name)
                )
            )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'matrix.db'}"
    url: str = request.getfixturevalue("postgres_database")
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, artifacts_dir=tmp_path / "artifacts")


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    eng = await Engine.open(settings)
    try:
        yield eng
    finally:
        await eng.close()


async def assert_consistent(engine: Engine) -> None:
    report = await engine.store.recount()
    assert report.consistent, report.mismatches


CHROMIUM = os.environ.get("MATRIX_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium (Debian's package, driven by Playwright; nothing downloaded), for the board's and
    the MCP Apps view's page tests."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            await b.close()
