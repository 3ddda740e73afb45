"""Events out, the pure parts: event mapping, Standard Webhooks signing (standardwebhooks as oracle),
Fernet keys, retry and circuit-breaker decisions, and the SSRF guard with a resolver we control."""

from __future__ import annotations

import ipaddress
import os
import random
import stat
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from matrix_mcp.integrations import crypto, signing
from matrix_mcp.integrations import events as E
from matrix_mcp.integrations.http import Http
from matrix_mcp.integrations.policy import (
    Answer,
    after_answer,
    attempt_result,
    circuit_open,
    retry_after_seconds,
)
from matrix_mcp.integrations.settings import HookSettings
from matrix_mcp.integrations.ssrf import Refused, check, refusal
from matrix_mcp.models import Event, PackageSummary
from matrix_mcp.store.hooks import EndpointState

pytestmark = pytest.mark.anyio


def ev(kind: str, seq: int = 7, **data: object) -> Event:
    return Event(
        seq=seq,
        run="r",
        outcome_id="o1" if kind not in ("run_cancelled", "run_planned") else None,
        kind=kind,
        data=data,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


# ---- the mapping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (ev("recorded", package="p", item="i", status="pending"), "outcome.created"),
        (ev("claimed", package="p", item="i", worker="w", attempt=1), "outcome.started"),
        (ev("completed", package="p", item="i", duration=1.5), "outcome.completed"),
        (
            ev("retry_scheduled", package="p", item="i", attempt=1, delay=2.0, error="x"),
            "outcome.retry_scheduled",
        ),
        (ev("failed", package="p", item="i", attempt=3, error="boom"), "outcome.failed"),
        (ev("lease_expired", package="p", item="i", attempt=1, now="pending"), "outcome.retry_scheduled"),
        (ev("lease_expired", package="p", item="i", attempt=3, now="failed"), "outcome.failed"),
        (ev("lease_expired", package="p", item="i", attempt=1, now="cancelled"), None),
        (ev("status_updated", package="p", item="i", to="complete"), "outcome.completed"),
        (ev("status_updated", package="p", item="i", to="failed"), "outcome.failed"),
        (ev("status_updated", package="p", item="i", to="pending"), None),
        (ev("run_cancelled", cancelled_items=4), "run.cancelled"),
        (ev("cancelled", package="p", item="i"), None),
        (ev("run_planned", packages=["p"], items=2), "run.planned"),
        (ev("run_extended", packages=[], items=3), "run.planned"),
        (ev("integration", integration_type="webhook"), None),  # never publish our own records: a loop
        (ev("requeued", count=1), None),
        (ev("ready", package="p", item="i"), "outcome.ready"),
        (
            ev("dependents_cancelled", failed="p/i", count=1, outcome_ids=["o2"]),
            "outcome.dependents_cancelled",
        ),
    ],
)
def test_public_event_mapping(event: Event, expected: str | None) -> None:
    pub = E.public_event(event)
    assert (pub.type if pub else None) == expected
    if pub is not None:
        assert pub.data["seq"] == 7 and pub.data["run"] == "r" and pub.key == "seq:7"


def test_enrich_adds_metrics_attempt_and_error_but_keeps_what_the_event_says() -> None:
    from matrix_mcp.store.hooks import OutcomeFacts

    facts = OutcomeFacts("p", "i", 2, {"lines": 3}, "last error")
    done = E.public_event(ev("completed", duration=1.0))
    assert done is not None
    E.enrich(done, facts)
    assert (done.data["package"], done.data["item"], done.data["attempt"], done.data["metrics"]) == (
        "p",
        "i",
        2,
        {"lines": 3},
    )
    assert "error" not in done.data  # a completion carries no error
    failed = E.public_event(ev("status_updated", package="q", item="j", to="failed"))
    assert failed is not None
    E.enrich(failed, facts)
    assert (failed.data["package"], failed.data["error"], failed.data["metrics"]) == (
        "q",
        "last error",
        {"lines": 3},
    )
    own = E.public_event(ev("failed", package="p", item="i", attempt=3, error="boom"))
    assert own is not None
    E.enrich(own, facts)
    assert (own.data["attempt"], own.data["error"]) == (3, "boom")  # the event's own values win
    started = E.public_event(ev("claimed", package="p", item="i", worker="w", attempt=1))
    assert started is not None
    E.enrich(started, facts)
    assert "metrics" not in started.data and started.data["attempt"] == 1
    planned = E.public_event(ev("run_extended", packages=["p2"], items=3))
    assert planned is not None and {k: v for k, v in planned.data.items() if k != "outcome_id"} == {
        "seq": 7,
        "run": "r",
        "packages": ["p2"],
        "items": 3,
        "extended": True,
    }


