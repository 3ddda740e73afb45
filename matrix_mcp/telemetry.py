"""Observations other parts report without depending on the metrics library.

The HTTP service installs a sink (Prometheus); everywhere else (a stdio worker) these calls cost a
lookup and do nothing. Integrations call `observe_integration_call` once per outbound call; the engine calls
`observe_generation` once per completed outcome.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

IntegrationSink = Callable[[str, str, float], None]
GenerationSink = Callable[[str, str, float], None]
_integration_sinks: list[IntegrationSink] = []
_generation_sinks: list[GenerationSink] = []


def observe_integration_call(service: str, status: str, seconds: float) -> None:
    """One outbound call: `service` (webhook, slack, jira, github — a fixed vocabulary, never a URL),
    `status` (success, failure, timeout, …) and how long it took. Never raises: metrics must not break
    a delivery."""
    for sink in _integration_sinks:
        with contextlib.suppress(Exception):
            sink(service, status, seconds)


def add_integration_sink(sink: IntegrationSink) -> None:
    _integration_sinks.append(sink)


def remove_integration_sink(sink: IntegrationSink) -> None:
    if sink in _integration_sinks:
        _integration_sinks.remove(sink)


def observe_generation(package: str, outcome_type: str, seconds: float) -> None:
    """One outcome completed through this process: its package, outcome_type and claim-to-completion time."""
    for sink in _generation_sinks:
        sink(package, outcome_type, seconds)


def add_generation_sink(sink: GenerationSink) -> None:
    _generation_sinks.append(sink)


def remove_generation_sink(sink: GenerationSink) -> None:
    if sink in _generation_sinks:
        _generation_sinks.remove(sink)
