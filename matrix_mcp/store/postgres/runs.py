"""The PostgreSQL store's runs: planning, reading, run control and the run overview."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import psycopg

from matrix_mcp import rules
from matrix_mcp.models import PlanResult, Run, RunAction, RunPolicy
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import NewPackage, RunOverview
from matrix_mcp.store.postgres import counters, sql, work
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
        names = [p.name for p in packages]
        existing = {
            r["name"]: int(r["id"])
            for r in await tx.all(
                sql.PLAN_SELECT_PACKAGES,
                (run_id, names),
            )
        }
        added_packages = [p.name for p in packages if p.name not in existing]
        ids = dict(existing)
        if added_packages:
            top = await tx.one(sql.PLAN_SELECT_PACKAGES_2, (run_id,))
            first = int(top["pos"]) if top else 0
            descriptions = {p.name: p.description for p in packages}
            for r in await tx.all(
                sql.PLAN_INSERT_PACKAGES,
                (run_id, first, added_packages, [descriptions[n] for n in added_packages]),
            ):
                ids[r["name"]] = int(r["id"])
        starts: dict[int, int] = {}
        if existing:
            for r in await tx.all(
                sql.PLAN_SELECT_OUTCOMES,
                (list(existing.values()),),
            ):
                starts[int(r["package_id"])] = int(r["pos"])
        pids: list[int] = []
        items: list[str] = []
        positions: list[int] = []
        specs: list[str | None] = []
        for pkg in packages:
            pid = ids[pkg.name]
            base = starts.get(pid, 0)
            for i, item in enumerate(pkg.items):
                pids.append(pid)
                items.append(item.name)
                positions.append(base + i)
                specs.append(R.spec_dumps(item.specifications))
        added_items = 0
        if items:
            for r in await tx.all(
                sql.PLAN_INSERT_OUTCOMES,
                {
                    "run": run_id,
                    "ot": outcome_type,
                    "now": now,
                    "pids": pids,
                    "items": items,
                    "pos": positions,
                    "specs": specs,
                },
            ):
                n = int(r["n"])
                tx.add((run_id, int(r["package_id"]), None, None), total=n, pending=n)
                added_items += n
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
                    await conn.execute(sql.COMMIT)
                    run_row = await run_cur.fetchone()
                    summary_rows = await summaries_cur.fetchall()
                    finished = await finished_cur.fetchone()
                    seq = await seq_cur.fetchone()
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
        )

    return await db.with_retry(attempt)
