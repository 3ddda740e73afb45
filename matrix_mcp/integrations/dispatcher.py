"""The dispatcher: follows the events log and delivers to every active subscription, at least once.

- One task per subscription, so a dead or slow endpoint never delays another subscription.
- A subscription is served by whoever holds its lease in the store (one sender at a time across
  processes and hosts); everyone else waits for the lease to expire.
- Order per subscription, and why it loses nothing: read events after the cursor → write their
  deliveries and the new cursor in one transaction → send → record the results. A crash before the
  write re-reads the same events; after it, the pending deliveries are sent by whoever takes the
  lease next (an attempt in flight at the crash may be sent twice: at-least-once).
- Woken by the store's change notifications (wait_for_change), with a poll as the fallback.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2

from matrix_mcp import tracing
from matrix_mcp.artifacts import Artifacts
from matrix_mcp.errors import NotFound
from matrix_mcp.integrations import events as E
from matrix_mcp.integrations.crypto import Keyring
from matrix_mcp.integrations.http import AnswerTooLong, Http, Refused
from matrix_mcp.integrations.policy import (
    Answer,
    after_answer,
    attempt_result,
    circuit_open,
    endpoint_state,
)
from matrix_mcp.integrations.redact import display_target
from matrix_mcp.integrations.settings import HookSettings
from matrix_mcp.integrations.sinks import sink_for
from matrix_mcp.integrations.sinks.base import Sink, SinkContext
from matrix_mcp.store.hooks import (
    AttemptResult,
    CallLog,
    CursorMove,
    DeliveryRow,
    EndpointState,
    NewDelivery,
    RoundRecord,
    SubscriptionRow,
)
from matrix_mcp.store.protocol import Store
from matrix_mcp.telemetry import observe_integration_call as observe

log = logging.getLogger("matrix_mcp.integrations")

EVENTS_PER_READ = 1000
CURSOR_WRITE_GAP = 5000  # events that produced no delivery: move the stored cursor this lazily
CURSOR_WRITE_SECONDS = 10.0
LIST_REFRESH = 1.0


class _Worker:
    def __init__(self, row: SubscriptionRow, sink: Sink) -> None:
        self.row = row  # the latest view (the main loop refreshes it)
        self.sink = sink  # one per subscription: it may pace its calls
        self.wake = anyio.Event()
        self.stop = False

    def poke(self) -> None:
        self.wake.set()


class Dispatcher:
    def __init__(
        self,
        store: Store,
        settings: HookSettings,
        keyring: Keyring,
        *,
        http: Http | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        owner: str | None = None,
        artifacts_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.hooks = store.hooks
        self.settings = settings
        self.keyring = keyring
        self.http = http or Http(settings.allowed_networks, settings.timeout)
        self.clock = clock
        self.rng = rng or random.Random()
        self.owner = owner or f"dispatcher-{uuid.uuid4().hex[:12]}"
        self._workers: dict[str, _Worker] = {}
        self._run_ids: dict[str, str] = {}
        self._secrets: dict[str, dict[str, Any]] = {}
        self._refusals: dict[str, str | None] = {}  # subscription -> the refusal last said
        self._artifacts = Artifacts(artifacts_dir, 0) if artifacts_dir is not None else None

    def context(self, row: SubscriptionRow) -> SinkContext:
        return SinkContext(
            subscription=row,
            credentials=self.credentials(row),
            http=self.http,
            hooks=self.hooks,
            now=self.clock,
            store=self.store,
            read_content=self._read_content if self._artifacts is not None else None,
        )

    async def _read_content(self, sha256: str) -> bytes:
        """An outcome's content: kept in the store (small reports) or in the blob store."""
        body = await self.store.inline_content(sha256)
        if body is not None:
            return body
        assert self._artifacts is not None
        return await anyio.to_thread.run_sync(self._artifacts.read_blob, sha256)

    async def aclose(self) -> None:
        await self.http.aclose()

    # ---- the main loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch until cancelled."""
        seq = await self.store.latest_seq()
        refreshed = -LIST_REFRESH
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    if anyio.current_time() - refreshed >= LIST_REFRESH:
                        refreshed = anyio.current_time()
                        await self._refresh(tg)
                    try:
                        latest = await self.store.wait_for_change(
                            seq, timeout=min(self.settings.poll, LIST_REFRESH)
                        )
                    except anyio.get_cancelled_exc_class():
                        raise
                    except Exception as exc:
                        log.warning(
                            "webhook dispatcher: the store is unavailable (%s); retrying", type(exc).__name__
                        )
                        await anyio.sleep(1.0)
                        continue
                    if latest != seq:
                        seq = latest
                        for w in self._workers.values():
                            w.poke()
        finally:
            with anyio.CancelScope(shield=True):
                for sid in list(self._workers):
                    try:
                        await self.hooks.release(sid, owner=self.owner)
                    except Exception:
                        log.debug("could not release the lease of %s", sid, exc_info=True)

    async def _refresh(self, tg: anyio.abc.TaskGroup) -> None:
        try:
            rows = {r.id: r for r in await self.hooks.list_subscriptions(active_only=True)}
        except Exception as exc:
            log.warning("webhook dispatcher: cannot list subscriptions (%s)", type(exc).__name__)
            return
        for sid, w in list(self._workers.items()):
            if sid not in rows:
                w.stop = True
                w.poke()
                del self._workers[sid]
        for sid, row in rows.items():
            if sid in self._workers:
                self._workers[sid].row = row
                continue
            w = self._workers[sid] = _Worker(row, sink_for(row.kind, self.settings.github_min_interval))
            tg.start_soon(self._serve, w)

    # ---- one subscription ---------------------------------------------------------------------

    async def _serve(self, w: _Worker) -> None:
        sid = w.row.id
        held_until = 0.0
        stored = scan = 0
        cursor_written = 0.0
        state: EndpointState | None = None
        window_start, window_events, rate = self.clock(), 0, 0.0
        try:
            while not w.stop:
                now = self.clock()
                if now >= held_until - self.settings.lease_ttl / 2:
                    row = await self.hooks.lease(sid, owner=self.owner, now=now, ttl=self.settings.lease_ttl)
                    if (
                        row is None
                    ):  # held elsewhere, or no longer active: look again later, not on every change
                        held_until = 0.0
                        await anyio.sleep(self.settings.lease_ttl / 3)
                        continue
                    if held_until == 0.0:  # freshly taken: start from what the store says
                        stored = scan = row.cursor
                        cursor_written = now
                        state = endpoint_state(row)
                    held_until = now + self.settings.lease_ttl
                    w.row = row
                assert state is not None
                sink = w.sink
                # 1. events → deliveries, and the cursor, in one transaction
                events = await self.store.events_after(since=scan, run_id=None, limit=EVENTS_PER_READ)
                if events:
                    new = await self._deliveries(w.row, sink, events)
                    last = events[-1].seq
                    lazy = (
                        not new
                        and last - stored < CURSOR_WRITE_GAP
                        and now - cursor_written < CURSOR_WRITE_SECONDS
                    )
                    if not lazy:
                        move = CursorMove(
                            owner=self.owner, cursor_from=stored, cursor_to=last, deliveries=new
                        )
                        if not await self.hooks.materialize(sid, move=move, now=now):
                            held_until = 0.0  # lost the lease (or someone moved the cursor): start over
                            continue
                        stored, cursor_written = last, now
                    scan = last
                # 2. send what is due
                sent, state, kept = await self._send_due(w, sink, state)
                if not kept:
                    held_until = 0.0
                    continue
                if len(events) >= EVENTS_PER_READ or sent >= self.settings.batch:
                    continue  # a backlog: straight on
                if events or sent:
                    # a steady stream (the board is busy): let events gather, so each round's reads and
                    # writes serve many and the hot path is left alone; a few events: answer them at once
                    window_events += len(events)
                    if now - window_start >= 1.0:  # the event rate over the last second or so
                        rate, window_events, window_start = window_events / (now - window_start), 0, now
                    await anyio.sleep(self.settings.busy_pause if rate >= self.settings.busy_rate else 0.01)
                    continue
                await self._nap(w, await self._idle_for(sid, state))
        except anyio.get_cancelled_exc_class():
            raise
        except Exception:
            log.exception("webhook dispatcher: subscription %s failed; it is retried", sid)
            await anyio.sleep(1.0)
            if not w.stop:
                self._workers.pop(sid, None)  # the next refresh starts it again
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.hooks.release(sid, owner=self.owner)
                except Exception:
                    log.debug("could not release the lease of %s", sid, exc_info=True)

    async def _nap(self, w: _Worker, seconds: float) -> None:
        w.wake = anyio.Event()
        with anyio.move_on_after(max(0.0, seconds)):
            await w.wake.wait()

    async def _idle_for(self, sid: str, state: EndpointState) -> float:
        wait = min(self.settings.poll, self.settings.lease_ttl / 3)
        now = self.clock()
        if state.circuit_open_until is not None and state.circuit_open_until > now:
            return min(wait, state.circuit_open_until - now)
        due = await self.hooks.next_due(sid)
        if due is not None:
            wait = min(wait, max(0.0, due - now))
        return wait

    async def _deliveries(self, row: SubscriptionRow, sink: Sink, events: list[Any]) -> list[NewDelivery]:
        published = [p for p in (E.public_event(e) for e in events) if p is not None]
        pubs = [p for p in published if E.matches(row.events, row.run, p) and sink.wants(p.type)]
        # one read for the round: what the bodies tell beyond the event (metrics, a missing package —
        # some PostgreSQL events carry none, fixed by issue 10 — attempt, last error)
        ids = {
            p.data["outcome_id"]
            for p in published
            if "outcome_id" in p.data and ("package" not in p.data or any(p is q for q in pubs))
        }
        facts = await self.hooks.outcome_facts(sorted(ids)) if ids else {}
        for pub in published:
            found = facts.get(pub.data.get("outcome_id", ""))
            if found is not None:
                E.enrich(pub, found)
        touched: dict[str, set[str] | None] = {}
        for pub in published:
            if pub.type in E.TERMINAL_TYPES and pub.run is not None:
                # the items a failure cancelled may be in any package: check them all
                package = pub.data.get("package") if pub.type != "outcome.dependents_cancelled" else None
                seen = touched.setdefault(pub.run, set())
                if seen is not None:
                    if isinstance(package, str):
                        seen.add(package)
                    else:
                        touched[pub.run] = None  # package unknown: check every package of the run
        derived_wanted = any(
            E.matches(row.events, row.run, E.PublicEvent(type=t, seq=0, run=row.run, key="", created_at=0.0))
            and sink.wants(t)
            for t in ("package.completed", "run.completed")
        )
        if derived_wanted and touched:
            last = events[-1]
            for run, packages in touched.items():
                if row.run is not None and run != row.run:
                    continue
                try:
                    run_id = await self._run_id(run)
                    summaries = await self.store.package_summaries(run_id)
                except NotFound:
                    continue
                names = [p.package for p in summaries] if packages is None else packages
                for pub in E.completions(summaries, names, last.seq, self.clock()):
                    if E.matches(row.events, row.run, pub) and sink.wants(pub.type):
                        pubs.append(pub)
        return [
            NewDelivery(
                id=E.delivery_id(row.id, p.key), seq=p.seq, event_type=p.type, run=p.run, body=E.body(p)
            )
            for p in pubs
        ]

    async def _run_id(self, run: str) -> str:
        if run not in self._run_ids:
            self._run_ids[run] = (await self.store.get_run(run)).id
        return self._run_ids[run]

    def credentials(self, row: SubscriptionRow) -> dict[str, Any]:
        found = self._secrets.get(row.credentials)
        if found is None:
            found = self._secrets[row.credentials] = self.keyring.decrypt(row.credentials)
        return found

    async def _send_due(
        self, w: _Worker, sink: Sink, state: EndpointState
    ) -> tuple[int, EndpointState, bool]:
        """Send one round of due deliveries; (how many were attempted, endpoint state, lease still held)."""
        sid = w.row.id
        now = self.clock()
        if circuit_open(state, now):
            return 0, state, True
        due = await self.hooks.due_deliveries(sid, now=now, limit=self.settings.batch)
        if not due:
            return 0, state, True
        if state.failures >= self.settings.circuit_failures:
            due = due[:1]  # half-open: one probe
        ctx = self.context(w.row)
        results: list[AttemptResult] = []
        timings: list[tuple[DeliveryRow, Answer, float]] = []
        current = state
        # a failing endpoint gets one request at a time, so the breaker trips after exactly N failures
        limiter = anyio.Semaphore(1 if state.failures else self.settings.concurrency)

        async def one(d: DeliveryRow) -> None:
            nonlocal current
            async with limiter:
                if circuit_open(current, self.clock()) or not current.active:
                    return  # opened (or disabled) while this batch was in flight: leave it due
                with tracing.delivery_span(
                    sink=sink.service,
                    target=w.row.target,
                    subscription=sid,
                    delivery=d.id,
                    event_type=d.event_type,
                    attempt=d.attempts + 1,
                    run=d.run,
                ) as traced:
                    started = time.monotonic()
                    answer = await self.attempt(sink, ctx, d)
                    took = time.monotonic() - started
                    at = self.clock()
                    result = attempt_result(self.settings, d.id, d.attempts, answer, at, self.rng)
                    traced.answered(answer.status_code, result.status, answer.ok)
                results.append(result)
                current = after_answer(self.settings, current, answer, at)
                timings.append((d, answer, took))

        async with anyio.create_task_group() as tg:
            for d in due:
                tg.start_soon(one, d)
        self._say_refusals(sid, timings)
        logs = self._call_logs(sink.service, w.row, timings)
        done = RoundRecord(owner=self.owner, state=current, results=results, logs=logs)
        kept = await self.hooks.record(sid, record=done, now=self.clock())
        if not current.active:
            log.warning("webhook %s disabled: %s", sid, current.disabled_reason)
            w.stop = True
        return len(results), current, kept

    async def attempt(self, sink: Sink, ctx: SinkContext, d: DeliveryRow) -> Answer:
        """One call; every failure becomes an Answer whose error is safe to store (no URL, no secret)."""
        deadline = ctx.http.deadline(self.settings.timeout) if sink.attempt_deadline else nullcontext()
        try:
            with deadline:
                return await sink.deliver(ctx, d)
        except Refused as exc:  # by this process's policy: another process may allow it (say which)
            return Answer(None, f"refused by {self.owner}: {exc}", refused=True)
        except AnswerTooLong as exc:
            return Answer(None, f"{exc} (the rest was not read, the connection closed)")
        except (TimeoutError, httpx2.TimeoutException):
            return Answer(None, f"no complete answer within {self.settings.timeout:g} s")
        except httpx2.TransportError as exc:
            return Answer(None, f"connection failed ({_why(exc)})")
        except Exception as exc:
            log.warning("webhook sink %s failed on %s: %s", sink.service, d.id, type(exc).__name__)
            return Answer(None, f"sink error ({type(exc).__name__})")

    def _say_refusals(self, sid: str, timings: list[tuple[DeliveryRow, Answer, float]]) -> None:
        """A refusal is this process's doing (its MATRIX_WEBHOOK_ALLOWED_NETWORKS): say it at WARNING, once
        per subscription and reason, so a process missing the setting is found; a success forgets it."""
        for _, answer, _ in timings:
            if answer.ok:
                self._refusals.pop(sid, None)
            elif answer.refused and self._refusals.get(sid) != answer.error:
                self._refusals[sid] = answer.error
                log.warning(
                    "webhook %s: %s; deliveries wait and retry (MATRIX_WEBHOOK_ALLOWED_NETWORKS must be set"
                    " alike in every process that dispatches)",
                    sid,
                    answer.error,
                )

    def _call_logs(
        self, service: str, row: SubscriptionRow, timings: list[tuple[DeliveryRow, Answer, float]]
    ) -> list[CallLog]:
        """Each call: the metrics observer, and a row for the seed's integration_logs (written with the
        results, in the same transaction)."""
        logs = []
        now = self.clock()
        for d, answer, took in timings:
            status = "success" if answer.ok else "failure"
            observe(service, status, took)
            details: dict[str, Any] = {
                "webhook": row.id,
                "target": display_target(row.target),
                "delivery_id": d.id,
                "event_type": d.event_type,
                "attempt": d.attempts + 1,
                "status_code": answer.status_code,
                "duration_ms": round(took * 1000, 1),
            }
            if answer.error:
                details["error"] = answer.error
            logs.append(
                CallLog(
                    run=d.run,
                    integration_type=service,
                    action="deliver",
                    status=status,
                    details=details,
                    created_at=now,
                )
            )
        return logs


def _why(exc: BaseException) -> str:
    """A transport error's kind and, when the system said one, its reason ("Connection refused"): never
    the URL (the error texts of the HTTP stack may carry it)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            return f"{type(exc).__name__}: {os.strerror(cause.errno) if cause.errno else cause.strerror}"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__
