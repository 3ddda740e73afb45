"""Jira Cloud: a final failure files one issue per outcome (description in Atlassian Document Format),
a later retry comments on it, a later completion moves it to Done (the transition found by name).

The issue key is kept in the store (hook_links, `issue:<outcome_id>`); the issue also carries the label
`matrix-<outcome_id>`, and before filing, a search by that label finds an issue whose key was lost (the
process died between Jira's answer and remembering it) — so nothing is filed twice.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from matrix_mcp.integrations.policy import Answer
from matrix_mcp.integrations.sinks.base import SinkContext, answer_from
from matrix_mcp.store.hooks import DeliveryRow

WANTED = frozenset({"outcome.failed", "outcome.retry_scheduled", "outcome.completed", "ping"})


def adf(*paragraphs: str, code: str | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "paragraph", "content": [{"type": "text", "text": p}]} for p in paragraphs if p
    ]
    if code:
        content.append({"type": "codeBlock", "content": [{"type": "text", "text": code[:30000]}]})
    return {"type": "doc", "version": 1, "content": content}


def label(outcome_id: str) -> str:
    return f"matrix-{outcome_id}"


class JiraSink:
    service = "jira"
    attempt_deadline = True

    def wants(self, event_type: str) -> bool:
        return event_type in WANTED

    def _headers(self, ctx: SinkContext) -> dict[str, str]:
        token = str(ctx.credentials.get("token") or "")
        email = ctx.subscription.config.get("email")
        auth = (
            "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode() if email else f"Bearer {token}"
        )
        return {"authorization": auth, "accept": "application/json", "content-type": "application/json"}

    async def _call(self, ctx: SinkContext, method: str, path: str, body: Any = None) -> tuple[Answer, Any]:
        site = str(ctx.credentials["url"]).rstrip("/")
        response = await ctx.http.request(method, site + path, self._headers(ctx), json=body)
        answer = answer_from(response, ctx.now())
        try:
            data = response.json() if response.content else None
        except ValueError:
            data = None
        return answer, data

    async def deliver(self, ctx: SinkContext, delivery: DeliveryRow) -> Answer:
        payload = json.loads(delivery.body)
        kind, data = payload["type"], payload.get("data", {})
        if kind == "ping":
            answer, _ = await self._call(ctx, "GET", "/rest/api/3/myself")
            return answer
        outcome_id = str(data.get("outcome_id"))
        ref = f"issue:{outcome_id}"
        key = await ctx.hooks.get_link(ctx.subscription.id, ref=ref)
        if kind == "outcome.failed":
            if key:
                return await self._comment(ctx, key, f"Failed again (attempt {data.get('attempt')}).", data)
            answer, key = await self._find(ctx, outcome_id)
            if not answer.ok:
                return answer
            if key is None:
                answer, key = await self._create(ctx, data)
                if not answer.ok or key is None:
                    return (
                        answer if not answer.ok else Answer(answer.status_code, "Jira returned no issue key")
                    )
            await ctx.hooks.set_link(ctx.subscription.id, ref=ref, value=key)
            return answer
        if key is None:  # nothing filed for this outcome: nothing to say
            return Answer(200)
        if kind == "outcome.retry_scheduled":
            return await self._comment(
                ctx, key, f"Retry scheduled after attempt {data.get('attempt')}.", data
            )
        return await self._transition(ctx, key)  # outcome.completed

    async def _find(self, ctx: SinkContext, outcome_id: str) -> tuple[Answer, str | None]:
        project = ctx.subscription.config.get("project")
        jql = f'project = "{project}" AND labels = "{label(outcome_id)}"'
        answer, data = await self._call(
            ctx, "POST", "/rest/api/3/search/jql", {"jql": jql, "fields": ["key"], "maxResults": 1}
        )
        issues = (data or {}).get("issues") or [] if answer.ok else []
        return answer, (str(issues[0]["key"]) if issues else None)

    async def _create(self, ctx: SinkContext, data: dict[str, Any]) -> tuple[Answer, str | None]:
        config = ctx.subscription.config
        summary = f"Matrix: {data.get('package')}/{data.get('item')} failed in run {data.get('run')}"[:250]
        description = adf(
            f"Run: {data.get('run')}",
            f"Package: {data.get('package')}",
            f"Item: {data.get('item')}",
            f"Outcome: {data.get('outcome_id')}",
            f"Attempts: {data.get('attempt')}",
            f"Metrics: {json.dumps(data.get('metrics', {}), sort_keys=True)}",
            code=str(data.get("error") or ""),
        )
        fields = {
            "project": {"key": config.get("project")},
            "issuetype": {"name": config.get("issue_type") or "Task"},
            "summary": summary,
            "description": description,
            "labels": ["matrix", label(str(data.get("outcome_id")))],
        }
        answer, body = await self._call(ctx, "POST", "/rest/api/3/issue", {"fields": fields})
        return answer, (
            str(body["key"]) if answer.ok and isinstance(body, dict) and body.get("key") else None
        )

    async def _comment(self, ctx: SinkContext, key: str, text: str, data: dict[str, Any]) -> Answer:
        body = {"body": adf(text, code=str(data.get("error") or ""))}
        answer, _ = await self._call(ctx, "POST", f"/rest/api/3/issue/{key}/comment", body)
        return answer

    async def _transition(self, ctx: SinkContext, key: str) -> Answer:
        wanted = str(ctx.subscription.config.get("done_transition") or "Done").lower()
        answer, data = await self._call(ctx, "GET", f"/rest/api/3/issue/{key}/transitions")
        if not answer.ok:
            return answer
        for t in (data or {}).get("transitions", []):
            if (
                str(t.get("name", "")).lower() == wanted
                or str(t.get("to", {}).get("name", "")).lower() == wanted
            ):
                answer, _ = await self._call(
                    ctx, "POST", f"/rest/api/3/issue/{key}/transitions", {"transition": {"id": t["id"]}}
                )
                return answer
        return Answer(200)  # already done, or no such transition from its current status: nothing to do
