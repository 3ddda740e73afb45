"""What every use case stands on: the store, the settings, the artifact store, and the run cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from matrix_mcp.artifacts import Artifacts
from matrix_mcp.config import Settings
from matrix_mcp.engine.validate import Checks
from matrix_mcp.errors import Conflict, MatrixError
from matrix_mcp.models import RunPolicy
from matrix_mcp.store.params import FinishedSpan
from matrix_mcp.store.protocol import Store

log = logging.getLogger("matrix_mcp.engine")

# A long-poll that waits tells its caller how long it has waited at least this often (MCP progress
# notifications: hosts that reset their request timeout on progress keep the call alive).
PROGRESS_EVERY_SECONDS = 5.0
ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]


class Waiting:
    """One long-poll's clock: its deadline, and its progress reports — seconds waited out of the seconds
    asked for, strictly increasing as the protocol requires, at most `PROGRESS_EVERY_SECONDS` apart."""

    def __init__(self, wait_seconds: float, progress: ProgressFn | None) -> None:
        self.wait_seconds = wait_seconds
        self.progress = progress
        self.started = anyio.current_time()
        self.deadline = self.started + wait_seconds
        self._reported = -1.0

    def remaining(self) -> float:
        return self.deadline - anyio.current_time()

    def pause(self, seconds: float) -> float:
        """How long to sleep before looking again: `seconds`, cut so that the next report is on time."""
        return min(seconds, PROGRESS_EVERY_SECONDS) if self.progress is not None else seconds

    async def report(self, message: str) -> None:
        if self.progress is None:
            return
        waited = round(min(anyio.current_time() - self.started, self.wait_seconds), 1)
        if waited > self._reported:
            self._reported = waited
            await self.progress(waited, self.wait_seconds, message)


@dataclass(frozen=True)
class RunInfo:
    id: str
    name: str
    goal: str | None
    policy: RunPolicy


class EngineCore(Checks):
    """State shared by the use cases, and the helpers more than one of them needs."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.limits = settings.limits
        self.artifacts = Artifacts(Path(settings.artifacts_dir), settings.limits.max_content_bytes)
        self._runs: dict[str, RunInfo] = {}
        # outcome id -> (run id, package, item, outcome_type, outcome_path) for items this process leased:
        # a worker reports through the server it claimed through, so complete/fail need no extra read.
        self._leased: dict[str, tuple[str, str, str, str, str | None]] = {}
        # run id -> (the event sequence it was read at, its finished span): see _finished_rate
        self._spans: dict[str, tuple[int, FinishedSpan]] = {}
        # A seam for fault injection: called with the outcome id right after a completion commits and before
        # its file is linked (a test SIGKILLs the process here, as a kill at any moment can). None in service.
        self.after_commit: Callable[[str], None] | None = None

    def now(self) -> float:
        """The current time, in seconds since the epoch: every use case's clock."""
        return time.time()

    async def run_info(self, ref: str) -> RunInfo:
        """Resolve a run by name or id. Runs are never deleted: cached, with the policy fields the engine
        reads (outcome_schema, backoff), which never change (update_policy changes others, which the
        store reads from the run's row).

        Args:
            ref: the run's name or id.

        Raises:
            InputError: not a valid name.
            NotFound: no such run.
        """
        info = self._runs.get(ref)
        if info is None:
            run = await self.store.get_run(self._name(ref, "run"))
            info = RunInfo(run.id, run.name, run.goal, run.policy)
            self._runs[run.id] = self._runs[run.name] = info
        return info

    async def _path_taken(
        self, exc: Exception, path: str | None, *, run_id: str, package: str, item: str
    ) -> None:
        """After a write of `path` failed: when another item holds that path, raise the one-line error naming
        it. The store keeps one holder per path (a unique key: of two reports racing for one path exactly
        one commits); the loser's database error says which key, this says who holds it. Errors raised on
        purpose (a stale lease, a conflicting repeat...) keep their own message."""
        if path is None or (isinstance(exc, MatrixError) and type(exc) is not MatrixError):
            return
        await self._refuse_held(path, run_id=run_id, package=package, item=item)

    async def _refuse_held(self, path: str, *, run_id: str, package: str, item: str) -> None:
        """Raise the one-line Conflict naming the item that holds `path`, unless it is this item or nobody."""
        holder = await self.store.path_holder(path)
        if holder is None or (holder.run_id, holder.package, holder.item) == (run_id, package, item):
            return
        where = f"{holder.package}/{holder.item}"
        if holder.run_id != run_id:  # only paths reported before they were relative to the run's folder
            where = f"{(await self.run_info(holder.run_id)).name}/{where}"
        raise Conflict(
            f"{path!r} is already the file of item {where}; choose another outcome_path", "outcome_path"
        )
