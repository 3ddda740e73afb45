"""Resource-updated notifications in both protocol eras, driven by the change feed (the engine's events).

- Modern era (2026-07-28): clients open `subscriptions/listen`; we publish `ResourceUpdated` on the
  server's subscription bus, which filters per stream.
- Legacy era (2025-11-25 and earlier): `resources/subscribe` / `resources/unsubscribe` are not served by
  `MCPServer`, so we register handlers on its low-level server (private API of mcp 2.3, kept in
  `sdk.private`) and send `notifications/resources/updated` on each subscribed connection.

A watcher task follows the event log through the engine, so changes made by *other* server processes on the same
database (the usual case: each worker agent runs its own server) are notified too.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
from mcp.server import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated, ServerEvent

from matrix_mcp.models import Event

if TYPE_CHECKING:
    from matrix_mcp.engine import Engine

log = logging.getLogger("matrix_mcp.notify")


def run_uri(run: str) -> str:
    return f"matrix://runs/{quote(run, safe='')}"


def package_uri(run: str, package: str) -> str:
    return f"{run_uri(run)}/packages/{quote(package, safe='')}"


def outcome_uri(outcome_id: str) -> str:
    return f"matrix://outcomes/{quote(outcome_id, safe='')}"


# events that move many outcomes at once and name them in `outcome_ids`: a retry, a failure's cascade
BULK_KINDS = ("requeued", "dependents_cancelled")


def uris_for(event: Event) -> set[str]:
    uris = {"matrix://runs", "matrix://metrics"}
    if event.run:
        uris.add(run_uri(event.run))
        package = event.data.get("package")
        if isinstance(package, str):
            uris.add(package_uri(event.run, package))
    if event.outcome_id:
        uris.add(outcome_uri(event.outcome_id))
        if event.kind in ("completed", "status_updated"):
            uris.add(outcome_uri(event.outcome_id) + "/content")
    if event.kind in BULK_KINDS:  # the outcomes it moved, as far as it names them (at most 100)
        ids = event.data.get("outcome_ids")
        for outcome_id in ids if isinstance(ids, list) else ():
            if isinstance(outcome_id, str):
                uris.add(outcome_uri(outcome_id))
    return uris


class CountingBus(InMemorySubscriptionBus):
    """The SDK's in-memory bus, plus a count of open listen streams so the watcher can idle."""

    def __init__(self) -> None:
        super().__init__()
        self.listeners = 0
        self.changed = anyio.Event()

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(listener)
        self.listeners += 1
        self.changed.set()
        done = False

        def wrapped() -> None:
            nonlocal done
            if not done:
                done = True
                self.listeners -= 1
            unsubscribe()

        return wrapped


class LegacySubscriptions:
    """uri → connections that sent resources/subscribe on a handshake-era session."""

    def __init__(self) -> None:
        self._by_uri: dict[str, weakref.WeakSet[Any]] = {}
        self.changed = anyio.Event()

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_uri.values())

    def install(self, server: MCPServer[Any]) -> None:
        from matrix_mcp.sdk.private import serve_legacy_subscriptions

        serve_legacy_subscriptions(server, self.subscribe, self.unsubscribe)

    async def subscribe(self, connection: Any, uri: str) -> None:
        self._by_uri.setdefault(uri, weakref.WeakSet()).add(connection)
        self.changed.set()

    async def unsubscribe(self, connection: Any, uri: str) -> None:
        conns = self._by_uri.get(uri)
        if conns is not None:
            conns.discard(connection)

    async def send(self, uris: Iterable[str]) -> None:
        for uri in uris:
            for conn in list(self._by_uri.get(uri, ())):
                try:
                    await conn.send_resource_updated(uri)
                except Exception:  # a closed connection: forget it
                    log.debug("dropping a closed subscriber of %s", uri, exc_info=True)
                    self._by_uri[uri].discard(conn)


class Notifier:
    def __init__(self, bus: CountingBus, legacy: LegacySubscriptions) -> None:
        self.bus = bus
        self.legacy = legacy

    def active(self) -> bool:
        return self.bus.listeners > 0 or len(self.legacy) > 0

    async def publish(self, uris: Iterable[str]) -> None:
        uris = sorted(set(uris))
        if self.bus.listeners:
            for uri in uris:
                await self.bus.publish(ResourceUpdated(uri=uri))
        await self.legacy.send(uris)

    async def watch(self, engine: Engine, poll_timeout: float = 5.0) -> None:
        """Follow the event log (through the engine) for as long as the server runs; idle while nobody
        subscribes."""
        seq = await engine.latest_seq()
        while True:
            if not self.active():
                self.bus.changed = anyio.Event()
                self.legacy.changed = anyio.Event()
                async with anyio.create_task_group() as tg:

                    async def wake(event: anyio.Event) -> None:
                        await event.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(wake, self.bus.changed)
                    tg.start_soon(wake, self.legacy.changed)
                # Keep `seq` from before the idle spell: a change committed between the subscription and
                # this wake-up must still be notified. Skip ahead only after a long idle spell.
                latest = await engine.latest_seq()
                if latest - seq > 10_000:
                    seq = latest - 100
                continue
            try:
                latest = await engine.wait_for_change(seq, timeout=poll_timeout)
                if latest <= seq:
                    continue
                events = await engine.events(since=seq, limit=2000)
                seq = events[-1].seq if events else latest
                uris: set[str] = set()
                for event in events:
                    uris |= uris_for(event)
                await self.publish(uris)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception:
                log.exception("resource notification watcher failed; retrying")
                await anyio.sleep(1.0)
