"""The SQLite store's usage ledger and budgets: what a report spent goes on its attempt and into the sums of
its package, its worker in the run and (while the run has a budget) the run's own totals, all in the report's
transaction; a report that takes the run past a budget pauses it there (rules.budgets_crossed decides). Also
the notes and review decisions an attempt keeps, and what a claim shows of an item's earlier attempts."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

from matrix_mcp import rules
from matrix_mcp.models import PreviousAttempt, Usage
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import Claim
from matrix_mcp.store.sqlite import events, sql

# the most earlier attempts a claim reads (the engine keeps what fits MATRIX_MAX_BRIEFING_BYTES)
PREVIOUS_READ = 50


def record(c: sqlite3.Connection, row: rules.RowLike, t: rules.Transition, now: float) -> None:
    """Write what a transition says beyond its attempt's end (which carries the usage its report gave:
    counters.apply): that usage rolled up and counted against the run's budgets, a review's decision."""
    if t.usage is not None and t.attempt is not None:
        spend(c, row, t, now)
    if t.review is not None:
        r = t.review
        c.execute(
            sql.ATTEMPT_REVIEW,
            (r.status, r.error, r.decision, r.note, r.reviewed_by, t.outcome_id, r.lease_token),
        )


def spend(c: sqlite3.Connection, row: rules.RowLike, t: rules.Transition, now: float) -> None:
    usage = t.usage
    assert usage is not None and t.attempt is not None
    values = rules.usage_values(usage)
    if not rules.has_usage(usage):
        return
    c.execute(sql.PACKAGE_USAGE, (*values, t.package_id))
    c.execute(sql.WORKER_USAGE, (t.run_id, row["worker"] or "", *values))
    run = c.execute(sql.RUN_BUDGET, (t.run_id,)).fetchone()
    if run["max_cost_usd"] is None and run["max_tokens"] is None:
        return  # the run's totals are kept only under a budget (update_policy recounts them when one is set)
    cost, tokens = values[4], sum(values[:4])
    c.execute(sql.RUN_SPEND, (cost, tokens, t.run_id))
    crossed = rules.budgets_crossed(
        max_cost_usd=run["max_cost_usd"],
        max_tokens=run["max_tokens"],
        cost_before=float(run["spent_cost_usd"]),
        cost_after=float(run["spent_cost_usd"]) + cost,
        tokens_before=int(run["spent_tokens"]),
        tokens_after=int(run["spent_tokens"]) + tokens,
    )
    for ev in crossed:
        events.add_event(c, t.run_id, None, ev, now)
    if crossed and rules.budget_pause(run["state"]):
        first = crossed[0].data
        c.execute(
            sql.RUN_PAUSE_FOR_BUDGET, (rules.budget_reason(first["budget"], first["limit"]), now, t.run_id)
        )


def reported(usage: Usage) -> tuple[object, ...]:
    """The attempt's usage columns as reported (NULL where a field was not given), then its model."""
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_creation_tokens,
        usage.cost_usd,
        usage.model,
    )


def set_note(c: sqlite3.Connection, outcome_id: str, lease_token: str, note: str) -> None:
    c.execute(sql.SET_NOTE, (note, outcome_id, lease_token))


def briefed(c: sqlite3.Connection, claim: Claim) -> Claim:
    """The claim with its item's earlier attempts (newest first); read only when the item was claimed before
    (a first attempt has none, unless a retry reset the count)."""
    if not rules.has_earlier_attempts(claim.attempt, retried=claim.retried):
        return claim
    return replace(claim, previous_attempts=previous_attempts(c, claim.outcome_id, claim.lease_token))


def previous_attempts(c: sqlite3.Connection, outcome_id: str, lease_token: str) -> list[PreviousAttempt]:
    """The item's attempts before the one under `lease_token`, newest first (at most PREVIOUS_READ)."""
    return [
        R.previous_attempt_from(a)
        for a in c.execute(sql.PREVIOUS_ATTEMPTS, (outcome_id, lease_token, PREVIOUS_READ))
    ]
