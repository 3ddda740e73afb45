"""The PostgreSQL store's runs: planning, reading, run control and the run overview."""

from __future__ import annotations

import contextlib
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import psycopg

from matrix_mcp import rules
from matrix_mcp.models import PlanResult, Run, RunAction, RunPolicy, UsageTotals, WorkerUsage
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import NewPackage, RunOverview
from matrix_mcp.store.postgres import counters, sql, work
from matrix_mcp.store.postgres import policy as claim_policy
from matrix_mcp.store.postgres.batch import (
    IN_TRANSACTION,
    PLAN_ANSWER,
    RUN_ANSWER,
    Conn,
    Tx,
    fetch_all,
    fetch_one,
)
from matrix_mcp.store.postgres.sql import (
    LATEST_SEQ_SQL,
    ONE_RUN_BY_ID,
    RUN_SUMMARIES_SQL,
    THROUGHPUT_SQL,
)

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database


async def read_run(c: Conn, run_id: str) -> Run:
    row = await fetch_one(c, ONE_RUN_BY_ID, (run_id,))
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
    gated = (
        policy.max_concurrent is not None
        or any(p.max_concurrent is not None for p in packages)
        or any(item.locks for p in packages for item in p.items)
    )
    has_edges = any(p.after or any(item.after for item in p.items) for p in packages)

    async def op(tx: Tx) -> PlanResult:
        row = await tx.one(sql.PLAN_SELECT_RUNS, (name,))
        created = row is None
        if row is None:
            run_id = str(uuid.uuid4())
            inserted = await tx.one(
                sql.PLAN_INSERT_RUNS,
                (
                    run_id,
                    name,
                    goal,
                    *R.policy_values(policy),
                    *R.claim_policy_values(policy),
                    *R.review_policy_values(policy),
                    gated,
                    now,
                    now,
                ),
            )
            if inserted is None:  # another process created it just now
                row = await tx.one(sql.PLAN_SELECT_RUNS, (name,))
                created = False
            outcome_type = policy.outcome_type
        if row is not None:
            run_id = row["id"]
            outcome_type = row["outcome_type"]
            rules.check_plan(row["state"], any(p.items for p in packages), name)
            if gated:
                await tx.execute(sql.GATE_RUN, (run_id,))
        names = [p.name for p in packages]
        prereq_packages = {
            c[0]
            for p in packages
            for x in [*p.after, *(y for i in p.items for y in i.after)]
            for c in x.candidates
        }
        known = {
            r["name"]: r
            for r in await tx.all(sql.PLAN_SELECT_PACKAGES, (run_id, sorted({*names, *prereq_packages})))
        }
        existing = {n: int(known[n]["id"]) for n in names if n in known}
        added_packages = [p.name for p in packages if p.name not in existing]
        ids = {n: int(r["id"]) for n, r in known.items()}
        if added_packages:
            top = await tx.one(sql.PLAN_SELECT_PACKAGES_2, (run_id,))
            first = int(top["pos"]) if top else 0
            specs = {p.name: p for p in packages}
            new = [specs[n] for n in added_packages]
            for r in await tx.all(
                sql.PLAN_INSERT_PACKAGES,
                (
                    run_id,
                    first,
                    added_packages,
                    [p.description for p in new],
                    [p.priority for p in new],
                    [p.max_concurrent for p in new],
                    [R.dumps([a.candidates[0][0] for a in p.after]) if p.after else None for p in new],
                    [p.review for p in new],
                ),
            ):
                ids[r["name"]] = int(r["id"])
        starts: dict[int, int] = {}
        if existing:
            for r in await tx.all(
                sql.PLAN_SELECT_OUTCOMES,
                (list(existing.values()),),
            ):
                starts[int(r["package_id"])] = int(r["pos"])
        # packages others wait for: their items carry the flag; those the plan extends were done or not
        gating = {n for n in existing if known[n]["has_dependents"]}
        edges: claim_policy.Planned | None = None
        repeated: dict[tuple[str, str], int] = {}
        if has_edges or any(p.name in gating and p.items for p in packages):
            edges, repeated = await claim_policy.plan_prerequisites(
                tx, run_id, packages, ids, existing, gating
            )
        gated_packages = gating | (edges.gated if edges is not None else set())
        pids: list[int] = []
        items: list[str] = []
        positions: list[int] = []
        specs_: list[str | None] = []
        prios: list[int] = []
        locks: list[str | None] = []
        waiting: list[int] = []
        deps: list[bool] = []
        gates: list[bool] = []
        for pkg in packages:
            pid = ids[pkg.name]
            base = starts.get(pid, 0)
            for i, item in enumerate(pkg.items):
                pids.append(pid)
                items.append(item.name)
                positions.append(base + i)
                specs_.append(R.spec_dumps(item.specifications))
                prios.append(item.priority)
                locks.append(R.locks_text(item.locks))
                waiting.append(edges.waiting.get((pkg.name, item.name), 0) if edges is not None else 0)
                deps.append(edges is not None and (pkg.name, item.name) in edges.wanted)
                gates.append(pkg.name in gated_packages)
        added_items = 0
        if items:
            inserted_rows = await tx.all(
                sql.PLAN_INSERT_OUTCOMES,
                {
                    "run": run_id,
                    "ot": outcome_type,
                    "now": now,
                    "pids": pids,
                    "items": items,
                    "pos": positions,
                    "specs": specs_,
                    "prios": prios,
                    "locks": locks,
                    "waiting": waiting,
                    "deps": deps,
                    "gates": gates,
                },
            )
            counts: dict[tuple[int, str], int] = defaultdict(int)
            ranges: dict[int, tuple[int, int]] = {}
            new_n: dict[tuple[int, str], int] = {}
            for r in inserted_rows:
                pid, prio = int(r["package_id"]), int(r["priority"])
                counts[(pid, r["status"])] += 1
                lo, hi = ranges.get(pid, (prio, prio))
                ranges[pid] = (min(lo, prio), max(hi, prio))
                new_n[(pid, r["item"])] = int(r["n"])
            for (pid, status), n in counts.items():
                tx.add((run_id, pid, None, None), total=n, **{status: n})
                added_items += n
            if ranges:
                rp = sorted(ranges)
                await tx.execute(
                    sql.WIDEN_PRIORITIES, (rp, [ranges[p][0] for p in rp], [ranges[p][1] for p in rp])
                )
            if edges is not None:
                await edges.write(tx, ids, repeated, new_n)
                got = {pid for pid, _ in counts}
                was_done = [ids[p] for p in gating if ids[p] in got and edges.done.get(ids[p], False)]
                await claim_policy.grew(tx, was_done, now)
                with_edges = edges.prerequisites.keys()
                grown = [
                    (
                        ids[p],
                        p,
                        [n for (pid, name), n in new_n.items() if pid == ids[p] and (p, name) in with_edges],
                    )
                    for p in sorted(gating)
                ]
                await claim_policy.check_acyclic(tx, [g for g in grown if g[2]])
        if created or added_items or added_packages:
            await tx.execute(sql.PLAN_UPDATE_RUNS, (now, run_id))
            tx.event(
                run_id,
                None,
                rules.planned(created=created, packages=added_packages, items=added_items),
                now,
            )
        await tx.flush()
        run = await read_run(tx.conn, run_id)
        return R.plan_result(run, created, added_packages, added_items)

    return await db.write(op, journal=PLAN_ANSWER)


