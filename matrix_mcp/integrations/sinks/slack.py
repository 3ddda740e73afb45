"""Slack: an incoming-webhook URL, or a bot token + channel through chat.postMessage with one thread
per run (`thread_ts` remembered in the store). Block Kit messages for the events people act on."""

from __future__ import annotations

import json
from typing import Any

import anyio

from matrix_mcp.integrations.policy import Answer
from matrix_mcp.integrations.sinks.base import SinkContext, answer_from
from matrix_mcp.store.hooks import DeliveryRow

DEFAULT_API = "https://slack.com/api"
WANTED = frozenset({"outcome.failed", "package.completed", "run.completed", "run.cancelled", "ping"})


def _pct(rate: Any) -> str:
    return "-" if rate is None else f"{float(rate):.0%}"


def blocks(event_type: str, data: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, Block Kit blocks) for one event."""
    run = data.get("run") or "-"
    if event_type == "run.completed":
        rows = [f"{'package':<24} {'done':>6} {'failed':>6} {'success':>7}"]
        for p in data.get("packages", []):
            rows.append(
                f"{str(p['package'])[:24]:<24} {p['complete']:>6} {p['failed']:>6} {_pct(p.get('success_rate')):>7}"
            )
        text = f"Run {run} completed: {data.get('complete')}/{data.get('total')} done, {data.get('failed')} failed"
        return text, [
            {"type": "header", "text": {"type": "plain_text", "text": f"Run {run} completed"[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "```" + "\n".join(rows)[:2900] + "```"}},
        ]
    if event_type == "outcome.failed":
        text = f"Item {data.get('package')}/{data.get('item')} in run {run} failed for good"
        return text, [
            {"type": "section", "text": {"type": "mrkdwn", "text": f":x: {text}"}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Attempts*\n{data.get('attempt', '-')}"},
                    {"type": "mrkdwn", "text": f"*Outcome*\n`{data.get('outcome_id', '-')}`"},
                ],
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*Error*\n```{str(data.get('error', ''))[:2800]}```"},
            },
        ]
    if event_type == "package.completed":
        text = (
            f"Package {data.get('package')} of run {run} completed: {data.get('complete')}/{data.get('total')} done,"
            f" {data.get('failed')} failed, success {_pct(data.get('success_rate'))}"
        )
        return text, [{"type": "section", "text": {"type": "mrkdwn", "text": f":package: {text}"}}]
    if event_type == "run.cancelled":
        text = f"Run {run} cancelled"
        return text, [{"type": "section", "text": {"type": "mrkdwn", "text": f":no_entry: {text}"}}]
    text = "Matrix webhook test (ping)"
    return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]


class SlackSink:
    service = "slack"
    attempt_deadline = True

    def __init__(self) -> None:
        self._thread_lock = anyio.Lock()  # a run's first message opens its thread: post it before the rest

    def wants(self, event_type: str) -> bool:
        return event_type in WANTED

    async def deliver(self, ctx: SinkContext, delivery: DeliveryRow) -> Answer:
        payload = json.loads(delivery.body)
        text, kit = blocks(payload["type"], payload.get("data", {}))
        message: dict[str, Any] = {"text": text, "blocks": kit}
        token = ctx.credentials.get("token")
        if not token:  # incoming webhook: the URL is the credential
            response = await ctx.http.request("POST", str(ctx.credentials["url"]), json=message)
            return answer_from(response, ctx.now())
        message["channel"] = ctx.subscription.config.get("channel")
        async with self._thread_lock:
            return await self._post(ctx, delivery, message, str(token))

    async def _post(
        self, ctx: SinkContext, delivery: DeliveryRow, message: dict[str, Any], token: str
    ) -> Answer:
        api = str(ctx.credentials.get("url") or DEFAULT_API).rstrip("/")
        ref = f"thread:{delivery.run}" if delivery.run else None
        if ref is not None:
            thread = await ctx.hooks.get_link(ctx.subscription.id, ref=ref)
            if thread:
                message["thread_ts"] = thread
        response = await ctx.http.request(
            "POST",
            api + "/chat.postMessage",
            {"authorization": f"Bearer {token}", "content-type": "application/json; charset=utf-8"},
            json=message,
        )
        answer = answer_from(response, ctx.now())
        if not answer.ok:
            return answer
        try:
            body = response.json()
        except ValueError:
            return Answer(response.status_code, "Slack answered something other than JSON")
        if not body.get("ok"):
            return Answer(response.status_code, f"Slack error: {str(body.get('error', 'unknown'))[:200]}")
        if ref is not None and "thread_ts" not in message and body.get("ts"):
            await ctx.hooks.set_link(ctx.subscription.id, ref=ref, value=str(body["ts"]))
        return answer
