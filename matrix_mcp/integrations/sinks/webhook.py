"""A plain webhook: POST the JSON body, signed per Standard Webhooks, with the subscription's headers."""

from __future__ import annotations

from matrix_mcp import __version__
from matrix_mcp.integrations import signing
from matrix_mcp.integrations.policy import Answer
from matrix_mcp.integrations.sinks.base import SinkContext, answer_from
from matrix_mcp.store.hooks import DeliveryRow


def live_secrets(credentials: dict[str, object], now: float) -> list[str]:
    """The current secret and any previous one still inside its rotation grace period."""
    out = []
    for entry in credentials.get("secrets") or []:  # type: ignore[attr-defined]
        expires = entry.get("expires_at")
        if expires is None or expires > now:
            out.append(str(entry["secret"]))
    return out


class WebhookSink:
    service = "webhook"
    attempt_deadline = True

    def wants(self, event_type: str) -> bool:
        return True

    async def deliver(self, ctx: SinkContext, delivery: DeliveryRow) -> Answer:
        now = ctx.now()
        headers = {str(k): str(v) for k, v in (ctx.credentials.get("headers") or {}).items()}
        headers.update(
            {
                "content-type": "application/json",
                "user-agent": f"matrix-mcp/{__version__}",
                **signing.headers(live_secrets(ctx.credentials, now), delivery.id, int(now), delivery.body),
            }
        )
        response = await ctx.http.request(
            "POST", str(ctx.credentials["url"]), headers, content=delivery.body.encode()
        )
        return answer_from(response, now)
