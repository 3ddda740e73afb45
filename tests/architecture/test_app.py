"""The composition root: one App owns the engine and the background tasks, and every face receives it.

Before start-up and after shut-down the App has no engine and says so by type (`Unavailable`); while it runs,
the MCP server, the REST API and the board serve from its one engine, and the watchers a face adds (the MCP
change notifier) run with its store.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp.server.mcpserver.exceptions import ToolError

from matrix_mcp.app import App
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.errors import STARTING, Unavailable
from matrix_mcp.http.app import matrix_service
from matrix_mcp.http.options import ServiceOptions
from matrix_mcp.mcp.server import create_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'm.db'}", artifacts_dir=tmp_path / "artifacts")


async def test_the_app_has_an_engine_only_while_it_runs(sqlite_settings: Settings) -> None:
    app = App(sqlite_settings)
    seen: list[Engine] = []
    watching = anyio.Event()

    async def watcher(engine: Engine) -> None:
        seen.append(engine)
        watching.set()
        await anyio.sleep_forever()  # cancelled when the App stops

    app.watch(watcher)
    for _ in range(2):  # it can start again after it stopped
        with pytest.raises(Unavailable, match=STARTING):
            app.engine  # noqa: B018
        assert app.access() is None and not app.started
        async with app.running() as running:
            assert running is app and app.started
            await watching.wait()
            assert seen[-1] is app.engine and app.access() is app.engine
            assert (await app.engine.list_runs()).runs == []
            assert app.hooks() is app.hooks()  # one webhook service per open store
            watching = anyio.Event()
        with pytest.raises(Unavailable):
            app.engine  # noqa: B018
    assert len(seen) == 2


async def test_the_mcp_server_and_the_http_service_receive_one_app(sqlite_settings: Settings) -> None:
    app = App(sqlite_settings)
    service = matrix_service(app, ServiceOptions(host="127.0.0.1", port=0), auth=False)
    state = service.mcp.state
    assert state.app is app and state.settings is sqlite_settings
    with pytest.raises(ToolError, match=STARTING) as starting:
        state.engine()  # a tool error for MCP, with the App's Unavailable as its cause
    assert isinstance(starting.value.__cause__, Unavailable)
    async with state.running():
        assert state.engine() is app.engine
    with pytest.raises(ValueError, match="settings or an app"):
        create_server(Settings(database_url="sqlite:///other.db"), app=app)
    assert create_server(sqlite_settings).state.app is not app  # a server of its own App otherwise
