"""The PostgreSQL store's claim policy beyond the claim statement: a plan's dependency rows, what a transition
does to the items that wait for it (readying, the failure cascade, re-blocking) and to the lock keys its lease
held, and what get_outcome shows of both. Every decision is matrix_mcp.rules'; this module finds the rows
(cost ∝ the item's dependents, never a scan of the run) and writes them set-based, in the transaction of the
write that caused it.

An item's `waiting` is the number of its prerequisites not met now: an item prerequisite is met while that
item is complete, a package prerequisite ("package/*") while every item of the package is. Every change of
either moves the dependents' counts (both ways), so the count stays true; a dependent moves from blocked to
pending when it reaches 0 and is never re-blocked by it (only a retry re-blocks what a cascade cancelled).

Concurrency, without a read-then-write race:
- a report learns whether anything waits for its item from the item's queue row, which it updates (flags
  `dependents`: items wait for it, `gate`: items wait for its whole package). A plan that adds a dependent
  to an existing item or package sets those flags first (updating the rows: a report on the same row waits
  for the plan and then reads the flag; a report that updated it first is waited for by the plan, which then
  sees the item complete), so no dependent is added unseen.
- whether a package became (or stopped being) done is read from its counters after its row is locked (FOR
  NO KEY UPDATE, only for a package that has dependents) and this batch's deltas are written: of two last
  completions, the one that takes the lock second sees the first.
- a dependent's count moves from its latest row version (locked in n order), so two moves never lose one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from matrix_mcp import rules
from matrix_mcp.store.params import NewPackage, Prerequisite
from matrix_mcp.store.postgres import sql
from matrix_mcp.store.postgres.batch import Row, Tx

# ---- a transition's consequences ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    """An item a transition moved, with what its queue row says waits for it."""

    n: int
    run_id: str
    package_id: int
    dependents: bool
    gate: bool


def done_of(row: Row) -> Done:
    """A transition's item from its row and the queue flags the writing statement returned with it."""
    return Done(
        int(row["n"]),
        str(row["run_id"]),
        int(row["package_id"]),
        bool(row.get("q_dependents")),
        bool(row.get("q_gate")),
    )


async def release(tx: Tx, leases: Sequence[tuple[int, str | None]]) -> None:
    """The lock keys the items `leases` (n, lease token; None: any lease of it) held are let go."""
    if leases:
        await tx.execute(sql.RELEASE_LOCKS, {"ns": [n for n, _ in leases], "tokens": [t for _, t in leases]})


async def after(tx: Tx, row: Row, t: rules.Transition, flags: Row | None, now: float) -> None:
    """What one transition (applied by Tx.apply, whose queue update returned `flags`) does beyond its item:
    the lock keys its lease held are let go (it left generating, or an override fenced its lease),
    dependents are re-blocked (it left failed), moved by one (it entered or left complete), or cancelled (it
    failed for good in a run that cascades)."""
    flags = flags or {}
    if t.old == "generating" and flags.get("q_locks"):
        await release(tx, [(int(row["n"]), None)])
    if t.old == t.new:
        return
    item = Done(
        int(row["n"]),
        t.run_id,
        t.package_id,
        bool(flags.get("q_dependents")),
        bool(flags.get("q_gate")),
    )
    if not (item.dependents or item.gate):
        return
    if t.old == "failed":
        await reblock(tx, [item.n], now)
    if rules.enters_complete(t.old, t.new):
        await completed(tx, [item], now)
    elif rules.leaves_complete(t.old, t.new):
        await uncompleted(tx, item, now)
    if rules.enters_failed(t.old, t.new) and rules.cascades(str(row["on_dependency_failure"])):
        await cascade(tx, row, item, now)


async def completed(tx: Tx, items: Iterable[Done], now: float) -> None:
    """Items entered complete: their dependents wait for one prerequisite fewer, and so do those of each
    package the completions made done (locked first: see the module docstring)."""
    items = list(items)
    direct = sorted({d.n for d in items if d.dependents})
    packages = await _done_packages(tx, {d.package_id for d in items if d.gate}, entered=True)
    if direct or packages:
        await _move(tx, direct, packages, -1, now)


