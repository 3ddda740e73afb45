"""The SQLite store's work loop: claims (with the lease sweep), heartbeats, completes, failures and
retries; each decision is matrix_mcp.rules', each write a rules.Transition applied by counters.apply."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from matrix_mcp import rules
from matrix_mcp.models import HeartbeatResult, LeaseRef, LeaseState, ts
from matrix_mcp.store import rows as R
from matrix_mcp.store.params import Claim, ClaimBatch, ClaimRequest, Failure, NextClaim, Report, Reported
from matrix_mcp.store.sqlite import counters, events, policy, sql, tracking, usage
from matrix_mcp.store.sqlite.connection import Database, named

SWEEP_LIMIT = 500


def outcome_row(c: sqlite3.Connection, outcome_id: str) -> dict[str, Any] | None:
    """The item's row (sql.OUTCOME_SELECT) for a write to read by name."""
    row: sqlite3.Row | None = c.execute(sql.OUTCOME_BY_ID, (outcome_id,)).fetchone()
    return None if row is None else named(row)


def leased_row(c: sqlite3.Connection, outcome_id: str, token: str) -> dict[str, Any]:
    return rules.check_lease(outcome_row(c, outcome_id), outcome_id, token)


def sweep(c: sqlite3.Connection, run_id: str, now: float) -> None:
    """Expired leases go back to pending (or failed when attempts are spent, cancelled when the run is)."""
    rows = c.execute(
        sql.SWEEP_SELECT_OUTCOMES,
        (run_id, now, SWEEP_LIMIT),
    ).fetchall()
    for r in rows:
        t = rules.expire(r, run_state=r["state"], max_attempts=int(r["max_attempts"]), now=now)
        if t is not None:
            policy.apply(c, r, t, now)


def cancel_unstarted(c: sqlite3.Connection, run_id: str, now: float) -> int:
    """The run's pending and blocked items end cancelled (rules.cancel, rules.cancel_blocked); how many did."""
    return counters.move_run(c, run_id, rules.cancel(now)) + counters.move_run(
        c, run_id, rules.cancel_blocked(now)
    )


def claim_now(c: sqlite3.Connection, request: ClaimRequest, *, now: float) -> ClaimBatch:
    """Lease up to `limit` ready items in rules.claim_order (package priority, item priority, then the
    packages in turn, least recently served first), skipping items whose lock keys a live lease holds and
    packages (or the run) at their max_concurrent; the lock keys of each item leased become its lease's."""
    run_id, worker, limit, package = request.run_id, request.worker, request.limit, request.package
    token_factory = request.token_factory
    run = c.execute(sql.CLAIM_NOW_SELECT_RUNS, (run_id,)).fetchone()
    if run is None:
        raise rules.unknown_run(run_id)
    blocked = rules.claim_blocked(run["state"])
    sweep(c, run_id, now)  # a cancelled run's leases stay (rules.lease_expiry): nothing to sweep there
    if blocked is not None:
        return ClaimBatch([], blocked)
    if package is None:
        rows = c.execute(sql.CLAIMABLE_PACKAGES, (run_id,)).fetchall()
    else:
        rows = c.execute(sql.CLAIMABLE_PACKAGE, (run_id, package)).fetchall()
    scope = [int(r[0]) for r in rows]
    active = _Claimable(rows)
    run_cap = run["max_concurrent"]
    run_generating = 0 if run_cap is None else int(c.execute(sql.RUN_GENERATING, (run_id,)).fetchone()[0])
    held = policy.Held()
    claims: list[Claim] = []
    run_capped = False
    while active and len(claims) < limit:
        if not rules.under_cap(run_generating, run_cap):
            run_capped = True
            break
        found = _best(c, active, now, held)
        if found is None:
            break
        p, o = found
        t = rules.claim(
            o,
            run_id=run_id,
            package_id=p.id,
            package=p.name,
            worker=worker,
            token=token_factory(),
            lease_seconds=run["lease_seconds"],
            now=now,
        )
        p.last_claim = counters.start(c, o, t, now)
        policy.take_locks(c, o, run_id, t.values["lease_token"])
        p.generating += 1
        run_generating += 1
        claim = Claim(
            outcome_id=o["id"],
            run=run["name"],
            package=p.name,
            package_description=p.description,
            item=o["item"],
            attempt=t.values["attempts"],
            lease_token=t.values["lease_token"],
            lease_expires_at=t.values["lease_expires_at"],
            outcome_type=o["outcome_type"],
            specifications=R.loads(o["specifications"]),
            outcome_path=o["outcome_path"],
            retried=bool(o["retried"]),
        )
        claims.append(usage.briefed(c, claim))
    if len(claims) >= limit:
        return ClaimBatch(claims)
    if run_capped and package is not None:  # the run's cap held back this package's items only if it has any
        run_capped = any(policy.ready_in_package(c, p, now) for p in scope)
    return ClaimBatch(claims, *why_nothing(c, run_id, package, now=now, held=held, run_capped=run_capped))


