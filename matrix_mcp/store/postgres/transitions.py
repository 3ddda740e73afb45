"""The PostgreSQL store's transitions on locked rows inside a batch: claims (merged and one by one),
completes, the lease sweep, manual overrides. The decisions are matrix_mcp.rules'; this module holds the SQL."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from matrix_mcp import rules
from matrix_mcp.audit import acting_as, current_principal
from matrix_mcp.models import (
    Outcome,
    Run,
)
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import Claim, ClaimBatch, NextClaim, StatusChange
from matrix_mcp.store.postgres.batch import (
    Conn,
    Row,
    _all,
    _Batch,
    _claim_params,
    _ClaimArgs,
    _claims_from,
    _CompleteArgs,
    _one,
    _Request,
    _Tx,
    log,
)
from matrix_mcp.store.postgres.sql import (
    _CANCEL_PENDING_SQL,
    _CLAIM_SQL,
    _COMPLETE_MANY_SQL,
    _EARLIEST,
    _HELD_SQL,
    _ONE_RUN_SQL,
    _OUTCOME_SELECT,
    _RECOVER_CLAIMS_SQL,
    _SWEEP_SQL,
)

SWEEP_LIMIT = 500


async def _recover_claims(conn: Conn, batch: list[_Request]) -> None:
    """Before a batch is re-run after a transient error: claims an earlier attempt committed although
    its answer was lost (the connection died after COMMIT) are still leased under the tokens that
    attempt handed out. Those leases go to their request now — their events and counters were
    committed with them — instead of staying orphaned until they expire."""
    retried = [(req, req.merge) for req in batch if isinstance(req.merge, _ClaimArgs) and req.merge.issued]
    if not retried:
        return
    runs = sorted({a.run_id for _, a in retried})
    tokens = [t for _, a in retried for t in a.issued]
    by_token = {r["lease_token"]: r for r in await _all(conn, _RECOVER_CLAIMS_SQL, (runs, tokens))}
    for req, a in retried:
        got = [R.claim_from(by_token[t]) for t in a.issued if t in by_token]
        if not got:
            continue
        log.info("recovered %d claim(s) committed by an attempt whose answer was lost", len(got))
        if len(got) >= a.limit:
            req.value = ClaimBatch(got)
            req.handled = True
        else:
            req.rest = _claim_op(a, got)


MERGE_SLOTS = 4000  # items one merged claim statement may hand out (claim_seq leaves 4096 per statement)


def _claim_op(args: _ClaimArgs, already: list[Claim]) -> Callable[[_Tx], Awaitable[ClaimBatch]]:
    """One claim request on its own: `already` holds what the batch's merged statement gave it."""
    run_id, package, now = args.run_id, args.package, args.now

    async def op(tx: _Tx) -> ClaimBatch:
        claims = list(already)
        if claims:
            tx.wrote = True
        if run_id not in tx.batch.swept:  # once per batch and run: expired leases go back first
            tx.batch.swept[run_id] = now
            if await _sweep(tx, run_id, now):
                tx.wrote = True
        exhausted: list[int] = []
        while len(claims) < args.limit:
            want = args.limit - len(claims)
            rows = await tx.all(
                _CLAIM_SQL,
                _claim_params(
                    run_id,
                    package,
                    exhausted,
                    now,
                    [(args.worker, now, args.token(), current_principal.get()) for _ in range(want)],
                ),
            )
            quota: dict[int, int] = {}
            got: dict[int, int] = defaultdict(int)
            for o in rows:
                np_, ord_ = int(o["np"]), int(o["ord"])
                quota[int(o["pk_id"])] = max(0, (want - ord_ + np_ - 1) // np_)
                if o["id"] is not None:
                    got[int(o["pk_id"])] += 1
            claims += _claims_from(tx, run_id, args.worker, [o for o in rows if o["id"] is not None], now)
            # a package that gave less than its share has nothing more for this call (or the rest
            # is locked by other claimers); the next round shares what is left among the others
            short = [pid for pid, q in quota.items() if got.get(pid, 0) < q]
            if not short or len(short) == len(quota):
                break
            exhausted += short
        if len(claims) >= args.limit:
            return ClaimBatch(claims)
        run = await tx.one("SELECT state FROM runs WHERE id = %s", (run_id,))
        if run is None:
            raise rules.unknown_run(run_id)
        blocked = rules.claim_blocked(run["state"])
        if blocked is not None:
            return ClaimBatch(claims, blocked)
        await tx.flush()
        return ClaimBatch(claims, *await _why_nothing(tx, run_id, package))

    return op


async def _next_claims(
    tx: _Tx, outcome: Outcome, token: str, next_claim: NextClaim | None, now: float, fresh: bool
) -> ClaimBatch | None:
    """The next leases of a report: claimed now when the report is fresh; for a repeat of the identical
    report, the leases the first one took that its worker still holds (claimed at that report's time)."""
    if next_claim is None:
        return None
    if fresh:
        args = _ClaimArgs(
            outcome.run_id,
            outcome.worker or "",
            next_claim.limit,
            next_claim.package,
            now,
            next_claim.token_factory,
        )
        return await _claim_op(args, [])(tx)
    first = await tx.one(
        "SELECT ended_at, worker FROM outcome_attempts WHERE outcome_id = %s AND lease_token = %s",
        (outcome.id, token),
    )
    if first is None or first["ended_at"] is None:
        return ClaimBatch([])
    rows = await tx.all(_HELD_SQL, (outcome.run_id, first["worker"], first["ended_at"], next_claim.limit))
    return ClaimBatch([R.claim_from(r) for r in rows])


async def _merged(conn: Conn, state: _Batch, batch: list[_Request]) -> None:
    """The set-based fast path of a batch: all claims of one run (and package filter) in one statement,
    handed out in request order; all completes in one statement. A request the merged statement cannot
    answer whole (short claim, stale or repeated report) is finished one by one afterwards."""
    groups: dict[tuple[str, str | None], list[list[tuple[_Request, _ClaimArgs]]]] = {}
    completes: list[tuple[_Request, _CompleteArgs]] = []
    for req in batch:
        a = req.merge
        if req.handled or req.rest is not None:  # recovered from a lost answer
            continue
        if isinstance(a, _ClaimArgs):
            chunks = groups.setdefault((a.run_id, a.package), [[]])
            if chunks[-1] and sum(x.limit for _, x in chunks[-1]) + a.limit > MERGE_SLOTS:
                chunks.append([])
            chunks[-1].append((req, a))
        elif isinstance(a, _CompleteArgs):
            completes.append((req, a))
    for (run_id, package), chunks in groups.items():
        for chunk in chunks:
            cutoff = min(a.now for _, a in chunk)
            swept = None
            if run_id not in state.swept:  # sent with the claim, without waiting for its answer
                state.swept[run_id] = cutoff
                swept = await conn.execute(_SWEEP_SQL, _sweep_params(run_id, cutoff))
            slots = [(a.worker, a.now, a.token(), req.principal) for req, a in chunk for _ in range(a.limit)]
            claimed = await conn.execute(_CLAIM_SQL, _claim_params(run_id, package, [], cutoff, slots))
            if swept is not None:
                sweep = _Tx(conn, state)
                _swept(sweep, run_id, cutoff, await swept.fetchall())
                sweep.succeeded()
            rows = await claimed.fetchall()
            got = [o for o in rows if o["id"] is not None]  # ranks 1..len(got), in rank order
            # the whole chunk's events and counter moves go straight to the batch: the merged
            # statement succeeded or the batch re-runs one by one (_NeedSafe), so nothing of one
            # request has to be kept apart to be rolled back alone
            whole = _Tx(conn, state)
            events = state.events
            pos = 0
            for req, a in chunk:
                mine = got[pos : pos + a.limit]
                pos += len(mine)
                claims = []
                with acting_as(req.principal):
                    for o in mine:
                        ev = rules.claimed(
                            package=o["package_name"], item=o["item"], worker=a.worker, attempt=o["attempts"]
                        )
                        events.append((run_id, o["id"], ev.kind, ev.payload(), float(a.now)))
                        claims.append(R.claim_from(o))
                if len(claims) == a.limit:
                    req.value = ClaimBatch(claims)
                    req.handled = True
                else:
                    req.rest = _claim_op(a, claims)
            per_package: dict[int, int] = defaultdict(int)
            for o in got:
                per_package[int(o["pk_id"])] += 1
            for pid, n in per_package.items():
                whole.move(run_id, pid, *rules.CLAIMED_MOVE, n)
            whole.succeeded()
    if completes:
        await _complete_many(conn, state, completes)


async def _complete_many(conn: Conn, state: _Batch, completes: list[tuple[_Request, _CompleteArgs]]) -> None:
    seen: set[str] = set()
    todo: list[tuple[_Request, _CompleteArgs]] = []
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
    rows = await _all(
        conn,
        _COMPLETE_MANY_SQL,
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
        },
    )
    # as for merged claims: the statement's effects go straight to the batch (all or _NeedSafe)
    # (the statement took the rows whose lease holds and wrote rules.duration: tests/test_rules.py holds
    # it to the rules; `row` is the item as the statement left it)
    whole = _Tx(conn, state)
    for row in sorted(rows, key=lambda r: int(r["req"])):
        req, a = todo[int(row["req"]) - 1]
        t = rules.complete(
            row, lease_token=a.lease_token, report=a.report, now=a.now, encoded=(a.metrics, a.metadata)
        )
        with acting_as(req.principal):
            whole.effects(t, a.now)
        req.value = R.outcome_from(row)
        req.handled = True
    whole.succeeded()


