"""A kill storm over staged, contended work on both backends: a run with dependencies (item refs, "pkg/*"
refs, a package after a package), priorities, lock keys (shared with a second run: keys are store-wide) and a
per-package cap, worked by worker processes that are SIGKILLed at random points and replaced.

Every claim and report is recorded twice: by the workers (their JSON lines) and by the store (the `claimed`,
`completed` and `lease_expired` events, in commit order, and the attempt rows with their `now`). From those:
0 items started before their prerequisites completed, 0 moments where two live leases held one lock key, 0
caps exceeded, 0 lost (every item complete, every acknowledged completion the one that stuck), 0 double
completions, and counters equal to a recount (`check_store`).

Why event sequence numbers order the record: a claim that sees a prerequisite complete (or a lock released)
read it after the report's transaction committed, and that transaction drew its event's number before its
commit (SQLite: one writer; PostgreSQL: an identity drawn at insert), so the report's number is smaller. A
lease that ran out is released by time, not by an event: the claim's `now` against the holder's expiry.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from matrix_mcp.config import Settings
from matrix_mcp.engine import Engine
from matrix_mcp.models import ItemSpec, PackageSpec, RunPolicy
from tests.reliability import test_reliability_policy as policy_storm
from tests.store.test_policy_model import require_policy
from tests.support.reliability_helpers import (
    WorkerProcess,
    _rows,
    check_store,
    completions_per_outcome,
    run_counts,
)

pytestmark = pytest.mark.anyio

KILLS = 6
LEASE = 1.0


def staged() -> list[PackageSpec]:
    """schema → services (after the package) → tests (after single services items and each other) and docs
    (low priority, contending with services for a key); `db` is also wanted by the other run."""
    return [
        PackageSpec(
            name="schema",
            priority=2,
            items=[ItemSpec(name=f"i{j}", locks=["db"] if j % 2 == 0 else []) for j in range(4)],
        ),
        PackageSpec(
            name="services",
            after=["schema"],
            max_concurrent=2,
            items=[ItemSpec(name=f"i{j}", priority=j % 3, locks=[f"file:s{j % 3}"]) for j in range(8)],
        ),
        PackageSpec(
            name="tests",
            priority=1,
            items=[
                ItemSpec(
                    name=f"i{j}",
                    after=[f"services/i{j}", f"services/i{j + 2}"] + ([f"i{j - 1}"] if j % 2 else []),
                    locks=["db"] if j % 3 == 0 else [],
                )
                for j in range(6)
            ],
        ),
        PackageSpec(
            name="docs",
            priority=-1,
            items=[ItemSpec(name=f"i{j}", after=["schema/*"], locks=["file:s0"]) for j in range(4)],
        ),
    ]


def other() -> list[PackageSpec]:
    """The second run: no dependencies, but the first run's keys."""
    return [
        PackageSpec(
            name="other",
            items=[ItemSpec(name=f"i{j}", locks=["db" if j % 2 else "file:s1"]) for j in range(6)],
        )
    ]


@dataclass(frozen=True)
class Item:
    run: str
    package: str
    item: str
    locks: frozenset[str]
    item_prereqs: frozenset[tuple[str, str]]  # (package, item)
    pkg_prereqs: frozenset[str]
    cap: int | None


def items_of(run: str, packages: list[PackageSpec]) -> dict[tuple[str, str], Item]:
    out: dict[tuple[str, str], Item] = {}
    for p in packages:
        for raw in p.items:
            assert isinstance(raw, ItemSpec)
            refs = [r.rpartition("/") for r in raw.after]
            out[(p.name, raw.name)] = Item(
                run,
                p.name,
                raw.name,
                frozenset(raw.locks),
                frozenset((pkg or p.name, name) for pkg, _, name in refs if name != "*"),
                frozenset([*p.after, *(pkg for pkg, _, name in refs if name == "*")]),
                p.max_concurrent,
            )
    return out


async def plan_runs(url: str, artifacts: Path, runs: dict[str, list[PackageSpec]]) -> dict[str, Item]:
    """Plan the runs; every item by outcome id."""
    engine = await Engine.open(Settings(database_url=url, artifacts_dir=artifacts))
    try:
        require_policy(url)
        by_id: dict[str, Item] = {}
        for name, packages in runs.items():
            await engine.plan_run(
                name, packages=packages, policy=RunPolicy.planned(lease_seconds=LEASE, max_attempts=100)
            )
            items = items_of(name, packages)
            for o in (await engine.list_outcomes(run=name, limit=1000)).outcomes:
                by_id[o.id] = items[(o.package, o.item)]
        return by_id
    finally:
        await engine.close()


