"""`matrix-mcp work RUN -- COMMAND [ARGS…]`: run a command once per item of a run, N at a time.

Works on the configured store directly (no MCP hop), with the one-call loop: each report leases the
slot's next item in the same transaction. Every command runs in its own process group (its own
session), gets the item as environment variables and as one JSON document on stdin, and its stdout
becomes the item's content. Leases are heartbeated while commands run. SIGINT/SIGTERM: stop claiming,
let running commands finish for a grace period, then kill their process groups and fail their items
(retryable). A SIGKILL of `work` loses nothing: its leases expire and the items go back to pending.

`--verify COMMAND` checks a successful command's output (on its stdin) before it counts: under review the
item is completed, then approved or rejected by review_item; without review a rejection fails the item
locally. A command that prints a JSON object with a `usage` object or a `total_cost_usd` (agent CLIs'
JSON output) has that reported as the attempt's usage (`usage_of`). The last line of a running command's
stderr goes with its heartbeats as the attempt's note.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO, TypeGuard, TypeVar

import anyio

from matrix_mcp import tracing
from matrix_mcp.audit import acting_as, current_principal, current_tool_access
from matrix_mcp.cli.format import format_status
from matrix_mcp.cli.progress import LiveLine, progress_line
from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine, InputError, RunInfo
from matrix_mcp.errors import StaleLease, StoreError, Unavailable
from matrix_mcp.models import MAX_NOTE_CHARS, ClaimedItem, LeaseRef, ReportResult, ReviewDecision, Usage

log = logging.getLogger("matrix_mcp.work")
T = TypeVar("T")

STDERR_TAIL = 2048  # bytes of a failed command's stderr kept as its error
CHECKPOINT_CHARS = 200  # the last stderr line sent with a heartbeat as the attempt's note, at most
FINISHED = ("done", "cancelled", "empty")
WORK_PRINCIPAL = "work:"  # + the worker's name: who reviewed, for a --verify decision made without a caller
# what `work` prints when a claim comes back empty and it waits on (once per change of reason)
WAITING = {
    "paused": "the run is paused",
    "all_leased": "every item left is leased",
    "backing_off": "the items left are backing off after failures",
    "blocked": "the items left wait for their dependencies",
    "locked": "the ready items need lock keys another lease holds",
    "capped": "a max_concurrent cap is reached",
    "in_review": "the items left wait for review (a rejection sends one back)",
}


@dataclass(frozen=True)
class WorkOptions:
    run: str
    command: Sequence[str]
    package: str | None = None
    jobs: int = 1
    timeout: float | None = None
    worker: str | None = None
    no_retry_exit: frozenset[int] = frozenset()
    grace: float = 10.0
    verify: Sequence[str] | None = None


@dataclass(frozen=True)
class Verdict:
    """What --verify said of a command's output: approved, or rejected with its stderr as the note."""

    approved: bool
    note: str


@dataclass
class CommandResult:
    """What running the command for one item gave."""

    returncode: int | None
    stdout: bytes
    stdout_bytes: int
    stderr_tail: bytes
    seconds: float
    stopped: str | None = None  # why work killed it: "timeout", "interrupted", "lease lost", "run cancelled"
    metrics_file: dict[str, Any] | None = None
    metrics_error: str | None = None
    verdict: Verdict | None = None


@dataclass
class Running:
    item: ClaimedItem
    process: subprocess.Popen[bytes] | None = None
    stopped: str | None = None
    stderr: bytearray = field(default_factory=bytearray)  # its tail so far: the last line is a checkpoint

    def checkpoint(self) -> str | None:
        """The last non-empty line of the command's stderr so far (bounded), or None."""
        for line in reversed(bytes(self.stderr).splitlines()):
            text = line.decode("utf-8", errors="replace").replace("\x00", "").strip()
            if text:
                return text[-CHECKPOINT_CHARS:]
        return None

    def kill(self, why: str) -> None:
        """Kill the command's whole process group (it runs in a session of its own)."""
        if self.stopped is None:
            self.stopped = why
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class Tally:
    completed: int = 0
    failed: int = 0  # reports of failure (retryable or not)
    lost: int = 0  # reports the store refused: the lease had expired or was taken over
    approved: int = 0  # by --verify
    rejected: int = 0
    started: float = field(default_factory=time.monotonic)