async def _run(c: Conn, run_id: str) -> Run:
    row = await _one(c, _ONE_RUN_SQL + " WHERE r.id = %s", (run_id,))
    if row is None:
        raise rules.unknown_run(run_id)
    return R.run_from(row)


async def _outcome(c: Conn, outcome_id: str) -> Outcome:
    row = await _one(c, _OUTCOME_SELECT + " WHERE o.id = %s", (outcome_id,))
    if row is None:
        raise rules.unknown_outcome(outcome_id)
    return R.outcome_from(row)


async def _leased_row(tx: _Tx, outcome_id: str, token: str) -> Row:
    row = await tx.one(
        "SELECT o.*, r.name AS run_name, r.max_attempts AS max_attempts, r.state AS run_state,"
        " p.name AS package_name FROM outcomes o JOIN runs r ON r.id = o.run_id"
        " JOIN packages p ON p.id = o.package_id WHERE o.id = %s FOR UPDATE OF o",
        (outcome_id,),
    )
    return rules.check_lease(row, outcome_id, token)


async def _sweep(tx: _Tx, run_id: str, now: float) -> int:
    """Expired leases go back to pending (or failed when attempts are spent, cancelled when the run is).
    Every process sweeps; SKIP LOCKED keeps two sweepers off the same row."""
    rows = await tx.all(_SWEEP_SQL, _sweep_params(run_id, now))
    _swept(tx, run_id, now, rows)
    return len(rows)


