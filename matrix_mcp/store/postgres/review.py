"""The PostgreSQL store's review gates and policy updates: review_item's decision on an item in_review
(rules.review decides; Tx.apply writes it, policy.after does what it does to dependents), merged per batch
like completes (review_many: Tx.apply_many), and update_policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matrix_mcp import rules
from matrix_mcp.audit import acting_as, current_principal
from matrix_mcp.models import Outcome, Run
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import PolicyUpdate, ReviewVerdict
from matrix_mcp.store.postgres import policy, runs, sql
from matrix_mcp.store.postgres.batch import (
    OUTCOME_ANSWER,
    RUN_ANSWER,
    Batch,
    BatchRequest,
    Conn,
    ReviewArgs,
    Tx,
    fetch_all,
)

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database


async def review(db: Database, outcome_id: str, *, verdict: ReviewVerdict, now: float) -> Outcome:
    """See Store.review. An item in_review is neither leased nor claimable: no claim or sweep holds its
    rows, so the outcome row is the only lock taken. Reviews are merged per batch (review_many); one that
    the merged path leaves (its item not in_review, a second review of one item) runs on its own here."""

    async def op(tx: Tx) -> Outcome:
        row = rules.check_review(await tx.one(sql.REVIEW_ROW, (outcome_id,)), outcome_id)
        t = rules.review_verdict(
            row, verdict, reviewed_by=current_principal.get(), run_state=row["run_state"], now=now
        )
        tx.wrote = True  # (atomic: a failure from here on re-runs the batch with a savepoint per request)
        flags = await tx.apply(row, t, now)
        if t.review is not None:
            r = t.review
            await tx.execute(
                sql.ATTEMPT_REVIEW,
                (r.status, r.error, r.decision, r.note, r.reviewed_by, t.outcome_id, r.lease_token),
            )
        await policy.after(tx, row, t, flags, now)
        return R.outcome_from(t.row(row))

    # journaled: a retry after a lost answer gets the decision's outcome, not "not in_review"
    merge = ReviewArgs(outcome_id=outcome_id, verdict=verdict, now=now)
    return await db.write(op, atomic=True, merge=merge, journal=OUTCOME_ANSWER)


async def review_many(conn: Conn, state: Batch, batch: list[BatchRequest]) -> None:
    """The batch's reviews, set-based: their items in_review locked in one statement, each decided by
    rules.review_verdict, written by Tx.apply_many and one statement for the attempts' decisions; each
    answer is journaled with the batch (connection.journal_answers) like the one-by-one path's. A review
    whose item is not in_review here, or the second of one item, is left to its own op (which says why)."""
    mine: dict[str, tuple[BatchRequest, ReviewArgs]] = {}
    for req in batch:
        a = req.merge
        if isinstance(a, ReviewArgs) and not req.handled and req.rest is None:
            mine.setdefault(a.outcome_id, (req, a))
    if not mine:
        return
    rows = await fetch_all(conn, sql.REVIEW_ROWS, (list(mine),))
    if not rows:
        return
    whole = Tx(conn, state)  # as for merged completes: effects go to the batch (all, or NeedSafe)
    ts: list[rules.Transition] = []
    for row in rows:  # in `n` order
        req, a = mine[row["id"]]
        ts.append(
            rules.review_verdict(
                row, a.verdict, reviewed_by=req.principal, run_state=row["run_state"], now=a.now
            )
        )
    last = max(float(mine[row["id"]][1].now) for row in rows)
    flags = await whole.apply_many(rows, ts, last)
    decided = [t.review for t in ts if t.review is not None]
    if decided:
        await whole.execute(
            sql.ATTEMPT_REVIEW_MANY,
            (
                [r.status for r in decided],
                [r.error for r in decided],
                [r.decision for r in decided],
                [r.note for r in decided],
                [r.reviewed_by for r in decided],
                [t.outcome_id for t in ts if t.review is not None],
                [r.lease_token for r in decided],
            ),
        )
    for row, t in zip(rows, ts, strict=True):
        req, a = mine[row["id"]]
        with acting_as(req.principal):
            await policy.after(whole, row, t, flags.get(int(row["n"])), a.now)
        req.value = R.outcome_from(t.row(row))
        req.handled = True
    whole.succeeded()


async def update_policy(db: Database, run_id: str, *, update: PolicyUpdate, now: float) -> Run:
    """See Store.update_policy. The run's spend lock is taken first (sql.SPEND_LOCK): it waits for the reports
    in flight that spend on the run, which hold it shared to their commit, and holds back those that come
    after; then the run row (a report's RUN_BUDGETS_LOCK waits for it). So the recount of what the run spent so far,
    when a budget is set on a run without one, sees every report that added nothing to the run's totals (the
    batch's own deltas written first), and every later report adds to them under the new budget."""

    async def op(tx: Tx) -> Run:
        await tx.execute(sql.SPEND_LOCK, (run_id,))
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
