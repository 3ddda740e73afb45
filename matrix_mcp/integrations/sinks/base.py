"""What a sink gets to work with, and how an HTTP answer becomes a delivery decision."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from matrix_mcp.integrations.http import Http, Response
from matrix_mcp.integrations.policy import Answer, retry_after_seconds
from matrix_mcp.store.hooks import DeliveryRow, HookStore, SubscriptionRow
from matrix_mcp.store.protocol import Store


@dataclass(kw_only=True)
class SinkContext:
    subscription: SubscriptionRow
    credentials: dict[str, Any]  # decrypted; never logged, never returned
    http: Http
    hooks: HookStore
    now: Callable[[], float]
    store: Store | None = None  # for sinks that read outcomes (github)
    read_content: Callable[[str], Awaitable[bytes]] | None = None  # an outcome's content by sha256 (github)


class Sink(Protocol):
    service: str  # names the integration in records and metrics
    # True: one deadline (MATRIX_WEBHOOK_TIMEOUT) covers the whole attempt, however many requests it makes;
    # False: each request gets its own (a GitHub sync makes one paced request per file)
    attempt_deadline: bool

    def wants(self, event_type: str) -> bool:
        """False: the delivery succeeds without a call (the sink has nothing to say about it)."""
        ...

    async def deliver(self, ctx: SinkContext, delivery: DeliveryRow) -> Answer: ...


def answer_from(response: Response, now: float) -> Answer:
    code = response.status_code
    if 200 <= code < 300:
        return Answer(code)
    if 300 <= code < 400:
        return Answer(code, f"HTTP {code}: redirect not followed")
    return Answer(code, f"HTTP {code}", retry_after_seconds(response.headers.get("retry-after"), now))
