"""The claim policy (dependencies, priorities, exclusive lock keys, concurrency caps), model-based: a Hypothesis
state machine drives a store (SQLite and PostgreSQL) and a pure Python model of the rules in POLICY terms side by
side, through random DAGs and random claims, completions, failures, lease expiries (a fake clock: the store
takes `now`), heartbeats, retries, cancels and overrides, and checks after every step that

- no item is claimed, or generating, before its prerequisites are complete;
- no lock key is held by two live leases at any moment (keys are store-wide: two runs share the key pool);
- no package or run max_concurrent cap is exceeded;
- a claim takes only ready items, highest priority first: no eligible item of a higher priority is left
  while a lower one is taken, and a short batch leaves nothing eligible behind (its reason fits);
- every status, attempt count and counter (package summaries, the run's counts, the store's recount) is the
  model's.

Plans go through the engine (its validation and ref resolution), every other call through the store with an
explicit `now`. One store per backend serves every example; an example's runs and lock keys carry its own
prefix, so examples never see each other.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from matrix_mcp import rules as R
from matrix_mcp.config import Settings, is_postgres_url
from matrix_mcp.engine import Engine
from matrix_mcp.errors import StaleLease
from matrix_mcp.models import ItemSpec, LeaseRef, Outcome, PackageSpec, RunPolicy
from matrix_mcp.store.params import (
    ClaimBatch,
    ClaimRequest,
    Failure,
    NextClaim,
    OutcomeFilter,
    Report,
    StatusChange,
)
from matrix_mcp.store.protocol import Store

T = TypeVar("T")

LEASE = 10.0
BACKOFF = 3.0
START = 1_900_000_000.0
KEYS = ("file:a", "file:b", "api:c")  # a small pool: keys collide, within a run and across the two runs
EXAMPLES = int(os.environ.get("MATRIX_POLICY_EXAMPLES", "30"))  # bench/soak-style longer runs: raise it
STEPS = 30

# ---- the model -------------------------------------------------------------------------------------------

Key = tuple[str, str, str]  # (run label, package, item)
PKey = tuple[str, str]  # (run label, package)


@dataclass
class MItem:
    key: Key
    priority: int
    locks: frozenset[str]
    item_prereqs: set[Key]
    pkg_prereqs: set[PKey]
    waiting: int
    status: str
    id: str = ""
    attempts: int = 0
    available_at: float = 0.0
    token: str | None = None
    expires: float | None = None
    worker: str | None = None
    cancelled_by: Key | None = None
    stale: list[str] = field(default_factory=list)  # tokens that no longer hold the item

    @property
    def ref(self) -> str:
        return f"{self.key[1]}/{self.key[2]}"


@dataclass
class MPackage:
    key: PKey
    priority: int
    cap: int | None
    items: list[Key] = field(default_factory=list)


@dataclass
class MRun:
    label: str
    name: str
    cap: int | None
    on_failure: str
    max_attempts: int
    id: str = ""
    packages: dict[str, MPackage] = field(default_factory=dict)
    cancelled: bool = False


class Model:
    """The rules of POLICY.md over plain Python objects (no store, no SQL)."""

    def __init__(self) -> None:
        self.now = START
        self.runs: dict[str, MRun] = {}
        self.items: dict[Key, MItem] = {}
        self.taken: dict[str, tuple[Key, str]] = {}  # lock key → the item and lease that took it last
        self.dependents: dict[Key, set[Key]] = {}  # item → items with an item edge on it
        self.pkg_dependents: dict[PKey, set[Key]] = {}  # package → items waiting for all of it

    # --- reading

    def package(self, key: Key | PKey) -> MPackage:
        return self.runs[key[0]].packages[key[1]]

    def run_items(self, label: str, package: str | None = None) -> list[MItem]:
        return [i for k, i in self.items.items() if k[0] == label and (package is None or k[1] == package)]

    def package_complete(self, pkey: PKey) -> bool:
        return all(self.items[k].status == "complete" for k in self.package(pkey).items)

    def live(self, item: MItem) -> bool:
        return item.status == "generating" and item.expires is not None and item.expires > self.now

    def holders(self, lock: str) -> list[MItem]:
        return [i for i in self.items.values() if lock in i.locks and self.live(i)]

    def generating(self, items: list[MItem]) -> int:
        return sum(i.status == "generating" for i in items)

    def sort_key(self, item: MItem) -> tuple[int, int]:
        return (self.package(item.key).priority, item.priority)

    def unmet(self, item: MItem) -> list[str]:
        out = [self.items[k].ref for k in item.item_prereqs if self.items[k].status != "complete"]
        out += [f"{p[1]}/*" for p in item.pkg_prereqs if not self.package_complete(p)]
        return sorted(out)

    def blockers(self, item: MItem) -> set[str]:
        """Every reason a claim may not take `item` now (none: it is eligible)."""
        if item.status != "pending":
            return {item.status}
        out = set()
        if item.available_at > self.now:
            out.add("backing_off")
        if any(h is not item for k in item.locks for h in self.holders(k)):
            out.add("locked")
        pkg, run = self.package(item.key), self.runs[item.key[0]]
        if pkg.cap is not None and self.generating([self.items[k] for k in pkg.items]) >= pkg.cap:
            out.add("capped")
        if run.cap is not None and self.generating(self.run_items(run.label)) >= run.cap:
            out.add("capped")
        return out

    def eligible(self, item: MItem) -> bool:
        return not self.blockers(item)

    # --- planning

    def add_package(self, run: MRun, spec: dict[str, Any]) -> None:
        pkey = (run.label, spec["name"])
        run.packages[spec["name"]] = MPackage(pkey, spec["priority"], spec["cap"])
        for it in spec["items"]:
            key = (run.label, spec["name"], it["name"])
            item_prereqs: set[Key] = set()
            pkg_prereqs: set[PKey] = {(run.label, p) for p in spec["after"]}
            for ref in it["after"]:
                pkg_name, _, name = ref.rpartition("/")
                pkg_name = pkg_name or spec["name"]
                if name == "*":
                    pkg_prereqs.add((run.label, pkg_name))
                else:
                    item_prereqs.add((run.label, pkg_name, name))
            # a prerequisite already complete at plan time counts as met
            waiting = sum(self.items[k].status != "complete" for k in item_prereqs)
            waiting += sum(not self.package_complete(p) for p in pkg_prereqs)
            self.items[key] = MItem(
                key,
                it["priority"],
                frozenset(it["locks"]),
                item_prereqs,
                pkg_prereqs,
                waiting,
                "blocked" if waiting else "pending",
                available_at=self.now,
            )
            run.packages[spec["name"]].items.append(key)
            for k in item_prereqs:
                self.dependents.setdefault(k, set()).add(key)
            for p in pkg_prereqs:
                self.pkg_dependents.setdefault(p, set()).add(key)

    # --- transitions

    def fence(self, item: MItem) -> None:
        if item.token is not None:
            item.stale.append(item.token)
        item.token = None
        item.expires = None

    def enter_complete(self, item: MItem) -> None:
        item.status = "complete"
        self.fence(item)
        for d in self.dependents.get(item.key, ()):
            self.one_less(self.items[d])
        pkey = (item.key[0], item.key[1])
        if self.package_complete(pkey):
            for d in self.pkg_dependents.get(pkey, ()):
                self.one_less(self.items[d])

    def one_less(self, d: MItem) -> None:
        d.waiting -= 1
        assert d.waiting >= 0, d
        if d.waiting == 0 and d.status == "blocked":
            d.status, d.available_at = "pending", self.now

    def failed(self, item: MItem, *, retryable: bool) -> None:
        """A failure report of the item's live lease: cancelled in a cancelled run, back to pending after the
        backoff while attempts are left, else failed for good."""
        run = self.runs[item.key[0]]
        if retryable and run.cancelled:
            item.status = "cancelled"
            self.fence(item)
        elif retryable and item.attempts < run.max_attempts:
            item.status, item.available_at = "pending", self.now + BACKOFF
            self.fence(item)
        else:
            self.enter_failed(item)

    def enter_failed(self, item: MItem) -> None:
        item.status = "failed"
        self.fence(item)
        if self.runs[item.key[0]].on_failure != "cancel":
            return
        todo = [item.key]
        while todo:
            k = todo.pop()
            nxt = set(self.dependents.get(k, ())) | set(self.pkg_dependents.get((k[0], k[1]), ()))
            for d in sorted(nxt):
                dep = self.items[d]
                if dep.status == "blocked":
                    dep.status, dep.cancelled_by = "cancelled", item.key
                    todo.append(d)

    def retry(self, item: MItem) -> None:
        assert item.status == "failed"
        item.status, item.attempts, item.available_at = "pending", 0, self.now
        for d in self.items.values():
            if d.cancelled_by == item.key and d.status == "cancelled":
                assert d.waiting > 0, d
                d.status, d.cancelled_by = "blocked", None

    def sweep(self, label: str) -> None:
        """Expired leases of the run go back to pending, or fail once attempts are spent (a cancelled run's
        leases stay with their workers)."""
        if self.runs[label].cancelled:
            return
        for item in self.run_items(label):
            if item.status == "generating" and item.expires is not None and item.expires <= self.now:
                if item.attempts >= self.runs[label].max_attempts:
                    self.enter_failed(item)
                else:
                    item.status, item.available_at, item.expires = "pending", self.now, None
                    if item.token is not None:
                        item.stale.append(item.token)
                    item.token = None

    def take(self, item: MItem, token: str, worker: str) -> None:
        item.status, item.token, item.worker = "generating", token, worker
        item.attempts += 1
        item.expires = self.now + LEASE
        for k in item.locks:
            self.taken[k] = (item.key, token)

    def keeps_keys(self, item: MItem) -> bool:
        """A lease that ran out keeps its lock keys only while no other lease took one since."""
        if item.expires is None or item.expires > self.now or item.token is None:
            return True
        return all(self.taken.get(k) == (item.key, item.token) for k in item.locks)


# ---- the plans ---------------------------------------------------------------------------------------------


@st.composite
def packages(draw: st.DrawFn, existing: dict[str, list[str]], first: int, keys: tuple[str, ...]) -> list[Any]:
    """New packages p{first}..: each item may wait for earlier items ("pkg/item", or a bare "item" of its own
    package), for earlier packages ("pkg/*"), and its package for earlier packages: always a DAG."""
    earlier = dict(existing)
    out = []
    for n in range(first, first + draw(st.integers(1, 3))):
        name = f"p{n}"
        after = draw(st.lists(st.sampled_from(sorted(earlier)), max_size=2, unique=True)) if earlier else []
        items: list[dict[str, Any]] = []
        for j in range(draw(st.integers(1, 4))):
            refs = [f"{p}/{i}" for p, its in earlier.items() for i in its] + [f"{p}/*" for p in earlier]
            refs += [it["name"] for it in items] + [f"{name}/{it['name']}" for it in items]
            chosen = draw(st.lists(st.sampled_from(refs), max_size=3, unique=True)) if refs else []
            items.append(
                {
                    "name": f"i{j}",
                    "after": chosen,
                    "priority": draw(st.sampled_from([0, 0, 1, -1])),
                    "locks": draw(st.lists(st.sampled_from(keys), max_size=2, unique=True)),
                }
            )
        out.append(
            {
                "name": name,
                "after": after,
                "priority": draw(st.sampled_from([0, 0, 1, 2])),
                "cap": draw(st.sampled_from([None, None, 1, 2])),
                "items": items,
            }
        )
        earlier[name] = [it["name"] for it in items]
    return out


def spec_of(p: dict[str, Any], prefix: str) -> PackageSpec:
    return PackageSpec(
        name=p["name"],
        after=p["after"],
        priority=p["priority"],
        max_concurrent=p["cap"],
        items=[
            ItemSpec(
                name=it["name"],
                after=it["after"],
                priority=it["priority"],
                locks=[f"{prefix}{k}" for k in it["locks"]],
            )
            for it in p["items"]
        ],
    )


RUN_POLICY = st.fixed_dictionaries(
    {
        "cap": st.sampled_from([None, None, 1, 2, 3]),
        "on_failure": st.sampled_from(["cancel", "block"]),
        "max_attempts": st.integers(1, 3),
    }
)


# ---- the machine ---------------------------------------------------------------------------------------------


@dataclass
class Backend:
    portal: BlockingPortal
    engine: Engine
    examples: Iterator[int]

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) on the portal's event loop, where the store lives."""
        return self.portal.call(partial(fn, *args, **kwargs))


