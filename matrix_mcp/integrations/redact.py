"""What of a subscription's URL may be shown, stored in clear, recorded or logged."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def display_target(url: str) -> str:
    """The URL as it may be shown and stored in clear: scheme and host only (`https://host/…`). A path or
    query is often the credential itself (Slack, Discord and Teams webhooks, `?token=`); the whole URL
    is kept encrypted with the other credentials. Idempotent: a shown target shows as itself (targets
    stored before this rule are redacted by a migration, and again here)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "…"
    if ":" in host:
        host = f"[{host}]"
    if port:
        host += f":{port}"
    rest = "/…" if parts.path not in ("", "/") or parts.query or parts.fragment else parts.path
    return urlunsplit((parts.scheme, host, "", "", "")) + rest
