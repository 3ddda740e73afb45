"""Sinks: how a delivery reaches a system. `webhook` (Standard Webhooks), `slack`, `jira`, `github`."""

from __future__ import annotations

from matrix_mcp.integrations.sinks.base import Sink


def sink_for(kind: str) -> Sink:
    if kind == "webhook":
        from matrix_mcp.integrations.sinks.webhook import WebhookSink

        return WebhookSink()
    if kind == "slack":
        from matrix_mcp.integrations.sinks.slack import SlackSink

        return SlackSink()
    raise ValueError(f"kind: unknown sink '{kind}'")
