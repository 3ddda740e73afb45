"""Group commit, one mechanism for both stores: concurrent writes of one process queue up; the first
writer to arrive leads, drains the queue batch by batch and hands each batch to the store's runner (one
transaction per batch, a savepoint per request where the store needs one). Every request is answered
with its own value or error.

Tests watch the batches through `observe` (a callback given each batch's size) instead of patching
the stores' internals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

from matrix_mcp.audit import current_principal
from matrix_mcp.errors import StoreError, Unavailable


class Request:
    """One queued write: who queued it (its events record them), and its answer once the batch ran."""

    __slots__ = ("abandoned", "done", "error", "lead", "principal", "value")

    def __init__(self) -> None:
        self.principal = current_principal.get()
        self.done: anyio.Event | None = None  # made when it waits: a leader answers its own request
        self.value: Any = None
        self.error: BaseException | None = None
        self.lead = False  # woken (done set) to lead the next batch, not answered yet
        self.abandoned = False  # its writer stopped waiting (cancelled): it still runs, it cannot lead


Req = TypeVar("Req", bound=Request)


class GroupCommit(Generic[Req]):
    """The queue and its leader. `runner(batch)` commits a batch (or sets each request's error); an error
    it raises is every request's: a StoreError as it is, anything else as Unavailable(unavailable(exc))."""

    def __init__(
        self,
        runner: Callable[[list[Req]], Awaitable[None]],
        *,
        unavailable: Callable[[BaseException], str],
        after: Callable[[], None] | None = None,
        gather: bool = False,
        regather: bool = False,
    ) -> None:
        self._runner = runner
        self._unavailable = unavailable
        self._after = after
        self._gather = gather  # yield once before the first batch so every ready writer joins it
        # after answering a batch, yield once (the writers it answered queue their next request in time
        # to join the next batch: a steady loop of N writers runs batches of N, not alternating halves),
        # then hand the lead to a queued writer, so that no leader's own caller waits behind the load
        self._regather = regather
        self._queue: list[Req] = []
        self._leading = False
        self._observers: list[Callable[[int], None]] = []
        self.closed = False

    def observe(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call `callback(size)` for every batch from now on; returns the function that stops it."""
        self._observers.append(callback)
        return lambda: self._observers.remove(callback)

    async def submit(self, request: Req) -> Any:
        """Queue `request`, lead the batches if nobody does, and answer it (or raise its error)."""
        if self.closed:
            raise Unavailable("the store is closed")
        self._queue.append(request)
        if not self._leading:
            self._leading = True
            await self._lead()
        else:
            request.done = done = anyio.Event()
            try:
                await done.wait()
            except BaseException:
                if not request.lead:
                    request.abandoned = True
                    raise
                await self._take_lead(request)  # handed the lead just as it was cancelled: lead, then go
                raise
            if request.lead:
                await self._take_lead(request)  # its own request was in the batch it led: answered
        if request.error is not None:
            raise request.error
        return request.value

    async def _take_lead(self, request: Req) -> None:
        request.lead = False
        request.done = None  # it leads now: its own batch answers it, nobody waits for the event
        await self._lead()

    async def _lead(self) -> None:
        """Run batches while requests are queued (with `regather`: one batch, then hand the lead on)."""
        handed = False
        try:
            with anyio.CancelScope(shield=True):
                if self._gather:
                    await anyio.lowlevel.checkpoint()
                while self._queue:
                    batch, self._queue = self._queue, []
                    for observer in list(self._observers):
                        observer(len(batch))
                    try:
                        await self._runner(batch)
                    except StoreError as exc:
                        for req in batch:
                            req.error = exc
                    except BaseException as exc:  # the connection itself failed
                        for req in batch:
                            req.error = Unavailable(self._unavailable(exc))
                    for req in batch:
                        if req.done is not None:
                            req.done.set()
                    if self._after is not None:
                        self._after()
                    if self._regather:
                        await anyio.lowlevel.checkpoint()
                        heir = next((r for r in self._queue if not r.abandoned), None)
                        if heir is not None:
                            heir.lead = True
                            assert heir.done is not None  # queued behind a leader: it waits
                            heir.done.set()
                            handed = True
                            return
        finally:
            if not handed:
                self._leading = False
