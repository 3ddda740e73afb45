"""Review gates, carried-over notes, usage and budgets: the pure rules (no store, no clock)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from matrix_mcp import rules
from matrix_mcp.errors import Conflict, NotFound
from matrix_mcp.models import PreviousAttempt, Usage


def row(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "o1",
        "run_id": "r1",
        "package_id": 7,
        "package_name": "p",
        "item": "x",
        "status": "in_review",
        "attempts": 1,
        "lease_token": "t1",
        "started_at": 100.0,
        "duration_seconds": 4.0,
        "metrics": json.dumps({"lines_generated": 3}),
        "metadata": "{}",
        "outcome_path": None,
    }
    return {**base, **over}


def test_the_package_setting_wins_over_the_run_s() -> None:
    assert rules.review_required("required", None)
    assert not rules.review_required("required", "none")
    assert rules.review_required("none", "required")
    assert not rules.review_required("none", None)


def test_a_completion_under_review_ends_the_lease_but_counts_nothing() -> None:
    report = SimpleNamespace(
        metrics={"lines_generated": 3},
        metadata={},
        outcome_path=None,
        content_sha256=None,
        content_bytes=None,
        mime_type=None,
        usage=Usage(input_tokens=5, cost_usd=0.5),
    )
    t = rules.complete(row(status="generating"), lease_token="t1", report=report, now=104.0, review=True)
    assert (t.old, t.new, t.values["status"]) == ("generating", "in_review", "in_review")
    assert t.contributions == () and t.minute is None and t.metric_rows is None
    assert t.attempt == rules.AttemptEnd("t1", "in_review", None)
    assert t.usage == report.usage
    assert (t.event.kind, dict(t.event.data)) == ("in_review", {"package": "p", "item": "x", "attempt": 1})


def test_approval_counts_the_completion_now() -> None:
    t = rules.review(
        row(),
        decision="approve",
        note="ok",
        reviewed_by="key:boss",
        max_attempts=3,
        backoff=lambda n: 9,
        now=200,
    )
    assert (t.old, t.new) == ("in_review", "complete")
    assert t.contributions == (rules.Contribution({"lines_generated": 3}, 4.0, +1),)
    assert t.minute == rules.MinuteDelta(completed=1, duration=4.0)
    assert t.review == rules.AttemptReview("t1", "approve", "ok", "key:boss", "complete", None)
    assert (t.event.kind, dict(t.event.data)) == (
        "approved",
        {"package": "p", "item": "x", "attempt": 1, "note": "ok"},
    )


def test_a_rejection_retries_after_the_backoff_or_fails_with_the_note() -> None:
    again = rules.review(
        row(),
        decision="reject",
        note="tests fail",
        reviewed_by=None,
        max_attempts=2,
        backoff=lambda n: 9,
        now=200,
    )
    assert (again.new, again.values["available_at"], again.values["error_message"]) == (
        "pending",
        209,
        "tests fail",
    )
    assert again.minute is None and again.contributions == ()
    assert dict(again.event.data)["now"] == "pending"
    spent = rules.review(
        row(attempts=2),
        decision="reject",
        note=None,
        reviewed_by=None,
        max_attempts=2,
        backoff=lambda n: 9,
        now=200,
    )
    assert (spent.new, spent.values["error_message"]) == ("failed", rules.REJECTED_IN_REVIEW)
    assert spent.minute == rules.MinuteDelta(failed=1)
    assert spent.review is not None and spent.review.status == "failed"


def test_only_an_item_in_review_is_reviewed() -> None:
    with pytest.raises(NotFound):
        rules.check_review(None, "o9")
    with pytest.raises(Conflict) as err:
        rules.check_review(row(status="complete"), "o1")
    assert err.value.field == "outcome_id" and "'o1'" in str(err.value) and "\n" not in str(err.value)


def test_a_budget_trips_once_on_the_crossing() -> None:
    crossed = rules.budgets_crossed(
        max_cost_usd=1.0, max_tokens=100, cost_before=0.5, cost_after=1.5, tokens_before=50, tokens_after=90
    )
    assert [(e.kind, dict(e.data)) for e in crossed] == [
        ("budget_exceeded", {"budget": "max_cost_usd", "limit": 1.0, "spent": 1.5})
    ]
    # spent exactly the limit is within it; already past it trips nothing more
    assert not rules.budgets_crossed(
        max_cost_usd=1.0, max_tokens=None, cost_before=0.5, cost_after=1.0, tokens_before=0, tokens_after=0
    )
    assert not rules.budgets_crossed(
        max_cost_usd=1.0, max_tokens=None, cost_before=1.5, cost_after=2.0, tokens_before=0, tokens_after=0
    )
    assert rules.budget_pause("active") and not rules.budget_pause("cancelled")


def test_usage_sums_every_token_kind() -> None:
    u = Usage(input_tokens=1, output_tokens=2, cache_read_tokens=3, cache_creation_tokens=4, cost_usd=0.25)
    assert rules.usage_values(u) == (1, 2, 3, 4, 0.25) and u.tokens == 10
    assert rules.usage_values(None) == (0, 0, 0, 0, 0.0)
    assert not rules.has_usage(Usage(model="m")) and rules.has_usage(u)


def test_a_previous_attempt_says_each_thing_once() -> None:
    def seen(status: Any, error: str | None, note: str | None, review_note: str | None) -> dict[str, Any]:
        a = rules.previous_attempt(attempt=2, status=status, error=error, note=note, review_note=review_note)
        return a.model_dump(exclude_none=True)

    # rejected with a note: the note once, as review_note (its error is the same text); no status
    assert seen("failed", "no tests", "half", "no tests") == {
        "attempt": 2,
        "note": "half",
        "review_note": "no tests",
    }
    # rejected without a note: the error says so
    assert seen("failed", rules.REJECTED_IN_REVIEW, None, None) == {
        "attempt": 2,
        "error": "rejected in review",
    }
    # failed: its error; empty texts are left out
    assert seen("failed", "boom", "", "") == {"attempt": 2, "error": "boom"}
    # an attempt that did not fail (approved, then sent back by an override) says how it ended
    assert seen("complete", None, "n", "fine") == {
        "attempt": 2,
        "status": "complete",
        "note": "n",
        "review_note": "fine",
    }


def test_the_briefing_keeps_the_newest_within_its_bytes() -> None:
    attempts = [PreviousAttempt(attempt=n, status="failed", error="e" * 3000) for n in (3, 2, 1)]
    shown, omitted = rules.briefing(attempts, 4096)
    size = len(json.dumps([a.model_dump(mode="json", exclude_none=True) for a in shown]))
    assert size <= 4096 and [a.attempt for a in shown] == [3, 2, 1][: len(shown)]
    assert omitted == 3 - len(shown) and shown[0].error is not None and shown[0].error.endswith("…")
    # a small budget keeps fewer, each cut shorter, and always the newest
    for budget in (300, 120):
        few, left = rules.briefing(attempts, budget)
        assert few and few[0].attempt == 3 and left == 3 - len(few)
        assert len(json.dumps([a.model_dump(mode="json", exclude_none=True) for a in few])) <= budget
    assert rules.briefing([], 8192) == ([], 0)
