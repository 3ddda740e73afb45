"""Which public event a change in the events log becomes: the one mapping, pure.

Public types (the issue's vocabulary): outcome.created, outcome.started, outcome.completed,
outcome.retry_scheduled, outcome.failed (final), package.completed, run.completed, run.cancelled, ping,
and run.planned; with dependencies, outcome.ready (a blocked item's last dependency completed: it is
pending now) and outcome.dependents_cancelled (one per failure that cancelled the items waiting on it:
the failed item, how many, and the first 100 of their ids).

Planned items are announced by ONE `run.planned` per plan call (run, packages and items added, and
whether it extended an existing run), never by one `outcome.created` per item: a 200 x 200 plan is one
delivery, not 40,000. `outcome.created` is for outcomes recorded one at a time (record_outcome); a
receiver that wants the items of a plan lists them (list_outcomes) when run.planned arrives.
`package.completed` and `run.completed` are not in the events log: they are derived from the package
counters when a terminal outcome event is dispatched (`completions`), and keyed by the counters so the
same completion is delivered once however many events reveal it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from matrix_mcp.models import Event, PackageSummary
from matrix_mcp.store.hooks import OutcomeFacts

EVENT_TYPES = (
    "outcome.created",
    "outcome.started",
    "outcome.completed",
    "outcome.retry_scheduled",
    "outcome.failed",
    "package.completed",
    "run.completed",
    "run.cancelled",
    "run.planned",
    "outcome.ready",
    "outcome.dependents_cancelled",
    "outcome.in_review",
    "outcome.approved",
    "outcome.rejected",
    "run.budget_exceeded",
    "ping",
)
# internal kinds after which a package may have finished
TERMINAL_TYPES = frozenset(
    {
        "outcome.completed",
        "outcome.failed",
        "outcome.dependents_cancelled",
        "outcome.approved",
        "outcome.rejected",
    }
)
_STATUS_FOR = {
    "outcome.created": "pending",
    "outcome.ready": "pending",
    "outcome.started": "generating",
    "outcome.completed": "complete",
    "outcome.retry_scheduled": "pending",
    "outcome.failed": "failed",
    "outcome.in_review": "in_review",
    "outcome.approved": "complete",
}


@dataclass(frozen=True, kw_only=True)
class PublicEvent:
    type: str
    seq: int
    run: str | None
    key: str  # what makes it unique for one subscription (the delivery id derives from it)
    created_at: float
    data: dict[str, Any] = field(default_factory=dict)


def public_event(event: Event) -> PublicEvent | None:
    """The public event for one events-log row, or None when that kind is not published (planning,
    heartbeats of the board itself, integration records — publishing those would loop)."""
    d = event.data
    kind = event.kind
    kind_map = {
        "recorded": "outcome.created",
        "claimed": "outcome.started",
        "completed": "outcome.completed",
        "retry_scheduled": "outcome.retry_scheduled",
        "failed": "outcome.failed",
        "run_cancelled": "run.cancelled",
        "run_planned": "run.planned",
        "run_extended": "run.planned",
        "ready": "outcome.ready",
        "dependents_cancelled": "outcome.dependents_cancelled",
        "in_review": "outcome.in_review",
        "approved": "outcome.approved",
        "rejected": "outcome.rejected",
        "budget_exceeded": "run.budget_exceeded",
    }
    if kind == "lease_expired":
        target = {"pending": "outcome.retry_scheduled", "failed": "outcome.failed"}.get(str(d.get("now")))
    elif kind == "status_updated":
        target = {
            "complete": "outcome.completed",
            "failed": "outcome.failed",
            "generating": "outcome.started",
        }.get(str(d.get("to")))
    else:
        target = kind_map.get(kind)
    if target is None:
        return None
    data: dict[str, Any] = {"seq": event.seq, "run": event.run}
    if event.outcome_id is not None:
        data["outcome_id"] = event.outcome_id
        if target in _STATUS_FOR:
            data["status"] = _STATUS_FOR[target]
        elif target == "outcome.rejected" and d.get("now") is not None:
            data["status"] = d["now"]  # pending (a new attempt) or failed (attempts spent)
    for name in ("package", "item", "attempt", "worker", "duration", "delay"):
        if d.get(name) is not None:
            data[name] = d[name]
    if kind == "lease_expired":
        data["error"] = "lease expired"
    elif d.get("error") is not None:
        data["error"] = d["error"]
    if kind == "run_cancelled" and d.get("cancelled_items") is not None:
        data["cancelled_items"] = d["cancelled_items"]
    if target == "outcome.dependents_cancelled":
        data.update(failed=d.get("failed"), count=d.get("count", 0), outcome_ids=d.get("outcome_ids", []))
    if target in ("outcome.approved", "outcome.rejected") and d.get("note") is not None:
        data["note"] = d["note"]
    if target == "run.budget_exceeded":
        data.update(budget=d.get("budget"), limit=d.get("limit"), spent=d.get("spent"))
    if target == "run.planned":
        data.update(packages=d.get("packages", 0), items=d.get("items", 0), extended=kind == "run_extended")
    return PublicEvent(
        type=target,
        seq=event.seq,
        run=event.run,
        key=f"seq:{event.seq}",
        created_at=event.created_at.timestamp(),
        data=data,
    )


def enrich(pub: PublicEvent, facts: OutcomeFacts) -> None:
    """Complete an outcome event's data from its outcome, read once per dispatch round: package and item
    when the event lacks them; the attempt number when it lacks one; and for the terminal events the
    outcome's metrics and (for outcome.failed) its last error. Values the event carries win: they are
    what was true at that moment; the outcome's are as of the round (usually the same)."""
    data = pub.data
    if "package" not in data:
        data.update(package=facts.package, item=facts.item)
    if pub.type.startswith("outcome.") and pub.type != "outcome.created" and "attempt" not in data:
        data["attempt"] = facts.attempts
    if pub.type in ("outcome.completed", "outcome.failed", "outcome.approved"):
        data["metrics"] = facts.metrics
    if pub.type == "outcome.failed" and "error" not in data and facts.error is not None:
        data["error"] = facts.error[:500]


