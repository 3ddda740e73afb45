"""Subscriptions as the tools and the CLI see them: validation, encryption, and the views they return.

Imports cryptography and httpx2 only when a call needs them (add, test, rotate), never at import.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from matrix_mcp.errors import InputError, MatrixError
from matrix_mcp.integrations.events import EVENT_TYPES
from matrix_mcp.integrations.models import (
    Delivery,
    DeliveryList,
    DeliveryStatus,
    PingResult,
    Redelivered,
    Webhook,
    WebhookCreated,
    WebhookList,
    WebhookRemoved,
)
from matrix_mcp.integrations.redact import display_target
from matrix_mcp.integrations.settings import HookSettings
from matrix_mcp.models import ts
from matrix_mcp.store.hooks import DeliveryQuery, DeliveryRow, Redelivery, SubscriptionChange, SubscriptionRow
from matrix_mcp.store.protocol import Store

if TYPE_CHECKING:
    from matrix_mcp.integrations.crypto import Keyring

KINDS = ("webhook", "slack", "jira", "github")
ROTATION_GRACE = 24 * 3600.0  # a rotated signing secret keeps signing this long
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
_RESERVED_HEADERS = {"host", "content-length", "content-type", "transfer-encoding", "connection"}
_OPTION_KEYS = {
    "webhook": set[str](),
    "slack": {"channel"},
    "jira": {"project", "email", "issue_type", "done_transition"},
    "github": {"repository", "base_branch"},
}
_REQUIRED_OPTIONS = {"jira": ("project",), "github": ("repository",)}


def _fail(field: str, message: str) -> InputError:
    return InputError(message, field=field)


def view(row: SubscriptionRow, now: float) -> Webhook:
    if row.circuit_open_until is not None and row.circuit_open_until > now:
        circuit = "open"
    elif row.circuit_open_until is not None:
        circuit = "half_open"
    else:
        circuit = "closed"
    return Webhook(
        id=row.id,
        kind=row.kind,  # type: ignore[arg-type]
        target=display_target(row.target),
        events=row.events,
        run=row.run,
        description=row.description,
        options=row.config,
        active=row.active,
        disabled_reason=row.disabled_reason,
        circuit=circuit,  # type: ignore[arg-type]
        consecutive_failures=row.failures,
        failing_since=ts(row.failing_since),
        last_success_at=ts(row.last_success_at),
        created_at=ts(row.created_at),  # type: ignore[arg-type]
    )


def delivery_view(d: DeliveryRow) -> Delivery:
    return Delivery(
        id=d.id,
        webhook=d.subscription_id,
        seq=d.seq,
        type=d.event_type,
        run=d.run,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=ts(d.next_attempt_at) if d.status == "pending" else None,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        created_at=ts(d.created_at),  # type: ignore[arg-type]
        delivered_at=ts(d.delivered_at),
    )


class Hooks:
    def __init__(
        self,
        store: Store,
        database_url: str,
        settings: HookSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.database_url = database_url
        self.settings = settings or HookSettings.from_env()
        self.clock = clock
        self._keyring: Keyring | None = None

    def keyring(self) -> Keyring:
        if self._keyring is None:
            from matrix_mcp.integrations.crypto import KeyError_, load_keyring

            try:
                self._keyring = load_keyring(self.database_url, self.settings.encryption_keys)
            except KeyError_ as exc:
                raise MatrixError(str(exc), field="MATRIX_ENCRYPTION_KEY") from None
        return self._keyring

    # ---- validation -------------------------------------------------------------------------------

    @staticmethod
    def _events(events: list[str]) -> list[str]:
        if not events:
            raise _fail("events", "give at least one event type, or '*' for all")
        for i, e in enumerate(events):
            if e != "*" and e not in EVENT_TYPES:
                raise _fail(
                    f"events[{i}]",
                    f"unknown event type '{e[:100]}' (one of {', '.join(EVENT_TYPES)}, or '*')",
                )
        return list(dict.fromkeys(events))

    @staticmethod
    def _url(url: str, field: str = "url") -> str:
        if len(url) > 2048:
            raise _fail(field, "longer than 2048 characters")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise _fail(field, f"not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _fail(field, "must be an http(s) URL with a host")
        if parts.username or parts.password:
            raise _fail(field, "credentials in the URL are not allowed (use headers)")
        return url

    @staticmethod
    def _headers(headers: dict[str, str] | None) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in (headers or {}).items():
            if (
                not _HEADER_NAME.match(name)
                or name.lower() in _RESERVED_HEADERS
                or name.lower().startswith("webhook-")
            ):
                raise _fail(f"headers.{name[:50]}", "not a header name that may be set")
            if any(ch in str(value) for ch in "\r\n\0") or len(str(value)) > 4096:
                raise _fail(f"headers.{name}", "the value must be one line of at most 4096 characters")
            out[name] = str(value)
        return out

    async def _check_reachable(self, url: str) -> None:
        """The SSRF guard at registration too (it runs again at every attempt)."""
        from matrix_mcp.integrations.ssrf import Refused, check, system_resolver

        try:
            await check(url, self.settings.allowed_networks, system_resolver)
        except Refused as exc:
            raise _fail("url", str(exc)) from None

    # ---- operations -------------------------------------------------------------------------------

    async def add(
        self,
        url: str,
        *,
        events: list[str],
        run: str | None = None,
        kind: str = "webhook",
        secret: str | None = None,
        headers: dict[str, str] | None = None,
        description: str | None = None,
        token: str | None = None,
        options: dict[str, str] | None = None,
    ) -> WebhookCreated:
        if kind not in KINDS:
            raise _fail("kind", f"'{kind}' is not available (one of {', '.join(KINDS)})")
        url = self._url(url)
        events = self._events(events)
        options = dict(options or {})
        for key in options:
            if key not in _OPTION_KEYS[kind]:
                raise _fail(f"options.{key[:50]}", f"not an option of a {kind} subscription")
        if run is not None:
            await self.store.get_run(run)  # NotFound names `run`
        creds: dict[str, Any] = {"url": url}
        shown: str | None = None
        if kind == "webhook":
            from matrix_mcp.integrations import signing

            if secret is not None:
                try:
                    signing.secret_bytes(secret)
                except ValueError as exc:
                    raise _fail("secret", str(exc).removeprefix("secret: ")) from None
            shown = secret or signing.new_secret()
            creds["secrets"] = [{"secret": shown, "expires_at": None}]
            creds["headers"] = self._headers(headers)
        if token is not None and kind == "webhook":
            raise _fail("token", "a webhook signs with its secret; a token is for slack")
        if kind == "slack" and token:
            creds["token"] = token
            if not options.get("channel"):
                raise _fail("options.channel", "a Slack bot token needs a channel")
        if kind in ("jira", "github"):
            if not token:
                raise _fail("token", f"a {kind} subscription needs an API token")
            creds["token"] = token
            for key in _REQUIRED_OPTIONS[kind]:
                if not options.get(key):
                    raise _fail(f"options.{key}", f"required for a {kind} subscription")
            repo = options.get("repository")
            if kind == "github" and repo is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
                raise _fail("options.repository", "expected owner/name")
        if description is not None and len(description) > 1000:
            raise _fail("description", "longer than 1000 characters")
        await self._check_reachable(url)
        now = self.clock()
        row = SubscriptionRow(
            id="wh_" + uuid.uuid4().hex[:20],
            kind=kind,
            target=display_target(url),
            credentials=self.keyring().encrypt(creds),
            events=events,
            run=run,
            description=description,
            config=options,
        )
        stored = await self.store.hooks.add_subscription(row, now=now)
        return WebhookCreated(webhook=view(stored, now), secret=shown)

    async def list_all(self) -> WebhookList:
        now = self.clock()
        return WebhookList(webhooks=[view(r, now) for r in await self.store.hooks.list_subscriptions()])

    async def get(self, webhook: str) -> Webhook:
        return view(await self.store.hooks.get_subscription(webhook), self.clock())

    async def update(
        self,
        webhook: str,
        *,
        active: bool | None = None,
        events: list[str] | None = None,
        url: str | None = None,
        rotate_secret: bool = False,
    ) -> WebhookCreated:
        row = await self.store.hooks.get_subscription(webhook)
        credentials = None
        target = None
        shown = None
        if url is not None or rotate_secret:
            creds = self.keyring().decrypt(row.credentials)
            if url is not None:
                creds["url"] = self._url(url)
                await self._check_reachable(url)
                target = display_target(url)
            if rotate_secret:
                if row.kind != "webhook":
                    raise _fail("rotate_secret", "only a webhook has a signing secret")
                from matrix_mcp.integrations import signing

                now = self.clock()
                old = [
                    dict(s, expires_at=s.get("expires_at") or now + ROTATION_GRACE)
                    for s in creds.get("secrets", [])
                ]
                shown = signing.new_secret()
                creds["secrets"] = [{"secret": shown, "expires_at": None}] + [
                    s for s in old if s["expires_at"] > now
                ]
            credentials = self.keyring().encrypt(creds)
        change = SubscriptionChange(
            active=active,
            events=self._events(events) if events is not None else None,
            target=target,
            credentials=credentials,
        )
        stored = await self.store.hooks.update_subscription(webhook, change=change, now=self.clock())
        return WebhookCreated(webhook=view(stored, self.clock()), secret=shown)

    async def remove(self, webhook: str) -> WebhookRemoved:
        await self.store.hooks.remove_subscription(webhook)
        return WebhookRemoved(webhook=webhook, removed=True)

    async def deliveries(
        self,
        *,
        webhook: str | None = None,
        status: DeliveryStatus | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> DeliveryList:
        if webhook is not None:
            await self.store.hooks.get_subscription(webhook)
        if not 1 <= limit <= 1000:
            raise _fail("limit", "must be between 1 and 1000")
        page = await self.store.hooks.list_deliveries(
            DeliveryQuery(subscription_id=webhook, status=status, limit=limit, cursor=cursor)
        )
        return DeliveryList(
            deliveries=[delivery_view(d) for d in page.deliveries], next_cursor=page.next_cursor
        )

    async def redeliver(
        self, *, delivery_id: str | None = None, webhook: str | None = None, since: float | None = None
    ) -> Redelivered:
        if (delivery_id is None) == (webhook is None):
            raise _fail("delivery_id", "give a delivery_id, or a webhook (with since)")
        n = await self.store.hooks.redeliver(
            Redelivery(subscription_id=webhook, delivery_id=delivery_id, since=since), now=self.clock()
        )
        return Redelivered(redelivered=n)

    async def test(self, webhook: str) -> PingResult:
        """Send a `ping` now, through the same sink, signing and SSRF guard as every delivery."""
        from matrix_mcp.integrations import events as E
        from matrix_mcp.integrations.dispatcher import Dispatcher
        from matrix_mcp.integrations.sinks import sink_for
        from matrix_mcp.store.hooks import DeliveryRow

        row = await self.store.hooks.get_subscription(webhook)
        now = self.clock()
        pub = E.PublicEvent(
            type="ping",
            seq=0,
            run=None,
            key=f"ping:{uuid.uuid4().hex}",
            created_at=now,
            data={"webhook": webhook},
        )
        d = DeliveryRow(
            n=0,
            id=E.delivery_id(webhook, pub.key),
            subscription_id=webhook,
            seq=0,
            event_type="ping",
            run=None,
            body=E.body(pub),
            status="pending",
            attempts=0,
            next_attempt_at=now,
            last_status_code=None,
            last_error=None,
            created_at=now,
            updated_at=now,
            delivered_at=None,
        )
        dispatcher = Dispatcher(
            self.store, self.settings, self.keyring(), clock=self.clock, owner="this process (a test ping)"
        )
        try:
            sink = sink_for(row.kind)
            ctx = dispatcher.context(row)
            started = time.monotonic()
            answer = await dispatcher.attempt(sink, ctx, d)
            took = time.monotonic() - started
        finally:
            await dispatcher.aclose()
        from matrix_mcp.telemetry import observe_integration_call as observe

        status = "success" if answer.ok else "failure"
        observe(sink.service, status, took)
        await self.store.record_integration(
            run_id=None,
            outcome_id=None,
            integration_type=sink.service,
            action="ping",
            status=status,
            details={
                "webhook": webhook,
                "target": display_target(row.target),
                "status_code": answer.status_code,
                "error": answer.error,
            },
            now=self.clock(),
        )
        return PingResult(
            webhook=webhook,
            ok=answer.ok,
            status_code=answer.status_code,
            error=answer.error,
            duration_ms=round(took * 1000, 1),
        )

    async def rotate_key(self) -> tuple[int, str]:
        """Re-encrypt every subscription's credentials with the first key; returns (how many, which key).

        With MATRIX_ENCRYPTION_KEY: put the new key first (new,old), rotate, then drop the old one. With
        the key file: a new key is written first beside the old one, and the old one is dropped once
        everything is re-encrypted (a crash in between leaves both, and nothing undecryptable)."""
        from matrix_mcp.integrations.crypto import Keyring, key_file, new_key, read_key_file, write_key_file

        ring = self.keyring()
        path = None if self.settings.encryption_keys else key_file(self.database_url)
        if path is not None:
            fresh = new_key()
            write_key_file(path, [fresh, *read_key_file(path)])
            ring = Keyring(read_key_file(path))
        pairs = [(sid, ring.rotate(token)) for sid, token in await self.store.hooks.all_credentials()]
        await self.store.hooks.set_credentials(pairs, now=self.clock())
        if path is not None:
            write_key_file(path, [fresh])
            self._keyring = Keyring([fresh])
            return len(pairs), f"a new key in {path}"
        return len(pairs), "the first MATRIX_ENCRYPTION_KEY"


def dumps(model: Any) -> str:
    return json.dumps(model.model_dump(mode="json", exclude_none=True), ensure_ascii=False)


@asynccontextmanager
async def open_hooks(database_url: str, *, deadline: float) -> AsyncIterator[Hooks]:
    """The webhook service over the store at `database_url`, open while the block runs (the CLI's
    `hooks` commands; a server uses its App's)."""
    from matrix_mcp.store import open_store

    store = await open_store(database_url, deadline=deadline)
    try:
        yield Hooks(store, database_url)
    finally:
        await store.close()
