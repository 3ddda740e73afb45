"""The claim policy's rules (dependencies, priorities, lock keys, caps), pure: no store, no clock."""

from __future__ import annotations

import json

import pytest

from matrix_mcp import rules
from matrix_mcp.errors import InputError


def test_a_reference_names_a_package_or_items_in_the_order_it_resolves() -> None:
    assert rules.ref_candidates("b/*", "a", "f") == (("b", None),)
    assert rules.ref_candidates("x", "a", "f") == (("a", "x"),)
    assert rules.ref_candidates("b/y", "a", "f") == (("b", "y"), ("a", "b/y"))
    # names may hold "/": every split, left to right, then the whole text in the same package
    assert rules.ref_candidates("s/src/db.py", "a", "f") == (
        ("s", "src/db.py"),
        ("s/src", "db.py"),
        ("a", "s/src/db.py"),
    )
    assert rules.ref_candidates("x/", "a", "f") == (("a", "x/"),)
    assert rules.ref_text(("b", None)) == "b/*" and rules.ref_text(("b", "y")) == "b/y"


@pytest.mark.parametrize("ref", ["", "  ", "*", "/*", "a\x00b", 3])
def test_a_malformed_reference_is_one_line_naming_its_field(ref: object) -> None:
    with pytest.raises(InputError) as err:
        rules.ref_candidates(ref, "a", "packages[0].items[1].after[2]")
    assert err.value.field == "packages[0].items[1].after[2]"
    assert "\n" not in str(err.value)


def test_lock_keys_are_bounded_printable_and_counted_once() -> None:
    assert rules.check_locks(["file:a", "api:github", "file:a"], "f") == ("file:a", "api:github")
    for bad, where in [([""], "f[0]"), (["x" * 201], "f[0]"), (["ok", "tab\there"], "f[1]")]:
        with pytest.raises(InputError) as err:
            rules.check_locks(bad, "f")
        assert err.value.field == where
    assert len(rules.check_locks([f"k{i}" for i in range(32)], "f")) == 32
    with pytest.raises(InputError, match="more than 32 lock keys") as err:
        rules.check_locks([f"k{i}" for i in range(33)], "f")
    assert err.value.field == "f"


def test_a_cycle_is_found_and_named_through_a_packages_hub() -> None:
    # a/x waits for b/*; b/y (an item of b) waits for a/x
    graph: dict[rules.Node, list[rules.Node]] = {
        ("a", "x"): [("b", None)],
        ("b", None): [("b", "y"), ("b", "z")],
        ("b", "y"): [("a", "x")],
        ("b", "z"): [],
    }
    cycle = rules.find_cycle(list(graph), lambda n: graph[n])
    assert cycle is not None
    err = rules.dependency_cycle(cycle)
    assert str(err) == "dependency cycle: a/x → b/* → b/y → a/x"
    assert err.field == "packages"


def test_no_cycle_in_a_dag_and_a_long_chain_does_not_recurse() -> None:
    diamond: dict[rules.Node, list[rules.Node]] = {
        ("p", "d"): [("p", "b"), ("p", "c")],
        ("p", "b"): [("p", "a")],
        ("p", "c"): [("p", "a")],
        ("p", "a"): [],
    }
    assert rules.find_cycle(list(diamond), lambda n: diamond[n]) is None
    n = 200_000
    chain = {("p", str(i)): [("p", str(i + 1))] if i + 1 < n else [] for i in range(n)}
    assert rules.find_cycle(list(chain), lambda node: chain[node]) is None
    chain[("p", str(n - 1))] = [("p", "0")]
    cycle = rules.find_cycle(list(chain), lambda node: chain[node])
    assert cycle is not None and len(cycle) == n + 1 and cycle[0] == cycle[-1] == ("p", "0")


def test_an_item_with_unmet_prerequisites_starts_blocked() -> None:
    assert rules.initial_status(0) == "pending"
    assert rules.initial_status(3) == "blocked"


def test_blocked_cannot_be_set_by_hand() -> None:
    with pytest.raises(InputError) as err:
        rules.check_settable("blocked")
    assert err.value.field == "status"
    for status in ("pending", "generating", "complete", "failed", "cancelled"):
        rules.check_settable(status)


def test_a_lock_is_held_only_by_a_live_lease_under_the_token_it_was_taken_with() -> None:
    live = {"status": "generating", "lease_token": "t", "lock_token": "t", "lease_expires_at": 10.0}
    assert rules.lock_held(**live, now=9.0)
    assert not rules.lock_held(**live, now=10.0)  # expired at its expiry
    assert not rules.lock_held(**{**live, "lease_token": "t2"}, now=9.0)  # re-leased or fenced
    assert not rules.lock_held(**{**live, "status": "complete"}, now=9.0)
    assert not rules.lock_held(**{**live, "lease_expires_at": None}, now=9.0)


def test_claim_eligibility_needs_ready_free_and_under_both_caps() -> None:
    base = {
        "status": "pending",
        "available_at": 5.0,
        "now": 5.0,
        "locks_free": True,
        "package_generating": 1,
        "package_cap": 2,
        "run_generating": 3,
        "run_cap": None,
    }
    assert rules.claim_eligible(**base)  # type: ignore[arg-type]
    for change in [
        {"status": "blocked"},
        {"available_at": 5.1},
        {"locks_free": False},
        {"package_generating": 2},
        {"run_cap": 3},
    ]:
        assert not rules.claim_eligible(**{**base, **change})  # type: ignore[arg-type]
    assert rules.under_cap(10**6, None) and not rules.under_cap(1, 1)


