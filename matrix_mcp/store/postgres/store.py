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

from matrix_mcp.store.delegate import DialectStore, delegated
from matrix_mcp.store.postgres import content, counters, events, keys, review, runs, tracking, work
from matrix_mcp.store.postgres.connection import Database
from matrix_mcp.store.postgres.deadline import DEFAULT_DEADLINE
from matrix_mcp.store.postgres.hooks import PostgresHooks


@delegated(runs, work, review, tracking, events, keys, content, counters)
class PostgresStore(DialectStore[Database]):
    """See the module docstring. Open with `await PostgresStore.open(url)`."""

    @classmethod
    async def open(cls, url: str, *, deadline: float = DEFAULT_DEADLINE) -> PostgresStore:
        """Connect, migrate and start the roller; every database call answers within `deadline` seconds
        (store/postgres/deadline.py)."""
        return cls(await Database.open(url, deadline=deadline))

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
