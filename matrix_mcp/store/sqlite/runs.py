"""The SQLite store's runs: planning, reading, run control and the run overview."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence

from matrix_mcp import rules
from matrix_mcp.models import PlanResult, Run, RunAction, RunPolicy, UsageTotals, WorkerUsage
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import NewPackage, RunOverview
from matrix_mcp.store.sqlite import counters, events, sql, work
from matrix_mcp.store.sqlite import policy as claim_policy
from matrix_mcp.store.sqlite.connection import Database


def resolve_run_id(c: sqlite3.Connection, ref: str) -> str:
    row = c.execute(sql.RESOLVE_RUN_ID, (ref, ref, ref)).fetchone()
    if row is None:
        raise rules.unknown_run(ref)
    return str(row[0])


def read_run(c: sqlite3.Connection, run_id: str) -> Run:
    row = c.execute(sql.RUN_BY_ID, (run_id,)).fetchone()
    if row is None:
        raise rules.unknown_run(run_id)
    return R.run_from(row)


async def plan(
    db: Database,
    *,
    name: str,
    goal: str | None,
    policy: RunPolicy,
    packages: Sequence[NewPackage],
    now: float,
) -> PlanResult:
    def op(c: sqlite3.Connection) -> PlanResult:
        row = c.execute(sql.PLAN_SELECT_RUNS, (name,)).fetchone()
        created = row is None
        if created:
            run_id = str(uuid.uuid4())
            c.execute(
                sql.PLAN_INSERT_RUNS,
                (
                    run_id,
                    name,
                    goal,
                    *R.policy_values(policy),
                    *R.claim_policy_values(policy),
                    *R.review_policy_values(policy),
                    now,
                    now,
                ),
            )
        else:
            run_id = row["id"]
            rules.check_plan(row["state"], any(p.items for p in packages), name)
        outcome_type = c.execute(sql.RUN_OUTCOME_TYPE, (run_id,)).fetchone()[0]
        added_packages: list[str] = []
        added_items = 0
        with_edges: list[tuple[NewPackage, int, dict[str, int]]] = []
        grown: list[tuple[int, str, dict[str, int]]] = []  # extended packages others wait for
        next_pos = c.execute(sql.NEXT_PACKAGE_POSITION, (run_id,)).fetchone()[0]
        for pkg in packages:
            prow = c.execute(sql.PLAN_PACKAGE, (run_id, pkg.name)).fetchone()
            top = max((item.priority for item in pkg.items), default=0)
            if prow is None:
                cur = c.execute(
                    sql.PLAN_INSERT_PACKAGES,
                    (
                        run_id,
                        pkg.name,
                        pkg.description,
                        next_pos,
                        pkg.priority,
                        pkg.max_concurrent,
                        R.spec_dumps([p.candidates[0][0] for p in pkg.after] or None),
                        top,
                        pkg.review,
                    ),
                )
                package_id = int(cur.lastrowid or 0)
                next_pos += 1
                added_packages.append(pkg.name)
                item_pos = 0
            else:
                package_id = prow["id"]
                item_pos = c.execute(
                    sql.NEXT_ITEM_POSITION,
                    (package_id,),
                ).fetchone()[0]
                if pkg.items:
                    c.execute(sql.PLAN_ITEM_PRIORITY, (top, package_id))
            before = c.total_changes
            c.executemany(
                sql.PLAN_INSERT_OUTCOMES,
                [
                    (
                        str(uuid.uuid4()),
                        run_id,
                        package_id,
                        item.name,
                        item_pos + i,
                        outcome_type,
                        R.spec_dumps(item.specifications),
                        now,
                        now,
                        now,
                        item.priority,
                        R.locks_text(item.locks),
                    )
                    for i, item in enumerate(pkg.items)
                ],
            )
            added = c.total_changes - before
            if added:
                c.execute(
                    sql.PLAN_UPDATE_PACKAGES,
                    (added, added, package_id),
                )
                added_items += added
                claim_policy.package_grew(c, package_id, prow, now)
                if pkg.after or any(item.after for item in pkg.items):
                    new = dict((item, n) for n, item in c.execute(sql.PLAN_NEW_ITEMS, (package_id, item_pos)))
                    with_edges.append((pkg, package_id, new))
                    if prow is not None and prow["has_dependents"]:
                        grown.append((package_id, pkg.name, new))
        claim_policy.plan_edges(c, run_id, with_edges, now)
        claim_policy.check_acyclic(c, grown)
        if created or added_items or added_packages:
            c.execute(sql.PLAN_UPDATE_RUNS, (now, run_id))
            events.add_event(
                c,
                run_id,
                None,
                rules.planned(created=created, packages=added_packages, items=added_items),
                now,
            )
        run = read_run(c, run_id)
        return R.plan_result(run, created, added_packages, added_items)

    return await db.write(op)


async def get_run(db: Database, ref: str) -> Run:
    return await db.read(lambda c: read_run(c, resolve_run_id(c, ref)))


async def list_runs(db: Database) -> list[Run]:
    def op(c: sqlite3.Connection) -> list[Run]:
        rows = c.execute(sql.RUN_LIST).fetchall()
        return [R.run_from(r) for r in rows]

    return await db.read(op)


async def control_run(db: Database, run_id: str, *, action: RunAction, now: float) -> Run:
    def op(c: sqlite3.Connection) -> Run:
        state = c.execute(sql.RUN_STATE, (run_id,)).fetchone()
        if state is None:
            raise rules.unknown_run(run_id)
        target = rules.control_target(state[0], action)
        if target != state[0]:
            c.execute(sql.CONTROL_RUN_UPDATE_RUNS, (target, now, run_id))
            cancelled = work.cancel_unstarted(c, run_id, now) if rules.cancels_pending(target) else None
            events.add_event(c, run_id, None, rules.run_controlled(action, cancelled), now)
        return read_run(c, run_id)

    return await db.write(op)


WORKERS_SHOWN = 100  # run_status lists at most this many workers' usage


async def run_overview(db: Database, run_id: str, *, since: float) -> RunOverview:
    def op(c: sqlite3.Connection) -> RunOverview:
        summaries = counters.summaries(c, "p.run_id = ?", [run_id])
        finished = c.execute(
            sql.RUN_OVERVIEW_SELECT_OUTCOME_MINUTES,
            (run_id, int(since // 60)),
        ).fetchone()[0]
        latest = c.execute(sql.LATEST_SEQ).fetchone()[0]
        workers = [
            WorkerUsage(worker=w["worker"], usage=R.usage_totals_from(w) or UsageTotals())
            for w in c.execute(sql.WORKERS_OF_RUN, (run_id, WORKERS_SHOWN))
        ]
        return RunOverview(read_run(c, run_id), summaries, int(finished), int(latest), workers)

    return await db.read(op)
