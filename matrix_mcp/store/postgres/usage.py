"""The PostgreSQL store's usage ledger and budgets: what a report spent goes on its attempt and into the sums of
its package (a counter delta, rolled up like the others), its worker in the run and — only while the run has a
budget — the run's own exact totals, all in the report's transaction, set-based per batch. The run's totals
move after a read that locks the run row (RUN_BUDGETS_LOCK), report by report in the batch's order, so the
report that takes the run past a budget is the one that sees the crossing, and pauses the run there
(rules.budgets_crossed decides). Also the notes and review decisions an
attempt keeps, and what a claim shows of an item's earlier attempts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from matrix_mcp import rules
from matrix_mcp.models import PreviousAttempt, Usage
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import Claim
from matrix_mcp.store.postgres import sql

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.batch import Tx

# the most earlier attempts a claim reads per item (the engine keeps what fits MATRIX_MAX_BRIEFING_BYTES)
PREVIOUS_READ = 50


@dataclass(slots=True, kw_only=True)
class Spend:
    """One report's usage: the attempt it goes on and where its sums go."""

    run_id: str
    package_id: int
    outcome_id: str
    lease_token: str
    worker: str
    usage: Usage


def spend_of(row: rules.RowLike, t: rules.Transition) -> Spend | None:
    """What the transition `t` of the report on `row` spent (None when its report gave no usage)."""
    if t.usage is None or t.attempt is None:
        return None
    return Spend(
        run_id=t.run_id,
        package_id=t.package_id,
        outcome_id=t.outcome_id,
        lease_token=t.attempt.lease_token,
        worker=row["worker"] or "",
        usage=t.usage,
    )


def reported(usages: Sequence[Usage | None]) -> dict[str, list[Any]]:
    """COMPLETE_MANY_SQL's usage arrays: each report's usage as reported (NULL where a field was not given),
    which the statement puts on the attempt it ends (ATTEMPT_USAGE's columns)."""
    return {
        "u_in": [u.input_tokens if u else None for u in usages],
        "u_out": [u.output_tokens if u else None for u in usages],
        "u_cr": [u.cache_read_tokens if u else None for u in usages],
        "u_cc": [u.cache_creation_tokens if u else None for u in usages],
        "u_cost": [u.cost_usd if u else None for u in usages],
        "u_model": [u.model if u else None for u in usages],
    }


async def record(tx: Tx, spends: Sequence[Spend], now: float, *, on_attempts: bool = False) -> None:
    """Write what reports spent, in their transaction, set-based: each attempt's usage as reported (unless
    `on_attempts`: the report's statement wrote it); the package sums (counter deltas), the workers' sums (one
    statement) and, for runs with a budget, the run's totals (one locking read and one write for the
    batch), which pause the run when a report crosses one. Reports without usage cost nothing here."""
    if not on_attempts:
        for s in spends:
            u = s.usage
            await tx.execute(
                sql.ATTEMPT_USAGE,
                (
                    u.input_tokens,
                    u.output_tokens,
                    u.cache_read_tokens,
                    u.cache_creation_tokens,
                    u.cost_usd,
                    u.model,
                    s.outcome_id,
                    s.lease_token,
                ),
            )
    counted = [s for s in spends if rules.has_usage(s.usage)]
    if not counted:
        return
    workers: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    for s in counted:
        values = rules.usage_values(s.usage)
        tx.add((s.run_id, s.package_id, None, None), **dict(zip(sql.USAGE_COLUMNS, values, strict=True)))
        sums = workers[s.run_id, s.worker]
        for i, v in enumerate(values):
            sums[i] += v
    keys = sorted(workers)  # in key order: two batches never wait on each other's rows
    await tx.execute(
        sql.WORKER_USAGE,
        (
            [k[0] for k in keys],
            [k[1] for k in keys],
            *([int(workers[k][i]) for k in keys] for i in range(4)),
            [float(workers[k][4]) for k in keys],
        ),
    )
    await _budgets(tx, counted, now)


async def _budgets(tx: Tx, counted: Sequence[Spend], now: float) -> None:
    """The budgeted runs among the spenders, locked; each report's spend added in report order (as one
    report after the other would), the crossing of a budget seen by the report that crosses it."""
    spenders = sorted({s.run_id for s in counted})
    await tx.one(
        sql.SPEND_LOCK_SHARED, (spenders,)
    )  # a statement of its own, before RUN_BUDGETS_LOCK: see there
    runs = await tx.all(sql.RUN_BUDGETS_LOCK, (spenders,))
    if not runs:
        return  # no budget: the run's totals are not kept (update_policy recounts them when one is set)
    budgeted = {r["id"]: r for r in runs}
    totals = {r["id"]: [float(r["spent_cost_usd"]), int(r["spent_tokens"]), r["state"]] for r in runs}
    paused: list[tuple[str, str]] = []
    for s in counted:
        run = budgeted.get(s.run_id)
        if run is None:
            continue
        values = rules.usage_values(s.usage)
        total = totals[s.run_id]
        cost_before, tokens_before = float(total[0]), int(total[1])
        total[0] = cost_before + values[4]
        total[1] = tokens_before + int(sum(values[:4]))
        crossed = rules.budgets_crossed(
            max_cost_usd=run["max_cost_usd"],
            max_tokens=run["max_tokens"],
            cost_before=cost_before,
            cost_after=float(total[0]),
            tokens_before=tokens_before,
            tokens_after=int(total[1]),
        )
        for ev in crossed:
            tx.event(s.run_id, None, ev, now)
        if crossed and rules.budget_pause(str(total[2])):
            first = crossed[0].data
            total[2] = "paused"
            paused.append((s.run_id, rules.budget_reason(first["budget"], first["limit"])))
    ids = sorted(totals)
    await tx.execute(
        sql.SET_RUNS_SPENT, (ids, [float(totals[i][0]) for i in ids], [int(totals[i][1]) for i in ids])
    )
    for run_id, reason in paused:
        await tx.execute(sql.RUN_PAUSE_FOR_BUDGET, (reason, now, run_id))


async def briefed(tx: Tx, claims: list[Claim]) -> list[Claim]:
    """The claims with their items' earlier attempts (newest first); one statement, asked only when an item
    was claimed before (a first attempt has none, unless a retry reset the count)."""
    again = [c for c in claims if rules.has_earlier_attempts(c.attempt, retried=c.retried)]
    if not again:
        return claims
    found: dict[str, list[PreviousAttempt]] = defaultdict(list)
    for a in await tx.all(
        sql.PREVIOUS_ATTEMPTS,
        {
            "ids": [c.outcome_id for c in again],
            "tokens": [c.lease_token for c in again],
            "per": PREVIOUS_READ,
        },
    ):
        found[a["outcome_id"]].append(R.previous_attempt_from(a))
    return [replace(c, previous_attempts=found[c.outcome_id]) if c.outcome_id in found else c for c in claims]