def completions(
    summaries: Sequence[PackageSummary], touched: Iterable[str], seq: int, now: float
) -> list[PublicEvent]:
    """package.completed for each touched package with nothing left to do, and run.completed when the
    whole run has nothing left; `summaries` are all of one run's packages, read after the events."""
    out: list[PublicEvent] = []
    touched = set(touched)

    def done(p: PackageSummary) -> bool:
        left = p.pending_items + p.generating_items + p.blocked_items + p.in_review_items
        return p.total_items > 0 and left == 0

    def counts(p: PackageSummary) -> dict[str, Any]:
        return {
            "total": p.total_items,
            "complete": p.completed_items,
            "failed": p.failed_items,
            "cancelled": p.cancelled_items,
            "success_rate": p.success_rate,
        }

    for p in summaries:
        if p.package in touched and done(p):
            c = counts(p)
            key = f"package:{p.run}:{p.package}:{c['complete']}:{c['failed']}:{c['cancelled']}"
            out.append(
                PublicEvent(
                    type="package.completed",
                    seq=seq,
                    run=p.run,
                    key=key,
                    created_at=now,
                    data={"seq": seq, "run": p.run, "package": p.package, **c},
                )
            )
    if summaries and touched and all(done(p) for p in summaries):
        run = summaries[0].run
        packages = [{"package": p.package, **counts(p)} for p in summaries]
        totals = {k: sum(int(c[k]) for c in packages) for k in ("total", "complete", "failed", "cancelled")}
        key = f"run:{run}:{totals['complete']}:{totals['failed']}:{totals['cancelled']}"
        out.append(
            PublicEvent(
                type="run.completed",
                seq=seq,
                run=run,
                key=key,
                created_at=now,
                data={"seq": seq, "run": run, **totals, "packages": packages},
            )
        )
    return out


def matches(patterns: Sequence[str], run_filter: str | None, event: PublicEvent) -> bool:
    if event.type == "ping":
        return True
    if run_filter is not None and event.run != run_filter:
        return False
    return "*" in patterns or event.type in patterns


def delivery_id(subscription_id: str, key: str) -> str:
    """Stable across retries and re-materialization: the Standard Webhooks `webhook-id`."""
    return "msg_" + hashlib.sha256(f"{subscription_id}\n{key}".encode()).hexdigest()[:26]


def body(event: PublicEvent) -> str:
    """The JSON body, fixed when the delivery is created so every retry signs the same bytes."""
    stamp = datetime.fromtimestamp(event.created_at, tz=UTC).isoformat().replace("+00:00", "Z")
    return json.dumps(
        {"type": event.type, "timestamp": stamp, "data": event.data},
        separators=(",", ":"),
        ensure_ascii=False,
    )
