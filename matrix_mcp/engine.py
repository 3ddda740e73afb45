"""Orchestration rules, free of SQL: planning, leases, backoff, outcome contracts, artifacts.

Tools call the engine; the engine validates, decides and calls one atomic store method.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import anyio

from matrix_mcp import rules, tracing
from matrix_mcp.artifacts import (
    ArtifactError,
    Artifacts,
    Blob,
    GarbageReport,
    RepairReport,
    default_path,
    in_run_folder,
    safe_component,
)
from matrix_mcp.config import Settings
from matrix_mcp.errors import Conflict, StoreError
from matrix_mcp.models import (
    ClaimedItem,
    ClaimResult,
    ExportResult,
    HeartbeatResult,
    IntegrationEvent,
    ItemSpec,
    LeaseRef,
    Outcome,
    OutcomeDetail,
    OutcomePage,
    PackageSpec,
    PackageSummary,
    PlanResult,
    RecordResult,
    ReportResult,
    RetryResult,
    Run,
    RunAction,
    RunList,
    RunPolicy,
    RunStatus,
    Status,
    SystemMetrics,
    ts,
)
from matrix_mcp.store import open_store
from matrix_mcp.store.params import (
    ClaimBatch,
    ClaimRequest,
    Failure,
    FinishedSpan,
    NewItem,
    NewPackage,
    NewRecord,
    NextClaim,
    OutcomeFilter,
    Report,
    Reported,
    StatusChange,
)
from matrix_mcp.store.protocol import Store
from matrix_mcp.telemetry import observe_generation

log = logging.getLogger("matrix_mcp.engine")
# A server repairs, as it starts, the files of completions among this many latest events (a process killed
# between commit and link leaves its file missing; `matrix-mcp gc --repair` checks every completion).
REPAIR_RECENT_EVENTS = 20_000
# The readable copy of inline content up to this size is written on the event loop (page cache, no fsync:
# tens of microseconds, where a worker-thread hop costs more than the write), larger on a worker thread.
COPY_ON_LOOP_BYTES = 64 * 1024
# Test hook: SIGKILL this process between the store's commit and the link, as a kill at any moment can.
_KILL_AFTER_COMMIT = os.environ.get("MATRIX_TEST_KILL_AFTER_COMMIT") == "1"
# A run in these states has nothing left to do: its throughput is its actual rate, not a recent window.
FINISHED_RUN_STATES = ("done", "cancelled")
SPAN_CACHE_RUNS = 1024  # finished runs whose span this process keeps (a bound, not a tuning knob)
ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
# Event sequence numbers are 64-bit signed integers in both stores: a cursor past the largest is refused
# here, the same on both (SQLite could not even bind it).
MAX_SEQ = 2**63 - 1
# A media type (RFC 9110 §8.3.1): type "/" subtype *( OWS ";" OWS name "=" ( token / quoted-string ) ),
# ASCII only: no CR, LF or other control character can reach a Content-Type header.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
MEDIA_TYPE_PATTERN = (  # also what the REST API's OpenAPI document states
    rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"(?:[\t !#-\[\]-~]|\\[\t -~])*"))*'
)
_MEDIA_TYPE = re.compile(MEDIA_TYPE_PATTERN)
MAX_MEDIA_TYPE_LENGTH = 255
MEDIA_TYPE_ERROR = (
    "must be a media type such as 'text/markdown; charset=utf-8' "
    f"(type/subtype and parameters, printable ASCII, at most {MAX_MEDIA_TYPE_LENGTH} characters)"
)


def is_media_type(value: str) -> bool:
    """Whether `value` is a media type as a Content-Type header may carry it."""
    return len(value) <= MAX_MEDIA_TYPE_LENGTH and _MEDIA_TYPE.fullmatch(value) is not None


class InputError(StoreError):
    """A bad argument: the message names the field."""


def json_depth(value: Any, limit: int) -> int:
    """Depth of nested JSON containers; stops counting past `limit`."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d > limit:
                return d
            children = v.values() if isinstance(v, dict) else v
            stack.extend((c, d + 1) for c in children)
    return deepest


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(schema_json))


