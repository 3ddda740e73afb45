"""The PostgreSQL store's work loop: claims and completes merged set-based per batch (and one by one),
the lease sweep, heartbeats, failures and retries. Each decision is matrix_mcp.rules'; each write a
rules.Transition applied by Tx.apply (or, where one statement decided and wrote, its effects by Tx.effects)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from matrix_mcp import rules
from matrix_mcp.audit import acting_as, current_principal
from matrix_mcp.models import HeartbeatResult, LeaseRef, LeaseState, Outcome, ts
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import Claim, ClaimBatch, ClaimRequest, Failure, NextClaim, Report, Reported
from matrix_mcp.store.postgres import policy, sql, usage
from matrix_mcp.store.postgres.batch import (
    IDS_ANSWER,
    REPORTED_ANSWER,
    Batch,
    BatchRequest,
    ClaimArgs,
    CompleteArgs,
    Conn,
    Row,
    Slot,
    Tx,
    claim_params,
    claims_from,
    fetch_all,
    log,
)
from matrix_mcp.store.postgres.sql import (
    CANCEL_PENDING_SQL,
    CAP_LOCK_SQL,
    CLAIM_GATED_SQL,
    CLAIM_SQL,
    COMPLETE_MANY_SQL,
    COMPLETE_SQL,
    DROP_ORPHAN_LOCKS,
    EARLIEST,
    HEARTBEAT_NOTE_SQL,
    HEARTBEAT_SQL,
    HELD_SQL,
    RECOVER_CLAIMS_SQL,
    SWEEP_SQL,
)

if TYPE_CHECKING:
    from matrix_mcp.store.postgres.connection import Database


SWEEP_LIMIT = 500


# the merged claims of a run sweep its expired leases at most once a second (by the claims' own clock): a sweep
# that finds nothing still costs the database a statement per batch
SWEEP_EVERY = 1.0
SWEPT_AT: dict[str, float] = {}


async def recover_claims(conn: Conn, batch: list[BatchRequest]) -> None:
    """Before a batch is re-run after a transient error: claims an earlier attempt committed although
    its answer was lost (the connection died after COMMIT) are still leased under the tokens that
    attempt handed out. Those leases go to their request now — their events and counters were
    committed with them — instead of staying orphaned until they expire."""
    retried = [(req, req.merge) for req in batch if isinstance(req.merge, ClaimArgs) and req.merge.issued]
    if not retried:
        return
    runs = sorted({a.run_id for _, a in retried})
    tokens = [t for _, a in retried for t in a.issued]
    by_token = {r["lease_token"]: r for r in await fetch_all(conn, RECOVER_CLAIMS_SQL, (runs, tokens))}
    for req, a in retried:
        got = [R.claim_from(by_token[t]) for t in a.issued if t in by_token]
        if not got:
            continue
        got = await usage.briefed(Tx(conn, Batch()), got)  # only reads
        log.info("recovered %d claim(s) committed by an attempt whose answer was lost", len(got))
        if len(got) >= a.limit:
            req.value = ClaimBatch(got)
            req.handled = True
        else:
            req.rest = claim_op(a, got)


LOST_ROUNDS = 8  # rounds a claim asks again after its items lost lock keys to better ranked ones


MERGE_SLOTS = 4000  # items one merged claim statement may hand out (claim_seq leaves 4096 per statement)


# runs whose claims go through lock keys or caps (`runs.gated`, which a plan sets and nothing clears): known
# once a claim statement said so; an ungated claim statement claims nothing in a gated run and says so
GATED: set[str] = set()


async def claim_rows(
    tx: Tx, run_id: str, package: str | None, exhausted: list[tuple[int, int]], now: float, slots: list[Slot]
) -> list[Row]:
    """One claim statement's rows for `slots` (CLAIM_SQL, or for a gated run CLAIM_GATED_SQL after its capped
    rows are locked, once per batch; keys taken for an item a concurrent claim then beat are dropped)."""
    params = claim_params(run_id, package, exhausted, now, slots)
    if run_id not in GATED:
        rows = await tx.all(CLAIM_SQL, params)
        if not rows or not rows[0]["gated"]:
            return rows
        GATED.add(run_id)
    if (run_id, package) not in tx.batch.capped:
        tx.batch.capped.add((run_id, package))
        await tx.execute(CAP_LOCK_SQL, {"run": run_id, "package": package})
    rows = await tx.all(CLAIM_GATED_SQL, params)
    await drop_orphans(tx.conn, rows, slots)
    return rows


async def drop_orphans(conn: Conn, rows: Sequence[Row], slots: list[Slot]) -> None:
    orphans = rows[0]["orphans"] if rows else None
    if orphans:
        await conn.execute(DROP_ORPHAN_LOCKS, (orphans, [token for _, _, token, _ in slots]))


def dry_levels(rows: Sequence[Row]) -> tuple[list[tuple[int, int]], set[tuple[int, int]]]:
    """Of a claim statement's levels (package, priority), those with nothing more for this call (they offered
    fewer items than their share, and all of those were claimed), and every level it saw."""
    short: dict[tuple[int, int], int] = {}
    claimed: dict[tuple[int, int], int] = defaultdict(int)
    for o in rows:
        level = (int(o["pk_id"]), int(o["ip"]))
        short[level] = int(o["fetched"]) if int(o["fetched"]) < int(o["quota"]) else -1
        if o["id"] is not None:
            claimed[level] += 1
    return [level for level, k in short.items() if k >= 0 and claimed[level] == k], set(short)


def ask_again(rows: Sequence[Row], short: list[tuple[int, int]], offered: set[tuple[int, int]]) -> bool:
    """Whether a claim statement that came back short of its slots is asked again in its transaction: not
    when every level it saw ran dry (nothing is left), when it took what the run's cap left room for (a
    gated statement's `lim`), nor when no level ran dry and it claimed nothing; otherwise the next round
    may find more: a level ran dry (the next round shares its slots among the others), or a level took
    fewer items than it fetched (a package filled its cap at a better level while the levels ranked below
    had their shares counted on those items: the next round ranks without that package)."""
    if len(short) == len(offered):
        return False
    claimed = sum(o["id"] is not None for o in rows)
    lim = rows[0].get("lim") if rows else None
    if lim is not None and claimed >= int(lim):
        return False
    return bool(short) or claimed > 0


def claim_op(args: ClaimArgs, already: list[Claim]) -> Callable[[Tx], Awaitable[ClaimBatch]]:
    """One claim request on its own: `already` holds what the batch's merged statement gave it."""
    run_id, package, now = args.run_id, args.package, args.now

    async def op(tx: Tx) -> ClaimBatch:
        claims = list(already)
        if claims:
            tx.wrote = True
        if run_id not in tx.batch.swept:  # once per batch and run: expired leases go back first
            tx.batch.swept[run_id] = now
            if await sweep(tx, run_id, now):
                tx.wrote = True
        exhausted: list[tuple[int, int]] = []
        rounds = 0
        while len(claims) < args.limit:
            want = args.limit - len(claims)
            slots = [(args.worker, now, args.token(), current_principal.get()) for _ in range(want)]
            rows = [
                o
                for o in await claim_rows(tx, run_id, package, exhausted, now, slots)
                if o["pk_id"] is not None
            ]
            got = claims_from(tx, run_id, args.worker, [o for o in rows if o["id"] is not None], now)
            claims += await usage.briefed(tx, got)
            # a level that offered fewer items than its share has nothing more for this call (or the rest
            # is locked by other claimers); the next round shares what is left among the others
            short, offered = dry_levels(rows)
            if rounds < LOST_ROUNDS and any(o.get("lost") for o in rows[:1]):
                rounds += 1  # an item lost a key to a better one: the winner holds it now, ask again
                exhausted += short
                continue
            if not ask_again(rows, short, offered):
                break
            exhausted += short
        if len(claims) >= args.limit:
            return ClaimBatch(claims)
        run = await tx.one(sql.RUN_STATE, (run_id,))
        if run is None:
            raise rules.unknown_run(run_id)
        blocked = rules.claim_blocked(run["state"])
        if blocked is not None:
            return ClaimBatch(claims, blocked)
        await tx.flush()
        return ClaimBatch(claims, *await why_nothing(tx, run_id, package, now))

    return op


