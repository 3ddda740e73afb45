"""One hook for metrics: every outbound call reports (service, status, seconds) here. A no-op until
the HTTP service wires it to `matrix_integration_calls_total{service,status}` and
`matrix_integration_duration_seconds{service}`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

Observer = Callable[[str, str, float], None]


def _noop(service: str, status: str, seconds: float) -> None:
    return None


_observer: Observer = _noop


def set_observer(fn: Observer | None) -> None:
    global _observer
    _observer = fn or _noop


def observe(service: str, status: str, seconds: float) -> None:
    with contextlib.suppress(Exception):  # metrics must never break a delivery
        _observer(service, status, seconds)