def _served_type(mime_type: str | None) -> str:
    """The stored media type, unless it is none or not one (a row written before reports were checked)."""
    return mime_type if mime_type and is_media_type(mime_type) else "application/octet-stream"


def _retry_after(batch: ClaimBatch, now: float) -> float | None:
    if batch.next_available_at is None:
        return None
    return round(max(0.0, batch.next_available_at - now), 3)


@dataclass(frozen=True)
class RunInfo:
    id: str
    name: str
    goal: str | None
    policy: RunPolicy


class Engine:
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

    @classmethod
    async def open(cls, settings: Settings) -> Engine:
        store = await open_store(settings.database_url, deadline=settings.db_deadline_seconds)
        try:
            engine = cls(store, settings)
            await anyio.to_thread.run_sync(engine.artifacts.secure_root)
            return engine
        except BaseException:
            await store.close()  # an open store left behind keeps its connection threads alive
            raise

    async def close(self) -> None:
        await self.store.close()

    def now(self) -> float:
        return time.time()

    # ---- validation helpers ---------------------------------------------------------------------

    def _name(self, value: str, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise InputError("must be a non-empty string", field)
        if len(value) > self.limits.max_name_length:
            raise InputError(f"longer than {self.limits.max_name_length} characters", field)
        if "\x00" in value:
            raise InputError("may not contain NUL characters", field)
        return value

    def _json(self, value: Any, field: str) -> Any:
        if value is None:
            return None
        if json_depth(value, self.limits.max_json_depth) > self.limits.max_json_depth:
            raise InputError(f"nested deeper than {self.limits.max_json_depth} levels", field)
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InputError(f"is not JSON-serialisable: {exc}", field) from exc
        if len(text.encode()) > self.limits.max_json_bytes:
            raise InputError(f"larger than {self.limits.max_json_bytes} bytes of JSON", field)
        if "\\u0000" in text:
            raise InputError("may not contain NUL characters", field)
        return value

    def _media_type(self, value: str | None, field: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not is_media_type(value):
            raise InputError(MEDIA_TYPE_ERROR, field)
        return value

    def _seq(self, value: int | None, field: str) -> int | None:
        if value is not None and not 0 <= value <= MAX_SEQ:
            raise InputError(f"must be an event sequence number from 0 to {MAX_SEQ}", field)
        return value

    def _limit(self, value: int, field: str, maximum: int) -> int:
        if value < 1 or value > maximum:
            raise InputError(f"must be between 1 and {maximum}", field)
        return value

    def _wait(self, value: float, field: str) -> float:
        if not 0 <= value <= self.limits.max_wait_seconds:  # NaN too
            raise InputError(f"must be between 0 and {self.limits.max_wait_seconds:g}", field)
        return value

    async def run_info(self, ref: str) -> RunInfo:
        """Resolve a run by name or id. Runs are never deleted and their policy never changes: cached."""
        info = self._runs.get(ref)
        if info is None:
            run = await self.store.get_run(self._name(ref, "run"))
            info = RunInfo(run.id, run.name, run.goal, run.policy)
            self._runs[run.id] = self._runs[run.name] = info
        return info

    # ---- planning and control -------------------------------------------------------------------

    @tracing.plan_span
    async def plan_run(
        self,
        name: str,
        *,
        packages: Sequence[PackageSpec],
        goal: str | None = None,
        policy: RunPolicy | None = None,
    ) -> PlanResult:
        self._name(name, "name")
        policy = policy or RunPolicy()
        self._name(policy.outcome_type, "outcome_type")
        if policy.outcome_schema is not None:
            self._json(policy.outcome_schema, "outcome_schema")
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(policy.outcome_schema)
            except SchemaError as exc:
                raise InputError(f"is not a valid JSON Schema: {exc.message}", "outcome_schema") from exc
        new: list[NewPackage] = []
        seen_packages: set[str] = set()
        total = 0
        for i, pkg in enumerate(packages):
            field = f"packages[{i}]"
            self._name(pkg.name, f"{field}.name")
            if pkg.name in seen_packages:
                raise InputError(f"duplicate package name {pkg.name!r}", f"{field}.name")
            seen_packages.add(pkg.name)
            items: list[NewItem] = []
            seen_items: set[str] = set()
            for j, raw in enumerate(pkg.items):
                spec = raw if isinstance(raw, ItemSpec) else ItemSpec(name=raw)
                self._name(spec.name, f"{field}.items[{j}]")
                if spec.name in seen_items:
                    raise InputError(f"duplicate item name {spec.name!r}", f"{field}.items[{j}]")
                seen_items.add(spec.name)
                self._json(spec.specifications, f"{field}.items[{j}].specifications")
                items.append(NewItem(spec.name, spec.specifications))
            total += len(items)
            if total > self.limits.max_items_per_plan:
                raise InputError(f"more than {self.limits.max_items_per_plan} items in one plan", "packages")
            new.append(NewPackage(pkg.name, pkg.description, items))
        return await self.store.plan(name=name, goal=goal, policy=policy, packages=new, now=self.now())

    async def control_run(self, run: str, *, action: RunAction) -> Run:
        info = await self.run_info(run)
        return await self.store.control_run(info.id, action=action, now=self.now())

    async def list_runs(self) -> RunList:
        return RunList(runs=await self.store.list_runs())

    async def get_run(self, run: str) -> Run:
        return await self.store.get_run((await self.run_info(run)).id)

    # ---- the work loop --------------------------------------------------------------------------

    @tracing.claim_span
    async def claim_items(
        self, run: str, *, worker: str, limit: int = 1, package: str | None = None, wait_seconds: float = 0
    ) -> ClaimResult:
        info = await self.run_info(run)
        self._name(worker, "worker")
        self._limit(limit, "limit", self.limits.max_page_size)
        if package is not None:
            self._name(package, "package")
        deadline = anyio.current_time() + self._wait(wait_seconds, "wait_seconds")
        request = ClaimRequest(
            run_id=info.id, worker=worker, limit=limit, package=package, token_factory=rules.new_token
        )
        while True:
            seq = await self.store.latest_seq() if wait_seconds else 0
            now = self.now()
            batch = await self.store.claim(request, now=now)
            retry_after = _retry_after(batch, now)
            remaining = deadline - anyio.current_time()
            waitable = batch.reason in ("all_leased", "backing_off")
            if batch.claims or not waitable or remaining <= 0:
                return self._claimed(info, batch, now)
            pause = remaining if retry_after is None else min(remaining, max(retry_after, 0.01))
            await self.store.wait_for_change(seq, timeout=pause)

    def _claimed(self, info: RunInfo, batch: ClaimBatch, now: float) -> ClaimResult:
        """Claims as a worker sees them (claim_items, and the `next` of a report)."""
        if len(self._leased) > 100_000:
            self._leased.clear()
        for c in batch.claims:
            self._leased[c.outcome_id] = (info.id, c.package, c.item, c.outcome_type, c.outcome_path)
        return ClaimResult(
            items=[
                ClaimedItem(
                    outcome_id=c.outcome_id,
                    package=c.package,
                    item=c.item,
                    attempt=c.attempt,
                    lease_token=c.lease_token,
                    # whole seconds, rounded down: a worker reads it as a deadline, and it costs fewer tokens
                    lease_expires_at=ts(math.floor(c.lease_expires_at)),  # type: ignore[arg-type]
                    specifications=c.specifications,
                    outcome_path=c.outcome_path,
                    briefing="\n\n".join(x for x in (info.goal, c.package_description) if x) or None,
                )
                for c in batch.claims
            ],
            reason=batch.reason,
            retry_after_seconds=_retry_after(batch, now),
        )

    def _reported(self, info: RunInfo, reported: Reported, now: float) -> ReportResult:
        outcome = reported.outcome
        result = ReportResult(
            outcome_id=outcome.id,
            status=outcome.status,
            attempt=outcome.attempts,
            available_at=outcome.available_at if outcome.status == "pending" else None,
            outcome=outcome,
        )
        if reported.next is not None:
            claimed = self._claimed(info, reported.next, now)
            result.next = claimed.items
            result.reason = claimed.reason
            result.retry_after_seconds = claimed.retry_after_seconds
        return result

    def _next_claim(self, claim_next: int, package: str | None) -> NextClaim | None:
        if claim_next == 0:
            return None
        if claim_next < 0 or claim_next > self.limits.max_page_size:
            raise InputError(f"must be between 0 and {self.limits.max_page_size}", "claim_next")
        if package is not None:
            self._name(package, "package")
        return NextClaim(limit=claim_next, package=package, token_factory=rules.new_token)

    async def heartbeat(self, leases: Sequence[LeaseRef]) -> HeartbeatResult:
        if not leases:
            raise InputError("give at least one lease", "leases")
        if len(leases) > self.limits.max_page_size:
            raise InputError(f"at most {self.limits.max_page_size} leases per call", "leases")
        result = await self.store.heartbeat(leases, now=self.now())
        expiries = [e.lease_expires_at for e in result.extended or () if e.lease_expires_at is not None]
        result.lease_expires_at = min(expiries, default=None)
        return result

    def _check_report(
        self, schema: dict[str, Any] | None, metrics: dict[str, Any], metadata: dict[str, Any]
    ) -> None:
        if schema is None:
            return
        validator = _validator(json.dumps(schema, sort_keys=True))
        doc = {"metrics": metrics, "metadata": metadata}
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = ".".join(str(p) for p in first.absolute_path) or "metrics"
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            raise InputError(f"violates the run's outcome_schema: {first.message}{more}", where)

    def _content_bytes(self, content: str | None, encoding: Literal["utf-8", "base64"]) -> bytes | None:
        if content is None:
            return None
        if encoding == "base64":
            import base64
            import binascii

            try:
                return base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InputError("is not valid base64", "content") from exc
        return content.encode("utf-8", errors="surrogatepass")

    @tracing.report_span("matrix.complete")
    async def complete_item(
        self,
        outcome_id: str,
        *,
        lease_token: str,
        content: str | None = None,
        outcome_path: str | None = None,
        metrics: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        content_encoding: Literal["utf-8", "base64"] = "utf-8",
        mime_type: str | None = None,
        claim_next: int = 0,
        package: str | None = None,
    ) -> ReportResult:
        """Store the content, complete the item and, with claim_next, lease the next items in the same
        transaction (`package` limits those to one package)."""
        self._name(outcome_id, "outcome_id")
        self._name(lease_token, "lease_token")
        metrics = self._json(metrics, "metrics") or {}
        metadata = self._json(metadata, "metadata") or {}
        mime_type = self._media_type(mime_type, "mime_type")
        if outcome_path is not None:
            self.artifacts.check_path(outcome_path)  # its own faults first, named as the client wrote it
        data = self._content_bytes(content, content_encoding)
        if data is not None and len(data) > self.limits.max_content_bytes:
            raise InputError(f"is {len(data)} bytes; the limit is {self.limits.max_content_bytes}", "content")
        next_claim = self._next_claim(claim_next, package)
        run_id, package_name, item, outcome_type, planned_path = await self._outcome_key(outcome_id)
        info = await self.run_info(run_id)
        if outcome_path is not None:  # relative to the run's own folder: it cannot name another run's file
            outcome_path = self.artifacts.check_path(in_run_folder(info.name, outcome_path))
            # a path already held is refused here, before a blob is written and without failing the write
            # batch it would share; the store's unique key decides a race between two new reports
            await self._refuse_held(outcome_path, run_id=run_id, package=package_name, item=item)
        self._check_report(info.policy.outcome_schema, metrics, metadata)
        report = Report(outcome_path=outcome_path, metrics=metrics, metadata=metadata)
        inline = data is not None and len(data) <= self.limits.inline_content_bytes
        if data is not None:
            if inline:  # kept in the store with the report, one transaction; the file is a copy made after it
                blob = Blob(hashlib.sha256(data).hexdigest(), len(data))
            else:  # durable in the blob store (fsync) before the report refers to it
                blob = await anyio.to_thread.run_sync(self.artifacts.put_blob, data)
            path = outcome_path or planned_path or default_path(info.name, package_name, item, outcome_type)
            # a default or planned path is checked like a client's: a symlink planted there fails before commit
            path = self.artifacts.check_path(path)
            blocker = self.artifacts.blocking_path(path)
            if blocker is not None:  # another item's file where a folder is needed, or a folder of files
                await self._blocked(path, blocker)
            report = Report(
                outcome_path=path,
                content_sha256=blob.sha256,
                content_bytes=blob.size,
                mime_type=self.artifacts.mime_for(path, mime_type),
                metrics=metrics,
                metadata=metadata,
                inline=data if inline else None,
            )
        now = self.now()
        try:
            reported = await self.store.complete(
                outcome_id, lease_token=lease_token, report=report, now=now, next_claim=next_claim
            )
        except Exception as exc:
            await self._path_taken(exc, report.outcome_path, run_id=run_id, package=package_name, item=item)
            raise
        outcome = reported.outcome
        self._leased.pop(outcome_id, None)
        if _KILL_AFTER_COMMIT:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        # A process killed here leaves a complete outcome without its file: any later process repairs it
        # (repair_files at start-up, get_outcome on read, `matrix-mcp gc --repair`).
        if outcome.duration_seconds is not None:
            observe_generation(outcome.package, outcome.outcome_type, outcome.duration_seconds)
        if data is not None and outcome.outcome_path and outcome.content_sha256:
            try:
                if inline and len(data) <= COPY_ON_LOOP_BYTES:  # a few system calls: no thread hop
                    self.artifacts.write_copy(outcome.outcome_path, data)
                elif inline:
                    await anyio.to_thread.run_sync(self.artifacts.write_copy, outcome.outcome_path, data)
                else:
                    await anyio.to_thread.run_sync(
                        self.artifacts.materialize, outcome.outcome_path, outcome.content_sha256
                    )
            except ArtifactError as exc:
                # The report is committed and its content is safe in the blob store (served by
                # matrix://outcomes/{id}/content); only the readable copy at outcome_path is missing.
                log.warning(
                    "outcome %s complete, but its file at %s was not written: %s",
                    outcome_id,
                    outcome.outcome_path,
                    exc,
                )
        return self._reported(info, reported, now)

    @tracing.report_span("matrix.fail")
    async def fail_item(
        self,
        outcome_id: str,
        *,
        lease_token: str,
        error: str,
        retryable: bool = True,
        claim_next: int = 0,
        package: str | None = None,
    ) -> ReportResult:
        self._name(outcome_id, "outcome_id")
        self._name(lease_token, "lease_token")
        if not error or not error.strip():
            raise InputError("describe the failure", "error")
        if len(error) > 20_000:
            error = error[:20_000] + "…"
        next_claim = self._next_claim(claim_next, package)
        info = await self.run_info((await self._outcome_key(outcome_id))[0])
        policy = info.policy
        self._leased.pop(outcome_id, None)

        def backoff(attempt: int) -> float:
            return rules.backoff_delay(attempt, policy.backoff_seconds, policy.backoff_cap_seconds)

        now = self.now()
        reported = await self.store.fail(
            outcome_id,
            lease_token=lease_token,
            failure=Failure(error=error, retryable=retryable, backoff=backoff),
            now=now,
            next_claim=next_claim,
        )
        return self._reported(info, reported, now)

    async def retry_items(
        self, run: str, *, package: str | None = None, outcome_ids: Sequence[str] | None = None
    ) -> RetryResult:
        info = await self.run_info(run)
        ids = await self.store.retry(info.id, package=package, outcome_ids=outcome_ids, now=self.now())
        return RetryResult(run=info.name, requeued=len(ids), outcome_ids=ids[:1000])

    async def _path_taken(
        self, exc: Exception, path: str | None, *, run_id: str, package: str, item: str
    ) -> None:
        """After a write of `path` failed: when another item holds that path, raise the one-line error naming
        it. The store keeps one holder per path (a unique key: of two reports racing for one path exactly
        one commits); the loser's database error says which key, this says who holds it. Errors raised on
        purpose (a stale lease, a conflicting repeat...) keep their own message."""
        if path is None or (isinstance(exc, StoreError) and type(exc) is not StoreError):
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

    async def _blocked(self, path: str, blocker: str) -> None:
        """Refuse a path the files already there leave no room for (checked before the commit; two reports
        racing to make one name a file and a folder leave the later file unwritten, logged)."""
        if blocker == path:
            raise Conflict(
                f"{path!r} is a folder of other files; choose another outcome_path", "outcome_path"
            )
        holder = await self.store.path_holder(blocker)
        what = "a file" if holder is None else f"the file of item {holder.package}/{holder.item}"
        raise Conflict(
            f"{path!r} needs {blocker!r} as a folder, but it is {what}; choose another outcome_path",
            "outcome_path",
        )

    async def _outcome_key(self, outcome_id: str) -> tuple[str, str, str, str, str | None]:
        key = self._leased.get(outcome_id)
        if key is None:
            o = await self.store.get_outcome(outcome_id)
            key = (o.run_id, o.package, o.item, o.outcome_type, o.outcome_path)
        return key

    # ---- watching -------------------------------------------------------------------------------

    async def run_status(
        self,
        run: str,
        *,
        since: int | None = None,
        wait_seconds: float = 0,
        progress: ProgressFn | None = None,
        event_limit: int = 200,
    ) -> RunStatus:
        info = await self.run_info(run)
        self._wait(wait_seconds, "wait_seconds")
        self._seq(since, "since")
        events = []
        if since is not None:
            deadline = anyio.current_time() + wait_seconds
            cursor = since
            while True:
                events = await self.store.events_after(since=since, run_id=info.id, limit=event_limit + 1)
                remaining = deadline - anyio.current_time()
                if events or remaining <= 0:
                    break
                if progress is not None:
                    snapshot = await self.store.get_run(info.id)
                    await progress(
                        snapshot.counts.total - snapshot.counts.pending - snapshot.counts.generating,
                        float(snapshot.counts.total),
                        f"waiting for changes after #{since}",
                    )
                cursor = max(cursor, await self.store.wait_for_change(cursor, timeout=min(remaining, 5.0)))
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

    # ---- the seed's tracking API ----------------------------------------------------------------

    async def record_outcome(
        self,
        *,
        run: str,
        package: str,
        item: str,
        status: Status = "pending",
        outcome_type: str | None = None,
        outcome_path: str | None = None,
        specifications: dict[str, Any] | str | None = None,
        metrics: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        error_message: str | None = None,
        created_by: str | None = None,
    ) -> RecordResult:
        info = await self.run_info(run)
        self._name(package, "package")
        self._name(item, "item")
        if outcome_type is not None:
            self._name(outcome_type, "outcome_type")
        if outcome_path is not None:
            self.artifacts.check_path(outcome_path)
            outcome_path = self.artifacts.check_path(in_run_folder(info.name, outcome_path))
        metrics = self._json(metrics, "metrics") or {}
        metadata = self._json(metadata, "metadata") or {}
        self._json(specifications, "specifications")
        if status == "complete":
            self._check_report(info.policy.outcome_schema, metrics, metadata)
        report = Report(outcome_path=outcome_path, metrics=metrics, metadata=metadata)
        record = NewRecord(
            run_id=info.id,
            package=package,
            item=item,
            status=status,
            outcome_type=outcome_type,
            specifications=specifications,
            report=report,
            error_message=error_message,
            created_by=created_by,
        )
        try:
            outcome, created = await self.store.record_outcome(record, now=self.now())
        except Exception as exc:
            await self._path_taken(exc, outcome_path, run_id=info.id, package=package, item=item)
            raise
        return RecordResult(outcome=outcome, created=created)

    async def update_outcome_status(
        self,
        outcome_id: str,
        *,
        status: Status,
        error_message: str | None = None,
        metrics: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        outcome_path: str | None = None,
    ) -> Outcome:
        self._name(outcome_id, "outcome_id")
        current = await self.store.get_outcome(outcome_id)
        metrics = self._json(metrics, "metrics") or {}
        metadata = self._json(metadata, "metadata") or {}
        if outcome_path is not None:
            self.artifacts.check_path(outcome_path)
            run_name = (await self.run_info(current.run_id)).name
            outcome_path = self.artifacts.check_path(in_run_folder(run_name, outcome_path))
        if status == "complete":
            info = await self.run_info(current.run_id)
            self._check_report(
                info.policy.outcome_schema, metrics or current.metrics, metadata or current.metadata
            )
        report = Report(outcome_path=outcome_path, metrics=metrics, metadata=metadata)
        change = StatusChange(status=status, error_message=error_message, report=report)
        try:
            return await self.store.update_status(outcome_id, change=change, now=self.now())
        except Exception as exc:
            await self._path_taken(
                exc, outcome_path, run_id=current.run_id, package=current.package, item=current.item
            )
            raise

    async def get_outcome(self, outcome_id: str) -> OutcomeDetail:
        detail = await self.store.get_outcome(self._name(outcome_id, "outcome_id"), history=True)
        if detail.status == "complete" and detail.outcome_path and detail.content_sha256:
            await self._ensure_file(detail.id, detail.outcome_path, detail.content_sha256)
        return detail

    async def _ensure_file(self, outcome_id: str, path: str, sha: str, verify: bool = False) -> bool | None:
        """Link a complete outcome's content at its outcome_path if the file is missing (with verify, also if
        it holds other bytes): True if it was restored, False if it was there, None if it cannot be (its
        content is gone; logged)."""
        try:
            if verify and await anyio.to_thread.run_sync(self.artifacts.file_differs, path, sha):
                body = await self.store.inline_content(sha)
                await anyio.to_thread.run_sync(self.artifacts.restore, path, sha, body)
                log.warning("outcome %s: restored its file at %s (it held other bytes)", outcome_id, path)
                return True
            linked = await anyio.to_thread.run_sync(self.artifacts.ensure_linked, path, sha)
        except ArtifactError as exc:
            body = await self.store.inline_content(sha)  # content kept in the store: the file is its copy
            if body is None:
                log.warning("outcome %s: its file at %s cannot be restored: %s", outcome_id, path, exc)
                return None
            try:
                await anyio.to_thread.run_sync(self.artifacts.write_copy, path, body)
            except ArtifactError as again:
                log.warning("outcome %s: its file at %s cannot be restored: %s", outcome_id, path, again)
                return None
            linked = True
        if linked:
            log.warning("outcome %s: restored its missing file at %s", outcome_id, path)
        return linked

    async def _held_by_another(self, outcome_id: str, path: str) -> bool:
        holder = await self.store.path_holder(path)
        return holder is not None and holder.outcome_id != outcome_id

    async def repair_files(
        self, *, since_seq: int = 0, page: int = 1000, verify: bool = False
    ) -> RepairReport:
        """Restore the readable file of every complete outcome completed after event `since_seq` whose file
        is missing (blob → commit → link: a kill after the commit leaves only the link undone). With verify
        (`matrix-mcp gc --repair`), also a file whose bytes differ from the stored content: every file is
        read and hashed."""
        checked = repaired = unrepairable = skipped = 0
        cursor = since_seq
        while True:
            files = await self.store.content_files(since_seq=cursor, limit=page)
            for f in files:
                checked += 1
                if verify and await self._held_by_another(f.outcome_id, f.outcome_path):
                    skipped += 1  # two items reported one path before paths were unique: its holder's file
                    continue
                outcome = await self._ensure_file(f.outcome_id, f.outcome_path, f.content_sha256, verify)
                repaired += outcome is True
                unrepairable += outcome is None
            if len(files) < page:
                return RepairReport(
                    checked=checked, repaired=repaired, unrepairable=unrepairable, skipped=skipped
                )
            cursor = files[-1].seq

    async def repair_recent_files(self) -> RepairReport:
        """At start-up: the completions among the latest REPAIR_RECENT_EVENTS events."""
        latest = await self.store.latest_seq()
        return await self.repair_files(since_seq=max(0, latest - REPAIR_RECENT_EVENTS))

    async def outcome_content(self, outcome_id: str) -> tuple[bytes, str]:
        outcome = await self.store.get_outcome(outcome_id)
        if outcome.content_sha256 is None:
            raise StoreError(f"outcome '{outcome_id}' has no stored content", "outcome_id")
        try:
            data = await anyio.to_thread.run_sync(self.artifacts.read_blob, outcome.content_sha256)
        except OSError as exc:
            body = await self.store.inline_content(outcome.content_sha256)
            if body is not None:
                return body, _served_type(outcome.mime_type)
            raise ArtifactError(
                f"the artifact could not be read: {exc.strerror or exc}", "outcome_id"
            ) from exc
        return data, _served_type(outcome.mime_type)

    async def list_outcomes(
        self,
        *,
        run: str | None = None,
        package: str | None = None,
        status: Status | None = None,
        worker: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> OutcomePage:
        run_id = (await self.run_info(run)).id if run is not None else None
        self._limit(limit, "limit", self.limits.max_page_size)
        return await self.store.list_outcomes(
            OutcomeFilter(run_id, package, status, worker), limit=limit, cursor=cursor
        )

    async def package_summary(self, package: str, *, run: str | None = None) -> PackageSummary:
        run_id = (await self.run_info(run)).id if run is not None else None
        return await self.store.package_summary(self._name(package, "package"), run_id=run_id)

    async def system_metrics(self, run: str | None = None) -> SystemMetrics:
        run_id = (await self.run_info(run)).id if run is not None else None
        return await self.store.system_metrics(run_id, now=self.now())

    async def record_integration_event(
        self,
        *,
        integration_type: str,
        action: str,
        status: str = "success",
        run: str | None = None,
        outcome_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> IntegrationEvent:
        run_id = (await self.run_info(run)).id if run is not None else None
        self._name(integration_type, "integration_type")
        self._name(action, "action")
        self._name(status, "status")
        details = self._json(details, "details") or {}
        return await self.store.record_integration(
            run_id=run_id,
            outcome_id=outcome_id,
            integration_type=integration_type,
            action=action,
            status=status,
            details=details,
            now=self.now(),
        )

    async def collect_garbage(self, *, older_than_seconds: float = 3600.0) -> GarbageReport:
        """Delete content no outcome refers to: blobs (left by rejected reports) once unwritten for a while,
        and content kept in the store that an override left behind."""
        if not older_than_seconds >= 60:
            raise InputError("at least 60: a report commits seconds after writing its content", "older_than")
        now = time.time()  # file times are wall-clock; taken before the references are read
        referenced = await self.store.content_hashes()
        files = await anyio.to_thread.run_sync(
            self.artifacts.collect_garbage, referenced, older_than_seconds, now
        )
        # content kept in the store (small reports) that an override left unreferenced: the store's own
        # lock, not a time window, keeps it safe from a report committing the same bytes meanwhile
        kept = await self.store.collect_contents()
        return dataclasses.replace(
            files, contents_removed=kept.removed, contents_removed_bytes=kept.removed_bytes
        )

    async def export_outcomes(self, run: str, *, format: Literal["jsonl", "csv"] = "jsonl") -> ExportResult:
        info = await self.run_info(run)
        data, count = await self.export_bytes(info.id, format=format)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{safe_component(info.name)}-{stamp}.{format}"
        path = await anyio.to_thread.run_sync(self.artifacts.write_export, name, data)
        return ExportResult(
            run=info.name, format=format, count=count, path=str(path), bytes=len(data), uri=path.as_uri()
        )

    async def export_bytes(self, run_id: str, *, format: Literal["jsonl", "csv"]) -> tuple[bytes, int]:
        buf = io.StringIO()
        count = 0
        writer: Any = None
        async for outcome in self.store.iter_outcomes(run_id):
            record = outcome.model_dump(mode="json")
            if format == "jsonl":
                buf.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                if writer is None:
                    writer = csv.DictWriter(buf, fieldnames=list(record))
                    writer.writeheader()
                writer.writerow(
                    {
                        k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v
                        for k, v in record.items()
                    }
                )
            count += 1
        return buf.getvalue().encode(), count