def work_options(args: Any, command: list[str]) -> WorkOptions:
    """WorkOptions from the parsed `matrix-mcp work` arguments and the command after `--`; a ValueError
    names the bad one."""
    if not command:
        raise ValueError("COMMAND: give the command after --, e.g. matrix-mcp work RUN -- ./script.sh")
    if args.jobs < 1:
        raise ValueError("-j/--jobs must be at least 1")
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError("--timeout must be a positive number of seconds")
    if not args.grace >= 0:
        raise ValueError("--grace must be zero or more seconds")
    verify = None
    if getattr(args, "verify", None) is not None:
        verify = shlex.split(args.verify)
        if not verify:
            raise ValueError("--verify: give a command, e.g. --verify './check.sh'")
    return WorkOptions(
        run=args.run,
        command=command,
        package=args.package,
        jobs=args.jobs,
        timeout=args.timeout,
        worker=args.worker,
        no_retry_exit=parse_exit_codes(args.no_retry_exit),
        grace=args.grace,
        verify=verify,
    )


def parse_exit_codes(text: str | None) -> frozenset[int]:
    """`--no-retry-exit 2,3` → {2, 3}; the ValueError names the flag."""
    if not text:
        return frozenset()
    try:
        return frozenset(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise ValueError(f"--no-retry-exit must be exit codes separated by commas, got {text!r}") from None


class Worker:
    def __init__(self, engine: Engine, info: RunInfo, options: WorkOptions, out: TextIO) -> None:
        self.engine = engine
        self.info = info
        self.options = options
        self.name = options.worker or f"{socket.gethostname()}-{os.getpid()}"
        self.max_bytes = engine.limits.max_content_bytes
        self.running: dict[str, Running] = {}
        self.stopping = False
        self.signal: int | None = None
        self.tally = Tally()
        self.live = LiveLine(out)
        self._tmp = Path(tempfile.mkdtemp(prefix="matrix-work-"))
        self._trace_parent = tracing.parent_from_env(os.environ)  # `work` run inside a trace
        self._reason: str | None = None  # why the last claim came back empty (printed once)

    # ---- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as side:
                side.start_soon(self._signals)
                side.start_soon(self._heartbeats)
                side.start_soon(self._progress)
                async with anyio.create_task_group() as slots:
                    for _ in range(self.options.jobs):
                        slots.start_soon(self._slot)
                side.cancel_scope.cancel()
        finally:
            self.live.close()
            with contextlib.suppress(OSError):
                for leftover in self._tmp.iterdir():
                    leftover.unlink()
                self._tmp.rmdir()

    async def _slot(self) -> None:
        """One command at a time: claim, run, report (the report leases this slot's next item)."""
        item: ClaimedItem | None = None
        while not self.stopping:
            if item is None:
                item = await self._claim()
                if item is None:
                    return
            with tracing.work_item_span(
                run=self.info.name, item=item, worker=self.name, parent=self._trace_parent
            ) as span:  # the command's TRACEPARENT names this span; the report's span is its child
                outcome = await self._execute(item)
                tracing.command_exited(span, outcome.returncode, outcome.stopped)
                item = await self._report(item, outcome)

    async def _claim(self) -> ClaimedItem | None:
        while not self.stopping:
            got = await self._retrying(
                lambda: self.engine.claim_items(
                    self.info.id, worker=self.name, limit=1, package=self.options.package, wait_seconds=1
                )
            )
            if got is None:
                return None
            if got.items:
                self._waiting(None)
                return got.items[0]
            if got.reason in FINISHED:
                return None
            if got.reason == "blocked" and got.retry_after_seconds is None and self.options.package is None:
                # nothing is generating in the run: only a retry or an override can free the rest
                if self._reason != "stuck":
                    self._reason = "stuck"
                    self.live.note(
                        "claim: blocked — the items left wait for dependencies that failed (or cannot "
                        "complete) and nothing is in progress; stopping (retry the failed items to go on)"
                    )
                return None
            self._waiting(got.reason, got.retry_after_seconds)
            if got.reason == "paused":
                await anyio.sleep(1)
        return None

    def _waiting(self, reason: str | None, retry_after: float | None = None) -> None:
        """Print why the claims come back empty, once each time the reason changes."""
        if reason == self._reason:
            return
        self._reason = reason
        if reason is not None:
            due = f" (due in {retry_after:.0f} s)" if retry_after is not None else ""
            self.live.note(f"claim: {reason} — {WAITING.get(reason, 'nothing to claim')}; waiting{due}")

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run a store call, riding out a database that is briefly unavailable (about a minute)."""
        delay = 0.25
        for _ in range(12):
            try:
                return await call()
            except Unavailable as exc:
                log.warning("store unavailable, retrying: %s", exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 8.0)
        log.error("store unavailable; giving up on this call (the item's lease will expire)")
        return None

    # ---- one command ----------------------------------------------------------------------------

    def _document(self, item: ClaimedItem) -> dict[str, Any]:
        return {
            "run": self.info.name,
            "package": item.package,
            "item": item.item,
            "outcome_id": item.outcome_id,
            "attempt": item.attempt,
            "specifications": item.specifications,
            "briefing": item.briefing,
            **_previous(item),
        }

    async def _execute(self, item: ClaimedItem) -> CommandResult:
        doc = self._document(item)
        metrics_path = self._tmp / f"{item.outcome_id}.json"
        env = dict(os.environ)
        env.update(
            MATRIX_RUN=self.info.name,
            MATRIX_PACKAGE=item.package,
            MATRIX_ITEM=item.item,
            MATRIX_OUTCOME_ID=item.outcome_id,
            MATRIX_ATTEMPT=str(item.attempt),
            MATRIX_SPECIFICATIONS=json.dumps(item.specifications, ensure_ascii=False),
            MATRIX_BRIEFING=item.briefing or "",
            MATRIX_METRICS_FILE=str(metrics_path),
        )
        if item.previous_attempts:  # what the earlier attempts left: errors, last notes, review notes
            env["MATRIX_PREVIOUS_ATTEMPTS"] = json.dumps(
                _previous(item)["previous_attempts"], ensure_ascii=False
            )
        env.update(tracing.traceparent_env())  # the item's span (W3C), when tracing
        running = Running(item)
        self.running[item.outcome_id] = running
        stdout = bytearray()
        total = 0
        tail = running.stderr
        started = time.monotonic()
        try:
            try:
                # Popen (vfork + exec) on a worker thread rather than asyncio's subprocess transport (a
                # child-watcher thread per process: 0.20 of xargs' rate instead of 0.27, see README);
                # the pipes and the exit are awaited on the event loop below
                process = await anyio.to_thread.run_sync(_spawn, list(self.options.command), env)
            except OSError as exc:
                return CommandResult(127, b"", 0, f"cannot start the command: {exc}".encode(), 0.0)
            running.process = process
            if running.stopped is not None:  # stopped while it was starting
                running.kill(running.stopped)

            def take_out(chunk: bytes) -> None:
                nonlocal total
                total += len(chunk)
                if total <= self.max_bytes:
                    stdout.extend(chunk)

            def take_err(chunk: bytes) -> None:
                tail.extend(chunk)
                del tail[:-STDERR_TAIL]

            assert process.stdin and process.stdout and process.stderr
            data = json.dumps(doc, ensure_ascii=False).encode() + b"\n"
            with anyio.move_on_after(self.options.timeout) as deadline:
                async with anyio.create_task_group() as io:
                    io.start_soon(_feed, process.stdin, data)
                    io.start_soon(_drain, process.stdout, take_out)
                    io.start_soon(_drain, process.stderr, take_err)
                await _exited(process)
            if deadline.cancelled_caught:
                running.kill("timeout")
        finally:
            self.running.pop(item.outcome_id, None)
            if running.process is not None:
                with anyio.CancelScope(shield=True):
                    if running.process.poll() is None:
                        running.kill(running.stopped or "interrupted")
                        await _exited(running.process)
                for pipe in (running.process.stdin, running.process.stdout, running.process.stderr):
                    if pipe is not None:
                        with contextlib.suppress(OSError):
                            pipe.close()
        outcome = CommandResult(
            process.returncode, bytes(stdout), total, bytes(tail), time.monotonic() - started, running.stopped
        )
        if self.options.verify and _succeeded(outcome, self.max_bytes):
            outcome.verdict = await self._verify(outcome.stdout, env)
        if metrics_path.exists():
            try:
                found = json.loads(metrics_path.read_text(encoding="utf-8") or "{}")
                if not isinstance(found, dict):
                    raise ValueError("not a JSON object")
                outcome.metrics_file = found
            except (OSError, ValueError) as exc:
                outcome.metrics_error = f"MATRIX_METRICS_FILE: not a JSON object ({exc})"
            finally:
                with contextlib.suppress(OSError):
                    metrics_path.unlink()
        return outcome

    async def _verify(self, output: bytes, env: dict[str, str]) -> Verdict:
        """Run --verify with the command's output on stdin (same environment, same --timeout)."""
        assert self.options.verify is not None
        try:
            process = await anyio.to_thread.run_sync(_spawn, list(self.options.verify), env)
        except OSError as exc:
            return Verdict(False, f"--verify: cannot start the command: {exc}")
        tail = bytearray()

        def take_err(chunk: bytes) -> None:
            tail.extend(chunk)
            del tail[:-STDERR_TAIL]

        assert process.stdin and process.stdout and process.stderr
        try:
            with anyio.move_on_after(self.options.timeout) as deadline:
                async with anyio.create_task_group() as io:
                    io.start_soon(_feed, process.stdin, output)
                    io.start_soon(_drain, process.stdout, lambda _chunk: None)
                    io.start_soon(_drain, process.stderr, take_err)
                await _exited(process)
        finally:
            with anyio.CancelScope(shield=True):
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)
                    await _exited(process)
            for pipe in (process.stdin, process.stdout, process.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()
        text = tail.decode("utf-8", errors="replace").replace("\x00", "").strip()
        if deadline.cancelled_caught:
            return Verdict(False, f"--verify timed out after {self.options.timeout:g} s"[:MAX_NOTE_CHARS])
        if process.returncode == 0:
            return Verdict(True, text[-MAX_NOTE_CHARS:])
        return Verdict(False, (text or f"--verify: exit status {process.returncode}")[-MAX_NOTE_CHARS:])

    # ---- reporting ------------------------------------------------------------------------------

    async def _report(self, item: ClaimedItem, outcome: CommandResult) -> ClaimedItem | None:
        """Report the outcome; returns the slot's next item (leased by the same call) or None."""
        error, retryable = self._failure(outcome)
        claim_next = 0 if self.stopping else 1
        usage = usage_of(outcome.stdout)
        verdict = outcome.verdict
        try:
            if (
                error is None
                and verdict is not None
                and not verdict.approved
                and not await self._reviewed(item)
            ):
                error, retryable = f"rejected by --verify: {verdict.note}", True  # the local gate
                self.tally.rejected += 1
            if error is None:
                text, encoding = _as_text(outcome.stdout)
                metrics: dict[str, Any] = {
                    "duration_seconds": round(outcome.seconds, 6),
                    "bytes": outcome.stdout_bytes,
                    "lines_generated": outcome.stdout.count(b"\n"),
                    **(outcome.metrics_file or {}),
                }
                try:
                    result = await self._retrying(
                        lambda: self.engine.complete_item(
                            item.outcome_id,
                            lease_token=item.lease_token,
                            content=text,
                            metrics=metrics,
                            content_encoding=encoding,
                            claim_next=claim_next,
                            package=self.options.package,
                            usage=usage,
                        )
                    )
                except InputError as exc:  # e.g. metrics that violate the run's outcome_schema
                    field_name = f"{exc.field}: " if exc.field else ""
                    error, retryable = f"the report was refused: {field_name}{exc}", False
                else:
                    if result is not None and result.status == "in_review" and verdict is not None:
                        await self._review(item, verdict)
                    elif verdict is not None:
                        self.tally.approved += 1
                    return self._went(item, result, "complete")
            result = await self._retrying(
                lambda: self.engine.fail_item(
                    item.outcome_id,
                    lease_token=item.lease_token,
                    error=error,
                    retryable=retryable,
                    claim_next=claim_next,
                    package=self.options.package,
                    usage=usage,
                )
            )
            return self._went(item, result, "failed")
        except StaleLease:
            self.tally.lost += 1
            self.live.note(
                f"{item.package}/{item.item}: the lease was lost (expired or taken over); not reported"
            )
            return None
        except StoreError as exc:
            self.tally.lost += 1
            self.live.note(f"{item.package}/{item.item}: report refused: {exc}")
            return None

    async def _reviewed(self, item: ClaimedItem) -> bool:
        """Whether the item's completion goes in_review (then --verify decides by review_item, not locally)."""
        if self.info.policy.review == "required":
            return True
        try:
            summary = await self.engine.package_summary(item.package, run=self.info.id)
        except StoreError:
            return False
        return summary.review == "required"

    async def _review(self, item: ClaimedItem, verdict: Verdict) -> None:
        """Approve or reject an item in_review by --verify's verdict, when this caller may review."""
        may = current_tool_access.get()
        if may is not None and not may("review_item"):
            self.live.note(f"{item.package}/{item.item}: in_review; --verify may not review (matrix:plan)")
            return
        decision: ReviewDecision = "approve" if verdict.approved else "reject"
        try:
            # the decision's principal, as review_item records it (`reviewed_by`, the events): the caller's
            # when one is known, else this worker's, `work:NAME`
            with acting_as(current_principal.get() or f"{WORK_PRINCIPAL}{self.name}"):
                await self._retrying(
                    lambda: self.engine.review_item(
                        item.outcome_id, decision=decision, note=verdict.note or None
                    )
                )
        except StoreError as exc:
            self.live.note(f"{item.package}/{item.item}: review refused: {exc}")
            return
        if verdict.approved:
            self.tally.approved += 1
        else:
            self.tally.rejected += 1
            self.live.note(f"{item.package}/{item.item}: rejected by --verify: {verdict.note[:300]}")

    def _went(self, item: ClaimedItem, result: ReportResult | None, kind: str) -> ClaimedItem | None:
        if result is None:
            return None
        if kind == "complete":
            self.tally.completed += 1
        else:
            self.tally.failed += 1
            if result.status == "failed":
                error = (result.outcome.error_message if result.outcome else None) or ""
                self.live.note(f"{item.package}/{item.item}: failed for good: {error[:300]}")
        return result.next[0] if result.next else None

    def _failure(self, outcome: CommandResult) -> tuple[str | None, bool]:
        """(error, retryable) for a failed outcome, (None, False) for a success."""
        tail = outcome.stderr_tail.decode("utf-8", errors="replace").strip()
        detail = f": {tail}" if tail else ""
        if outcome.stopped == "timeout":
            return f"timed out after {self.options.timeout:g} s; its process group was killed{detail}", True
        if outcome.stopped is not None:
            return f"killed ({outcome.stopped}){detail}", True
        code = outcome.returncode
        if code != 0:
            what = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            return what + detail, code not in self.options.no_retry_exit
        if outcome.stdout_bytes > self.max_bytes:
            return (
                f"stdout was {outcome.stdout_bytes} bytes; the content limit is {self.max_bytes}"
                " (MATRIX_MAX_CONTENT_BYTES)",
                False,
            )
        if outcome.metrics_error is not None:
            return outcome.metrics_error, False
        return None, False

    # ---- around the loop ------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        interval = max(0.2, self.info.policy.lease_seconds / 3)
        while True:
            await anyio.sleep(interval)
            running = list(self.running.values())
            if not running:
                continue
            leases = [
                LeaseRef(outcome_id=r.item.outcome_id, lease_token=r.item.lease_token, note=r.checkpoint())
                for r in running
            ]
            try:
                beat = await self.engine.heartbeat(leases)
            except StoreError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            for outcome_id in beat.lost:
                if outcome_id in self.running:
                    self.running[outcome_id].kill("lease lost")
            for outcome_id in beat.cancelled:
                if outcome_id in self.running:
                    self.running[outcome_id].kill("run cancelled")

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async with anyio.create_task_group() as later:
                async for signum in received:
                    if self.signal is not None:  # a second signal: kill now
                        self._kill_all()
                        continue
                    self.signal = signum
                    self.stopping = True
                    self.live.note(
                        f"{signal.Signals(signum).name}: no new items; waiting up to {self.options.grace:g} s "
                        f"for {len(self.running)} running command(s), then killing them (again: kill now)"
                    )
                    later.start_soon(self._kill_after, self.options.grace)

    async def _kill_after(self, grace: float) -> None:
        await anyio.sleep(grace)
        self._kill_all()

    def _kill_all(self) -> None:
        for running in list(self.running.values()):
            running.kill("interrupted")

    async def _progress(self) -> None:
        first: int | None = None
        while True:
            try:
                run = await self.engine.get_run(self.info.id)
            except StoreError:
                await anyio.sleep(1)
                continue
            c = run.counts
            finished = c.complete + c.failed + c.cancelled
            if first is None:
                first = finished
            elapsed = time.monotonic() - self.tally.started
            rate = (finished - first) / elapsed if elapsed > 0 else None
            remaining = c.pending + c.generating + c.blocked
            eta = remaining / rate if rate and remaining else None
            self.live.show(progress_line(c.model_dump(), rate, eta) + f" · {len(self.running)} running here")
            await anyio.sleep(0.5)


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The command in a session (and process group) of its own, so that killing it kills its children."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


async def _feed(pipe: IO[bytes], data: bytes) -> None:
    """Write the document to the command's stdin and close it; a command that does not read it is fine."""
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(fd)
    except OSError:  # BrokenPipeError: it exited or closed its stdin without reading
        pass
    finally:
        with contextlib.suppress(OSError):
            pipe.close()


async def _drain(pipe: IO[bytes], take: Callable[[bytes], None]) -> None:
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        if not chunk:
            return
        take(chunk)


async def _exited(process: subprocess.Popen[bytes]) -> int:
    """Wait for the process to exit without blocking the event loop (a pidfd where there is one)."""
    if process.poll() is not None:
        return process.returncode
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)
        return process.wait()
    while process.poll() is None:  # noqa: ASYNC110 - no pidfd on this system: poll
        await anyio.sleep(0.01)
    return process.returncode


