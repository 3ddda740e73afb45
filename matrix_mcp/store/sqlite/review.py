"""The SQLite store's review gates and policy updates (filled in with the review migration)."""

from __future__ import annotations

from matrix_mcp.errors import Conflict
from matrix_mcp.models import Outcome, Run
from matrix_mcp.store.params import PolicyUpdate, ReviewVerdict
from matrix_mcp.store.sqlite.connection import Database


async def review(db: Database, outcome_id: str, *, verdict: ReviewVerdict, now: float) -> Outcome:
    raise Conflict("review_item is not available yet", field="outcome_id")


async def update_policy(db: Database, run_id: str, *, update: PolicyUpdate, now: float) -> Run:
    raise Conflict("update_policy is not available yet", field="run")
