"""The routes beside /mcp for the Matrix server: the REST API and the dashboard, sharing the service's
verifier, rate limiter, scope map and access (API keys, sessions)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import Scope

from matrix_mcp.app import App
from matrix_mcp.http.access import Identify, Sessions, session_secret
from matrix_mcp.http.parts import Parts
from matrix_mcp.http.rest import Rest, mount_rest


def mount(parts: Parts, app: App) -> Callable[[Scope], Awaitable[str | None]]:
    """Register the routes over `app` (the composition root the MCP server also receives); returns how
    the guard finds a request's credential (bearer or session)."""
    sessions = Sessions(
        session_secret(), secure=parts.options.base_url.startswith("https://"), access=parts.access
    )
    identify = Identify(parts.verifier, sessions, parts.security)
    rest = Rest(parts.mcp, identify, app, parts.max_body_bytes)
    mount_rest(parts.mcp, rest)
    from matrix_mcp.http.board import Board, mount_board

    mount_board(parts.mcp, Board(parts.mcp, identify, sessions, app, parts.limits))
    return sessions.token_of
