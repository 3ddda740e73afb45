"""Running the team service in-process on real uvicorn (127.0.0.1, a free port) and talking to it."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import uvicorn
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from starlette.types import ASGIApp

from matrix_mcp.app import App
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.http.app import Service, matrix_service
from matrix_mcp.http.keys import hash_key, new_key
from matrix_mcp.http.options import ServiceOptions
from matrix_mcp.http.scopes import parse_scopes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def running(app: ASGIApp, port: int, graceful: float | None = None) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1:port until the block ends; yields the base URL. `graceful`:
    seconds open connections (an event stream) get at shutdown before they are closed."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=graceful,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


@asynccontextmanager
async def serving(settings: Settings, *, auth: bool, **options: Any) -> AsyncIterator[tuple[str, Service]]:
    port = free_port()
    opts = ServiceOptions(host="127.0.0.1", port=port, **options)
    service = matrix_service(App(settings), opts, auth=auth)
    async with running(service.app, port) as base:
        yield base, service


async def create_key(settings: Settings, name: str, *scopes: str) -> str:
    key = new_key()
    engine = await Engine.open(settings)
    try:
        await engine.store.create_api_key(
            name, key_hash=hash_key(key), scopes=parse_scopes(scopes), now=time.time()
        )
    finally:
        await engine.close()
    return key


def client(base: str, token: str | None, mode: str = "auto") -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    transport = streamable_http_client(f"{base}/mcp", http_client=create_mcp_http_client(headers=headers))
    return Client(transport, mode=mode)  # type: ignore[arg-type]


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "curl", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def post_init(http: httpx2.AsyncClient, base: str, **headers: str) -> httpx2.Response:
    return await http.post(f"{base}/mcp", json=INIT, headers={**MCP_HEADERS, **headers})
