"""Names in paths: a run or package name may hold `/`, `%` or anything else, percent-encoded by the
caller (`/api/v1/runs/a%2Fb`). The server decodes the whole path before routing, which would split such a
name in two; so for the routes beside /mcp the path is rebuilt from the raw bytes with each segment
decoded but `%` and `/` inside it kept escaped, and `param` undoes exactly that."""

from __future__ import annotations

from urllib.parse import unquote, unquote_to_bytes

from starlette.requests import Request
from starlette.types import Scope


def keep_escaped(scope: Scope) -> None:
    """Route on segments: within each segment only `%` and `/` stay escaped (as %25 and %2F)."""
    raw: bytes | None = scope.get("raw_path")
    if not raw:
        return
    segments = raw.split(b"?", 1)[0].split(b"/")
    scope["path"] = "/".join(
        unquote_to_bytes(s).decode("utf-8", "replace").replace("%", "%25").replace("/", "%2F")
        for s in segments
    )


def param(request: Request, name: str) -> str:
    """A path parameter as the caller meant it (the inverse of `keep_escaped`)."""
    return unquote(request.path_params[name])


def params(request: Request) -> dict[str, str]:
    return {name: unquote(value) for name, value in request.path_params.items()}