async def get_run(db: Database, ref: str) -> Run:
    async def op(c: Conn) -> Run:
        row = await fetch_one(
            c,
            sql.ONE_RUN_BY_REF,
            (ref, ref, ref),
        )
        if row is None:
            raise rules.unknown_run(ref)
        return R.run_from(row)

    return await db.read(op)


async def list_runs(db: Database) -> list[Run]:
    async def op(c: Conn) -> list[Run]:
        rows = await fetch_all(c, sql.RUN_LIST)
        return [R.run_from(r) for r in rows]

    return await db.read(op)


async def control_run(db: Database, run_id: str, *, action: RunAction, now: float) -> Run:
    async def op(tx: Tx) -> Run:
        state = await tx.one(sql.CONTROL_RUN_SELECT_RUNS, (run_id,))
        if state is None:
            raise rules.unknown_run(run_id)
        target = rules.control_target(state["state"], action)
        if target != state["state"]:
            await tx.execute(sql.CONTROL_RUN_UPDATE_RUNS, (target, now, run_id))
            cancelled = await work.cancel_pending(tx, run_id, now) if rules.cancels_pending(target) else None
            tx.event(run_id, None, rules.run_controlled(action, cancelled), now)
        await tx.flush()
        return await read_run(tx.conn, run_id)

    return await db.write(op, journal=RUN_ANSWER)


WORKERS_SHOWN = 100  # run_status lists at most this many workers' usage


async def run_overview(db: Database, run_id: str, *, since: float) -> RunOverview:
    """The run, its package summaries, its recent throughput and the latest event, in one snapshot
    and one round trip (pipeline mode: BEGIN, the four reads and COMMIT go out together)."""

    async def attempt() -> RunOverview:
        async with db.pool.connection() as conn:
            try:
                async with conn.pipeline():
                    await conn.execute(sql.BEGIN_SNAPSHOT)
                    run_cur = await conn.execute(ONE_RUN_BY_ID, (run_id,))
                    summaries_cur = await conn.execute(RUN_SUMMARIES_SQL, {"run": run_id})
                    finished_cur = await conn.execute(THROUGHPUT_SQL, (run_id, int(since // 60)))
                    seq_cur = await conn.execute(LATEST_SEQ_SQL)
                    workers_cur = await conn.execute(sql.WORKERS_OF_RUN, (run_id, WORKERS_SHOWN))
                    await conn.execute(sql.COMMIT)
                    run_row = await run_cur.fetchone()
                    summary_rows = await summaries_cur.fetchall()
                    finished = await finished_cur.fetchone()
                    seq = await seq_cur.fetchone()
                    worker_rows = await workers_cur.fetchall()
            except BaseException:
                if conn.info.transaction_status in IN_TRANSACTION:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute(sql.ROLLBACK)
                raise
        if run_row is None:
            raise rules.unknown_run(run_id)
        return RunOverview(
            R.run_from(run_row),
            [counters.summary_of(r) for r in summary_rows],
            int(finished["n"]) if finished else 0,
            int(seq["s"]) if seq else 0,
            [
                WorkerUsage(worker=w["worker"], usage=R.usage_totals_from(w) or UsageTotals())
                for w in worker_rows
            ],
        )

    return await db.with_retry(attempt)