async def uncompleted(tx: Tx, item: Done, now: float) -> None:
    """An item left complete (an override): its dependents wait for it again, and for its package when the
    package was done before."""
    packages = await _done_packages(tx, {item.package_id} if item.gate else set(), entered=False)
    await _move(tx, [item.n] if item.dependents else [], packages, +1, now)


async def grew(tx: Tx, was_done: Iterable[int], now: float) -> None:
    """Items were added to packages that were done and have dependents: those wait again."""
    packages = sorted(was_done)
    if packages:
        await _move(tx, [], packages, +1, now)


async def _done_packages(tx: Tx, ids: set[int], *, entered: bool) -> list[int]:
    """Of the packages `ids` (with dependents), those now done (entered: an item of theirs just completed)
    or done before their item left complete (not entered)."""
    if not ids:
        return []
    wanted = sorted(ids)
    await tx.execute(sql.LOCK_PACKAGES, (wanted,))
    await tx.flush()
    out = []
    for p in await tx.all(sql.PACKAGE_DONE, (wanted,)):
        complete, total = int(p["complete"]), int(p["total"])
        if rules.package_done(complete, total) if entered else rules.package_done(complete + 1, total):
            out.append(int(p["id"]))
    return out


async def _move(tx: Tx, items: list[int], packages: list[int], delta: int, now: float) -> None:
    rows = await tx.all(
        sql.MOVE_WAITING_SQL, {"items": items, "packages": packages, "delta": delta, "now": now}
    )
    _readied(tx, rows, now)


def _readied(tx: Tx, rows: Sequence[Row], now: float) -> None:
    """Dependents a move made pending (rules.readied): counters and one `ready` event each."""
    per_package: dict[tuple[str, int], int] = defaultdict(int)
    for d in rows:
        per_package[(str(d["run_id"]), int(d["package_id"]))] += 1
        tx.event(d["run_id"], d["id"], rules.ready_event(package=d["package_name"], item=d["item"]), now)
    for (run_id, package_id), k in per_package.items():
        tx.move(run_id, package_id, *rules.READY_MOVE, k)


async def cascade(tx: Tx, row: Row, item: Done, now: float) -> None:
    """The item `row` failed for good in a run that cascades: every blocked item that waits for it, directly
    or through others so cancelled, is cancelled naming it (one event), step by step through the graph."""
    failed = (str(row["package_name"]), str(row["item"]))
    move = rules.cascade(failed=failed, failed_n=item.n, now=now)
    values = dict(move.values)
    items = [item.n] if item.dependents else []
    packages = [item.package_id] if item.gate else []
    seen_packages = set(packages)
    cancelled: list[str] = []
    per_package: dict[int, int] = defaultdict(int)
    while items or packages:
        rows = await tx.all(sql.CASCADE_SQL, {"items": items, "packages": packages, **values})
        items, packages = [], []
        for d in rows:
            cancelled.append(d["id"])
            per_package[int(d["package_id"])] += 1
            if d["dependents"]:
                items.append(int(d["n"]))
            pid = int(d["package_id"])
            if d["gate"] and pid not in seen_packages:
                seen_packages.add(pid)
                packages.append(pid)
    for package_id, k in per_package.items():
        tx.move(item.run_id, package_id, move.old, move.new, k)
    if cancelled:
        tx.event(item.run_id, None, rules.dependents_cancelled(failed=failed, outcome_ids=cancelled), now)


async def reblock(tx: Tx, ns: list[int], now: float) -> None:
    """Items `ns` left failed (a retry, an override): what their failures cancelled waits again (blocked,
    with its count as it stands; pending at once when that is 0)."""
    if not ns:
        return
    move = rules.reblock(now)
    rows = await tx.all(sql.REBLOCK_SQL, {"ns": ns, **move.values})
    per_package: dict[tuple[str, int], int] = defaultdict(int)
    ready: list[int] = []
    for d in rows:
        per_package[(str(d["run_id"]), int(d["package_id"]))] += 1
        if rules.readied("blocked", int(d["waiting"])):
            ready.append(int(d["n"]))
    for (run_id, package_id), k in per_package.items():
        tx.move(run_id, package_id, move.old, move.new, k)
    if ready:  # nothing left to wait for
        _readied(tx, await tx.all(sql.READY_NOW_SQL, {"ns": ready, "now": now}), now)


