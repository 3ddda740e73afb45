"""The work loop: claim items under a lease, heartbeat, complete or fail them, retry failed ones."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import anyio
from pydantic import ValidationError

from matrix_mcp import rules, tracing
from matrix_mcp.artifacts import ArtifactError, Blob, default_path, in_run_folder
from matrix_mcp.engine.core import EngineCore, ProgressFn, RunInfo, Waiting, log
from matrix_mcp.errors import Conflict, InputError
from matrix_mcp.models import (
    MAX_NOTE_CHARS,
    ClaimedItem,
    ClaimResult,
    HeartbeatResult,
    LeaseRef,
    ReportResult,
    RetryResult,
    ReviewDecision,
    ReviewResult,
    Usage,
    ts,
)
from matrix_mcp.store.params import (
    ClaimBatch,
    ClaimRequest,
    Failure,
    NextClaim,
    Report,
    Reported,
    ReviewVerdict,
)
from matrix_mcp.telemetry import observe_generation

# The readable copy of inline content up to this size is written on the event loop (page cache, no fsync:
# tens of microseconds, where a worker-thread hop costs more than the write), larger on a worker thread.
COPY_ON_LOOP_BYTES = 64 * 1024


def _retry_after(batch: ClaimBatch, now: float) -> float | None:
    if batch.next_available_at is None:
        return None
    return round(max(0.0, batch.next_available_at - now), 3)


class Work(EngineCore):
    @tracing.claim_span
    async def claim_items(
        self,
        run: str,
        *,
        worker: str,
        limit: int = 1,
        package: str | None = None,
        wait_seconds: float = 0,
        progress: ProgressFn | None = None,
    ) -> ClaimResult:
        """Lease up to `limit` items that are due, round-robin across packages; each comes with a lease token
        and a briefing (the run's goal and the package's description). Expired leases are swept first.

        Args:
            run: the run's name or id.
            worker: who claims (recorded on each attempt).
            limit: at most this many items (1 to the page size).
            package: claim from this package only.
            wait_seconds: when none is due but one can come (leased, backing off, in review, blocked, locked
                or capped), wait up to this long for one.
            progress: told the seconds waited (of wait_seconds) at least every PROGRESS_EVERY_SECONDS.

        Returns:
            The items; when fewer than `limit` came, `reason` says why and `retry_after_seconds` when to ask.

        Raises:
            InputError: a bad name, limit or wait_seconds.
            NotFound: no such run or package.
        """
        info = await self.run_info(run)
        self._name(worker, "worker")
        self._limit(limit, "limit", self.limits.max_page_size)
        if package is not None:
            self._name(package, "package")
        waiting = Waiting(self._wait(wait_seconds, "wait_seconds"), progress)
        request = ClaimRequest(
            run_id=info.id, worker=worker, limit=limit, package=package, token_factory=rules.new_token
        )
        while True:
            seq = await self.store.latest_seq() if wait_seconds else 0
            now = self.now()
            batch = await self.store.claim(request, now=now)
            retry_after = _retry_after(batch, now)
            remaining = waiting.remaining()
            waitable = rules.worth_waiting(batch.reason, retry_after)
            if batch.claims or not waitable or remaining <= 0:
                return self._claimed(info, batch, now)
            await waiting.report(f"waiting for an item of {info.name} ({batch.reason})")
            pause = remaining if retry_after is None else min(remaining, max(retry_after, 0.01))
            await self.store.wait_for_change(seq, timeout=waiting.pause(pause))

    def _claimed(self, info: RunInfo, batch: ClaimBatch, now: float) -> ClaimResult:
        """Claims as a worker sees them (claim_items, and the `next` of a report)."""
        if len(self._leased) > 100_000:
            self._leased.clear()
        for c in batch.claims:
            self._leased[c.outcome_id] = (info.id, c.package, c.item, c.outcome_type, c.outcome_path)
        items: list[ClaimedItem] = []
        for c in batch.claims:
            previous, omitted = rules.briefing(c.previous_attempts, self.limits.max_briefing_bytes)
            items.append(
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
                    previous_attempts=previous or None,
                    previous_attempts_omitted=omitted or None,
                )
            )
        return ClaimResult(
            items=items,
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
        """Extend the leases still held by the run's lease time; lists those lost (expired, taken over,
        finished) and those of a cancelled run, which their workers should stop.

        Args:
            leases: the outcome ids with their lease tokens (one to the page size).

        Raises:
            InputError: no lease, or more than the page size.
        """
        if not leases:
            raise InputError("give at least one lease", "leases")
        if len(leases) > self.limits.max_page_size:
            raise InputError(f"at most {self.limits.max_page_size} leases per call", "leases")
        for i, lease in enumerate(leases):
            self._note(lease.note, f"leases[{i}].note")
        result = await self.store.heartbeat(leases, now=self.now())
        expiries = [e.lease_expires_at for e in result.extended or () if e.lease_expires_at is not None]
        result.lease_expires_at = min(expiries, default=None)
        return result

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
        usage: Usage | Mapping[str, Any] | None = None,
    ) -> ReportResult:
        """Store the content, complete the item and, with claim_next, lease the next items in the same
        transaction (`package` limits those to one package). The same report repeated answers the same.

        The content is written before the commit that refers to it and linked at its outcome_path after it; a
        process killed in between leaves a file that start-up, `get_outcome` or `matrix-mcp gc --repair` restores.

        Args:
            outcome_id: the claimed item.
            lease_token: the token its claim returned.
            content: the result, text or base64 (`content_encoding`); kept in the store when small.
            outcome_path: where its file goes, relative to the run's folder (default: the planned or the
                run/package/item path).
            metrics: numbers about the result (lines_generated, quality_score feed the summaries).
            metadata: anything else; with metrics, checked against the run's outcome_schema.
            content_encoding: "utf-8" or "base64".
            mime_type: the content's media type (default: from the path's extension).
            claim_next: lease this many next items in the same transaction (0 to the page size).
            package: the package those next items come from.
            usage: what the attempt spent (tokens, model, cost): rolled up per package, run and worker in the
                same transaction, and counted against the run's budgets (past one, the run pauses).

        With review required (the run's or the package's), the item goes in_review, not complete, until
        review_item decides.

        Raises:
            InputError: a bad argument, content over MATRIX_MAX_CONTENT_BYTES, or metrics and metadata that
                violate the outcome_schema (the field is named).
            ArtifactError: an outcome_path that is not a safe relative path, or content that cannot be written.
            NotFound: no such outcome.
            StaleLease: the token is not the item's current one, or its lease no longer holds.
            Conflict: a different report for an item already complete, or an outcome_path another item's file
                holds (or needs as a folder).
        """
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
        spent = self._usage(usage)
        run_id, package_name, item, outcome_type, planned_path = await self._outcome_key(outcome_id)
        info = await self.run_info(run_id)
        if outcome_path is not None:  # relative to the run's own folder: it cannot name another run's file
            outcome_path = self.artifacts.check_path(in_run_folder(info.name, outcome_path))
            # a path already held is refused here, before a blob is written and without failing the write
            # batch it would share; the store's unique key decides a race between two new reports
            await self._refuse_held(outcome_path, run_id=run_id, package=package_name, item=item)
        self._check_report(info.policy.outcome_schema, metrics, metadata)
        report = Report(outcome_path=outcome_path, metrics=metrics, metadata=metadata, usage=spent)
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
                usage=spent,
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
        if self.after_commit is not None:
            self.after_commit(outcome_id)
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
        usage: Usage | Mapping[str, Any] | None = None,
    ) -> ReportResult:
        """Report a claimed item failed: it goes back to pending after a backoff while attempts remain and
        `retryable` is true, else it is failed for good. With claim_next, the next items are leased in the same
        transaction. The same failure repeated answers the same.

        Args:
            outcome_id: the claimed item.
            lease_token: the token its claim returned.
            error: what went wrong (kept up to 20,000 characters).
            retryable: false fails the item for good at once.
            claim_next: lease this many next items in the same transaction (0 to the page size).
            package: the package those next items come from.
            usage: what the attempt spent, as for complete_item.

        Raises:
            InputError: an empty error or a bad argument.
            NotFound: no such outcome.
            StaleLease: the token is not the item's current one, or its lease no longer holds.
            Conflict: a different report for an item already finished.
        """
        self._name(outcome_id, "outcome_id")
        self._name(lease_token, "lease_token")
        if not error or not error.strip():
            raise InputError("describe the failure", "error")
        if len(error) > 20_000:
            error = error[:20_000] + "…"
        next_claim = self._next_claim(claim_next, package)
        spent = self._usage(usage)
        info = await self.run_info((await self._outcome_key(outcome_id))[0])
        policy = info.policy
        self._leased.pop(outcome_id, None)

        def backoff(attempt: int) -> float:
            return rules.backoff_delay(attempt, policy.backoff_seconds, policy.backoff_cap_seconds)

        now = self.now()
        reported = await self.store.fail(
            outcome_id,
            lease_token=lease_token,
            failure=Failure(error=error, retryable=retryable, backoff=backoff, usage=spent),
            now=now,
            next_claim=next_claim,
        )
        return self._reported(info, reported, now)

    async def review_item(
        self, outcome_id: str, *, decision: ReviewDecision, note: str | None = None
    ) -> ReviewResult:
        """Decide on an item in_review. Approve: it is complete (its dependents may start now). Reject: it
        goes back to pending as a new attempt after the run's backoff, the note carried to that attempt's
        worker, or it is failed with the note as its error when its attempts are spent.

        Args:
            outcome_id: the item in_review.
            decision: "approve" or "reject".
            note: why (at most 2,000 characters); kept in the attempt history with the reviewer.

        Raises:
            InputError: a bad decision or note.
            NotFound: no such outcome.
            Conflict: the item is not in_review.
        """
        self._name(outcome_id, "outcome_id")
        if decision not in ("approve", "reject"):
            raise InputError("must be 'approve' or 'reject'", "decision")
        self._note(note, "note")
        info = await self.run_info((await self._outcome_key(outcome_id))[0])
        policy = info.policy

        def backoff(attempt: int) -> float:
            return rules.backoff_delay(attempt, policy.backoff_seconds, policy.backoff_cap_seconds)

        outcome = await self.store.review(
            outcome_id,
            verdict=ReviewVerdict(decision=decision, note=note or None, backoff=backoff),
            now=self.now(),
        )
        return ReviewResult(
            outcome_id=outcome.id,
            decision=decision,
            status=outcome.status,
            attempt=outcome.attempts,
            available_at=outcome.available_at if outcome.status == "pending" else None,
        )

    def _usage(self, usage: Usage | Mapping[str, Any] | None) -> Usage | None:
        """A report's usage as the model (an object from a tool: checked here, the field named)."""
        if usage is None or isinstance(usage, Usage):
            return usage
        if not isinstance(usage, Mapping):
            raise InputError("must be an object", "usage")
        known = {
            k: v for k, v in usage.items() if k in Usage.model_fields
        }  # others (an agent's extras) ignored
        try:
            return Usage.model_validate(known)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(first["msg"], f"usage.{where}" if where else "usage") from None

    def _note(self, note: str | None, field: str) -> None:
        if note is None:
            return
        if not isinstance(note, str):
            raise InputError("must be a string", field)
        if len(note) > MAX_NOTE_CHARS:
            raise InputError(f"is {len(note)} characters; at most {MAX_NOTE_CHARS}", field)
        if "\x00" in note:
            raise InputError("may not contain NUL characters", field)

    async def retry_items(
        self, run: str, *, package: str | None = None, outcome_ids: Sequence[str] | None = None
    ) -> RetryResult:
        """Put failed items back to pending with their attempts reset: all of a run's, one package's, or
        those named.

        Args:
            run: the run's name or id.
            package: only this package's failed items.
            outcome_ids: only these items.

        Returns:
            How many were requeued, and their ids (the first 1,000).

        Raises:
            NotFound: no such run or package.
            Conflict: the run is cancelled.
        """
        info = await self.run_info(run)
        ids = await self.store.retry(info.id, package=package, outcome_ids=outcome_ids, now=self.now())
        return RetryResult(run=info.name, requeued=len(ids), outcome_ids=ids[:1000])

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