def _sweep_params(run_id: str, now: float) -> dict[str, Any]:
    return {"run": run_id, "now": now, "limit": SWEEP_LIMIT}


def _swept(tx: _Tx, run_id: str, now: float, rows: Sequence[Row]) -> None:
    """The counter moves and events of the leases a sweep statement returned."""
    for r in rows:
        tx.effects(rules.expire_to(r, r["target"], now), now)


async def _cancel_pending(tx: _Tx, run_id: str, now: float) -> int:
    total = 0
    for r in await tx.all(_CANCEL_PENDING_SQL, {"now": now, "run": run_id}):
        n = int(r["n"])
        tx.move(run_id, int(r["package_id"]), *rules.CANCEL_MOVE, n)
        total += n
    return total


async def _why_nothing(tx: _Tx, run_id: str, package: str | None) -> tuple[Any, float | None]:
    row = await tx.one(
        "SELECT COALESCE(SUM(pending),0)::bigint AS pending, COALESCE(SUM(generating),0)::bigint AS generating,"
        " COUNT(*) AS n, COALESCE(SUM(total),0)::bigint AS total FROM package_counters"
        " WHERE run_id = %s AND (%s::text IS NULL OR name = %s::text)",
        (run_id, package, package),
    )
    assert row is not None
    if package is not None and row["n"] == 0:
        raise rules.unknown_package_in_run(package)
    total = 0
    if not row["pending"] and not row["generating"]:  # done or empty: said of the whole run
        t = await tx.one(
            "SELECT COALESCE(SUM(total),0)::bigint AS total FROM package_counters WHERE run_id = %s",
            (run_id,),
        )
        total = int(t["total"]) if t else 0
    reason, column = rules.why_nothing(
        pending=int(row["pending"]), generating=int(row["generating"]), total=total
    )
    if column is None:
        return reason, None
    pkg_filter = (
        ""
        if package is None
        else " AND package_id IN (SELECT id FROM packages WHERE run_id = %s AND name = %s)"
    )
    pkg_args = [] if package is None else [run_id, package]
    m = await tx.one(_EARLIEST[column] + pkg_filter, [run_id, *pkg_args])
    return reason, m["t"] if m else None


async def _update_status(tx: _Tx, outcome_id: str, change: StatusChange, *, now: float) -> Outcome:
    status, error_message = change.status, change.error_message
    report, created_by = change.report, change.created_by
    # the narrow row first, as a claim locks them (a claim holding it then waits for nothing of ours)
    await tx.execute(
        "SELECT 1 FROM outcome_queue WHERE n = (SELECT n FROM outcomes WHERE id = %s) FOR UPDATE",
        (outcome_id,),
    )
    row = await tx.one(
        "SELECT o.*, r.lease_seconds, p.name AS package_name FROM outcomes o JOIN runs r ON r.id = o.run_id"
        " JOIN packages p ON p.id = o.package_id WHERE o.id = %s FOR UPDATE OF o",
        (outcome_id,),
    )
    if row is None:
        raise rules.unknown_outcome(outcome_id)
    t = rules.override(
        row, new=status, error_message=error_message, report=report, now=now, created_by=created_by
    )
    await tx.apply(row, t, now)
    return await _outcome(tx.conn, outcome_id)
