"""The SQLite store's review gates and policy updates: review_item's decision on an item in_review
(rules.review decides; policy.apply writes it with what it does to dependents), and update_policy."""

from __future__ import annotations

import sqlite3

from matrix_mcp import rules
from matrix_mcp.audit import current_principal
from matrix_mcp.models import Outcome, Run
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import PolicyUpdate, ReviewVerdict
from matrix_mcp.store.sqlite import events, policy, runs, sql
from matrix_mcp.store.sqlite.connection import Database


async def review(db: Database, outcome_id: str, *, verdict: ReviewVerdict, now: float) -> Outcome:
    """See Store.review: the item (with its run's state and its package's histogram) read once, the decision
    written, the answer the row as the decision left it (no read-back)."""

    def op(c: sqlite3.Connection) -> Outcome:
        row = rules.check_review(c.execute(sql.REVIEW_ROW, (outcome_id,)).fetchone(), outcome_id)
        t = rules.review_verdict(
            row, verdict, reviewed_by=current_principal.get(), run_state=row["run_state"], now=now
        )
        policy.apply(c, row, t, now, hist_read=True)
        return R.outcome_from(t.row(row))

    return await db.write(op)


async def update_policy(db: Database, run_id: str, *, update: PolicyUpdate, now: float) -> Run:
    def op(c: sqlite3.Connection) -> Run:
        before = c.execute(sql.RUN_POLICY_ROW, (run_id,)).fetchone()
        if before is None:
            raise rules.unknown_run(run_id)
        changes = rules.policy_changes(update)
        c.execute(sql.update_run_policy(tuple(changes)), (*changes.values(), now, run_id))
        had_budget = before["max_cost_usd"] is not None or before["max_tokens"] is not None
        has_budget = c.execute(sql.RUN_POLICY_ROW, (run_id,)).fetchone()
        if not had_budget and (
            has_budget["max_cost_usd"] is not None or has_budget["max_tokens"] is not None
        ):
            # the run's totals were not kept without a budget: they start from what its packages spent
            c.execute(sql.SET_RUN_SPENT, (*c.execute(sql.RUN_SPENT_TRUTH, (run_id,)).fetchone(), run_id))
        events.add_event(c, run_id, None, rules.policy_updated(changes), now)
        return runs.read_run(c, run_id)

    return await db.write(op)
