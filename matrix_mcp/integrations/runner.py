"""Dispatching inside a server process, started only when there is something to dispatch.

A stdio worker with no subscription pays one indexed read at start-up and one every CHECK_EVERY
seconds; the dispatcher (httpx2, cryptography) is imported only once a subscription exists.
MATRIX_WEBHOOK_DISPATCH=0 keeps a process from dispatching at all.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio

from matrix_mcp.integrations.settings import HookSettings
from matrix_mcp.store.protocol import Store

log = logging.getLogger("matrix_mcp.integrations")
CHECK_EVERY = 10.0


class Waker:
    """Set when this process adds or re-activates a subscription, so dispatching starts at once."""

    def __init__(self) -> None:
        self.event = anyio.Event()

    def wake(self) -> None:
        self.event.set()


async def dispatch_when_needed(
    store: Store, database_url: str, waker: Waker | None = None, artifacts_dir: Path | None = None
) -> None:
    if os.environ.get("MATRIX_WEBHOOK_DISPATCH", "1") == "0":
        return
    waker = waker or Waker()
    while True:
        try:
            if await store.hooks.any_active():
                break
        except Exception as exc:  # a store hiccup: look again later
            log.debug("webhook check failed: %s", type(exc).__name__)
        with anyio.move_on_after(CHECK_EVERY):
            await waker.event.wait()
        waker.event = anyio.Event()
    await dispatch(store, database_url, artifacts_dir=artifacts_dir)


async def dispatch(
    store: Store, database_url: str, settings: HookSettings | None = None, artifacts_dir: Path | None = None
) -> None:
    """Run the dispatcher until cancelled (also `matrix-mcp dispatch`)."""
    from matrix_mcp.integrations.crypto import KeyError_, load_keyring
    from matrix_mcp.integrations.dispatcher import Dispatcher

    settings = settings or HookSettings.from_env()
    try:
        keyring = load_keyring(database_url, settings.encryption_keys, create=False)
    except KeyError_ as exc:
        log.error("webhooks are not dispatched: %s", exc)
        return
    dispatcher = Dispatcher(store, settings, keyring, artifacts_dir=artifacts_dir)
    log.info("dispatching webhooks as %s", dispatcher.owner)
    try:
        await dispatcher.run()
    finally:
        with anyio.CancelScope(shield=True):
            await dispatcher.aclose()


async def dispatch_standalone(database_url: str, *, deadline: float, artifacts_dir: Path) -> None:
    """`matrix-mcp dispatch`: open the store at `database_url` and run the dispatcher until cancelled."""
    from matrix_mcp.store import open_store

    store = await open_store(database_url, deadline=deadline)
    try:
        await dispatch(store, database_url, artifacts_dir=artifacts_dir)
    finally:
        await store.close()
