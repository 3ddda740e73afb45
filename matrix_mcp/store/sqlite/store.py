"""The embedded SQLite outcome store on aiosqlite: the Store protocol, each method delegated to the module of
its noun (runs, work, tracking, events, keys, content, counters) with the store's Database
(store/delegate.py: `on_db`).

- WAL, busy_timeout, foreign keys on; several server processes may share one file.
- One writer connection per process. Concurrent write requests are merged into one
  `BEGIN IMMEDIATE` transaction (group commit); each request runs inside its own SAVEPOINT so one
  bad request rolls back alone. The whole batch runs as one function on the writer's thread.
- Reads run on their own connections inside a read transaction (one consistent snapshot).
- Summary counters live on the package rows and change in the same transaction as the outcome.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matrix_mcp.store.delegate import on_db
from matrix_mcp.store.group_commit import GroupCommit
from matrix_mcp.store.sqlite import content, counters, events, keys, runs, tracking, work
from matrix_mcp.store.sqlite.connection import Database
from matrix_mcp.store.sqlite.hooks import SQLiteHooks


class SQLiteStore:
    """See the module docstring. Open with `await SQLiteStore.open(path)`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.url_for_display = db.url_for_display

    @classmethod
    async def open(cls, path: str | Path) -> SQLiteStore:
        return cls(await Database.open(path))

    async def close(self) -> None:
        await self.db.close()

    @property
    def path(self) -> Path:
        return self.db.path

    @property
    def group_commit(self) -> GroupCommit[Any]:
        return self.db.group_commit

    @property
    def hooks(self) -> SQLiteHooks:
        """Subscriptions and deliveries for events out (store/hooks.py)."""
        return SQLiteHooks(self.db)

    async def integrity_check(self) -> str:
        return await self.db.integrity_check()

    # the Store protocol, method by method: the function of the same name in the module of its noun
    plan = on_db(runs.plan)
    get_run = on_db(runs.get_run)
    list_runs = on_db(runs.list_runs)
    control_run = on_db(runs.control_run)
    run_overview = on_db(runs.run_overview)
    claim = on_db(work.claim)
    heartbeat = on_db(work.heartbeat)
    complete = on_db(work.complete)
    fail = on_db(work.fail)
    retry = on_db(work.retry)
    record_outcome = on_db(tracking.record_outcome)
    update_status = on_db(tracking.update_status)
    record_integration = on_db(tracking.record_integration)
    get_outcome = on_db(tracking.get_outcome)
    list_outcomes = on_db(tracking.list_outcomes)
    iter_outcomes = on_db(tracking.iter_outcomes)
    cells = on_db(tracking.cells)
    latest_seq = on_db(events.latest_seq)
    events_after = on_db(events.events_after)
    wait_for_change = on_db(events.wait_for_change)
    create_api_key = on_db(keys.create_api_key)
    list_api_keys = on_db(keys.list_api_keys)
    revoke_api_key = on_db(keys.revoke_api_key)
    api_key_by_hash = on_db(keys.api_key_by_hash)
    touch_api_key = on_db(keys.touch_api_key)
    revoke_session = on_db(keys.revoke_session)
    session_revoked = on_db(keys.session_revoked)
    inline_content = on_db(content.inline_content)
    content_hashes = on_db(content.content_hashes)
    collect_contents = on_db(content.collect_contents)
    path_holder = on_db(content.path_holder)
    content_files = on_db(content.content_files)
    run_minutes = on_db(counters.run_minutes)
    finished_span = on_db(counters.finished_span)
    package_summaries = on_db(counters.package_summaries)
    package_summary = on_db(counters.package_summary)
    system_metrics = on_db(counters.system_metrics)
    status_counts = on_db(counters.status_counts)
    active_status_counts = on_db(counters.active_status_counts)
    recount = on_db(counters.recount)
    rebuild_counters = on_db(counters.rebuild_counters)
