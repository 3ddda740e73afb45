"""The PostgreSQL store's review gates and policy updates: review_item's decision on an item in_review
(rules.review decides; Tx.apply writes it, policy.after does what it does to dependents), and update_policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matrix_mcp import rules
from matrix_mcp.audit import current_principal
from matrix_mcp.models import Outcome, Run
from matrix_mcp.store.params import PolicyUpdate, ReviewVerdict
from matrix_mcp.store.postgres import policy, runs, sql, tracking
from matrix_mcp.store.postgres.batch import OUTCOME_ANSWER, RUN_ANSWER, Tx

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database


async def review(db: Database, outcome_id: str, *, verdict: ReviewVerdict, now: float) -> Outcome:
    """See Store.review. An item in_review is neither leased nor claimable: no claim or sweep holds its rows,
    so the outcome row is the only lock taken."""

    async def op(tx: Tx) -> Outcome:
        row = rules.check_review(await tx.one(sql.REVIEW_ROW, (outcome_id,)), outcome_id)
        t = rules.review_verdict(
            row, verdict, reviewed_by=current_principal.get(), run_state=row["run_state"], now=now
        )
        flags = await tx.apply(row, t, now)
        if t.review is not None:
            r = t.review
            await tx.execute(
                sql.ATTEMPT_REVIEW,
                (r.status, r.error, r.decision, r.note, r.reviewed_by, t.outcome_id, r.lease_token),
            )
        await policy.after(tx, row, t, flags, now)
        return await tracking.read_outcome(tx.conn, outcome_id)

    # journaled: a retry after a lost answer gets the decision's outcome, not "not in_review"
    return await db.write(op, journal=OUTCOME_ANSWER)


async def update_policy(db: Database, run_id: str, *, update: PolicyUpdate, now: float) -> Run:
    """See Store.update_policy. The run row is locked first: a report's spend (usage.RUN_SPEND) waits for
    it, so a budget set here counts every report committed after it, and the recount of what the run spent
    so far is taken under the lock (the batch's own deltas written first)."""

    async def op(tx: Tx) -> Run:
        before = await tx.one(sql.RUN_POLICY_ROW, (run_id,))
        if before is None:
            raise rules.unknown_run(run_id)
        changes = rules.policy_changes(update)
        if changes:
            await tx.execute(sql.update_run_policy(tuple(changes)), (*changes.values(), now, run_id))
        if changes.get("max_concurrent") is not None:
            await tx.execute(sql.GATE_RUN, (run_id,))  # its claims count its leases from now on
        had_budget = before["max_cost_usd"] is not None or before["max_tokens"] is not None
        budget = {k: changes.get(k, before[k]) for k in ("max_cost_usd", "max_tokens")}
        if not had_budget and any(v is not None for v in budget.values()):
            # the run's totals were not kept without a budget: they start from what its packages spent
            await tx.flush()
            spent = await tx.one(sql.RUN_SPENT_TRUTH, (run_id,))
            assert spent is not None
            await tx.execute(sql.SET_RUN_SPENT, (float(spent["cost"]), int(spent["tokens"]), run_id))
        tx.event(run_id, None, rules.policy_updated(changes), now)
        await tx.flush()
        return await runs.read_run(tx.conn, run_id)

    return await db.write(op, journal=RUN_ANSWER)