# ---- planning --------------------------------------------------------------------------------------


Key = tuple[str, str]  # (package, item)
Ref = str | Key  # a resolved prerequisite: a package name (every item of it) or an item


@dataclass
class Planned:
    """A plan's prerequisites, resolved inside its transaction against the run after its packages exist and
    before its items are inserted: each new item's count of prerequisites not met now, the new items other
    new items wait for, the packages whose items carry the `gate` flag, which packages the plan extends were
    done, and each new item's distinct prerequisites (the rows to write once the new items have their n)."""

    waiting: dict[Key, int] = field(default_factory=dict)
    wanted: set[Key] = field(default_factory=set)  # new items that new items wait for
    gated: set[str] = field(default_factory=set)  # packages items wait for (all their items flagged)
    done: dict[int, bool] = field(default_factory=dict)  # package id -> done before this plan's items
    prerequisites: dict[Key, list[Ref]] = field(default_factory=dict)  # new item -> what it waits for

    async def write(
        self,
        tx: Tx,
        ids: dict[str, int],
        existing_n: dict[Key, int],
        new_n: dict[tuple[int, str], int],
    ) -> None:
        """The dependency rows of the items this plan inserted (`new_n`: (package id, item) -> n)."""
        # each distinct prerequisite's n (an item) or id (a package) once, not once per edge
        item_n: dict[Ref, int | None] = {}
        package_id: dict[Ref, int] = {}
        for refs in self.prerequisites.values():
            for ref in refs:
                if ref in item_n or ref in package_id:
                    continue
                if isinstance(ref, str):
                    package_id[ref] = ids[ref]
                else:
                    found = new_n.get((ids[ref[0]], ref[1]))
                    item_n[ref] = found if found is not None else existing_n.get(ref)
        item_rows: list[tuple[int, int]] = []
        package_rows: list[tuple[int, int]] = []
        for after, refs in self.prerequisites.items():
            a_n = new_n.get((ids[after[0]], after[1]))
            if a_n is None:
                continue
            for ref in refs:
                b_n = item_n.get(ref)
                if b_n is not None:
                    item_rows.append((b_n, a_n))
                elif ref in package_id:
                    package_rows.append((package_id[ref], a_n))
        # in key order: each row goes next to the one before it in the primary key's btree
        if item_rows:
            item_rows.sort()
            await tx.execute(sql.INSERT_ITEM_EDGES, ([b for b, _ in item_rows], [a for _, a in item_rows]))
        if package_rows:
            package_rows.sort()
            await tx.execute(
                sql.INSERT_PACKAGE_EDGES, ([p for p, _ in package_rows], [a for _, a in package_rows])
            )