BACKEND: Backend | None = None


POLICY_STATUSES = ("pending", "generating", "complete", "failed", "cancelled", "blocked")


def check_package_counts(summary: Any, items: list[Any], statuses: tuple[str, ...]) -> None:
    """A package summary's counter of each status equals the model's items in it."""
    counted = tuple(
        getattr(summary, "completed_items" if s == "complete" else f"{s}_items") for s in statuses
    )
    expected = tuple(sum(i.status == s for i in items) for s in statuses)
    assert counted == expected, (summary.package, counted, expected)


class PolicyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert BACKEND is not None
        self.b = BACKEND
        self.store: Store = BACKEND.engine.store
        self.prefix = f"x{next(BACKEND.examples)}-"
        self.m = Model()
        self.claims = 0
        # Known gap, PostgreSQL: a claim in a run with lock keys can still come back short while an item is
        # eligible (the next claim takes it; order, keys, caps and dependencies hold): no-short-batch is
        # checked where the store guarantees it (SQLite)
        self.full_batches = not is_postgres_url(BACKEND.engine.settings.database_url)

    # --- helpers

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return self.b.call(fn, *args, **kwargs)

    def plan(self, run: MRun, specs: list[dict[str, Any]], policy: RunPolicy | None) -> None:
        engine = self.b.engine
        engine.now = lambda: self.m.now  # type: ignore[method-assign]
        result = self.call(
            lambda: engine.plan_run(
                run.name, packages=[spec_of(p, self.prefix) for p in specs], policy=policy
            )
        )
        run.id = result.run.id
        for p in specs:
            for it in p["items"]:
                it["locks"] = [f"{self.prefix}{k}" for k in it["locks"]]
            self.m.add_package(run, p)
        for o in self.outcomes(run):
            self.m.items[(run.label, o.package, o.item)].id = o.id

    def outcomes(self, run: MRun) -> list[Outcome]:
        page = self.call(self.store.list_outcomes, OutcomeFilter(run_id=run.id), limit=1000)
        assert page.next_cursor is None
        return page.outcomes

    def pick(self, items: list[MItem], n: int) -> MItem:
        return sorted(items, key=lambda i: i.key)[n % len(items)]

    def by_id(self, outcome_id: str) -> MItem:
        (item,) = [i for i in self.m.items.values() if i.id == outcome_id]
        return item

    def leased(self) -> list[MItem]:
        return [i for i in self.m.items.values() if i.status == "generating" and i.token is not None]

    def check_claims(
        self, label: str, package: str | None, limit: int, worker: str, batch: ClaimBatch
    ) -> None:
        """The batch against the model (which has swept the run): every claimed item ready and eligible, taken
        in priority order, none left eligible by a short batch; then the model takes them."""
        m = self.m
        scope = m.run_items(label, package)
        if m.runs[label].cancelled:
            assert batch.claims == [] and batch.reason == "cancelled", batch
            return
        got = [self.by_id(c.outcome_id) for c in batch.claims]
        assert len(got) <= limit and len({i.key for i in got}) == len(got)
        for c, item in zip(batch.claims, got, strict=True):
            assert item in scope, (c, package)
            assert c.attempt == item.attempts + 1, (item, c)
            assert m.unmet(item) == [], f"{item.ref} claimed before {m.unmet(item)} completed"
        taken = {i.key for i in got}
        for item in sorted(got, key=m.sort_key, reverse=True):
            why = m.blockers(item)
            assert not why, f"{item.ref} claimed but {why} (model: {item})"
            better = [
                e.ref
                for e in scope
                if e.key not in taken and m.eligible(e) and m.sort_key(e) > m.sort_key(item)
            ]
            assert not better, f"{item.ref} {m.sort_key(item)} taken before eligible {better}"
            claim = next(c for c in batch.claims if c.outcome_id == item.id)
            m.take(item, claim.lease_token, worker)
            assert claim.lease_expires_at == pytest.approx(item.expires)
        self.claims += len(got)
        if len(got) == limit:
            return
        left = [e.ref for e in scope if m.eligible(e)]
        assert not left or not self.full_batches, f"short batch ({batch.reason}) left eligible {left}"
        self.check_reason(label, package, scope, batch)

    def check_reason(self, label: str, package: str | None, scope: list[MItem], batch: ClaimBatch) -> None:
        m = self.m
        reason = batch.reason
        open_ = [i for i in scope if i.status in ("pending", "generating", "blocked")]
        why = set().union(*(m.blockers(i) for i in scope))
        if not open_:
            assert reason in ("done", "empty"), reason
        elif reason == "done":
            raise AssertionError(f"reason done with open items {[i.ref for i in open_]}")
        elif reason in ("locked", "capped", "backing_off", "blocked"):
            assert reason in why, (reason, why)
        elif reason == "all_leased":
            assert "generating" in why, why
        else:
            raise AssertionError(f"unexpected reason {reason!r}")
        if reason in ("locked", "capped", "all_leased"):
            leases = {i.expires for i in m.items.values() if i.status == "generating"}
            assert batch.next_available_at is not None and any(
                batch.next_available_at == pytest.approx(e) for e in leases
            ), (reason, batch.next_available_at, leases)
        if reason == "blocked" and package is None:
            expiries = [
                i.expires for i in m.run_items(label) if i.status == "generating" and i.expires is not None
            ]
            if expiries:
                assert batch.next_available_at == pytest.approx(min(expiries)), batch
            else:
                assert batch.next_available_at is None, batch

    # --- steps

    @initialize(
        specs=st.data(),
        policy=RUN_POLICY,
        two=st.sampled_from([False, True, True]),  # the second run shares the key pool
        policy_b=RUN_POLICY,
    )
    def start(
        self, specs: st.DataObject, policy: dict[str, Any], two: bool, policy_b: dict[str, Any]
    ) -> None:
        for label, pol in [("a", policy)] + ([("b", policy_b)] if two else []):
            run = MRun(label, f"{self.prefix}{label}", pol["cap"], pol["on_failure"], pol["max_attempts"])
            self.m.runs[label] = run
            drawn = specs.draw(packages({}, 0, KEYS), label=f"packages of run {label}")
            self.plan(
                run,
                drawn,
                RunPolicy.planned(
                    lease_seconds=LEASE,
                    max_attempts=pol["max_attempts"],
                    max_concurrent=pol["cap"],
                    on_dependency_failure=pol["on_failure"],
                ),
            )

    @rule(data=st.data())
    def extend(self, data: st.DataObject) -> None:
        """A later plan adds packages whose items may wait for the run's existing items and packages."""
        active = sorted(label for label, r in self.m.runs.items() if not r.cancelled)
        if not active:
            return
        run = self.m.runs[data.draw(st.sampled_from(active), label="run")]
        existing = {p: [k[2] for k in pkg.items] for p, pkg in run.packages.items()}
        drawn = data.draw(packages(existing, len(existing), KEYS), label="new packages")
        self.plan(run, drawn, None)

    @rule(
        label=st.sampled_from("ab"),
        limit=st.integers(1, 4),
        worker=st.sampled_from(["w1", "w2"]),
        one_package=st.none() | st.integers(0, 100),
    )
    def claim(self, label: str, limit: int, worker: str, one_package: int | None) -> None:
        run = self.m.runs.get(label) or self.m.runs["a"]
        package = None
        if one_package is not None:
            package = sorted(run.packages)[one_package % len(run.packages)]
        request = ClaimRequest(
            run_id=run.id, worker=worker, limit=limit, package=package, token_factory=R.new_token
        )
        batch = self.call(self.store.claim, request, now=self.m.now)
        self.m.sweep(run.label)
        self.check_claims(run.label, package, limit, worker, batch)

    @precondition(lambda self: self.leased())
    @rule(n=st.integers(0, 1000), claim_next=st.sampled_from([0, 0, 1, 2]))
    def complete(self, n: int, claim_next: int) -> None:
        item = self.pick(self.leased(), n)
        token, worker = item.token, item.worker
        assert token is not None and worker is not None
        nxt = NextClaim(limit=claim_next, token_factory=R.new_token) if claim_next else None
        reported = self.call(
            lambda: self.store.complete(
                item.id, lease_token=token, report=Report(), now=self.m.now, next_claim=nxt
            )
        )
        assert reported.outcome.status == "complete"
        self.m.enter_complete(item)
        item.stale.remove(token)
        item.token = token  # the identical report, repeated, is answered again
        if nxt is not None:
            assert reported.next is not None
            self.m.sweep(item.key[0])
            self.check_claims(item.key[0], None, claim_next, worker, reported.next)

    # claims and completions drive everything else: each has a second rule, so they come up more often

    @rule(label=st.sampled_from("ab"), limit=st.integers(1, 3))
    def claim_again(self, label: str, limit: int) -> None:
        self.claim(label, limit, "w3", None)

    @precondition(lambda self: self.leased())
    @rule(n=st.integers(0, 1000))
    def complete_again(self, n: int) -> None:
        self.complete(n, 0)

    @precondition(lambda self: self.leased())
    @rule(n=st.integers(0, 1000), retryable=st.booleans())
    def fail(self, n: int, retryable: bool) -> None:
        item = self.pick(self.leased(), n)
        token = item.token
        assert token is not None
        failure = Failure(error="boom", retryable=retryable, backoff=lambda _: BACKOFF)
        reported = self.call(
            lambda: self.store.fail(item.id, lease_token=token, failure=failure, now=self.m.now)
        )
        self.m.failed(item, retryable=retryable)
        assert reported.outcome.status == item.status

    @precondition(lambda self: any(i.stale for i in self.m.items.values()))
    @rule(n=st.integers(0, 1000))
    def late_report(self, n: int) -> None:
        """A report under a token that no longer holds its item is refused and changes nothing (locks
        included: the invariants run next)."""
        item = self.pick([i for i in self.m.items.values() if i.stale], n)
        token = item.stale[n % len(item.stale)]
        with pytest.raises(StaleLease):
            self.call(
                lambda: self.store.complete(item.id, lease_token=token, report=Report(), now=self.m.now)
            )

    @precondition(lambda self: self.leased())
    @rule(n=st.integers(0, 1000), ran_out=st.booleans())
    def heartbeat(self, n: int, ran_out: bool) -> None:
        """A heartbeat, half the time on a lease that ran out (when there is one): it is extended, or lost when
        another lease took one of its lock keys since."""
        expired = [i for i in self.leased() if i.expires is not None and i.expires <= self.m.now]
        self.beat(self.pick(expired if ran_out and expired else self.leased(), n))

    @precondition(lambda self: len(self.m.runs) == 2 and any(i.locks for i in self.leased()))
    @rule(n=st.integers(0, 1000), limit=st.integers(1, 4))
    def take_over(self, n: int, limit: int) -> None:
        """A lease with lock keys runs out; the other run's claim may take its keys (keys are store-wide, a
        claim sweeps only its own run); then the first lease's worker sends its heartbeat."""
        item = self.pick([i for i in self.leased() if i.locks], n)
        assert item.expires is not None
        self.m.now = max(self.m.now, item.expires + 0.5)
        self.claim("b" if item.key[0] == "a" else "a", limit, "w4", None)
        self.beat(item)

    def beat(self, item: MItem) -> None:
        assert item.token is not None
        lease = LeaseRef(outcome_id=item.id, lease_token=item.token)
        result = self.call(self.store.heartbeat, [lease], now=self.m.now)
        extended = [e.outcome_id for e in result.extended or ()]
        if self.m.keeps_keys(item):
            assert result.lost == [] and extended == [item.id], result
            item.expires = self.m.now + LEASE
        else:  # extending it would make two live leases of one key
            assert result.lost == [item.id] and extended == [], (item.ref, result)

    @rule(seconds=st.sampled_from([0.5, 2.0, 4.0, 9.0, 11.0]))
    def advance(self, seconds: float) -> None:
        """Time passes: leases run out (and go back at the run's next claim), backoffs end."""
        self.m.now += seconds

    def failed(self) -> list[MItem]:
        return [
            i for i in self.m.items.values() if i.status == "failed" and not self.m.runs[i.key[0]].cancelled
        ]

    @precondition(lambda self: self.failed())
    @rule(n=st.integers(0, 1000), whole_run=st.booleans())
    def retry(self, n: int, whole_run: bool) -> None:
        failed = self.failed()
        item = self.pick(failed, n)
        run = self.m.runs[item.key[0]]
        chosen = [i for i in failed if i.key[0] == run.label] if whole_run else [item]
        ids = None if whole_run else [item.id]
        moved = self.call(self.store.retry, run.id, outcome_ids=ids, now=self.m.now)
        assert sorted(moved) == sorted(i.id for i in chosen)
        for i in chosen:
            self.m.retry(i)

    @precondition(lambda self: self.overridable("cancelled"))
    @rule(n=st.integers(0, 1000), status=st.sampled_from(["cancelled", "complete", "failed"]))
    def override(self, n: int, status: str) -> None:
        """update_status: cancel an item (no cascade), or set it complete (its dependents ready) or failed
        (a failure for good: the cascade)."""
        items = self.overridable(status) or self.overridable("cancelled")
        item = self.pick(items, n)
        status = status if self.overridable(status) else "cancelled"
        change = StatusChange(status=status)  # type: ignore[arg-type]
        out = self.call(self.store.update_status, item.id, change=change, now=self.m.now)
        assert out.status == status
        if status == "complete":
            self.m.enter_complete(item)
        elif status == "failed":
            self.m.enter_failed(item)
        else:
            item.status = "cancelled"
            self.m.fence(item)

    def overridable(self, status: str) -> list[MItem]:
        """Items an override moves without touching what POLICY leaves open (a blocked item set failed and
        then retried, a prerequisite leaving complete, a cascade walking through a cancelled item)."""
        ok = {"cancelled": ("pending", "generating"), "complete": ("pending", "generating", "blocked")}
        out = [i for i in self.m.items.values() if i.status in ok.get(status, ("pending", "generating"))]
        if status == "cancelled":
            leaves = [
                i
                for i in self.m.items.values()
                if i.status == "blocked"
                and not self.m.dependents.get(i.key)
                and not self.m.pkg_dependents.get((i.key[0], i.key[1]))
            ]
            out += leaves
        return out

    @precondition(lambda self: "b" in self.m.runs and not self.m.runs["b"].cancelled)
    @rule(roll=st.integers(0, 3))
    def cancel_run(self, roll: int) -> None:
        """Run b is cancelled (one time in four this comes up): its pending and blocked items end cancelled,
        its leases stay (and hold their keys until they run out or report)."""
        if roll:
            return
        run = self.m.runs["b"]
        self.call(self.store.control_run, run.id, action="cancel", now=self.m.now)
        run.cancelled = True
        for item in self.m.run_items("b"):
            if item.status in ("pending", "blocked"):
                item.status = "cancelled"

    @rule(n=st.integers(0, 1000))
    def inspect(self, n: int) -> None:
        """get_outcome: what an item waits for, and the locks it holds under a live lease."""
        item = self.pick(list(self.m.items.values()), n)
        detail = self.call(self.store.get_outcome, item.id)
        if item.status in ("pending", "generating"):
            assert detail.waits_for == [], (item.ref, detail.waits_for)
        if item.status == "blocked":
            assert sorted(detail.waits_for) == self.m.unmet(item) != [], (item.ref, detail.waits_for, item)
        shown = set(detail.locks_held)
        if self.m.live(item):
            assert shown == item.locks, (item.ref, shown)
        elif item.status == "generating":
            # get_outcome takes no `now`: a lease that ran out shows the keys it had until it is swept, but
            # never one another live lease took since
            taken = {k for k in item.locks if any(h is not item for h in self.m.holders(k))}
            assert shown <= item.locks - taken, (item.ref, shown, taken)
        else:
            assert shown == set(), (item.ref, shown)
        assert detail.priority == item.priority and sorted(detail.locks) == sorted(item.locks)

    # --- invariants

    @invariant()
    def store_matches_model(self) -> None:
        m = self.m
        if not m.runs:
            return
        seen: dict[str, Outcome] = {}
        for run in m.runs.values():
            for o in self.outcomes(run):
                seen[o.id] = o
        complete_ids = {o.id for o in seen.values() if o.status == "complete"}
        owners: dict[str, list[str]] = {}
        for item in m.items.values():
            o = seen[item.id]
            assert (o.status, o.attempts) == (item.status, item.attempts), (
                item.ref,
                o.status,
                o.attempts,
                item,
            )
            if o.status == "generating":
                # started only after every prerequisite completed (as the store has them now)
                assert all(m.items[k].id in complete_ids for k in item.item_prereqs), item
                assert all(
                    all(m.items[k].id in complete_ids for k in m.package(p).items) for p in item.pkg_prereqs
                ), item
                expires = o.lease_expires_at.timestamp() if o.lease_expires_at else None
                assert expires == pytest.approx(item.expires, abs=1e-3), (item, o.lease_expires_at)
                if expires is not None and expires > m.now:
                    for k in item.locks:
                        owners.setdefault(k, []).append(item.ref)
        double = {k: v for k, v in owners.items() if len(v) > 1}
        assert not double, f"lock keys held by two live leases: {double}"
        for run in m.runs.values():
            items = m.run_items(run.label)
            if run.cap is not None:
                assert m.generating(items) <= run.cap, f"run cap {run.cap} exceeded"
            for pkg in run.packages.values():
                if pkg.cap is not None:
                    gen = m.generating([m.items[k] for k in pkg.items])
                    assert gen <= pkg.cap, f"{pkg.key} cap {pkg.cap} exceeded"

    @invariant()
    def counters_match(self) -> None:
        m = self.m
        for run in m.runs.values():
            report = self.call(self.store.recount, run.id)
            assert report.consistent, report.mismatches
            stored = self.call(self.store.get_run, run.id)
            want = {s: 0 for s in ("pending", "generating", "complete", "failed", "cancelled", "blocked")}
            for i in m.run_items(run.label):
                want[i.status] += 1
            got = stored.counts.model_dump()
            assert {s: got[s] for s in want} == want, (got, want)
            for summary in self.call(self.store.package_summaries, run.id):
                pkg = run.packages[summary.package]
                check_package_counts(summary, [m.items[k] for k in pkg.items], POLICY_STATUSES)
                assert summary.priority == pkg.priority and summary.max_concurrent == pkg.cap


