"""Stored content: read an outcome and its content, repair missing files, collect unreferenced content."""

from __future__ import annotations

import base64
import dataclasses
import time

import anyio

from matrix_mcp.artifacts import ArtifactError, GarbageReport, RepairReport
from matrix_mcp.engine.core import EngineCore, log
from matrix_mcp.engine.validate import is_media_type
from matrix_mcp.errors import InputError, NotFound
from matrix_mcp.models import InlineContent, OutcomeDetail

# get_outcome(include_content=true): how much content a result carries unless max_bytes says otherwise, and
# at most (base64 makes binary a third larger)
INLINE_DEFAULT_BYTES = 64 * 1024
INLINE_MAX_BYTES = 1024 * 1024

# A server repairs, as it starts, the files of completions among this many latest events (a process killed
# between commit and link leaves its file missing; `matrix-mcp gc --repair` checks every completion).
REPAIR_RECENT_EVENTS = 20_000


def _served_type(mime_type: str | None) -> str:
    """The stored media type, unless it is none or not one (a row written before reports were checked)."""
    return mime_type if mime_type and is_media_type(mime_type) else "application/octet-stream"


def inline_content(data: bytes, mime_type: str, max_bytes: int) -> InlineContent:
    """The first `max_bytes` of `data` for a tool result: as text when the content is UTF-8 without NUL
    (a character cut by the bound is left out whole), else base64-encoded."""
    head = data[:max_bytes]
    truncated = len(data) > max_bytes
    text = _utf8(head, truncated)
    if text is not None and "\x00" not in text:
        included = len(text.encode())
        return InlineContent(
            encoding="utf-8",
            data=text,
            mime_type=mime_type,
            included_bytes=included,
            total_bytes=len(data),
            truncated=included < len(data),
        )
    return InlineContent(
        encoding="base64",
        data=base64.b64encode(head).decode("ascii"),
        mime_type=mime_type,
        included_bytes=len(head),
        total_bytes=len(data),
        truncated=truncated,
    )


def _utf8(head: bytes, cut: bool) -> str | None:
    """`head` as text, or None if it is not UTF-8; when `cut`, up to 3 trailing bytes of a character split
    by the cut are dropped."""
    for drop in range(4 if cut else 1):
        try:
            return head[: len(head) - drop].decode("utf-8")
        except UnicodeDecodeError as exc:
            if not cut or exc.start < len(head) - 3:
                return None
    return None


class Content(EngineCore):
    async def get_outcome(
        self, outcome_id: str, *, include_content: bool = False, max_bytes: int = INLINE_DEFAULT_BYTES
    ) -> OutcomeDetail:
        """One outcome with its attempts; a complete outcome whose file is missing has it restored first.

        Args:
            outcome_id: the outcome.
            include_content: also return its stored content (absent when it has none), for hosts that
                cannot read resources: see `inline_content`.
            max_bytes: with include_content, at most this many bytes of the content (1 to INLINE_MAX_BYTES).

        Raises:
            InputError: a bad outcome_id or max_bytes.
            NotFound: no such outcome.
        """
        self._name(outcome_id, "outcome_id")
        if include_content:
            self._limit(max_bytes, "max_bytes", INLINE_MAX_BYTES)
        detail = await self.store.get_outcome(outcome_id, history=True)
        if detail.status == "complete" and detail.outcome_path and detail.content_sha256:
            await self._ensure_file(detail.id, detail.outcome_path, detail.content_sha256)
        if include_content and detail.content_sha256 is not None:
            data, mime = await self.outcome_content(detail.id)
            detail.content = inline_content(data, mime, max_bytes)
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
        read and hashed.

        Args:
            since_seq: only completions after this event sequence number.
            page: how many completions to read at a time.
            verify: also hash every file and restore those that differ.

        Returns:
            How many files were checked, repaired, could not be (their content is gone), or skipped.
        """
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
        """At start-up: `repair_files` for the completions among the latest REPAIR_RECENT_EVENTS events."""
        latest = await self.store.latest_seq()
        return await self.repair_files(since_seq=max(0, latest - REPAIR_RECENT_EVENTS))

    async def outcome_content(self, outcome_id: str) -> tuple[bytes, str]:
        """An outcome's stored content and its media type (application/octet-stream when it has none that is
        valid).

        Args:
            outcome_id: the outcome.

        Raises:
            NotFound: no such outcome, or the outcome has no stored content.
            ArtifactError: the content is neither readable in the blob store nor kept in the store.
        """
        outcome = await self.store.get_outcome(outcome_id)
        if outcome.content_sha256 is None:
            raise NotFound(f"outcome '{outcome_id}' has no stored content", "outcome_id")
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

    async def collect_garbage(self, *, older_than_seconds: float = 3600.0) -> GarbageReport:
        """Delete content no outcome refers to: blobs (left by rejected reports) once unwritten for a while,
        and content kept in the store that an override left behind.

        Args:
            older_than_seconds: only blobs unwritten for at least this long (60 or more).

        Raises:
            InputError: older_than_seconds under 60.
        """
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