async def plan_prerequisites(
    tx: Tx,
    run_id: str,
    packages: Sequence[NewPackage],
    ids: dict[str, int],
    existing: dict[str, int],
    gating: set[str],
) -> tuple[Planned, dict[Key, int]]:
    """Resolve the plan's prerequisites (`ids`: every package of the plan and every existing one they may
    name; `existing`: the plan's packages that were there before; `gating`: those with dependents) and
    flag what they name (see the module docstring); also which packages `gating` names were done. Returns
    the plan's dependency facts and the n of every existing item they name or the plan repeats.

    Each distinct reference is resolved once (a plan names far fewer distinct prerequisites than it has
    edges); the per-edge work is a dictionary look-up."""
    planned = Planned()
    plan_items = {(p.name, item.name) for p in packages for item in p.items}
    distinct = {
        p.candidates for pkg in packages for refs in (pkg.after, *(i.after for i in pkg.items)) for p in refs
    }
    lookups = {(a, b) for candidates in distinct for a, b in candidates if b is not None and a in ids}
    for pkg in packages:
        if pkg.name in existing:
            lookups.update((pkg.name, item.name) for item in pkg.items)  # which of its items are new
    found: dict[Key, int] = {}
    if lookups:
        pairs = sorted(lookups)
        for r in await tx.all(sql.PLAN_PREREQ_ITEMS, ([p for p, _ in pairs], [i for _, i in pairs], run_id)):
            found[(r["package"], r["item"])] = int(r["n"])
    new_items = plan_items - found.keys()
    adding = {p for p, _ in new_items}

    memo: dict[tuple[tuple[str, str | None], ...], Ref] = {}

    def resolve(p: Prerequisite) -> Ref:
        got = memo.get(p.candidates)
        if got is not None:
            return got
        for package, item in p.candidates:
            if item is None:
                if package in ids:
                    memo[p.candidates] = package
                    return package
            elif (package, item) in plan_items or (package, item) in found:
                memo[p.candidates] = ref = (package, item)
                return ref
        raise rules.unknown_reference(p.text or rules.ref_text(p.candidates[-1]), p.field)

    resolved = planned.prerequisites
    for pkg in packages:
        own = list(dict.fromkeys(map(resolve, pkg.after)))
        for item in pkg.items:
            key = (pkg.name, item.name)
            if key not in new_items:
                continue  # the item was there before this plan: it gets no new prerequisites
            if item.after:
                resolved[key] = list(dict.fromkeys([*map(resolve, item.after), *own]))
            elif own:
                resolved[key] = own
    used: set[Ref] = set().union(*resolved.values())
    named = {r for r in used if isinstance(r, str)}
    named_items = [r for r in used if not isinstance(r, str)]
    old_items = sorted({found[r] for r in named_items if r in found})
    planned.gated = set(named)
    planned.wanted = {r for r in named_items if r in new_items}
    complete: dict[int, bool] = {}
    if old_items:
        complete = {
            int(r["n"]): r["final"] == "complete" for r in await tx.all(sql.PLAN_MARK_ITEMS, (old_items,))
        }
    newly = sorted(ids[p] for p in named if p not in gating)
    if newly:
        await tx.execute(sql.PLAN_MARK_PACKAGES, (newly,))
        await tx.execute(sql.PLAN_GATE_ITEMS, (newly,))
    check = sorted({ids[p] for p in named if p not in adding} | {ids[p] for p in gating if p in adding})
    if check:
        await tx.execute(sql.LOCK_PACKAGES, (check,))
        await tx.flush()
        for r in await tx.all(sql.PACKAGE_DONE, (check,)):
            planned.done[int(r["id"])] = rules.package_done(int(r["complete"]), int(r["total"]))
    # each distinct prerequisite's 1 (not met now) or 0 (met) once; an item's count is their sum
    unmet: dict[Ref, int] = {}
    for ref in used:
        if isinstance(ref, str):
            met = ref not in adding and planned.done.get(ids[ref], True)
        else:
            n = found.get(ref)
            met = n is not None and complete.get(n, False)
        unmet[ref] = 0 if met else 1
    waiting = planned.waiting
    for after, refs in resolved.items():
        count = sum(map(unmet.__getitem__, refs))
        if count:
            waiting[after] = count
    return planned, found


# ---- reading ----------------------------------------------------------------------------------------


async def waits_for(tx_one: Any, row: Row) -> list[str]:
    """The item's prerequisites not met now, as "package/item" and "package/*" (at most WAITS_FOR_SHOWN)."""
    if not int(row.get("waiting") or 0):
        return []
    n, limit = row["n"], rules.WAITS_FOR_SHOWN
    out = [rules.ref_text((r["name"], r["item"])) for r in await tx_one(sql.UNMET_ITEMS, (n, limit))]
    if len(out) < limit:
        out += [
            rules.ref_text((r["name"], None)) for r in await tx_one(sql.UNMET_PACKAGES, (n, limit - len(out)))
        ]
    return out


async def locks_held(fetch: Any, row: Row) -> list[str]:
    """The lock keys the item holds under its current lease (it is generating)."""
    if row["status"] != "generating" or row.get("locks") is None:
        return []
    return [r["key"] for r in await fetch(sql.LOCKS_OF, (row["n"], row["lease_token"]))]


async def reported_complete(tx: Tx, rows: Sequence[Row], now: float) -> None:
    """Items a completion statement reported (rows as it left them, with their queue flags): the keys their
    leases held are let go, and the dependents of those it completed move (`completed`; an item in_review
    readies nothing until approved)."""
    await release(tx, [(int(r["n"]), str(r["lease_token"])) for r in rows if r.get("q_locks")])
    done = [
        done_of(r) for r in rows if (r.get("q_dependents") or r.get("q_gate")) and r["status"] == "complete"
    ]
    if done:
        await completed(tx, done, now)