async def next_claims(
    tx: Tx, outcome: Outcome, token: str, next_claim: NextClaim | None, now: float, fresh: bool
) -> ClaimBatch | None:
    """The next leases of a report: claimed now when the report is fresh; for a repeat of the identical
    report, the leases the first one took that its worker still holds (claimed at that report's time)."""
    if next_claim is None:
        return None
    if fresh:
        args = ClaimArgs(
            outcome.run_id,
            outcome.worker or "",
            next_claim.limit,
            next_claim.package,
            now,
            next_claim.token_factory,
        )
        return await claim_op(args, [])(tx)
    first = await tx.one(
        sql.NEXT_CLAIMS_SELECT_OUTCOME_ATTEMPTS,
        (outcome.id, token),
    )
    if first is None or first["ended_at"] is None:
        return ClaimBatch([])
    rows = await tx.all(HELD_SQL, (outcome.run_id, first["worker"], first["ended_at"], next_claim.limit))
    return ClaimBatch(await usage.briefed(tx, [R.claim_from(r) for r in rows]))


async def merged(conn: Conn, state: Batch, batch: list[BatchRequest]) -> None:
    """The set-based fast path of a batch: all claims of one run (and package filter) in one statement,
    handed out in request order; all completes in one statement. A request the merged statement cannot
    answer whole (short claim, stale or repeated report) is finished one by one afterwards.

    The claim statements and the completes' statement go out before any answer is read (pipeline mode):
    the database runs the claims while this process dumps the completes' parameters, instead of each side
    waiting for the other (reading one answer in pipeline mode waits for every statement sent before it)."""
    groups: dict[tuple[str, str | None], list[list[tuple[BatchRequest, ClaimArgs]]]] = {}
    completes: list[tuple[BatchRequest, CompleteArgs]] = []
    for req in batch:
        a = req.merge
        if req.handled or req.rest is not None:  # recovered from a lost answer
            continue
        if isinstance(a, ClaimArgs):
            chunks = groups.setdefault((a.run_id, a.package), [[]])
            if chunks[-1] and sum(x.limit for _, x in chunks[-1]) + a.limit > MERGE_SLOTS:
                chunks.append([])
            chunks[-1].append((req, a))
        elif isinstance(a, CompleteArgs):
            completes.append((req, a))
    sent: list[tuple[str, str | None, list[tuple[BatchRequest, ClaimArgs]], Any]] = []
    for (run_id, package), chunks in groups.items():
        for chunk in chunks:
            sent.append((run_id, package, chunk, await send_claim(conn, state, run_id, package, chunk)))
    completed = await send_completes(conn, completes) if completes else None
    for run_id, package, chunk, (cutoff, swept, claimed, gated, slots, params) in sent:
        if swept is not None:
            sweep = Tx(conn, state)
            await sweep_effects(sweep, run_id, cutoff, await swept.fetchall())
            sweep.succeeded()
        rows = await claimed.fetchall()
        if not gated and rows and rows[0]["gated"]:  # the run is gated: its claims take its locks and caps
            GATED.add(run_id)
            state.capped.add((run_id, package))
            await conn.execute(CAP_LOCK_SQL, {"run": run_id, "package": package})
            rows = await fetch_all(conn, CLAIM_GATED_SQL, params)
            gated = True
        if gated:
            await drop_orphans(conn, rows, slots)
        # each request owns `limit` consecutive slots (ranks); a gated statement may leave a slot empty
        got = {int(o["rank"]): o for o in rows if o["id"] is not None}
        owned: list[list[Row]] = []
        pos = 0
        for _, a in chunk:
            owned.append([got[k] for k in range(pos + 1, pos + a.limit + 1) if k in got])
            pos += a.limit
        if gated:
            await short_pass(conn, run_id, package, cutoff, chunk, owned, rows)
        # the whole chunk's events and counter moves go straight to the batch: the merged
        # statement succeeded or the batch re-runs one by one (NeedSafe), so nothing of one
        # request has to be kept apart to be rolled back alone
        whole = Tx(conn, state)
        events = state.events
        for (req, a), mine in zip(chunk, owned, strict=True):
            claims = []
            with acting_as(req.principal):
                for o in mine:
                    ev = rules.claimed(
                        package=o["package_name"], item=o["item"], worker=a.worker, attempt=o["attempts"]
                    )
                    events.append((run_id, o["id"], ev.kind, ev.payload(), float(a.now)))
                    claims.append(R.claim_from(o))
            claims = await usage.briefed(whole, claims)
            if len(claims) == a.limit:
                req.value = ClaimBatch(claims)
                req.handled = True
            else:
                req.rest = claim_op(a, claims)
        per_package: dict[int, int] = defaultdict(int)
        for mine in owned:
            for o in mine:
                per_package[int(o["pk_id"])] += 1
        for pid, n in per_package.items():
            whole.move(run_id, pid, *rules.CLAIMED_MOVE, n)
        whole.succeeded()
    if completed is not None:
        await complete_many(conn, state, *completed)


