"""Sinks: how a delivery reaches a system. `webhook` (Standard Webhooks), `slack`, `jira`, `github`."""

from __future__ import annotations

from matrix_mcp.integrations.sinks.base import Sink


def sink_for(kind: str, min_interval: float = 0.75) -> Sink:
    if kind == "webhook":
        from matrix_mcp.integrations.sinks.webhook import WebhookSink

        return WebhookSink()
    if kind == "slack":
        from matrix_mcp.integrations.sinks.slack import SlackSink

        return SlackSink()
    if kind == "jira":
        from matrix_mcp.integrations.sinks.jira import JiraSink

        return JiraSink()
    if kind == "github":
        from matrix_mcp.integrations.sinks.github import GitHubSink

        return GitHubSink(min_interval)
    raise ValueError(f"kind: unknown sink '{kind}'")
