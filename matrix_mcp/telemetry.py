"""Observations other parts report without depending on the metrics library.

The HTTP service installs a sink (Prometheus); everywhere else (a stdio worker) these calls cost a
lookup and do nothing. Integrations call `observe_integration_call` once per outbound call.
"""

from __future__ import annotations

from collections.abc import Callable

IntegrationSink = Callable[[str, str, float], None]
_integration_sinks: list[IntegrationSink] = []


def observe_integration_call(service: str, status: str, seconds: float) -> None:
    """One outbound call: `service` (webhook, slack, jira, github — a fixed vocabulary, never a URL),
    `status` (success, failure, timeout, …) and how long it took."""
    for sink in _integration_sinks:
        sink(service, status, seconds)


def add_integration_sink(sink: IntegrationSink) -> None:
    _integration_sinks.append(sink)


def remove_integration_sink(sink: IntegrationSink) -> None:
    if sink in _integration_sinks:
        _integration_sinks.remove(sink)