async def send_claim(
    conn: Conn, state: Batch, run_id: str, package: str | None, chunk: list[tuple[BatchRequest, ClaimArgs]]
) -> tuple[float, Any, Any, bool, list[Slot], dict[str, Any]]:
    """Send one chunk's claim statement (the run's sweep before it, once per batch) without reading its answer."""
    cutoff = min(a.now for _, a in chunk)
    swept = None
    last = SWEPT_AT.get(run_id)
    # sent with the claim, without waiting for its answer; at most once per SWEEP_EVERY of the callers' clock
    # (a claim that comes back short sweeps first and asks again: claim_op)
    if run_id not in state.swept and (last is None or not 0 <= cutoff - last < SWEEP_EVERY):
        state.swept[run_id] = SWEPT_AT[run_id] = cutoff
        swept = await conn.execute(SWEEP_SQL, sweep_params(run_id, cutoff))
    slots = [(a.worker, a.now, a.token(), req.principal) for req, a in chunk for _ in range(a.limit)]
    params = claim_params(run_id, package, [], cutoff, slots)
    gated = run_id in GATED
    if gated and (run_id, package) not in state.capped:
        state.capped.add((run_id, package))
        await conn.execute(CAP_LOCK_SQL, {"run": run_id, "package": package})
    claimed = await conn.execute(CLAIM_GATED_SQL if gated else CLAIM_SQL, params)
    return cutoff, swept, claimed, gated, slots, params


