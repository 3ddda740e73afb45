"""Pure delivery decisions: what an attempt's answer means for the delivery and for the endpoint."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from functools import partial

from matrix_mcp.integrations.settings import HookSettings
from matrix_mcp.store.hooks import AttemptResult, EndpointState, SubscriptionRow


@dataclass(frozen=True)
class Answer:
    """What one attempt got: an HTTP status (None when no response) and an error text."""

    status_code: int | None
    error: str | None = None
    retry_after: float | None = None  # seconds, parsed from the response when present
    refused: bool = False  # this process's SSRF policy refused the destination: nothing was sent

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def next_delay(settings: HookSettings, attempts: int, rng: random.Random) -> float | None:
    """The delay after the `attempts`-th failed attempt, ± jitter; None when the schedule is spent."""
    if attempts > len(settings.retry_schedule):
        return None
    base = settings.retry_schedule[attempts - 1]
    return max(0.0, base * (1 + settings.jitter * (2 * rng.random() - 1)))


def attempt_result(
    settings: HookSettings,
    delivery_id: str,
    attempts_before: int,
    answer: Answer,
    now: float,
    rng: random.Random,
) -> AttemptResult:
    attempts = attempts_before + 1
    result = partial(
        AttemptResult, delivery_id=delivery_id, attempts=attempts, status_code=answer.status_code, now=now
    )
    if answer.ok:
        return result(status="succeeded", next_attempt_at=now, error=None)
    error = answer.error or f"HTTP {answer.status_code}"
    delay = next_delay(settings, attempts, rng)
    if delay is None:
        return result(status="failed", next_attempt_at=now, error=error)
    if answer.status_code in (429, 503) and answer.retry_after is not None:
        delay = min(answer.retry_after, settings.retry_after_max)  # the endpoint says when
    return result(status="pending", next_attempt_at=now + delay, error=error)


def endpoint_state(sub: SubscriptionRow) -> EndpointState:
    return EndpointState(
        failures=sub.failures,
        failing_since=sub.failing_since,
        circuit_open_until=sub.circuit_open_until,
        last_success_at=sub.last_success_at,
    )


def after_answer(settings: HookSettings, state: EndpointState, answer: Answer, now: float) -> EndpointState:
    """The circuit breaker: 5 consecutive failures open it for the recovery time; the next attempt is
    a half-open probe whose failure re-opens it; any success closes it. 410 Gone disables the
    subscription, and so does failing without a success for `disable_after`."""
    if answer.ok:
        return EndpointState(failures=0, failing_since=None, circuit_open_until=None, last_success_at=now)
    failures = state.failures + 1
    since = state.failing_since if state.failing_since is not None else now
    open_until = state.circuit_open_until
    if failures >= settings.circuit_failures:
        open_until = now + settings.circuit_recovery
    new = EndpointState(
        failures=failures,
        failing_since=since,
        circuit_open_until=open_until,
        last_success_at=state.last_success_at,
    )
    if answer.status_code == 410:
        return replace(new, active=False, disabled_reason="the endpoint answered 410 Gone")
    if now - since >= settings.disable_after:
        return replace(
            new, active=False, disabled_reason=f"failing since {since:.0f} for {settings.disable_after:.0f} s"
        )
    return new


def circuit_open(state: EndpointState, now: float) -> bool:
    return state.circuit_open_until is not None and now < state.circuit_open_until
