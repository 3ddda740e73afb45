"""The PostgreSQL outcome store on psycopg 3 (async) and psycopg_pool: many processes, one board. The Store
protocol, each method delegated to the module of its noun (runs, work, tracking, events, keys, content,
counters) with the store's Database (store/delegate.py; connection.py: pool, group commit, roll-up,
LISTEN/NOTIFY).


- Semantics are those of the SQLite store, transition for transition (same errors, events, reasons).
- Group commit: one writer per process merges concurrent requests into one transaction; each
  request runs in its own SAVEPOINT so a bad request rolls back alone. Transient errors
  (serialization failure, deadlock, lost connection, admin shutdown, pool timeout) retry the whole
  batch with jittered backoff; past a short budget the callers get `Unavailable` (retryable).
- Claims are one `UPDATE … RETURNING` over a MATERIALIZED CTE with `FOR UPDATE SKIP LOCKED` on the
  narrow queue (`outcome_queue`, migration 8: lease token and expiry, available_at, claim order, final
  status once done; listings by status read it too),
  which holds the only indexes the claim, the lease sweep and fairness need; the outcome row is then
  updated HOT (no index of `outcomes` names a column a claim or report writes). Fairness across
  packages comes from each queue row's `claim_seq` (a global sequence), so no package or run row is
  written on the claim path.
- Counters without a hot row: each batch appends one aggregated row per touched package (and
  bucket, and minute) to `package_deltas`; one roller at a time (advisory lock) folds them into
  `packages` (the duration histogram too, as sorted arrays on the package row). Readers add the unrolled deltas (views `package_counters`, `package_hist`, `run_minutes`).
- Events get their sequence numbers in commit order (an advisory lock held from the insert to the
  commit), so a reader that saw seq S has seen every event ≤ S. One debounced NOTIFY per batch wakes
  long-polls in other processes; a poll is the fallback.
"""

from __future__ import annotations

from typing import Any

from matrix_mcp.store.delegate import on_db
from matrix_mcp.store.group_commit import GroupCommit
from matrix_mcp.store.postgres import content, counters, events, keys, runs, tracking, work
from matrix_mcp.store.postgres.connection import Database
from matrix_mcp.store.postgres.deadline import DEFAULT_DEADLINE
from matrix_mcp.store.postgres.hooks import PostgresHooks


class PostgresStore:
    """See the module docstring. Open with `await PostgresStore.open(url)`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.url_for_display = db.url_for_display

    @classmethod
    async def open(cls, url: str, *, deadline: float = DEFAULT_DEADLINE) -> PostgresStore:
        """Connect, migrate and start the roller; every database call answers within `deadline` seconds
        (store/postgres/deadline.py)."""
        return cls(await Database.open(url, deadline=deadline))

    async def close(self) -> None:
        await self.db.close()

    @property
    def group_commit(self) -> GroupCommit[Any]:
        return self.db.group_commit

    @property
    def hooks(self) -> PostgresHooks:
        """Subscriptions and deliveries for events out (store/hooks.py)."""
        return PostgresHooks(self.db)

    async def roll_up(self) -> int:
        """Fold the appended counter deltas into the package rows (see Database.roll_up)."""
        return await self.db.roll_up()

    async def prune_answers(self, before: float) -> int:
        """Drop journaled write answers written before `before` (see Database.prune_answers)."""
        return await self.db.prune_answers(before)

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
    wait_for_change = on_db(events.wait_for_change)
    events_after = on_db(events.events_after)
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