def _succeeded(outcome: CommandResult, max_bytes: int) -> bool:
    return outcome.stopped is None and outcome.returncode == 0 and outcome.stdout_bytes <= max_bytes


def _previous(item: ClaimedItem) -> dict[str, Any]:
    """The claim's previous_attempts (and how many were left out) for the command's JSON document."""
    if not item.previous_attempts:
        return {}
    doc: dict[str, Any] = {
        "previous_attempts": [a.model_dump(exclude_none=True) for a in item.previous_attempts]
    }
    if item.previous_attempts_omitted:
        doc["previous_attempts_omitted"] = item.previous_attempts_omitted
    return doc


# usage keys as agent CLIs and model APIs print them → Usage's fields (Anthropic, then OpenAI's names)
USAGE_KEYS = {
    "input_tokens": "input_tokens",
    "prompt_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "completion_tokens": "output_tokens",
    "cache_read_input_tokens": "cache_read_tokens",
    "cache_read_tokens": "cache_read_tokens",
    "cache_creation_input_tokens": "cache_creation_tokens",
    "cache_creation_tokens": "cache_creation_tokens",
}
USAGE_SCAN_BYTES = 1024 * 1024  # a larger stdout is content, not a usage report


def usage_of(stdout: bytes) -> Usage | None:
    """The usage a command's stdout reports, or None: stdout is one JSON object with a `usage` object
    (Anthropic: input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens; OpenAI:
    prompt_tokens, completion_tokens, with prompt_tokens_details.cached_tokens counted as cache reads, not
    twice) and/or a `total_cost_usd` (`claude -p --output-format json`) or `cost_usd`; `model` at the top
    or in `usage`. Fields that are not non-negative numbers are left out; anything else is no usage."""
    text = stdout.strip()
    if not text.startswith(b"{") or len(text) > USAGE_SCAN_BYTES:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    raw = doc.get("usage")
    raw = raw if isinstance(raw, dict) else {}
    found: dict[str, Any] = {}
    for key, name in USAGE_KEYS.items():
        value = raw.get(key)
        if name not in found and _count(value):
            found[name] = int(value)
    for details in ("prompt_tokens_details", "input_tokens_details"):  # OpenAI: cached tokens are input's
        cached = raw.get(details, {}).get("cached_tokens") if isinstance(raw.get(details), dict) else None
        if _count(cached) and "cache_read_tokens" not in found:
            found["cache_read_tokens"] = int(cached)
            if "input_tokens" in found:
                found["input_tokens"] = max(0, found["input_tokens"] - int(cached))
    for source in (doc, raw):
        for key in ("total_cost_usd", "cost_usd"):
            cost = source.get(key)
            if "cost_usd" not in found and _amount(cost):
                found["cost_usd"] = float(cost)
        model = source.get("model")
        if "model" not in found and isinstance(model, str) and 0 < len(model) <= 200:
            found["model"] = model
    if not found.keys() - {"model"}:
        return None
    return Usage(**found)


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**62


