"""The PostgreSQL store's usage ledger and budgets: what a report spent goes on its attempt and into the sums of
its package (a counter delta, rolled up like the others), its worker in the run and — only while the run has a
budget — the run's own exact totals, all in the report's transaction. The run's totals move in one statement
that locks the run row (RUN_SPEND), so the report that takes the run past a budget is the one that sees the
crossing, and pauses the run there (rules.budgets_crossed decides). Also the notes and review decisions an
attempt keeps, and what a claim shows of an item's earlier attempts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from matrix_mcp import rules
from matrix_mcp.models import PreviousAttempt, Usage
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import Claim
from matrix_mcp.store.postgres import sql

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.batch import Tx

# the most earlier attempts a claim reads per item (the engine keeps what fits MATRIX_MAX_BRIEFING_BYTES)
PREVIOUS_READ = 50


class Spend:
    """One report's usage: the attempt it goes on and where its sums go."""

    __slots__ = ("lease_token", "outcome_id", "package_id", "run_id", "usage", "worker")

    def __init__(
        self, *, run_id: str, package_id: int, outcome_id: str, lease_token: str, worker: str, usage: Usage
    ) -> None:
        self.run_id = run_id
        self.package_id = package_id
        self.outcome_id = outcome_id
        self.lease_token = lease_token
        self.worker = worker
        self.usage = usage


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


async def record(tx: Tx, spends: Sequence[Spend], now: float) -> None:
    """Write what reports spent, in their transaction: each attempt's usage as reported; the package sums
    (counter deltas), the workers' sums (one statement) and, for runs with a budget, the run's totals, which
    pause the run when a report crosses one. Reports without usage cost nothing here."""
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
    for s in counted:
        await _budget(tx, s, now)


async def _budget(tx: Tx, s: Spend, now: float) -> None:
    values = rules.usage_values(s.usage)
    cost, tokens = values[4], sum(values[:4])
    run = await tx.one(sql.RUN_SPEND, {"run": s.run_id, "cost": cost, "tokens": tokens})
    if run is None:
        return  # no budget: the run's totals are not kept (update_policy recounts them when one is set)
    crossed = rules.budgets_crossed(
        max_cost_usd=run["max_cost_usd"],
        max_tokens=run["max_tokens"],
        cost_before=float(run["cost_before"]),
        cost_after=float(run["cost_after"]),
        tokens_before=int(run["tokens_before"]),
        tokens_after=int(run["tokens_after"]),
    )
    for ev in crossed:
        tx.event(s.run_id, None, ev, now)
    if crossed and rules.budget_pause(run["state"]):
        first = crossed[0].data
        await tx.execute(
            sql.RUN_PAUSE_FOR_BUDGET, (rules.budget_reason(first["budget"], first["limit"]), now, s.run_id)
        )


async def briefed(tx: Tx, claims: list[Claim]) -> list[Claim]:
    """The claims with their items' earlier attempts (newest first); one statement, asked only when an item
    was claimed before (a first attempt has none)."""
    again = [c for c in claims if c.attempt > 1]
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