async def storm(
    url: str, artifacts: Path, logs: Path, workers: list[str], kills: int, seed: int = 0
) -> tuple[list[WorkerProcess], dict[str, int]]:
    """Worker processes on the runs named in `workers` (one each); SIGKILL a random one holding a lease at a
    random point `kills` times, replacing it on the same run; wait until every run is done."""
    rng = random.Random(seed)
    procs: list[WorkerProcess] = []

    def spawn(run: str) -> WorkerProcess:
        name = f"w{len(procs) + 1}"
        p = WorkerProcess(logs, name, url, artifacts, "--run", run, "--worker", name, "--hold", "0.3")
        procs.append(p)
        return p

    live = {spawn(run): run for run in workers}
    done_kills = held = 0
    try:
        with anyio.fail_after(240):
            while done_kills < kills and any(p.alive() for p in live):
                await anyio.sleep(rng.uniform(0.3, 1.2))
                victim = rng.choice(list(live))
                evs = victim.events()
                if not any(e["ev"] == "ready" for e in evs):
                    continue
                claimed = {e["token"] for e in evs if e["ev"] == "claimed"}
                finished = {e["token"] for e in evs if e["ev"] in ("completed", "rejected")}
                held += len(claimed - finished)
                victim.kill()
                done_kills += 1
                run = live.pop(victim)
                live[spawn(run)] = run
            for p in live:
                assert await p.wait_exit(240) == 0, p.stderr()[-3000:]
    finally:
        for p in procs:
            if p.alive():
                p.kill()
    return procs, {"kills": done_kills, "leases_held_when_killed": held, "processes": len(procs)}


def violations(url: str, items: dict[str, Item], procs: list[WorkerProcess]) -> dict[str, list[str]]:
    """Every breach of the claim policy in the store's record of the storm (and the workers' own)."""
    claimed: list[tuple[int, str, int]] = []  # (seq, outcome_id, attempt)
    ended: dict[tuple[str, int], int] = {}  # (outcome_id, attempt) → seq of the event that ended it
    completed: dict[str, int] = {}  # outcome_id → seq of its completion
    attempts = {
        (oid, int(attempt)): (token, status, float(started))
        for oid, attempt, token, status, started in _rows(
            url, "SELECT outcome_id, attempt, lease_token, status, started_at FROM outcome_attempts"
        )
        if oid in items
    }
    complete_attempt = {oid: n for (oid, n), (_, status, _) in attempts.items() if status == "complete"}
    for seq, oid, kind, data in _rows(
        url,
        "SELECT seq, outcome_id, kind, data FROM events"
        " WHERE kind IN ('claimed', 'completed', 'lease_expired') ORDER BY seq",
    ):
        if oid not in items:
            continue
        d = json.loads(data)
        if kind == "claimed":
            claimed.append((int(seq), oid, int(d["attempt"])))
        elif kind == "completed":
            completed[oid] = int(seq)
            ended[(oid, complete_attempt[oid])] = int(seq)
        else:
            ended[(oid, int(d["attempt"]))] = int(seq)
    by_key = {(i.run, i.package, i.item): oid for oid, i in items.items()}
    packages: dict[tuple[str, str], list[str]] = {}
    for oid, i in items.items():
        packages.setdefault((i.run, i.package), []).append(oid)
    out: dict[str, list[str]] = {
        "early_start": [],
        "double_lock": [],
        "over_cap": [],
        "lost": [],
        "double": [],
    }
    for seq, oid, attempt in claimed:
        i = items[oid]
        name = f"{i.run}:{i.package}/{i.item}#{attempt}"
        prereqs = [by_key[(i.run, p, n)] for p, n in i.item_prereqs]
        prereqs += [x for p in i.pkg_prereqs for x in packages[(i.run, p)]]
        early = [p for p in prereqs if completed.get(p, seq + 1) > seq]
        if early:
            out["early_start"].append(f"{name} claimed at seq {seq} before {len(early)} prerequisite(s)")
        now = attempts[(oid, attempt)][2]
        live = [
            (other, n)
            for s, other, n in claimed
            if s < seq
            and other != oid
            and ended.get((other, n), seq + 1) > seq
            and attempts[(other, n)][2] + LEASE > now
        ]
        for other, n in live:
            shared = items[other].locks & i.locks
            if shared:
                out["double_lock"].append(f"{name} took {sorted(shared)} held by {other}#{n}")
        same = [x for x in live if (items[x[0]].run, items[x[0]].package) == (i.run, i.package)]
        if i.cap is not None and len(same) + 1 > i.cap:
            out["over_cap"].append(f"{name}: {len(same) + 1} generating, cap {i.cap}")
    per_outcome = completions_per_outcome(url)
    out["double"] = [oid for oid, n in per_outcome.items() if oid in items and n != 1]
    out["lost"] = [oid for oid in items if per_outcome.get(oid) != 1]
    for p in procs:  # an acknowledged completion is the one that stuck
        for e in p.events():
            if e["ev"] == "completed":
                status = next(v[1] for v in attempts.values() if v[0] == e["token"])
                if status != "complete":
                    out["lost"].append(f"{p.name} acknowledged {e['outcome_id']} but its attempt is {status}")
    return out


