"""Who caused a change: the principal (an API key's `key:NAME` or a JWT's `jwt:SUB`) of the request
being served, recorded on the events it causes. Set by the HTTP service's scope gate; unset on stdio
and on an open service, where events carry no principal."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

current_principal: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "matrix_principal", default=None
)
# whether the caller of the request being served may call a tool (by name), set beside the principal by the
# HTTP scope gate; None: no scopes apply (stdio, an open service)
current_tool_access: contextvars.ContextVar[Callable[[str], bool] | None] = contextvars.ContextVar(
    "matrix_tool_access", default=None
)


@contextmanager
def acting_as(principal: str | None) -> Iterator[None]:
    """Run a queued write under the principal that queued it (group commit runs it in another task)."""
    token = current_principal.set(principal)
    try:
        yield
    finally:
        current_principal.reset(token)


# changes the Matrix makes by itself (a lease ran out), whichever request's transaction noticed them
SYSTEM_EVENTS = frozenset({"lease_expired"})


def stamped(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """An event payload with `principal` added when a principal is acting (not on system events)."""
    principal = current_principal.get()
    if principal is None or kind in SYSTEM_EVENTS:
        return data
    return {**data, "principal": principal}
