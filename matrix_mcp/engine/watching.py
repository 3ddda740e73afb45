"""Watching a run: its counts, progress, throughput, ETA and events, optionally waiting for change."""

from __future__ import annotations

from collections.abc import Sequence

from matrix_mcp.engine.core import EngineCore, ProgressFn, Waiting
from matrix_mcp.models import Event, PackageSummary, RecountReport, RunStatus, UsageTotals
from matrix_mcp.store.params import Cell, MinuteCount


def run_usage(summaries: Sequence[PackageSummary]) -> UsageTotals | None:
    """A run's usage: its packages' sums added up (None when none reported any)."""
    spent = [p.usage for p in summaries if p.usage is not None]
    if not spent:
        return None
    return UsageTotals(
        input_tokens=sum(u.input_tokens for u in spent),
        output_tokens=sum(u.output_tokens for u in spent),
        cache_read_tokens=sum(u.cache_read_tokens for u in spent),
        cache_creation_tokens=sum(u.cache_creation_tokens for u in spent),
        cost_usd=round(sum(u.cost_usd for u in spent), 9),
    )


# A run in these states has nothing left to do: its throughput is its actual rate, not a recent window.
FINISHED_RUN_STATES = ("done", "cancelled")
SPAN_CACHE_RUNS = 1024  # finished runs whose span this process keeps (a bound, not a tuning knob)
__all__ = ["FINISHED_RUN_STATES", "ProgressFn", "Watching"]


class Watching(EngineCore):
    async def run_status(
        self,
        run: str,
        *,
        since: int | None = None,
        wait_seconds: float = 0,
        progress: ProgressFn | None = None,
        event_limit: int = 200,
    ) -> RunStatus:
        """The run's counts, per-package summaries, progress, throughput and ETA, with the events after
        `since`; with `wait_seconds`, wait up to that long for the first such event (long poll).

        Args:
            run: the run's name or id.
            since: return the events after this sequence number (`latest_seq` of an earlier answer).
            wait_seconds: with `since`, wait up to this long for an event.
            progress: called while waiting (done, total, message), for MCP progress notifications.
            event_limit: at most this many events; `more_events` says when more are waiting.

        Raises:
            InputError: since or wait_seconds out of range.
            NotFound: no such run.
        """
        info = await self.run_info(run)
        self._wait(wait_seconds, "wait_seconds")
        self._seq(since, "since")
        events = []
        if since is not None:
            waiting = Waiting(wait_seconds, progress)
            cursor = since
            while True:
                events = await self.store.events_after(since=since, run_id=info.id, limit=event_limit + 1)
                remaining = waiting.remaining()
                if events or remaining <= 0:
                    break
                if progress is not None:
                    counts = (await self.store.get_run(info.id)).counts
                    finished = counts.total - counts.pending - counts.generating
                    await waiting.report(
                        f"waiting for changes after #{since}: {finished} of {counts.total} items finished"
                    )
                timeout = waiting.pause(remaining)
                cursor = max(cursor, await self.store.wait_for_change(cursor, timeout=timeout))
        now = self.now()
        window = 300.0
        overview = await self.store.run_overview(info.id, since=now - window)
        snapshot, summaries, finished_recent = overview.run, overview.packages, overview.finished_since
        latest = overview.latest_seq  # read after any wait, so it covers the events returned
        if snapshot.state in FINISHED_RUN_STATES:
            # nothing is left to do: the run's actual rate, the same however late it is asked
            per_minute = await self._finished_rate(info.id, overview.latest_seq)
        else:
            span = min(window, max(1.0, now - snapshot.created_at.timestamp()))
            per_minute = round(finished_recent / span * 60, 3) if finished_recent else None
        remaining_items = snapshot.counts.pending + snapshot.counts.generating
        eta = round(remaining_items / (per_minute / 60), 1) if per_minute and remaining_items else None
        more = len(events) > event_limit
        return RunStatus(
            run=snapshot.name,
            run_id=snapshot.id,
            state=snapshot.state,
            goal=snapshot.goal,
            counts=snapshot.counts,
            packages=summaries,
            progress=snapshot.progress,
            throughput_per_minute=per_minute,
            eta_seconds=eta,
            usage=run_usage(summaries),
            workers=overview.workers or None,
            latest_seq=max([latest, *(e.seq for e in events)]),
            events=events[:event_limit],
            more_events=more,
        )

    async def _finished_rate(self, run_id: str, latest_seq: int) -> float | None:
        """Items finished per minute over the span from the first start to the last finish. Every change
        to a run's items is an event, so a span read at event sequence `latest_seq` (or later) stays true
        until the sequence moves on: a watched finished run is read once, not on every poll."""
        cached = self._spans.get(run_id)
        if cached is not None and cached[0] == latest_seq:
            span = cached[1]
        else:
            span = await self.store.finished_span(run_id)
            self._spans.pop(run_id, None)
            if len(self._spans) >= SPAN_CACHE_RUNS:
                self._spans.pop(next(iter(self._spans)))
            self._spans[run_id] = (latest_seq, span)
        if not span.finished or span.first_started_at is None or span.last_finished_at is None:
            return None
        seconds = max(1.0, span.last_finished_at - span.first_started_at)
        return round(span.finished / seconds * 60, 3)

    async def recount(self, run: str | None = None) -> RecountReport:
        """Compare the status counters of one run (or of every run) with a recount of its items
        (`status --check`).

        Args:
            run: the run's name or id; None for every run.

        Raises:
            NotFound: no such run.
        """
        return await self.store.recount(None if run is None else (await self.run_info(run)).id)

    async def events(self, *, since: int, run: str | None = None, limit: int) -> list[Event]:
        """The events after `since`, oldest first: every run's, or one run's.

        Args:
            since: the sequence number to read after.
            run: only this run's events (its name or id).
            limit: at most this many.

        Raises:
            InputError: since out of range, or a bad run name.
            NotFound: no such run.
        """
        self._seq(since, "since")
        run_id = None if run is None else (await self.run_info(run)).id
        return await self.store.events_after(since=since, run_id=run_id, limit=limit)

    async def wait_for_change(self, since: int, *, timeout: float) -> int:
        """Wait until an event after `since` is committed (by this process or another on the same store),
        or `timeout` seconds pass; answers the latest sequence number.

        Args:
            since: the sequence number already seen.
            timeout: the longest wait, in seconds.
        """
        return await self.store.wait_for_change(since, timeout=timeout)

    async def cells(self, run: str) -> list[Cell]:
        """Every item of a run in creation order, reduced to what a grid draws (package, item, status,
        outcome id): one read, even for a run of tens of thousands of items.

        Args:
            run: the run's name or id.

        Raises:
            NotFound: no such run.
        """
        return await self.store.cells((await self.run_info(run)).id)

    async def throughput(self, run: str, *, since_minute: int) -> list[MinuteCount]:
        """How many items finished (complete, failed) in each minute from `since_minute` on, in order; a
        minute with none is absent. The counts the run's throughput window sums.

        Args:
            run: the run's name or id.
            since_minute: the first minute (seconds since the epoch // 60).

        Raises:
            NotFound: no such run.
        """
        return await self.store.run_minutes((await self.run_info(run)).id, since_minute=since_minute)