async def completed_many(tx: Tx, rows: Sequence[Row], now: float) -> None:
    """Items the merged completion statement reported (COMPLETE_MANY_SQL, which let go of their lock keys
    and locked the rows of the packages with "package/*" dependents among those it completed): the
    dependents of those it completed move (as `completed`), in one round trip — the items' dependents
    move while the packages' counters are read (after the lock: see the module docstring), this batch's
    own counter moves added from memory instead of written first. A package that became done moves its
    dependents in one more statement."""
    done = [
        done_of(r) for r in rows if (r.get("q_dependents") or r.get("q_gate")) and r["status"] == "complete"
    ]
    direct = sorted({d.n for d in done if d.dependents})
    gated = sorted({(d.run_id, d.package_id) for d in done if d.gate})
    moved = (
        await tx.conn.execute(
            sql.MOVE_WAITING_SQL, {"items": direct, "packages": [], "delta": -1, "now": now}
        )
        if direct
        else None
    )
    counters = await tx.conn.execute(sql.PACKAGE_DONE, ([p for _, p in gated],)) if gated else None
    if moved is not None:
        _readied(tx, await moved.fetchall(), now)
    if counters is None:
        return
    run_of = dict((p, r) for r, p in gated)
    packages = []
    for p in await counters.fetchall():
        pid = int(p["id"])
        complete, total = tx.pending(run_of[pid], pid, "complete", "total")
        if rules.package_done(int(p["complete"]) + complete, int(p["total"]) + total):
            packages.append(pid)
    if packages:
        await _move(tx, [], packages, -1, now)


async def expired(tx: Tx, row: Row, t: rules.Transition, now: float) -> None:
    """An expired lease (the sweep let its keys go): an item failed for good cascades."""
    flagged = row.get("q_dependents") or row.get("q_gate")
    if flagged and rules.enters_failed(t.old, t.new) and rules.cascades(str(row["on_dependency_failure"])):
        await cascade(tx, row, done_of(row), now)


async def check_acyclic(tx: Tx, grown: Sequence[tuple[int, str, list[int]]]) -> None:
    """The cycle the engine cannot see: items this plan added to a package that items of the run wait for
    ("package/*", `after`) must not themselves wait, through prerequisites already in the run, for one of
    those items. Walked only for such packages (`grown`: id, name, the new items' n that have prerequisites),
    one statement per step of the walk; InputError naming the cycle (the plan's transaction writes nothing)."""
    for package_id, package, new in grown:
        dependents = {int(r["after_n"]) for r in await tx.all(sql.PACKAGE_DEPENDENTS, (package_id,))}
        came_from: dict[int, tuple[int, int | None]] = {}  # n -> (the item waiting for it, via package id)
        frontier = list(new)
        seen = set(frontier)
        while frontier:
            hit = next((n for n in frontier if n in dependents), None)
            if hit is not None:
                raise await _cycle(tx, hit, came_from, package)
            steps = await tx.all(sql.PREREQUISITES_OF, (frontier, frontier))
            frontier = []
            for s in steps:
                nxt, at, via = int(s["n"]), int(s["at"]), s["via"]
                if nxt not in seen:
                    seen.add(nxt)
                    came_from[nxt] = (at, None if via is None else int(via))
                    frontier.append(nxt)


async def _cycle(tx: Tx, end: int, came_from: dict[int, tuple[int, int | None]], package: str) -> Exception:
    path: list[rules.Node] = []
    at = end
    while True:
        row = await tx.one(sql.ITEM_NAME, (at,))
        assert row is not None
        path.append((str(row["package"]), str(row["item"])))
        if at not in came_from:
            break
        at, via = came_from[at]
        if via is not None:
            name = await tx.one(sql.PACKAGE_NAME, (via,))
            assert name is not None
            path.append((str(name["name"]), None))
    path.reverse()
    return rules.dependency_cycle([*path, (package, None), path[0]])
