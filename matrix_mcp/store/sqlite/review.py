"""The SQLite store's review gates and policy updates: review_item's decision on an item in_review
(rules.review decides; policy.apply writes it with what it does to dependents), and update_policy."""

from __future__ import annotations

import sqlite3

from matrix_mcp import rules
from matrix_mcp.audit import current_principal
from matrix_mcp.models import Outcome, Run
from matrix_mcp.store.params import PolicyUpdate, ReviewVerdict
from matrix_mcp.store.sqlite import events, policy, runs, sql, tracking
from matrix_mcp.store.sqlite.connection import Database


async def review(db: Database, outcome_id: str, *, verdict: ReviewVerdict, now: float) -> Outcome:
    def op(c: sqlite3.Connection) -> Outcome:
        row = rules.check_review(c.execute(sql.OUTCOME_BY_ID, (outcome_id,)).fetchone(), outcome_id)
        state = c.execute(sql.RUN_STATE, (row["run_id"],)).fetchone()[0]
        t = rules.review_verdict(row, verdict, reviewed_by=current_principal.get(), run_state=state, now=now)
        policy.apply(c, row, t, now)
        return tracking.read_outcome(c, outcome_id)

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