def require_policy(url: str) -> None:
    """Skip on a PostgreSQL store without the claim policy's tables (its dialect lands apart from SQLite's)."""
    if not is_postgres_url(url):
        return
    import psycopg

    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT to_regclass('resource_locks')").fetchone()
    if found is None or found[0] is None:
        pytest.skip("the PostgreSQL dialect of the claim policy is not there yet (no resource_locks table)")


@pytest.fixture
def backend(database_url: str, tmp_path: Path) -> Iterator[Backend]:
    global BACKEND
    with start_blocking_portal() as portal:
        settings_ = Settings(database_url=database_url, artifacts_dir=tmp_path / "artifacts")
        engine = portal.call(Engine.open, settings_)
        try:
            require_policy(database_url)
            BACKEND = Backend(portal, engine, itertools.count())
            yield BACKEND
        finally:
            BACKEND = None
            portal.call(engine.close)


def test_claim_policy_against_the_model(backend: Backend) -> None:
    run_state_machine_as_test(
        PolicyMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


@pytest.mark.anyio
async def test_a_lease_that_ran_out_loses_the_keys_another_lease_took(engine: Engine) -> None:
    """A lease that ran out (not yet swept) whose lock key another run's claim took is lost at its next
    heartbeat, not extended: two live leases would hold one key, and after the second one finished a third
    could take it while the first still worked. While nobody took its keys, the heartbeat extends it."""
    require_policy(engine.settings.database_url)
    now = START
    engine.now = lambda: now  # type: ignore[method-assign]
    packages = [
        PackageSpec(name="p", items=[ItemSpec(name="x", locks=["k"]), ItemSpec(name="y", locks=["j"])])
    ]
    for run in ("a", "b"):
        await engine.plan_run(run, packages=packages, policy=RunPolicy.planned(lease_seconds=LEASE))
    a = (await engine.claim_items("a", worker="w", limit=2)).items
    assert [i.item for i in a] == ["x", "y"]
    assert (await engine.claim_items("b", worker="w")).reason == "locked"
    now += LEASE + 1  # both of a's leases ran out; run a is not swept (nobody claims there)
    b = (await engine.claim_items("b", worker="w")).items
    assert [i.item for i in b] == ["x"]  # the key of a lease that ran out is free
    now += 1
    beat = await engine.heartbeat([LeaseRef(outcome_id=i.outcome_id, lease_token=i.lease_token) for i in a])
    assert beat.lost == [a[0].outcome_id]  # x: b took its key
    assert [e.outcome_id for e in beat.extended or ()] == [a[1].outcome_id]  # y: its key is still its own
    await engine.plan_run("c", packages=packages, policy=RunPolicy.planned(lease_seconds=LEASE))
    assert (await engine.claim_items("c", worker="w")).reason == "locked"  # k: b's lease, j: a's again
    detail = await engine.get_outcome(a[1].outcome_id)
    assert detail.locks_held == ["j"]
