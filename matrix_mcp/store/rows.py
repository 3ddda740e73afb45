"""Row ↔ model mapping and the counter arithmetic both stores share (no SQL here)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from matrix_mcp import rules
from matrix_mcp.models import (
    STATUSES,
    Attempt,
    Event,
    HourBucket,
    IntegrationEvent,
    Outcome,
    OutcomeDetail,
    OutcomePage,
    PackageSummary,
    PlanResult,
    PreviousAttempt,
    Run,
    RunPolicy,
    Status,
    StatusCounts,
    SystemMetrics,
    Usage,
    UsageTotals,
    ts,
)
from matrix_mcp.pagination import keyset_page
from matrix_mcp.rules import RowLike
from matrix_mcp.store.params import ApiKey, Claim, OutcomeFilter

# Duration histogram: bucket b holds durations in [BASE**b, BASE**(b+1)); the midpoint is within ±10%.
HIST_BASE = 1.2
HIST_MIN = 0.001
LINES_METRIC = "lines_generated"
QUALITY_METRIC = "quality_score"


def duration_bucket(seconds: float) -> int:
    return math.floor(math.log(max(seconds, HIST_MIN), HIST_BASE))


def bucket_value(bucket: int) -> float:
    return float(HIST_BASE ** (bucket + 0.5))


def percentiles(hist: Mapping[int, int], qs: tuple[float, ...]) -> list[float | None]:
    """The q-quantiles (ascending qs) of a bucket histogram, in one pass over the sorted buckets."""
    total = sum(hist.values())
    if total <= 0:
        return [None] * len(qs)
    ranks = [max(1, math.ceil(q * total)) for q in qs]
    out: list[float | None] = []
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        while len(out) < len(ranks) and seen >= ranks[len(out)]:
            out.append(round(bucket_value(bucket), 6))
        if len(out) == len(ranks):
            break
    return out + [None] * (len(ranks) - len(out))


def numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def contribution(metrics: Mapping[str, Any], duration: float | None) -> dict[str, float]:
    """What one complete outcome adds to its package's summary counters."""
    lines = numeric(metrics.get(LINES_METRIC))
    quality = numeric(metrics.get(QUALITY_METRIC))
    return {
        "duration_sum": duration or 0.0,
        "duration_n": 1.0 if duration is not None else 0.0,
        "lines_sum": lines or 0.0,
        "quality_sum": quality or 0.0,
        "quality_n": 1.0 if quality is not None else 0.0,
    }


def numeric_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, float]]:
    out = []
    for key, value in metrics.items():
        f = numeric(value)
        if f is not None:
            out.append((key, f))
    return out


dumps = rules.json_text


def loads(text: str | None, default: Any = None) -> Any:
    if text is None:
        return default
    return json.loads(text)


def spec_dumps(spec: Any) -> str | None:
    return None if spec is None else dumps(spec)