def test_public_event_payload_fields() -> None:
    pub = E.public_event(ev("failed", package="p", item="i", attempt=3, error="boom"))
    assert pub is not None
    assert pub.data == {
        "seq": 7, "run": "r", "outcome_id": "o1", "status": "failed",
        "package": "p", "item": "i", "attempt": 3, "error": "boom",
    }  # fmt: skip
    expired = E.public_event(ev("lease_expired", package="p", item="i", attempt=3, now="failed"))
    assert expired is not None and expired.data["error"] == "lease expired"
    body = E.body(pub)
    assert body.startswith('{"type":"outcome.failed","timestamp":"2026-01-01T00:00:00Z","data":{')


def test_ready_and_dependents_cancelled_payloads() -> None:
    """outcome.ready says the item is pending now; outcome.dependents_cancelled names the failure, how many it
    cancelled and their ids, and counts as terminal (the cancelled items' packages may have finished)."""
    ready = E.public_event(ev("ready", package="p", item="i"))
    assert ready is not None and ready.data == {
        "seq": 7, "run": "r", "outcome_id": "o1", "status": "pending", "package": "p", "item": "i",
    }  # fmt: skip
    cascade = E.public_event(ev("dependents_cancelled", failed="p/i", count=120, outcome_ids=["a", "b"]))
    assert cascade is not None
    assert (cascade.data["failed"], cascade.data["count"], cascade.data["outcome_ids"]) == (
        "p/i",
        120,
        ["a", "b"],
    )
    assert cascade.type in E.TERMINAL_TYPES and {"outcome.ready", "outcome.dependents_cancelled"} <= set(
        E.EVENT_TYPES
    )
    from matrix_mcp.store.hooks import OutcomeFacts

    E.enrich(cascade, OutcomeFacts("p", "i", 3, {"lines": 1}, "boom"))
    assert "metrics" not in cascade.data and "error" not in cascade.data  # the failure's own event has those


def summary(
    package: str, total: int, done: int, failed: int = 0, pending: int = 0, blocked: int = 0
) -> PackageSummary:
    return PackageSummary(
        run="r", package=package, position=0, total_items=total, pending_items=pending, generating_items=0,
        completed_items=done, failed_items=failed, cancelled_items=0, blocked_items=blocked, success_rate=None,
        total_lines_generated=0,
    )  # fmt: skip


def test_a_package_with_blocked_items_has_not_completed() -> None:
    waiting = summary("a", 3, 1, failed=1, blocked=1)  # on_dependency_failure="block": it waits for a retry
    assert E.completions([waiting], ["a"], 9, 100.0) == []
    assert [p.type for p in E.completions([summary("a", 3, 2, failed=1)], ["a"], 9, 100.0)] == [
        "package.completed",
        "run.completed",
    ]


def test_completions_are_derived_from_counters_and_keyed_by_them() -> None:
    a_done, b_open = summary("a", 2, 1, failed=1), summary("b", 2, 1, pending=1)
    out = E.completions([a_done, b_open], ["a"], 9, 100.0)
    assert [p.type for p in out] == ["package.completed"]
    assert out[0].data["package"] == "a" and out[0].data["failed"] == 1 and out[0].seq == 9
    assert E.completions([a_done, b_open], ["b"], 9, 100.0) == []
    b_done = summary("b", 2, 2)
    out2 = E.completions([a_done, b_done], ["b"], 10, 100.0)
    assert [p.type for p in out2] == ["package.completed", "run.completed"]
    run = out2[1].data
    assert (run["total"], run["complete"], run["failed"]) == (4, 3, 1) and len(run["packages"]) == 2
    # the same state seen again (another event revealing it) has the same key: delivered once
    again = E.completions([a_done, b_done], ["a", "b"], 11, 101.0)
    assert {p.key for p in again} >= {out2[0].key, out2[1].key}
    assert E.delivery_id("wh", out2[1].key) == E.delivery_id("wh", again[-1].key)
    assert E.delivery_id("wh", "k") != E.delivery_id("wh2", "k")