async def short_pass(
    conn: Conn,
    run_id: str,
    package: str | None,
    cutoff: float,
    chunk: list[tuple[BatchRequest, ClaimArgs]],
    owned: list[list[Row]],
    rows: Sequence[Row],
) -> None:
    """A gated merged statement's second round: the slots it left empty where it may have more (an item lost
    a key to a better ranked one, or a level ran dry while others did not), for every short request in one
    statement over its dry levels, as each request's own next round would ask; what is still short after it
    goes one by one (claim_op)."""
    levels = [o for o in rows if o["pk_id"] is not None]
    short, offered = dry_levels(levels)
    lost = any(o.get("lost") for o in levels[:1])
    if not lost and not ask_again(levels, short, offered):
        return
    want = [(i, a, a.limit - len(owned[i])) for i, (_, a) in enumerate(chunk) if len(owned[i]) < a.limit]
    if not want:
        return
    slots = [(a.worker, a.now, a.token(), chunk[i][0].principal) for i, a, n in want for _ in range(n)]
    again = await fetch_all(conn, CLAIM_GATED_SQL, claim_params(run_id, package, short, cutoff, slots))
    await drop_orphans(conn, again, slots)
    got = {int(o["rank"]): o for o in again if o["id"] is not None}
    pos = 0
    for i, _, n in want:
        owned[i] += [got[k] for k in range(pos + 1, pos + n + 1) if k in got]
        pos += n


async def send_completes(
    conn: Conn, completes: list[tuple[BatchRequest, CompleteArgs]]
) -> tuple[list[tuple[BatchRequest, CompleteArgs]], Any]:
    """Send the batch's completes as one statement without reading its answer (complete_many reads it)."""
    seen: set[str] = set()
    todo: list[tuple[BatchRequest, CompleteArgs]] = []
    for req, a in completes:
        if a.outcome_id not in seen:  # a repeat of the same report in this batch goes one by one
            seen.add(a.outcome_id)
            todo.append((req, a))
    mreq: list[int] = []
    mnames: list[str] = []
    mvalues: list[float] = []
    for i, (_, a) in enumerate(todo, start=1):
        for k, v in a.values:
            mreq.append(i)
            mnames.append(k)
            mvalues.append(v)
    cursor = await conn.execute(
        COMPLETE_MANY_SQL,
        {
            "ids": [a.outcome_id for _, a in todo],
            "tokens": [a.lease_token for _, a in todo],
            "nows": [float(a.now) for _, a in todo],
            "metrics": [a.metrics for _, a in todo],
            "metadata": [a.metadata for _, a in todo],
            "paths": [a.report.outcome_path for _, a in todo],
            "shas": [a.report.content_sha256 for _, a in todo],
            "bytes": [a.report.content_bytes for _, a in todo],
            "mimes": [a.report.mime_type for _, a in todo],
            "bodies": [a.report.inline for _, a in todo],
            "mreq": mreq,
            "mnames": mnames,
            "mvalues": mvalues,
            **usage.reported([a.report.usage for _, a in todo]),
        },
    )
    return todo, cursor