def pinned(columns: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The (column, value) pairs a listing filters on: those given a value (None leaves a column free)."""
    return [(column, value) for column, value in columns.items() if value is not None]


def outcome_filter(flt: OutcomeFilter) -> list[tuple[str, Any]]:
    """The columns of the outcome listing (o: outcomes, p: its package) a filter pins, with their values."""
    return pinned(
        {"o.run_id": flt.run_id, "p.name": flt.package, "o.status": flt.status, "o.worker": flt.worker}
    )


def outcome_page(rows: Sequence[RowLike], limit: int) -> OutcomePage:
    """A page from up to limit + 1 rows in `n` order (pagination.keyset_page)."""
    page, cursor = keyset_page(rows, limit, lambda r: int(r["n"]))
    return OutcomePage(outcomes=[outcome_from(r) for r in page], next_cursor=cursor)


def column(row: RowLike, name: str, default: Any = None) -> Any:
    """A claim-policy column of a row; `default` where the row has no such column (a narrow select that
    leaves it out, e.g. a sweep's or a retry's row: the caller says what its absence means)."""
    try:
        return row[name]
    except (IndexError, KeyError):
        return default


def counter(row: RowLike, status: str) -> int:
    """A status counter of a row (0 where the row has no such column: see `column`)."""
    return int(column(row, status) or 0)


def counts_from(row: RowLike) -> StatusCounts:
    c = StatusCounts(
        pending=int(row["pending"] or 0),
        generating=int(row["generating"] or 0),
        complete=int(row["complete"] or 0),
        failed=int(row["failed"] or 0),
        cancelled=int(row["cancelled"] or 0),
        blocked=counter(row, "blocked"),
        in_review=counter(row, "in_review"),
    )
    c.total = c.pending + c.generating + c.complete + c.failed + c.cancelled + c.blocked + c.in_review
    return c


USAGE_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "cost_usd")


def usage_totals_from(row: RowLike, prefix: str = "") -> UsageTotals | None:
    """The usage sums of a row (columns USAGE_COLUMNS, each after `prefix`); None when nothing was reported
    (or the row has no such columns: a store before the review migration)."""
    values = [column(row, prefix + name) for name in USAGE_COLUMNS]
    if not any(values):
        return None
    *tokens, cost = values
    return UsageTotals(
        input_tokens=int(tokens[0] or 0),
        output_tokens=int(tokens[1] or 0),
        cache_read_tokens=int(tokens[2] or 0),
        cache_creation_tokens=int(tokens[3] or 0),
        cost_usd=round(float(cost or 0.0), 9),
    )


def usage_from(row: RowLike) -> Usage | None:
    """An attempt's reported usage (columns USAGE_COLUMNS and model); None when it reported none."""
    values = {name: column(row, name) for name in (*USAGE_COLUMNS, "model")}
    if all(v is None for v in values.values()):
        return None
    return Usage(**values)


def progress_of(c: StatusCounts) -> float:
    return 0.0 if c.total == 0 else round((c.complete + c.failed + c.cancelled) / c.total, 6)


def run_from(row: RowLike) -> Run:
    """A run row joined with its summed package counters (columns pending..cancelled, packages) and the
    time of its last event (last_event_at). A run with no work left was last updated when its last item
    finished — the event that ended it — or when the row itself changed, whichever is later."""
    counts = counts_from(row)
    state = row["state"]
    finished = (
        counts.total > 0 and counts.pending + counts.generating + counts.blocked + counts.in_review == 0
    )
    if state == "active" and finished:
        state = "done"
    updated_at = row["updated_at"]
    if finished and row["last_event_at"] is not None:
        updated_at = max(updated_at, row["last_event_at"])
    return Run(
        id=row["id"],
        name=row["name"],
        goal=row["goal"],
        state=state,
        policy=RunPolicy(
            outcome_type=row["outcome_type"],
            lease_seconds=row["lease_seconds"],
            max_attempts=row["max_attempts"],
            backoff_seconds=row["backoff_seconds"],
            backoff_cap_seconds=row["backoff_cap_seconds"],
            outcome_schema=loads(row["outcome_schema"]),
            max_concurrent=column(row, "max_concurrent"),
            on_dependency_failure=column(row, "on_dependency_failure", "cancel"),
            review=column(row, "review", "none"),
            max_cost_usd=column(row, "max_cost_usd"),
            max_tokens=column(row, "max_tokens"),
        ),
        paused_reason=column(row, "paused_reason") if state == "paused" else None,
        packages=int(row["packages"] or 0),
        counts=counts,
        progress=progress_of(counts),
        created_at=ts(row["created_at"]),  # type: ignore[arg-type]
        updated_at=ts(updated_at),  # type: ignore[arg-type]
    )


def summary_from(row: RowLike, hist: Mapping[int, int]) -> PackageSummary:
    complete, failed = int(row["complete"]), int(row["failed"])
    finished = complete + failed
    dn, qn = int(row["duration_n"]), int(row["quality_n"])
    p50, p90, p99 = percentiles(hist, (0.5, 0.9, 0.99))
    return PackageSummary(
        run=row["run_name"],
        package=row["name"],
        description=row["description"],
        position=int(row["position"]),
        total_items=int(row["total"]),
        pending_items=int(row["pending"]),
        generating_items=int(row["generating"]),
        completed_items=complete,
        failed_items=failed,
        cancelled_items=int(row["cancelled"]),
        blocked_items=counter(row, "blocked"),
        in_review_items=counter(row, "in_review"),
        usage=usage_totals_from(row),
        review=column(row, "review"),
        priority=int(column(row, "priority", 0)),
        max_concurrent=column(row, "max_concurrent"),
        after=loads(column(row, "after"), []),
        success_rate=round(complete / finished, 6) if finished else None,
        avg_duration_seconds=round(float(row["duration_sum"]) / dn, 6) if dn else None,
        p50_duration_seconds=p50,
        p90_duration_seconds=p90,
        p99_duration_seconds=p99,
        total_lines_generated=float(row["lines_sum"]),
        average_quality_score=round(float(row["quality_sum"]) / qn, 6) if qn else None,
    )


def outcome_from(row: RowLike) -> Outcome:
    """An outcome row of our own database (both stores): built without validation, as every value below is
    already of its field's type (the columns' own, converted here); tests/store hold it to the validated
    model."""
    return Outcome.model_construct(
        id=row["id"],
        run=row["run_name"],
        run_id=row["run_id"],
        package=row["package_name"],
        item=row["item"],
        position=int(row["position"]),
        status=row["status"],
        outcome_type=row["outcome_type"],
        outcome_path=row["outcome_path"],
        specifications=loads(row["specifications"]),
        attempts=int(row["attempts"]),
        max_attempts=int(row["max_attempts"]),
        worker=row["worker"],
        created_by=row["created_by"],
        error_message=row["error_message"],
        metrics=loads(row["metrics"], {}),
        metadata=loads(row["metadata"], {}),
        content_sha256=row["content_sha256"],
        content_bytes=row["content_bytes"],
        mime_type=row["mime_type"],
        created_at=ts(row["created_at"]),  # type: ignore[arg-type]
        updated_at=ts(row["updated_at"]),  # type: ignore[arg-type]
        started_at=ts(row["started_at"]),
        completed_at=ts(row["completed_at"]),
        duration_seconds=row["duration_seconds"],
        lease_expires_at=ts(row["lease_expires_at"]) if row["status"] == "generating" else None,
        available_at=ts(row["available_at"]) if row["status"] == "pending" else None,
        priority=int(column(row, "priority", 0)),
        locks=loads(column(row, "locks"), []),
    )


def detail_from(
    row: RowLike,
    history: Sequence[RowLike],
    *,
    waits_for: Sequence[str] = (),
    locks_held: Sequence[str] = (),
) -> OutcomeDetail:
    base = outcome_from(row).model_dump()
    return OutcomeDetail(
        **base,
        waits_for=list(waits_for),
        locks_held=list(locks_held),
        history=[
            Attempt(
                attempt=int(h["attempt"]),
                worker=h["worker"],
                principal=h["principal"],
                status=h["status"],
                error=h["error"],
                note=column(h, "note"),
                usage=usage_from(h),
                review_decision=column(h, "review_decision"),
                review_note=column(h, "review_note"),
                reviewed_by=column(h, "reviewed_by"),
                started_at=ts(h["started_at"]),
                ended_at=ts(h["ended_at"]),
            )
            for h in history
        ],
    )


def event_from(row: RowLike) -> Event:
    return Event(
        seq=int(row["seq"]),
        run=row["run_name"],
        outcome_id=row["outcome_id"],
        kind=row["kind"],
        data=loads(row["data"], {}),
        created_at=ts(row["created_at"]),  # type: ignore[arg-type]
    )


def integration_from(row: RowLike) -> IntegrationEvent:
    return IntegrationEvent(
        id=int(row["id"]),
        run=row["run_name"],
        outcome_id=row["outcome_id"],
        integration_type=row["integration_type"],
        action=row["action"],
        status=row["status"],
        details=loads(row["details"], {}),
        created_at=ts(row["created_at"]),  # type: ignore[arg-type]
    )


HOURLY_DAYS = 7  # how far back system_metrics' hourly series goes


def hourly_since_minute(now: float) -> int:
    """The first minute (whole minutes since the epoch) of system_metrics' hourly series."""
    return int(now // 60) - HOURLY_DAYS * 24 * 60


def system_metrics_from(run_name: str | None, t: RowLike, hours: Iterable[RowLike]) -> SystemMetrics:
    """Totals (columns pending..cancelled, ds/dn duration sums, ls lines, qs/qn quality, the usage sums
    USAGE_COLUMNS where the dialect reads them) and hourly rows."""
    counts = counts_from(t)
    finished = counts.complete + counts.failed
    return SystemMetrics(
        run=run_name,
        outcomes_total=counts.total,
        outcomes_pending=counts.pending,
        outcomes_generating=counts.generating,
        outcomes_complete=counts.complete,
        outcomes_failed=counts.failed,
        outcomes_cancelled=counts.cancelled,
        outcomes_blocked=counts.blocked,
        outcomes_in_review=counts.in_review,
        avg_generation_time=round(t["ds"] / t["dn"], 6) if t["dn"] else None,
        success_rate=round(counts.complete / finished, 6) if finished else None,
        total_lines_generated=float(t["ls"]),
        average_quality_score=round(t["qs"] / t["qn"], 6) if t["qn"] else None,
        usage=usage_totals_from(t),
        outcomes_by_hour=[
            HourBucket(
                hour=ts(int(h["hour"]) * 3600),  # type: ignore[arg-type]
                completed=int(h["completed"]),
                failed=int(h["failed"]),
                avg_duration_seconds=round(h["ds"] / h["dn"], 6) if h["dn"] else None,
            )
            for h in hours
        ],
    )


def plan_result(run: Run, created: bool, added_packages: list[str], added_items: int) -> PlanResult:
    return PlanResult(
        run=run,
        created=created,
        packages=run.packages,
        items=run.counts.total,
        added_packages=added_packages,
        added_items=added_items,
    )


def claim_policy_values(policy: RunPolicy) -> tuple[Any, ...]:
    """max_concurrent, on_dependency_failure: the run's claim-policy columns."""
    return (policy.max_concurrent, policy.on_dependency_failure)


def review_policy_values(policy: RunPolicy) -> tuple[Any, ...]:
    """review, max_cost_usd, max_tokens: the run's review and budget columns."""
    return (policy.review, policy.max_cost_usd, policy.max_tokens)


def locks_text(locks: Sequence[str]) -> str | None:
    """An item's lock keys as stored: a JSON list, NULL when it has none."""
    return dumps(list(locks)) if locks else None


def policy_values(policy: RunPolicy) -> tuple[Any, ...]:
    """outcome_type, lease_seconds, max_attempts, backoff_seconds, backoff_cap_seconds, outcome_schema."""
    return (
        policy.outcome_type,
        policy.lease_seconds,
        policy.max_attempts,
        policy.backoff_seconds,
        policy.backoff_cap_seconds,
        spec_dumps(policy.outcome_schema),
    )


def the_one_summary(found: list[PackageSummary], package: str) -> PackageSummary:
    """package_summary without a run: the package must exist in exactly one run."""
    if not found:
        raise rules.unknown_package(package)
    if len(found) > 1:
        raise rules.ambiguous_package(package, ", ".join(sorted(s.run for s in found)))
    return found[0]


def counter_mismatches(
    p: RowLike, truth: Mapping[str, Any], hist: Mapping[int, int], counter_columns: Iterable[str]
) -> list[str]:
    """How a package's counters (row p, rolled-up histogram hist) differ from a recount of its rows."""
    label = f"{p['run_name']}/{p['name']}"
    out: list[str] = []
    for key in ("total", *STATUSES):
        if counter(p, key) != truth[key]:
            out.append(f"{label}: {key} counter {p[key]} != rows {truth[key]}")
    for key in counter_columns:
        if _differs(float(p[key]), float(truth[key])):
            out.append(f"{label}: {key} counter {p[key]} != rows {truth[key]}")
    if dict(hist) != truth["hist"]:
        out.append(f"{label}: duration histogram {dict(hist)} != rows {truth['hist']}")
    return out


def waiting_mismatches(rows: Iterable[RowLike]) -> list[str]:
    """Items whose count of unmet prerequisites (`waiting`) differs from a recount of them (`unmet`), or that
    are blocked with nothing to wait for (rows: run_name, package, item, status, waiting, unmet)."""
    out: list[str] = []
    for r in rows:
        label = f"{r['run_name']}/{r['package']}/{r['item']}"
        if int(r["waiting"]) != int(r["unmet"]):
            out.append(f"{label}: waiting {r['waiting']} != unmet prerequisites {r['unmet']}")
        elif r["status"] == "blocked" and int(r["unmet"]) == 0:
            out.append(f"{label}: blocked with no unmet prerequisite")
    return out


def _differs(have: float, want: float) -> bool:
    return abs(have - want) > 1e-6 * max(1.0, abs(want))


def worker_usage_mismatches(stored: Iterable[RowLike], truth: Iterable[RowLike]) -> list[str]:
    """Workers whose usage sums (worker_usage rows) differ from a recount of their attempts' usage (`truth`);
    both as rows of run_name, worker and USAGE_COLUMNS, a worker missing on one side counting as zeros."""

    def sums(rows: Iterable[RowLike]) -> dict[tuple[str, str], tuple[float, ...]]:
        return {(r["run_name"], r["worker"]): tuple(float(r[k]) for k in USAGE_COLUMNS) for r in rows}

    have, want = sums(stored), sums(truth)
    zeros = (0.0,) * len(USAGE_COLUMNS)
    out: list[str] = []
    for run, worker in sorted(have.keys() | want.keys()):
        got, counted = have.get((run, worker), zeros), want.get((run, worker), zeros)
        for name, a, b in zip(USAGE_COLUMNS, got, counted, strict=True):
            if _differs(a, b):
                out.append(f"{run}: worker {worker!r} {name} {a:g} != attempts {b:g}")
    return out


def run_spent_mismatches(rows: Iterable[RowLike]) -> list[str]:
    """Runs with a budget whose spent totals differ from what their packages spent (rows: run_name,
    spent_cost_usd, spent_tokens, cost, tokens); a run without a budget keeps no totals."""
    out: list[str] = []
    for r in rows:
        if _differs(float(r["spent_cost_usd"]), float(r["cost"])):
            out.append(f"{r['run_name']}: spent_cost_usd {r['spent_cost_usd']:g} != packages {r['cost']:g}")
        if int(r["spent_tokens"]) != int(r["tokens"]):
            out.append(f"{r['run_name']}: spent_tokens {r['spent_tokens']} != packages {r['tokens']}")
    return out


class Truth:
    """A recount of one package from its rows: status counts, the complete items' summary sums and the
    duration histogram (what its counters must equal)."""

    def __init__(self, counter_columns: Iterable[str]) -> None:
        self.values: dict[str, Any] = dict.fromkeys(STATUSES, 0)
        self.values.update(dict.fromkeys(counter_columns, 0.0))
        self.hist: dict[int, int] = {}

    def count(self, status: str, n: int) -> None:
        self.values[status] = int(n)

    def complete(self, metrics: str | None, duration: float | None) -> None:
        for k, v in contribution(loads(metrics, {}), duration).items():
            self.values[k] += v
        if duration is not None:
            b = duration_bucket(duration)
            self.hist[b] = self.hist.get(b, 0) + 1

    def result(self) -> dict[str, Any]:
        return {**self.values, "total": sum(self.values[s] for s in STATUSES), "hist": dict(self.hist)}


def previous_attempt_from(a: RowLike) -> PreviousAttempt:
    """An earlier attempt of a claimed item (a PREVIOUS_ATTEMPTS row), as its next worker reads it."""
    return rules.previous_attempt(
        attempt=int(a["attempt"]),
        status=a["status"],
        error=a["error"],
        note=a["note"],
        review_note=a["review_note"],
    )


def claim_from(o: RowLike) -> Claim:
    """A lease as a claim returns it, from a leased row with run_name, package_name, package_description."""
    return Claim(
        outcome_id=o["id"],
        run=o["run_name"],
        package=o["package_name"],
        package_description=o["package_description"],
        item=o["item"],
        attempt=int(o["attempts"]),
        lease_token=o["lease_token"],
        lease_expires_at=float(o["lease_expires_at"]),
        outcome_type=o["outcome_type"],
        specifications=loads(o["specifications"]),
        outcome_path=o["outcome_path"],
        retried=bool(o["retried"]),
    )


def api_key_from(row: RowLike) -> ApiKey:
    return ApiKey(
        name=row["name"],
        scopes=tuple(loads(row["scopes"], [])),
        created_at=float(row["created_at"]),
        last_used_at=None if row["last_used_at"] is None else float(row["last_used_at"]),
        revoked_at=None if row["revoked_at"] is None else float(row["revoked_at"]),
    )


def status_counts_from(rows: Iterable[RowLike]) -> dict[str, dict[Status, int]]:
    return {r["name"]: {s: counter(r, s) for s in STATUSES} for r in rows}


def totals_from(row: RowLike | None) -> dict[Status, int]:
    return {s: (counter(row, s) if row is not None else 0) for s in STATUSES}
