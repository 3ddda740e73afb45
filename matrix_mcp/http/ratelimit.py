"""Request limits: rate per principal (per client address when the service runs open), a lower rate of
failed authentications per address, and a bound on how long a client may take to send its body.

Rates use the `limits` library (sliding-window counters, in this process's memory). With several
replicas each keeps its own counters, so a principal spread evenly over N replicas gets up to N× the
configured rate; configure the per-replica share accordingly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import anyio
import limits
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from starlette.types import Message, Receive


def parse_rate(value: str, setting: str) -> list[limits.RateLimitItem]:
    """`600/minute`, or several joined by `;` (e.g. `600/minute;50/second` to cap bursts)."""
    try:
        return limits.parse_many(value)
    except ValueError as exc:
        raise ValueError(f"{setting}: {value!r} is not a rate such as 600/minute ({exc})") from exc


@dataclass
class Verdict:
    allowed: bool
    retry_after: int = 0


class RateLimits:
    def __init__(self, rate: list[limits.RateLimitItem], auth_failures: list[limits.RateLimitItem]) -> None:
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._rate = rate
        self._auth_failures = auth_failures

    async def hit(self, key: str) -> Verdict:
        return await self._hit(self._rate, "rate", key)

    async def auth_blocked(self, address: str) -> Verdict:
        """Whether this address has used up its failed authentications (does not count one)."""
        for item in self._auth_failures:
            if not await self._limiter.test(item, "auth", address):
                return Verdict(False, await self._retry_after(item, "auth", address))
        return Verdict(True)

    async def auth_failed(self, address: str) -> None:
        for item in self._auth_failures:
            await self._limiter.hit(item, "auth", address)

    async def _hit(self, items: list[limits.RateLimitItem], kind: str, key: str) -> Verdict:
        for item in items:
            if not await self._limiter.hit(item, kind, key):
                return Verdict(False, await self._retry_after(item, kind, key))
        return Verdict(True)

    async def _retry_after(self, item: limits.RateLimitItem, kind: str, key: str) -> int:
        stats = await self._limiter.get_window_stats(item, kind, key)
        return max(1, math.ceil(stats.reset_time - time.time()))


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, seconds: float, max_bytes: int) -> list[Message] | None:
    """The request's body messages, read within `seconds`; None when the client did not send it all in
    time (a slow or abandoned upload must not pin a handler). Raises BodyTooLarge past `max_bytes`, as
    soon as that many have arrived."""
    messages: list[Message] = []
    size = 0
    with anyio.move_on_after(seconds):
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > max_bytes:
                raise BodyTooLarge
            if not message.get("more_body", False):
                return messages
    return None


def replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