async def complete_many(
    conn: Conn, state: Batch, todo: list[tuple[BatchRequest, CompleteArgs]], cursor: Any
) -> None:
    """The merged completes' answers and effects, from the statement send_completes sent."""
    rows = await cursor.fetchall()
    # as for merged claims: the statement's effects go straight to the batch (all or NeedSafe)
    # (the statement took the rows whose lease holds and wrote rules.duration: tests/rules/test_rules.py holds
    # it to the rules; `row` is the item as the statement left it)
    whole = Tx(conn, state)
    spends: list[usage.Spend] = []
    for row in sorted(rows, key=lambda r: int(r["req"])):
        req, a = todo[int(row["req"]) - 1]
        t = rules.complete(
            row,
            lease_token=a.lease_token,
            report=a.report,
            now=a.now,
            encoded=(a.metrics, a.metadata),
            review=rules.review_required(row["run_review"], row["package_review"]),
        )
        with acting_as(req.principal):
            whole.effects(t, a.now)
        spent = usage.spend_of(row, t)
        if spent is not None:
            spends.append(spent)
        req.value = R.outcome_from(row)
        req.handled = True
    last = max(float(a.now) for _, a in todo)
    if spends:  # (the statement put each report's usage on its attempt)
        await usage.record(whole, spends, last, on_attempts=True)
    if any(r["q_dependents"] or r["q_gate"] for r in rows):  # (the statement let go of the lock keys)
        await policy.completed_many(whole, rows, last)
    whole.succeeded()


async def leased_row(tx: Tx, outcome_id: str, token: str) -> Row:
    row = await tx.one(
        sql.LEASED_ROW_SELECT_OUTCOMES,
        (outcome_id,),
    )
    return rules.check_lease(row, outcome_id, token)


async def sweep(tx: Tx, run_id: str, now: float) -> int:
    """Expired leases go back to pending (or failed when attempts are spent, cancelled when the run is).
    Every process sweeps; SKIP LOCKED keeps two sweepers off the same row."""
    rows = await tx.all(SWEEP_SQL, sweep_params(run_id, now))
    await sweep_effects(tx, run_id, now, rows)
    return len(rows)


def sweep_params(run_id: str, now: float) -> dict[str, Any]:
    return {"run": run_id, "now": now, "limit": SWEEP_LIMIT}


async def sweep_effects(tx: Tx, run_id: str, now: float, rows: Sequence[Row]) -> None:
    """The counter moves and events of the leases a sweep statement returned."""
    for r in rows:
        t = rules.expire_to(r, r["target"], now)
        tx.effects(t, now)
        await policy.expired(tx, r, t, now)


async def cancel_pending(tx: Tx, run_id: str, now: float) -> int:
    """The run's pending items end cancelled: the statement writes rules.cancel's values (a property
    test in tests/rules/test_rules.py holds it to them); how many did."""
    moves = {m.old: m for m in (rules.cancel(now), rules.cancel_blocked(now))}
    total = 0
    for r in await tx.all(CANCEL_PENDING_SQL, {"now": now, "run": run_id}):
        n = int(r["n"])
        move = moves[r["was"]]
        tx.move(run_id, int(r["package_id"]), move.old, move.new, n)
        total += n
    return total