def test_claim_order_is_package_priority_then_item_priority_then_the_round_robin() -> None:
    def key(pp: int, ip: int, last: int, avail: float, pos: int) -> tuple[int, int, int, int, float, int]:
        return rules.claim_order(
            package_priority=pp, item_priority=ip, last_claim=last, available_at=avail, position=pos
        )

    items = {
        "low package, high item": key(0, 9, 0, 0.0, 0),
        "high package, low item": key(1, -5, 9, 9.0, 9),
        "high package, high item": key(1, 0, 9, 9.0, 9),
        "tie, served least recently": key(0, 9, -1, 5.0, 5),
        "tie, earlier available": key(0, 9, 0, -1.0, 5),
    }
    assert sorted(items, key=items.__getitem__) == [
        "high package, high item",
        "high package, low item",
        "tie, served least recently",
        "tie, earlier available",
        "low package, high item",
    ]


def test_readying_is_entering_complete_and_a_package_done_when_all_complete() -> None:
    assert rules.enters_complete("generating", "complete") and rules.enters_complete("failed", "complete")
    assert not rules.enters_complete("complete", "complete")
    assert rules.leaves_complete("complete", "pending") and not rules.leaves_complete("failed", "pending")
    assert rules.package_done(3, 3) and not rules.package_done(2, 3) and rules.package_done(0, 0)
    assert rules.readied("blocked", 0) and not rules.readied("blocked", 1)
    assert not rules.readied("cancelled", 0)  # a cascade-cancelled dependent stays cancelled
    move = rules.ready(7.0)
    assert (move.old, move.new) == ("blocked", "pending")
    assert move.values == {"status": "pending", "available_at": 7.0, "updated_at": 7.0}


def test_the_failure_cascade_cancels_dependents_naming_the_failed_item_and_retry_reblocks() -> None:
    assert rules.enters_failed("generating", "failed") and rules.enters_failed("complete", "failed")
    assert not rules.enters_failed("failed", "failed") and not rules.enters_failed("generating", "pending")
    assert rules.cascades("cancel") and not rules.cascades("block")
    move = rules.cascade(failed=("a", "x"), failed_n=42, now=3.0)
    assert (move.old, move.new) == ("blocked", "cancelled")
    assert move.values["error_message"] == "dependency 'a/x' failed"
    assert move.values["cancelled_by"] == 42 and move.values["completed_at"] == 3.0
    back = rules.reblock(4.0)
    assert (back.old, back.new) == ("cancelled", "blocked")
    assert back.values["cancelled_by"] is None and back.values["completed_at"] is None
    assert back.values["error_message"] is None and "waiting" not in back.values  # its count is kept
    end = rules.cancel_blocked(5.0)
    assert (end.old, end.new) == ("blocked", "cancelled")


def test_policy_events_and_their_payloads() -> None:
    ev = rules.ready_event(package="a", item="x")
    assert (ev.kind, dict(ev.data)) == ("ready", {"package": "a", "item": "x"})
    ids = [f"id{i}" for i in range(150)]
    ev = rules.dependents_cancelled(failed=("a", "x"), outcome_ids=ids)
    assert ev.kind == "dependents_cancelled"
    assert ev.data["failed"] == "a/x" and ev.data["count"] == 150
    assert ev.data["outcome_ids"] == ids[:100]
    assert json.loads(ev.payload())["count"] == 150


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        (
            {"pending": 2, "generating": 1, "total": 5, "capped": True, "locked": True},
            ("capped", "cap_holders"),
        ),
        ({"pending": 2, "generating": 1, "total": 5, "locked": True}, ("locked", "lock_holders")),
        ({"pending": 2, "generating": 1, "total": 5, "blocked": 2}, ("backing_off", "available_at")),
        ({"pending": 0, "generating": 1, "total": 5, "blocked": 2}, ("blocked", "lease_expires_at")),
        ({"pending": 0, "generating": 0, "total": 5, "blocked": 2}, ("blocked", None)),
        ({"pending": 0, "generating": 1, "total": 5}, ("all_leased", "lease_expires_at")),
        ({"pending": 0, "generating": 0, "total": 5}, ("done", None)),
        # items in review are not done; with nothing in progress, blocked items wait on the reviews
        ({"pending": 0, "generating": 0, "total": 5, "in_review": 1}, ("in_review", None)),
        ({"pending": 0, "generating": 0, "total": 5, "blocked": 2, "in_review": 1}, ("in_review", None)),
        (
            {"pending": 0, "generating": 1, "total": 5, "blocked": 2, "in_review": 1},
            ("blocked", "lease_expires_at"),
        ),
        ({"pending": 0, "generating": 1, "total": 5, "in_review": 1}, ("all_leased", "lease_expires_at")),
        ({"pending": 1, "generating": 0, "total": 5, "in_review": 1}, ("backing_off", "available_at")),
        ({"pending": 0, "generating": 0, "total": 0}, ("empty", None)),
    ],
)
def test_why_a_claim_came_back_short(counts: dict[str, object], expected: tuple[str, str | None]) -> None:
    assert rules.why_nothing(**counts) == expected  # type: ignore[arg-type]


def test_never_served_packages_go_in_plan_order_before_their_items_availability() -> None:
    def key(package_position: int, available_at: float) -> tuple[int, int, int, int, float, int]:
        return rules.claim_order(
            package_priority=0,
            item_priority=0,
            last_claim=0,
            package_position=package_position,
            available_at=available_at,
            position=0,
        )

    assert key(0, 9.0) < key(1, 1.0)