class _Package:
    """A package a claim serves, with the counters the claim keeps moving as it leases."""

    __slots__ = (
        "cap",
        "description",
        "generating",
        "id",
        "last_claim",
        "name",
        "position",
        "priority",
        "top",
    )

    def __init__(self, row: sqlite3.Row) -> None:
        # by position (sql._CLAIMABLE's columns): a claim builds one per claimable package
        pid, self.name, self.description, priority, top, self.cap, generating, last_claim, position = row
        self.id, self.priority, self.top, self.generating = int(pid), int(priority), int(top), int(generating)
        self.last_claim, self.position = int(last_claim), int(position)

    def order(self) -> tuple[int, int, int, int]:
        """The best rules.claim_order key (its first four parts) this package's items could have."""
        return (-self.priority, -self.top, self.last_claim, self.position)


class _Claimable:
    """The packages a claim serves: their rows as sql._CLAIMABLE reads them (in _Package.order), each made a
    _Package only when the claim reaches it; a claim usually takes its item from the first or second."""

    __slots__ = ("rows", "seen")

    def __init__(self, rows: list[sqlite3.Row]) -> None:
        self.rows = rows[::-1]  # not reached yet, in order from the end
        self.seen: list[_Package] = []  # reached, still claimable

    def __bool__(self) -> bool:
        return bool(self.seen or self.rows)

    def in_order(self) -> Iterator[_Package]:
        """Every package in _Package.order (the reached ones as the claim's leases left them), reaching the
        next row only when no reached package comes before it."""
        reached = sorted(self.seen, key=_Package.order)
        i = 0
        while i < len(reached) or self.rows:
            if i < len(reached) and (not self.rows or reached[i].order() < _row_order(self.rows[-1])):
                i += 1
                yield reached[i - 1]
            else:
                p = _Package(self.rows.pop())
                self.seen.append(p)
                yield p

    def remove(self, p: _Package) -> None:
        self.seen.remove(p)


def _row_order(row: sqlite3.Row) -> tuple[int, int, int, int]:
    """_Package.order of a package not reached yet (sql._CLAIMABLE's columns)."""
    return (-int(row[3]), -int(row[4]), int(row[7]), int(row[8]))


def _best(
    c: sqlite3.Connection, active: _Claimable, now: float, held: policy.Held
) -> tuple[_Package, dict[str, Any]] | None:
    """The next item to lease, in rules.claim_order. The packages are visited by what they could offer at
    best (their priority, `top`: no pending item of theirs ranks higher, then the round robin), each
    offering its first eligible item; the first package that could not beat the best found so far ends the
    search. A package whose offer ranks below its `top` has `top` lowered to its highest pending priority
    (policy.tighten), so later claims look at fewer packages. Packages with nothing to offer now (none
    ready, all locked) leave `active`; packages at their cap are noted in `held`."""
    best: tuple[_Package, dict[str, Any]] | None = None
    best_key: tuple[int, int, int, int, float, int] | None = None
    for p in active.in_order():
        if best_key is not None and p.order() > best_key[:4]:
            break
        if not rules.under_cap(p.generating, p.cap):
            if p.id not in held.capped_packages:
                held.capped_packages.append(p.id)
            continue
        o = policy.candidate(c, p.id, now, held)
        if o is None:
            active.remove(p)
            continue
        if int(o["priority"]) < p.top:
            p.top = policy.tighten(c, p.id, p.top)
        key = rules.claim_order(
            package_priority=p.priority,
            item_priority=int(o["priority"]),
            last_claim=p.last_claim,
            package_position=p.position,
            available_at=float(o["available_at"]),
            position=int(o["position"]),
        )
        if best_key is None or key < best_key:
            best, best_key = (p, o), key
    return best


