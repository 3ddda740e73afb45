"""What the webhook tools, the CLI and the resource return. Never a secret (the signing secret is
shown once, by add_webhook)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["webhook", "slack", "jira", "github"]
DeliveryStatus = Literal["pending", "succeeded", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Webhook(_Model):
    id: str
    kind: Kind
    target: str = Field(
        description="Where it delivers: scheme and host only (a path or query may be a secret)."
    )
    events: list[str]
    run: str | None = None
    description: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    active: bool
    disabled_reason: str | None = None
    circuit: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    failing_since: datetime | None = None
    last_success_at: datetime | None = None
    created_at: datetime


class WebhookCreated(_Model):
    webhook: Webhook
    secret: str | None = Field(default=None, description="The signing secret; shown only now.")


class WebhookList(_Model):
    webhooks: list[Webhook]


class WebhookRemoved(_Model):
    webhook: str
    removed: bool


class Delivery(_Model):
    id: str = Field(description="The webhook-id header; stable across retries.")
    webhook: str
    seq: int
    type: str
    run: str | None = None
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None


class DeliveryList(_Model):
    deliveries: list[Delivery]
    next_cursor: str | None = None


class Redelivered(_Model):
    redelivered: int


class PingResult(_Model):
    webhook: str
    ok: bool
    status_code: int | None = None
    error: str | None = None
    duration_ms: float
