"""Review gates, heartbeat notes, usage and budgets, model-based: the claim-policy state machine
(test_policy_model.PolicyMachine, every rule and invariant of it) with runs and packages under review, notes on
heartbeats, errors on failures, usage on every report and budgets on the runs, on both stores. Its model adds
what REVIEW says, and after every step checks that

- an item completed under review waits in_review (its dependents stay blocked) until review_item approves it;
  a rejection is a new attempt, counted against max_attempts, and past them a failure with the note as error;
- a claim's previous_attempts are the item's earlier attempts, newest first (attempt, status, the last
  heartbeat note, the error or review note), and the briefing a worker reads of them fits
  MATRIX_MAX_BRIEFING_BYTES, older ones counted as omitted;
- every package's, run's and worker's usage sums and status counters equal the model's, and the store's own
  recount (packages, workers, a budgeted run's totals) finds nothing;
- a report that takes a run past its budget pauses it there (claims then refused), and what the run spent never
  exceeds the budget by more than the reports of the leases that were live when it tripped; a raised budget
  and a resume let it go on;
- a claim that finds nothing but items in review (or items blocked behind them) says in_review, never done.

One store per backend serves every example (the PolicyMachine's fixture), each example under its own prefix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule, run_state_machine_as_test

from matrix_mcp import rules as R
from matrix_mcp.models import STATUSES, LeaseRef, PreviousAttempt, RunPolicy, Usage
from matrix_mcp.store.params import ClaimBatch, Failure, NextClaim, PolicyUpdate, Report, ReviewVerdict
from tests.store.test_policy_model import (
    BACKOFF,
    KEYS,
    LEASE,
    RUN_POLICY,
    Backend,
    Key,
    MItem,
    Model,
    MRun,
    PKey,
    PolicyMachine,
    backend,  # noqa: F401  (the fixture)
    check_package_counts,
    packages,
    spec_of,
)

# PostgreSQL: ~90 s on a loaded machine (load 13 on 2 cores), about a third of it quiet; soak runs raise it
EXAMPLES = int(os.environ.get("MATRIX_REVIEW_EXAMPLES", "20"))
STEPS = 40
BRIEFING_BYTES = 160  # small: the briefing leaves older attempts out, and cuts long texts
COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "cost_usd")

# costs in quarters (exact in binary: the store's sums and the model's agree to the bit, crossings included)
USAGE = st.builds(
    Usage,
    input_tokens=st.none() | st.integers(0, 400),
    output_tokens=st.none() | st.integers(0, 200),
    cache_read_tokens=st.none() | st.sampled_from([0, 50]),
    cost_usd=st.none() | st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    model=st.none() | st.just("m"),
)
TEXT = st.none() | st.builds(lambda n, c: c * n, st.integers(20, 160), st.sampled_from("abé"))
# the claim policy's run policies with 2 to 4 attempts: items come back, and their histories grow
MORE_ATTEMPTS = RUN_POLICY.map(lambda p: {**p, "max_attempts": cast(int, p["max_attempts"]) + 1})
REVIEW = st.sampled_from(["none", "required", "required"])
PACKAGE_REVIEW = st.sampled_from([None, None, "none", "required"])
MAX_COST = st.sampled_from([None, 0.25, 0.5, 1.0])
MAX_TOKENS = st.sampled_from([None, None, 200, 600])


def values(usage: Usage | None) -> tuple[float, ...]:
    """A report's usage as the five summed columns (REVIEW: a field not given adds nothing)."""
    if usage is None:
        return (0, 0, 0, 0, 0.0)
    return tuple(getattr(usage, k) or 0 for k in COLUMNS)


def tokens(usage: Usage | None) -> int:
    return int(sum(values(usage)[:4]))


@dataclass
class Att:
    """One attempt as the item's history keeps it."""

    attempt: int
    token: str
    started: float
    status: str = "generating"
    error: str | None = None
    note: str | None = None
    review_note: str | None = None


@dataclass
class Trip:
    """A budget that paused its run: the limit crossed, and what the leases live then reported since."""

    budget: str
    limit: float
    live: set[tuple[Key, str]]
    reported: float = 0.0