def test_matches_events_and_run_filter() -> None:
    pub = E.PublicEvent(type="outcome.failed", seq=1, run="r", key="seq:1", created_at=0.0)
    assert E.matches(["*"], None, pub) and E.matches(["outcome.failed"], "r", pub)
    assert not E.matches(["outcome.completed"], None, pub) and not E.matches(["*"], "other", pub)
    assert E.matches(
        ["outcome.completed"], "other", E.PublicEvent(type="ping", seq=0, run=None, key="p", created_at=0.0)
    )


# ---- signing: the reference library verifies what we send ------------------------------------------


def test_signatures_verify_with_the_standardwebhooks_library() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    body = '{"type":"ping","timestamp":"2026-01-01T00:00:00Z","data":{}}'
    now = int(datetime.now(tz=UTC).timestamp())
    headers = signing.headers([secret], "msg_1", now, body)
    assert Webhook(secret).verify(body, headers) == {
        "type": "ping",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {},
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("ping", "pong"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)
    # during rotation both the new and the old secret verify
    old, new = signing.new_secret(), signing.new_secret()
    both = signing.headers([new, old], "msg_2", now, body)
    assert len(both["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, both)
    Webhook(new).verify(body, both)
    with pytest.raises(ValueError, match="secret"):
        signing.secret_bytes("whsec_c2hvcnQ=")


# ---- secrets at rest ---------------------------------------------------------------------------------


def test_keyring_rotation_and_key_file(tmp_path: Path) -> None:
    k1, k2 = crypto.new_key(), crypto.new_key()
    token = crypto.Keyring([k1]).encrypt({"secret": "whsec_x"})
    assert "whsec_x" not in token
    both = crypto.Keyring([k2, k1])
    assert both.decrypt(token) == {"secret": "whsec_x"}
    rotated = both.rotate(token)
    assert crypto.Keyring([k2]).decrypt(rotated) == {"secret": "whsec_x"}
    with pytest.raises(crypto.KeyError_, match="MATRIX_ENCRYPTION_KEY"):
        crypto.Keyring([k1]).decrypt(rotated)
    with pytest.raises(crypto.KeyError_, match="MATRIX_ENCRYPTION_KEY"):
        crypto.Keyring(["not-a-key"])
    url = f"sqlite:///{tmp_path / 'm.db'}"
    ring = crypto.load_keyring(url, ())
    path = tmp_path / "m.db.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert crypto.load_keyring(url, ()).decrypt(ring.encrypt({"a": 1})) == {"a": 1}  # the same key, reread
    with pytest.raises(crypto.KeyError_, match="PostgreSQL"):
        crypto.load_keyring("postgresql://x/y", ())
    assert crypto.load_keyring("postgresql://x/y", (k1,)).decrypt(token) == {"secret": "whsec_x"}


# ---- retries and the circuit breaker ------------------------------------------------------------------


def test_retry_schedule_jitter_retry_after_and_giving_up() -> None:
    s = HookSettings(retry_schedule=(5.0, 300.0), jitter=0.2, retry_after_max=60.0)
    rng = random.Random(1)
    r1 = attempt_result(s, "d", 0, Answer(500), 1000.0, rng)
    assert r1.status == "pending" and r1.attempts == 1 and 1004.0 <= r1.next_attempt_at <= 1006.0
    r2 = attempt_result(s, "d", 1, Answer(None, "timed out"), 1000.0, rng)
    assert 1240.0 <= r2.next_attempt_at <= 1360.0 and r2.error == "timed out"
    assert attempt_result(s, "d", 2, Answer(500), 1000.0, rng).status == "failed"
    assert attempt_result(s, "d", 5, Answer(204), 1000.0, rng).status == "succeeded"
    late = attempt_result(s, "d", 0, Answer(429, "HTTP 429", retry_after=40.0), 1000.0, rng)
    assert late.next_attempt_at == 1040.0
    soon = attempt_result(s, "d", 0, Answer(429, "HTTP 429", retry_after=1.0), 1000.0, rng)
    assert soon.next_attempt_at == 1001.0
    ignored = attempt_result(s, "d", 0, Answer(500, "HTTP 500", retry_after=1.0), 1000.0, rng)
    assert ignored.next_attempt_at >= 1004.0  # Retry-After counts on 429/503 only
    clamped = attempt_result(s, "d", 0, Answer(503, "HTTP 503", retry_after=9999.0), 1000.0, rng)
    assert clamped.next_attempt_at == 1060.0
    assert retry_after_seconds("12", 0.0) == 12.0
    assert (
        retry_after_seconds("Thu, 01 Jan 2026 00:00:30 GMT", datetime(2026, 1, 1, tzinfo=UTC).timestamp())
        == 30.0
    )
    assert retry_after_seconds("soon", 0.0) is None


def test_circuit_breaker_opens_probes_closes_and_disables() -> None:
    s = HookSettings(circuit_failures=3, circuit_recovery=10.0, disable_after=100.0)
    st = EndpointState(failures=0, failing_since=None, circuit_open_until=None, last_success_at=None)
    for t in (1.0, 2.0):
        st = after_answer(s, st, Answer(500), t)
        assert not circuit_open(st, t)
    st = after_answer(s, st, Answer(500), 3.0)
    assert circuit_open(st, 3.0) and not circuit_open(st, 13.0) and st.failing_since == 1.0
    st = after_answer(s, st, Answer(None, "refused"), 13.0)  # the half-open probe failed: open again
    assert circuit_open(st, 20.0) and st.active
    st = after_answer(s, st, Answer(200), 24.0)
    assert st == EndpointState(failures=0, failing_since=None, circuit_open_until=None, last_success_at=24.0)
    gone = after_answer(s, st, Answer(410), 25.0)
    assert not gone.active and "410" in (gone.disabled_reason or "")
    st = after_answer(
        s,
        EndpointState(failures=1, failing_since=1.0, circuit_open_until=None, last_success_at=None),
        Answer(500),
        101.0,
    )
    assert not st.active and "failing since" in (st.disabled_reason or "")


# ---- the SSRF guard: never by connecting ------------------------------------------------------------

ALLOWED = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("192.0.0.8", "reserved"),
        ("198.18.0.1", "benchmarking"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "IPv4-mapped"),
        ("::ffff:8.8.8.8", "IPv4-mapped"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("64:ff9b::a00:1", "NAT64"),
        ("64:ff9b:1::a00:1", "NAT64"),
        ("2002:a00:1::1", "6to4"),
        ("2001:0:4136:e378::1", "Teredo"),
        ("2001:db8::1", "documentation"),
        ("fec0::1", "site-local"),
    ],
)
async def test_ssrf_refuses_every_non_public_address(address: str, why: str) -> None:
    assert why.split()[0].lower() in (refusal(ipaddress.ip_address(address)) or "").lower()

    async def resolver(host: str, port: int) -> list[str]:
        return [address]

    with pytest.raises(Refused, match="resolves to"):
        await check("https://hooks.example.com/x", (), resolver)
    with pytest.raises(Refused, match=" is a "):
        await check(f"https://[{address}]/x" if ":" in address else f"https://{address}/x", (), resolver)


async def test_ssrf_public_https_allowed_http_refused_and_allowed_networks() -> None:
    async def public(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]

    target = await check("https://hooks.example.com:8443/in?x=1", (), public)
    assert (target.address, target.host, target.port, target.path) == (
        "93.184.215.14",
        "hooks.example.com",
        8443,
        "/in?x=1",
    )
    with pytest.raises(Refused, match="https is required"):
        await check("http://hooks.example.com/in", (), public)
    with pytest.raises(Refused, match="loopback"):
        await check("http://127.0.0.1:9/in", (), public)
    ok = await check("http://127.0.0.1:9/in", ALLOWED, public)  # literal in an allowed network: http is fine
    assert ok.address == "127.0.0.1"

    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.1"]

    with pytest.raises(Refused, match=r"10\.0\.0\.1"):
        await check("https://hooks.example.com/", (), mixed)
    with pytest.raises(Refused, match="credentials"):
        await check("https://u:p@hooks.example.com/", (), public)
    with pytest.raises(Refused, match="http"):
        await check("file:///etc/passwd", (), public)


async def test_ssrf_checks_at_every_attempt_and_connects_to_the_checked_address() -> None:
    """DNS rebinding: the name answers a public address, then a private one. Each request is checked
    again, and the request goes to the address that was checked (a mock transport records it; nothing
    is connected)."""
    answers = [["93.184.215.14"], ["169.254.169.254"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0)

    seen: list[httpx2.Request] = []

    def record(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data"})

    http = Http((), 5.0, rebinding, httpx2.MockTransport(record))
    first = await http.request("POST", "https://hooks.example.com/in", {"x-a": "1"}, content=b"{}")
    assert first.status_code == 302 and len(seen) == 1  # the redirect is not followed
    sent = seen[0]
    assert sent.url.host == "93.184.215.14" and sent.url.scheme == "https"
    assert (
        sent.headers["host"] == "hooks.example.com" and sent.extensions["sni_hostname"] == "hooks.example.com"
    )
    with pytest.raises(Refused, match="link-local"):
        await http.request("POST", "https://hooks.example.com/in", content=b"{}")
    assert len(seen) == 1
    await http.aclose()


def test_review_and_budget_events_are_published() -> None:
    """A completion under review, its approval and rejection, and a budget crossed are public events: the
    review's note and the rejection's new status go with them, the budget's name, limit and spend too."""
    waiting = E.public_event(ev("in_review", package="p", item="i", attempt=1))
    assert waiting is not None and (waiting.type, waiting.data["status"]) == (
        "outcome.in_review",
        "in_review",
    )
    approved = E.public_event(ev("approved", package="p", item="i", attempt=1, note="looks right"))
    assert approved is not None
    assert (approved.type, approved.data["status"], approved.data["note"]) == (
        "outcome.approved",
        "complete",
        "looks right",
    )
    again = E.public_event(ev("rejected", package="p", item="i", attempt=1, note="no tests", now="pending"))
    assert again is not None
    assert (again.type, again.data["status"], again.data["note"]) == (
        "outcome.rejected",
        "pending",
        "no tests",
    )
    spent = E.public_event(ev("rejected", package="p", item="i", attempt=3, now="failed"))
    assert spent is not None and spent.data["status"] == "failed" and "note" not in spent.data
    assert {"outcome.approved", "outcome.rejected"} <= E.TERMINAL_TYPES
    budget = E.public_event(
        Event(
            seq=8,
            run="r",
            outcome_id=None,
            kind="budget_exceeded",
            data={"budget": "max_cost_usd", "limit": 1.0, "spent": 1.25},
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    )
    assert budget is not None and budget.type == "run.budget_exceeded"
    assert budget.data == {"seq": 8, "run": "r", "budget": "max_cost_usd", "limit": 1.0, "spent": 1.25}
    assert {waiting.type, approved.type, again.type, budget.type} <= set(E.EVENT_TYPES)


def test_a_package_with_items_in_review_is_not_completed() -> None:
    def summary(in_review: int) -> PackageSummary:
        return PackageSummary.model_validate(
            {
                "run": "r",
                "package": "p",
                "position": 0,
                "total_items": 2,
                "completed_items": 2 - in_review,
                "pending_items": 0,
                "generating_items": 0,
                "failed_items": 0,
                "cancelled_items": 0,
                "in_review_items": in_review,
                "total_lines_generated": 0,
            }
        )

    assert E.completions([summary(1)], ["p"], 9, 0.0) == []
    assert [p.type for p in E.completions([summary(0)], ["p"], 9, 0.0)] == [
        "package.completed",
        "run.completed",
    ]