async def why_nothing(tx: Tx, run_id: str, package: str | None, now: float) -> tuple[Any, float | None]:
    """Why a claim came back short (rules.why_nothing) and when to ask again."""
    row = await tx.one(
        sql.WHY_NOTHING_SELECT_PACKAGE_COUNTERS,
        (run_id, package, package),
    )
    assert row is not None
    if package is not None and row["n"] == 0:
        raise rules.unknown_package_in_run(package)
    total = 0
    pending, generating, blocked = int(row["pending"]), int(row["generating"]), int(row["blocked"])
    in_review = int(row["in_review"])
    if not pending and not generating and not blocked:  # done or empty: said of the whole run
        t = await tx.one(
            sql.WHY_NOTHING_SELECT_PACKAGE_COUNTERS_2,
            (run_id,),
        )
        total = int(t["total"]) if t else 0
    run_wide = package is not None and blocked > 0 and not pending
    if run_wide:  # blocked items wait on the run's leases and reviews, not only their package's
        whole = await tx.one(sql.WHY_NOTHING_SELECT_PACKAGE_COUNTERS, (run_id, None, None))
        if whole:
            generating, in_review = int(whole["generating"]), int(whole["in_review"])
    held: Row = {}
    if pending and run_id in GATED:  # ready items may be held back by a cap or by lock keys
        held = await tx.one(sql.WHY_GATED_SQL, {"run": run_id, "package": package, "now": now}) or {}
    run_capped, package_capped = bool(held.get("run_capped")), bool(held.get("package_capped"))
    reason, column = rules.why_nothing(
        pending=pending,
        generating=generating,
        total=total,
        blocked=blocked,
        capped=run_capped or package_capped,
        locked=bool(held.get("locked")),
        in_review=in_review,
    )
    if column is None:
        return reason, None
    if column == "cap_holders":
        return reason, held["run_first"] if run_capped else held["package_first"]
    if column == "lock_holders":
        return reason, held["lock_first"]
    if package is None or run_wide:
        m = await tx.one(EARLIEST[column], (run_id,))
    else:
        m = await tx.one(EARLIEST[column] + sql.IN_PACKAGE, (run_id, run_id, package))
    return reason, m["t"] if m else None


async def claim(db: Database, request: ClaimRequest, *, now: float) -> ClaimBatch:
    args = ClaimArgs(
        run_id=request.run_id,
        worker=request.worker,
        limit=request.limit,
        package=request.package,
        now=now,
        token_factory=request.token_factory,
    )
    return await db.write(claim_op(args, []), atomic=True, merge=args)


async def heartbeat(db: Database, leases: Sequence[LeaseRef], *, now: float) -> HeartbeatResult:
    async def op(tx: Tx) -> HeartbeatResult:
        # the leases that hold (rules.lease_holds) run until rules.lease_expires: tests/rules/test_rules.py
        # holds the statement to them
        params = {
            "now": now,
            "ids": [lease.outcome_id for lease in leases],
            "tokens": [lease.lease_token for lease in leases],
        }
        if any(lease.note is not None for lease in leases):  # (rules.heartbeat: a note replaces the last)
            params["notes"] = [lease.note for lease in leases]
        rows = await tx.all(HEARTBEAT_NOTE_SQL if "notes" in params else HEARTBEAT_SQL, params)
        tx.wrote = bool(rows)
        held = {(r["id"], r["lease_token"]): r for r in rows}
        extended: list[LeaseState] = []
        lost: list[str] = []
        cancelled: list[str] = []
        for lease in leases:
            r = held.get((lease.outcome_id, lease.lease_token))
            if r is None:
                lost.append(lease.outcome_id)
                continue
            if rules.stops_work(r["state"]):
                cancelled.append(lease.outcome_id)
            extended.append(
                LeaseState(outcome_id=lease.outcome_id, lease_expires_at=ts(r["lease_expires_at"]))  # type: ignore[arg-type]
            )
        return HeartbeatResult(extended=extended, lost=lost, cancelled=cancelled)

    return await db.write(op, atomic=True)