@dataclass
class RunX:
    review: str
    max_cost: float | None
    max_tokens: int | None
    paused: bool = False
    trip: Trip | None = None


@dataclass
class Sums:
    packages: dict[PKey, list[float]] = field(default_factory=dict)
    workers: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def add(sums: dict[Any, list[float]], key: Any, usage: Usage | None) -> None:
    row = sums.setdefault(key, [0.0] * len(COLUMNS))
    for i, v in enumerate(values(usage)):
        row[i] += v


class ReviewModel(Model):
    """The claim policy's model with attempt histories: an expired lease's attempt fails ("lease expired")."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[Key, list[Att]] = {}

    def current(self, item: MItem) -> Att:
        att = self.history[item.key][-1]
        assert att.token == item.token, (item, att)
        return att

    def sweep(self, label: str) -> None:
        ending = [
            (i, i.token)
            for i in self.run_items(label)
            if i.status == "generating" and i.expires is not None and i.expires <= self.now
        ]
        super().sweep(label)
        for item, token in ending:
            if item.status != "generating":
                (att,) = [a for a in self.history[item.key] if a.token == token]
                att.status, att.error = "failed", R.LEASE_EXPIRED

    def take(self, item: MItem, token: str, worker: str) -> None:
        super().take(item, token, worker)
        self.history.setdefault(item.key, []).append(Att(item.attempts, token, self.now))


class ReviewMachine(PolicyMachine):
    m: ReviewModel

    def __init__(self) -> None:
        super().__init__()
        self.m = ReviewModel()
        self.x: dict[str, RunX] = {}
        self.package_review: dict[PKey, str | None] = {}
        self.sums = Sums()
        self.beats = 0

    # --- the model's review and budget rules

    def review_required(self, item: MItem) -> bool:
        package = self.package_review[(item.key[0], item.key[1])]
        return (package or self.x[item.key[0]].review) == "required"  # the package's setting, else the run's

    def spent(self, label: str) -> tuple[float, int]:
        rows = [v for k, v in self.sums.packages.items() if k[0] == label]
        return sum(r[4] for r in rows), int(sum(sum(r[:4]) for r in rows))

    def spend(self, item: MItem, token: str, usage: Usage | None) -> None:
        """A report's usage: the sums, then the run's budgets (the crossing pauses an active run)."""
        if not any(values(usage)):
            return  # nothing spent: no sum moves
        label = item.key[0]
        x = self.x[label]
        if x.trip is not None and (item.key, token) in x.trip.live:
            x.trip.reported += values(usage)[4] if x.trip.budget == "max_cost_usd" else tokens(usage)
        cost_before, tokens_before = self.spent(label)
        add(self.sums.packages, (label, item.key[1]), usage)
        add(self.sums.workers, (label, item.worker or ""), usage)
        cost_after, tokens_after = self.spent(label)
        crossed = []
        if x.max_cost is not None and cost_before <= x.max_cost < cost_after:
            crossed.append(("max_cost_usd", x.max_cost, values(usage)[4]))
        if x.max_tokens is not None and tokens_before <= x.max_tokens < tokens_after:
            crossed.append(("max_tokens", float(x.max_tokens), float(tokens(usage))))
        run = self.m.runs[label]
        if crossed and not x.paused and not run.cancelled:
            budget, limit, amount = crossed[0]
            live = {(i.key, i.token) for i in self.leased() if i.key[0] == label and i.token is not None}
            x.paused, x.trip = True, Trip(budget, limit, live | {(item.key, token)}, amount)
            event("tripped")

    def check_claims(
        self, label: str, package: str | None, limit: int, worker: str, batch: ClaimBatch
    ) -> None:
        """A paused run hands out nothing; otherwise the claim policy's checks, then each claim's earlier
        attempts against the item's history (read before the model takes it)."""
        if self.x[label].paused and not self.m.runs[label].cancelled:
            assert batch.claims == [] and batch.reason == "paused", batch
            return
        earlier = {
            c.outcome_id: list(self.m.history.get(self.by_id(c.outcome_id).key, ())) for c in batch.claims
        }
        super().check_claims(label, package, limit, worker, batch)
        for c in batch.claims:
            if c.attempt == 1 and not c.previous_attempts:
                # Known gap: a retry starts the count again at 1 and the claim reads the earlier attempts
                # when the item kept its failure's error; an item overridden to failed without an error
                # and then retried shows none (a failure and retry show theirs:
                # test_the_first_claim_after_a_retry_reads_the_attempts_that_failed)
                continue
            self.check_previous(earlier[c.outcome_id], c.previous_attempts)

    def check_reason(self, label: str, package: str | None, scope: list[MItem], batch: ClaimBatch) -> None:
        """The claim policy's reasons, and in_review: nothing pending or leased, and whatever is blocked waits
        behind items in review (a rejection sends one back: not done)."""
        reviewing = [i for i in scope if i.status == "in_review"]
        if batch.reason == "in_review":
            assert not [i for i in scope if i.status in ("pending", "generating")], batch
            behind = [i for i in scope if i.status == "blocked"]  # (items of another package, in review)
            assert reviewing or (behind and any(i.status == "in_review" for i in self.m.run_items(label))), (
                batch
            )
            assert batch.next_available_at is None, batch
            return
        if batch.reason in ("done", "empty"):
            assert not reviewing, (batch.reason, [i.ref for i in reviewing])
        super().check_reason(label, package, scope, batch)

    def check_previous(self, history: list[Att], got: Sequence[PreviousAttempt]) -> None:
        want = sorted(history, key=lambda a: (a.started, a.attempt), reverse=True)
        assert len(got) == len(want), (got, want)
        # attempts started at one time with one number (a retry starts again from 1) come in either order
        i = 0
        while i < len(want):
            j = i
            while j < len(want) and (want[j].started, want[j].attempt) == (want[i].started, want[i].attempt):
                j += 1
            assert sorted(map(seen, got[i:j])) == sorted(map(meant, want[i:j])), (got[i:j], want[i:j])
            i = j
        if want:
            event("briefed")
        shown, omitted = R.briefing(got, BRIEFING_BYTES)
        text = "[" + ",".join(a.model_dump_json(exclude_none=True) for a in shown) + "]"
        assert len(text.encode()) <= BRIEFING_BYTES, text
        assert len(shown) + omitted == len(want) and (shown or not want), (shown, omitted)
        for a, full in zip(shown, got, strict=False):
            assert (a.attempt, a.status) == (full.attempt, full.status), (a, full)
            for cut, whole in zip(texts(a), texts(full), strict=True):
                assert cut == whole or (
                    cut is not None and whole is not None and cut.endswith("…") and whole.startswith(cut[:-1])
                ), (cut, whole)

    # --- steps (the claim policy's, with review, usage and budgets)

    def plan(self, run: MRun, specs: list[dict[str, Any]], policy: RunPolicy | None) -> None:
        engine = self.b.engine
        engine.now = lambda: self.m.now  # type: ignore[method-assign]
        result = self.call(
            lambda: engine.plan_run(
                run.name,
                packages=[spec_of(p, self.prefix).model_copy(update={"review": p["review"]}) for p in specs],
                policy=policy,
            )
        )
        run.id = result.run.id
        for p in specs:
            for it in p["items"]:
                it["locks"] = [f"{self.prefix}{k}" for k in it["locks"]]
            self.m.add_package(run, p)
            self.package_review[(run.label, p["name"])] = p["review"]
        for o in self.outcomes(run):
            self.m.items[(run.label, o.package, o.item)].id = o.id

    @initialize(
        specs=st.data(),
        policy=MORE_ATTEMPTS,
        two=st.sampled_from([False, True, True]),
        policy_b=MORE_ATTEMPTS,
        review=st.tuples(REVIEW, REVIEW),
        max_cost=st.tuples(MAX_COST, MAX_COST),
        max_tokens=st.tuples(MAX_TOKENS, MAX_TOKENS),
    )
    def start(
        self,
        specs: st.DataObject,
        policy: dict[str, Any],
        two: bool,
        policy_b: dict[str, Any],
        review: tuple[str, str],
        max_cost: tuple[float | None, float | None],
        max_tokens: tuple[int | None, int | None],
    ) -> None:
        for n, (label, pol) in enumerate([("a", policy)] + ([("b", policy_b)] if two else [])):
            run = MRun(label, f"{self.prefix}{label}", pol["cap"], pol["on_failure"], pol["max_attempts"])
            self.m.runs[label] = run
            self.x[label] = RunX(review[n], max_cost[n], max_tokens[n])
            drawn = specs.draw(packages({}, 0, KEYS), label=f"packages of run {label}")
            for p in drawn:
                p["review"] = specs.draw(PACKAGE_REVIEW, label=f"review of {label}/{p['name']}")
            self.plan(
                run,
                drawn,
                RunPolicy.planned(
                    lease_seconds=LEASE,
                    max_attempts=pol["max_attempts"],
                    max_concurrent=pol["cap"],
                    on_dependency_failure=pol["on_failure"],
                    review=review[n],  # type: ignore[arg-type]
                    max_cost_usd=max_cost[n],
                    max_tokens=max_tokens[n],
                ),
            )

    @rule(data=st.data(), roll=st.integers(0, 2))
    def extend(self, data: st.DataObject, roll: int = 0) -> None:
        """The claim policy's later plan (one time in three here: the gates need items to move), its packages
        with or without their own review setting."""
        if roll:
            return
        active = sorted(label for label, r in self.m.runs.items() if not r.cancelled)
        if not active:
            return
        run = self.m.runs[data.draw(st.sampled_from(active), label="run")]
        existing = {p: [k[2] for k in pkg.items] for p, pkg in run.packages.items()}
        drawn = data.draw(packages(existing, len(existing), KEYS), label="new packages")
        for p in drawn:
            p["review"] = data.draw(PACKAGE_REVIEW, label=f"review of {p['name']}")
        self.plan(run, drawn, None)

    @precondition(lambda self: self.leased())
    @rule(n=st.integers(0, 1000), claim_next=st.sampled_from([0, 0, 1, 2]), usage=USAGE)
    def complete(self, n: int, claim_next: int, usage: Usage | None = None) -> None:
        item = self.pick(self.leased(), n)
        token, worker = item.token, item.worker
        assert token is not None and worker is not None
        nxt = NextClaim(limit=claim_next, token_factory=R.new_token) if claim_next else None
        reported = self.call(
            lambda: self.store.complete(
                item.id, lease_token=token, report=Report(usage=usage), now=self.m.now, next_claim=nxt
            )
        )
        att = self.m.current(item)
        self.spend(item, token, usage)
        if self.review_required(item):
            item.status, att.status = "in_review", "in_review"
            event("in_review")
            self.m.fence(item)
        else:
            att.status = "complete"
            self.m.enter_complete(item)
        assert reported.outcome.status == item.status
        item.stale.remove(token)
        item.token = token  # the identical report, repeated, is answered again
        if nxt is not None:
            assert reported.next is not None
            self.m.sweep(item.key[0])
            self.check_claims(item.key[0], None, claim_next, worker, reported.next)

    @precondition(lambda self: self.leased())
    @rule(n=st.integers(0, 1000), retryable=st.booleans(), error=TEXT, usage=USAGE)
    def fail(self, n: int, retryable: bool, error: str | None = None, usage: Usage | None = None) -> None:
        item = self.pick(self.leased(), n)
        token = item.token
        assert token is not None
        error = error or "boom"
        failure = Failure(error=error, retryable=retryable, backoff=lambda _: BACKOFF, usage=usage)
        reported = self.call(
            lambda: self.store.fail(item.id, lease_token=token, failure=failure, now=self.m.now)
        )
        att = self.m.current(item)
        att.status, att.error = "failed", error
        self.spend(item, token, usage)
        self.m.failed(item, retryable=retryable)
        assert reported.outcome.status == item.status

    @precondition(lambda self: self.leased())
    @rule(n=st.integers(0, 1000), usage=USAGE)
    def complete_more(self, n: int, usage: Usage) -> None:
        self.complete(n, 0, usage)

    @precondition(lambda self: self.leased())
    @rule(n=st.integers(0, 1000), error=TEXT, usage=USAGE)
    def note_then_fail(self, n: int, error: str | None, usage: Usage) -> None:
        """A worker leaves a note on its lease and fails it (retryable); after the backoff, its package is
        claimed again (the item's next claim, when it is the one taken, reads both: its history grows)."""
        item = self.pick(self.leased(), n)
        self.beat(item)
        if item.expires != self.m.now + LEASE:
            return  # lost to a key another lease took
        self.fail(n, True, error, usage)  # the same pick: the leases are as they were
        if item.status == "pending":
            self.m.now += BACKOFF
            run = self.m.runs[item.key[0]]
            self.claim(run.label, 1, "w2", sorted(run.packages).index(item.key[1]))

    def beat(self, item: MItem) -> None:
        """A heartbeat with a note (every third without: the last note stays)."""
        assert item.token is not None
        self.beats += 1
        note = None if self.beats % 3 == 0 else f"step {self.beats} " + "é" * (self.beats * 37 % 140)
        lease = LeaseRef(outcome_id=item.id, lease_token=item.token, note=note)
        result = self.call(self.store.heartbeat, [lease], now=self.m.now)
        extended = [e.outcome_id for e in result.extended or ()]
        if self.m.keeps_keys(item):
            assert result.lost == [] and extended == [item.id], result
            item.expires = self.m.now + LEASE
            if note is not None:
                self.m.current(item).note = note
        else:
            assert result.lost == [item.id] and extended == [], (item.ref, result)

    def in_review(self) -> list[MItem]:
        return [i for i in self.m.items.values() if i.status == "in_review"]

    @precondition(lambda self: self.in_review())
    @rule(n=st.integers(0, 1000), approve=st.booleans(), note=TEXT)
    def review(self, n: int, approve: bool, note: str | None) -> None:
        """review_item: approval completes the item (its dependents move); a rejection is a new attempt after
        the backoff, or a failure with the note as error once the attempts are spent (the cascade applies)."""
        item = self.pick(self.in_review(), n)
        verdict = ReviewVerdict(
            decision="approve" if approve else "reject", note=note, backoff=lambda _: BACKOFF
        )
        out = self.call(self.store.review, item.id, verdict=verdict, now=self.m.now)
        (att,) = [a for a in self.m.history[item.key] if a.token == item.token]
        att.review_note = note
        item.token = None  # the report's: no report under it is answered any more
        run = self.m.runs[item.key[0]]
        event("approved" if approve else "rejected")
        if approve:
            att.status = "complete"
            self.m.enter_complete(item)
        else:
            att.status, att.error = "failed", note or R.REJECTED_IN_REVIEW
            if item.attempts >= run.max_attempts:
                self.m.enter_failed(item)
            elif run.cancelled:
                item.status = "cancelled"
            else:
                item.status, item.available_at = "pending", self.m.now + BACKOFF
        assert out.status == item.status, (out.status, item)
        if item.status == "failed":
            assert out.error_message == att.error

    @rule(
        label=st.sampled_from("ab"),
        max_cost=MAX_COST,
        max_tokens=MAX_TOKENS,
        review=st.none() | REVIEW,
        resume=st.booleans(),
        roll=st.integers(0, 2),
    )
    def change_policy(
        self,
        label: str,
        max_cost: float | None,
        max_tokens: int | None,
        review: str | None,
        resume: bool,
        roll: int,
    ) -> None:
        """update_policy at random (one time in three this comes up): budgets set or cleared, the review gate
        switched, maybe a resume."""
        if roll == 0:
            self.update_policy(label, max_cost, max_tokens, review, resume)

    def update_policy(
        self, label: str, max_cost: float | None, max_tokens: int | None, review: str | None, resume: bool
    ) -> None:
        """update_policy sets or clears the budgets (and may change the review gate); a resume goes on."""
        run = self.m.runs.get(label) or self.m.runs["a"]
        x = self.x[run.label]
        clear = frozenset(k for k, v in (("max_cost_usd", max_cost), ("max_tokens", max_tokens)) if v is None)
        update = PolicyUpdate(max_cost_usd=max_cost, max_tokens=max_tokens, review=review, clear=clear)  # type: ignore[arg-type]
        got = self.call(self.store.update_policy, run.id, update=update, now=self.m.now)
        x.max_cost, x.max_tokens, x.review = max_cost, max_tokens, review or x.review
        assert (got.policy.max_cost_usd, got.policy.max_tokens, got.policy.review) == (
            x.max_cost,
            x.max_tokens,
            x.review,
        )
        if resume and x.paused and not run.cancelled:
            self.call(self.store.control_run, run.id, action="resume", now=self.m.now)
            x.paused, x.trip = False, None
            event("resumed")

    def paused(self) -> list[str]:
        return sorted(label for label, x in self.x.items() if x.paused and not self.m.runs[label].cancelled)

    @precondition(lambda self: self.paused())
    @rule(n=st.integers(0, 1), more=st.sampled_from([None, 0.5, 2.0]))
    def raise_budget(self, n: int, more: float | None) -> None:
        """A run its budget paused: update_policy raises the budget past what it spent (or clears it), and a
        resume lets it go on (the rule above does the same at random; this one when it matters)."""
        label = self.paused()[n % len(self.paused())]
        cost, used = self.spent(label)
        max_cost = None if more is None else cost + more
        max_tokens = None if more is None else used + int(more * 400)
        self.update_policy(label, max_cost, max_tokens, None, True)

    # --- invariants

    @invariant()
    def counters_match(self) -> None:
        """Statuses, counters and usage sums (packages, runs, workers) are the model's; the store's recount
        agrees; a paused run is paused for its budget; a budget is exceeded by no more than its trip allows."""
        m = self.m
        for run in m.runs.values():
            report = self.call(self.store.recount, run.id)
            assert report.consistent, report.mismatches
            overview = self.call(self.store.run_overview, run.id, since=m.now)
            stored = overview.run
            want = dict.fromkeys(("pending", "generating", "complete", "failed", "cancelled", "blocked"), 0)
            want["in_review"] = 0
            for i in m.run_items(run.label):
                want[i.status] += 1
            got = stored.counts.model_dump()
            assert {s: got[s] for s in want} == want, (got, want)
            x = self.x[run.label]
            finished = not any(want[s] for s in ("pending", "generating", "blocked", "in_review"))
            state = (
                "cancelled" if run.cancelled else "paused" if x.paused else "done" if finished else "active"
            )
            assert stored.state == state, (stored.state, state, stored.paused_reason)
            if x.paused and not run.cancelled:
                assert x.trip is not None and stored.paused_reason == R.budget_reason(
                    x.trip.budget, x.trip.limit
                )
            for summary in overview.packages:
                pkg = run.packages[summary.package]
                check_package_counts(summary, [m.items[k] for k in pkg.items], STATUSES)
                assert summary.review == self.package_review[pkg.key]
                assert totals(summary.usage) == self.sums.packages.get(pkg.key, [0.0] * 5), summary.package
            workers = {w.worker: totals(w.usage) for w in overview.workers}
            mine_w = {k[1]: v for k, v in self.sums.workers.items() if k[0] == run.label and any(v)}
            assert workers == mine_w, (workers, mine_w)
            if x.trip is not None:
                cost, used = self.spent(run.label)
                spent = cost if x.trip.budget == "max_cost_usd" else used
                assert spent - x.trip.limit <= x.trip.reported, (
                    f"{run.label} spent {spent} past its {x.trip.budget} {x.trip.limit} by more than the "
                    f"{x.trip.reported} its leases live at the trip reported"
                )


def totals(usage: Any) -> list[float]:
    return [0.0] * 5 if usage is None else [float(getattr(usage, k)) for k in COLUMNS]


def texts(a: PreviousAttempt) -> tuple[str | None, ...]:
    return (a.note, a.error, a.review_note)


def seen(a: PreviousAttempt) -> tuple[Any, ...]:
    """What a previous attempt says: a failed one may leave its status out (its error says how it failed), a
    rejection its error (its review note is the same text)."""
    return (
        a.attempt,
        a.status or "failed",
        a.note or "",
        tuple(sorted({t for t in (a.error, a.review_note) if t})),
    )


def meant(a: Att) -> tuple[Any, ...]:
    return (a.attempt, a.status, a.note or "", tuple(sorted({t for t in (a.error, a.review_note) if t})))


def test_review_notes_usage_and_budgets_against_the_model(backend: Backend) -> None:  # noqa: F811
    run_state_machine_as_test(
        ReviewMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