def _amount(value: object) -> TypeGuard[float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 1e12
    )


def _as_text(data: bytes) -> tuple[str, Any]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


async def run_work(settings: Settings, options: WorkOptions, out: TextIO | None = None) -> int:
    """Drain a run (or one package) with the command; the process exit status."""
    out = out or sys.stderr
    program = options.command[0] if options.command else ""
    if not program or (os.sep not in program and shutil.which(program) is None):
        print(f"matrix-mcp work: COMMAND: {program!r} not found on PATH", file=sys.stderr)
        return 2
    engine = await Engine.open(settings)
    try:
        try:
            info = await engine.run_info(options.run)
            if options.package is not None:
                await engine.package_summary(options.package, run=info.id)
        except StoreError as exc:
            print(f"matrix-mcp work: {exc.field + ': ' if exc.field else ''}{exc}", file=sys.stderr)
            return 2
        worker = Worker(engine, info, options, out)
        await worker.run()
        return await _summary(engine, worker)
    finally:
        await engine.close()


async def _summary(engine: Engine, worker: Worker) -> int:
    status = await engine.run_status(worker.info.id)
    t = worker.tally
    elapsed = time.monotonic() - t.started
    print(format_status(status))
    print(
        f"this worker ({worker.name}): {t.completed} completed, {t.failed} failure reports, {t.lost} lost leases "
        f"in {elapsed:.1f} s ({t.completed / elapsed if elapsed else 0:.1f} items/s)"
        + (f"; --verify: {t.approved} approved, {t.rejected} rejected" if worker.options.verify else "")
    )
    if worker.signal is not None:
        return 128 + worker.signal
    if worker.options.package is not None:
        pkg = next((p for p in status.packages if p.package == worker.options.package), None)
        settled = pkg is not None and pkg.pending_items + pkg.generating_items + pkg.blocked_items == 0
        return 0 if settled and pkg is not None and pkg.failed_items == 0 else 1
    return 0 if status.state == "done" and status.counts.failed == 0 else 1