async def complete(
    db: Database,
    outcome_id: str,
    *,
    lease_token: str,
    report: Report,
    now: float,
    next_claim: NextClaim | None = None,
) -> Reported:
    metrics, metadata = R.dumps(report.metrics), R.dumps(report.metadata)
    values = R.numeric_metrics(report.metrics)
    params = {
        "now": now,
        "metrics": metrics,
        "metadata": metadata,
        "path": report.outcome_path,
        "sha": report.content_sha256,
        "bytes": report.content_bytes,
        "mime": report.mime_type,
        "id": outcome_id,
        "token": lease_token,
        "names": [k for k, _ in values],
        "values": [v for _, v in values],
        "body": report.inline,
    }

    async def op(tx: Tx) -> Outcome:
        # the statement completes the item when its lease holds (rules.lease_holds, with
        # rules.duration: tests/rules/test_rules.py holds the SQL to them); `row` is the item before it
        row = await tx.one(COMPLETE_SQL, params)
        fresh = rules.check_complete(row, outcome_id, lease_token, report)
        assert row is not None  # (check_complete raised otherwise)
        if not fresh:
            return R.outcome_from(row)  # the identical report, repeated
        tx.wrote = True
        review = rules.review_required(row["run_review"], row["package_review"])
        t = rules.complete(
            row, lease_token=lease_token, report=report, now=now, encoded=(metrics, metadata), review=review
        )
        tx.effects(t, now)
        spent = usage.spend_of(row, t)
        if spent is not None:
            await usage.record(tx, [spent], now)
        if row["q_locks"] or row["q_dependents"] or row["q_gate"]:
            await policy.reported_complete(tx, [t.row(row)], now)  # the row as left: complete or in_review
        return R.outcome_from(t.row(row))

    if next_claim is None:
        merge = CompleteArgs(
            outcome_id=outcome_id,
            lease_token=lease_token,
            report=report,
            now=now,
            metrics=metrics,
            metadata=metadata,
            values=values,
        )
        return Reported(await db.write(op, atomic=True, merge=merge))
    claim = next_claim

    async def then(tx: Tx) -> Reported:
        outcome = await op(tx)  # sets tx.wrote only when this report completed the item
        return Reported(outcome, await next_claims(tx, outcome, lease_token, claim, now, tx.wrote))

    # journaled: a retry after a lost answer returns these leases instead of taking more
    return await db.write(then, atomic=True, journal=REPORTED_ANSWER)


async def fail(
    db: Database,
    outcome_id: str,
    *,
    lease_token: str,
    failure: Failure,
    now: float,
    next_claim: NextClaim | None = None,
) -> Reported:
    error, retryable, backoff = failure.error, failure.retryable, failure.backoff

    async def op(tx: Tx) -> Reported:
        row = await leased_row(tx, outcome_id, lease_token)
        if not rules.lease_holds(row["status"], row["lease_token"], lease_token):
            attempt = await tx.one(
                sql.FAIL_SELECT_OUTCOME_ATTEMPTS,
                (outcome_id, lease_token),
            )
            if not rules.is_repeat_failure(attempt, error):
                raise rules.lost_lease(row)
            repeated = R.outcome_from(row)  # the identical report, repeated
            return Reported(repeated, await next_claims(tx, repeated, lease_token, next_claim, now, False))
        t = rules.fail(
            row,
            lease_token=lease_token,
            error=error,
            retryable=retryable,
            backoff=backoff,
            run_state=row["run_state"],
            max_attempts=int(row["max_attempts"]),
            now=now,
            usage=failure.usage,
        )
        await policy.after(tx, row, t, await tx.apply(row, t, now), now)
        spent = usage.spend_of(row, t)
        if spent is not None:
            await usage.record(tx, [spent], now)
        outcome = R.outcome_from(t.row(row))
        return Reported(outcome, await next_claims(tx, outcome, lease_token, next_claim, now, True))

    return await db.write(op, journal=REPORTED_ANSWER)


async def retry(
    db: Database,
    run_id: str,
    *,
    package: str | None = None,
    outcome_ids: Sequence[str] | None = None,
    now: float,
) -> list[str]:
    async def op(tx: Tx) -> list[str]:
        state = await tx.one(sql.RUN_STATE, (run_id,))
        rules.check_retry(None if state is None else state["state"], run_id)
        pid: int | None = None
        if package is not None:
            prow = await tx.one(sql.PACKAGE_ID, (run_id, package))
            if prow is None:
                raise rules.unknown_package_in_run(package)
            pid = int(prow["id"])
        # the statement writes rules.retry's values (tests/rules/test_rules.py holds it to them)
        move = rules.retry(now)
        rows = await tx.all(
            sql.RETRY_REQUEUE_FAILED,
            {
                "now": now,
                "run": run_id,
                "pid": pid,
                "ids": list(outcome_ids) if outcome_ids is not None else None,
            },
        )
        rows.sort(key=lambda r: int(r["n"]))
        per_package: dict[int, int] = defaultdict(int)
        for r in rows:
            per_package[int(r["package_id"])] += 1
        for p, n in per_package.items():
            tx.move(run_id, p, move.old, move.new, n)
        ids = [r["id"] for r in rows]
        if ids:
            tx.event(run_id, None, rules.requeued(ids), now)
            # what their failures cancelled waits again (after `requeued`: it says why)
            await policy.reblock(tx, [int(r["n"]) for r in rows], now)
        return ids

    return await db.write(op, journal=IDS_ANSWER)
