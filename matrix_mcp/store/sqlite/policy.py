"""The SQLite store's claim policy: a plan's dependency rows, what a transition does to the items that wait
for it (readying, the failure cascade, re-blocking) and to the lock keys its lease held, the lock keys a
claim takes, and what get_outcome shows of both. Every decision is matrix_mcp.rules'; this module only
finds the rows (cost ∝ the item's dependents, never a scan of the run) and writes them, under the single
writer, in the transaction of the write that caused it.

An item's `waiting` is the number of its prerequisites not met now: an item prerequisite is met while that
item is complete, a package prerequisite ("package/*") while every item of the package is. Every change of
either moves the dependents' counts (both ways), so the count stays true; a dependent moves from blocked to
pending when it reaches 0 and is never re-blocked by it (only a retry re-blocks what a cascade cancelled).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from matrix_mcp import rules
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import NewPackage, Prerequisite
from matrix_mcp.store.sqlite import counters, events, sql
from matrix_mcp.store.sqlite.connection import named

# the most pending items of one package a claim looks at past ones whose lock keys are held
LOCK_SCAN = 256


# ---- a transition's consequences ------------------------------------------------------------------


def apply(
    c: sqlite3.Connection, row: rules.RowLike, t: rules.Transition, now: float, *, hist_read: bool = False
) -> None:
    """counters.apply, then what the transition does beyond its item: the lock keys its lease held are let go
    (it left generating, or an override fenced its lease), dependents are re-blocked (it left failed), moved
    by one (it entered or left complete), or cancelled (it failed for good in a run that cascades)."""
    counters.apply(c, row, t, now, hist_read=hist_read)
    if t.old == "generating" and R.column(row, "locks", True) is not None:
        c.execute(sql.RELEASE_LOCKS, (row["n"],))
    if t.old == t.new:
        return
    if t.new == "pending":
        raise_top(c, int(row["package_id"]), int(R.column(row, "priority", 0)))
    if t.old == "failed":
        reblock(c, int(row["n"]), now)
    if rules.enters_complete(t.old, t.new):
        prerequisite_moved(c, row, -1, now)
    elif rules.leaves_complete(t.old, t.new):
        prerequisite_moved(c, row, +1, now)
    if rules.enters_failed(t.old, t.new):
        cascade(c, row, now)


def prerequisite_moved(c: sqlite3.Connection, row: rules.RowLike, delta: int, now: float) -> None:
    """The item `row` entered complete (delta -1: one prerequisite fewer for its dependents) or left it
    (+1); when that completes or un-completes its package, the package's dependents move too. An item with
    no dependents in a package with none costs one probe."""
    n, package_id = int(row["n"]), int(row["package_id"])
    if c.execute(sql.HAS_ITEM_DEPENDENTS, (n,)).fetchone() is not None:
        _move_waiting(c, c.execute(sql.ITEM_DEPENDENTS_WAITING, (delta, n)).fetchall(), now)
    if R.column(row, "package_has_dependents", 1) == 0:
        return
    pkg = c.execute(sql.PACKAGE_DONE, (package_id,)).fetchone()
    if not pkg["has_dependents"]:
        return
    complete, total = int(pkg["complete"]), int(pkg["total"])
    # entering: done now; leaving: was done before this item left
    if rules.package_done(complete, total) if delta < 0 else rules.package_done(complete + 1, total):
        package_moved(c, package_id, delta, now)


def package_moved(c: sqlite3.Connection, package_id: int, delta: int, now: float) -> None:
    """The package became done (delta -1) or stopped being done (+1): its "package/*" dependents move."""
    _move_waiting(c, c.execute(sql.PACKAGE_DEPENDENTS_WAITING, (delta, package_id)).fetchall(), now)


def package_grew(c: sqlite3.Connection, package_id: int, before: sqlite3.Row | None, now: float) -> None:
    """Items were added to a package whose counters were `before` (complete, total, has_dependents): when it
    was done, it no longer is, and its dependents wait again."""
    if (
        before is not None
        and before["has_dependents"]
        and rules.package_done(int(before["complete"]), int(before["total"]))
    ):
        package_moved(c, package_id, +1, now)


def _move_waiting(c: sqlite3.Connection, moved: Iterable[rules.RowLike], now: float) -> None:
    """Dependents whose count just moved (rows n, id, status, waiting, package_id, item, priority): those
    blocked with nothing left to wait for become pending (rules.ready), each with its event `ready`; the
    rows in one statement, the counters and the priority bound once per package (a package completing
    can ready thousands)."""
    ready = [d for d in moved if rules.readied(d["status"], int(d["waiting"]))]
    if not ready:
        return
    move = rules.ready(now)
    c.executemany(sql.update_outcome(tuple(move.values)), [(*move.values.values(), d["n"]) for d in ready])
    by_package: dict[int, list[rules.RowLike]] = {}
    for d in ready:
        by_package.setdefault(int(d["package_id"]), []).append(d)
    for package_id, rows in by_package.items():
        k = len(rows)
        c.execute(sql.MOVE_N_SQL[move.old, move.new], (k, k, package_id))
        raise_top(c, package_id, max(int(d["priority"]) for d in rows))
        package = c.execute(sql.PACKAGE_NAME, (package_id,)).fetchone()[0]
        for d in rows:
            events.add_event(c, d["run_id"], d["id"], rules.ready_event(package=package, item=d["item"]), now)


def cascade(c: sqlite3.Connection, row: rules.RowLike, now: float) -> None:
    """The item `row` failed for good: in a run whose on_dependency_failure cascades, every blocked item
    that waits for it, directly or through others so cancelled, is cancelled naming it (one event)."""
    n = int(row["n"])
    policy = c.execute(sql.RUN_DEPENDENCY_FAILURE, (row["run_id"],)).fetchone()
    if policy is None or not rules.cascades(policy[0]):
        return
    failed = (str(row["package_name"]), str(row["item"]))
    move = rules.cascade(failed=failed, failed_n=n, now=now)
    seen = {n}
    frontier = [(n, int(row["package_id"]))]
    cancelled: list[str] = []
    while frontier:
        at, package_id = frontier.pop()
        found = [r[0] for r in c.execute(sql.ITEM_DEPENDENTS, (at,))]
        if c.execute(sql.PACKAGE_HAS_DEPENDENTS, (package_id,)).fetchone()[0]:
            found += [r[0] for r in c.execute(sql.PACKAGE_DEPENDENTS, (package_id,))]
        for d_n in found:
            if d_n in seen:
                continue
            seen.add(d_n)
            d = c.execute(sql.DEPENDENT_BY_N, (d_n,)).fetchone()
            if d is None or d["status"] != move.old:
                continue
            counters.apply_move(c, d, move)
            cancelled.append(d["id"])
            frontier.append((d_n, int(d["package_id"])))
    if cancelled:
        events.add_event(
            c, row["run_id"], None, rules.dependents_cancelled(failed=failed, outcome_ids=cancelled), now
        )


def reblock(c: sqlite3.Connection, n: int, now: float) -> None:
    """Item `n` left failed (a retry, an override): what its failure cancelled waits again (blocked, with its
    count as it stands; pending at once when that is 0)."""
    move = rules.reblock(now)
    rows = c.execute(sql.CANCELLED_BY, (n,)).fetchall()
    for d in rows:
        counters.apply_move(c, d, move)
    _move_waiting(c, [{**dict(d), "status": move.new} for d in rows], now)


# ---- planning --------------------------------------------------------------------------------------


@dataclass
class _Resolver:
    """Prerequisites of one plan resolved against the run (the plan's new items are in it already)."""

    c: sqlite3.Connection
    run_id: str
    items: dict[tuple[str, str], tuple[int, bool]] = field(default_factory=dict)  # -> (n, complete)
    packages: dict[str, tuple[int, bool] | None] = field(default_factory=dict)  # -> (id, done)
    # each distinct reference resolved once (a plan has far fewer of them than edges)
    resolved: dict[tuple[tuple[str, str | None], ...], tuple[str, int, bool]] = field(default_factory=dict)

    def package(self, name: str) -> tuple[int, bool] | None:
        if name not in self.packages:
            row = self.c.execute(sql.PACKAGE_BY_NAME, (self.run_id, name)).fetchone()
            self.packages[name] = (
                None if row is None else (int(row["id"]), rules.package_done(row["complete"], row["total"]))
            )
        return self.packages[name]

    def item(self, package: str, item: str) -> tuple[int, bool] | None:
        key = (package, item)
        if key not in self.items:
            row = self.c.execute(sql.ITEM_BY_NAME, (self.run_id, package, item)).fetchone()
            if row is None:
                return None
            self.items[key] = (int(row["n"]), row["status"] == "complete")
        return self.items[key]

    def resolve(self, p: Prerequisite) -> tuple[str, int, bool]:
        """("item", n, met) or ("package", id, met); the one-line error naming the field when unknown."""
        got = self.resolved.get(p.candidates)
        if got is not None:
            return got
        for package, item in p.candidates:
            if item is None:
                found = self.package(package)
                if found is not None:
                    got = self.resolved[p.candidates] = ("package", found[0], found[1])
                    return got
            else:
                found = self.item(package, item)
                if found is not None:
                    got = self.resolved[p.candidates] = ("item", found[0], found[1])
                    return got
        raise rules.unknown_reference(p.text or rules.ref_text(p.candidates[-1]), p.field)


def plan_edges(
    c: sqlite3.Connection, run_id: str, added: Sequence[tuple[NewPackage, int, dict[str, int]]], now: float
) -> None:
    """The dependency rows of the items this plan added (`added`: each package with its id and its new
    items' n by name), each item's count of prerequisites not met now, and blocked for those with any."""
    resolver = _Resolver(c, run_id)
    item_edges: list[tuple[int, int]] = []
    package_edges: list[tuple[int, int]] = []
    waiting: dict[int, tuple[int, int]] = {}  # n -> (count, package_id)
    for pkg, package_id, new in added:
        if not new:
            continue
        own = [resolver.resolve(p) for p in pkg.after]
        for item in pkg.items:
            n = new.get(item.name)
            if n is None:
                continue  # the item was there before this plan: it gets no new prerequisites
            count = 0
            seen: set[tuple[str, int]] = set()
            for kind, ref, met in [*(resolver.resolve(p) for p in item.after), *own]:
                if (kind, ref) in seen:
                    continue
                seen.add((kind, ref))
                (item_edges if kind == "item" else package_edges).append((ref, n))
                count += 0 if met else 1
            if count:
                waiting[n] = (count, package_id)
    c.executemany(sql.INSERT_ITEM_EDGE, item_edges)
    c.executemany(sql.INSERT_PACKAGE_EDGE, package_edges)
    c.executemany(sql.MARK_HAS_DEPENDENTS, [(p,) for p in {p for p, _ in package_edges}])
    if waiting:
        c.executemany(sql.BLOCK_NEW, [(count, n) for n, (count, _) in waiting.items()])
        per_package: dict[int, int] = {}
        for _, package_id in waiting.values():
            per_package[package_id] = per_package.get(package_id, 0) + 1
        for package_id, k in per_package.items():
            c.execute(sql.MOVE_N_SQL["pending", "blocked"], (k, k, package_id))


def check_acyclic(c: sqlite3.Connection, grown: Sequence[tuple[int, str, dict[str, int]]]) -> None:
    """The cycle the engine cannot see: items this plan added to a package that items of the run wait for
    ("package/*", `after`) must not themselves wait, through prerequisites already in the run, for one of
    those items. Walked only for such packages (`grown`: id, name, the new items' n by name) whose new items
    have prerequisites; InputError naming the cycle, and the plan's transaction writes nothing."""
    for package_id, package, new in grown:
        dependents = {n for (n,) in c.execute(sql.PACKAGE_DEPENDENTS, (package_id,))}
        came_from: dict[int, tuple[int, int | None]] = {}  # n -> (the item waiting for it, via package id)
        stack = list(new.values())
        seen = set(stack)
        while stack:
            at = stack.pop()
            if at in dependents:
                raise _cycle(c, at, came_from, package)
            steps = [(b, None) for (b,) in c.execute(sql.PREREQUISITE_ITEMS, (at,))]
            for (pid,) in c.execute(sql.PREREQUISITE_PACKAGES, (at,)).fetchall():
                steps += [(m, pid) for (m,) in c.execute(sql.ITEMS_OF_PACKAGE, (pid,))]
            for nxt, via in steps:
                if nxt not in seen:
                    seen.add(nxt)
                    came_from[nxt] = (at, via)
                    stack.append(nxt)


def _cycle(
    c: sqlite3.Connection, end: int, came_from: dict[int, tuple[int, int | None]], package: str
) -> Exception:
    path: list[rules.Node] = []
    at = end
    while True:
        path.append(_node(c, at))
        if at not in came_from:
            break
        at, via = came_from[at]
        if via is not None:
            path.append((c.execute(sql.PACKAGE_NAME, (via,)).fetchone()[0], None))
    path.reverse()
    return rules.dependency_cycle([*path, (package, None), path[0]])


def _node(c: sqlite3.Connection, n: int) -> rules.Node:
    row = c.execute(sql.ITEM_NAME, (n,)).fetchone()
    return (str(row[0]), str(row[1]))


# ---- claims ---------------------------------------------------------------------------------------


@dataclass
class Held:
    """What held a claim's candidates back: lock keys held by live leases (the earliest of those leases'
    expiries), and packages at their max_concurrent."""

    locked: bool = False
    lock_expires_at: float | None = None
    capped_packages: list[int] = field(default_factory=list)

    def lock(self, expires_at: float | None) -> None:
        self.locked = True
        if expires_at is not None and (self.lock_expires_at is None or expires_at < self.lock_expires_at):
            self.lock_expires_at = expires_at


def candidate(c: sqlite3.Connection, package_id: int, now: float, held: Held) -> dict[str, Any] | None:
    """The package's first item a claim may lease now (rules.claim_order within a package: priority, then
    available_at, then plan order) whose lock keys are all free."""
    for o in c.execute(sql.CLAIM_CANDIDATES, (package_id, now, LOCK_SCAN)):
        keys = R.loads(o["locks"], [])
        if all(_free(c, key, now, held) for key in keys):
            return named(o)
    return None


def _free(c: sqlite3.Connection, key: str, now: float, held: Held) -> bool:
    holder = c.execute(sql.LOCK_HOLDER, (key,)).fetchone()
    if holder is None or not rules.lock_held(
        status=holder["status"],
        lease_token=holder["lease_token"],
        lock_token=holder["lock_token"],
        lease_expires_at=holder["lease_expires_at"],
        now=now,
    ):
        return True
    held.lock(holder["lease_expires_at"])
    return False


def tighten(c: sqlite3.Connection, package_id: int, top: int) -> int:
    """A package's bound on its pending items' priority (packages.max_item_priority), lowered to the highest
    pending priority it has now (one probe of outcomes_claimable); raised again by `raise_top` when an item
    enters pending. Returns the bound."""
    row = c.execute(sql.TOP_PENDING_PRIORITY, (package_id,)).fetchone()
    if row is None or int(row[0]) >= top:
        return top
    c.execute(sql.SET_TOP, (int(row[0]), package_id))
    return int(row[0])


def raise_top(c: sqlite3.Connection, package_id: int, priority: int) -> None:
    """An item of `priority` entered pending: its package's bound covers it."""
    c.execute(sql.RAISE_TOP, (priority, package_id, priority))


def take_locks(c: sqlite3.Connection, o: rules.RowLike, run_id: str, token: str) -> None:
    """The claimed item's lock keys (each free or dead: `candidate` checked under this writer) are its lease's."""
    keys = R.loads(o["locks"], [])
    if keys:
        c.executemany(sql.TAKE_LOCK, [(key, o["n"], token, run_id) for key in keys])


def keeps_locks(c: sqlite3.Connection, row: rules.RowLike, token: str, now: float) -> bool:
    """Whether the lease `token` on `row` (n, status, lease_expires_at, locks) still has every lock key it
    took: always while it has not run out; once it has, only the keys no other lease took since are its."""
    keys = R.loads(row["locks"], [])
    if not keys or not rules.lease_expired(row["status"], row["lease_expires_at"], now):
        return True
    return len(c.execute(sql.LOCKS_OF, (row["n"], token)).fetchall()) == len(set(keys))


def ready_in_package(c: sqlite3.Connection, package_id: int, now: float) -> bool:
    return c.execute(sql.READY_IN_PACKAGE, (package_id, now)).fetchone() is not None


def ready_in_run(c: sqlite3.Connection, run_id: str, now: float) -> bool:
    return c.execute(sql.READY_IN_RUN, (run_id, now)).fetchone() is not None


# ---- reading ----------------------------------------------------------------------------------------


def waits_for(c: sqlite3.Connection, row: sqlite3.Row) -> list[str]:
    """The item's prerequisites not met now, as "package/item" and "package/*" (at most WAITS_FOR_SHOWN)."""
    if not R.column(row, "waiting", 0):
        return []
    n, limit = row["n"], rules.WAITS_FOR_SHOWN
    out = [rules.ref_text((p, i)) for p, i in c.execute(sql.UNMET_ITEMS, (n, limit))]
    if len(out) < limit:
        out += [rules.ref_text((p, None)) for (p,) in c.execute(sql.UNMET_PACKAGES, (n, limit - len(out)))]
    return out


def locks_held(c: sqlite3.Connection, row: sqlite3.Row) -> list[str]:
    """The lock keys the item holds under its current lease (it is generating)."""
    if row["status"] != "generating" or R.column(row, "locks") is None:
        return []
    return [k for (k,) in c.execute(sql.LOCKS_OF, (row["n"], row["lease_token"]))]
