"""Review gates and policy updates on PostgreSQL: not built yet (the PostgreSQL dialect of the review
design lands with its own migration). Until then these refuse plainly, naming what to use instead."""

from __future__ import annotations

from matrix_mcp.errors import Conflict
from matrix_mcp.models import Outcome, Run
from matrix_mcp.store.params import PolicyUpdate, ReviewVerdict
from matrix_mcp.store.postgres.connection import Database

_NOT_YET = "is not available on PostgreSQL yet; use a SQLite store for review gates and budgets"


async def review(db: Database, outcome_id: str, *, verdict: ReviewVerdict, now: float) -> Outcome:
    """See Store.review (not built on PostgreSQL yet)."""
    raise Conflict(f"review_item {_NOT_YET}", field="outcome_id")


async def update_policy(db: Database, run_id: str, *, update: PolicyUpdate, now: float) -> Run:
    """See Store.update_policy (not built on PostgreSQL yet)."""
    raise Conflict(f"update_policy {_NOT_YET}", field="run")