def claim_next(
    c: sqlite3.Connection,
    row: rules.RowLike,
    token: str,
    next_claim: NextClaim | None,
    now: float,
    fresh: bool,
) -> ClaimBatch | None:
    """The next leases of a report: claimed now when the report is fresh; for a repeat of the identical
    report, the leases the first one took that its worker still holds (claimed at that report's time)."""
    if next_claim is None:
        return None
    worker = row["worker"] or ""
    if fresh:
        return claim_now(c, next_claim.request(row["run_id"], worker), now=now)
    first = c.execute(
        sql.CLAIM_NEXT_SELECT_OUTCOME_ATTEMPTS,
        (row["id"], token),
    ).fetchone()
    if first is None or first["ended_at"] is None:
        return ClaimBatch([])
    held = c.execute(
        sql.CLAIM_NEXT_SELECT_OUTCOMES,
        (row["run_id"], first["worker"], first["ended_at"], next_claim.limit),
    ).fetchall()
    return ClaimBatch([usage.briefed(c, R.claim_from(o)) for o in held])


def why_nothing(
    c: sqlite3.Connection,
    run_id: str,
    package: str | None,
    *,
    now: float,
    held: policy.Held | None = None,
    run_capped: bool = False,
) -> tuple[Any, float | None]:
    """Why a claim came back short (rules.why_nothing) and when to ask again."""
    held = held or policy.Held()
    if package is None:
        pending, generating, n, blocked, in_review = c.execute(sql.QUEUE_COUNTS, (run_id,)).fetchone()
    else:
        counts = c.execute(sql.QUEUE_COUNTS_OF_PACKAGE, (run_id, package)).fetchone()
        pending, generating, n, blocked, in_review = counts
    if package is not None and n == 0:
        raise rules.unknown_package_in_run(package)
    total = 0
    if not pending and not generating and not blocked:  # done or empty: said of the whole run
        total = c.execute(sql.WHY_NOTHING_SELECT_PACKAGES, (run_id,)).fetchone()[0]
    run_wide = package is not None and blocked and not pending
    if run_wide:  # blocked items wait on the run's leases and reviews, not only their package's
        whole = c.execute(sql.QUEUE_COUNTS, (run_id,)).fetchone()
        generating, in_review = whole[1], whole[4]
    capped_at = [p for p in held.capped_packages if policy.ready_in_package(c, p, now)]
    capped = bool(capped_at) or (run_capped and policy.ready_in_run(c, run_id, now))
    reason, column = rules.why_nothing(
        pending=int(pending),
        generating=int(generating),
        total=int(total),
        blocked=int(blocked),
        capped=capped,
        locked=held.locked,
        in_review=int(in_review),
    )
    if column is None:
        return reason, None
    if column == "lock_holders":
        return reason, held.lock_expires_at
    if column == "cap_holders":
        if run_capped:
            return reason, c.execute(sql.EARLIEST["lease_expires_at"], (run_id,)).fetchone()[0]
        times = [c.execute(sql.EARLIEST_LEASE_IN_PACKAGE, (run_id, p)).fetchone()[0] for p in capped_at]
        return reason, min((t for t in times if t is not None), default=None)
    if package is None or run_wide:
        row = c.execute(sql.EARLIEST[column], (run_id,)).fetchone()
    else:
        row = c.execute(sql.EARLIEST[column] + sql.IN_PACKAGE, (run_id, run_id, package)).fetchone()
    return reason, row[0]


async def claim(db: Database, request: ClaimRequest, *, now: float) -> ClaimBatch:
    def op(c: sqlite3.Connection) -> ClaimBatch:
        return claim_now(c, request, now=now)

    return await db.write(op)