async def test_kill_storm_over_dependencies_and_locks(database_url: str, tmp_path: Path) -> None:
    artifacts, logs = tmp_path / "artifacts", tmp_path / "logs"
    logs.mkdir()
    runs = {"staged": staged(), "other": other()}
    items = await plan_runs(database_url, artifacts, runs)
    procs, figures = await storm(
        database_url, artifacts, logs, ["staged", "staged", "staged", "other"], KILLS
    )
    assert run_counts(database_url, "staged") == Counter(complete=22)
    assert run_counts(database_url, "other") == Counter(complete=6)
    found = violations(database_url, items, procs)
    claims = len(_rows(database_url, "SELECT 1 FROM events WHERE kind = 'claimed'"))
    print(f"\nkill storm (policy) {database_url.split(':')[0]}: {figures} claims={claims}")
    assert found == {k: [] for k in found}, found
    assert await check_store(database_url, artifacts) == []


def test_the_record_check_finds_each_breach(monkeypatch: pytest.MonkeyPatch) -> None:
    """`violations` is no rubber stamp: a forged record with one breach of each kind is caught, and the same
    record without them is clean."""
    items = {
        "a": Item("r", "p", "a", frozenset({"k"}), frozenset(), frozenset(), 1),
        "b": Item("r", "p", "b", frozenset({"k"}), frozenset({("p", "a")}), frozenset(), 1),
        "c": Item("r", "q", "c", frozenset(), frozenset(), frozenset({"p"}), None),
    }
    t = 1000.0
    # a: claimed (1), completed (2); b: claimed (3), completed (5); c: claimed (4) before b completed
    attempts = [
        ("a", 1, "ta", "complete", t),
        ("b", 1, "tb", "complete", t + 0.5),
        ("c", 1, "tc", "complete", t + 1),
    ]
    events = [
        (1, "a", "claimed", '{"attempt": 1}'),
        (2, "a", "completed", "{}"),
        (3, "b", "claimed", '{"attempt": 1}'),
        (4, "c", "claimed", '{"attempt": 1}'),
        (5, "b", "completed", "{}"),
        (6, "c", "completed", "{}"),
    ]
    record = {"outcome_attempts": attempts, "FROM events": events}
    monkeypatch.setattr(
        policy_storm, "_rows", lambda url, query: next(v for k, v in record.items() if k in query)
    )
    monkeypatch.setattr(policy_storm, "completions_per_outcome", lambda url: Counter(a=1, b=1, c=1))
    found = violations("x", items, [])
    assert found["early_start"] == ["r:q/c#1 claimed at seq 4 before 1 prerequisite(s)"]
    assert [k for k, v in found.items() if v] == ["early_start"]
    # b claimed while a still held the key (a's completion comes later), and the cap of p is 1
    events[1], events[2] = (2, "b", "claimed", '{"attempt": 1}'), (3, "a", "completed", "{}")
    found = violations("x", items, [])
    assert found["double_lock"] == ["r:p/b#1 took ['k'] held by a#1"]
    assert found["over_cap"] == ["r:p/b#1: 2 generating, cap 1"]
    assert found["early_start"][0].startswith("r:p/b#1 claimed at seq 2")
    # a's lease had run out by b's claim: the key was free (but b still started before a completed)
    attempts[1] = ("b", 1, "tb", "complete", t + LEASE)
    found = violations("x", items, [])
    assert found["double_lock"] == [] and found["over_cap"] == []
    monkeypatch.setattr(policy_storm, "completions_per_outcome", lambda url: Counter(a=2, b=1))
    found = violations("x", items, [])
    assert found["double"] == ["a"] and found["lost"] == ["a", "c"]