async def heartbeat(db: Database, leases: Sequence[LeaseRef], *, now: float) -> HeartbeatResult:
    def op(c: sqlite3.Connection) -> HeartbeatResult:
        extended: list[LeaseState] = []
        lost: list[str] = []
        cancelled: list[str] = []
        for lease in leases:
            row = c.execute(
                sql.HEARTBEAT_SELECT_OUTCOMES,
                (lease.outcome_id,),
            ).fetchone()
            held = None
            if row is not None:
                held = rules.heartbeat(
                    row,
                    token=lease.lease_token,
                    run_state=row["state"],
                    lease_seconds=row["lease_seconds"],
                    now=now,
                    keys_kept=policy.keeps_locks(c, row, lease.lease_token, now),
                    note=lease.note,
                )
            if held is None:
                lost.append(lease.outcome_id)
                continue
            counters.extend(c, row, held)
            if held.note is not None:
                usage.set_note(c, lease.outcome_id, lease.lease_token, held.note)
            if held.stops:
                cancelled.append(lease.outcome_id)
            extended.append(
                LeaseState(outcome_id=lease.outcome_id, lease_expires_at=ts(held.lease_expires_at))
            )
        return HeartbeatResult(extended=extended, lost=lost, cancelled=cancelled)

    return await db.write(op)


async def complete(
    db: Database,
    outcome_id: str,
    *,
    lease_token: str,
    report: Report,
    now: float,
    next_claim: NextClaim | None = None,
) -> Reported:
    def op(c: sqlite3.Connection) -> Reported:
        row = outcome_row(c, outcome_id)
        fresh = rules.check_complete(row, outcome_id, lease_token, report)
        assert row is not None  # check_complete raised for an unknown item
        if not fresh:  # the identical report, repeated
            return Reported(
                tracking.read_outcome(c, outcome_id), claim_next(c, row, lease_token, next_claim, now, False)
            )
        review = rules.review_required(row["run_review"], row["package_review"])
        t = rules.complete(row, lease_token=lease_token, report=report, now=now, review=review)
        policy.apply(c, row, t, now, hist_read=True)
        if report.inline is not None:
            c.execute(
                sql.COMPLETE_INSERT_CONTENTS,
                (report.content_sha256, report.inline),
            )
        return Reported(R.outcome_from(t.row(row)), claim_next(c, row, lease_token, next_claim, now, True))

    return await db.write(op)


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

    def op(c: sqlite3.Connection) -> Reported:
        row = leased_row(c, outcome_id, lease_token)
        if not rules.lease_holds(row["status"], row["lease_token"], lease_token):
            attempt = c.execute(
                sql.FAIL_SELECT_OUTCOME_ATTEMPTS,
                (outcome_id, lease_token),
            ).fetchone()
            if not rules.is_repeat_failure(attempt, error):
                raise rules.lost_lease(row)
            return Reported(
                tracking.read_outcome(c, outcome_id), claim_next(c, row, lease_token, next_claim, now, False)
            )
        run = c.execute(sql.FAIL_SELECT_RUNS, (row["run_id"],)).fetchone()
        t = rules.fail(
            row,
            lease_token=lease_token,
            error=error,
            retryable=retryable,
            backoff=backoff,
            run_state=run["state"],
            max_attempts=int(run["max_attempts"]),
            now=now,
            usage=failure.usage,
        )
        policy.apply(c, row, t, now)
        return Reported(
            tracking.read_outcome(c, outcome_id), claim_next(c, row, lease_token, next_claim, now, True)
        )

    return await db.write(op)


async def retry(
    db: Database,
    run_id: str,
    *,
    package: str | None = None,
    outcome_ids: Sequence[str] | None = None,
    now: float,
) -> list[str]:
    def op(c: sqlite3.Connection) -> list[str]:
        state = c.execute(sql.RUN_STATE, (run_id,)).fetchone()
        rules.check_retry(None if state is None else state[0], run_id)
        move = rules.retry(now)
        if package is None:
            rows = c.execute(sql.RETRY_SELECT_OUTCOMES, (run_id, move.old)).fetchall()
        else:
            pid = c.execute(sql.PACKAGE_ID, (run_id, package)).fetchone()
            if pid is None:
                raise rules.unknown_package_in_run(package)
            rows = c.execute(sql.RETRY_SELECT_PACKAGE_OUTCOMES, (run_id, move.old, pid[0])).fetchall()
        if outcome_ids is not None:
            wanted = set(outcome_ids)
            rows = [r for r in rows if r["id"] in wanted]
        for r in rows:
            counters.apply_move(c, r, move)
            policy.raise_top(c, int(r["package_id"]), int(r["priority"]))
        ids = [r["id"] for r in rows]
        if ids:
            events.add_event(c, run_id, None, rules.requeued(ids), now)
        for r in rows:  # what their failures cancelled waits again (after `requeued`: it says why)
            policy.reblock(c, int(r["n"]), now)
        return ids

    return await db.write(op)
